"""Plain-Python twins of kernels/sessions.py, written for clarity; used only by property tests.

read_value says which values read_sessions reads and what they hold (unpack_session's
session, on msgpack's own reading of the bytes); session_after says what a request makes of
its session, on decoded sessions and per-item values (what the charging path did in Python
before write_sessions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from tollgate.engine.charging.kernels.charge import (
    FLAG_RES_MEMBER,
    I_ACCT,
    I_FLAGS,
    I_REQ,
    I_RES_AMOUNT,
    I_RES_SRC,
    I_RES_UNITS,
    I_RG,
    I_S_CHARGED,
    I_S_COST,
    I_S_USED,
)
from tollgate.engine.domain import MONEY_SOURCE, RequestType, Reservation
from tollgate.engine.storage.session_blob import FORMAT, pack_session, unpack_session
from tollgate.engine.storage.state import Rated, SessionState

SESSION_ID = "s"
INVALID_AVP_VALUE = 5004
WANT_GRANT = 1
TERMINATION, EVENT = int(RequestType.TERMINATION), int(RequestType.EVENT)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Malformed(ValueError):
    """A value the kernel must report bad."""


def _int(v: Any) -> int:
    # A bool is an int to Python, but msgpack wrote it as a bool: not an integer field.
    if type(v) is not int or not INT64_MIN <= v <= INT64_MAX:
        raise Malformed(f"not an int64: {v!r}")
    return v


def _of(v: Any, t: type) -> Any:
    if type(v) is not t:
        raise Malformed(f"not a {t.__name__}: {v!r}")
    return v


def _pairs(v: Any) -> list[tuple[Any, Any]]:
    """A map's pairs (read with object_pairs_hook=list), its keys int64s that differ: a dict
    keeps one of a repeated key, so such a value is no table."""
    pairs = _of(v, list)
    keys = [_int(k) for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise Malformed("a repeated key")
    return pairs


def read_value(value: bytes) -> SessionState | None:
    """The session a value holds (None: an empty value), as read_sessions reads it; Malformed
    where it reports the value bad: msgpack cannot read it, or it is not exactly the shape
    pack_session writes (11 fields, FORMAT, st 0..2, each field of its type)."""
    if not value:
        return None
    try:
        v = msgpack.unpackb(value, use_list=False, strict_map_key=False,
                            object_pairs_hook=list)
    except Exception as e:  # any reading error: truncated, extra data, bad UTF-8, ...
        raise Malformed(str(e)) from e
    if type(v) is not tuple or len(v) != 11:
        raise Malformed("not an 11-field array")
    fmt, rn, state, t, sub, acct, exp, cost, answers, held, rated = v
    if _int(fmt) != FORMAT or _int(state) not in (0, 1, 2):
        raise Malformed("format or state")
    for x in (rn, t, exp, cost):
        _int(x)
    _of(sub, str)
    _of(acct, str)
    for _, blob in _pairs(answers):
        _of(blob, bytes)
    rgs = []
    for r in _of(held, tuple):
        if type(r) is not tuple or len(r) != 6:
            raise Malformed("a reservation is not a 6-field array")
        rgs.append(_int(r[0]))
        _of(r[1], str)
        for x in r[2:5]:
            _int(x)
        _of(r[5], bool)
    if len(set(rgs)) != len(rgs):
        raise Malformed("a repeated reservation")
    for _, amounts in _pairs(rated):
        if type(amounts) is not tuple or len(amounts) != 4:
            raise Malformed("a rated group is not a 4-field array")
        for x in amounts:
            _int(x)
    return unpack_session(SESSION_ID, value)


def read_reference(buf: bytes, spans: list[tuple[int, int]]
                   ) -> tuple[list[SessionState | None], int]:
    """Each span's session until the first bad one: (the sessions before it, its index or
    -1)."""
    out: list[SessionState | None] = []
    for r, (start, end) in enumerate(spans):
        if start == end:
            out.append(None)
            continue
        if not 0 <= start < end <= len(buf):
            return out, r
        try:
            out.append(read_value(buf[start:end]))
        except Malformed:
            return out, r
    return out, -1


class RefTiming(NamedTuple):
    """outcome.Timing's fields."""

    now_ms: int
    answers_kept: int
    default_validity_s: int
    stale_grace_s: int


@dataclass
class RefRequest:
    rn: int
    kind: int  # RequestType
    time_ms: int
    answer: bytes
    subscriber_id: str
    account_id: str
    old: SessionState | None  # the session before the batch


@dataclass
class RefItem:
    """One item of a request and the charging kernel's outputs for it."""

    rating_group: int
    want: int
    unit_type: int | None  # its rate's (None: no rate)
    member: bool
    result: int
    granted: int
    res_src: int  # a bucket's position, MONEY_SOURCE for money
    res_amount: int
    charged: int
    validity: int
    s_used: int = 0
    s_billed: int = 0
    s_rem: int = 0
    s_charged: int = 0


def session_after(req: RefRequest, items: list[RefItem], bucket_ids: list[str],
                  timing: RefTiming) -> tuple[bytes, int, bool]:
    """(the session's new value, its expiry, rescore) after a request."""
    old = req.old
    answers = dict(old.answers) if old is not None else {}
    live = old if old is not None and not old.is_event else None
    held: dict[int, Reservation]
    rated: dict[int, Rated]
    if live is not None:
        held, rated, cost = dict(live.reservations), dict(live.rated), live.cost
    else:
        held, rated, cost = {}, {}, 0
    longest = 0
    for it in items:
        rg = it.rating_group
        if it.s_used or it.s_billed or it.s_rem or it.s_charged:
            rated[rg] = Rated(it.s_used, it.s_billed, it.s_rem, it.s_charged)
        cost += it.charged
        if not it.granted or it.result != INVALID_AVP_VALUE:
            held.pop(rg, None)
            if it.granted > 0 and it.want == WANT_GRANT:
                bucket = bucket_ids[it.res_src] if it.res_src != MONEY_SOURCE else ""
                held[rg] = Reservation(rg, bucket, it.granted, it.res_amount,
                                       it.unit_type if it.unit_type is not None else 0,
                                       it.member)
                longest = max(longest, it.validity or timing.default_validity_s)
    answers[req.rn] = req.answer
    if req.rn >= timing.answers_kept:
        for n in [n for n in answers if n <= req.rn - timing.answers_kept]:
            del answers[n]
    ended = req.kind in (TERMINATION, EVENT)
    expiry = 0 if ended else timing.now_ms + ((longest or timing.default_validity_s)
                                              + timing.stale_grace_s) * 1000
    new = SessionState(SESSION_ID, req.subscriber_id, req.rn, ended, req.kind == EVENT,
                       req.time_ms, answers, held, expiry, rated, cost, req.account_id)
    rescore = not ended and old is not None and (not old.expiry_ms or expiry < old.expiry_ms)
    return pack_session(new), expiry, rescore


def session_columns(items: list[list[int]], sessions: list[SessionState | None],
                    bucket_ids: list[list[str]]) -> list[list[int]] | int:
    """The item rows with the columns their sessions give (request r's session is
    sessions[r]; account a's buckets are bucket_ids[a], positions numbered across the
    accounts in order), or the first item whose reservation names a bucket its account does
    not have."""
    first = [sum(len(ids) for ids in bucket_ids[:a]) for a in range(len(bucket_ids))]
    out = [list(row) for row in items]
    for i, row in enumerate(out):
        s = sessions[row[I_REQ]]
        if s is None or s.is_event:
            continue
        row[I_S_COST] = s.cost
        res = s.reservations.get(row[I_RG])
        if res is not None:
            row[I_RES_UNITS], row[I_RES_AMOUNT] = res.units, res.amount
            if res.member:
                row[I_FLAGS] |= FLAG_RES_MEMBER
            if res.bucket_id:
                ids = bucket_ids[row[I_ACCT]]
                if res.bucket_id not in ids:
                    return i
                row[I_RES_SRC] = first[row[I_ACCT]] + ids.index(res.bucket_id)
        rated = s.rated.get(row[I_RG])
        if rated is not None:
            row[I_S_USED:I_S_CHARGED + 1] = list(rated)
    return out
