"""A batch's account writes as the store's tables (storage.writes), from the kernels' outputs:
each account's changed fields, each request's session, its usage records and events. Python
steps here are per batch, per changed member or per event, never per request or field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tollgate.engine.charging.batch import (
    MEMBER_RESERVED,
    MEMBER_USED,
    RESERVED,
    KernelBatch,
    KernelResult,
    Pending,
)
from tollgate.engine.charging.kernels.apply_calls import (
    G_COLUMNS,
    G_EV_HI,
    G_EV_LO,
    G_ID_AT,
    G_ID_LEN,
    G_PART,
    G_REC_HI,
    G_REC_LO,
    G_SESS_HI,
    G_SESS_LO,
    G_SET_HI,
    G_SET_LO,
    G_VERSION,
    S_COLUMNS,
    S_ENDED,
    S_EXPIRY,
    S_FLAG,
    S_ID_AT,
    S_ID_LEN,
    S_VALUE_AT,
    S_VALUE_LEN,
    SET_A_AT,
    SET_A_LEN,
    SET_B_AT,
    SET_B_LEN,
    SET_C_AT,
    SET_C_LEN,
    SET_COLUMNS,
    SET_VALUE,
)
from tollgate.engine.charging.kernels.items import Q_ACCT, Q_TYPE
from tollgate.engine.charging.kernels.sessions import H_EXISTS
from tollgate.engine.domain import RequestType
from tollgate.engine.storage.writes import (
    FLAG_CREATED,
    FLAG_KEEP,
    FLAG_RESCORE,
    ByteTable,
    Writes,
    encoded,
    part_rows,
)

PIECES = ("money", "mres", "spent", "capn", "lown", "exhn",  # batch.ACCOUNT_OUTPUTS' fields
          "b:", ":rem", ":res", ":ntf", "m:", ":spent", ":mres", ":u1", ":u2", ":u3", ":r1",
          ":r2", ":r3")
"""The fixed pieces of the account hash's field names (storage.state's layout)."""
_LENGTHS = np.array([len(p) for p in PIECES], np.int64)
_AT = np.cumsum(_LENGTHS) - _LENGTHS
_TEXT = "".join(PIECES).encode()
# Per change `what` (0..CYCLE): its name's first piece, its middle (0 none, 1 the bucket's id,
# 2 the member's subscriber id, 3 a cycle slot's name, made here), its last piece (-1 none;
# a member's unit counters add the unit type's index).
_FIRST = np.array([0, 1, 2, 3, 4, 5, 6, 6, 6, 10, 10, 10, 10, -1], np.int64)
_MIDDLE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3], np.int64)
_LAST = np.array([-1, -1, -1, -1, -1, -1, 7, 8, 9, 11, 12, 13, 16, -1], np.int64)
ENDS = np.array([int(RequestType.TERMINATION), int(RequestType.EVENT)], np.int64)
"""Request types after which the session has ended."""


@dataclass(slots=True)
class SessionValues:
    """Each request's session after it, packed by the session kernel: its bytes are
    buf[spans[0, n]:spans[1, n]]."""

    buf: np.ndarray
    spans: np.ndarray
    expiry: np.ndarray  # when its reservations go stale (ms)
    rescore: np.ndarray  # 1: set its open-session score again


@dataclass(slots=True)
class RecordBytes:
    """The batch's usage records, encoded end to end (record r: buf[spans[0, r]:spans[1, r]]),
    with each one's account position, in batch order."""

    buf: np.ndarray
    spans: np.ndarray
    accounts: np.ndarray


def account_writes(batch: list[Pending], kb: KernelBatch, res: KernelResult,
                   renewals: dict[str, dict[str, int]], values: SessionValues,
                   records: RecordBytes, events: list[tuple[int, bytes]]) -> Writes:
    """Group g is account g of the batch (every account is written: its version moves).
    `events`: (account position, Event bytes), in batch order."""
    t = ByteTable()
    accounts = kb.accounts
    n_a = len(accounts)
    partitions, part_of = np.unique(np.array([a.partition for a in accounts], np.int64),
                                    return_inverse=True)
    parts = part_rows(partitions.tolist(), t)
    ids = t.add(kb.view.ids)
    request_accounts = kb.requests[:, Q_ACCT]
    # Accounts are numbered in the order the batch first names them.
    first = np.unique(request_accounts, return_index=True)[1]
    owners = kb.view.owners[kb.view_rows]  # per request: subscriber at, length, account's
    groups = np.zeros((n_a, G_COLUMNS), np.int64)
    groups[:, G_PART] = part_of
    groups[:, G_VERSION] = [a.version for a in accounts]
    groups[:, G_ID_AT] = owners[first, 2] + ids
    groups[:, G_ID_LEN] = owners[first, 3]
    sets, set_owners = _sets(kb, res, renewals, t)
    order, groups[:, [G_SET_LO, G_SET_HI]] = _grouped(set_owners, n_a)
    sets = sets[order]
    sessions = _sessions(batch, kb, values, t)
    order, groups[:, [G_SESS_LO, G_SESS_HI]] = _grouped(request_accounts, n_a)
    sessions = sessions[order]
    at = t.add(records.buf)
    spans = np.stack((records.spans[0] + at, records.spans[1] - records.spans[0]), axis=1)
    order, groups[:, [G_REC_LO, G_REC_HI]] = _grouped(records.accounts, n_a)
    record_rows = spans[order]
    event_rows = t.spans([e for _, e in events])
    order, groups[:, [G_EV_LO, G_EV_HI]] = _grouped(
        np.array([a for a, _ in events], np.int64), n_a)
    return Writes(t.table(), partitions, parts, groups, sets, sessions, record_rows,
                  event_rows[order])


def _grouped(owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The order that puts rows by owner (0..n-1; stable: in their order within each), and
    each owner's [lo, hi) rows in that order."""
    order = np.argsort(owner, kind="stable")
    ends = np.cumsum(np.bincount(owner, minlength=n))
    return order, np.stack((ends - np.bincount(owner, minlength=n), ends), axis=1)


def _sessions(batch: list[Pending], kb: KernelBatch, values: SessionValues, t: ByteTable
              ) -> np.ndarray:
    """A session write per request (S_* rows), in batch order."""
    n = len(batch)
    rows = np.empty((n, S_COLUMNS), np.int64)
    rows[:, [S_ID_AT, S_ID_LEN]] = t.spans(encoded([p.request.session_id for p in batch]))
    exists = kb.view.arrays[0][kb.view_rows, H_EXISTS]
    rows[:, S_FLAG] = np.where(exists == 0, FLAG_CREATED,
                               np.where(values.rescore != 0, FLAG_RESCORE, FLAG_KEEP))
    rows[:, S_ENDED] = np.isin(kb.requests[:, Q_TYPE], ENDS)
    rows[:, S_EXPIRY] = values.expiry
    rows[:, S_VALUE_AT] = values.spans[0] + t.add(values.buf)
    rows[:, S_VALUE_LEN] = values.spans[1] - values.spans[0]
    return rows


def _sets(kb: KernelBatch, res: KernelResult, renewals: dict[str, dict[str, int]],
          t: ByteTable) -> tuple[np.ndarray, np.ndarray]:
    """The account fields the batch sets (SET_* rows) and each one's account: a new billing
    cycle's fields first, then the kernel's changes (set later in the same HSET, so their
    values win). The kernel's values are new values, not increments: the apply sets them only
    on the version they were computed from."""
    pieces = t.add(_TEXT)
    ch = res.change_rows
    owner, what, i, value = ch[:, 0], ch[:, 1], ch[:, 2], ch[:, 3].copy()
    rows = np.zeros((len(ch), SET_COLUMNS), np.int64)
    first, middle, last = _FIRST[what], _MIDDLE[what], _LAST[what]
    units = what >= MEMBER_USED
    last = np.where(units & (what <= MEMBER_RESERVED), last + i % 3, last)
    named = first >= 0
    rows[named, SET_A_AT] = _AT[first[named]] + pieces
    rows[named, SET_A_LEN] = _LENGTHS[first[named]]
    ends = last >= 0
    rows[ends, SET_C_AT] = _AT[last[ends]] + pieces
    rows[ends, SET_C_LEN] = _LENGTHS[last[ends]]
    bucket = middle == 1
    names = t.add(kb.names)
    rows[bucket, SET_B_AT] = kb.bucket_names[0, i[bucket]] + names
    rows[bucket, SET_B_LEN] = kb.bucket_names[1, i[bucket]]
    reserved = np.flatnonzero(what == RESERVED)  # the change is an increment of `reserved`
    value[reserved] += np.array([kb.buckets[b].reserved for b in i[reserved].tolist()],
                                np.int64)
    member = middle == 2
    if member.any():
        m = np.where(units, i // 3, i)[member]
        changed, at = np.unique(m, return_inverse=True)
        spans = t.spans(encoded([kb.members[k][1].subscriber_id for k in changed.tolist()]))
        rows[member, SET_B_AT] = spans[at, 0]
        rows[member, SET_B_LEN] = spans[at, 1]
    cycle = np.flatnonzero(middle == 3)
    if cycle.size:
        spans = t.spans([f"cu:{kb.slots[s][1]}".encode() for s in i[cycle].tolist()])
        rows[cycle, SET_A_AT] = spans[:, 0]
        rows[cycle, SET_A_LEN] = spans[:, 1]
    rows[:, SET_VALUE] = value
    if not renewals:
        return rows, owner
    fields = [(kb.index[a], f, v) for a, sets in renewals.items() for f, v in sets.items()]
    renewed = np.zeros((len(fields), SET_COLUMNS), np.int64)
    renewed[:, [SET_A_AT, SET_A_LEN]] = t.spans(encoded([f for _, f, _ in fields]))
    renewed[:, SET_VALUE] = [v for _, _, v in fields]
    return (np.concatenate((renewed, rows)),
            np.concatenate((np.array([a for a, _, _ in fields], np.int64), owner)))

