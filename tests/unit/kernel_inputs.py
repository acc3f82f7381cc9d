"""Reference-style batches -> the kernel's argument tuples (shared by tests and benchmarks)."""

from __future__ import annotations

import numpy as np

from engine.kernels.reference import RefItem, RefRate, RefState


def i64(xs) -> np.ndarray:
    return np.array(list(xs), dtype=np.int64)


def rate_arrays(rates: list[RefRate]) -> tuple[np.ndarray, ...]:
    tiers = [t for r in rates for t in r.tiers]
    wins = [w for r in rates for w in r.windows]
    return (
        i64(r.price for r in rates), i64(r.increment for r in rates),
        i64(r.first for r in rates), i64(r.quota for r in rates), i64(r.unit for r in rates),
        i64(r.validity for r in rates),
        i64(int(r.zero_rated) | 2 * int(r.not_allowed) for r in rates),
        i64(np.cumsum([0] + [len(r.tiers) for r in rates])), i64(t[0] for t in tiers),
        i64(t[1] for t in tiers),
        i64(np.cumsum([0] + [len(r.windows) for r in rates])), i64(w.days for w in wins),
        i64(w.start for w in wins), i64(w.end for w in wins), i64(w.price for w in wins))


def kernel_args(items: list[RefItem], rates: list[RefRate], state: RefState) -> tuple:
    """The kernel's arguments for a reference batch (buckets grouped by account, in order)."""
    accts, buckets, members = state.accounts, state.buckets, state.members
    bucket_start = np.searchsorted(i64(b.account for b in buckets), np.arange(len(accts) + 1))
    item_cols = (
        i64(it.account for it in items), i64(it.member for it in items),
        i64(it.rating_group for it in items), i64(it.rate for it in items),
        i64(it.time if it.start < 0 else it.start for it in items),
        i64(it.time for it in items), i64(it.used for it in items),
        i64(it.want for it in items), i64(it.requested for it in items),
        i64(int(it.grace) | 2 * int(it.res_member) for it in items),
        i64(it.res_src for it in items), i64(it.res_units for it in items),
        i64(it.res_amount for it in items), i64(it.cycle_slot for it in items),
        i64(it.offset for it in items))
    account_cols = (
        i64(a.money for a in accts), i64(a.floor for a in accts),
        i64(a.reserved for a in accts), i64(a.cap for a in accts),
        i64(a.spent for a in accts), bucket_start.astype(np.int64),
        i64(a.low_mark for a in accts), i64(a.cap_level for a in accts),
        i64(a.low_flag for a in accts), i64(a.exhausted_flag for a in accts))
    bucket_cols = (
        i64(b.remaining for b in buckets), i64(b.unit for b in buckets),
        i64(b.expiry for b in buckets),
        i64(np.cumsum([0] + [len(b.rating_groups) for b in buckets])),
        i64(g for b in buckets for g in b.rating_groups), i64(b.initial for b in buckets),
        i64(b.level for b in buckets))
    member_cols = (
        i64(m.cap_money for m in members), i64(m.spent for m in members),
        i64(m.reserved for m in members), i64(u for m in members for u in m.cap_units),
        i64(u for m in members for u in m.used_units),
        i64(u for m in members for u in m.reserved_units))
    return (item_cols, rate_arrays(rates), account_cols, bucket_cols, member_cols,
            i64(state.cycle_units))
