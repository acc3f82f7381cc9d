"""Kernel throughput against its plain-Python reference (pytest-benchmark; ./dev.sh bench)."""

from __future__ import annotations

import random

import pytest

from tests.unit.kernel_inputs import kernel_args
from tollgate.engine.charging.kernels.charge import charge_kernel
from tollgate.engine.charging.kernels.reference import (
    RefAccount,
    RefBucket,
    RefItem,
    RefRate,
    RefState,
    charge_reference,
)

RATES = [RefRate(price=1000, increment=1000, first=0, quota=10_000_000, unit=1, validity=3600),
         RefRate(price=100_000, increment=60, first=60, quota=300, unit=2, validity=3600)]


def make_batch(n: int, accounts: int = 1000, seed: int = 1):
    rnd = random.Random(seed)
    state = RefState(
        [RefAccount(money=rnd.randint(0, 50_000_000), floor=0) for _ in range(accounts)],
        [RefBucket(a, 100_000_000, 1, 0, [10], initial=100_000_000) for a in range(accounts)],
        [], [0] * accounts)
    items = [RefItem(account=a, rating_group=10, rate=0, time=0, used=rnd.randint(0, 5_000_000),
                     want=1, requested=0, res_src=-1, res_amount=0, cycle_slot=a)
             for a in (rnd.randrange(accounts) for _ in range(n))]
    return items, RATES, state


@pytest.mark.parametrize("size", [1, 64, 1024, 65536])
def test_kernel(benchmark, size):
    args = kernel_args(*make_batch(size))
    charge_kernel(*args)  # compile outside the timing
    benchmark.extra_info["items"] = size
    result = benchmark(charge_kernel, *args)
    assert len(result[0][0]) == size


@pytest.mark.parametrize("size", [1, 64, 1024])
def test_reference(benchmark, size):
    batch = make_batch(size)
    benchmark.extra_info["items"] = size
    outs = benchmark(charge_reference, *batch)[0]
    assert len(outs) == size
