"""Plain-Python twin of kernels/account_tables.py: the same tables built row by row, each table put
in account order by a stable sort; used only by property tests."""

from __future__ import annotations

import bisect

import numpy as np

from tollgate.engine.charging.kernels.account_tables import (
    AT,
    B_IDS,
    B_NAMES,
    B_PIECES,
    B_RECORDS,
    B_VALUES,
    CYCLE,
    EVENT,
    FLAG_CREATED,
    FLAG_KEEP,
    FLAG_RESCORE,
    LEN,
    MEMBER_RESERVED,
    MEMBER_SPENT,
    MEMBER_USED,
    NOTIFIED,
    OWNER,
    PIECES,
    REMAINING,
    RESERVED,
    TERMINATION,
    VALUE,
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
    SET_COLUMNS,
)
from tollgate.engine.charging.kernels.items import Q_ACCT, Q_TYPE
from tollgate.engine.charging.kernels.sessions import H_EXISTS

MEMBER_FIELDS = {9: ":spent", 10: ":mres"}


def _piece(name: str, base: int) -> tuple[int, int]:
    """A fixed piece's span in the byte table (PIECES end to end from `base`)."""
    k = PIECES.index(name)
    return base + sum(len(p) for p in PIECES[:k]), len(name)


def _by_owner(rows: list[tuple[int, list[int]]], n: int, width: int
              ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(owner, row) pairs as a table in owner order (stable), and each owner's [lo, hi)."""
    ordered = sorted(rows, key=lambda pair: pair[0])
    owners = [o for o, _ in ordered]
    return (np.array([r for _, r in ordered], np.int64).reshape(-1, width),
            [(bisect.bisect_left(owners, a), bisect.bisect_right(owners, a)) for a in range(n)])


def account_tables(bases: np.ndarray, versions: np.ndarray, partitions: np.ndarray,
                   requests: np.ndarray, view_rows: np.ndarray, owners: np.ndarray,
                   heads: np.ndarray, session_ids: np.ndarray, expiry: np.ndarray,
                   rescore: np.ndarray, value_spans: np.ndarray, changes: np.ndarray,
                   bucket_names: np.ndarray, bucket_reserved: np.ndarray,
                   member_names: np.ndarray, cycle_names: np.ndarray, renewals: np.ndarray,
                   record_spans: np.ndarray, record_accounts: np.ndarray, events: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_a = len(versions)
    b = bases.tolist()
    pieces = b[B_PIECES]
    groups = [[0] * G_COLUMNS for _ in range(n_a)]
    ids: dict[int, tuple[int, int]] = {}
    for r, req in enumerate(requests.tolist()):
        row = owners[view_rows[r]].tolist()
        ids.setdefault(req[Q_ACCT], (row[2] + b[B_IDS], row[3]))
    for a in range(n_a):
        g = groups[a]
        g[G_PART], g[G_VERSION] = partitions[a], versions[a]
        g[G_ID_AT], g[G_ID_LEN] = ids.get(a, (0, 0))

    sets: list[tuple[int, list[int]]] = [
        (o, [at, n, 0, 0, 0, 0, v])
        for o, at, n, v in renewals[:, [OWNER, AT, LEN, VALUE]].tolist()]
    cycles = iter(cycle_names.tolist())
    for a, what, i, value in changes.tolist():
        first: tuple[int, int]
        middle = (0, 0)
        last = (0, 0)
        if what < REMAINING:
            first = _piece(PIECES[what], pieces)
        elif what == CYCLE:
            first = tuple(next(cycles))
        elif what <= NOTIFIED:
            first = _piece("b:", pieces)
            middle = (bucket_names[0, i] + b[B_NAMES], bucket_names[1, i])
            last = _piece((":rem", ":res", ":ntf")[what - REMAINING], pieces)
            if what == RESERVED:
                value += bucket_reserved[i]
        else:
            first = _piece("m:", pieces)
            units = MEMBER_USED <= what <= MEMBER_RESERVED
            middle = tuple(member_names[i // 3 if units else i])
            last = _piece(f":{'u' if what == MEMBER_USED else 'r'}{i % 3 + 1}" if units
                          else MEMBER_FIELDS[what], pieces)
        sets.append((a, [*first, *middle, *last, value]))
    set_table, set_bounds = _by_owner(sets, n_a, SET_COLUMNS)

    sessions = []
    for r, req in enumerate(requests.tolist()):
        existed = heads[view_rows[r], H_EXISTS] != 0
        flag = FLAG_CREATED if not existed else FLAG_RESCORE if rescore[r] else FLAG_KEEP
        lo, hi = value_spans[:, r].tolist()
        sessions.append((req[Q_ACCT], [*session_ids[r].tolist(), flag,
                                       int(req[Q_TYPE] in (TERMINATION, EVENT)), expiry[r],
                                       lo + b[B_VALUES], hi - lo]))
    session_table, session_bounds = _by_owner(sessions, n_a, S_COLUMNS)
    record_table, record_bounds = _by_owner(
        [(a, [lo + b[B_RECORDS], hi - lo]) for a, lo, hi in
         zip(record_accounts.tolist(), *record_spans.tolist(), strict=True)], n_a, 2)
    event_table, event_bounds = _by_owner(
        [(o, [at, n]) for o, at, n in events[:, [OWNER, AT, LEN]].tolist()], n_a, 2)
    for a in range(n_a):
        g = groups[a]
        g[G_SET_LO], g[G_SET_HI] = set_bounds[a]
        g[G_SESS_LO], g[G_SESS_HI] = session_bounds[a]
        g[G_REC_LO], g[G_REC_HI] = record_bounds[a]
        g[G_EV_LO], g[G_EV_HI] = event_bounds[a]
    return (np.array(groups, np.int64).reshape(-1, G_COLUMNS), set_table, session_table,
            record_table, event_table)


def change_rows(before: np.ndarray, after: np.ndarray, bucket_start: np.ndarray,
                member_owner: np.ndarray, slot_owner: np.ndarray) -> np.ndarray:
    """kernels.account_tables.change_rows: each segment of the outputs (accounts, buckets,
    members, members' units, cycle slots) with its rows' owners, compared one by one."""
    n_a = len(bucket_start) - 1
    starts = [int(b) for b in bucket_start]
    bucket_owner = [bisect.bisect_right(starts, b) - 1 for b in range(starts[-1])]
    members, slots = [int(m) for m in member_owner], [int(a) for a in slot_owner]
    segments = [(range(REMAINING), list(range(n_a))),
                (range(REMAINING, MEMBER_SPENT), bucket_owner),
                (range(MEMBER_SPENT, MEMBER_USED), members),
                (range(MEMBER_USED, CYCLE), [m for m in members for _ in range(3)]),
                (range(CYCLE, CYCLE + 1), slots)]
    rows, p = [], 0
    for whats, owners in segments:
        for what in whats:
            for i, owner in enumerate(owners):
                if before[p] != after[p]:
                    rows.append((owner, what, i, int(after[p])))
                p += 1
    assert p == len(before) == len(after)
    return np.array(rows, np.int64).reshape(-1, 4)
