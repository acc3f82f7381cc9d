"""Kernel outputs -> answers, new session state, rated usage records and account writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tollgate.engine.charging.answers import encode as encode_answers
from tollgate.engine.charging.batch import (
    CYCLE,
    MEMBER_MRES,
    MEMBER_SPENT,
    MEMBER_USED,
    NOTIFIED,
    REMAINING,
    RESERVED,
    ItemRef,
    KernelBatch,
    KernelResult,
    Pending,
)
from tollgate.engine.charging.kernels.charge import INVALID_AVP_VALUE, WANT_GRANT
from tollgate.engine.charging.usage_wire import RecordTable
from tollgate.engine.domain import (
    MONEY_SOURCE,
    Bucket,
    EventKind,
    Plan,
    RequestType,
    ResultCode,
)
from tollgate.engine.domain import Reservation as Res
from tollgate.engine.rating.plans import RateTable
from tollgate.engine.storage import keys
from tollgate.engine.storage.session_blob import pack_session
from tollgate.engine.storage.state import NOTHING_RATED, AccountState, Rated, SessionState
from tollgate.engine.storage.store import AccountWrite, SessionWrite
from tollgate.v1 import events_pb2, usage_pb2

SUCCESS = int(ResultCode.SUCCESS)
TERMINATION, EVENT = int(RequestType.TERMINATION), int(RequestType.EVENT)
USAGE = usage_pb2.USAGE


@dataclass(slots=True)
class Outcome:
    answers: dict[int, bytes]  # id(pending) -> its answer (a request-level SUCCESS)
    sessions: dict[int, SessionState]  # id(pending) -> the session after it
    writes: dict[str, AccountWrite]  # account id -> what to apply


@dataclass(frozen=True, slots=True)
class Timing:
    """Clock and session-expiry settings the outcome needs."""

    now_ms: int
    answers_kept: int
    default_validity_s: int
    stale_grace_s: int


def build_outcome(batch: list[Pending], kb: KernelBatch, res: KernelResult,
                  rates: RateTable, timing: Timing, renewals: dict[str, dict[str, int]]) -> Outcome:
    writes = _account_writes(kb, res, renewals)
    out = Outcome({}, {}, {acct.account_id: w for acct, w in zip(kb.accounts, writes,
                                                                  strict=True)})
    records = RecordTable()
    owners: list[AccountWrite] = []  # the account write of each record
    index = kb.index
    for p, blob in zip(batch, encode_answers(batch, kb, res, rates), strict=True):
        a = index[p.account_id]
        _request_outcome(p, blob, kb.accounts[a], kb.plans[a], kb, res, timing, out,
                         writes[a], records, owners)
    for w, record in zip(owners, records.encode(), strict=True):
        w.records.append(record)
    for ev in res.events:  # in item order, so in batch order
        p = kb.refs[ev[0]].pending
        out.writes[p.account_id].events.append(
            event(ev, p, kb, kb.accounts[kb.index[p.account_id]]))
    return out


def _request_outcome(p: Pending, blob: bytes, acct: AccountState, plan: Plan | None,
                     kb: KernelBatch, res: KernelResult, timing: Timing, out: Outcome,
                     w: AccountWrite, records: RecordTable, writes: list[AccountWrite]) -> None:
    """The session after a request (`blob`: its answer), and its records (added to
    `records`, with their account's write to `writes`)."""
    req = p.request
    rn, kind = req.request_number, req.type
    old = acct.sessions.get(req.session_id)
    # Copies: the cached session stays as it was until the batch is applied (_settle).
    answers = dict(old.answers) if old is not None else {}
    live = old if old is not None and not old.is_event else None
    if live is not None:
        held, rated, cost = dict(live.reservations), dict(live.rated), live.cost
    else:
        held, rated, cost = {}, {}, 0
    longest = 0
    head: tuple[int, ...] | None = None  # the request's part of its records (its first one)
    s_used, s_billed, s_rem, s_charged = res.s_used, res.s_billed, res.s_rem, res.s_charged
    for i in kb.items_of[id(p)]:
        ref = kb.refs[i]
        rg = ref.rating_group
        before = rated.get(rg, NOTHING_RATED)
        used = s_used[i]
        if used or s_billed[i] or s_rem[i] or s_charged[i]:
            now = Rated(used, s_billed[i], s_rem[i], s_charged[i])
            if now != before:
                rated[rg] = now
        else:
            now = before  # not billed: the session's state is unchanged
        charged = res.charged[i]
        cost += charged
        granted = res.granted[i]
        # The kernel gave back the old reservation of every item (a grant is the new one),
        # but for one it refused because giving back would pass int64: that one stays held.
        if not granted or res.result[i] != INVALID_AVP_VALUE:
            held.pop(rg, None)
            if granted > 0 and ref.want == WANT_GRANT:
                s = res.res_src[i]
                rate = ref.rate
                held[rg] = Res(rg, kb.buckets[s].bucket_id if s != MONEY_SOURCE else "",
                               granted, res.res_amount[i],
                               int(rate.unit_type) if rate is not None else 0, ref.member)
                longest = max(longest, res.validity[i] or timing.default_validity_s)
        if not ref.internal and now.used != before.used:
            # Every report of usage the kernel took is recorded, also one that the session's
            # earlier billed units already cover (no charge of its own).
            if head is None:
                head = _record_head(records, p, plan, old)
            usage_record(records, head, kind, ref, res.charges.get(i, ()), kb.buckets,
                         charged, not before.billed and now.billed > 0)
            writes.append(w)
    answers[rn] = blob
    # Request numbers start at 0: nothing is old enough to drop before answers_kept.
    if rn >= timing.answers_kept:
        for n in [n for n in answers if n <= rn - timing.answers_kept]:
            del answers[n]
    ended = kind in (TERMINATION, EVENT)
    expiry = 0 if ended else timing.now_ms + ((longest or timing.default_validity_s)
                                              + timing.stale_grace_s) * 1000
    new = SessionState(req.session_id, req.subscriber_id, rn, ended, kind == EVENT,
                       req.time_ms, answers, held, expiry, rated, cost, p.account_id)
    key = id(p)
    out.answers[key] = blob
    out.sessions[key] = new
    # A continuing session's zset score stays at or before its expiry, which only grows as
    # requests come: the score is set again only when the expiry shrank or is unknown
    # (written before `exp` was kept, or swept), saving Redis a ZADD per request.
    rescore = not ended and old is not None and (not old.expiry_ms or expiry < old.expiry_ms)
    w.sessions.append(SessionWrite(req.session_id, ended, pack_session(new), expiry,
                                   created=old is None, rescore=rescore))


ACCOUNT_FIELDS = ("money", "mres", "spent", "capn", "lown", "exhn")
"""The account hash's fields of the kernel's account outputs (batch.ACCOUNT_OUTPUTS)."""


def _account_writes(kb: KernelBatch, res: KernelResult,
                    renewals: dict[str, dict[str, int]]) -> list[AccountWrite]:
    """Per account of the batch, the new value of each field the kernel changed (res.changes:
    most buckets and members of an account do not move in a batch). Values, not increments:
    the apply sets them only on the version they were computed from, so they are exact, and
    Redis runs one HSET per account instead of an HINCRBY per counter. `renewals`: the
    fields a new billing cycle sets (the kernel's values win)."""
    writes = [AccountWrite(keys.account(acct.partition, acct.account_id), acct.version,
                           dict(renewals.get(acct.account_id, {}))) for acct in kb.accounts]
    for a, what, i, v in res.changes:
        sets = writes[a].sets
        if what < REMAINING:
            sets[ACCOUNT_FIELDS[what]] = v
        elif what <= NOTIFIED:
            b = kb.buckets[i]
            if what == REMAINING:
                sets[f"b:{b.bucket_id}:rem"] = v
            elif what == RESERVED:
                sets[f"b:{b.bucket_id}:res"] = b.reserved + v
            else:
                sets[f"b:{b.bucket_id}:ntf"] = v
        elif what == CYCLE:
            sets[f"cu:{kb.slots[i][1]}"] = v
        else:
            sub = kb.members[i if what < MEMBER_USED else i // 3][1].subscriber_id
            if what == MEMBER_SPENT:
                sets[f"m:{sub}:spent"] = v
            elif what == MEMBER_MRES:
                sets[f"m:{sub}:mres"] = v
            elif what == MEMBER_USED:
                sets[f"m:{sub}:u{i % 3 + 1}"] = v
            else:
                sets[f"m:{sub}:r{i % 3 + 1}"] = v
    return writes


EVENT_IDS = {
    EventKind.BUCKET_USED: "bucket:{acct}:{bucket}:{cycle}:{level}",
    EventKind.SPENDING_CAP: "cap:{acct}:{cycle}:{level}",
    EventKind.LOW_BALANCE: "low:{acct}:{version}",
    EventKind.CREDIT_EXHAUSTED: "exhausted:{acct}:{version}",
    EventKind.FINAL_UNITS: "final:{session}:{rn}:{rg}",
    EventKind.MEMBER_CAP: "member-cap:{acct}:{sub}:{cycle}:{value}",
}
"""Stable event ids: the same crossing always gets the same id, so consumers de-duplicate."""


def event(ev: tuple[int, int, int, int, int, int], p: Pending, kb: KernelBatch,
          acct: AccountState) -> bytes:
    i, kind, ref, level, value, limit = ev
    item = kb.refs[i]
    bucket = kb.buckets[ref].bucket_id if kind == EventKind.BUCKET_USED else ""
    sub = p.request.subscriber_id
    if kind == EventKind.MEMBER_CAP:
        sub = kb.members[ref][1].subscriber_id
    event_id = EVENT_IDS[EventKind(kind)].format(
        acct=acct.account_id, bucket=bucket, cycle=acct.cycle_start, level=level,
        version=acct.version, session=p.request.session_id, rn=p.request.request_number,
        rg=item.rating_group, sub=sub, value=value)
    return events_pb2.Event(
        event_id=event_id, kind=kind, account_id=acct.account_id, subscriber_id=sub,
        session_id=p.request.session_id, bucket_id=bucket, rating_group=item.rating_group,
        threshold_percent=level, value=value, limit=limit, time_ms=p.request.time_ms,
        cycle_start_ms=acct.cycle_start).SerializeToString()


def _record_head(table: RecordTable, p: Pending, plan: Plan | None,
                 old: SessionState | None) -> tuple[int, ...]:
    """What every record of a request shares: its strings' indexes (named once per request,
    not per record), its numbers, its plan and the start of the usage it reports."""
    req = p.request
    string = table.string
    return (string(p.account_id), string(req.subscriber_id), string(req.session_id),
            req.request_number, string(p.zone),
            old.last_time_ms if old is not None and not old.is_event else req.time_ms,
            req.time_ms, string(plan.plan_id) if plan is not None else -1,
            plan.version if plan is not None else 0, string(req.origin))


def usage_record(table: RecordTable, head: tuple[int, ...], kind: int, ref: ItemRef,
                 charges: Sequence[tuple[int, int, int]], buckets: list[Bucket], money: int,
                 first_billed: bool) -> None:
    """Adds an item's rated usage record to the batch's table (encoded all at once).
    `first_billed`: the session's first billed units of the rating group (its connect fee)."""
    rate = ref.rate
    assert rate is not None  # only priced items charge
    account, subscriber, session, rn, zone, start, end, plan, version, origin = head
    overage = max(0, ref.used - ref.reserved_units) if kind != EVENT else 0
    fee = (min(rate.connect_fee_micros, money)
           if first_billed and rate.connect_fee_micros and not rate.zero_rated else 0)
    string = table.string
    table.add((
        USAGE, account, subscriber, session, rn, ref.rating_group, ref.service_id, zone,
        rate.unit_type, ref.used, start, end, plan, version, rate.price_micros, rate.increment,
        money, int(overage > 0), overage, origin, fee),
        [(string(buckets[s].bucket_id) if s != MONEY_SOURCE else -1, u, m)
         for s, u, m in charges])
