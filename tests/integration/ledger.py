"""The books of an end-to-end money test: a seeded traffic model that drives gateway sessions
over the real API, and the checks that balances, reservations and rated usage records add up.

Conservation, per account: initial money + top-ups = free money + reserved money + money of
the rated usage records; per bucket: initial = remaining + reserved + bucket units of the
records. The traffic model also predicts every record (who, how many units, how much overage)
and every live reservation, so a record too many (a double charge), too few, or a reservation
that leaked is named precisely.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import grpc

from tests.helpers import DATA_RG, SMS_RG, VIDEO_RG, VOICE_RG
from tollgate.engine.charging.kernels.reference import RefRate, billed, price
from tollgate.engine.storage import keys, record_block
from tollgate.engine.storage.redis_client import connect, connect_async
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb
from tollgate.v1 import usage_pb2

Send = Callable[[list[cpb.ChargeRequest]], Awaitable[list[cpb.ChargeAnswer]]]
Key = tuple[str, int]  # (session_id, request_number)

UNIT_FIELD = {com.OCTETS: "total_octets", com.SECONDS: "time_seconds",
              com.SERVICE_UNITS: "service_units"}
UNIT_SCALE = {com.OCTETS: 1_000_000, com.SECONDS: 60, com.SERVICE_UNITS: 1}
SUCCESS = cpb.SUCCESS


# --- prices -------------------------------------------------------------------------------


class Tariff:
    """The rates of a plan, priced the way the spec says (through the plain-Python reference):
    a session is billed on its cumulative usage of a rating group, at least the first
    increment, rounded up to whole increments."""

    def __init__(self, plan: ppb.Plan) -> None:
        self.plan = plan
        self.rates = {(r.rating_group, r.zone): r for r in plan.rates}

    def rate(self, rg: int, zone: str) -> ppb.Rate | None:
        return self.rates.get((rg, zone))

    def _ref(self, rg: int, zone: str) -> RefRate:
        r = self.rates[(rg, zone)]
        return RefRate(price=r.price_micros, increment=r.increment, first=r.first_increment,
                       quota=r.default_quota, unit=r.unit_type, per=r.price_units,
                       rounding=r.rounding, fee=r.connect_fee_micros,
                       steps=[(x.from_units, x.increment) for x in r.steps])

    def billed(self, rg: int, zone: str, used: int) -> int:
        """Units billed for a session's cumulative usage."""
        return billed(used, self._ref(rg, zone))

    def price(self, rg: int, zone: str, units: int) -> int:
        """Money for this many billed units (of a session with none before them)."""
        p = price(units, self._ref(rg, zone), 0, 0, 0)
        assert p is not None
        return p

    def cost(self, rg: int, zone: str, used: int) -> int:
        """What a session's cumulative usage costs when money alone pays for it."""
        rate = self._ref(rg, zone)
        units = billed(used, rate)
        return self.price(rg, zone, units) + (rate.fee if units else 0)

    def field(self, rg: int, zone: str) -> str:
        r = self.rate(rg, zone)
        return UNIT_FIELD[r.unit_type] if r else "total_octets"

    def scale(self, rg: int, zone: str) -> int:
        r = self.rate(rg, zone)
        return UNIT_SCALE[r.unit_type] if r else 1_000_000


def money_only(plan: ppb.Plan, plan_id: str) -> ppb.Plan:
    """The same rates without bundles: every grant is paid from money."""
    out = ppb.Plan()
    out.CopyFrom(plan)
    out.plan_id = plan_id
    del out.bundles[:]
    return out


def units_of(msg: cpb.Units, fld: str) -> int:
    if fld == "total_octets" and not msg.total_octets:
        return msg.input_octets + msg.output_octets
    return int(getattr(msg, fld))


# --- the traffic model --------------------------------------------------------------------


@dataclass
class Session:
    sid: str
    lane: str
    sub: str
    account: str
    zone: str
    rgs: tuple[int, ...]
    event: bool
    steps: int              # UPDATEs (or further EVENTs) before the end
    abandon: bool           # stop without TERMINATION: its reservations stay live
    rn: int = -1            # request number of the last request answered
    held: dict[int, int] = field(default_factory=dict)  # rating group -> units reserved
    need: dict[int, int] = field(default_factory=dict)  # rating group -> billed units held
    used: dict[int, int] = field(default_factory=dict)  # rating group -> units reported
    retry: cpb.ChargeRequest | None = None  # a request to send again (it was not applied)
    retries: int = 0
    done: bool = False      # ended (TERMINATION / last EVENT) or abandoned


@dataclass
class Expected:
    account: str
    used: int
    overage: int


class Traffic:
    """Seeded random sessions over a set of subscribers, and what their answers imply.

    `overage`: sometimes report more than granted (still charged, recorded as overage);
    without it, usage never exceeds the reservation, so money can never pass its floor.
    `left_open`: the share of sessions that stop without TERMINATION (live reservations).
    `retry_codes`: request results that mean "not applied, send it again" (a gateway's
    reaction to UNABLE_TO_COMPLY); any other non-SUCCESS request result is a problem.
    """

    def __init__(self, seed: int, subscribers: dict[str, str], tariff: Tariff, *,
                 overage: bool, retransmit: bool = True, prefix: str = "",
                 retry_codes: frozenset[int] = frozenset(), max_retries: int = 100,
                 left_open: float = 0.06) -> None:
        self.seed = seed
        self.lanes: dict[str, random.Random] = {}
        self.subscribers = sorted(subscribers)
        self.account_of = subscribers
        self.tariff = tariff
        self.overage = overage
        self.retransmit = retransmit
        self.prefix = prefix
        self.retry_codes = retry_codes
        self.max_retries = max_retries
        self.left_open = left_open
        self.sessions: list[Session] = []
        self.requests: dict[Key, cpb.ChargeRequest] = {}
        self.answers: dict[Key, cpb.ChargeAnswer] = {}
        self.early: dict[Key, cpb.ChargeAnswer] = {}  # copies answered before the original
        self.records: dict[tuple[str, int, int], Expected] = {}
        self.problems: list[str] = []
        self.stats: Counter[str] = Counter()
        self.per_lane: Counter[str] = Counter()

    # building requests

    def rng(self, lane: str) -> random.Random:
        """Each lane draws from its own seeded generator, so what a lane sends does not depend
        on how the lanes interleave (only on the answers it gets)."""
        if lane not in self.lanes:
            self.lanes[lane] = random.Random(f"{self.seed}/{lane}")
        return self.lanes[lane]

    def new_session(self, lane: str) -> Session:
        rng = self.rng(lane)
        sub = rng.choice(self.subscribers)
        sid = f"{self.prefix}{lane}-{self.per_lane[lane]}"
        self.per_lane[lane] += 1
        kind = rng.random()
        zone = ""
        if kind < 0.18:
            s = Session(sid, lane, sub, self.account_of[sub], "", (SMS_RG,), True,
                        steps=rng.choice((0, 0, 0, 1)), abandon=False)
        else:
            if kind < 0.55:
                rgs: tuple[int, ...] = (DATA_RG,)
                zone = "roam-eu" if rng.random() < 0.15 else ""
            elif kind < 0.8:
                rgs = (VOICE_RG,)
            else:
                rgs = (DATA_RG, VOICE_RG)
                if rng.random() < 0.2:
                    rgs += (VIDEO_RG,)  # not priced: RATING_FAILED, never charged
            s = Session(sid, lane, sub, self.account_of[sub], zone, rgs, False,
                        steps=rng.choice((0, 1, 1, 2, 2, 3, 4)),
                        abandon=rng.random() < self.left_open)
        self.sessions.append(s)
        self.stats["sessions"] += 1
        return s

    def _want(self, s: Session, rg: int) -> int:
        """Units to ask for; 0 = the plan's default quota."""
        rng = self.rng(s.lane)
        if rg == VOICE_RG:
            return rng.choice((0, 0, 60, 120, 600))
        if rng.random() < 0.05:
            return 0
        if s.zone:
            return rng.choice((20_000, 50_000, 100_000))
        return rng.choice((20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000))

    def _used(self, s: Session, rg: int) -> int:
        held = s.held.get(rg, 0)
        rng = self.rng(s.lane)
        if self.overage and rng.random() < 0.06:
            self.stats["overage reports"] += 1
            return held + rng.randint(1, max(held // 4, self.tariff.scale(rg, s.zone) // 10))
        if held == 0:
            return 0
        return held if rng.random() < 0.3 else rng.randint(0, held)

    def _su(self, s: Session, rg: int, *, used: int | None, want: int | None
            ) -> cpb.ServiceUnits:
        fld = self.tariff.field(rg, s.zone)
        su = cpb.ServiceUnits(rating_group=rg)
        if used is not None:
            su.used.CopyFrom(cpb.Units(**{fld: used}))
        if want is not None:
            su.requested.CopyFrom(cpb.Units(**({fld: want} if want else {})))
        return su

    def next_request(self, s: Session) -> cpb.ChargeRequest:
        if s.retry is not None:
            return s.retry
        rng = self.rng(s.lane)
        rn = s.rn + 1
        units: list[cpb.ServiceUnits] = []
        if s.event:
            kind = cpb.EVENT
            units.append(self._su(s, SMS_RG, used=rng.randint(1, 3), want=None))
        elif rn == 0:
            kind = cpb.INITIAL
            units = [self._su(s, rg, used=None, want=self._want(s, rg)) for rg in s.rgs]
        elif rn <= s.steps:
            kind = cpb.UPDATE
            for rg in s.rgs:
                roll = rng.random()
                if roll < 0.1 and len(s.rgs) > 1:
                    continue  # not mentioned: its reservation stays as it is
                want = None if roll > 0.92 else self._want(s, rg)  # report only: released
                units.append(self._su(s, rg, used=self._used(s, rg), want=want))
        else:
            kind = cpb.TERMINATION
            for rg in s.rgs:
                if rng.random() < 0.2:
                    continue  # not mentioned: released without usage
                units.append(self._su(s, rg, used=self._used(s, rg), want=None))
        return cpb.ChargeRequest(session_id=s.sid, request_number=rn, type=kind,
                                 subscriber_id=s.sub, zone=s.zone, units=units,
                                 origin="pgw-ledger")

    # reading answers

    def settle(self, s: Session, req: cpb.ChargeRequest, ans: cpb.ChargeAnswer) -> None:
        """Takes the answer of the session's next request into the model."""
        key = (req.session_id, req.request_number)
        if ans.result != SUCCESS:
            if ans.result in self.retry_codes and s.retries < self.max_retries:
                s.retry, s.retries = req, s.retries + 1
                self.stats[f"retried {cpb.ResultCode.Name(ans.result)}"] += 1
                return
            self.problems.append(f"{key}: request result {cpb.ResultCode.Name(ans.result)} "
                                 f"({ans.error_message})")
            s.done = True  # the model no longer knows this session
            return
        s.retry = None
        if (ans.session_id, ans.request_number) != key:
            self.problems.append(f"{key}: answer is for {ans.session_id, ans.request_number}")
        self.requests[key] = req
        self.answers[key] = ans
        early = self.early.pop(key, None)
        if early is not None and early != ans:
            self.problems.append(f"{key}: a copy was answered before the original, "
                                 f"differently:\n copy: {early}\n original: {ans}")
        grants = {g.rating_group: g for g in ans.grants}
        if sorted(grants) != sorted(su.rating_group for su in req.units):
            self.problems.append(f"{key}: grants for {sorted(grants)}, asked for "
                                 f"{[su.rating_group for su in req.units]}")
            s.done = True
            return
        for su in req.units:
            rg = su.rating_group
            g = grants[rg]
            rate = self.tariff.rate(rg, s.zone)
            fld = self.tariff.field(rg, s.zone)
            used = units_of(su.used, fld)
            before = s.held.pop(rg, 0)
            if rate is None:
                if g.result != cpb.RATING_FAILED:
                    self.problems.append(f"{key}: unpriced rg {rg} answered {g.result}")
                continue
            self.stats[f"grant {cpb.ResultCode.Name(g.result)}"] += 1
            if s.event:
                if g.result == SUCCESS and used:
                    self.records[(s.sid, req.request_number, rg)] = Expected(s.account, used, 0)
                continue
            s.need.pop(rg, None)
            if used:
                self.records[(s.sid, req.request_number, rg)] = Expected(
                    s.account, used, max(0, used - before))
                s.used[rg] = s.used.get(rg, 0) + used
            if su.HasField("requested") and req.type != cpb.TERMINATION:
                granted = units_of(g.granted, fld)
                want = units_of(su.requested, fld)
                limit = min(want, rate.default_quota) if want else rate.default_quota
                if granted > limit:
                    self.problems.append(f"{key}: rg {rg} granted {granted} > {limit}")
                if g.result == SUCCESS and granted > 0:
                    s.held[rg] = granted
                    so_far = s.used.get(rg, 0)
                    s.need[rg] = (self.tariff.billed(rg, s.zone, so_far + granted)
                                  - self.tariff.billed(rg, s.zone, so_far))
                elif g.result not in (SUCCESS, cpb.CREDIT_LIMIT_REACHED):
                    self.problems.append(f"{key}: rg {rg} grant result {g.result}")
        s.rn = req.request_number
        if req.type == cpb.TERMINATION or (s.event and s.rn >= s.steps):
            s.held.clear()
            s.need.clear()
            s.done = True
        elif s.abandon and s.rn >= s.steps:
            s.done = True  # left open: what it holds stays reserved
            self.stats["left open"] += 1

    def check_repeat(self, req: cpb.ChargeRequest, ans: cpb.ChargeAnswer, what: str) -> None:
        """A retransmission must get the original answer."""
        key = (req.session_id, req.request_number)
        first = self.answers.get(key)
        self.stats[what] += 1
        if first is None:
            if ans.result not in self.retry_codes:
                # The original was answered UNABLE_TO_COMPLY (outcome unknown) and this copy,
                # run in a later batch, found the stored answer: the original's retry must get
                # the same one.
                self.early.setdefault(key, ans)
        elif ans != first:
            self.problems.append(f"{key}: {what} answered differently:\n first: {first}\n "
                                 f"again: {ans}")

    def open_reservations(self) -> dict[str, dict[tuple[str, int], tuple[int, int]]]:
        """Per account: (session, rating group) -> the units the model says are still
        reserved, and the billed units they hold."""
        out: dict[str, dict[tuple[str, int], tuple[int, int]]] = defaultdict(dict)
        for s in self.sessions:
            for rg, units in s.held.items():
                out[s.account][(s.sid, rg)] = (units, s.need[rg])
        return out


async def run_lane(traffic: Traffic, send: Send, lane: str, sessions: int, width: int,
                   stop: asyncio.Event | None = None) -> None:
    """Drives `sessions` sessions, `width` at a time, one request per session per message;
    adds duplicates inside the same message and retransmissions in the next one. Once `stop`
    is set no new session starts; the lane ends when the ones under way have ended."""
    rng = traffic.rng(lane)
    active: list[Session] = []
    repeats: list[tuple[cpb.ChargeRequest, str]] = []
    started = 0

    def more() -> bool:
        return started < sessions and not (stop is not None and stop.is_set())

    while active or more() or repeats:
        while len(active) < width and more():
            active.append(traffic.new_session(lane))
            started += 1
        entries: list[tuple[str, cpb.ChargeRequest, Session | None]] = []
        for s in active:
            req = traffic.next_request(s)
            entries.append(("new", req, s))
            if traffic.retransmit and rng.random() < 0.03:
                entries.append(("duplicate in the same message", req, None))
        entries += [(what, req, None) for req, what in repeats]
        repeats = []
        rng.shuffle(entries)
        answers = await send([e[1] for e in entries])
        if len(answers) != len(entries):
            traffic.problems.append(f"{len(entries)} requests, {len(answers)} answers")
            return
        for (_, req, owner), ans in zip(entries, answers, strict=True):
            if owner is not None:
                traffic.settle(owner, req, ans)
                if (traffic.retransmit and owner.retry is None and ans.result == SUCCESS
                        and rng.random() < 0.05):
                    repeats.append((req, "retransmission in a later message"))
        for (what, req, owner), ans in zip(entries, answers, strict=True):
            if owner is None:
                traffic.check_repeat(req, ans, what)
        active = [s for s in active if not s.done]


class StreamLink:
    """A gateway link over ChargeStream: one message out, its answers back, in order."""

    def __init__(self, charging_stub: object) -> None:
        self.call = charging_stub.ChargeStream()  # type: ignore[attr-defined]

    async def send(self, reqs: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        await self.call.write(cpb.ChargeBatchRequest(requests=reqs))
        msg = await self.call.read()
        return list(msg.answers)

    async def close(self) -> None:
        await self.call.done_writing()
        extra = await self.call.read()  # end of stream
        assert extra is grpc.aio.EOF, extra
        assert await self.call.code() == grpc.StatusCode.OK


class FloorWatch:
    """Reads the free money of the accounts straight from Redis, in a tight loop on a thread of
    its own while traffic runs, and keeps the lowest value seen: a grant that took money below
    its floor shows here even when later releases bring the balance back up."""

    def __init__(self, redis_url: str, accounts: dict[str, ppb.Account]) -> None:
        self.redis_url = redis_url
        self.keys = {a: keys.account(acct.partition, a) for a, acct in accounts.items()}
        self.lowest: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="floor-watch", daemon=True)

    def start(self) -> FloorWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = connect(self.redis_url)
        try:
            names = list(self.keys)
            while not self._stop.is_set():
                pipe = client.pipeline(transaction=False)
                for a in names:
                    pipe.hget(self.keys[a], "money")
                for a, v in zip(names, pipe.execute(), strict=True):
                    money = int(v)
                    if money < self.lowest.get(a, money + 1):
                        self.lowest[a] = money
                self.samples += 1
        finally:
            client.close()

    async def stop(self) -> dict[str, int]:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        return self.lowest


# --- the books ----------------------------------------------------------------------------


async def usage_records(redis_url: str) -> list[usage_pb2.RatedUsage]:
    """Every rated usage record of every partition stream."""
    client = connect_async(redis_url)
    try:
        out = []
        # In key order: SCAN's order changes as keys are added (and between cluster nodes).
        streams = sorted([key async for key in client.scan_iter(match="tg:*:usage",
                                                                 _type="stream")])
        for key in streams:
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(key))
            for sid, fields in entries:
                for place, data in record_block.records(sid, fields):
                    r = usage_pb2.RatedUsage.FromString(data)
                    r.record_id = place
                    out.append(r)
        return out
    finally:
        await client.aclose()


def balance_problems(accounts: dict[str, ppb.Account], initial_money: dict[str, int],
                     records: list[usage_pb2.RatedUsage]) -> list[str]:
    """Conservation per account: initial money = free + reserved + money of its records (top-ups
    are records with negative money); per bucket: initial = remaining + reserved + units of its
    records; reserved amounts equal what the live reservations hold."""
    problems: list[str] = []
    for account_id, acct in accounts.items():
        mine = [r for r in records if r.account_id == account_id]
        spent = sum(r.money_micros for r in mine)
        off = initial_money[account_id] - acct.money_micros - acct.reserved_micros - spent
        if off:
            problems.append(
                f"{account_id}: money not conserved: initial {initial_money[account_id]} != "
                f"free {acct.money_micros} + reserved {acct.reserved_micros} + records {spent} "
                f"(off by {off})")
        held_money = sum(x.amount for x in acct.reservations if not x.bucket_id)
        if held_money != acct.reserved_micros:
            problems.append(f"{account_id}: reserved_micros {acct.reserved_micros} but its "
                            f"reservations hold {held_money}")
        for b in acct.buckets:
            taken = sum(c.units for r in mine for c in r.charges if c.bucket_id == b.bucket_id)
            if b.initial != b.remaining + b.reserved + taken:
                problems.append(f"{account_id}/{b.bucket_id}: units not conserved: initial "
                                f"{b.initial} != remaining {b.remaining} + reserved "
                                f"{b.reserved} + records {taken}")
            held = sum(x.amount for x in acct.reservations if x.bucket_id == b.bucket_id)
            if held != b.reserved:
                problems.append(f"{account_id}/{b.bucket_id}: reserved {b.reserved} but its "
                                f"reservations hold {held}")
            if b.remaining < 0 or b.reserved < 0:
                problems.append(f"{account_id}/{b.bucket_id}: negative {b}")
            if b.used != b.initial - b.remaining - b.reserved:
                problems.append(f"{account_id}/{b.bucket_id}: used {b.used} is not "
                                "initial - remaining - reserved")
    return problems


def check_books(traffic: Traffic, accounts: dict[str, ppb.Account],
                initial_money: dict[str, int], records: list[usage_pb2.RatedUsage],
                floor: dict[str, int], lowest_seen: dict[str, int] | None = None
                ) -> list[str]:
    """Everything that does not add up, as readable lines (empty = the books balance)."""
    problems = list(traffic.problems)
    tariff = traffic.tariff
    usage = [r for r in records if r.kind == usage_pb2.USAGE]

    # Records: exactly the predicted ones, each once, internally consistent.
    seen: Counter[tuple[str, int, int]] = Counter(
        (r.session_id, r.request_number, r.rating_group) for r in usage)
    for k, n in seen.items():
        if n > 1:
            problems.append(f"record {k} written {n} times (charged twice)")
        if k not in traffic.records:
            problems.append(f"record {k} was not expected")
    for k in traffic.records.keys() - seen.keys():
        problems.append(f"no record for {k} ({traffic.records[k]})")
    money_of_request: Counter[Key] = Counter()
    # Per session and rating group (per request for EVENTs, each its own): what its records
    # billed and charged must be what its cumulative usage bills, and cost no more than money
    # alone would charge for it.
    events = {s.sid for s in traffic.sessions if s.event}
    sessions: dict[tuple[str, int, int, str], list[usage_pb2.RatedUsage]] = defaultdict(list)
    for r in usage:
        sessions[(r.session_id, r.request_number if r.session_id in events else -1,
                  r.rating_group, r.zone)].append(r)
    for (sid, _, rg, zone), rs in sessions.items():
        used = sum(r.units for r in rs)
        billed_units = sum(c.units for r in rs for c in r.charges)
        if billed_units != tariff.billed(rg, zone, used):
            problems.append(f"session {sid} rg {rg}: charges bill {billed_units} units for "
                            f"{used} used, not {tariff.billed(rg, zone, used)}")
        if sum(r.money_micros for r in rs) > tariff.cost(rg, zone, used):
            problems.append(f"session {sid} rg {rg}: {sum(r.money_micros for r in rs)} micros "
                            f"is more than money alone costs for {used} units")
    for r in usage:
        k = (r.session_id, r.request_number, r.rating_group)
        money_of_request[(r.session_id, r.request_number)] += r.money_micros
        if sum(c.micros for c in r.charges if not c.bucket_id) != r.money_micros:
            problems.append(f"record {k}: money charges do not add up to {r.money_micros}")
        if any(c.micros for c in r.charges if c.bucket_id):
            problems.append(f"record {k}: a bucket charge carries money")
        exp = traffic.records.get(k)
        if exp is None:
            continue
        if (r.account_id, r.units, r.overage_units, r.overage) != (
                exp.account, exp.used, exp.overage, exp.overage > 0):
            problems.append(f"record {k}: account/units/overage {r.account_id}/{r.units}/"
                            f"{r.overage_units} but the session says {exp}")
    for key, ans in traffic.answers.items():
        if ans.charged_micros != money_of_request.get(key, 0):
            problems.append(f"{key}: answer says {ans.charged_micros} micros charged, "
                            f"records say {money_of_request.get(key, 0)}")

    # Balances: money and every bucket conserved; reservations add up and match the model.
    model = traffic.open_reservations()
    overage_money: Counter[str] = Counter()
    for r in usage:
        if r.overage:
            overage_money[r.account_id] += r.money_micros
    problems += balance_problems(accounts, initial_money, records)
    for account_id, acct in accounts.items():
        live: dict[tuple[str, int], ppb.Reservation] = {
            (x.session_id, x.rating_group): x for x in acct.reservations}
        zones = {s.sid: s.zone for s in traffic.sessions if s.account == account_id}
        expected = model.get(account_id, {})
        for rk in live.keys() | expected.keys():
            x = live.get(rk)
            if x is None:
                problems.append(f"{account_id}: reservation {rk} of {expected[rk]} units is gone")
                continue
            if rk not in expected:
                problems.append(f"{account_id}: reservation {rk} ({x.units} units) should have "
                                "been released")
                continue
            units, need = expected[rk]
            if x.units != units:
                problems.append(f"{account_id}: reservation {rk} holds {x.units} units, "
                                f"granted {units}")
            # Money holds the price of the billed units, less at most the one micro-unit a
            # session's rounding has already charged ahead.
            want_amount = need if x.bucket_id else tariff.price(rk[1], zones[rk[0]], need)
            if not want_amount - (0 if x.bucket_id else 1) <= x.amount <= want_amount:
                problems.append(f"{account_id}: reservation {rk} holds {x.amount}, "
                                f"expected {want_amount}")
        # The floor: grants and events never take money below it; only overage can, and by
        # no more than what the overage reports were charged.
        lowest = min(acct.money_micros, (lowest_seen or {}).get(account_id, acct.money_micros))
        bound = floor[account_id] - overage_money[account_id]
        if lowest < bound:
            problems.append(f"{account_id}: money went to {lowest}, below its floor "
                            f"{floor[account_id]} (overage charged: {overage_money[account_id]})")
    return problems


async def provision(provisioning: object, plan: ppb.Plan, *, accounts: int,
                    subscribers_per_account: int, money: int, credit_limit: int,
                    prefix: str = "") -> dict[str, str]:
    """The plan, accounts {prefix}acct-N and subscribers {prefix}sub-N-M; returns
    subscriber -> account."""
    stub = provisioning
    await stub.PutPlan(plan)  # type: ignore[attr-defined]
    out = {}
    for a in range(accounts):
        account_id = f"{prefix}acct-{a}"
        await stub.CreateAccount(ppb.CreateAccountRequest(  # type: ignore[attr-defined]
            account_id=account_id, plan_id=plan.plan_id, initial_money_micros=money,
            credit_limit_micros=credit_limit))
        for m in range(subscribers_per_account):
            sub = f"{prefix}sub-{a}-{m}"
            await stub.CreateSubscriber(  # type: ignore[attr-defined]
                ppb.Subscriber(subscriber_id=sub, account_id=account_id))
            out[sub] = account_id
    return out


async def get_accounts(provisioning: object, account_ids: list[str]) -> dict[str, ppb.Account]:
    return {a: await provisioning.GetAccount(  # type: ignore[attr-defined]
        ppb.GetAccountRequest(account_id=a)) for a in account_ids}


def summary(traffic: Traffic, accounts: dict[str, ppb.Account]) -> str:
    lines = [", ".join(f"{k}: {v}" for k, v in sorted(traffic.stats.items()))]
    for a, acct in sorted(accounts.items()):
        lines.append(f"{a}: money {acct.money_micros} reserved {acct.reserved_micros} "
                     f"buckets {[(b.remaining, b.reserved) for b in acct.buckets]} "
                     f"live reservations {len(acct.reservations)}")
    return "\n".join(lines)
