"""The charging engine: decode, batch, load, kernel, apply, answer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from redis.exceptions import RedisError

from tollgate.engine.charging import account_writes, answers, kernels, sessions, usage_wire, wire
from tollgate.engine.charging.batch import KernelBatch, KernelResult, assemble
from tollgate.engine.charging.batcher import Batcher, Prepared, set_done
from tollgate.engine.charging.cache import AccountCache
from tollgate.engine.charging.decode import Invalid, decode_all, decode_steps
from tollgate.engine.charging.decode import warm_up as warm_up_checks
from tollgate.engine.charging.flow import SmallFirst
from tollgate.engine.charging.kernels import items, records
from tollgate.engine.charging.kernels.charge import O_RESULT
from tollgate.engine.charging.kernels.session_checks import (
    V_CHARGE,
    V_CHARGING_SESSION,
    V_ENDED,
    V_EXISTS,
    V_FOREIGN,
    V_NO_ACCOUNT,
    V_NO_SESSION,
    V_OLDER,
    V_STORED,
)
from tollgate.engine.charging.outcome import ENDS, Outcome, Timing, build_outcome
from tollgate.engine.charging.request import Answers, Request, answer_all, error_answer
from tollgate.engine.charging.sessions import SessionView
from tollgate.engine.domain import Plan, RequestType, ResultCode, SubscriberState
from tollgate.engine.errors import InvalidArgument, NotFound, Overloaded
from tollgate.engine.ops import metrics
from tollgate.engine.ops.config import Config
from tollgate.engine.rating.plans import RateTable
from tollgate.engine.storage.store import Store
from tollgate.engine.storage.writes import Writes, writer_token
from tollgate.engine.storage.writes import warm_up as warm_up_writes
from tollgate.v1 import charging_pb2 as pb

log = logging.getLogger("tollgate.engine")
T = TypeVar("T")

MAX_RERUNS = 50
"""A request whose account keeps changing under it is answered UNABLE_TO_COMPLY after this."""

YIELD_AT = 32
"""Batches of at least this many requests let the event loop run other work between their
steps (Engine._run); a smaller batch's steps are shorter than the turns would cost."""

DECODE_STEP = 64
"""A message's requests decoded at a time, with a turn of the event loop between (submit)."""

SMALL_FIRST_S = 0.005
"""How long a bulk step waits at most for the unary calls in the engine (SmallFirst)."""

SUCCESS = int(ResultCode.SUCCESS)
DENIED_STATES = frozenset({SubscriberState.SUSPENDED, SubscriberState.TERMINATED})
# Read per request: a member looked up on its enum class costs three times as much.
GRACE = SubscriberState.GRACE
INITIAL, EVENT = RequestType.INITIAL, RequestType.EVENT


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


OTHERS_QUIET_S = 10.0
"""After another writer's change was last seen (a version conflict or a stale cached account),
how long every cached account a batch uses has its version checked with the batch's reads. A
server alone on its Redis never checks (each costs the client about 5 µs, versions.lua)."""


async def by_deadline(deadline: float, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or TimeoutError at `deadline` (event-loop time). The work runs as a
    task that is cancelled then but not waited for: a cancelled redis-py call was seen to hold
    on until Redis answered (Redis paused), and a batch's requests are answered by their
    deadline. A write it sent may still run in Redis: the version check makes that safe, as
    for any answer lost on the way (the requests are answered UNABLE_TO_COMPLY)."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(work)
    # One future woken by whichever comes first (asyncio.wait costs about twice as much, and
    # a batch waits like this twice).
    woken = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)
    timer = loop.call_at(deadline, wake)
    task.add_done_callback(wake)
    try:
        await woken
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    if not task.done():
        task.cancel()
        task.add_done_callback(_outcome_ignored)
        raise TimeoutError
    return task.result()


def _outcome_ignored(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it as never retrieved


def _fail_call(call: Answers, error: Exception) -> None:
    if not call.future.done():  # its caller may have gone (cancelled)
        call.future.set_exception(error)


def _opens_session(req: Request) -> bool:
    """An INITIAL, or an EVENT's first request: its session is new unless this is a
    retransmission, so it is not read first; the apply refuses it if the session exists
    (engine/storage/lua/apply.lua), and it runs again on what was read then."""
    return req.type == INITIAL or (req.type == EVENT and req.request_number == 0)


def _refusal(req: Request, verdict: int, arg: int) -> tuple[ResultCode, str]:
    """The words of a session check's refusal (kernels.session_checks V_*; `arg`: its
    argument)."""
    sid = req.session_id
    if verdict == V_NO_ACCOUNT:
        return (ResultCode.UNABLE_TO_COMPLY,
                f"account of subscriber {req.subscriber_id!r} is missing")
    if verdict == V_FOREIGN:
        # Checked before the stored answers: they are the owner's. An INITIAL or a first
        # EVENT on a session not read comes here too, once the apply refused it as existing
        # and it was read.
        return ResultCode.UNKNOWN_SESSION_ID, f"session {sid!r} belongs to another subscriber"
    if verdict == V_NO_SESSION:
        return ResultCode.UNKNOWN_SESSION_ID, f"no open session {sid!r}"
    if verdict == V_CHARGING_SESSION:
        return ResultCode.INVALID_AVP_VALUE, "session_id belongs to a charging session"
    if verdict == V_EXISTS:
        return ResultCode.INVALID_AVP_VALUE, f"session {sid!r} already exists"
    if verdict == V_ENDED:
        return ResultCode.UNKNOWN_SESSION_ID, f"session {sid!r} has ended"
    if verdict == V_OLDER and req.type == RequestType.EVENT:
        return ResultCode.UNKNOWN_SESSION_ID, "request_number is older than the last one"
    if verdict == V_OLDER:
        return (ResultCode.UNKNOWN_SESSION_ID,
                f"request_number {req.request_number} is older than {arg}")
    raise AssertionError(f"no refusal has verdict {verdict}")


@dataclass(slots=True, eq=False)
class Claim:
    """The accounts a batch holds, from its preparation until its re-runs are back in the
    queue; once its writes are sent (`sent` done), the cache holds its predicted outcome for
    them and a later batch of the same lane may be computed on it (chained: its writes apply
    only if this batch's did). Only of the same lane: a lane's applies reach Redis in the
    order they are sent (each batch's preparation takes longer than Redis takes to read the
    one before), but a small batch sent just after a bulk one's megabyte could be read
    first, and be refused."""

    accounts: set[str]
    bulk: bool
    sent: asyncio.Future[None] | None = None
    charged: list[Request] = field(default_factory=list)  # the requests it charges
    _sessions: frozenset[str] | None = None

    @property
    def predicted(self) -> bool:
        return self.sent is not None and self.sent.done()

    @property
    def sessions(self) -> frozenset[str]:
        """Those of the requests it charges: gathered once a later batch is chained on it
        (most batches of an open loop never are)."""
        if self._sessions is None:
            self._sessions = frozenset([p.session_id for p in self.charged])
        return self._sessions


@dataclass(frozen=True, slots=True)
class Run:
    """A batch through the kernel: its items, their results, and what to write."""

    kb: KernelBatch
    res: KernelResult
    outcome: Outcome


class Engine:
    """Owns the batcher, the caches and the hot path; the servicers only translate."""

    def __init__(self, store: Store, config: Config,
                 clock: Callable[[], int] = wall_clock_ms) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.accounts = AccountCache(config.account_cache_size)
        self._subscribers: dict[str, tuple[str, SubscriberState, float]] = {}
        self._plans: dict[str, tuple[Plan, float]] = {}
        self.rates = RateTable()
        self.small_first = SmallFirst(SMALL_FIRST_S)
        self._decoding = asyncio.Lock()  # a large message is being decoded (submit)
        self.batcher: Batcher[Request] = Batcher(
            self._prepare, self._fail, config.max_batch, config.batch_window_ms / 1000,
            config.max_queue, config.shared_batch, collect=self._submit_singles,
            bulk_turn=self.small_first.bulk_turn, held=lambda: len(self._singles))
        self.conflicts = 0
        self.chained = 0  # requests charged on a batch in flight's predicted outcome
        self.stale_reads = 0  # cached accounts found moved on before use (see _load)
        self._others_seen = -OTHERS_QUIET_S  # when another writer last showed (monotonic s)
        self._watcher: asyncio.Task[None] | None = None
        self._subscriber_changes = 0  # changes heard so far (see _resolve_subscribers)
        # Per batch being prepared or applied (until its re-runs are back in the queue), the
        # accounts it holds: no other batch, of either of the batcher's lanes, may use them,
        # but on the outcome predicted of a batch whose writes are sent (Claim.predicted).
        self._claims: dict[int, Claim] = {}
        # Accounts with a request that waits for a landing (held by the other lane's batch,
        # or needing a stored answer, a refusal or a read on a predicted state): not chained
        # on again until they are free, or a busy account, chained on in every batch, would
        # keep the request waiting to its deadline.
        self._settling: set[str] = set()
        self._claim_numbers = itertools.count()
        # Unary calls not queued yet, with their deadlines (submit_one).
        self._singles: list[tuple[bytes, Answers, float]] = []
        store.subscriber_listeners.append(self._forget_subscriber)

    def start(self) -> None:
        self.warm_up()
        self.batcher.start()
        self._watcher = asyncio.create_task(self.store.watch_subscriber_changes())

    async def close(self) -> None:
        await self.batcher.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def warm_up(self) -> None:
        """Loads (or compiles) the kernels now, so that no request waits for Numba."""
        fresh = not kernels.compiled()
        if fresh:
            # Compiling takes about a minute on a small machine: say so, or a first start
            # looks hung.
            log.warning("compiling the kernels for this version (once per install or "
                        "upgrade; later starts load them from the cache)")
        started = time.monotonic()
        kb = assemble([], AccountCache(0), {}, self.rates, self.clock(),
                      SessionView.of([], [], []), [])
        kb.keep(kb.run(self.rates), set())
        wire.warm_up()
        warm_up_checks(self.config)
        usage_wire.warm_up()
        records.warm_up()
        answers.warm_up()
        sessions.warm_up()
        warm_up_writes()
        account_writes.warm_up()
        if fresh:
            log.warning("kernels compiled in %.0f s", time.monotonic() - started)

    def _forget_subscriber(self, subscriber_id: str | None) -> None:
        self._subscriber_changes += 1
        if subscriber_id is None:
            self._subscribers.clear()
        else:
            self._subscribers.pop(subscriber_id, None)

    # --- entry point ---------------------------------------------------------------------

    def parse(self, data: bytes, single: bool = False) -> wire.Parsed:
        """The tables of a ChargeBatchRequest's wire bytes (a ChargeRequest's if `single`);
        InvalidArgument for bytes that cannot be read or too many requests."""
        parsed = wire.parse_request(data) if single else wire.parse_batch(data)
        n = parsed.requests.shape[1]
        limit = self.config.max_requests_per_call
        if n > limit:
            raise InvalidArgument(f"{n} requests in one message; the limit is {limit}")
        return parsed

    async def submit(self, data: bytes, parsed: wire.Parsed, source: object = None) -> Answers:
        """Queues the requests of a parsed message (`data`: its bytes); the returned call's
        future resolves to their answers' bytes, in order, once their effects are in Redis.
        Raises Overloaded when the queue is full (nothing is queued then). `source`: the
        stream the requests come from (None: the call is its own), for the batcher's fair
        turns between callers; a stream's message waits its turn to queue
        (Batcher.stream_room); a call of a few requests goes first (_goes_first). A large
        message is decoded DECODE_STEP requests at a time, unary calls' work between the
        steps (SmallFirst), and queued whole. The requests' deadline runs from when they
        are queued."""
        loop = asyncio.get_running_loop()
        call = Answers(parsed.requests[wire.R_TYPE].tolist(), loop.create_future())
        n = len(call.types)
        calls, deadlines = [call] * n, [0.0] * n
        steps = decode_steps(data, parsed, self.config, self.clock(), DECODE_STEP)
        if n <= DECODE_STEP:
            pending = self._pending(next(steps, []), 0, parsed, calls, range(n), deadlines)
        else:
            pending = []
            # One message in steps at a time: eight streams' messages decoded side by side
            # would put eight steps in every turn of the event loop, and a new call's turns
            # in gRPC would wait for all of them.
            async with self._decoding:
                for lo in range(0, n, DECODE_STEP):
                    await self.small_first.bulk_turn()  # a turn of the event loop at least
                    pending += self._pending(next(steps), lo, parsed, calls, range(n),
                                             deadlines)
        if source is not None:
            # Checked in the same step as the requests are queued, so that the streams'
            # backlog stays bounded however many of them decode meanwhile.
            await self.batcher.stream_room()
        deadline = loop.time() + self.config.request_deadline_s
        for p in pending:
            p.deadline = deadline
        if pending:
            self.batcher.submit(pending, source)
        if source is None and self.batcher.is_small(n):
            self._goes_first(call)
        return call

    def submit_one(self, data: bytes) -> Answers:
        """Queues one ChargeRequest's bytes (a unary call): its answer as submit's (Overloaded
        at once when the queue is full); bytes that cannot be read fail its future
        (InvalidArgument). The calls of one event-loop turn, or of the time the batcher
        takes to prepare a batch, are parsed and checked together: a ChargeRequest's bytes
        are an entry of a ChargeBatchRequest, so they cost one kernel call of each kind, not
        one per call. Each call stays its own caller in the batcher, and its deadline runs
        from now."""
        self.batcher.admit(1, held=len(self._singles))
        loop = asyncio.get_running_loop()
        call = Answers([0], loop.create_future())
        self._goes_first(call)
        self._singles.append((data, call, loop.time() + self.config.request_deadline_s))
        if not self.batcher.preparing and len(self._singles) == 1:
            loop.call_soon(self._submit_singles)
        # else the batcher collects them before it takes its next batch: the calls that came
        # while it prepared one, together.
        return call

    def _goes_first(self, call: Answers) -> None:
        """A small call (a unary Charge, a few requests): bulk work waits for it until it is
        answered (SmallFirst), as the batcher gives it the small calls' lane."""
        self.small_first.begin()
        call.future.add_done_callback(self.small_first.end)

    def _submit_singles(self) -> None:
        if self._singles:
            singles, self._singles = self._singles, []
            self._queue_singles(singles)

    def _queue_singles(self, singles: list[tuple[bytes, Answers, float]]) -> None:
        calls = [call for _, call, _ in singles]
        data = wire.field_1([d for d, _, _ in singles])
        try:
            parsed = wire.parse_batch(data)  # max_requests_per_call is per call: 1 each
            for call, kind in zip(calls, parsed.requests[wire.R_TYPE].tolist(), strict=True):
                call.types[0] = kind
            pending = self._decode(data, parsed, calls, [0] * len(calls),
                                   [deadline for _, _, deadline in singles])
        except wire.WireError:
            if len(singles) == 1:
                _fail_call(calls[0], self._parse_one(singles[0][0]))
                return
            # Which one cannot be read: each on its own, so that only that call fails, with
            # the message its bytes alone get.
            for one in singles:
                self._queue_singles([one])
            return
        except Exception as e:  # a bug: these calls fail (INTERNAL), none of them queued
            log.error("unary calls failed", exc_info=e)
            for call in calls:
                _fail_call(call, e)
            return
        try:
            self.batcher.submit_each(pending)
        except Overloaded:  # room for some of them, perhaps: each learns whether it fits
            for p in pending:
                try:
                    self.batcher.submit([p])
                except Overloaded as e:
                    _fail_call(p.call, e)

    def _parse_one(self, data: bytes) -> InvalidArgument:
        """Why a ChargeRequest's bytes cannot be read (they could not as a batch's entry)."""
        try:
            self.parse(data, single=True)
        except InvalidArgument as e:
            return e
        raise AssertionError("a ChargeRequest that reads alone reads as a batch's entry")

    def _decode(self, data: bytes, parsed: wire.Parsed, calls: list[Answers],
                slots: Sequence[int], deadlines: list[float]) -> list[Request]:
        """The requests of a parsed message to queue (request r answers `calls[r]` at
        `slots[r]` by `deadlines[r]`); each invalid one answered with its refusal."""
        return self._pending(decode_all(data, parsed, self.config, self.clock()), 0, parsed,
                             calls, slots, deadlines)

    @staticmethod
    def _pending(decoded: list[Request | Invalid], lo: int, parsed: wire.Parsed,
                 calls: list[Answers], slots: Sequence[int], deadlines: list[float]
                 ) -> list[Request]:
        """_decode's, for the requests from row `lo` of the message: each valid one told
        where its answer goes."""
        pending: list[Request] = []
        for r, request in enumerate(decoded, lo):
            if isinstance(request, Invalid):
                calls[r].put(slots[r], error_answer(
                    parsed.text(wire.R_SESSION, r),
                    int(parsed.requests[wire.R_NUMBER, r]), request.code, str(request)),
                    request.code)
            else:
                request.call, request.slot, request.deadline = calls[r], slots[r], deadlines[r]
                pending.append(request)
        return pending

    async def charge(self, msgs: list[pb.ChargeRequest]) -> list[pb.ChargeAnswer]:
        """The answers to request messages (tests and fronts that hold messages, not bytes);
        a few (the Diameter front's CCRs of one read) go first, as submit says."""
        # Each request's bytes joined as the batch's field 1: what ChargeBatchRequest would
        # write, without copying every message into one first.
        data = wire.field_1([m.SerializeToString() for m in msgs])
        call = await self.submit(data, self.parse(data))
        return [pb.ChargeAnswer.FromString(a) for a in await call.future]

    def _fail(self, batch: list[Request], error: BaseException) -> None:
        """The batch's outcome is unknown (it may have been applied): UNABLE_TO_COMPLY, and a
        retransmission finds the stored answer if it was. Cached state is dropped."""
        metrics.BATCH_ERRORS.inc()
        # A Redis outage fails every batch: one line each, no traceback (that is for bugs).
        if isinstance(error, TimeoutError):
            why = (f"storage did not answer within request_deadline_s "
                   f"({self.config.request_deadline_s:g} s), retry")
            log.warning("batch failed: %s", why, extra={"requests": len(batch)})
        elif isinstance(error, RedisError | OSError):
            # The detail (addresses, errno) is for the log, not for gateways.
            why = "storage unavailable, retry"
            log.warning("batch failed: %s (%s: %s)", why, type(error).__name__, error,
                        extra={"requests": len(batch)})
        else:
            why = f"internal error ({type(error).__name__}), retry"
            log.error("batch failed", exc_info=error, extra={"requests": len(batch)})
        for p in batch:
            self.accounts.drop(p.account_id)
            p.refuse(ResultCode.UNABLE_TO_COMPLY, why)

    # --- one batch ----------------------------------------------------------------------

    async def _prepare(self, batch: list[Request], bulk: bool) -> Prepared[Request]:
        """Answers what waited past its deadline without running it (so it is never applied),
        and prepares the rest under the earliest remaining deadline: everything up to the
        apply, which `finish` does. Requests of an account another batch holds (being
        prepared, or applied) wait for a later batch: they must see its effects. A `bulk`
        batch's steps wait for the unary calls in the engine (SmallFirst)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        live = [p for p in batch if p.deadline > now]
        if len(live) < len(batch):
            for p in batch:
                if p.deadline <= now:
                    p.refuse(ResultCode.UNABLE_TO_COMPLY,
                             f"not run within request_deadline_s "
                             f"({self.config.request_deadline_s:g} s): storage is slow or "
                             "unreachable, retry")
        if not live:
            return Prepared([])
        deadline = min(p.deadline for p in live)
        # The order requests that run again keep; the positions are looked up only when two
        # or more do (rare).
        arrival = live[:]

        def in_arrival_order(requests: list[Request]) -> list[Request]:
            if len(requests) < 2:
                return requests
            order = {id(p): n for n, p in enumerate(arrival)}
            return sorted(requests, key=lambda p: order[id(p)])
        metrics.BATCH_SIZE.observe(len(live))
        metrics.QUEUED.set(self.batcher.queued)
        number, claim = next(self._claim_numbers), Claim(set(), bulk)
        self._claims[number] = claim

        def release() -> None:
            del self._claims[number]
        try:
            live, later, run = await by_deadline(deadline,
                                                 self._read_and_run(live, claim, bulk))
        except BaseException:
            release()
            raise
        # Requests run again keep their arrival order: a session's later request must not
        # overtake an earlier one.
        later = in_arrival_order(later)
        if run is None:
            return Prepared([], later=later, release=release)
        token = writer_token()
        self._predict(live, run, token)
        claim.charged = live
        claim.sent = sent = loop.create_future()

        async def finish() -> list[Request]:
            if bulk:
                await self.small_first.bulk_turn()
            conflicted = await by_deadline(deadline, self._apply(
                run.kb, run.outcome.writes, partial(set_done, sent), token))
            return in_arrival_order(self._settle(live, run, conflicted, token))

        return Prepared(live, finish, later, release, sent)

    async def _read_and_run(self, live: list[Request], claim: Claim, bulk: bool
                            ) -> tuple[list[Request], list[Request], Run | None]:
        """Reads what the batch needs and runs the kernel: the requests run, those for a later
        batch, and the run (None: nothing left to run). The accounts it uses go in `claim`."""
        live = await self._resolve_subscribers(live)
        # Accounts another batch holds wait: the other lane's batch being prepared, and the
        # batches in flight until their re-runs are back in the queue (they go before
        # these); but a batch of this lane in flight whose writes are sent leaves its
        # predicted outcome in the cache, and this batch's writes of those accounts are
        # chained on it (they apply only if its did). Claimed in the same step of the event
        # loop as checked.
        ids = {p.account_id for p in live}
        taken: set[str] = set()
        chained: set[str] = set()
        busy: set[str] = set()
        for c in self._claims.values():
            if c is not claim and (held := ids & c.accounts):
                if c.predicted and c.bulk == bulk:
                    chained |= held
                    busy |= c.sessions
                else:
                    taken |= held
        if len(self._claims) == 1:
            # No other batch holds anything: nothing is chained on, and an account whose
            # waiting request went (past its deadline, say) is not kept here for good.
            self._settling.clear()
        elif self._settling:
            taken |= chained & self._settling
            # What waited for the landings of the accounts no batch holds now runs in this
            # batch, or in the other lane's (it went back to the front of its queue).
            self._settling -= ids - taken - chained
        chained -= taken
        later: list[Request] = []
        if taken or chained:
            # A session has one request in flight at most: re-runs go back to the queue
            # before whatever waits there, so a session's earlier request, refused, still
            # runs before its later ones.
            free: list[Request] = []
            for p in live:
                if p.account_id in taken or (p.account_id in chained
                                             and p.session_id in busy):
                    later.append(p)
                else:
                    free.append(p)
            live = free
            metrics.WAITED.inc(len(later))
            self._settling |= taken
        claim.accounts.update(ids - taken)
        live, deferred = self._one_request_per_session(live)
        live, unread = await self._load(live, chained)
        # Per account, not per request: `claim` holds the batch's accounts (and those of
        # requests deferred, whose plans are loaded a batch early).
        accounts = self.accounts
        await self._load_plans({acct.plan_id for a in claim.accounts
                                if (acct := accounts.get(a)) is not None})
        # No await from here to the batch's assembly: a chained account the batch before
        # drops meanwhile (its write was refused) is found missing here, and waits.
        live, rows, view, unsure = self._check_sessions(live, chained)
        self._settling.update(p.account_id for p in (*unread, *unsure))
        later += deferred + unread + unsure
        if not live:
            return live, later, None
        if chained:
            n = sum(p.account_id in chained for p in live)
            self.chained += n
            metrics.CHAINED.inc(n)
        return live, later, await self._run(live, view, rows, bulk)

    async def _resolve_subscribers(self, batch: list[Request]) -> list[Request]:
        now = time.monotonic()
        known: dict[str, tuple[str, SubscriberState, float]] = {}  # (account, state, until)
        missing = []
        cached = self._subscribers.get
        subscribers = {p.subscriber_id for p in batch}
        for sid in subscribers:
            entry = cached(sid)
            if entry is not None and entry[2] > now:
                known[sid] = entry
            else:
                missing.append(sid)
        if missing:
            ttl = now + self.config.subscriber_cache_s
            changes = self._subscriber_changes
            found = await self.store.read_subscribers(missing, charging=True)
            # A change heard while reading may be newer than what was read: use it for this
            # batch (it was true when read), but cache it only if nothing changed meanwhile.
            keep = changes == self._subscriber_changes
            for sid, sub in zip(missing, found, strict=True):
                if sub is None:
                    self._subscribers.pop(sid, None)
                    continue
                known[sid] = entry = (sub[0], sub[1], ttl)
                if keep:
                    self._subscribers[sid] = entry
        if len(known) == len(subscribers) and not any(
                entry[1] in DENIED_STATES for entry in known.values()):  # the usual batch
            for p in batch:
                # Kept with the request: the cache may drop the entry before the kernel runs.
                p.account_id, state, _ = known[p.subscriber_id]
                p.grace = state == GRACE
            return batch
        out = []
        for p in batch:
            got = known.get(p.subscriber_id)
            if got is None:
                p.refuse(ResultCode.USER_UNKNOWN,
                         f"subscriber {p.subscriber_id!r} is not known")
            elif got[1] in DENIED_STATES:
                p.refuse(ResultCode.END_USER_SERVICE_DENIED, f"subscriber is {got[1].name}")
            else:
                p.account_id, p.grace = got[0], got[1] == GRACE
                out.append(p)
        return out

    @staticmethod
    def _one_request_per_session(batch: list[Request]) -> tuple[list[Request], list[Request]]:
        """Exact retransmissions ride along with their original; a later request of a session
        already in the batch waits for the next batch (it must see this one's effects)."""
        if len({p.session_id for p in batch}) == len(batch):
            return batch, []  # the usual batch: a request per session
        first: dict[tuple[str, int, str], Request] = {}
        sessions: set[str] = set()
        live, deferred = [], []
        for p in batch:
            # The subscriber is part of the key: another subscriber's request with the same
            # numbers is no retransmission and must not get this one's answer.
            key = (p.session_id, p.request_number, p.subscriber_id)
            if key in first:
                original = first[key]
                if original.followers is None:
                    original.followers = []
                original.followers.append(p)
            elif key[0] in sessions:
                deferred.append(p)
            else:
                first[key] = p
                sessions.add(key[0])
                live.append(p)
        return live, deferred

    async def _load(self, batch: list[Request], chained: set[str]
                    ) -> tuple[list[Request], list[Request]]:
        """Puts every account of the batch, with the sessions it needs, in the cache; returns
        the requests to run, and those that wait for a later batch: requests of `chained`
        accounts (the cache holds the outcome a batch in flight predicts) that need a read,
        which could return the state before that batch."""
        stale: set[str] = set()
        check: dict[str, int] = {}  # cached account -> its cached version, to compare
        # While other servers write these accounts, every cached one is checked.
        shared = time.monotonic() - self._others_seen < OTHERS_QUIET_S
        accounts = self.accounts
        cached = {a: accounts.get(a) for a in {p.account_id for p in batch}}
        for p in batch:
            acct = cached[p.account_id]
            # A request that opens its session is not read first (see below), but once the
            # apply refused it (the session exists: a retransmission), its session is read:
            # run again as new, it would be refused again.
            if acct is None or (p.session_id not in acct.sessions
                                and (p.reruns or not _opens_session(p))):
                stale.add(p.account_id)
        unread: list[Request] = []
        if chained and (waits := stale & chained):
            stale -= waits
            live: list[Request] = []
            for p in batch:
                (unread if p.account_id in waits else live).append(p)
            batch = live
        for account_id, acct in cached.items():
            if acct is None or account_id in stale:
                continue
            if shared and account_id not in chained:
                # Another server (another worker) may have written it since it was cached.
                # Its version is compared in Redis alongside the batch's reads; a stale copy
                # costs a second read instead of a refused write and a re-run. (A chained
                # write checks the batch it was computed after, in the apply.)
                check[account_id] = acct.version
            accounts.touch(account_id)
        if not stale and not check:
            return batch, unread
        # Read every session the batch needs of such an account, not only the missing ones:
        # if the account moved on, the cached sessions are dropped with the old version.
        # (Gathered only now: a batch of cached accounts, the usual one, needs none.)
        sessions_of: dict[str, set[str]] = {a: set() for a in (*stale, *check)}
        for p in batch:
            needed = sessions_of.get(p.account_id)
            if needed is not None and (p.reruns or not _opens_session(p)):
                # A session a request opens is new unless the request is a retransmission:
                # on its first run it is not read even with its account (a subscriber's
                # first charge reads one thing less); the apply refuses it if it exists,
                # and the run again reads it.
                needed.add(p.session_id)
        wanted = [(a, sorted(sessions_of[a])) for a in stale]
        with metrics.LOAD_SECONDS.time():
            if check:
                loaded, moved = await asyncio.gather(self.store.read_accounts(wanted),
                                                     self.store.moved_accounts(check))
            else:
                loaded, moved = await self.store.read_accounts(wanted), set()
            if moved:
                metrics.STALE_READS.inc(len(moved))
                self.stale_reads += len(moved)
                self._others_seen = time.monotonic()
                again = [(a, sorted(sessions_of[a])) for a in moved]
                wanted += again
                loaded += await self.store.read_accounts(again)
        fresh = []
        for (account_id, session_ids), (acct, values) in zip(wanted, loaded, strict=True):
            if acct is None:
                self.accounts.drop(account_id)
                continue
            old = self.accounts.get(account_id)
            if old is not None and old.version == acct.version:
                acct.sessions = old.sessions
            for sid, value in zip(session_ids, values, strict=True):
                if value is not None:
                    acct.sessions[sid] = value
            fresh.append(acct)
        self.accounts.put(fresh)
        return batch, unread

    def _check_sessions(self, batch: list[Request], chained: set[str]
                        ) -> tuple[list[Request], list[int], SessionView, list[Request]]:
        """Answers retransmissions from stored answers and refuses what the session state
        does not allow (kernels.session_checks); returns the requests to charge, with their
        rows in the batch's sessions read into tables (row r: request r's; none for an
        account that is missing), and those that wait for a later batch: a request of a
        `chained` account is answered only by a charge, whose write applies only if the
        batch in flight it was computed after did (a stored answer, or a refusal, from the
        outcome that batch predicts could be one that never lands)."""
        get = self.accounts.get
        found = [get(p.account_id) for p in batch]
        values = [None if acct is None else acct.sessions.get(p.session_id)
                  for p, acct in zip(batch, found, strict=True)]
        owners = [s for p in batch for s in (p.subscriber_id, p.account_id)]
        view = SessionView.of([p.session_id for p in batch], values, owners)
        verdicts, args = view.checks([p.type for p in batch],
                                     [p.request_number for p in batch],
                                     [acct is not None for acct in found])
        if verdicts.count(V_CHARGE) == len(batch):  # the usual batch: all charged
            return batch, list(range(len(batch))), view, []
        out, rows, unsure = [], [], []
        for r, (p, verdict) in enumerate(zip(batch, verdicts, strict=True)):
            if verdict == V_CHARGE:
                out.append(p)
                rows.append(r)
            elif p.account_id in chained:
                unsure.append(p)
            elif verdict == V_STORED:
                stored = view.stored(args[r])
                p.answer(stored, pb.ChargeAnswer.FromString(stored).result)
            else:
                p.refuse(*_refusal(p, verdict, args[r]))
        return out, rows, view, unsure

    async def _load_plans(self, plan_ids: set[str]) -> None:
        now = time.monotonic()
        for plan_id in plan_ids:
            cached = self._plans.get(plan_id)
            if cached is not None and cached[1] > now:
                continue
            version = await self.store.plan_version(plan_id)
            if cached is None or cached[0].version != version:
                try:
                    plan = await self.store.get_plan(plan_id, version)
                except NotFound:
                    log.error("plan %r of an account does not exist", plan_id)
                    continue
            else:
                plan = cached[0]
            self._plans[plan_id] = (plan, now + self.config.plan_refresh_s)

    # --- kernel, apply, answer ----------------------------------------------------------

    async def _run(self, batch: list[Request], view: SessionView, rows: list[int],
                   bulk: bool = False) -> Run:
        plans = {pid: entry[0] for pid, entry in self._plans.items()}
        now = self.clock()
        kb = assemble(batch, self.accounts, plans, self.rates, now, view, rows)
        # A large batch's steps take milliseconds each: between them, other work (a small
        # batch prepared or landing, calls coming in) gets its turn. Safe: the accounts of
        # this batch are no other batch's (see _read_and_run); what batches share (the
        # plans, the grow-only rate table) is not changed under it; the batch has its
        # accounts' numbers gathered, and keeps nothing of an account the cache lets go.
        large = len(batch) >= YIELD_AT
        if large:
            await self._turn(bulk)
        with metrics.KERNEL_SECONDS.time():
            res = kb.run(self.rates)
        if large:
            await self._turn(bulk)
        # Counted when run: a batch run again after a version conflict counts again (rare).
        metrics.count_grants(res.outputs[O_RESULT][res.shown.astype(bool)])
        timing = Timing(now, self.config.answers_kept, self.config.default_validity_s,
                        self.config.stale_grace_s)
        return Run(kb, res, build_outcome(batch, kb, res, self.rates, timing))

    async def _turn(self, bulk: bool) -> None:
        """A turn of the event loop for other work; a bulk batch's waits for the unary calls
        in the engine (a small batch's would wait for its own calls)."""
        if bulk:
            await self.small_first.bulk_turn()  # a turn at least
        else:
            await asyncio.sleep(0)

    async def _apply(self, kb: KernelBatch, writes: Writes,
                     sent: Callable[[], None] | None, token: int) -> set[str]:
        """Applies every account's write; returns the accounts refused by the version check.
        `sent`: called once the writes are on their way; `token`: the batch's writer token
        (Store.apply_writes)."""
        with metrics.APPLY_SECONDS.time():
            refused = await self.store.apply_writes(
                writes, self.config.answer_retention_s * 1000, sent, token)
        return {kb.accounts[g].account_id for g in refused}

    def _predict(self, batch: list[Request], run: Run, token: int) -> None:
        """Brings the cache up to the batch's outcome before it is applied (the state its
        writes leave, if they apply; `token`: the batch's writer token): a later batch may
        be computed on it (chained). An account whose write is refused, or whose batch
        fails, is dropped from the cache (_settle, _fail), and the writes chained on it are
        refused by their token check."""
        kb, outcome = run.kb, run.outcome
        for acct in kb.accounts:
            acct.version += 1
            acct.token = token
        kb.keep(run.res, set())
        sessions = [acct.sessions for acct in kb.accounts]
        positions, kinds = kb.requests[:, [items.Q_ACCT, items.Q_TYPE]].T.tolist()
        for p, value, a, kind in zip(batch, outcome.values, positions, kinds, strict=True):
            if kind in ENDS:  # a TERMINATION's session, and every EVENT's
                # Kept only in Redis, with its stored answers: a later request reads it, and a
                # retransmitted first request (not read first) is refused by the apply as
                # existing, then read and answered. Cached, every event id would stay until
                # the account is evicted.
                sessions[a].pop(p.session_id, None)
            else:
                sessions[a][p.session_id] = value

    def _settle(self, batch: list[Request], run: Run, conflicted: set[str], token: int
                ) -> list[Request]:
        """Answers what was applied (the cache holds it already: _predict); the accounts whose
        write was refused (another writer moved them, a session believed new exists, or the
        write it was chained on was refused) are dropped from the cache and their requests
        returned, to run again on fresh state."""
        kb, outcome = run.kb, run.outcome
        refused: set[int] = set()
        for a, acct in enumerate(kb.accounts):
            if acct.account_id in conflicted:
                self.accounts.drop(acct.account_id)
                self.conflicts += 1
                metrics.CONFLICTS.inc()
                self._others_seen = time.monotonic()
                refused.add(a)
            elif acct.token == token:
                acct.token = 0  # applied: the version alone says it is this state
        again: list[Request] = []
        answered, answers = batch, outcome.answers
        if refused:
            positions = kb.requests[:, items.Q_ACCT].tolist()
            answered, answers = [], []
            for p, a, answer in zip(batch, positions, outcome.answers, strict=True):
                if a not in refused:
                    answered.append(p)
                    answers.append(answer)
                    continue
                p.reruns += 1
                if p.reruns > MAX_RERUNS:
                    p.refuse(ResultCode.UNABLE_TO_COMPLY, "account is changing too fast, retry")
                else:
                    again.append(p)
        answer_all(answered, answers, SUCCESS)
        return again
