"""The micro-batcher: joins requests of all concurrent calls and streams into batches."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

from tollgate.engine.errors import Overloaded

T = TypeVar("T")


SMALL_ACTIVE_S = 1.0
"""How long after a small call batches stay small (see Batcher): the next small call of a
caller comes in that time, and must not find a full-size batch being prepared."""


BULK_FLIGHTS = 2
"""Finishes the bulk lane keeps in flight: while one batch's apply runs in Redis and the next
waits behind it, the one after is prepared (with one, the preparation waited whenever an apply
took longer than it)."""


GATHER_QUIET_TURNS = 8
"""A busy small calls' lane takes its next batch once this many event-loop turns in a row
brought no new call (Batcher._gather)..."""
GATHER_MAX_S = 0.004
"""... or this long after it could have taken it, whichever comes first."""


def set_done(future: asyncio.Future[None], _: object = None) -> None:
    """Resolves `future` (to None) unless it is already: a callback for whichever of two
    events comes first."""
    if not future.done():
        future.set_result(None)


class _Call:
    """The source of items submitted without one: a call of their own."""

    __slots__ = ()


@dataclass(slots=True)
class Prepared(Generic[T]):
    """A batch made ready for its storage step: `finish` applies and answers `items` and
    returns the ones to run again; `later` are items to put back in the queue unrun;
    `release` is called once the batch is done with: applied and its re-runs back in the
    queue, or, without a finish, once `later` is back (what it held may go to others).
    `sent`, when given, is set by `finish` once its writes are on their way to storage (the
    batcher sets it too when `finish` ends without): the bulk lane's next batch is
    prepared only then."""

    items: list[T]
    finish: Callable[[], Awaitable[list[T]]] | None = None
    later: list[T] = field(default_factory=list)
    release: Callable[[], None] = lambda: None
    sent: asyncio.Future[None] | None = None


class _Lane(Generic[T]):
    """One of the batcher's two pipelines: its queue, the batch it prepares and its finish
    in flight."""

    def __init__(self, name: str, depth: int) -> None:
        self.name = name
        self.depth = depth  # finishes in flight at most
        self.again: deque[T] = deque()  # re-runs and items that waited: before anything new
        self.sources: OrderedDict[object, deque[T]] = OrderedDict()  # in turn order
        self.credit: dict[object, int] = {}  # what the source at the front may still take
        self.count = 0
        self.ready = asyncio.Event()
        self.full = asyncio.Event()
        self.woken = asyncio.Event()  # the other lane released a batch, or items came
        self.preparing = False  # a batch is being prepared, or the one before it landing
        # The batches whose finish is in flight, oldest first, with their finish's task.
        self.flights: deque[tuple[asyncio.Task[list[T]], Prepared[T]]] = deque()
        self.task: asyncio.Task[None] | None = None


class Batcher(Generic[T]):
    """Runs batches of queued items in two steps: `prepare` (the CPU work, and reads) and the
    `finish` it returns (the storage write); `prepare` is told whether the batch is the
    bulk lane's. In the bulk lane, the next batch is prepared while up to BULK_FLIGHTS
    finishes are in flight (batch k applied, k+1 waiting behind it in storage, k+2
    prepared), so the CPU does not wait for storage: items that come while the lane waits
    on a landing with nothing queued are prepared at once (`_lands_before_items`), and a
    batch is prepared only once the finish before it has sent its writes (`Prepared.sent`),
    so that storage does not wait for the CPU either; the small calls' lane prepares beside
    its one finish only when a full batch waits, and otherwise takes its next batch once
    batch k has landed, with the calls that came meanwhile (`_lands_first`).

    Two lanes, each such a pipeline of its own: small calls (at most `shared_batch // 8`
    items: a unary Charge) and everything else (streams, larger calls). A small call
    waits neither for a bulk batch's preparation nor for its apply: its batch is prepared
    between the steps of a bulk one and applied beside it. `prepare` is responsible for
    leaving out items whose accounts a batch of either lane holds (being prepared, or
    applied until `release`): they come back in `later`, and a lane that could run nothing
    waits until its oldest batch in flight lands, or the other lane releases one. Batches
    land oldest first, and their re-runs go before anything newer.

    A batch is flushed when it is full, as soon as the previous batch of its lane is
    prepared (the small calls' lane: has landed, and the calls still coming have joined
    (`_gather`); so a busy server batches by itself), or `window_s` after the first item
    reaches the idle small calls' lane (so unary calls arriving one per event-loop turn
    still share a batch). The bulk lane, idle, runs what came at once: its callers come a
    call of many requests at a time, and a timer would only add its length to their
    latency (a ChargeBatch of 100 at a light load: the whole millisecond of the default).
    Items to run again go first in the next batch of their lane.

    Fair between callers: items are queued per source (a call, or a whole stream), and the
    sources take turns of at most max_batch items (deficit round robin, `_take`), so a
    stream that sends far more than it reads puts at most one turn ahead of a call that
    comes later (and the streams together no more than their backlog, `stream_room`), and
    sources that keep more than a batch queued share the batches equally.
    A call of up to max_batch items is taken whole in its turn: equal shares of every batch
    would spread each call over all of them, and a closed-loop client, answered only when
    the last batch lands, would leave the server idle while it builds its next calls (the
    turns gave `ChargeBatch` and `ChargeStream` of 1000 9-14 % more requests/s, same CPU
    per request). Nor is a call split to fill the rest of a batch (it would wait for the
    batch after), and what runs again rides beside a batch's new items, up to an eighth of
    a batch, once all of it is in the batch (`_take`). A source keeps its own order.

    Small bulk batches beside small callers: while small calls come (one within
    SMALL_ACTIVE_S), a bulk batch takes at most `shared_batch` items, so that the bulk
    lane's steps, each a run of the one event loop, stay short for the small calls'
    turns between them.

    Streams wait their turn to queue (`stream_room`): while 2 x max_batch items of streams
    wait, a stream submits no more (its reader stops, and gRPC flow control holds its client
    back). That keeps full batches, yet eight streams with their whole windows queued (8 x
    4096) would wait longer than a request's deadline: most would expire unrun, and a batch
    that reached its oldest request's deadline failed whole.
    """

    def __init__(self, prepare: Callable[[list[T], bool], Awaitable[Prepared[T]]],
                 on_error: Callable[[list[T], BaseException], None],
                 max_batch: int, window_s: float, max_queue: int,
                 shared_batch: int = 0, collect: Callable[[], None] | None = None,
                 bulk_turn: Callable[[], Awaitable[None]] | None = None,
                 held: Callable[[], int] | None = None) -> None:
        self._prepare = prepare
        self._bulk_turn = bulk_turn
        self._on_error = on_error
        # Called before each batch is taken: a caller that holds items back while the
        # small lane is busy (`preparing`) submits them then, many at once.
        self._collect = collect or (lambda: None)
        self._held = held or (lambda: 0)  # how many items the caller holds back now
        self.max_batch = max_batch
        self.shared_batch = shared_batch or max_batch
        self._small = self.shared_batch // 8
        self.window_s = window_s
        self.max_queue = max_queue
        self._quick: _Lane[T] = _Lane("small", 1)
        self._bulk: _Lane[T] = _Lane("bulk", BULK_FLIGHTS)
        self._streamed = 0  # items of named sources (streams) queued
        self._small_seen = -SMALL_ACTIVE_S  # when a small call came last (monotonic s)
        self._stream_room = asyncio.Event()
        self._closing = False
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        for lane in (self._quick, self._bulk):
            lane.task = asyncio.create_task(self._run(lane), name=f"tollgate-{lane.name}")

    @property
    def queued(self) -> int:
        return self._quick.count + self._bulk.count

    def is_small(self, n: int) -> bool:
        """A call of n items goes in the small calls' lane."""
        return n <= self._small

    @property
    def preparing(self) -> bool:
        """The small calls' lane is preparing a batch (or landing the one before it)."""
        return self._quick.preparing

    def submit(self, items: list[T], source: object = None) -> None:
        """Queues items of one source (None: a source of their own)."""
        self.admit(len(items))
        if source is not None:
            self._streamed += len(items)
            queue = self._bulk.sources.get(source)
            if queue is None:
                queue = self._bulk.sources[source] = deque()
            queue.extend(items)
            self._queued(self._bulk, len(items))
        else:
            lane = self._calls(len(items))
            lane.sources[_Call()] = deque(items)
            self._queued(lane, len(items))

    def submit_each(self, items: list[T]) -> None:
        """Queues each item as a call of its own, as submit([item]) for each would (the
        unary calls read together), in one step; Overloaded: none of them is queued."""
        self.admit(len(items))
        lane = self._calls(1)
        sources = lane.sources
        for item in items:
            sources[_Call()] = deque((item,))
        self._queued(lane, len(items))

    def _calls(self, n: int) -> _Lane[T]:
        """The lane of a call of n items, marking small calls as seen."""
        if not self.is_small(n):
            return self._bulk
        self._small_seen = time.monotonic()
        return self._quick

    def _queued(self, lane: _Lane[T], n: int) -> None:
        lane.count += n
        lane.ready.set()
        lane.woken.set()
        if lane.count >= self.max_batch:
            lane.full.set()

    def admit(self, n: int, held: int = 0) -> None:
        """Raises Overloaded unless n more items may queue, beside `held` that a caller
        holds back to submit when the batcher collects."""
        if self._closing:
            raise Overloaded("shutting down")
        waiting = self.queued + held
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
        for lane in (self._quick, self._bulk):
            lane.ready.set()
        for lane in (self._quick, self._bulk):
            if lane.task is not None:
                await lane.task

    async def _run(self, lane: _Lane[T]) -> None:
        other = self._other(lane)
        busy = False
        while True:
            lane.preparing = False
            self._collect()
            if lane.flights and (not lane.count or self._lands_first(lane)):
                if lane is self._bulk and not await self._lands_before_items(lane):
                    continue  # items came first: prepared beside the batches in flight
                # Calls that come meanwhile are held (`preparing`) and collected together.
                lane.preparing = lane.count > 0
                reruns, oldest = await self._landed(lane)
                self._requeue(lane, reruns)
                self._release(lane, oldest)
                continue
            if not lane.count:
                if self._closing:
                    return
                busy = False
                lane.ready.clear()
                await lane.ready.wait()
                continue
            if (not busy and lane is self._quick and lane.count < self.max_batch
                    and self.window_s > 0):
                # A timer sets the event, rather than wait_for: that runs the wait as a task
                # of its own and cancels it on time-out, several event-loop turns each batch.
                lane.full.clear()
                timer = asyncio.get_running_loop().call_later(self.window_s, lane.full.set)
                try:
                    await lane.full.wait()
                finally:
                    timer.cancel()
            if lane is self._bulk and self._bulk_turn is not None:
                await self._bulk_turn()
            elif lane is self._quick and busy:
                await self._gather(lane)
            batch = self._take(lane)
            lane.full.clear()
            busy = lane.preparing = True
            lane.woken.clear()
            try:
                prepared = await self._prepare(batch, lane is self._bulk)
            except Exception as e:  # the batch fails, the batcher lives on (on_error logs)
                self._on_error(batch, e)
                prepared = Prepared([])
            # The batches landed meanwhile, and the oldest while the lane has its most in
            # flight or this batch ran nothing (what it needs, a batch in flight may hold):
            # their re-runs are older than anything of this one, so they go first, the
            # oldest's first.
            again: list[T] = []
            landed: list[Prepared[T]] = []
            wait = prepared.finish is None
            while lane.flights and (wait or lane.flights[0][0].done()
                                    or len(lane.flights) >= lane.depth):
                reruns, done = await self._landed(lane)
                again += reruns
                landed.append(done)
                wait = False
            self._requeue(lane, again + prepared.later)
            for done in landed:
                self._release(lane, done)
            if prepared.finish is not None:
                task = asyncio.create_task(self._finish(prepared))
                lane.flights.append((task, prepared))
                if prepared.sent is not None and lane is self._bulk:
                    # The next batch's preparation runs in steps of milliseconds: begun now,
                    # it would hold this finish's few steps up to its send behind each of
                    # them, and storage would wait idle (a batch's writes reached Redis 8 ms
                    # after it was prepared). The small calls' lane waits for its landing
                    # next anyway; waiting for the send too, it counted as preparing a
                    # while longer, and the unary calls that came were held back instead
                    # of read as they came (0.77x the calls/s).
                    task.add_done_callback(partial(set_done, prepared.sent))
                    await prepared.sent
                continue
            prepared.release()
            other.woken.set()
            if prepared.later and not landed and (other.preparing or other.flights):
                # Nothing ran: what it needs, the other lane holds. Taken again at once, it
                # would come back the same, a turn of the event loop after another; it
                # waits for the other's release (or new items).
                lane.preparing = False
                await lane.woken.wait()

    async def _gather(self, lane: _Lane[T]) -> None:
        """Lets the small calls still coming join the busy small lane's next batch: until
        GATHER_QUIET_TURNS turns of the event loop in a row bring none, for at most
        GATHER_MAX_S. Each batch costs some hundreds of µs however small; with 64 unary
        calls in flight, the calls answered by one batch come back while gRPC takes them
        in (its own work, call by call, in these turns): taken at once, a batch held the
        10-12 that had come during the last apply, gathered it holds 20-25."""
        loop = asyncio.get_running_loop()
        end = loop.time() + GATHER_MAX_S
        # Calls that come are held, and collected once at the end: read together (one
        # parse and one check of all of them), not a few per turn.
        lane.preparing = True
        quiet, seen = 0, lane.count + self._held()
        while (quiet < GATHER_QUIET_TURNS and seen < self.max_batch and not self._closing
               and loop.time() < end):
            await asyncio.sleep(0)
            before, seen = seen, lane.count + self._held()
            quiet = quiet + 1 if seen == before else 0
        self._collect()

    async def _lands_before_items(self, lane: _Lane[T]) -> bool:
        """Whether the idle bulk lane's oldest batch in flight lands before new items come
        (it is then landed), rather than items coming first (they are then prepared beside
        it, while the lane has room in flight). Waiting for the landing alone held a call
        that came a moment after the queue emptied until an apply landed: with four
        closed-loop callers, each sending its next call as the last one is answered, the
        usual case (1.06x `ChargeBatch` requests/s, 1.12x `ChargeStream`, alone)."""
        landing = lane.flights[0][0]
        if landing.done():
            return True
        lane.ready.clear()
        items = asyncio.ensure_future(lane.ready.wait())
        try:
            await asyncio.wait((landing, items), return_when=asyncio.FIRST_COMPLETED)
        finally:
            items.cancel()
        return landing.done() or not lane.count

    def _lands_first(self, lane: _Lane[T]) -> bool:
        """Whether the lane's next batch waits for the one in flight to land before it is
        taken, rather than being prepared beside its apply: the small calls' lane's, unless
        a full batch waits. Small calls cost a batch some hundreds of µs however few they
        are (the kernels' calls, the apply's round trip); prepared beside the apply, a
        batch takes the few calls that came during the previous one's preparation (about
        six, with 64 unary calls in flight), and waiting for the landing, those that came
        during its round trip too. The apply of the next batch waits for the landing
        either way (one finish in flight in this lane)."""
        return lane is self._quick and lane.count < self.max_batch

    def _release(self, lane: _Lane[T], landed: Prepared[T]) -> None:
        landed.release()
        self._other(lane).woken.set()

    def _other(self, lane: _Lane[T]) -> _Lane[T]:
        return self._bulk if lane is self._quick else self._quick

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

    async def _landed(self, lane: _Lane[T]) -> tuple[list[T], Prepared[T]]:
        """The oldest batch in flight, once landed: its re-runs, and the batch."""
        task, prepared = lane.flights[0]
        try:
            return await task, prepared
        finally:
            lane.flights.popleft()

    def _take(self, lane: _Lane[T]) -> list[T]:
        """The next batch of a lane: what runs again first, then its sources in turn, each up
        to max_batch items a turn (deficit round robin): a source keeps its turn, across
        batches, until it has taken that many or has no more, then goes to the back. A call
        is taken whole: once a batch holds new items, a call that does not fit in the rest
        waits for the next batch (one larger than a batch is split, from a batch's start).
        What runs again rides beside the new items, up to an eighth of a batch, and only
        once all of it is taken (more of it than a batch holds goes first, whole batches
        of it, so that no new item overtakes it): requests
        that waited for the batch in flight (their accounts were in it) would otherwise
        push the next call out whole, and go as a small batch of their own, a batch's fixed
        cost and round trip for a few dozen requests."""
        full = self._room(lane)
        batch = [lane.again.popleft() for _ in range(min(full, len(lane.again)))]
        # New items only once all that runs again is in: the rest of it would otherwise go
        # back behind them, and a session's later request run before its earlier one.
        room = 0 if lane.again else full - max(0, len(batch) - full // 8)
        fresh = 0  # new items taken
        sources, credit = lane.sources, lane.credit
        while room > 0 and sources:
            key, queue = next(iter(sources.items()))
            if type(key) is _Call and len(queue) <= room and key not in credit:
                # The usual case (a unary call among dozens): the call whole, as below.
                batch += queue
                room -= len(queue)
                fresh += len(queue)
                del sources[key]
                continue
            left = credit.get(key) or self.max_batch
            take = min(left, len(queue), room)
            if fresh and isinstance(key, _Call) and take < len(queue):
                break
            batch += [queue.popleft() for _ in range(take)]
            room -= take
            fresh += take
            if not isinstance(key, _Call):
                self._streamed -= take
            if not queue:
                del sources[key]
                credit.pop(key, None)
            elif take == left:
                credit.pop(key, None)
                sources.move_to_end(key)  # its turn is over: the others first
            else:
                credit[key] = left - take  # the rest of its turn opens the next batch
        lane.count -= len(batch)
        if self._streamed < 2 * self.max_batch:
            self._stream_room.set()
        return batch

    def _room(self, lane: _Lane[T]) -> int:
        """How many items the next batch of a lane may take (see the class's docstring)."""
        if lane is self._bulk and time.monotonic() - self._small_seen < SMALL_ACTIVE_S:
            return min(self.shared_batch, self.max_batch)
        return self.max_batch

    def _requeue(self, lane: _Lane[T], items: list[T]) -> None:
        lane.again.extendleft(reversed(items))
        lane.count += len(items)
