"""`tollgate bench ab REV`: the engine's CPU per request in process (bench/engine_cpu.py), this
checkout against another git revision, alternating in one run, as ratios per pair.

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
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    lines = [f"| µs per request | {rev} (median) | this checkout (median) | "
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


def _measure(root: Path, batch: int, subscribers: int, requests: int) -> dict[str, float]:
    """One engine_cpu run of the code at `root`: its JSON figures."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "tollgate.bench.engine_cpu", "--batch", str(batch),
         "--subscribers", str(subscribers), "--requests", str(requests)],
        cwd=root, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"engine_cpu at {root} failed: {done.stderr.strip()[-2000:]}")
    out: dict[str, float] = json.loads(lines[-1])
    return out


def run(rev: str, pairs: int, batch: int, subscribers: int, requests: int) -> str:
    """Alternates `pairs` times the revision `rev` (first) and this checkout; returns the
    table. Progress goes to stderr."""
    if pairs < 1 or batch < 1 or requests < 1 or subscribers < 1:
        raise ValueError("pairs, batch, requests and subscribers must be at least 1")
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
            print(f"{rev} ({commit[:12]}) against this checkout: compiling or loading both "
                  "sides' kernels", file=sys.stderr, flush=True)
            for root in (other, ROOT):  # a first start compiles; not measured
                _measure(root, 1, 10, 1)
            figures: dict[str, tuple[list[float], list[float]]] = {f: ([], []) for f in FIGURES}
            for k in range(pairs):
                old = _measure(other, batch, subscribers, requests)
                new = _measure(ROOT, batch, subscribers, requests)
                for f in FIGURES:
                    figures[f][0].append(old[f])
                    figures[f][1].append(new[f])
                print(f"pair {k + 1}/{pairs}: engine {old['engine_us']:.1f} -> "
                      f"{new['engine_us']:.1f} µs, redis {old['redis_us']:.1f} -> "
                      f"{new['redis_us']:.1f} µs per request", file=sys.stderr, flush=True)
        finally:
            _git("worktree", "remove", "--force", str(other))
    return (f"`engine_cpu --batch {batch} --subscribers {subscribers} --requests {requests}`, "
            f"{pairs} pairs\n\n" + table(rev, figures))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rev", help="the git revision to compare with (e.g. main, HEAD~3, a tag)")
    p.add_argument("--pairs", type=int, default=8, help="runs of each side, alternating")
    p.add_argument("--batch", type=int, default=1000, help="requests per message")
    p.add_argument("--subscribers", type=int, default=2000,
                   help="population (default 2000: the accounts stay cached, as in a "
                        "server that has run a while)")
    p.add_argument("--requests", type=int, default=10_000, help="requests per run")
