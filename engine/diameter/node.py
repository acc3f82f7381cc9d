"""The Diameter Gy listener: accepts gateways' connections and hands their CCRs to the engine
that serves gRPC, so both fronts share micro-batches, the exactly-once rule and rating."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from tollgate.engine.diameter.peer import Charge, Connection
from tollgate.engine.diameter.reauth import ReAuth
from tollgate.engine.diameter.settings import Settings
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.store import Store

log = logging.getLogger("tollgate.diameter")


class DiameterNode:
    def __init__(self, config: Config) -> None:
        self.settings = Settings.of(config)  # ConfigError before anything starts
        self.plan_refresh_s = config.plan_refresh_s
        self.origin_state = int(time.time()) & 0xFFFFFFFF
        # RFC 6733 §3: the high 12 bits from the clock, the low 20 random, then +1 each.
        self._end_to_end = ((self.origin_state & 0xFFF) << 20) | random.getrandbits(20)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections: dict[Connection, asyncio.Task[None]] = {}
        self.reauth: ReAuth | None = None
        self._reauth_task: asyncio.Task[None] | None = None

    async def start(self, charge: Charge, store: Store | None = None,
                    clock: Callable[[], int] | None = None) -> DiameterNode:
        """Listens; CCRs go to `charge` (Engine.charge, as for any front holding request
        messages: the same batches as gRPC). With `store` (and its `clock`, Unix ms), sessions
        refused for credit get a RAR when their account gets credit again."""
        self.charge = charge
        if store is not None and clock is not None:
            self.reauth = ReAuth(store, clock, self.plan_refresh_s)
            self._reauth_task = asyncio.create_task(self.reauth.run())
        s = self.settings
        self.server = await asyncio.start_server(self._accept, s.host, s.port, reuse_port=True,
                                                 ssl=s.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("diameter listening", extra={"address": f"{s.host}:{self.port}",
                                              "origin_host": s.origin_host,
                                              "tls": s.tls is not None})
        return self

    def _next_end_to_end(self) -> int:
        self._end_to_end = (self._end_to_end + 1) & 0xFFFFFFFF
        return self._end_to_end

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, self.settings, self.charge, self.origin_state,
                          self._next_end_to_end, self.reauth)
        task = asyncio.current_task()
        assert task is not None
        self.connections[conn] = task
        try:
            await conn.run()
        finally:
            del self.connections[conn]

    async def stop(self) -> None:
        """No new connections; each open one answers what it has in flight, then gets DPR."""
        if self._reauth_task is not None:
            self._reauth_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reauth_task
        if self.server is None:
            return
        self.server.close()
        await asyncio.gather(*(c.close(self.settings.grace_s) for c in list(self.connections)))
        tasks = list(self.connections.values())
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.grace_s)
        await self.server.wait_closed()
