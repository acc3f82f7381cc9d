"""bench.engine_cpu runs end to end (a small population, a few batches)."""

from __future__ import annotations

import asyncio
import inspect

from tollgate.bench.engine_cpu import measure
from tollgate.bench.stages import STAGES


def test_engine_cpu_reports_cpu_per_request() -> None:
    out = asyncio.run(measure(subscribers=300, batch=50, requests=200))

    assert out["requests"] == 200
    assert out["engine_us"] > 0 and out["redis_us"] > 0


def test_engine_cpu_times_each_stage_and_puts_the_functions_back() -> None:
    before = {(owner, name): inspect.getattr_static(owner, name) for owner, name, _ in STAGES}

    out = asyncio.run(measure(subscribers=300, batch=50, requests=200, stages=True))

    stages = out["stages_us"]
    assert list(stages) == [label for _, _, label in STAGES]
    for label in ("submit: decode and queue a message", "assembly (with the item kernel)",
                  "kernel run (its arrays in and out)", "outcome", "apply (with its round trip)"):
        assert stages[label] > 0, label
    assert stages["outcome"] >= stages["  of it, answers"]
    assert all(inspect.getattr_static(owner, name) is f for (owner, name), f in before.items())
