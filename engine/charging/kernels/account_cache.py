"""The account cache's tables (charging.cache) read and written for a batch: its accounts,
buckets, members and cycle slots gathered into the charging kernel's arrays, and the kernel's
changes written back. One call each whatever the batch's size (as numpy steps they cost a
small batch ~100 µs). Plain-Python twins: account_cache_reference.py."""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.account_tables import (
    CYCLE,
    MEMBER_MRES,
    MEMBER_RESERVED,
    MEMBER_SPENT,
    MEMBER_USED,
    NOTIFIED,
    REMAINING,
    RESERVED,
)
from tollgate.engine.charging.kernels.charge import (
    B_LEVEL,
    B_REMAINING,
    B_RG_HI,
    B_RG_LO,
    M_MRES,
    M_SPENT,
    U_RES,
    U_USED,
)
from tollgate.engine.charging.kernels.memory import copy_bytes

# The tables hold a column per account, bucket and member, their rows the charging kernel's
# (kernels.charge A_*, B_*, M_*, U_*; a member has a units column per unit type). Rows of the
# account table past the kernel's first eight (A_MONEY .. A_CAP): where the account's
# buckets and members are in theirs ([lo, hi), in the order of its lists), and its units
# billed this cycle per rating group in the cycle table (C_* rows, in no order); when its
# cycle ends (0: never).
(T_BUCKETS_LO, T_BUCKETS_HI, T_MEMBERS_LO, T_MEMBERS_HI, T_CYCLES_LO, T_CYCLES_HI,
 T_CYCLE_END) = range(8, 15)
ACCOUNT_ROWS = 15
T_RESERVED, T_NAME_AT, T_NAME_LEN = 7, 8, 9
"""The bucket table's rows past the kernel's B_* rows: units held by live reservations, where
its id is in the names (UTF-8; an account's buckets' ids end to end) and its length."""
BUCKET_ROWS = 10
C_RATING_GROUP, C_UNITS = 0, 1


@njit(cache=True, nogil=True)
def gather_accounts(accounts: np.ndarray, buckets: np.ndarray, rgs: np.ndarray,
                    names: np.ndarray, members: np.ndarray, units: np.ndarray,
                    cols: np.ndarray) -> tuple:
    """The accounts at table columns `cols`, their buckets (B_RG_* rebased into the rating
    groups returned), their buckets' ids end to end with (offset, length) per bucket, each
    account's first bucket (and the end), its members and their units, and the buckets' and
    members' table columns."""
    n = cols.size
    table = np.empty((accounts.shape[0], n), np.int64)
    n_b = n_m = n_g = n_n = 0
    for k in range(n):
        c = cols[k]
        for r in range(accounts.shape[0]):
            table[r, k] = accounts[r, c]
        n_m += accounts[T_MEMBERS_HI, c] - accounts[T_MEMBERS_LO, c]
        for b in range(accounts[T_BUCKETS_LO, c], accounts[T_BUCKETS_HI, c]):
            n_b += 1
            n_g += buckets[B_RG_HI, b] - buckets[B_RG_LO, b]
            n_n += buckets[T_NAME_LEN, b]
    out_b = np.empty((buckets.shape[0], n_b), np.int64)
    out_g = np.empty(n_g, np.int64)
    out_n = np.empty(n_n, np.uint8)
    bucket_names = np.empty((2, n_b), np.int64)
    bucket_start = np.empty(n + 1, np.int64)
    bucket_cols = np.empty(n_b, np.int64)
    out_m = np.empty((members.shape[0], n_m), np.int64)
    out_u = np.empty((units.shape[0], 3 * n_m), np.int64)
    member_cols = np.empty(n_m, np.int64)
    i = g = t = m = 0
    for k in range(n):
        c = cols[k]
        bucket_start[k] = i
        for b in range(accounts[T_BUCKETS_LO, c], accounts[T_BUCKETS_HI, c]):
            for r in range(buckets.shape[0]):
                out_b[r, i] = buckets[r, b]
            out_b[B_RG_LO, i] = g
            for x in range(buckets[B_RG_LO, b], buckets[B_RG_HI, b]):
                out_g[g] = rgs[x]
                g += 1
            out_b[B_RG_HI, i] = g
            length = buckets[T_NAME_LEN, b]
            copy_bytes(out_n, t, names, buckets[T_NAME_AT, b], length)
            bucket_names[0, i], bucket_names[1, i] = t, length
            t += length
            bucket_cols[i] = b
            i += 1
        for x in range(accounts[T_MEMBERS_LO, c], accounts[T_MEMBERS_HI, c]):
            for r in range(members.shape[0]):
                out_m[r, m] = members[r, x]
            for u in range(3):
                for r in range(units.shape[0]):
                    out_u[r, 3 * m + u] = units[r, 3 * x + u]
            member_cols[m] = x
            m += 1
    bucket_start[n] = i
    return (table, out_b, out_g, out_n, bucket_names, bucket_start, out_m, out_u, bucket_cols,
            member_cols)


@njit(cache=True, nogil=True)
def cycle_slots(accounts: np.ndarray, cycles: np.ndarray, cols: np.ndarray,
                slots: np.ndarray) -> tuple:
    """Per cycle slot (kernels.items: account position, rating group) of accounts at table
    columns `cols`, its units so far and its cycle table column (-1: none yet, 0 units)."""
    s = slots.shape[1]
    found = np.zeros(s, np.int64)
    where = np.full(s, -1, np.int64)
    for j in range(s):
        c, rg = cols[slots[0, j]], slots[1, j]
        for x in range(accounts[T_CYCLES_LO, c], accounts[T_CYCLES_HI, c]):
            if cycles[C_RATING_GROUP, x] == rg:
                found[j], where[j] = cycles[C_UNITS, x], x
                break
    return found, where


@njit(cache=True, nogil=True)
def keep_changes(accounts: np.ndarray, buckets: np.ndarray, members: np.ndarray,
                 units: np.ndarray, cycles: np.ndarray, changes: np.ndarray,
                 account_cols: np.ndarray, bucket_cols: np.ndarray, member_cols: np.ndarray,
                 cycle_cols: np.ndarray, slots_rg: np.ndarray) -> np.ndarray:
    """Writes the charging kernel's changes (change rows: account, what, index, value; batch
    positions, mapped to table columns by the *_cols; `slots_rg`: each cycle slot's rating
    group) into the tables. A rating group's first
    cycle units go at the end of the account's cycle run where its size class has room
    (charging.cache._Runs: a run of n holds the next power of two); returns the rows of
    those that did not fit (the cache moves the run)."""
    new = np.empty(changes.shape[0], np.int64)
    k = 0
    for j in range(changes.shape[0]):
        what, i, v = changes[j, 1], changes[j, 2], changes[j, 3]
        if what < REMAINING:  # an account output: `what` is its row
            accounts[what, account_cols[changes[j, 0]]] = v
        elif what == REMAINING:
            buckets[B_REMAINING, bucket_cols[i]] = v
        elif what == RESERVED:  # the value is the change
            buckets[T_RESERVED, bucket_cols[i]] += v
        elif what == NOTIFIED:
            buckets[B_LEVEL, bucket_cols[i]] = v
        elif what == MEMBER_SPENT:
            members[M_SPENT, member_cols[i]] = v
        elif what == MEMBER_MRES:
            members[M_MRES, member_cols[i]] = v
        elif what == MEMBER_USED:
            units[U_USED, 3 * member_cols[i // 3] + i % 3] = v
        elif what == MEMBER_RESERVED:
            units[U_RES, 3 * member_cols[i // 3] + i % 3] = v
        elif what == CYCLE:
            if cycle_cols[i] >= 0:
                cycles[C_UNITS, cycle_cols[i]] = v
                continue
            c = account_cols[changes[j, 0]]
            n = accounts[T_CYCLES_HI, c] - accounts[T_CYCLES_LO, c]
            if n > 0 and n & (n - 1) != 0:  # not a power of two: room for one more
                at = accounts[T_CYCLES_HI, c]
                cycles[C_RATING_GROUP, at], cycles[C_UNITS, at] = slots_rg[i], v
                accounts[T_CYCLES_HI, c] = at + 1
            else:
                new[k] = j
                k += 1
    return new[:k]
