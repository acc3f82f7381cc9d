"""The micro-batcher: joins requests of all concurrent calls and streams into batches."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from engine.errors import Overloaded

T = TypeVar("T")


@dataclass(slots=True)
class Prepared(Generic[T]):
    """A batch made ready for its storage step: `finish` applies and answers `items` and
    returns the ones to run again; `later` are items to put back in the queue unrun."""

    items: list[T]
    finish: Callable[[], Awaitable[list[T]]] | None = None
    later: list[T] = field(default_factory=list)


class Batcher(Generic[T]):
    """Runs batches of queued items in two steps: `prepare` (the CPU work, and reads) and the
    `finish` it returns (the storage write). Batch k+1 is prepared while batch k's finish
    is in flight, so the CPU does not wait for storage; at most one finish is in flight, and
    `prepare` is responsible for leaving out items that depend on it (they come back in
    `later`).

    A batch is flushed when it is full, as soon as the previous batch is prepared (so a busy
    server batches by itself), or `window_s` after the first item reaches an idle batcher
    (so unary calls arriving one per event-loop turn still share a batch). Items to run
    again go first in the next batch.

    Fair between callers: items are queued per source (a call, or a whole stream), and a
    batch takes the sources' items in turn, an equal share each, so a stream that sends
    far more than it reads cannot put thousands of requests ahead of a unary call. A source
    keeps its own order.
    """

    def __init__(self, prepare: Callable[[list[T]], Awaitable[Prepared[T]]],
                 on_error: Callable[[list[T], BaseException], None],
                 max_batch: int, window_s: float, max_queue: int) -> None:
        self._prepare = prepare
        self._on_error = on_error
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self._again: deque[T] = deque()  # re-runs and items that waited: before anything new
        self._sources: OrderedDict[object, deque[T]] = OrderedDict()  # in turn order
        self._count = 0
        self._ready = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Task[list[T]] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tollgate-batcher")

    @property
    def queued(self) -> int:
        return self._count

    @property
    def applying(self) -> bool:
        """A batch's finish is in flight, or done but its re-runs are not back in the queue
        yet (prepare must still keep its items' dependents out)."""
        return self._in_flight is not None

    def submit(self, items: list[T], source: object = None) -> None:
        """Queues items of one source (None: a source of their own)."""
        if self._closing:
            raise Overloaded("shutting down")
        if self._count + len(items) > self.max_queue:
            raise Overloaded(f"{self._count} requests already wait (max_queue "
                             f"{self.max_queue}); retry later")
        key = object() if source is None else source
        queue = self._sources.get(key)
        if queue is None:
            queue = self._sources[key] = deque()
        queue.extend(items)
        self._count += len(items)
        self._ready.set()
        if self._count >= self.max_batch:
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
            if not self._count:
                if self._in_flight is not None:
                    self._requeue(await self._landed())
                    continue
                if self._closing:
                    return
                busy = False
                self._ready.clear()
                await self._ready.wait()
                continue
            if not busy and self._count < self.max_batch and self.window_s > 0:
                # A timer sets the event, rather than wait_for: that runs the wait as a task
                # of its own and cancels it on time-out, several event-loop turns each batch.
                self._full.clear()
                timer = asyncio.get_running_loop().call_later(self.window_s, self._full.set)
                try:
                    await self._full.wait()
                finally:
                    timer.cancel()
            batch = self._take()
            self._full.clear()
            busy = True
            try:
                prepared = await self._prepare(batch)
            except Exception as e:  # the batch fails, the batcher lives on (on_error logs)
                self._on_error(batch, e)
                prepared = Prepared([])
            # The in-flight batch's re-runs are older than anything of this one: first.
            again = await self._landed() if self._in_flight is not None else []
            self._requeue(again + prepared.later)
            if prepared.finish is not None:
                self._in_flight = asyncio.create_task(self._finish(prepared))

    async def _finish(self, prepared: Prepared[T]) -> list[T]:
        assert prepared.finish is not None
        try:
            again = await prepared.finish()
        except Exception as e:  # as in _run: only this batch fails
            self._on_error(prepared.items, e)
            return []
        self.batches += 1
        self.items += len(prepared.items) - len(again)
        return again

    async def _landed(self) -> list[T]:
        assert self._in_flight is not None
        try:
            return await self._in_flight
        finally:
            self._in_flight = None

    def _take(self) -> list[T]:
        """The next batch: what runs again first, then the sources in turn, an equal share of
        what is left each (the first of them gets the rest of a division)."""
        room = self.max_batch
        batch = [self._again.popleft() for _ in range(min(room, len(self._again)))]
        room -= len(batch)
        while room > 0 and self._sources:
            share = max(1, room // len(self._sources))
            for key in list(self._sources):
                queue = self._sources[key]
                take = min(share, len(queue), room)
                batch += [queue.popleft() for _ in range(take)]
                room -= take
                if queue:
                    self._sources.move_to_end(key)  # the next batch starts with the others
                else:
                    del self._sources[key]
                if room == 0:
                    break
        self._count -= len(batch)
        return batch

    def _requeue(self, items: list[T]) -> None:
        self._again.extendleft(reversed(items))
        self._count += len(items)
