"""`tollgate bench ab REV`: the engine's CPU per request in process (bench/engine_cpu.py), this
checkout against another git revision, alternating in one run, as ratios per pair; with
`--load=ARGS`, `tollgate bench load ARGS` end to end instead (each engine run's throughput,
server and Redis CPU per request and p99).

A small machine drifts between fast and slow phases that move every figure by a fifth or
more within minutes, so one run of each side compares nothing. Here the two sides run one
after the other, `pairs` times: each pair shares the phase, and the median of the pairs'
ratios (new / old) with its quartiles is the result. The other revision runs from a
temporary git worktree (its own generated protobuf modules, its own kernel cache: its first
run compiles the kernels, about a minute), removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
"""The checkout this module runs from (its `tollgate/` links to engine/, bench/, ...)."""
FIGURES = ("engine_us", "redis_us")
"""engine_cpu's figures compared: the engine's and Redis's CPU per request."""


@dataclass(frozen=True, slots=True)
class Compared:
    """One figure of both sides over the pairs."""

    old_median: float
    new_median: float
    ratio: float  # the median of the pairs' new / old
    low: float  # the pairs' ratios' first and third quartiles
    high: float


def compare(old: Sequence[float], new: Sequence[float]) -> Compared:
    """Both sides' medians and the median pair ratio new / old, with its quartiles (pair k:
    old[k] and new[k], measured one after the other)."""
    if not old or len(old) != len(new):
        raise ValueError(f"pairs need as many old as new figures ({len(old)}, {len(new)})")
    ratios = [n / o for o, n in zip(old, new, strict=True)]
    if len(ratios) > 1:
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    else:
        low = high = ratios[0]
    return Compared(statistics.median(old), statistics.median(new),
                    statistics.median(ratios), low, high)


def table(rev: str, figures: dict[str, tuple[list[float], list[float]]]) -> str:
    """The result as Markdown: a row per figure."""
    lines = [f"| figure | {rev} (median) | this checkout (median) | "
             "new / old, median of the pairs (quartiles) |", "|---|---:|---:|---|"]
    for name, (old, new) in figures.items():
        c = compare(old, new)
        lines.append(f"| {name} | {c.old_median:.1f} | {c.new_median:.1f} | "
                     f"{c.ratio:.3f} ({c.low:.3f}-{c.high:.3f}) |")
    return "\n".join(lines)


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _python_at(root: Path, *args: str, path: str = "") -> str:
    """`python -m ARGS` on the code at `root` (its checkout first on the path, or `path`); its
    stdout."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=root,
                          env={**os.environ, "PYTHONPATH": path or str(root)},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} at {root} failed: "
                           f"{done.stderr.strip()[-2000:]}")
    return done.stdout


def imports_its_own_code(root: Path) -> bool:
    """Whether `python -m tollgate...` at `root` runs the code of that checkout. A revision
    older than the `tollgate` namespace (707511b) would import this checkout's installed
    package instead, and a comparison would measure the same code twice."""
    done = subprocess.run(
        [sys.executable, "-c", "import os, tollgate.bench; "
         "print(os.path.realpath(tollgate.bench.__file__))"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
    return done.returncode == 0 and Path(done.stdout.strip()).is_relative_to(root.resolve())


def _measure(root: Path, batch: int, subscribers: int, requests: int) -> dict[str, float]:
    """One engine_cpu run of the code at `root`: its JSON figures (its last line)."""
    out: dict[str, float] = json.loads(_python_at(
        root, "tollgate.bench.engine_cpu", "--batch", str(batch), "--subscribers",
        str(subscribers), "--requests", str(requests)).strip().splitlines()[-1])
    return out


def load_command(root: Path, namespaced: bool) -> tuple[list[str], str]:
    """The `bench load` command of the code at `root` (`python -m` arguments) and its
    PYTHONPATH: `tollgate` for a checkout with the namespace; for one before it (707511b),
    its own `engine.cli`, with its generated modules under proto/."""
    if namespaced:
        return ["tollgate", "bench", "load"], str(root)
    return ["engine.cli", "bench", "load"], f"{root}{os.pathsep}{root / 'proto'}"


def meets_population(root: Path) -> bool:
    """Whether the `bench load` of the code at `root` meets every subscriber before its runs
    (and so knows --no-meet)."""
    cli = root / "bench" / "cli.py"
    return cli.exists() and '"--no-meet"' in cli.read_text()


def _load(root: Path, load_args: list[str], namespaced: bool = True) -> dict[str, float]:
    """One `bench load` of the code at `root`: its load_figures (the bare server's runs, the
    same code on both sides, are left out)."""
    command, path = load_command(root, namespaced)
    with tempfile.TemporaryDirectory(prefix="tollgate-ab-load-") as out:
        _python_at(root, *command, *load_args, "--no-progress", "--out", out, path=path)
        runs = json.loads((Path(out) / "results.json").read_text())["runs"]
    return load_figures(runs)


def load_figures(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The figures compared of a `bench load` results.json's runs: per engine run, its
    throughput, the server's and Redis's CPU per answered request (µs) and its p99 (ms)."""
    figures: dict[str, float] = {}
    for r in runs:
        if r["target"] != "engine" or not r["requests"]:
            continue
        per = 1e6 * r["seconds"] / r["requests"] / 100  # µs per request of 1 % of a core
        figures[f"{r['name']}: req/s"] = r["throughput"]
        figures[f"{r['name']}: server µs"] = r["cpu"].get("server", 0.0) * per
        figures[f"{r['name']}: redis µs"] = r["cpu"].get("redis", 0.0) * per
        figures[f"{r['name']}: p99 ms"] = r["latency_ms"].get("p99", 0.0)
    return figures


def run(rev: str, pairs: int, batch: int, subscribers: int, requests: int,
        load: str = "") -> str:
    """Alternates `pairs` times the revision `rev` (first) and this checkout; returns the
    table. `load`: arguments of `tollgate bench load` to run on each side instead of
    engine_cpu. Progress goes to stderr."""
    if pairs < 1 or batch < 1 or requests < 1 or subscribers < 1:
        raise ValueError("pairs, batch, requests and subscribers must be at least 1")
    load_args = shlex.split(load)
    if not (ROOT / ".git").exists():
        raise RuntimeError(f"{ROOT} is not a git checkout: ab compares two revisions of one")
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="tollgate-ab-") as tmp:
        other = Path(tmp) / "old"
        _git("worktree", "add", "--detach", str(other), commit)
        try:
            generated = subprocess.run([sys.executable, "proto/generate.py"], cwd=other,
                                       capture_output=True, text=True)
            if generated.returncode != 0:
                raise RuntimeError(f"generating {rev}'s protobuf modules: "
                                   f"{generated.stderr.strip()[-2000:]}")
            namespaced = imports_its_own_code(other)
            if not namespaced and not (load_args and (other / "engine" / "cli.py").exists()):
                raise RuntimeError(f"{rev} ({commit[:12]}) has no tollgate package of its own "
                                   "(it predates the tollgate namespace, 707511b): in process "
                                   "its runs would measure this checkout's code; compare it "
                                   "end to end (--load) or with a later revision")
            new_args = load_args
            if load_args and not meets_population(other) and "--no-meet" not in load_args:
                # Like for like: its runs also read accounts for the first time.
                new_args = [*load_args, "--no-meet"]
                print(f"{rev} does not meet the population before its runs: this checkout "
                      "runs with --no-meet", file=sys.stderr, flush=True)
            print(f"{rev} ({commit[:12]}) against this checkout: compiling or loading both "
                  "sides' kernels", file=sys.stderr, flush=True)
            for root in (other, ROOT) if namespaced else (ROOT,):
                _measure(root, 1, 10, 1)  # a first start compiles; not measured
            figures: dict[str, tuple[list[float], list[float]]] = {}
            for k in range(pairs):
                if load_args:
                    old = _load(other, load_args, namespaced)
                    new = _load(ROOT, new_args)
                else:
                    old = _measure(other, batch, subscribers, requests)
                    new = _measure(ROOT, batch, subscribers, requests)
                for f in (old if load_args else FIGURES):
                    if f in new:
                        sides = figures.setdefault(f, ([], []))
                        sides[0].append(old[f])
                        sides[1].append(new[f])
                print(f"pair {k + 1}/{pairs}: " + ", ".join(
                    f"{f} {old[f]:.1f} -> {new[f]:.1f}" for f in figures if f in new),
                    file=sys.stderr, flush=True)
        finally:
            _git("worktree", "remove", "--force", str(other))
    what = (f"`tollgate bench load {load}`" if load_args else
            f"`engine_cpu --batch {batch} --subscribers {subscribers} --requests {requests}`")
    return f"{what}, {pairs} pairs\n\n" + table(rev, figures)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rev", help="the git revision to compare with (e.g. main, HEAD~3, a tag)")
    p.add_argument("--pairs", type=int, default=8, help="runs of each side, alternating")
    p.add_argument("--batch", type=int, default=1000, help="requests per message")
    p.add_argument("--subscribers", type=int, default=2000,
                   help="population (default 2000: the accounts stay cached, as in a "
                        "server that has run a while)")
    p.add_argument("--requests", type=int, default=10_000, help="requests per run")
    p.add_argument("--load", metavar="ARGS", default="",
                   help="end to end instead: run `tollgate bench load ARGS` on each side "
                        "(write it with '=': --load='--api batch --subscribers 20000 "
                        "--seconds 8') and compare each engine run's req/s, server and "
                        "Redis µs per request and p99")
