"""Scale-out benchmark: throughput of `tollgate serve --workers N` for N in 1, 2, 4, 8, on one
redis-server and on a local Redis Cluster, with the gateway traffic mix of `tollgate bench`;
ratios against 1 worker measured in the same run.

    .venv/bin/python -m tollgate.bench.scale [--workers 1,2,4,8] [--masters 1,4] [--api batch,unary]

Per Redis setup: start Redis (AOF, fsync every second), provision --subscribers accounts with
one subscriber each, measure the Redis apply ceiling (b) there, then for each worker count
and API start `serve --workers N` and drive it from --clients load processes (closed loop:
4 calls of --batch requests in flight per worker for batch, 64 single calls per worker for
unary). The load processes share the machine with the workers and Redis; the CPU each group
used is printed beside the throughput, so a saturated part shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from tollgate.bench import report
from tollgate.bench.loadgen import Client, CpuProbe, as_json
from tollgate.bench.traffic import Traffic
from tollgate.engine.storage.redis_cluster import LocalCluster
from tollgate.engine.storage.redis_server import RedisServer, die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[1]
READY = "tollgate serving on"
IN_FLIGHT = {"batch": 4, "stream": 4, "unary": 64}
"""Closed loop: calls in flight per worker."""


@dataclass
class Setup:
    """One measured setup and what the load processes saw."""

    masters: int
    workers: int
    api: str
    throughput: float = 0.0  # answered requests/s, all load processes together
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # per call, worst process
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core: workers, redis, load
    engine: dict[str, float] = field(default_factory=dict)  # worker counters, per 1000 answers
    failed: str = ""

    @property
    def redis(self) -> str:
        return "1 redis-server" if self.masters == 1 else f"{self.masters}-master cluster"


@dataclass(frozen=True)
class Load:
    """What each load process does."""

    address: str
    api: str
    subscribers: int
    prefix: str
    batch: int
    concurrency: int  # per load process
    connections: int  # per load process (the kernel spreads them over the workers)
    warmup: float
    seconds: float
    tag: str


@contextmanager
def redis_backend(masters: int, base: Path) -> Iterator[tuple[str, list[int]]]:
    """One redis-server (masters=1) or a local cluster; its URL and its processes' pids."""
    if masters == 1:
        server = RedisServer(base / "single").start()
        try:
            assert server.process is not None
            yield server.url, [server.process.pid]
        finally:
            server.stop()
    else:
        with LocalCluster(base / "cluster", masters=masters, appendonly=True) as cluster:
            yield cluster.url, [s.process.pid for s in cluster.nodes.values() if s.process]


@dataclass(frozen=True)
class Served:
    address: str
    pids: list[int]  # the supervisor and its workers
    metrics_ports: list[int]


@contextmanager
def workers(url: str, count: int, log: Path,
            settings: dict[str, str] | None = None) -> Iterator[Served]:
    """`tollgate serve --workers N` as a child process, once all its workers serve;
    `settings`: configuration (name: value) other than the defaults."""
    address = f"127.0.0.1:{free_port()}"
    metrics = free_ports(count)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(TOLLGATE_METRICS_PORT=str(metrics), TOLLGATE_LOG_LEVEL="WARNING")
    env.update({f"TOLLGATE_{k.upper()}": v for k, v in (settings or {}).items()})
    with log.open("w") as err:
        proc = subprocess.Popen(
            die_with_parent([sys.executable, "-m", "tollgate", "serve", "--workers",
                             str(count), "--listen", address, "--redis-url", url,
                             "--log-format", "text"]),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY):
                break
        else:
            raise RuntimeError(f"tollgate did not start: {log.read_text()[-2000:]}")
        # keep reading, so a full pipe never blocks the supervisor
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        yield Served(address, pids, [metrics + k for k in range(count)])
    finally:
        proc.terminate()
        proc.wait(60)


def free_ports(n: int) -> int:
    """The first of n consecutive free ports (worker k serves metrics on the first + k)."""
    for _ in range(100):
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for k in range(1, n):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", first + k))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


COUNTERS = {"tollgate_requests_total": "answers", "tollgate_version_conflicts_total": "conflicts",
            "tollgate_requests_waited_total": "waited",
            "tollgate_stale_accounts_read_total": "stale", "tollgate_batch_size_count": "batches",
            "tollgate_redis_load_seconds_sum": "load_s", "tollgate_redis_apply_seconds_sum":
            "apply_s", "tollgate_kernel_seconds_sum": "kernel_s"}


def counters(ports: list[int]) -> dict[str, float]:
    """The workers' charging counters, summed (from their Prometheus endpoints)."""
    from prometheus_client.parser import text_string_to_metric_families
    totals = dict.fromkeys(COUNTERS.values(), 0.0)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in COUNTERS:
                    totals[COUNTERS[sample.name]] += sample.value
    return totals


async def provision(url: str, subscribers: int, prefix: str) -> None:
    from tqdm import tqdm

    from tollgate.engine.ops import population
    from tollgate.engine.ops.config import load_config
    from tollgate.engine.storage.store import Store
    store = Store(url, load_config(None, redis_url=url).partitions)
    try:
        await store.init()
        with tqdm(total=subscribers, desc="provision", unit=" subscribers", file=sys.stderr,
                  leave=False) as bar:
            await population.provision(store, subscribers, prefix=prefix, progress=bar.update)
    finally:
        await store.close()


async def apply_ceiling(url: str, opts: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    """Ceiling (b): the engine's Redis apply step replayed with engine-made batches, one
    batch at a time (as one worker applies them)."""
    from tollgate.bench.ceiling import apply_ceiling as replay
    from tollgate.bench.ceiling import capture_writes
    from tollgate.engine.ops.config import load_config
    config = load_config(None, redis_url=url, metrics_port=0)
    traffic = Traffic(opts.subscribers, prefix=opts.prefix, sessions=5 * opts.batch,
                      tag=f"c{os.getpid()}.")
    recorded = await capture_writes(config, traffic, opts.batch, warmup=10, batches=20)
    result = await replay(config, recorded, opts.seconds, CpuProbe({"redis": pids}))
    return as_json(result)


async def _drive(load: Load, seed: int, barrier: Any) -> dict[str, Any]:
    traffic = Traffic(load.subscribers, prefix=load.prefix, seed=seed, tag=load.tag,
                      sessions=max(2000, 5 * load.batch * load.concurrency))
    client = Client(load.address, traffic, CpuProbe({}), progress=False,
                    connections=load.connections)
    try:
        await client.wait_ready()
        await client.run("engine", load.api, load.warmup, concurrency=load.concurrency,
                         batch=load.batch)
        barrier.wait(timeout=120)  # the measured runs of all load processes start together
        run = await client.run("engine", load.api, load.seconds, concurrency=load.concurrency,
                               batch=load.batch)
    finally:
        await client.close()
    return as_json(run)


def _load_process(load: Load, seed: int, barrier: Any, out: Any) -> None:
    try:
        out.put(asyncio.run(_drive(load, seed, barrier)))
    except BaseException as e:  # the parent reports it instead of waiting forever
        barrier.abort()
        out.put({"failed": f"{type(e).__name__}: {e}"})


def measure(setup: Setup, load: Load, clients: int, pids: dict[str, list[int]],
            metrics_ports: list[int]) -> None:
    """Runs the load processes; fills in the setup's throughput, latency, CPU, and the
    version conflicts and waits per 1000 answers (a worker's cached account is stale when
    another worker wrote it; those requests run again)."""
    ctx = mp.get_context("spawn")  # no fork of a process that may hold gRPC or Numba state
    barrier = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_load_process, args=(load, seed, barrier, out))
             for seed in range(1, clients + 1)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=180)
        probe = CpuProbe({**pids, "load": [p.pid for p in procs if p.pid]})
        before = counters(metrics_ports)
        probe.start()
        time.sleep(load.seconds)
        setup.cpu = probe.stop()
        after = counters(metrics_ports)
        delta = {k: after[k] - before[k] for k in after}
        answers = max(delta["answers"], 1)
        setup.engine = {
            "conflicts": round(1000 * delta["conflicts"] / answers, 1),
            "waited": round(1000 * delta["waited"] / answers, 1),
            "stale": round(1000 * delta["stale"] / answers, 1),
            "batch": round(answers / max(delta["batches"], 1)),
            # Redis round trips' wall time per request, in µs
            **{f"{k}_us": round(1e6 * delta[f"{k}_s"] / answers, 1)
               for k in ("load", "apply", "kernel")}}
    except Exception as e:  # a broken barrier: a load process says why
        setup.failed = f"{type(e).__name__}"
    runs = [out.get(timeout=load.seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    failed = [r["failed"] for r in runs if "failed" in r]
    if failed or setup.failed:
        setup.failed = "; ".join(failed) or setup.failed
        return
    setup.throughput = round(sum(r["throughput"] for r in runs), 1)
    setup.errors = sum(r["errors"] for r in runs)
    for r in runs:
        for kind, n in r["error_kinds"].items():
            setup.error_kinds[kind] = setup.error_kinds.get(kind, 0) + n
    setup.latency_ms = {"p50": statistics.median(r["latency_ms"]["p50"] for r in runs),
                        "p99": max(r["latency_ms"]["p99"] for r in runs)}


def line(s: Setup, base: dict[str, float]) -> str:
    if s.failed:
        return f"| {s.redis} | {s.api} | {s.workers} | FAILED: {s.failed} | | | | | |"
    ratio = s.throughput / base[s.api] if base.get(s.api) else 1.0
    cpu = " ".join(f"{k} {v:.0f}%" for k, v in s.cpu.items())
    return (f"| {s.redis} | {s.api} | {s.workers} | {s.throughput:,.0f} req/s | x{ratio:.2f} | "
            f"p50 {s.latency_ms['p50']:.1f} ms, p99 {s.latency_ms['p99']:.1f} ms | {cpu} | "
            f"{s.engine.get('conflicts', 0):g} | {s.errors} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tollgate.bench.scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8", help="worker counts (default 1,2,4,8)")
    ap.add_argument("--masters", default="1,4",
                    help="1 = one redis-server, N = an N-master cluster (default 1,4)")
    ap.add_argument("--api", default="batch", help="batch, stream and/or unary (default batch)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per setup")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=max(2, (os.cpu_count() or 4) // 4),
                    help="load processes (default: a quarter of the cores, at least 2)")
    ap.add_argument("--batch", type=int, default=1000, help="requests per ChargeBatch call")
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--prefix", default="bench-")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the apply ceiling (b)")
    ap.add_argument("--out", metavar="DIR", help="write scale.json and scale.md here")
    opts = ap.parse_args(argv)
    counts = [int(w) for w in opts.workers.split(",")]
    apis = opts.api.split(",")
    if not set(apis) <= set(IN_FLIGHT):
        ap.error(f"--api takes {', '.join(IN_FLIGHT)}")
    lines = [f"machine: {report.machine()}; {opts.clients} load processes; "
             f"{opts.subscribers:,} subscribers; {opts.seconds:g} s per setup after "
             f"{opts.warmup:g} s of warm-up", "",
             "| Redis | API | workers | throughput | vs 1 worker | latency per call | CPU % "
             "of one core | conflicts per 1000 | errors |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]
    print("\n".join(lines), flush=True)
    results: dict[str, Any] = {"machine": report.machine(), "options": vars(opts),
                               "ceilings": {}, "setups": []}
    setups: list[Setup] = []
    with tempfile.TemporaryDirectory(prefix="tollgate-scale-") as tmp:
        for m in (int(m) for m in opts.masters.split(",")):
            with redis_backend(m, Path(tmp) / f"m{m}") as (url, redis_pids):
                asyncio.run(provision(url, opts.subscribers, opts.prefix))
                base: dict[str, float] = {}
                if not opts.no_ceiling:
                    c = asyncio.run(apply_ceiling(url, opts, redis_pids))
                    results["ceilings"][str(m)] = c
                    lines.append(f"| apply ceiling (b), {m} master(s) | | 1 | "
                                 f"{c['requests_per_s']:,.0f} req/s | | batch p99 "
                                 f"{c['batch_ms_p99']:.1f} ms | redis {c['cpu']['redis']:.0f}% "
                                 f"| | {c['refused']} refused |")
                    print(lines[-1], flush=True)
                    save(opts.out, results, lines)
                for w in counts:
                    for api in apis:
                        s = Setup(m, w, api)
                        load = Load("", api, opts.subscribers, opts.prefix, opts.batch,
                                    max(1, -(-IN_FLIGHT[api] * w // opts.clients)), 2 * w,
                                    opts.warmup, opts.seconds, f"m{m}w{w}{api}")
                        try:
                            with workers(url, w, Path(tmp) / f"serve-{m}-{w}.log") as served:
                                measure(s, replace(load, address=served.address), opts.clients,
                                        {"workers": served.pids, "redis": redis_pids},
                                        served.metrics_ports)
                        except Exception as e:  # one setup failing ends no run
                            s.failed = f"{type(e).__name__}: {e}"[:300]
                        if not s.failed and w == counts[0]:
                            base.setdefault(api, s.throughput)
                        setups.append(s)
                        lines.append(line(s, base))
                        print(lines[-1], flush=True)
                        results["setups"] = as_json(setups)
                        save(opts.out, results, lines)  # a run cut off keeps what it measured
    return 0 if all(not s.failed for s in setups) else 1


def save(out: str | None, results: dict[str, Any], lines: list[str]) -> None:
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
        (Path(out) / "scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
