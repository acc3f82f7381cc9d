"""A batch's account writes as the apply's tables (kernels/apply_calls G_*, SET_*, S_* rows) from
the kernels' outputs: which outputs moved (change_rows), each account's changed fields named
from the batch's id tables, each request's session write, its records and events, grouped by
account. Its plain-Python twin is account_tables_reference.py
(tests/unit/test_account_tables.py compares them)."""

from __future__ import annotations

import numpy as np
from numba import njit

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

# The charging kernel's change rows (batch.KernelBatch._changes): account, what, index, value.
# `what` 0-5: an account output (kernels.charge A_* rows 0-5; the index is the account);
# then, with their index: a bucket's remaining units, its reserved units (the value is the
# change), its notified level; a member's money spent and reserved, then its units used and
# reserved (index: 3 * member + unit type - 1); the units of a cycle slot.
REMAINING, RESERVED, NOTIFIED, MEMBER_SPENT, MEMBER_MRES, MEMBER_USED, MEMBER_RESERVED, CYCLE = (
    range(6, 14))
TERMINATION, EVENT = 3, 4  # RequestType: the session has ended after them
FLAG_KEEP, FLAG_CREATED, FLAG_RESCORE = 48, 49, 50  # a session write's flag ('0', '1', '2')

PIECES = ("money", "mres", "spent", "capn", "lown", "exhn",  # the account outputs' fields
          "b:", ":rem", ":res", ":ntf", "m:", ":spent", ":mres", ":u1", ":u2", ":u3", ":r1",
          ":r2", ":r3")
"""The fixed pieces of the account hash's field names (storage.state's layout), end to end in
PIECE_TEXT."""
PIECE_TEXT = "".join(PIECES).encode()
PIECE_LEN = np.array([len(p) for p in PIECES], np.int64)
PIECE_AT = np.cumsum(PIECE_LEN) - PIECE_LEN
# Per `what` (0..CYCLE): its name's first piece (-1: a cycle slot's name, given), its middle
# (0 none, 1 the bucket's id, 2 the member's subscriber id), its last piece (-1 none; a
# member's unit counters add the unit type's index, `index` % 3).
FIRST = np.array([0, 1, 2, 3, 4, 5, 6, 6, 6, 10, 10, 10, 10, -1], np.int64)
MIDDLE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0], np.int64)
LAST = np.array([-1, -1, -1, -1, -1, -1, 7, 8, 9, 11, 12, 13, 16, -1], np.int64)

# `bases`: where the id tables start in the byte table the spans index.
B_IDS, B_NAMES, B_PIECES, B_VALUES, B_RECORDS = range(5)
B_COLUMNS = 5
# `renewals`: a row per field a new billing cycle sets: account, name at, length, value.
# `events`: a row per event: account, bytes at, length (both in the byte table).
OWNER, AT, LEN, VALUE = range(4)


@njit(cache=True, nogil=True)
def _placed(owners: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's place when rows are put by owner (0..n-1), stably; each owner's first place
    (n + 1 entries)."""
    start = np.zeros(n + 1, np.int64)
    for r in range(owners.size):
        start[owners[r] + 1] += 1
    for a in range(n):
        start[a + 1] += start[a]
    at = start[:n].copy()
    place = np.empty(owners.size, np.int64)
    for r in range(owners.size):
        place[r] = at[owners[r]]
        at[owners[r]] += 1
    return place, start


@njit(cache=True, nogil=True)
def account_tables(bases: np.ndarray, versions: np.ndarray, partitions: np.ndarray,
                   requests: np.ndarray, view_rows: np.ndarray, owners: np.ndarray,
                   heads: np.ndarray, session_ids: np.ndarray,
                   expiry: np.ndarray, rescore: np.ndarray, value_spans: np.ndarray,
                   changes: np.ndarray, bucket_names: np.ndarray, bucket_reserved: np.ndarray,
                   member_names: np.ndarray, cycle_names: np.ndarray, renewals: np.ndarray,
                   record_spans: np.ndarray, record_accounts: np.ndarray, events: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """groups, sets, sessions, records and events of the apply's tables; group a is account a.

    Per account: `versions`, `partitions`. Per request: its row of
    `requests` (kernels.items Q_*: its account and type), its session's row (`view_rows`, of
    `owners`: subscriber at, length, account at, length in the ids; and of `heads`, the
    session as read), its session id (at, length), new expiry, rescore flag and value span
    (2, n; in the values). `changes`: the charging kernel's change rows;
    `bucket_names` (2, buckets), `bucket_reserved` (a RESERVED change adds to it),
    `member_names` (members, 2) and `cycle_names` (a row per CYCLE change, in order) name the
    fields. `record_spans` (2, records; in the records) with `record_accounts`."""
    n_a, n = versions.size, requests.shape[0]
    request_accounts = requests[:, Q_ACCT].copy()
    groups = np.zeros((n_a, G_COLUMNS), np.int64)
    seen = np.zeros(n_a, np.bool_)
    for r in range(n):
        a = request_accounts[r]
        if not seen[a]:  # its id from the account's first request
            seen[a] = True
            row = view_rows[r]
            groups[a, G_ID_AT] = owners[row, 2] + bases[B_IDS]
            groups[a, G_ID_LEN] = owners[row, 3]
    for a in range(n_a):
        groups[a, G_PART] = partitions[a]
        groups[a, G_VERSION] = versions[a]

    # Fields: a new cycle's first, then the kernel's changes (later in the same HSET, their
    # values win).
    n_r, n_c = renewals.shape[0], changes.shape[0]
    set_owners = np.empty(n_r + n_c, np.int64)
    set_owners[:n_r] = renewals[:, OWNER]
    set_owners[n_r:] = changes[:, 0]
    place, start = _placed(set_owners, n_a)
    sets = np.zeros((n_r + n_c, SET_COLUMNS), np.int64)
    for k in range(n_r):
        s = place[k]
        sets[s, SET_A_AT], sets[s, SET_A_LEN] = renewals[k, AT], renewals[k, LEN]
        sets[s, SET_VALUE] = renewals[k, VALUE]
    cycle = 0
    for k in range(n_c):
        s = place[n_r + k]
        what, i, value = changes[k, 1], changes[k, 2], changes[k, 3]
        first, middle, last = FIRST[what], MIDDLE[what], LAST[what]
        if first >= 0:
            sets[s, SET_A_AT] = PIECE_AT[first] + bases[B_PIECES]
            sets[s, SET_A_LEN] = PIECE_LEN[first]
        else:
            sets[s, SET_A_AT], sets[s, SET_A_LEN] = cycle_names[cycle, 0], cycle_names[cycle, 1]
            cycle += 1
        if middle == 1:
            sets[s, SET_B_AT] = bucket_names[0, i] + bases[B_NAMES]
            sets[s, SET_B_LEN] = bucket_names[1, i]
        elif middle == 2:
            m = i // 3 if what >= MEMBER_USED else i
            sets[s, SET_B_AT], sets[s, SET_B_LEN] = member_names[m, 0], member_names[m, 1]
        if what in (MEMBER_USED, MEMBER_RESERVED):
            last += i % 3
        if last >= 0:
            sets[s, SET_C_AT] = PIECE_AT[last] + bases[B_PIECES]
            sets[s, SET_C_LEN] = PIECE_LEN[last]
        sets[s, SET_VALUE] = value + bucket_reserved[i] if what == RESERVED else value
    for a in range(n_a):
        groups[a, G_SET_LO], groups[a, G_SET_HI] = start[a], start[a + 1]

    place, start = _placed(request_accounts, n_a)
    sessions = np.empty((n, S_COLUMNS), np.int64)
    for r in range(n):
        s = place[r]
        sessions[s, S_ID_AT], sessions[s, S_ID_LEN] = session_ids[r, 0], session_ids[r, 1]
        sessions[s, S_FLAG] = (FLAG_CREATED if heads[view_rows[r], H_EXISTS] == 0 else
                               FLAG_RESCORE if rescore[r] != 0 else FLAG_KEEP)
        kind = requests[r, Q_TYPE]
        sessions[s, S_ENDED] = 1 if kind in (TERMINATION, EVENT) else 0
        sessions[s, S_EXPIRY] = expiry[r]
        sessions[s, S_VALUE_AT] = value_spans[0, r] + bases[B_VALUES]
        sessions[s, S_VALUE_LEN] = value_spans[1, r] - value_spans[0, r]
    for a in range(n_a):
        groups[a, G_SESS_LO], groups[a, G_SESS_HI] = start[a], start[a + 1]

    place, start = _placed(record_accounts, n_a)
    records = np.empty((record_accounts.size, 2), np.int64)
    for k in range(record_accounts.size):
        records[place[k], 0] = record_spans[0, k] + bases[B_RECORDS]
        records[place[k], 1] = record_spans[1, k] - record_spans[0, k]
    for a in range(n_a):
        groups[a, G_REC_LO], groups[a, G_REC_HI] = start[a], start[a + 1]

    place, start = _placed(events[:, OWNER].copy(), n_a)
    out_events = np.empty((events.shape[0], 2), np.int64)
    for k in range(events.shape[0]):
        out_events[place[k], 0], out_events[place[k], 1] = events[k, AT], events[k, LEN]
    for a in range(n_a):
        groups[a, G_EV_LO], groups[a, G_EV_HI] = start[a], start[a + 1]
    return groups, sets, sessions, records, out_events


@njit(cache=True, nogil=True)
def change_rows(before: np.ndarray, after: np.ndarray, bucket_start: np.ndarray,
                member_owner: np.ndarray, slot_owner: np.ndarray) -> np.ndarray:
    """The charging kernel's outputs that moved, a row each: (account, what, index, new
    value), in the order of `before` and `after`, which hold end to end (each what-major):
    the accounts' 6 outputs, the buckets' remaining, reserved and notified, the members'
    money spent and reserved, their units used and reserved (3 per member), and the cycle
    slots' units. An account's buckets are bucket_start[a] .. bucket_start[a + 1]; a
    member's and a cycle slot's account are member_owner's and slot_owner's."""
    n_a = bucket_start.size - 1
    n_b, n_m, n_s = bucket_start[n_a], member_owner.size, slot_owner.size
    moved = 0
    for p in range(before.size):
        if before[p] != after[p]:
            moved += 1
    out = np.empty((moved, 4), np.int64)
    j = p = 0
    for what in range(CYCLE + 1):
        if what < REMAINING:
            rows = n_a
        elif what < MEMBER_SPENT:
            rows = n_b
        elif what < MEMBER_USED:
            rows = n_m
        elif what < CYCLE:
            rows = 3 * n_m
        else:
            rows = n_s
        a = 0
        for i in range(rows):
            if what < REMAINING:
                a = i
            elif what < MEMBER_SPENT:
                while bucket_start[a + 1] <= i:
                    a += 1
            elif what < MEMBER_USED:
                a = member_owner[i]
            elif what < CYCLE:
                a = member_owner[i // 3]
            else:
                a = slot_owner[i]
            if before[p] != after[p]:
                out[j, 0], out[j, 1], out[j, 2], out[j, 3] = a, what, i, after[p]
                j += 1
            p += 1
    return out
