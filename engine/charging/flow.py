"""Flow control of one ChargeStream: how many of its requests may be in flight, and how
fast it may send them."""

from __future__ import annotations

import asyncio
import collections
import time

from prometheus_client import Gauge

from tollgate.engine.ops import metrics


class Window:
    """Counts a stream's requests from submission until gRPC has taken their answer. The
    stream's reader takes room before it submits a message and so stops reading while the
    window is full: the client's sends then wait on gRPC flow control, instead of answers
    piling up in the server for a client that does not read them."""

    def __init__(self, limit: int, gauge: Gauge = metrics.STREAM_IN_FLIGHT) -> None:
        self.limit = limit
        self.used = 0
        self.gauge = gauge  # what this window's requests count in
        self._room = asyncio.Event()

    async def take(self, n: int) -> None:
        """Waits until `n` more fit; a message larger than the whole window runs alone."""
        while self.used and self.used + n > self.limit:
            self._room.clear()
            await self._room.wait()
        self.used += n
        self.gauge.inc(n)

    def give(self, n: int) -> None:
        self.used -= n
        self.gauge.dec(n)
        self._room.set()

    def close(self) -> None:
        """The stream ended: what it still held is no longer in flight."""
        self.give(self.used)


class Rate:
    """A token bucket: a stream's requests at most `per_s` a second on average, and a
    second's worth at once (stream_max_rate). The reader waits here before it submits, so,
    as for the window, gRPC flow control holds the client back."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._tokens = per_s
        self._at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.per_s, self._tokens + (now - self._at) * self.per_s)
        self._at = now

    async def take(self, n: int) -> None:
        """Waits until the bucket is not in debt, then takes `n` (a message larger than the
        bucket goes whole, and the next waits for the debt)."""
        self._refill()
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.per_s)
            self._refill()
        self._tokens -= n


class SmallFirst:
    """Unary calls before bulk work on the one event loop: while a unary Charge is in the
    engine (submitted, not answered), a bulk step (a stream's message decoded, a bulk batch's
    next step) waits for it, up to `max_wait_s`, so the call's turns do not queue behind
    milliseconds of bulk work each. The bound keeps steady unary traffic from starving the
    bulk callers. Bulk steps also go one per turn of the event loop: a new call's turns in
    gRPC, before the engine knows of it, then wait for one step, not for one per stream."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    def begin(self) -> None:
        self.active += 1
        self._idle.clear()

    def end(self, _: object = None) -> None:
        self.active -= 1
        if not self.active:
            self._idle.set()

    async def bulk_turn(self) -> None:
        """Returns when no unary call is in the engine, or after max_wait_s; and one bulk
        step per turn of the event loop at most."""
        if self.active:
            try:
                async with asyncio.timeout(self.max_wait_s):
                    await self._idle.wait()
            except TimeoutError:
                pass
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        self._queue.append(turn)
        if len(self._queue) == 1:
            loop.call_soon(self._next)
        await turn

    def _next(self) -> None:
        turn = self._queue.popleft()
        if not turn.done():
            turn.set_result(None)
        if self._queue:
            asyncio.get_running_loop().call_soon(self._next)
