"""bench.engine_cpu runs end to end (a small population, a few batches)."""

from __future__ import annotations

import asyncio

from tollgate.bench.engine_cpu import measure


def test_engine_cpu_reports_cpu_per_request() -> None:
    out = asyncio.run(measure(subscribers=300, batch=50, requests=200))

    assert out["requests"] == 200
    assert out["engine_us"] > 0 and out["redis_us"] > 0
