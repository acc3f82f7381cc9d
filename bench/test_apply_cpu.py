"""bench.apply_cpu: the apply step's Redis CPU, and its cut-down scripts each really run."""

from __future__ import annotations

import asyncio

from tollgate.bench.apply_cpu import measure


def test_each_cut_down_script_runs_in_place_of_the_apply(redis_url: str) -> None:
    out = asyncio.run(measure(redis_url, batch=100, subscribers=300, seconds=0.3,
                              with_variants=True))

    assert out["requests"] > 0 and out["redis_us_per_request"] > 0
    variants = out["script_variants"]
    assert list(variants) == ["empty", "pass1", "full"]
    calls = {name: v["calls_per_request"] for name, v in variants.items()}
    # The empty script calls nothing; the first pass reads versions and writes nothing; the
    # whole script writes each account and session.
    assert calls["empty"].get("hget", 0) == 0 and calls["empty"].get("set", 0) == 0
    assert calls["pass1"]["hget"] > 0 and not {"hset", "set"} & calls["pass1"].keys()
    assert calls["full"]["hset"] > 0 and calls["full"]["set"] > 0
    assert all(v["redis_us"] > 0 for v in variants.values())
