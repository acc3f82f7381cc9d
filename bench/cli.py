"""`tollgate bench provision|ceiling|load|coldstart|soak|ab|all`: load tests and their report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from tollgate.bench.ab import add_arguments as add_ab_arguments
from tollgate.bench.ab import run as ab_run

DEFAULT_SUBSCRIBERS = 100_000
SWEEP = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
"""Open-loop offered loads of a sweep, as fractions of the closed-loop maximum."""


def _population(p: argparse.ArgumentParser, default: int = DEFAULT_SUBSCRIBERS) -> None:
    p.add_argument("--subscribers", type=int, default=default,
                   help=f"population size (default {default:,})")
    p.add_argument("--prefix", default="bench-", help="id prefix: <prefix>sub-N, <prefix>acct-N")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (partitions)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", metavar="HOST:PORT",
                   help="a running Tollgate (give --redis-url too); default: start "
                        "redis-server and `tollgate serve` here")
    p.add_argument("--redis-url", help="the Redis of --target (provisioning, Redis CPU)")
    p.add_argument("--server-pid", type=int, action="append",
                   help="pid of --target, for its CPU and RSS (repeatable)")
    p.add_argument("--servers", type=int, default=1,
                   help="server processes sharing one port (SO_REUSEPORT), engine and bare "
                        "server alike; the client opens 4 connections per process")
    p.add_argument("--pin", action="store_true",
                   help="servers on the first cores (one each), Redis and the load generator "
                        "on the others: the servers' CPU, not the machine's, is then the "
                        "limit (a small machine's load generator otherwise competes with them)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    p.add_argument("--batch", type=int, default=1000, help="requests per batch/stream message")
    p.add_argument("--open-batch", type=int, default=100,
                   help="open loop: requests per batch/stream message (default 100: many "
                        "small gateway calls, merged by the server's batcher)")
    p.add_argument("--concurrency", type=int, default=0,
                   help="closed loop: calls in flight (default per server process: 64 "
                        "unary, 4 batch/stream)")
    p.add_argument("--out", metavar="DIR", help="write results.json, results.md (and the "
                                                "plot) here")


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser(
        "bench", help="load tests: provision, ceilings, load, cold start, soak",
        description="Load tests against a real server and Redis. Without --target each "
                    "command starts its own redis-server (AOF everysec) and servers as "
                    "separate processes, and provisions the population first.")
    cmds = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    prov = cmds.add_parser("provision", help="create N accounts with one subscriber each",
                           description="Bulk-creates <prefix>acct-N / <prefix>sub-N on the "
                                       "bench plan (data + voice); existing ones are kept.")
    _population(prov)
    prov.add_argument("--redis-url", help="the Redis Tollgate uses (also REDIS_URL)")
    prov.add_argument("--money", type=int, default=1000, help="EUR per account (default 1000)")

    ceil = cmds.add_parser("ceiling", help="the ceilings: bare gRPC server, Redis apply step")
    _population(ceil)
    _target(ceil)

    load = cmds.add_parser("load", help="closed/open-loop load over unary, batch, stream",
                           description="Runs each --api closed loop (or open loop at --rate, "
                                       "or a --sweep of open-loop rates) with the ceilings "
                                       "in the same run; prints the table.")
    _population(load)
    _target(load)
    load.add_argument("--api", choices=["unary", "batch", "stream", "diameter"],
                      action="append",
                      help="repeatable; default unary, batch and stream (diameter: a CCR per "
                           "request over Diameter Gy, as many in flight as unary calls)")
    load.add_argument("--rate", type=float, default=0.0,
                      help="open loop at this many requests/s (default: closed loop)")
    load.add_argument("--sweep", action="store_true",
                      help="also open loop at 10..100%% of each API's closed-loop maximum; "
                           "plot latency against offered load")
    load.add_argument("--no-ceilings", action="store_true", help="skip the ceiling runs")
    load.add_argument("--no-meet", action="store_true",
                      help="do not open and end a session of every subscriber before the "
                           "engine's runs (as revisions before this step ran: the runs then "
                           "also read accounts for the first time)")
    load.add_argument("--replay", type=float, default=0.0, metavar="RATE",
                      help="batch and stream, closed or open loop: build and encode the "
                           "messages for RATE requests/s before the run (each closed-loop "
                           "caller's, each connection's in the open loop) and send them as "
                           "they are, reading only the answers' result codes (the load "
                           "generator's CPU, which shares a small machine with the server, "
                           "drops to a few µs per request); past the script, live traffic")
    load.add_argument("--rounds", type=int, default=1,
                      help="closed loop: measure ceilings and engine this many times, "
                           "alternating, and report each API's median ratio (a machine "
                           "whose speed drifts moves single ratios by several points)")

    cold = cmds.add_parser("coldstart", help="process start to first answered Charge")
    _population(cold, 1000)
    cold.add_argument("--redis-url", help="use this Redis (else start one)")
    cold.add_argument("--repeat", type=int, default=3)

    soak = cmds.add_parser("soak", help="open loop at a share of the maximum for a long time: "
                                        "server RSS and Redis memory over time")
    _population(soak)
    _target(soak)
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--load", type=float, default=0.5,
                      help="share of the closed-loop batch maximum (default 0.5)")
    soak.add_argument("--api", choices=["batch", "stream"], default="batch")

    ab = cmds.add_parser("ab", help="this checkout against another revision, alternating "
                                    "(engine CPU in process, or end to end with --load)",
                         description="Runs bench/engine_cpu.py (or, with --load, `tollgate "
                                     "bench load`) on a git revision (from a temporary "
                                     "worktree) and on this checkout, one after the other, "
                                     "--pairs times; prints both sides' medians and the "
                                     "median ratio of the pairs with its quartiles.")
    add_ab_arguments(ab)

    every = cmds.add_parser("all", help="everything for the results table "
                                        "(docs/performance.md), in one run")
    _population(every)
    _target(every)
    every.set_defaults(out="bench/results")


def bytes_per_subscriber(before: int, after: int, created: int) -> int | None:
    """Redis memory per subscriber this run provisioned (an account and a subscriber hash
    each), from used_memory before and after; None when it created none (the population was
    there already: a second run, or the Redis of --target) or memory did not grow (other
    clients of that Redis freed more meanwhile), where the difference means nothing."""
    if created == 0 or after <= before:
        return None
    return round((after - before) / (created / 2))


def idle_bytes_text(value: int | None) -> str:
    return ("bytes per idle subscriber not measured (this run provisioned no subscriber)"
            if value is None else f"{value} bytes per idle subscriber")


# --- the lab: Redis, population, servers ---------------------------------------------------------


class Lab:
    """What a bench command runs against: Redis (started unless given), the provisioned
    population, the engine server (started unless --target) and the bare server."""

    def __init__(self, args: argparse.Namespace) -> None:
        from tollgate.engine.ops.config import load_config
        self.args = args
        self.progress = not args.no_progress
        self.config = load_config(args.config, redis_url=getattr(args, "redis_url", None),
                                  metrics_port=0)
        self.workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
        self.stack = AsyncExitStack()
        self.results: dict[str, Any] = {}
        self.pids: dict[str, list[int]] = {}
        self.engine_pids: list[int] = []
        self.clients = 0  # clients made so far: each one's sessions get ids of their own
        self.met = False  # the engine has met every subscriber (Client.meet)
        self.cores = sorted(os.sched_getaffinity(0))  # before --pin moves this process

    async def __aenter__(self) -> Lab:
        from tollgate.engine.storage.redis_server import RedisServer
        self.stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        if not self.config.redis_url:
            if getattr(self.args, "target", None):
                raise ValueError("--target needs --redis-url (its Redis)")
            redis = RedisServer(self.workdir / "redis", appendfsync="everysec").start()
            self.stack.callback(redis.stop)
            self.config = self.config.replace(redis_url=redis.url)
            assert redis.process is not None
            self.pids["redis"] = [redis.process.pid]
        if getattr(self.args, "pin", False):
            pin([os.getpid(), *self.pids.get("redis", [])], self.others)
        await self.provision()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def aof_sample(self) -> tuple[int, float] | None:
        """How many AOF rewrites the Redis has begun, and the CPU seconds of its children
        reaped so far (None: it cannot say)."""
        try:
            info = await self.redis_info("default")  # its persistence and cpu sections
            return int(info.get("aof_rewrites", 0)), (
                float(info.get("used_cpu_user_children", 0.0))
                + float(info.get("used_cpu_sys_children", 0.0)))
        except (RedisError, OSError, ValueError):
            return None

    async def redis_info(self, section: str) -> dict[str, Any]:
        import redis.asyncio as aioredis
        client = aioredis.Redis.from_url(self.config.redis_url)
        try:
            return dict(await client.info(section))
        finally:
            await client.aclose()

    async def provision(self) -> None:
        from tqdm import tqdm

        from tollgate.engine.ops import population
        from tollgate.engine.storage.store import Store
        n = self.args.subscribers
        store = Store(self.config.redis_url, self.config.partitions)
        try:
            await store.init()
            before = (await self.redis_info("memory"))["used_memory"]
            with tqdm(total=n, desc="provision", unit=" subscribers", file=sys.stderr,
                      disable=not self.progress, leave=False) as bar:
                done = await population.provision(
                    store, n, prefix=self.args.prefix,
                    money=getattr(self.args, "money", 1000) * population.EUR,
                    progress=bar.update)
            after = (await self.redis_info("memory"))["used_memory"]
            p = store.partition(population.account_id(self.args.prefix, 0))
            from tollgate.engine.storage import keys
            sizes = [await store.redis.memory_usage(k) or 0 for k in (
                keys.account(p, population.account_id(self.args.prefix, 0)),
                keys.subscriber(population.subscriber_id(self.args.prefix, 0)))]
        finally:
            await store.close()
        self.results["provision"] = {
            "subscribers": n, "created": done.created, "seconds": round(done.seconds, 2),
            "subscribers_per_s": round(done.rate),
            "redis_bytes_per_idle_subscriber": bytes_per_subscriber(before, after,
                                                                    done.created),
            "memory_usage_account_key": sizes[0], "memory_usage_subscriber_key": sizes[1]}

    def engine_address(self) -> str:
        """The --target, or `tollgate serve` processes started here (once)."""
        from functools import partial

        from tollgate.bench.loadgen import engine_server, server_group
        from tollgate.engine.storage.redis_server import free_port
        if getattr(self.args, "target", None):
            self.engine_pids = list(self.args.server_pid or [])
            return str(self.args.target)
        if "engine" not in self.results.setdefault("servers", {}):
            diameter_port = free_port()
            group = server_group(partial(engine_server, self.config.redis_url, self.workdir,
                                         diameter_port=diameter_port), self.servers)
            for server in group:
                self.stack.callback(server.stop)
            self.results["servers"]["engine"] = group[0].address
            self.results["servers"]["engine diameter"] = f"127.0.0.1:{diameter_port}"
            self.engine_pids = [server.pid for server in group]
            self.pin_servers(self.engine_pids)
        return str(self.results["servers"]["engine"])

    @property
    def others(self) -> set[int]:
        """The cores --pin leaves to Redis and the load generator."""
        if len(self.cores) <= self.servers:
            raise ValueError(f"--pin needs more cores than server processes ({len(self.cores)})")
        return set(self.cores[self.servers:])

    def pin_servers(self, pids: list[int]) -> None:
        if getattr(self.args, "pin", False):
            for n, pid in enumerate(pids):
                pin([pid], {self.cores[n]})

    @property
    def servers(self) -> int:
        return max(1, int(getattr(self.args, "servers", 1)))

    def client(self, address: str, tag: str, server_pids: list[int],
               diameter: str = "") -> Any:
        from tollgate.bench.loadgen import Client, CpuProbe
        from tollgate.bench.traffic import Traffic
        pids = {**self.pids, "client": [os.getpid()]}
        if server_pids:
            pids["server"] = server_pids
        self.clients += 1
        # The tag starts the session ids: a second client on the same server (--rounds),
        # or a second bench against the same --target, must not reopen the first one's
        # sessions (the traffic's random mix stays the same).
        traffic = Traffic(self.args.subscribers, prefix=self.args.prefix,
                          sessions=max(5000, 5 * self.args.batch * self.servers),
                          tag=f"{tag}{os.getpid()}.{self.clients}")
        return Client(address, traffic, CpuProbe(pids), self.progress,
                      connections=4 * self.servers, diameter=diameter)

    def concurrency(self, api: str) -> int:
        one_by_one = api in ("unary", "diameter")
        return int(self.args.concurrency or (64 if one_by_one else 4) * self.servers)


def pin(pids: list[int], cores: set[int]) -> None:
    """Every thread of each process on `cores` (a process's affinity is its threads': the
    servers' gRPC threads already run when they are pinned)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), cores)


async def _measure(lab: Lab, target: str, address: str, server_pids: list[int],
                   apis: list[str], rate: float = 0.0, sweep: bool = False) -> list[Any]:
    diameter = (lab.results.get("servers", {}).get("engine diameter", "")
                if target == "engine" and "diameter" in apis else "")
    if "diameter" in apis and target == "engine" and not diameter:
        raise ValueError("--api diameter needs the servers the bench starts (not --target)")
    client = lab.client(address, target[0], server_pids, diameter)
    runs = []
    try:
        await client.wait_ready()
        if target == "engine" and not lab.met and not getattr(lab.args, "no_meet", False):
            # A server up for a while has every active account cached; without this, a run
            # of a few seconds over a large population reads many accounts for the first
            # time, and measures that instead.
            lab.met = True
            lab.results["met"] = await client.meet(lab.args.prefix, lab.args.subscribers,
                                                   every_connection=lab.servers > 1)
        for api in apis:
            # a short closed-loop warm-up: caches, connections, batch sizes settle
            await client.run(target, api, min(2.0, lab.args.seconds),
                             concurrency=lab.concurrency(api), batch=lab.args.batch)
            before = await lab.aof_sample() if target == "engine" else None
            run = await client.run(target, api, lab.args.seconds,
                                   concurrency=lab.concurrency(api),
                                   batch=lab.args.open_batch if rate else lab.args.batch,
                                   rate=rate, replay=getattr(lab.args, "replay", 0.0))
            after = await lab.aof_sample() if before is not None else None
            if before is not None and after is not None:
                run.aof_rewrites = after[0] - before[0]
                run.aof_cpu_s = after[1] - before[1]
            runs.append(run)
            if sweep and not rate:
                for share in SWEEP:
                    runs.append(await client.run(target, api, lab.args.seconds,
                                                 batch=lab.args.open_batch,
                                                 rate=share * run.throughput))
    finally:
        await client.close()
    return runs


async def _ceilings(lab: Lab, apis: list[str], rounds: int = 0
                    ) -> tuple[dict[str, float], list[Any]]:
    """(a) the bare server over the same APIs, (b) the apply step with engine-made batches.
    With `rounds`, both are measured that many times, each time followed by the engine's
    closed-loop runs, which are compared with their own round's ceilings
    (results["round_ceilings"]); the ceilings returned are the last ones."""
    from functools import partial

    from tollgate.bench.ceiling import apply_ceiling, capture_writes
    from tollgate.bench.loadgen import CpuProbe, bare_server, server_group
    from tollgate.bench.traffic import Traffic
    batch = lab.args.batch
    recorded = None
    apis = [a for a in apis if a != "diameter"]  # no bare Diameter server: unary's is the one
    if any(a != "unary" for a in apis):
        # Its own session ids per process, like the clients' (a second bench against the same
        # --target would otherwise reopen this one's sessions: refused INITIALs, no writes).
        traffic = Traffic(lab.args.subscribers, prefix=lab.args.prefix,
                          sessions=max(5000, 5 * batch), tag=f"c{os.getpid()}.")
        recorded = await capture_writes(lab.config, traffic, batch, warmup=10, batches=20)
    bare = server_group(partial(bare_server, lab.workdir), lab.servers)
    lab.pin_servers([b.pid for b in bare])
    runs: list[Any] = []
    try:
        for k in range(1, max(rounds, 1) + 1):
            ceilings: dict[str, float] = {}
            if recorded is not None:
                pids = {**lab.pids, "client": [os.getpid()]}
                applied = await apply_ceiling(lab.config, recorded, lab.args.seconds,
                                              CpuProbe(pids))
                lab.results["apply_ceiling"] = applied
                ceilings["apply"] = applied.requests_per_s
            measured = await _measure(lab, "bare", bare[0].address, [b.pid for b in bare],
                                      apis)
            for r in measured:
                ceilings[f"bare {r.api}"] = r.throughput
            if rounds:
                measured += await _measure(lab, "engine", lab.engine_address(),
                                           lab.engine_pids, apis)
                lab.results.setdefault("round_ceilings", {})[k] = ceilings
                for r in measured:
                    r.round = k
            runs += measured
    finally:
        for b in bare:
            b.stop()
    return ceilings, runs


def _print(lab: Lab, runs: list[Any], ceilings: dict[str, float],
           plot_sweeps: bool = False) -> None:
    from tollgate.bench import report
    lines = [f"machine: {report.machine()}; {lab.servers} server process(es) per target", ""]
    if "provision" in lab.results:
        p = lab.results["provision"]
        lines.append(f"population: {p['subscribers']:,} subscribers ({p['created']:,} hashes "
                     f"created at {p['subscribers_per_s']:,} subscribers/s); Redis "
                     f"{idle_bytes_text(p['redis_bytes_per_idle_subscriber'])}")
    if "met" in lab.results:
        m = lab.results["met"]
        lines.append(f"before the engine's runs: a session of each of the {m['subscribers']:,} "
                     f"subscribers opened and ended (nothing used) in {m['seconds']} s, "
                     f"{m['refused']} refused")
    if "apply_ceiling" in lab.results:
        a = lab.results["apply_ceiling"]
        lines.append(f"ceiling (b) Redis apply step: {a.requests_per_s:,.0f} requests/s "
                     f"({a.requests_per_batch:.0f}-request batches, p50 {a.batch_ms_p50:.1f} "
                     f"ms, p99 {a.batch_ms_p99:.1f} ms per batch, {a.refused} refused; CPU "
                     + ", ".join(f"{k} {v:.0f} %" for k, v in a.cpu.items()) + ")")
    if "coldstart" in lab.results:
        c = lab.results["coldstart"]
        lines.append(f"cold start: serving after {c.ready_s:.2f} s, first Charge answered "
                     f"{c.first_answer_s:.2f} s after process start (first call "
                     f"{c.first_charge_ms:.0f} ms, second {c.second_charge_ms:.1f} ms)")
    lines += ["", *report.table(runs, ceilings, lab.results.get("round_ceilings"))]
    if rewrites := report.aof_rewrites(runs):
        lines += ["", *rewrites]
    if "round_ceilings" in lab.results:
        of_round = lab.results["round_ceilings"]
        ratios = lab.results["rounds"] = _round_ratios(runs, of_round)
        applies = [c["apply"] for c in of_round.values() if "apply" in c]
        if applies:
            lines += ["", "ceiling (b) of each round: " + ", ".join(f"{a:,.0f}" for a in applies)
                      + " requests/s"]
        lines += ["", "ratio to the ceiling of the same round, median (min-max) of "
                  f"{len(of_round)} rounds: " + ", ".join(
                      f"{api} {statistics.median(v):.0%} ({min(v):.0%}-{max(v):.0%})"
                      for api, v in ratios.items())]
    print("\n".join(lines), flush=True)
    lab.results["runs"] = runs
    lab.results["ceilings"] = ceilings
    lab.results["machine"] = report.machine()
    if lab.args.out:
        out = Path(lab.args.out)
        report.save(out, lab.results, lines)
        sweeps = {api: [r for r in runs if r.api == api and r.mode == "open"]
                  for api in ("unary", "batch", "stream")}
        sweeps = {k: v for k, v in sweeps.items() if len(v) > 1}
        if plot_sweeps and sweeps:
            report.plot(out / "latency.png", sweeps,
                        f"Tollgate open-loop latency vs offered load ({report.machine()})")
        print(f"results in {out}/", file=sys.stderr)


def _round_ratios(runs: list[Any], of_round: dict[int, dict[str, float]]
                  ) -> dict[str, list[float]]:
    """Per API, each engine run's ratio to the ceilings of its own round."""
    from tollgate.bench import report
    ratios: dict[str, list[float]] = {}
    for r in runs:
        c = report.ceiling_of(r, of_round[r.round])
        if c:
            ratios.setdefault(r.api, []).append(round(r.throughput / c[1], 4))
    return ratios


async def _load(args: argparse.Namespace, everything: bool = False) -> int:
    apis = args.api or ["unary", "batch", "stream"]
    async with Lab(args) as lab:
        ceilings: dict[str, float] = {}
        runs: list[Any] = []
        rounds = getattr(args, "rounds", 1)
        if rounds > 1:
            if args.rate or getattr(args, "sweep", False) or args.no_ceilings:
                raise ValueError("--rounds compares closed-loop runs with their ceilings: "
                                 "not with --rate, --sweep or --no-ceilings")
            ceilings, runs = await _ceilings(lab, apis, rounds)
            _print(lab, runs, ceilings)
            return 0
        if not getattr(args, "no_ceilings", False):
            ceilings, runs = await _ceilings(lab, apis)
        if everything and not args.target:
            from tollgate.bench.loadgen import cold_start
            lab.results["coldstart"] = await cold_start(
                lab.config.redis_url, lab.workdir, f"{args.prefix}sub-0")
        address = lab.engine_address()
        runs += await _measure(lab, "engine", address, lab.engine_pids, apis,
                               rate=getattr(args, "rate", 0.0),
                               sweep=getattr(args, "sweep", False))
        _print(lab, runs, ceilings, plot_sweeps=True)
    return 0


async def _ceiling(args: argparse.Namespace) -> int:
    async with Lab(args) as lab:
        ceilings, runs = await _ceilings(lab, ["unary", "batch", "stream"])
        _print(lab, runs, ceilings)
    return 0


async def _provision(args: argparse.Namespace) -> int:
    args.redis_url = args.redis_url or None
    lab = Lab(args)
    if not lab.config.redis_url:
        raise ValueError("give --redis-url (or REDIS_URL): the Redis that Tollgate uses")
    await lab.provision()
    p = lab.results["provision"]
    print(f"{p['subscribers']:,} subscribers ({args.prefix}sub-0 .. "
          f"{args.prefix}sub-{p['subscribers'] - 1}): {p['created']:,} hashes created in "
          f"{p['seconds']} s, {p['subscribers_per_s']:,} subscribers/s")
    return 0


async def _ab(args: argparse.Namespace) -> int:
    print(ab_run(args.rev, args.pairs, args.batch, args.subscribers, args.requests,
                 args.load))
    return 0


async def _coldstart(args: argparse.Namespace) -> int:
    from tollgate.bench.loadgen import cold_start
    async with Lab(args) as lab:
        for n in range(args.repeat):
            c = await cold_start(lab.config.redis_url, lab.workdir, f"{args.prefix}sub-0")
            print(f"run {n + 1}: serving after {c.ready_s:.2f} s; first Charge answered "
                  f"{c.first_answer_s:.2f} s after process start; first call "
                  f"{c.first_charge_ms:.1f} ms, second {c.second_charge_ms:.1f} ms", flush=True)
    return 0


async def _soak(args: argparse.Namespace) -> int:
    import psutil
    async with Lab(args) as lab:
        address = lab.engine_address()
        client = lab.client(address, "k", lab.engine_pids)
        samples: list[dict[str, float]] = []
        procs = [psutil.Process(pid) for pid in lab.engine_pids]
        try:
            await client.wait_ready()
            await client.run("engine", args.api, 2.0, concurrency=lab.concurrency(args.api),
                             batch=args.batch)  # warm-up
            top = await client.run("engine", args.api, lab.args.seconds,
                                   concurrency=lab.concurrency(args.api), batch=args.batch)
            rate = args.load * top.throughput
            print(f"maximum {top.throughput:,.0f} requests/s; soaking at {rate:,.0f}/s for "
                  f"{args.minutes} min", flush=True)
            last = 0.0

            def sample(elapsed: float) -> None:
                nonlocal last
                if elapsed - last >= 10 or not samples:
                    last = elapsed
                    samples.append({"t_s": round(elapsed), "server_rss_mib": sum(
                        p.memory_info().rss for p in procs) / 2**20})
            run = await client.run("engine", args.api, args.minutes * 60,
                                   batch=args.open_batch, rate=rate, sample=sample)
        finally:
            await client.close()
        memory = await lab.redis_info("memory")
        rss = [s["server_rss_mib"] for s in samples]
        # the first minute is warm-up (caches fill); flatness is judged after it
        settled = [s["server_rss_mib"] for s in samples if s["t_s"] >= 60] or rss
        growth = (settled[-1] - settled[0]) / settled[0] if settled and settled[0] else 0.0
        lab.results.update(soak_samples=samples, soak_rss_growth=growth,
                           redis_used_memory=memory["used_memory"])
        print(f"server RSS {rss[0]:.0f} -> {rss[-1]:.0f} MiB (after the first minute: "
              f"{growth:+.1%}); Redis used_memory {memory['used_memory'] / 2**20:.0f} MiB; "
              f"{idle_bytes_text(lab.results['provision']['redis_bytes_per_idle_subscriber'])} "
              "at provisioning")
        print("server RSS MiB by time: " + ", ".join(
            f"{s['t_s']} s {s['server_rss_mib']:.0f}" for s in samples[::6]), flush=True)
        _print(lab, [top, run], {})
    return 0


BENCH_EXTRA = ("psutil", "tqdm", "matplotlib")
"""What `tollgate bench` imports beyond Tollgate's own dependencies: the `bench` extra."""


def missing_bench_modules() -> list[str]:
    missing = []
    for name in BENCH_EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def bench_command(args: argparse.Namespace) -> int:
    from tollgate.engine.errors import ConfigError
    from tollgate.engine.ops.logs import setup_logging
    missing = missing_bench_modules()
    if missing:
        print(f"tollgate bench needs {', '.join(missing)}, which are not installed: "
              "pip install 'tollgate[bench]'", file=sys.stderr)
        return 2
    setup_logging("WARNING", "text")
    commands = {"provision": _provision, "ceiling": _ceiling, "load": _load,
                "coldstart": _coldstart, "soak": _soak, "ab": _ab}
    started = time.monotonic()
    try:
        if args.bench_command == "all":
            args.api, args.rate, args.sweep, args.no_ceilings = None, 0.0, True, False
            code = asyncio.run(_load(args, everything=True))
        else:
            code = asyncio.run(commands[args.bench_command](args))
    except (ConfigError, ValueError, OSError, RuntimeError) as e:
        print(f"tollgate bench: {e}", file=sys.stderr)
        return 2
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return code
