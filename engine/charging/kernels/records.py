"""Rated usage records from the charging kernel's arrays: which items have one, and the records'
tables (usage_wire REC_* and C_* rows) for the record encoder. Their plain-Python twins are
in reference.py (tests/unit/test_record_kernels.py compares them)."""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.charge import (
    I_RATE,
    I_REQ,
    I_RES_UNITS,
    I_RG,
    I_S_BILLED,
    I_S_USED,
    I_USED,
    O_CHARGED,
    O_S_BILLED,
    O_S_CHARGED,
    O_S_REM,
    O_S_USED,
)
from tollgate.engine.charging.usage_wire import (
    C_BUCKET,
    C_MICROS,
    C_ROWS,
    C_UNITS,
    REC_ACCOUNT,
    REC_CHARGES_HI,
    REC_CHARGES_LO,
    REC_END,
    REC_FEE,
    REC_INCREMENT,
    REC_KIND,
    REC_MONEY,
    REC_NUMBER,
    REC_ORIGIN,
    REC_OVERAGE,
    REC_OVERAGE_UNITS,
    REC_PLAN,
    REC_PLAN_VERSION,
    REC_PRICE,
    REC_RATING_GROUP,
    REC_ROWS,
    REC_SERVICE_ID,
    REC_SESSION,
    REC_START,
    REC_SUBSCRIBER,
    REC_UNIT,
    REC_UNITS,
    REC_ZONE,
)

HEAD = np.array([REC_ACCOUNT, REC_SUBSCRIBER, REC_SESSION, REC_ZONE, REC_PLAN, REC_ORIGIN,
                 REC_NUMBER, REC_START, REC_END, REC_PLAN_VERSION], np.int64)
"""The `heads` columns, then the request's type: what every record of a request shares (its
strings' indexes, -1 or an empty string not written; its number, the span of usage it
reports, its plan's version)."""
HEAD_STRINGS = 6  # HEAD's first columns are strings, the others numbers
HEAD_KIND = len(HEAD)
HEAD_COLUMNS = HEAD_KIND + 1
T_UNIT, T_PRICE, T_INCREMENT, T_FEE = range(4)
"""The `terms` rows (plans.RateTable.record_terms), a column per rate."""
USAGE, EVENT = 1, 4  # usage_pb2.USAGE, RequestType.EVENT


@njit(cache=True, nogil=True)
def record_items(items: np.ndarray, outputs: np.ndarray, shown: np.ndarray,
                 charges: np.ndarray, n_buckets: int) -> tuple:
    """(the items with a record, in order; their requests, each once, in order; the buckets
    the charges name, ascending). An item has a record when the kernel took a report of
    usage: its session's used units moved (also when earlier billed units cover them, with
    no charge of its own); a release the request did not mention (shown 0) has none. Items
    come grouped by request (items[:, I_REQ] in batch order)."""
    n = items.shape[0]
    at = np.empty(n, np.int64)
    requests = np.empty(n, np.int64)
    k = r = 0
    for i in range(n):
        used = outputs[O_S_USED, i]
        if shown[i] == 0 or used == items[i, I_S_USED]:
            continue
        if (used == 0 and outputs[O_S_BILLED, i] == 0 and outputs[O_S_REM, i] == 0
                and outputs[O_S_CHARGED, i] == 0):
            continue  # the kernel left the session's state as it was
        at[k] = i
        k += 1
        q = items[i, I_REQ]
        if r == 0 or requests[r - 1] != q:
            requests[r] = q
            r += 1
    named = np.zeros(n_buckets, np.bool_)
    for c in range(charges.shape[1]):
        if charges[1, c] >= 0:
            named[charges[1, c]] = True
    return at[:k], requests[:r], np.flatnonzero(named)


@njit(cache=True, nogil=True)
def record_table(items: np.ndarray, outputs: np.ndarray, at: np.ndarray, heads: np.ndarray,
                 terms: np.ndarray, service: np.ndarray, charges: np.ndarray,
                 bucket_name: np.ndarray) -> tuple:
    """The records of items `at` (record_items) as REC_* rows, and the charges as C_* rows.
    `heads`: a row per request of `at`, in order (HEAD, then its type); `service`: per
    item; `charges`: rows item (ascending), source (a bucket's position, -1 money), units,
    micros; `bucket_name`: a bucket position's string index."""
    n, m = at.size, charges.shape[1]
    rec = np.empty((REC_ROWS, n), np.int64)
    h, last, c = -1, -1, 0
    for k in range(n):
        i = at[k]
        if items[i, I_REQ] != last:
            h += 1
            last = items[i, I_REQ]
        for col in range(HEAD_KIND):
            rec[HEAD[col], k] = heads[h, col]
        rate = items[i, I_RATE]
        used, money = items[i, I_USED], outputs[O_CHARGED, i]
        overage = 0 if heads[h, HEAD_KIND] == EVENT else max(0, used - items[i, I_RES_UNITS])
        # The session's first billed units of the rating group pay its connect fee.
        first = items[i, I_S_BILLED] == 0 and outputs[O_S_BILLED, i] > 0
        rec[REC_KIND, k] = USAGE
        rec[REC_RATING_GROUP, k] = items[i, I_RG]
        rec[REC_SERVICE_ID, k] = service[i]
        rec[REC_UNIT, k] = terms[T_UNIT, rate]
        rec[REC_UNITS, k] = used
        rec[REC_PRICE, k] = terms[T_PRICE, rate]
        rec[REC_INCREMENT, k] = terms[T_INCREMENT, rate]
        rec[REC_MONEY, k] = money
        rec[REC_OVERAGE, k] = 1 if overage > 0 else 0
        rec[REC_OVERAGE_UNITS, k] = overage
        rec[REC_FEE, k] = min(terms[T_FEE, rate], money) if first and terms[T_FEE, rate] else 0
        while c < m and charges[0, c] < i:
            c += 1
        rec[REC_CHARGES_LO, k] = c
        while c < m and charges[0, c] == i:
            c += 1
        rec[REC_CHARGES_HI, k] = c
    out = np.empty((C_ROWS, m), np.int64)
    for c in range(m):
        s = charges[1, c]
        out[C_BUCKET, c] = bucket_name[s] if s >= 0 else -1
        out[C_UNITS, c] = charges[2, c]
        out[C_MICROS, c] = charges[3, c]
    return rec, out


def warm_up() -> None:
    """Loads (or compiles) both kernels for the arrays the engine passes (all C-ordered)."""
    empty = np.zeros((0, 0), np.int64)
    none = np.zeros(0, np.int64)
    at, _, _ = record_items(empty, empty, none, np.zeros((4, 0), np.int64), 0)
    record_table(empty, empty, at, np.zeros((0, HEAD_COLUMNS), np.int64),
                 np.zeros((4, 0), np.int64), none, np.zeros((4, 0), np.int64), none)
