"""Flow control of one ChargeStream: how many of its requests may be in flight."""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge

from engine import metrics


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
