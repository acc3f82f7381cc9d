"""A Tollgate on its own event loop in a thread, for synchronous tests (hypothesis drives
synchronous functions; gRPC's asyncio calls belong to the loop they start on)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from tests.helpers import Gateway
from tollgate.engine.ops.config import Config
from tollgate.server import Tollgate

T = TypeVar("T")


class Live:
    """`run(work, *args)` awaits work(*args) on the server's loop and returns its result."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.app = self.run(Tollgate(config).start)
        self.gw = self.run(self._connect)

    async def _connect(self) -> Gateway:
        return Gateway(grpc.aio.insecure_channel(self.app.address))

    def run(self, work: Callable[..., Awaitable[T]], *args: object) -> T:
        async def call() -> T:
            return await work(*args)
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(60)

    def close(self) -> None:
        self.run(self.gw.channel.close)
        self.run(self.app.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
