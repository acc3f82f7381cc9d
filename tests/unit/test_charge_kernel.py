"""The Numba charging kernel equals its plain-Python reference on random batches."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kernels.charge import charge_kernel
from engine.kernels.reference import RefBucket, RefItem, RefRate, charge_reference

MONEY = -1


@st.composite
def batches(draw):
    rates = draw(st.lists(st.builds(
        RefRate,
        price=st.sampled_from([0, 1, 7, 1000, 250_000, 2**40]),
        increment=st.sampled_from([1, 10, 1024, 60]),
        first=st.sampled_from([0, 1, 30, 5000]),
        quota=st.integers(1, 50_000),
        unit=st.integers(1, 3),
    ), min_size=1, max_size=4))
    n_accounts = draw(st.integers(1, 4))
    money = draw(st.lists(st.integers(-10**7, 10**9), min_size=n_accounts, max_size=n_accounts))
    floors = draw(st.lists(st.sampled_from([0, -10**6, -10**8]), min_size=n_accounts,
                           max_size=n_accounts))
    buckets = []
    for a in range(n_accounts):
        for _ in range(draw(st.integers(0, 3))):
            buckets.append(RefBucket(
                account=a, remaining=draw(st.integers(0, 100_000)),
                unit=draw(st.integers(1, 3)), expiry=draw(st.sampled_from([0, 500, 5000])),
                rating_groups=draw(st.lists(st.sampled_from([10, 20, 30]), min_size=1,
                                            max_size=3, unique=True))))
    items = []
    for _ in range(draw(st.integers(0, 40))):
        a = draw(st.integers(0, n_accounts - 1))
        mine = [k for k, b in enumerate(buckets) if b.account == a]
        src = draw(st.sampled_from([MONEY, *mine]))
        items.append(RefItem(
            account=a, rating_group=draw(st.sampled_from([10, 20, 30])),
            rate=draw(st.integers(-1, len(rates) - 1)), time=draw(st.sampled_from([0, 1000, 9000])),
            used=draw(st.one_of(st.integers(0, 200_000), st.just(2**62))),
            want=draw(st.integers(0, 2)), requested=draw(st.integers(0, 60_000)),
            res_src=src, res_amount=draw(st.sampled_from([0, 0, 500, 20_000]))))
    return items, rates, money, floors, buckets


def kernel_args(items, rates, money, floors, buckets):
    """The kernel's arrays for a reference-style batch."""
    i64 = lambda xs: np.array(xs, dtype=np.int64)  # noqa: E731
    n_accounts = len(money)
    bucket_start = np.searchsorted(i64([b.account for b in buckets]), np.arange(n_accounts + 1))
    rg_start = np.cumsum([0] + [len(b.rating_groups) for b in buckets])
    return (
        i64([it.account for it in items]), i64([it.rating_group for it in items]),
        i64([it.rate for it in items]), i64([it.time for it in items]),
        i64([it.used for it in items]), i64([it.want for it in items]),
        i64([it.requested for it in items]), i64([it.res_src for it in items]),
        i64([it.res_amount for it in items]),
        i64([r.price for r in rates]), i64([r.increment for r in rates]),
        i64([r.first for r in rates]), i64([r.quota for r in rates]), i64([r.unit for r in rates]),
        i64(money), i64(floors), bucket_start.astype(np.int64),
        i64([b.remaining for b in buckets]), i64([b.unit for b in buckets]),
        i64([b.expiry for b in buckets]), rg_start.astype(np.int64),
        i64([g for b in buckets for g in b.rating_groups]),
    )


def run_kernel(*batch):
    return charge_kernel(*kernel_args(*batch))


@settings(max_examples=200, deadline=None)
@given(batches())
def test_kernel_matches_reference(batch):
    (result, granted, res_src, res_amount, charged, money_after, money_reserved, remaining,
     bucket_reserved, chg_item, chg_src, chg_units, chg_money) = run_kernel(*batch)
    outs, ref_money, ref_reserved, ref_buckets = charge_reference(*batch)

    assert list(result) == [o.result for o in outs]
    assert list(granted) == [o.granted for o in outs]
    assert list(res_src) == [o.res_src for o in outs]
    assert list(res_amount) == [o.res_amount for o in outs]
    assert list(charged) == [o.charged for o in outs]
    assert list(money_after) == ref_money
    assert list(money_reserved) == ref_reserved
    assert list(remaining) == [b.remaining for b in ref_buckets]
    assert list(bucket_reserved) == [b.reserved for b in ref_buckets]
    charges = [(int(i), int(s), int(u), int(m))
               for i, s, u, m in zip(chg_item, chg_src, chg_units, chg_money, strict=True)]
    assert charges == [(i, *c) for i, o in enumerate(outs) for c in o.charges]


def test_grant_never_takes_money_below_the_floor():
    items = [RefItem(0, 10, 0, 0, used=0, want=1, requested=0, res_src=MONEY, res_amount=0)]
    rates = [RefRate(price=1000, increment=1000, first=0, quota=1_000_000, unit=1)]
    result, granted, _, res_amount, *_ = run_kernel(items, rates, [5_500], [0], [])
    assert result[0] == 2001
    assert granted[0] == 5000  # five whole increments affordable
    assert res_amount[0] == 5000


def test_usage_is_rounded_up_to_the_increment_with_a_first_increment():
    items = [RefItem(0, 100, 0, 0, used=61, want=0, requested=0, res_src=MONEY, res_amount=0),
             RefItem(0, 100, 0, 0, used=5, want=0, requested=0, res_src=MONEY, res_amount=0)]
    rates = [RefRate(price=100, increment=60, first=60, quota=600, unit=2)]
    _, _, _, _, charged, money, *_ = run_kernel(items, rates, [10_000], [0], [])
    assert list(charged) == [200, 100]  # 61 s -> 2 minutes; 5 s -> the 60 s minimum
    assert money[0] == 10_000 - 300
