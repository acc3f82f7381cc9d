"""`tollgate bench ab`'s arithmetic (pairs compared one by one, so a phase of the machine
that slows both sides of a pair leaves their ratio alone) and which code each side runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tollgate.bench.ab import (
    ROOT,
    compare,
    imports_its_own_code,
    load_command,
    load_figures,
    meets_population,
    table,
)


def test_the_ratio_is_the_median_of_the_pairs_not_of_the_medians() -> None:
    # The machine slowed down over the run (each pair slower than the one before), and the
    # new side costs 80 % of the old one in every pair.
    old = [20.0, 30.0, 40.0, 50.0, 60.0]
    new = [16.0, 24.0, 32.0, 40.0, 48.0]
    c = compare(old, new)
    assert (c.old_median, c.new_median) == (40.0, 32.0)
    assert c.ratio == pytest.approx(0.8) and c.low == pytest.approx(0.8)
    assert c.high == pytest.approx(0.8)


def test_quartiles_show_how_far_the_pairs_disagree() -> None:
    c = compare([10.0, 10.0, 10.0, 10.0, 10.0], [7.0, 8.0, 9.0, 10.0, 11.0])
    assert c.ratio == pytest.approx(0.9)
    assert (c.low, c.high) == (pytest.approx(0.8), pytest.approx(1.0))


def test_one_pair_is_its_own_ratio() -> None:
    c = compare([25.0], [20.0])
    assert (c.ratio, c.low, c.high) == (0.8, 0.8, 0.8)


def test_pairs_need_both_sides() -> None:
    with pytest.raises(ValueError, match="as many old as new"):
        compare([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="as many old as new"):
        compare([], [])


def test_the_table_has_a_row_per_figure() -> None:
    text = table("main", {"engine_us": ([20.0, 30.0], [15.0, 24.0]),
                          "redis_us": ([10.0, 10.0], [10.0, 11.0])})
    lines = text.splitlines()
    assert lines[0].startswith("| figure | main (median) |")
    assert lines[2] == "| engine_us | 25.0 | 19.5 | 0.775 (0.762-0.788) |"
    assert lines[3] == "| redis_us | 10.0 | 10.5 | 1.050 (1.025-1.075) |"


def test_load_figures_compare_the_engine_runs_per_request() -> None:
    runs = [{"target": "bare", "name": "bare batch of 1000 closed x4", "requests": 800_000,
             "seconds": 10.0, "throughput": 80_000.0, "cpu": {"server": 30.0},
             "latency_ms": {"p99": 150.0}},
            {"target": "engine", "name": "engine batch of 1000 closed x4",
             "requests": 200_000, "seconds": 10.0, "throughput": 20_000.0,
             "cpu": {"server": 70.0, "redis": 50.0, "client": 20.0},
             "latency_ms": {"p50": 200.0, "p99": 400.0}},
            {"target": "engine", "name": "engine unary closed x64", "requests": 0,
             "seconds": 10.0, "throughput": 0.0, "cpu": {}, "latency_ms": {}}]
    figures = load_figures(runs)
    # 70 % of a core for 10 s over 200 000 requests: 35 µs each; Redis's 50 %: 25 µs.
    assert figures == {"engine batch of 1000 closed x4: req/s": 20_000.0,
                       "engine batch of 1000 closed x4: server µs": pytest.approx(35.0),
                       "engine batch of 1000 closed x4: redis µs": pytest.approx(25.0),
                       "engine batch of 1000 closed x4: p99 ms": 400.0}


def test_a_revision_without_its_own_package_is_not_measured(tmp_path: Path) -> None:
    # A checkout from before the tollgate namespace: python -m tollgate there would run the
    # installed package (this checkout's), so both sides of a pair would be the same code.
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text("")
    assert not imports_its_own_code(tmp_path)
    assert imports_its_own_code(ROOT)


def test_a_revision_before_the_namespace_runs_its_own_cli_end_to_end(tmp_path: Path) -> None:
    # Its bench load is its own engine.cli's, its generated modules under proto/.
    assert load_command(tmp_path, namespaced=False) == (
        ["engine.cli", "bench", "load"], f"{tmp_path}{os.pathsep}{tmp_path / 'proto'}")
    assert load_command(ROOT, namespaced=True) == (["tollgate", "bench", "load"], str(ROOT))


def test_only_a_revision_that_meets_the_population_is_compared_with_it(tmp_path: Path) -> None:
    # One that does not: this checkout then runs with --no-meet (both sides read accounts
    # for the first time).
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "cli.py").write_text('p.add_argument("--no-ceilings")\n')
    assert not meets_population(tmp_path)
    assert meets_population(ROOT)
