"""The increment's reciprocal (kernels.charge.grid_reciprocal) divides exactly below HALF."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tollgate.engine.charging.kernels.charge import HALF, grid_reciprocal

INCREMENTS = st.one_of(st.integers(1, 4096), st.integers(1, HALF - 1),
                       st.sampled_from([1, 2, 3, 60, 1000, 1024, 2**29 + 1, HALF - 1]))


@given(INCREMENTS, st.integers(0, HALF - 1))
def test_quotient_equals_division(increment, x):
    mul, shift = grid_reciprocal(increment, 0)
    assert (x * mul) >> shift == x // increment
    assert x * mul < 2**62


@given(INCREMENTS, st.integers(0, 2**20))
def test_exact_around_multiples_and_the_top(increment, k):
    mul, shift = grid_reciprocal(increment, 0)
    for x in (k * increment - 1, k * increment, k * increment + increment - 1, HALF - 1):
        if 0 <= x < HALF:
            assert (x * mul) >> shift == x // increment, x


def test_none_for_steps_or_an_increment_out_of_range():
    assert grid_reciprocal(60, 1) == (0, 0)
    assert grid_reciprocal(HALF, 0) == (0, 0)
    assert grid_reciprocal(0, 0) == (0, 0)
