"""ChargeStream soak (issue 24): streams that send as fast as they can and never read their
answers must not grow the server's memory, and a normal client's latency must hold.

    .venv/bin/python -m tollgate.bench.stream_soak [--streams 8] [--seconds 60] [--message 500]

Starts one redis-server and `tollgate serve` (one worker) as a child process, provisions
accounts, then: a normal client (unary Charge at --normal-rate calls a second, as a
gateway's steady traffic) alone for --baseline seconds;
the same with --streams abusive ChargeStream calls for --seconds; then idle for --idle
seconds. The normal client runs in a process of its own, so that its latencies are the
server's, not those of an event loop busy building the abusive messages; with --control it
calls a second server process that no stream reaches (the control: what sharing the
machine and Redis with the attack costs it). Prints the server's RSS (baseline, peak,
after), the normal client's p50/p99, the CPU of each process group and the server's batches
in each phase as one JSON object. Not part of the test run (minutes, machine-dependent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import statistics
import tempfile
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import psutil

from tollgate.bench.loadgen import CpuProbe
from tollgate.bench.scale import Served, counters, provision, redis_backend, workers
from tollgate.engine.ops.population import subscriber_id
from tollgate.engine.web.series import quantile
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc

PREFIX = "soak-"
VOICE_RG = 100


def event(session: str, sub: str) -> cpb.ChargeRequest:
    return cpb.ChargeRequest(session_id=session, type=cpb.EVENT, subscriber_id=sub,
                             units=[cpb.ServiceUnits(rating_group=VOICE_RG,
                                                     used=cpb.Units(time_seconds=1))])


def rss_mb(pids: list[int]) -> float:
    return sum(psutil.Process(p).memory_info().rss for p in pids) / 2**20


async def normal_client(address: str, sub: str, rate: float, stop: asyncio.Event,
                        calls: list[tuple[float, float, int]]) -> None:
    """A gateway's steady traffic: unary calls started at `rate` a second on a fixed schedule
    whatever the answers' pace (open loop; 0: a closed loop of 4 in flight, which takes all
    the server it can get); appends each call's (scheduled start, latency ms from that
    start, result code). Timed from the schedule, a server that falls behind shows in the
    latency of the calls it delayed, not in fewer calls (no coordinated omission)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = charging_pb2_grpc.ChargingStub(channel)

        async def one(n: int, started: float) -> None:
            try:
                result = (await stub.Charge(event(f"normal-{n}-{time.time_ns()}", sub))).result
            except grpc.aio.AioRpcError as e:  # counted as not successful, with its latency
                result = -e.code().value[0]
            calls.append((started, (time.monotonic() - started) * 1000, result))

        if rate <= 0:
            async def lane(k: int) -> None:
                n = 0
                while not stop.is_set():
                    await one(k + 4 * n, time.monotonic())
                    n += 1
            await asyncio.gather(*(lane(k) for k in range(4)))
            return
        running: set[asyncio.Task[None]] = set()
        start, n = time.monotonic(), 0
        while not stop.is_set():
            due = start + n / rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(one(n, due))
            running.add(task)
            task.add_done_callback(running.discard)
            n += 1
        await asyncio.gather(*running)


def normal_process(address: str, sub: str, rate: float, pipe: Connection) -> None:
    """The normal client in a process of its own: runs until the pipe says stop, then sends
    its calls back (CLOCK_MONOTONIC is the same in every process)."""
    async def run() -> list[tuple[float, float, int]]:
        stop = asyncio.Event()
        calls: list[tuple[float, float, int]] = []
        loop = asyncio.get_running_loop()
        loop.add_reader(pipe.fileno(), stop.set)
        await normal_client(address, sub, rate, stop, calls)
        return calls
    pipe.send(asyncio.run(run()))


async def abusive_stream(address: str, subs: list[str], size: int, stop: asyncio.Event,
                         sent: list[int]) -> str:
    """Sends messages of `size` events as fast as gRPC lets it, reads nothing; how it ended."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = charging_pb2_grpc.ChargingStub(channel).ChargeStream()
        m = 0
        try:
            while not stop.is_set():
                msg = cpb.ChargeBatchRequest(requests=[
                    event(f"abuse-{id(call)}-{m}-{k}", subs[(m * size + k) % len(subs)])
                    for k in range(size)])
                write = asyncio.ensure_future(call.write(msg))
                done, _ = await asyncio.wait((write, asyncio.ensure_future(stop.wait())),
                                             return_when=asyncio.FIRST_COMPLETED)
                if write not in done:
                    write.cancel()
                    break
                sent[0] += size
                m += 1
        except grpc.aio.AioRpcError as e:
            return e.code().name
        if call.done():  # ended by the server while the last write waited
            return (await call.code()).name
        call.cancel()
        return "cancelled by the client"


def percentiles(calls: list[tuple[float, float, int]]) -> dict[str, float]:
    latencies = [ms for _, ms, _ in calls]
    if len(latencies) < 2:
        return {"calls": len(latencies)}
    q = statistics.quantiles(latencies, n=100)
    return {"calls": len(latencies), "p50_ms": round(q[49], 2), "p90_ms": round(q[89], 2),
            "p99_ms": round(q[98], 2),
            "max_ms": round(max(latencies), 1),
            "not_success": sum(result != cpb.SUCCESS for _, _, result in calls)}


def results(ports: list[int]) -> tuple[dict[str, float], dict[str, float]]:
    """The server's answers so far by result code, and its unary calls' answer latencies
    (cumulative count per bucket, as engine.web.series keeps them: `lat:<le>`), from its
    Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, float] = {}
    unary: dict[str, float] = {}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tollgate_requests_total":
                    result = sample.labels["result"]
                    out[result] = out.get(result, 0) + sample.value
                elif (sample.name == "tollgate_answer_seconds_bucket"
                      and sample.labels.get("api") == "unary"):
                    le = f"lat:{sample.labels['le']}"
                    unary[le] = unary.get(le, 0) + sample.value
    return out, unary


class Phase:
    """CPU of each process group and the server's batches over one phase."""

    def __init__(self, pids: dict[str, list[int]], metrics_ports: list[int]) -> None:
        self.cpu = CpuProbe(pids)
        self.ports = metrics_ports
        self.cpu.start()
        self.before = counters(metrics_ports)
        self.results, self.unary = results(metrics_ports)
        self.start = time.monotonic()

    def end(self) -> dict[str, Any]:
        after = counters(self.ports)
        batches = after["batches"] - self.before["batches"]
        answers = after["answers"] - self.before["answers"]
        now, unary = results(self.ports)
        by_result = {k: int(v - self.results.get(k, 0)) for k, v in now.items()
                     if v > self.results.get(k, 0)}
        # The normal client's calls as the server timed them, from the handler's start to
        # the answer: gRPC's own work before the handler starts is not in it.
        calls = {k: int(v - self.unary.get(k, 0)) for k, v in unary.items()}
        server = {f"p{round(q * 100)}_ms": round((quantile(calls, q) or math.nan) * 1000, 2)
                  for q in (0.5, 0.99)}
        return {"cpu_pct": self.cpu.stop(), "batches": int(batches), "results": by_result,
                "normal_in_server": server,
                "answers_per_s": round(answers / (time.monotonic() - self.start)),
                "mean_batch": round(answers / batches, 1) if batches else 0}


async def soak(address: str, pids: list[int], metrics_ports: list[int], redis_pids: list[int],
               opts: argparse.Namespace, control: Served | None = None) -> dict[str, Any]:
    """`pids`: the attacked server's (its RSS is the soak's); `control`: the server the
    normal client calls instead of it (--control)."""
    subs = [subscriber_id(PREFIX, n) for n in range(1, opts.accounts)]
    out: dict[str, Any] = {"streams": opts.streams, "seconds": opts.seconds,
                           "message": opts.message, "settings": opts.set,
                           "normal_rate": opts.normal_rate, "control": opts.control}
    ours, theirs = mp.Pipe()
    client = mp.get_context("spawn").Process(
        target=normal_process,
        args=(control.address if control else address, subscriber_id(PREFIX, 0),
              opts.normal_rate, theirs),
        daemon=True)
    client.start()
    assert client.pid is not None
    groups = {"server": pids, "redis": redis_pids, "normal client": [client.pid],
              "abusive clients": [psutil.Process().pid]}
    if control:
        groups["control server"] = control.pids
        metrics_ports = metrics_ports + control.metrics_ports
    await asyncio.sleep(2)  # the client process starts (its first calls are not counted)
    alone_start = time.monotonic()
    phase = Phase(groups, metrics_ports)
    await asyncio.sleep(opts.baseline)
    out["rss_baseline_mb"] = round(rss_mb(pids), 1)
    out["alone"] = phase.end()
    attack_start = time.monotonic()
    attack_stop = asyncio.Event()
    sent = [0]
    phase = Phase(groups, metrics_ports)
    attackers = [asyncio.create_task(abusive_stream(address, subs, opts.message, attack_stop,
                                                    sent)) for _ in range(opts.streams)]
    peak = 0.0
    while time.monotonic() - attack_start < opts.seconds:
        await asyncio.sleep(0.5)
        peak = max(peak, rss_mb(pids))
    attack_end = time.monotonic()
    out["attack"] = phase.end()
    attack_stop.set()
    out["stream_endings"] = await asyncio.gather(*attackers)
    out["abusive_requests_sent"] = sent[0]
    out["rss_peak_mb"] = round(peak, 1)
    await asyncio.sleep(opts.idle)
    out["rss_after_idle_mb"] = round(rss_mb(pids), 1)
    ours.send(None)
    calls: list[tuple[float, float, int]] = await asyncio.to_thread(ours.recv)
    client.join()
    out["normal_alone"] = percentiles([c for c in calls if alone_start <= c[0] < attack_start])
    out["normal_during_attack"] = percentiles([c for c in calls
                                               if attack_start <= c[0] < attack_end])
    out["rss_after_vs_baseline"] = round(out["rss_after_idle_mb"] / out["rss_baseline_mb"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--message", type=int, default=500, help="requests per message")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--normal-rate", type=float, default=200.0,
                        help="the normal client's calls a second (0: a closed loop of 4)")
    parser.add_argument("--baseline", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--control", action="store_true",
                        help="the normal client calls a second server process of its own (same "
                        "Redis) that no stream reaches: what the shared machine and Redis cost "
                        "it, whatever the attacked server does")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting other than its default (repeatable)")
    opts = parser.parse_args(argv)
    settings = dict(s.split("=", 1) for s in opts.set)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        with redis_backend(1, base) as (url, redis_pids):
            asyncio.run(provision(url, opts.accounts, PREFIX))
            with contextlib.ExitStack() as stack:
                served = stack.enter_context(workers(url, 1, base / "serve.log", settings))
                control = (stack.enter_context(workers(url, 1, base / "control.log", settings))
                           if opts.control else None)
                result = asyncio.run(soak(served.address, served.pids, served.metrics_ports,
                                          redis_pids, opts, control))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
