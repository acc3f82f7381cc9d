"""The Numba re-rating kernel equals its plain-Python reference on random record sets."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.kernel_inputs import rate_arrays
from tests.unit.test_charge_kernel import MONDAY_1730, rates
from tollgate.engine.charging.kernels.rerate import UNRATED, rerate_kernel
from tollgate.engine.charging.kernels.rerate_reference import RerateItem, rerate_reference

HOUR = 3_600_000


def i64(xs) -> np.ndarray:
    return np.array(list(xs), dtype=np.int64)


@st.composite
def record_sets(draw):
    rate_list = draw(st.lists(rates(), min_size=1, max_size=4))
    n_slots = draw(st.integers(1, 3))
    items = []
    for _ in range(draw(st.integers(0, 30))):
        end = MONDAY_1730 + draw(st.integers(-3 * HOUR, 3 * HOUR))
        start = end - draw(st.sampled_from([0, 1000, 60_000, HOUR, 2 * HOUR]))
        items.append(RerateItem(
            units=draw(st.integers(0, 200_000)),
            rate=draw(st.integers(-1, len(rate_list) - 1)), start=start, end=end,
            slot=draw(st.integers(0, n_slots - 1)), priced=draw(st.integers(0, 4)) > 0))
    slot_start = [draw(st.sampled_from([0, 0, 1000, 50_000])) for _ in range(n_slots)]
    return rate_list, items, slot_start


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_sets())
def test_rerate_kernel_matches_reference(case):
    rate_list, items, slot_start = case
    want, want_pos = rerate_reference(items, rate_list, slot_start)
    got, got_pos = rerate_kernel(
        i64(it.units for it in items), i64(it.rate for it in items),
        i64(it.start for it in items), i64(it.end for it in items),
        i64(it.slot for it in items), i64(int(it.priced) for it in items), i64(slot_start),
        rate_arrays(rate_list))
    assert got.tolist() == want
    assert got_pos.tolist() == want_pos


def test_flat_rate_reprices_the_billed_units_at_the_new_price():
    # Records hold billed units (the session's minimum and steps were met when billed): the
    # new version prices them per its price units, rounded up, not rounded to increments again.
    from tollgate.engine.charging.kernels.reference import RefRate
    old, new = RefRate(1000, 1000, 0, 1, 1), RefRate(1500, 1000, 0, 1, 1)
    items = [RerateItem(2500, 0, 0, 0, 0), RerateItem(1, 1, 0, 0, 0), RerateItem(5, -1, 0, 0, 0)]
    prices, _ = rerate_kernel(i64([2500, 1, 5]), i64([0, 1, -1]), i64([0, 0, 0]), i64([0, 0, 0]),
                              i64([0, 0, 0]), i64([1, 1, 1]), i64([0]), rate_arrays([old, new]))
    assert prices.tolist() == [2500, 2, UNRATED]
    assert rerate_reference(items, [old, new], [0])[0] == [2500, 2, UNRATED]
