"""Benchmark results: the table with ratios to the ceilings, JSON, and the latency plot."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import psutil

from tollgate.bench.loadgen import Run, as_json


def machine() -> str:
    freq = psutil.cpu_freq()
    ghz = f" @ {freq.max / 1000:.1f} GHz" if freq and freq.max else ""
    return (f"{platform.machine()}, {psutil.cpu_count()} cores{ghz}, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def aof_rewrites(runs: list[Run]) -> list[str]:
    """A note naming the runs during which Redis rewrote its AOF, with the CPU its rewrites
    took (reaped during the run; not in the table's Redis column): the rewrite forks Redis
    and its child writes the whole dataset again, and where it shares the cores it sets the
    latency tail (p99 14-16 ms without, 114-156 ms with, on a 2-core box) and takes CPU
    from the run (docs/performance.md)."""
    hit = [f"{r.name} ({r.aof_rewrites}; {r.aof_cpu_s:.1f} s of CPU)"
           for r in runs if r.aof_rewrites]
    if not hit:
        return []
    return ["Redis rewrote its AOF during: " + ", ".join(hit) + " (its latency tail is the "
            "rewrite's where it shares the cores)"]


def ceiling_of(run: Run, ceilings: dict[str, float]) -> tuple[str, float] | None:
    """The ceiling an engine run is compared with: the bare server for unary calls, the
    Redis apply step for batched ones (the lower of it and the bare server)."""
    if run.target != "engine":
        return None
    bare = ceilings.get(f"bare {run.api}")
    if run.api == "unary":
        return ("bare unary", bare) if bare else None
    apply = ceilings.get("apply")
    candidates = [(name, v) for name, v in (("redis apply", apply), (f"bare {run.api}", bare))
                  if v]
    return min(candidates, key=lambda c: c[1]) if candidates else None


def table(runs: list[Run], ceilings: dict[str, float],
          of_round: dict[int, dict[str, float]] | None = None) -> list[str]:
    """A Markdown table: throughput, latency percentiles, CPU and the ratio to the ceiling
    (`of_round`: the ceilings of each round, for runs of `bench load --rounds`)."""
    lines = ["| run | req/s | ratio to ceiling | p50 ms | p90 ms | p99 ms | p99.9 ms "
             "| CPU server % | CPU redis % | CPU client % | CPU µs/request server/redis/client "
             "| errors |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups = ("server", "redis", "client")
    for r in runs:
        c = ceiling_of(r, (of_round or {}).get(r.round, ceilings))
        ratio = f"{r.throughput / c[1]:.0%} of {c[0]}" if c and r.mode == "closed" else ""
        lat = [f"{r.latency_ms.get(k, 0):.2f}" for k in ("p50", "p90", "p99", "p99.9")]
        cpu = [f"{r.cpu.get(k, 0):.0f}" for k in groups]
        per = r.cpu_per_request_us()
        cost = " / ".join(f"{per.get(k, 0):.0f}" for k in groups)
        lines.append(f"| {r.name} | {r.throughput:,.0f} | {ratio} | {' | '.join(lat)} | "
                     f"{' | '.join(cpu)} | {cost} | {r.errors} |")
    errors = [f"{r.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(r.error_kinds.items()))
              for r in runs if r.error_kinds]
    return lines + (["", "errors:", *errors] if errors else [])


def save(out: Path, results: dict[str, Any], lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(as_json(results), indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot(path: Path, sweeps: dict[str, list[Run]], title: str) -> None:
    """Latency percentiles against offered load, one colour per API."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"p50": ":", "p99": "-", "p99.9": "--"}
    for n, (api, runs) in enumerate(sweeps.items()):
        offered = [r.offered / 1000 for r in runs]
        for q, style in styles.items():
            ax.plot(offered, [r.latency_ms.get(q, 0) for r in runs], style, marker="o",
                    color=f"C{n}", label=f"{api} {q}")
    ax.set_xlabel("offered load (k requests/s)")
    ax.set_ylabel("latency from intended send (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
