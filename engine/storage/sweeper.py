"""The stale-reservation sweeper: gives back what silent sessions hold, one atomic call each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import cast

from redis.exceptions import RedisError

from tollgate.engine.storage import keys
from tollgate.engine.storage.session_blob import pack_session, reservation_value, unpack_session
from tollgate.engine.storage.store import Store, cancel_requested, lua_source

log = logging.getLogger("tollgate.sweeper")
CHANGED = -2
"""sweep.lua: the session changed since it was read (left for the next pass)."""


class Sweeper:
    """Finds open sessions whose expiry (validity + grace, refreshed by every request) has
    passed and releases their reservations. The session stays open: late usage reported
    for it is still charged (as overage, since nothing is reserved any more)."""

    def __init__(self, store: Store, clock: Callable[[], int], batch: int = 500) -> None:
        self.store = store
        self.clock = clock
        self.batch = batch
        self._script = store.redis.register_script(lua_source("sweep"))
        self.released = 0

    async def sweep_once(self, now_ms: int | None = None) -> int:
        """One pass over every partition; returns the reservations released."""
        now = self.clock() if now_ms is None else now_ms
        total = 0
        for p in range(self.store.partitions):
            zset = keys.open_sessions(p)
            refused = 0  # due sessions left in place (first in the zset): skipped
            while True:
                stale = cast(list[bytes], await self.store.redis.zrangebyscore(
                    zset, "-inf", now, start=refused, num=self.batch))
                if not stale:
                    break
                # The script's keys are all declared (Redis Cluster redirects by them while a
                # slot moves), so the sessions are read first (a session's account never
                # changes); the script releases only if the session is still as read.
                pipe = self.store.redis.pipeline(transaction=False)
                for sess in stale:
                    pipe.get(sess)
                calls = {n: self._call(p, zset, sess.decode(), value, now)
                         for n, (sess, value) in enumerate(zip(stale, await pipe.execute(),
                                                              strict=True))}
                replies = await self.store.nodes.run(self._script, calls)
                for n, r in replies.items():
                    if int(r) == CHANGED:  # a request came meanwhile: the next pass sees it
                        refused += 1
                    elif int(r) < 0:
                        # Left as it is, in the zset: tried again on every sweep, loudly.
                        refused += 1
                        log.error("cannot release a silent session's reservations: giving "
                                  "them back would take a balance past int64",
                                  extra={"session": stale[n].decode()})
                    else:
                        total += int(r)
                if len(stale) < self.batch:
                    break
        self.released += total
        return total

    @staticmethod
    def _call(p: int, zset: str, key: str, value: bytes | None, now: int
              ) -> tuple[list[str], list[bytes | str | int]]:
        """sweep.lua's keys and arguments for one due session, as read."""
        s = unpack_session(key.partition(":sess:")[2], value)
        if s is None:
            return [key, zset], [now]
        released = replace(s, reservations={}, expiry_ms=0)
        return ([key, zset, keys.account(p, s.account_id)],
                [now, cast(bytes, value), s.expiry_ms, pack_session(released), s.subscriber_id,
                 *(reservation_value(r) for r in s.reservations.values())])

    async def run(self, interval_s: float) -> None:
        """Sweeps every interval until cancelled; Redis errors are logged and retried."""
        while not cancel_requested():
            await asyncio.sleep(interval_s)
            try:
                released = await self.sweep_once()
            except RedisError as e:
                log.warning("sweep failed, will retry", extra={"error": str(e)})
                continue
            if released:
                log.info("stale reservations released", extra={"count": released})
