"""Kernel outputs -> answers, new session state, rated usage records and account writes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tollgate.engine.charging.account_writes import (
    RecordBytes,
    SessionValues,
    account_writes,
)
from tollgate.engine.charging.answers import Encoded
from tollgate.engine.charging.answers import encode as encode_answers
from tollgate.engine.charging.batch import (
    KernelBatch,
    KernelResult,
)
from tollgate.engine.charging.kernels import items
from tollgate.engine.charging.kernels.charge import I_ACCT, I_REQ, I_RG, R_UNIT
from tollgate.engine.charging.kernels.records import (
    HEAD_COLUMNS,
    HEAD_KIND,
    record_items,
    record_table,
)
from tollgate.engine.charging.kernels.sessions import (
    H_EXISTS,
    H_ST,
    H_T,
    Q_ACCT_AT,
    Q_ACCT_LEN,
    Q_ANS_AT,
    Q_ANS_LEN,
    Q_COLUMNS,
    Q_KIND,
    Q_RN,
    Q_SUB_AT,
    Q_SUB_LEN,
    Q_TIME,
    ST_EVENT,
    write_sessions,
)
from tollgate.engine.charging.request import Request
from tollgate.engine.charging.usage_wire import encode_table
from tollgate.engine.domain import EventKind, RequestType, ResultCode
from tollgate.engine.rating.plans import RateTable
from tollgate.engine.storage.state import AccountState
from tollgate.engine.storage.writes import ByteTable, Texts, Writes, moved
from tollgate.v1 import events_pb2

SUCCESS = int(ResultCode.SUCCESS)
ENDS = frozenset({int(RequestType.TERMINATION), int(RequestType.EVENT)})
"""Request types after which the session has ended."""


@dataclass(slots=True)
class Outcome:
    answers: list[bytes]  # per request of the batch, its answer (a request-level SUCCESS)
    values: list[bytes]  # per request, its session's value after it (session_blob)
    writes: Writes  # group g: what to apply to account g of the batch


@dataclass(frozen=True, slots=True)
class Timing:
    """Clock and session-expiry settings the outcome needs."""

    now_ms: int
    answers_kept: int
    default_validity_s: int
    stale_grace_s: int


def build_outcome(batch: list[Request], kb: KernelBatch, res: KernelResult,
                  rates: RateTable, timing: Timing) -> Outcome:
    numbers = np.array([p.request_number for p in batch], np.int64)
    session_ids = Texts.of([p.session_id for p in batch])
    encoded = encode_answers(kb, res, rates, session_ids, numbers)
    values = _sessions(kb, res, rates, timing, encoded, numbers)
    records = _records(batch, kb, res, rates, numbers, session_ids)
    index = kb.index
    events = []
    for ev in res.events:  # in item order, so in batch order
        i = ev[0]
        p = batch[int(res.items[i, I_REQ])]
        a = index[p.account_id]
        events.append((a, event(ev, int(res.items[i, I_RG]), p, kb, kb.accounts[a])))
    data = values.buf.tobytes()
    return Outcome(encoded.answers,
                   [data[a:b] for a, b in zip(*values.spans.tolist(), strict=True)],
                   account_writes(kb, res, values, session_ids, records, events))


def _sessions(kb: KernelBatch, res: KernelResult, rates: RateTable, timing: Timing,
              encoded: Encoded, numbers: np.ndarray) -> SessionValues:
    """Each request's session after it, packed by the session kernel from its old value (in
    kb.view) and the charge kernel's outputs; with its expiry, and whether its open-session
    score is set again (a continuing session's score stays at or before its expiry, which
    only grows as requests come: set again only when the expiry shrank or is unknown,
    saving Redis a ZADD per request)."""
    # The strings the values name, after the new answers: each request's subscriber and
    # account, then the batch's bucket ids (kb.names).
    n = len(numbers)
    view = kb.view
    base = int(encoded.spans[1].max(initial=0))
    owners = view.owners[kb.view_rows]  # (subscriber at, length, account at, length)
    strings = np.concatenate((encoded.buffer[:base], view.ids, kb.names))
    reqs = np.empty((n, Q_COLUMNS), np.int64)
    reqs[:, Q_RN] = numbers
    reqs[:, Q_KIND] = kb.requests[:, items.Q_TYPE]
    reqs[:, Q_TIME] = kb.requests[:, items.Q_TIME]
    reqs[:, Q_ANS_AT] = encoded.spans[0]
    reqs[:, Q_ANS_LEN] = encoded.spans[1] - encoded.spans[0]
    reqs[:, [Q_SUB_AT, Q_SUB_LEN, Q_ACCT_AT, Q_ACCT_LEN]] = owners + np.array([base, 0, base, 0])
    bucket_names = kb.bucket_names.copy()  # (offset, length) per bucket, here in `strings`
    bucket_names[0] += base + view.ids.size
    unit = rates.arrays()[0][R_UNIT] if rates.rates else np.zeros(0, np.int64)
    params = np.array([timing.now_ms, timing.answers_kept, timing.default_validity_s,
                       timing.stale_grace_s], np.int64)
    out, spans, expiry, rescore = write_sessions(
        kb.view.buf, *kb.view.arrays, kb.view_rows, reqs, res.items,
        res.outputs, unit, strings, bucket_names, params)
    return SessionValues(out, spans, expiry, rescore)


def _records(batch: list[Request], kb: KernelBatch, res: KernelResult, rates: RateTable,
             numbers: np.ndarray, session_ids: Texts) -> RecordBytes:
    """The batch's rated usage records, in batch order: the records kernels build their tables
    from the charging kernel's arrays, their strings are spans of the batch's id tables;
    Python reads each request with a record's zone and origin, never a record."""
    chg = res.charge_table
    at, requests, buckets = record_items(res.items, res.outputs, res.shown, chg,
                                         kb.bucket_names.shape[1])
    if not at.size:
        return NO_RECORDS
    # The strings: each session row's subscriber (string row), its account (rows + row),
    # each request's session id (2 rows + n), the batch's zones, origins and plan ids, then
    # the buckets' ids.
    view, view_rows = kb.view, kb.view_rows
    rows, n = view.owners.shape[0], len(batch)
    names: dict[str, int] = {}
    req = requests.tolist()
    zone = [names.setdefault(batch[r].rated_zone, len(names)) for r in req]
    origin = [names.setdefault(batch[r].origin, len(names)) for r in req]
    plan = [names.setdefault(p.plan_id if p is not None else "", len(names))
            for p in kb.distinct_plans]
    t = ByteTable()
    ids = t.add(view.ids)
    strings = np.concatenate((
        moved(view.owners[:, 0:2], ids), moved(view.owners[:, 2:4], ids),
        moved(session_ids.spans, t.add(session_ids.text)), t.texts(list(names)),
        moved(kb.bucket_names.T, t.add(kb.names))))
    first_name, first_bucket = 2 * rows + n, 2 * rows + n + len(names)
    plans = kb.plan_of[kb.requests[requests, items.Q_ACCT]]  # each record's plan
    sessions = view.arrays[0]
    row = view_rows[requests]
    # A live session's usage starts when it last reported; an event's or a new session's at
    # the request's time.
    live = (sessions[row, H_EXISTS] != 0) & (sessions[row, H_ST] != ST_EVENT)
    time_ms = kb.requests[requests, items.Q_TIME]
    heads = np.empty((len(req), HEAD_COLUMNS), np.int64)
    heads[:, :HEAD_KIND] = np.stack((
        rows + row, row, 2 * rows + requests, first_name + np.array(zone, np.int64),
        first_name + np.array(plan, np.int64)[plans],
        first_name + np.array(origin, np.int64), numbers[requests],
        np.where(live, sessions[row, H_T], time_ms), time_ms,
        np.array([p.version if p is not None else 0 for p in kb.distinct_plans],
                 np.int64)[plans]),
        axis=1)
    heads[:, HEAD_KIND] = kb.requests[requests, items.Q_TYPE]
    bucket_name = np.full(kb.bucket_names.shape[1], -1, np.int64)
    bucket_name[buckets] = first_bucket + buckets
    records, charges = record_table(res.items, res.outputs, at, heads, rates.record_terms(),
                                    res.service, chg, bucket_name)
    buf, spans = encode_table(records, charges, t.table(), strings)
    return RecordBytes(buf, spans, res.items[at, I_ACCT])


NO_RECORDS = RecordBytes(np.zeros(0, np.uint8), np.zeros((2, 0), np.int64),
                         np.zeros(0, np.int64))




EVENT_IDS = {
    EventKind.BUCKET_USED: "bucket:{acct}:{bucket}:{cycle}:{level}",
    EventKind.SPENDING_CAP: "cap:{acct}:{cycle}:{level}",
    EventKind.LOW_BALANCE: "low:{acct}:{version}",
    EventKind.CREDIT_EXHAUSTED: "exhausted:{acct}:{version}",
    EventKind.FINAL_UNITS: "final:{session}:{rn}:{rg}",
    EventKind.MEMBER_CAP: "member-cap:{acct}:{sub}:{cycle}:{value}",
}
"""Stable event ids: the same crossing always gets the same id, so consumers de-duplicate."""


def event(ev: tuple[int, int, int, int, int, int], rating_group: int, p: Request,
          kb: KernelBatch, acct: AccountState) -> bytes:
    """Event `ev` of the kernel's, on an item of `rating_group` of request `p`."""
    _, kind, ref, level, value, limit = ev
    bucket = kb.bucket_id(ref) if kind == EventKind.BUCKET_USED else ""
    sub = p.subscriber_id
    if kind == EventKind.MEMBER_CAP:
        sub = kb.members[ref][1].subscriber_id
    event_id = EVENT_IDS[EventKind(kind)].format(
        acct=acct.account_id, bucket=bucket, cycle=acct.cycle_start, level=level,
        version=acct.version, session=p.session_id, rn=p.request_number,
        rg=rating_group, sub=sub, value=value)
    return events_pb2.Event(
        event_id=event_id, kind=kind, account_id=acct.account_id, subscriber_id=sub,
        session_id=p.session_id, bucket_id=bucket, rating_group=rating_group,
        threshold_percent=level, value=value, limit=limit, time_ms=p.time_ms,
        cycle_start_ms=acct.cycle_start).SerializeToString()
