"""The micro-batcher: joins requests of all concurrent calls and streams into batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from engine.errors import Overloaded

T = TypeVar("T")


class Batcher(Generic[T]):
    """Runs `process` over batches of queued items, one batch at a time.

    A batch is flushed when it is full, as soon as the previous batch is done (so a busy
    server batches by itself), or `window_s` after the first item reaches an idle batcher
    (so unary calls arriving one per event-loop turn still share a batch). `process`
    returns the items to run again; they go first in the next batch.
    """

    def __init__(self, process: Callable[[list[T]], Awaitable[list[T]]],
                 on_error: Callable[[list[T], BaseException], None],
                 max_batch: int, window_s: float, max_queue: int) -> None:
        self._process = process
        self._on_error = on_error
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self._queue: deque[T] = deque()
        self._ready = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tollgate-batcher")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, items: list[T]) -> None:
        if self._closing:
            raise Overloaded("shutting down")
        if len(self._queue) + len(items) > self.max_queue:
            raise Overloaded(f"{len(self._queue)} requests already wait (max_queue "
                             f"{self.max_queue}); retry later")
        self._queue.extend(items)
        self._ready.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()

    async def close(self) -> None:
        """Refuses new work, finishes what is queued or running, then stops."""
        self._closing = True
        self._ready.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        busy = False
        while True:
            if not self._queue:
                if self._closing:
                    return
                busy = False
                self._ready.clear()
                await self._ready.wait()
                continue
            if not busy and len(self._queue) < self.max_batch and self.window_s > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.window_s)
            n = min(self.max_batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._full.clear()
            busy = True
            try:
                again = await self._process(batch)
            except Exception as e:  # the batch fails, the batcher lives on (on_error logs)
                self._on_error(batch, e)
                continue
            self.batches += 1
            self.items += len(batch) - len(again)
            self._queue.extendleft(reversed(again))
