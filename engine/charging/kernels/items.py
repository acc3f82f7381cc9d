"""A batch's requests, as the decoder's units table and a row each, into the charging kernel's
item table (kernels.charge I_*)."""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.charge import (
    I_ACCT,
    I_CYCLE_SLOT,
    I_FLAGS,
    I_MEMBER,
    I_NOW,
    I_RATE,
    I_REQ,
    I_REQUESTED,
    I_RES_SRC,
    I_RG,
    I_START,
    I_TIME,
    I_USED,
    I_WANT,
    R_UNIT,
    WANT_DEBIT,
    WANT_GRANT,
    WANT_NONE,
    helper,
)
from tollgate.engine.charging.kernels.sessions import (
    H_EXISTS,
    H_RES_HI,
    H_RES_LO,
    H_ST,
    H_T,
    RES_RG,
    ST_EVENT,
    TERMINATION,
)
from tollgate.engine.charging.wire import (
    U_HAS_REQUESTED,
    U_HAS_USED,
    U_RATING_GROUP,
    U_REQUESTED,
    U_SERVICE_ID,
    U_USED,
)
from tollgate.engine.domain import MONEY_SOURCE

EVENT = 4  # RequestType.EVENT (tests/unit/test_item_kernel.py checks it)
OCTETS, SECONDS = 1, 2  # UnitType's values (the same test checks them)
ITEM_WIDTH = I_REQ + 1

# item_rows' request table: a row per request. Its units are columns [LO, HI) of the units
# table (wire U_* rows); its rate rows are columns [PRICE_LO, PRICE_HI) of `prices` (its
# plan's, in its zone); OFFSET: the plan's UTC offset at its time (ms); VIEW: its session's row
# in read_sessions' tables (-1: none); FLAGS: the item flags of all its items.
(Q_LO, Q_HI, Q_TYPE, Q_TIME, Q_ACCT, Q_MEMBER, Q_PRICE_LO, Q_PRICE_HI, Q_OFFSET, Q_VIEW,
 Q_FLAGS) = range(11)
Q_COLUMNS = 11
P_RG, P_ROW = 0, 1  # `prices` rows: rating group, rate row (sorted by rating group per span)


@helper
def _rate_row(prices: np.ndarray, lo: int, hi: int, rg: int) -> int:
    """The rate row of a rating group in a request's span of `prices` (-1: none)."""
    end = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if prices[P_RG, mid] < rg:
            lo = mid + 1
        else:
            hi = mid
    if lo < end and prices[P_RG, lo] == rg:
        return prices[P_ROW, lo]
    return -1


@helper
def _amount(units: np.ndarray, first: int, u: int, unit: int) -> int:
    """The amount of a unit type in the Units message of rows first.. of column u: octets are
    the total, or input plus output when no total is given."""
    if unit == OCTETS:
        total = units[first, u]
        return total if total else units[first + 1, u] + units[first + 2, u]
    return units[first + 3, u] if unit == SECONDS else units[first + 4, u]


@helper
def _live(heads: np.ndarray, row: int) -> bool:
    return row >= 0 and heads[row, H_EXISTS] != 0 and heads[row, H_ST] != ST_EVENT


@helper
def _mentioned(units: np.ndarray, lo: int, hi: int, rg: int) -> bool:
    for u in range(lo, hi):  # noqa: SIM110 (Numba compiles no generator)
        if units[U_RATING_GROUP, u] == rg:
            return True
    return False


@njit(cache=True, nogil=True)
def item_rows(units: np.ndarray, reqs: np.ndarray, prices: np.ndarray, rate_table: np.ndarray,
              heads: np.ndarray, held: np.ndarray, now_ms: int) -> tuple:
    """One item per units entry of each request, then, for a TERMINATION of a live session,
    a release of each reservation it holds that the request does not mention (by rating
    group), in batch order. Returns the items (charging-kernel columns; the session's columns,
    kernels.sessions.session_columns, left zero), per item whether its request's answer shows
    it and its service id, and the cycle slots: the distinct (account, rating group) pairs,
    sorted (rows 0 and 1), each item's I_CYCLE_SLOT their column."""
    n = reqs.shape[0]
    count = 0
    for r in range(n):
        count += reqs[r, Q_HI] - reqs[r, Q_LO]
        row = reqs[r, Q_VIEW]
        if reqs[r, Q_TYPE] == TERMINATION and _live(heads, row):
            count += heads[row, H_RES_HI] - heads[row, H_RES_LO]
    items = np.zeros((count, ITEM_WIDTH), np.int64)
    shown = np.zeros(count, np.int64)
    service = np.zeros(count, np.int64)
    i = 0
    for r in range(n):
        kind, lo, hi, row = reqs[r, Q_TYPE], reqs[r, Q_LO], reqs[r, Q_HI], reqs[r, Q_VIEW]
        live = _live(heads, row)
        time_ms, offset = reqs[r, Q_TIME], reqs[r, Q_OFFSET]
        start = min(heads[row, H_T], time_ms) if live else time_ms
        first = i
        for u in range(lo, hi):
            items[i, I_RG] = units[U_RATING_GROUP, u]
            service[i] = units[U_SERVICE_ID, u]
            shown[i] = 1
            has_requested = units[U_HAS_REQUESTED, u] != 0
            rate = _rate_row(prices, reqs[r, Q_PRICE_LO], reqs[r, Q_PRICE_HI], items[i, I_RG])
            used, requested = 0, 0
            if rate >= 0:
                unit = rate_table[R_UNIT, rate]
                if units[U_HAS_USED, u]:
                    used = _amount(units, U_USED, u, unit)
                if has_requested:
                    requested = _amount(units, U_REQUESTED, u, unit)
            if kind == EVENT:
                want = WANT_DEBIT
                if not used:
                    used = requested
            elif has_requested and kind != TERMINATION:
                want = WANT_GRANT
            else:
                want = WANT_NONE
            items[i, I_RATE], items[i, I_USED], items[i, I_REQUESTED] = rate, used, requested
            items[i, I_WANT] = want
            i += 1
        if kind == TERMINATION and live:
            h_lo, h_hi = heads[row, H_RES_LO], heads[row, H_RES_HI]
            rgs = np.sort(held[h_lo:h_hi, RES_RG])
            for rg in rgs:
                if not _mentioned(units, lo, hi, rg):
                    items[i, I_RG] = rg
                    items[i, I_RATE] = _rate_row(prices, reqs[r, Q_PRICE_LO],
                                                 reqs[r, Q_PRICE_HI], rg)
                    items[i, I_WANT] = WANT_NONE
                    i += 1
        for j in range(first, i):
            items[j, I_ACCT], items[j, I_MEMBER] = reqs[r, Q_ACCT], reqs[r, Q_MEMBER]
            items[j, I_START], items[j, I_TIME] = start + offset, time_ms + offset
            items[j, I_FLAGS], items[j, I_RES_SRC] = reqs[r, Q_FLAGS], MONEY_SOURCE
            items[j, I_NOW], items[j, I_REQ] = now_ms, r
    items = items[:i]
    # Cycle slots: each distinct (account, rating group), in sorted order. Rating groups are
    # uint32 on the wire, account positions far below 2**31: the pair is one int64.
    keys = (items[:, I_ACCT] << 32) | items[:, I_RG]
    order = np.argsort(keys, kind="mergesort")
    slots = np.zeros((2, i), np.int64)
    s = -1
    for k in range(i):
        j = order[k]
        if s < 0 or keys[j] != keys[order[k - 1]]:
            s += 1
            slots[0, s], slots[1, s] = items[j, I_ACCT], items[j, I_RG]
        items[j, I_CYCLE_SLOT] = s
    return items, shown[:i], service[:i], slots[:, :s + 1]
