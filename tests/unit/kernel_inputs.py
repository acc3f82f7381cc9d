"""Reference-style batches -> the kernel's arguments (shared by tests and benchmarks)."""

from __future__ import annotations

import numpy as np

from tollgate.engine.charging.kernels.charge import flat_and_small, grid_reciprocal
from tollgate.engine.charging.kernels.reference import RefItem, RefRate, RefState


def i64(xs) -> np.ndarray:
    return np.array(list(xs), dtype=np.int64)


def rows(*columns) -> np.ndarray:
    """A 2-D array with a row per iterable."""
    return np.array([list(c) for c in columns], dtype=np.int64)


def columns(*values) -> np.ndarray:
    """A 2-D array with a column per iterable (the kernel's items: a row per item)."""
    return rows(*values).T.copy()


def spans(counts: list[int]) -> tuple[list[int], list[int]]:
    """[lo, hi) of consecutive runs of these lengths."""
    ends = np.cumsum(counts, dtype=np.int64).tolist()
    return [0, *ends][:-1], ends


def rate_arrays(rates: list[RefRate]) -> tuple[np.ndarray, ...]:
    tiers = [t for r in rates for t in r.tiers]
    wins = [w for r in rates for w in r.windows]
    steps = [s for r in rates for s in r.steps]
    return (
        rows((r.price for r in rates), (r.increment for r in rates), (r.first for r in rates),
             (r.quota for r in rates), (r.unit for r in rates), (r.validity for r in rates),
             (int(r.zero_rated) | 2 * int(r.not_allowed) | 4 * int(r.session_free)
              | 8 * int(flat_and_small(r.price, r.increment, r.first, r.fee,
                                       len(r.tiers) + len(r.windows) + len(r.steps)))
              for r in rates),
             *spans([len(r.tiers) for r in rates]), *spans([len(r.windows) for r in rates]),
             (r.price_units for r in rates), (r.rounding for r in rates),
             (r.fee for r in rates), *spans([len(r.steps) for r in rates]),
             (r.session_max for r in rates),
             *([grid_reciprocal(r.increment, len(r.steps))[k] for r in rates] for k in (0, 1))),
        rows((t[0] for t in tiers), (t[1] for t in tiers)),
        rows((w.days for w in wins), (w.start for w in wins), (w.end for w in wins),
             (w.price for w in wins), (w.date for w in wins)),
        rows((s[0] for s in steps), (s[1] for s in steps)))


def kernel_args(items: list[RefItem], rates: list[RefRate], state: RefState) -> tuple:
    """The kernel's arguments for a reference batch (buckets grouped by account, in order)."""
    accts, buckets, members = state.accounts, state.buckets, state.members
    bucket_start = np.searchsorted(i64(b.account for b in buckets), np.arange(len(accts) + 1))
    item_rows = columns(
        (it.account for it in items), (it.member for it in items),
        (it.rating_group for it in items), (it.rate for it in items),
        (it.time if it.start < 0 else it.start for it in items),
        (it.time for it in items), (it.used for it in items),
        (it.want for it in items), (it.requested for it in items),
        (int(it.grace) | 2 * int(it.res_member) for it in items),
        (it.res_src for it in items), (it.res_units for it in items),
        (it.res_amount for it in items), (it.cycle_slot for it in items),
        (it.now for it in items), (it.s_used for it in items), (it.s_billed for it in items),
        (it.s_rem for it in items), (it.s_charged for it in items),
        (it.s_cost for it in items),
        (it.req if it.req >= 0 else -1 - n for n, it in enumerate(items)))
    account_rows = rows(
        (a.money for a in accts), (a.reserved for a in accts), (a.spent for a in accts),
        (a.cap_level for a in accts), (a.low_flag for a in accts),
        (a.exhausted_flag for a in accts), (a.floor for a in accts), (a.cap for a in accts),
        (a.low_mark for a in accts), bucket_start[:-1], bucket_start[1:])
    bucket_rows = rows(
        (b.remaining for b in buckets), (b.unit for b in buckets), (b.expiry for b in buckets),
        (b.initial for b in buckets), (b.level for b in buckets),
        *spans([len(b.rating_groups) for b in buckets]))
    member_rows = rows((m.cap_money for m in members), (m.spent for m in members),
                       (m.reserved for m in members))
    unit_rows = rows((u for m in members for u in m.cap_units),
                     (u for m in members for u in m.used_units),
                     (u for m in members for u in m.reserved_units))
    return (item_rows, rate_arrays(rates), account_rows, bucket_rows,
            i64(g for b in buckets for g in b.rating_groups), member_rows, unit_rows,
            i64(state.cycle_units))
