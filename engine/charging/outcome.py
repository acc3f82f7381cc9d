"""Kernel outputs -> answers, new session state, rated usage records and account writes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tollgate.engine.charging.answers import encode as encode_answers
from tollgate.engine.charging.batch import (
    CYCLE,
    MEMBER_MRES,
    MEMBER_SPENT,
    MEMBER_USED,
    NOTIFIED,
    REMAINING,
    RESERVED,
    KernelBatch,
    KernelResult,
    Pending,
)
from tollgate.engine.charging.kernels.charge import I_ACCT, INVALID_AVP_VALUE, WANT_GRANT
from tollgate.engine.charging.kernels.records import (
    HEAD_COLUMNS,
    HEAD_STRINGS,
    record_items,
    record_table,
)
from tollgate.engine.charging.usage_wire import encode_records
from tollgate.engine.charging.wire import Strings
from tollgate.engine.domain import (
    MONEY_SOURCE,
    EventKind,
    RequestType,
    ResultCode,
)
from tollgate.engine.domain import Reservation as Res
from tollgate.engine.rating.plans import RateTable
from tollgate.engine.storage import keys
from tollgate.engine.storage.session_blob import pack_session
from tollgate.engine.storage.state import AccountState, Rated, SessionState
from tollgate.engine.storage.store import AccountWrite, SessionWrite
from tollgate.v1 import events_pb2

SUCCESS = int(ResultCode.SUCCESS)
TERMINATION, EVENT = int(RequestType.TERMINATION), int(RequestType.EVENT)


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
    index = kb.index
    for p, blob in zip(batch, encode_answers(batch, kb, res, rates), strict=True):
        a = index[p.account_id]
        _request_outcome(p, blob, kb.accounts[a], kb, res, timing, out, writes[a])
    _records(batch, kb, res, rates, writes)
    for ev in res.events:  # in item order, so in batch order
        p = kb.refs[ev[0]].pending
        out.writes[p.account_id].events.append(
            event(ev, p, kb, kb.accounts[kb.index[p.account_id]]))
    return out


def _request_outcome(p: Pending, blob: bytes, acct: AccountState, kb: KernelBatch,
                     res: KernelResult, timing: Timing, out: Outcome, w: AccountWrite) -> None:
    """The session after a request (`blob`: its answer)."""
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
    s_used, s_billed, s_rem, s_charged = res.s_used, res.s_billed, res.s_rem, res.s_charged
    for i in kb.items_of[id(p)]:
        ref = kb.refs[i]
        rg = ref.rating_group
        used = s_used[i]
        if used or s_billed[i] or s_rem[i] or s_charged[i]:  # else: not billed, unchanged
            rated[rg] = Rated(used, s_billed[i], s_rem[i], s_charged[i])
        cost += res.charged[i]
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


def _records(batch: list[Pending], kb: KernelBatch, res: KernelResult, rates: RateTable,
             writes: list[AccountWrite]) -> None:
    """The batch's rated usage records, added to their accounts' writes in batch order: the
    records kernels build their tables from the charging kernel's arrays; Python visits each
    request with a record once (its strings and times), never a record."""
    chg = res.charge_table
    at, requests, buckets = record_items(res.items, res.outputs, res.shown, chg,
                                         len(kb.buckets))
    if not at.size:
        return
    names: list[str] = []  # per request with records, its strings; then the buckets'
    numbers = [_record_head(batch[r], kb, names) for r in requests.tolist()]
    names += [kb.buckets[s].bucket_id for s in buckets.tolist()]
    # Each string once in the encoder's table, named by its index.
    strings = {s: k for k, s in enumerate(dict.fromkeys(names))}
    named = np.array([strings[s] for s in names], np.int64)
    heads = np.empty((len(numbers), HEAD_COLUMNS), np.int64)
    heads[:, :HEAD_STRINGS] = named[:len(numbers) * HEAD_STRINGS].reshape(-1, HEAD_STRINGS)
    heads[:, HEAD_STRINGS:] = numbers
    bucket_name = np.full(len(kb.buckets), -1, np.int64)
    bucket_name[buckets] = named[len(named) - len(buckets):]
    records, charges = record_table(res.items, res.outputs, at, heads, rates.record_terms(),
                                    res.service, chg, bucket_name)
    encoded = encode_records(records, charges, Strings.of(list(strings)))
    for a, record in zip(res.items[at, I_ACCT].tolist(), encoded, strict=True):
        writes[a].records.append(record)


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


def _record_head(p: Pending, kb: KernelBatch, names: list[str]) -> tuple[int, ...]:
    """A request's head numbers (kernels.records.HEAD after its HEAD_STRINGS, then its type);
    its strings (an empty plan: none) are added to `names`."""
    req = p.request
    a = kb.index[p.account_id]
    plan = kb.plans[a]
    old = kb.accounts[a].sessions.get(req.session_id)
    names += (p.account_id, req.subscriber_id, req.session_id, p.zone,
              plan.plan_id if plan is not None else "", req.origin)
    return (req.request_number,
            old.last_time_ms if old is not None and not old.is_event else req.time_ms,
            req.time_ms, plan.version if plan is not None else 0, req.type)
