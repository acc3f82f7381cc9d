"""Kernel outputs -> answers, new session state, rated usage records and account writes."""

from __future__ import annotations

from dataclasses import dataclass

from engine import keys
from engine.answers import encode as encode_answers
from engine.batch import (
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
from engine.domain import (
    MONEY_SOURCE,
    Bucket,
    EventKind,
    Plan,
    RequestType,
    ResultCode,
)
from engine.domain import Reservation as Res
from engine.kernels.charge import INVALID_AVP_VALUE, WANT_GRANT
from engine.plans import RateTable
from engine.session_blob import pack_session
from engine.state import NOTHING_RATED, AccountState, Rated, SessionState
from engine.store import AccountWrite, SessionWrite
from engine.usage_wire import RecordTable
from tollgate.v1 import events_pb2, usage_pb2

SUCCESS = int(ResultCode.SUCCESS)
ENDS_SESSION = (RequestType.TERMINATION, RequestType.EVENT)


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
    for p, blob in zip(batch, encode_answers(batch, kb, res, rates), strict=True):
        a = kb.index[p.account_id]
        _request_outcome(p, blob, kb.accounts[a], kb, res, timing, out, writes[a], records,
                         owners)
    for w, record in zip(owners, records.encode(), strict=True):
        w.records.append(record)
    for ev in res.events:  # in item order, so in batch order
        p = kb.refs[ev[0]].pending
        out.writes[p.account_id].events.append(
            event(ev, p, kb, kb.accounts[kb.index[p.account_id]]))
    return out


def _request_outcome(p: Pending, blob: bytes, acct: AccountState, kb: KernelBatch,
                     res: KernelResult, timing: Timing, out: Outcome, w: AccountWrite,
                     records: RecordTable, writes: list[AccountWrite]) -> None:
    """The session after a request (`blob`: its answer), and its records (added to
    `records`, with their account's write to `writes`)."""
    req = p.request
    rn = req.request_number
    plan = kb.plans[kb.index[p.account_id]]
    old = acct.sessions.get(req.session_id)
    # Copies: the cached session stays as it was until the batch is applied (_settle).
    answers = dict(old.answers) if old is not None else {}
    live = old if old is not None and not old.is_event else None
    held = dict(live.reservations) if live else {}
    rated = dict(live.rated) if live else {}
    cost = live.cost if live else 0
    longest = 0
    for i in kb.items_of[id(p)]:
        ref = kb.refs[i]
        before = rated.get(ref.rating_group, NOTHING_RATED)
        now = Rated(res.s_used[i], res.s_billed[i], res.s_rem[i], res.s_charged[i])
        if now == NOTHING_RATED:
            now = before  # not billed: the session's state is unchanged
        elif now != before:
            rated[ref.rating_group] = now
        cost += res.charged[i]
        granted = res.granted[i]
        # The kernel gave back the old reservation of every item (a grant is the new one),
        # but for one it refused because giving back would pass int64: that one stays held.
        if res.result[i] != INVALID_AVP_VALUE or not granted:
            held.pop(ref.rating_group, None)
            if ref.want == WANT_GRANT and granted > 0:
                s = res.res_src[i]
                held[ref.rating_group] = Res(
                    ref.rating_group, kb.buckets[s].bucket_id if s != MONEY_SOURCE else "",
                    granted, res.res_amount[i],
                    int(ref.rate.unit_type) if ref.rate is not None else 0, ref.member)
                longest = max(longest, res.validity[i] or timing.default_validity_s)
        if not ref.internal and now.used != before.used:
            # Every report of usage the kernel took is recorded, also one that the session's
            # earlier billed units already cover (no charge of its own).
            fee = (ref.rate.connect_fee_micros if ref.rate is not None and not before.billed
                   and now.billed and not ref.rate.zero_rated else 0)
            usage_record(records, p, ref, plan, old, res.charges.get(i, []), kb.buckets,
                         res.charged[i], min(fee, res.charged[i]))
            writes.append(w)
    answers[rn] = blob
    # Request numbers start at 0: nothing is old enough to drop before answers_kept.
    dropped = ([n for n in answers if n <= rn - timing.answers_kept]
               if rn >= timing.answers_kept else [])
    for n in dropped:
        del answers[n]
    ended = req.type in ENDS_SESSION
    expiry = 0 if ended else timing.now_ms + ((longest or timing.default_validity_s)
                                              + timing.stale_grace_s) * 1000
    new = SessionState(req.session_id, req.subscriber_id, rn, ended,
                       req.type == RequestType.EVENT, req.time_ms, answers, held, expiry, rated,
                       cost, p.account_id)
    out.answers[id(p)] = blob
    out.sessions[id(p)] = new
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


def usage_record(table: RecordTable, p: Pending, ref: ItemRef, plan: Plan | None,
                 old: SessionState | None, charges: list[tuple[int, int, int]],
                 buckets: list[Bucket], money: int, fee: int) -> None:
    """Adds an item's rated usage record to the batch's table (encoded all at once)."""
    req = p.request
    rate = ref.rate
    assert rate is not None  # only priced items charge
    overage = max(0, ref.used - ref.reserved_units) if req.type != RequestType.EVENT else 0
    string = table.string
    table.add((
        usage_pb2.USAGE, string(p.account_id), string(req.subscriber_id),
        string(req.session_id), req.request_number, ref.rating_group, ref.service_id,
        string(p.zone), rate.unit_type, ref.used,
        old.last_time_ms if old is not None and not old.is_event else req.time_ms,
        req.time_ms, string(plan.plan_id) if plan is not None else -1,
        plan.version if plan is not None else 0, rate.price_micros, rate.increment, money,
        int(overage > 0), overage, string(req.origin), fee),
        [(string(buckets[s].bucket_id) if s != MONEY_SOURCE else -1, u, m)
         for s, u, m in charges])
