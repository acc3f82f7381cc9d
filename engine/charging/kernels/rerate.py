"""The re-rating kernel: re-prices stored usage (its money-charged units) under a plan version.

It reuses the charging kernel's pricing functions, so a re-rate prices the way a live charge
would have under that version: the record's money-billed units (the session's first
increment and steps were met when it was billed) at the version's prices, time windows split
in proportion to time, tiers by the position in the billing cycle, rounded by its method.

Items are in record order. Each belongs to a cycle slot (account, rating group, billing cycle);
the slot's position starts at `slot_start` and advances by the billed units of every item
that is not zero-rated, as the charging kernel advances `cu:<rg>`. Items with `priced == 0`
only advance the position (records of the same cycle before the re-rated period).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.charge import (
    R_FLAGS,
    RATE_NOT_ALLOWED,
    RATE_ZERO_RATED,
    price_span,
)

OVERFLOW = -1
"""New price beyond int64 arithmetic."""
UNRATED = -2
"""No rate for the record's rating group and zone in the plan version (or barred there)."""
SKIPPED = -3
"""A position-only item (not re-priced)."""


@njit(cache=True, nogil=True)
def rerate_kernel(units: np.ndarray, rate_row: np.ndarray, start: np.ndarray, end: np.ndarray,
                  slot: np.ndarray, priced: np.ndarray, slot_start: np.ndarray,
                  rates: tuple) -> tuple:
    """New money for each item's units over local times [start, end]; OVERFLOW, UNRATED or
    SKIPPED where there is none. Returns (prices, the slots' final positions)."""
    rt, tiers, wins, _ = rates
    rate_flags = rt[R_FLAGS]
    n = units.shape[0]
    out = np.full(n, SKIPPED, dtype=np.int64)
    cu = slot_start.copy()
    for i in range(n):
        r = rate_row[i]
        if r < 0 or rate_flags[r] & RATE_NOT_ALLOWED:
            if priced[i]:
                out[i] = UNRATED
            continue
        s = slot[i]
        if priced[i]:
            p = price_span(units[i], r, start[i], end[i], cu[s], rt, tiers, wins)
            out[i] = p if p >= 0 else OVERFLOW
        if not rate_flags[r] & RATE_ZERO_RATED:
            cu[s] += units[i]
    return out, cu
