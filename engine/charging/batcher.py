"""The micro-batcher: joins requests of all concurrent calls and streams into batches."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tollgate.engine.errors import Overloaded

T = TypeVar("T")


SMALL_ACTIVE_S = 1.0
"""How long after a small call batches stay small (see Batcher): the next small call of a
caller comes in that time, and must not find a full-size batch being prepared."""


class _Call:
    """The source of items submitted without one: a call of their own."""

    __slots__ = ("small",)

    def __init__(self, small: bool) -> None:
        self.small = small


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

    Small batches beside small callers: while small calls (at most `shared_batch // 8`
    items: a unary Charge) come (one within SMALL_ACTIVE_S) and a bulk source waits (a
    stream, a larger call), a batch takes at most `shared_batch` items, and every other
    batch is the waiting small calls' alone (`_lane`). A small call's answer waits for the
    batch being prepared and its own; at max_batch, under bulk load, that is a few hundred
    ms on a small box. Bulk callers then lose only what a smaller batch costs more per item
    and the small calls' turns.

    Streams wait their turn to queue (`stream_room`): while 2 x max_batch items of streams
    wait, a stream submits no more (its reader stops, and gRPC flow control holds its client
    back). That keeps full batches, yet eight streams with their whole windows queued (8 x
    4096) would wait longer than a request's deadline: most would expire unrun, and a batch
    that reached its oldest request's deadline failed whole, a unary call in it too.
    """

    def __init__(self, prepare: Callable[[list[T]], Awaitable[Prepared[T]]],
                 on_error: Callable[[list[T], BaseException], None],
                 max_batch: int, window_s: float, max_queue: int,
                 shared_batch: int = 0, collect: Callable[[], None] | None = None) -> None:
        self._prepare = prepare
        self._on_error = on_error
        # Called before each batch is taken: a caller that holds items back while the
        # batcher is busy (`preparing`) submits them then, many at once.
        self._collect = collect or (lambda: None)
        self.preparing = False  # a batch is being prepared, or the one before it landing
        self.max_batch = max_batch
        self.shared_batch = shared_batch or max_batch
        self._small = self.shared_batch // 8
        self.window_s = window_s
        self.max_queue = max_queue
        self._again: deque[T] = deque()  # re-runs and items that waited: before anything new
        self._sources: OrderedDict[object, deque[T]] = OrderedDict()  # in turn order
        self._count = 0
        self._streamed = 0  # items of named sources (streams) in _sources
        self._small_seen = -SMALL_ACTIVE_S  # when a small call came last (monotonic s)
        self._small_turn = True  # the next batch may be the small calls' alone (_lane)
        self._stream_room = asyncio.Event()
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
        self.admit(len(items))
        if source is None:
            key: object = _Call(len(items) <= self._small)
            if len(items) <= self._small:
                self._small_seen = time.monotonic()
        else:
            key = source
        queue = self._sources.get(key)
        if queue is None:
            queue = self._sources[key] = deque()
        queue.extend(items)
        self._count += len(items)
        if source is not None:
            self._streamed += len(items)
        self._ready.set()
        if self._count >= self.max_batch:
            self._full.set()

    def admit(self, n: int, held: int = 0) -> None:
        """Raises Overloaded unless n more items may queue, beside `held` that a caller
        holds back to submit when the batcher collects."""
        if self._closing:
            raise Overloaded("shutting down")
        waiting = self._count + held
        if waiting + n > self.max_queue:
            raise Overloaded(f"{waiting} requests already wait (max_queue "
                             f"{self.max_queue}); retry later")

    async def stream_room(self) -> None:
        """Waits until a stream may queue more (see the class's docstring)."""
        while self._streamed >= 2 * self.max_batch:
            self._stream_room.clear()
            await self._stream_room.wait()

    async def close(self) -> None:
        """Refuses new work, finishes what is queued or running, then stops."""
        self._collect()  # what was held back was accepted: it runs too
        self._closing = True
        self._ready.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        busy = False
        while True:
            self.preparing = False
            self._collect()
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
            busy = self.preparing = True
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
        """The next batch: what runs again first, then the sources of its lane in turn, an
        equal share of what is left each (the first of them gets the rest of a division)."""
        room = self._room()
        batch = [self._again.popleft() for _ in range(min(room, len(self._again)))]
        room -= len(batch)
        lane = self._lane()
        while room > 0 and lane:
            share = max(1, room // len(lane))
            for key in list(lane):
                queue = self._sources[key]
                take = min(share, len(queue), room)
                batch += [queue.popleft() for _ in range(take)]
                room -= take
                if not isinstance(key, _Call):
                    self._streamed -= take
                if queue:
                    self._sources.move_to_end(key)  # the next batch starts with the others
                else:
                    del self._sources[key]
                    lane.remove(key)
                if room == 0:
                    break
        self._count -= len(batch)
        if self._streamed < 2 * self.max_batch:
            self._stream_room.set()
        return batch

    def _lane(self) -> list[object]:
        """The sources the next batch takes from: while small calls and bulk sources both
        wait, every other batch is the small calls' alone, so a small call waits for one
        bulk batch at most, not for its share of one (the bulk sources get the batches
        between: the small calls cannot starve them)."""
        keys = list(self._sources)
        if self._small_turn:
            small: list[object] = [k for k in keys if isinstance(k, _Call) and k.small]
            if small and len(small) < len(keys):
                self._small_turn = False
                return small
        self._small_turn = True
        return keys

    def _room(self) -> int:
        """How many items the next batch may take (see the class's docstring)."""
        if time.monotonic() - self._small_seen < SMALL_ACTIVE_S and any(
                not (isinstance(key, _Call) and key.small) for key in self._sources):
            return min(self.shared_batch, self.max_batch)
        return self.max_batch

    def _requeue(self, items: list[T]) -> None:
        self._again.extendleft(reversed(items))
        self._count += len(items)
