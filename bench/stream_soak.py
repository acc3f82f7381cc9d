"""ChargeStream soak (issue 24): streams that send as fast as they can and never read their
answers must not grow the server's memory, and a normal client's latency must hold.

    .venv/bin/python -m bench.stream_soak [--streams 8] [--seconds 60] [--message 500]

Starts one redis-server and `tollgate serve` (one worker) as a child process, provisions
accounts, then: a normal client (unary Charge, 4 in flight) alone for --baseline seconds;
the same with --streams abusive ChargeStream calls for --seconds; then idle for --idle
seconds. Prints the server's RSS (baseline, peak, after) and the normal client's p50/p99 in
each phase as one JSON object. Not part of the test run (minutes, machine-dependent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench.scale import provision, redis_backend, workers
from engine.population import subscriber_id
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


async def normal_client(address: str, sub: str, stop: asyncio.Event,
                        latencies: list[float]) -> None:
    """Closed loop of 4 unary calls in flight; appends each call's latency (ms)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = charging_pb2_grpc.ChargingStub(channel)

        async def lane(k: int) -> None:
            n = 0
            while not stop.is_set():
                started = time.perf_counter()
                await stub.Charge(event(f"normal-{k}-{n}-{time.time_ns()}", sub))
                latencies.append((time.perf_counter() - started) * 1000)
                n += 1
        await asyncio.gather(*(lane(k) for k in range(4)))


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
        call.cancel()
        return "cancelled by the client"


def percentiles(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        return {"calls": len(latencies)}
    q = statistics.quantiles(latencies, n=100)
    return {"calls": len(latencies), "p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2)}


async def soak(address: str, pids: list[int], opts: argparse.Namespace) -> dict[str, Any]:
    subs = [subscriber_id(PREFIX, n) for n in range(1, opts.accounts)]
    normal = subscriber_id(PREFIX, 0)
    out: dict[str, Any] = {"streams": opts.streams, "seconds": opts.seconds,
                           "message": opts.message}
    stop = asyncio.Event()
    latencies: list[float] = []
    client = asyncio.create_task(normal_client(address, normal, stop, latencies))
    await asyncio.sleep(opts.baseline)
    out["rss_baseline_mb"] = round(rss_mb(pids), 1)
    out["normal_alone"] = percentiles(latencies)
    attack_start = len(latencies)
    attack_stop = asyncio.Event()
    sent = [0]
    attackers = [asyncio.create_task(abusive_stream(address, subs, opts.message, attack_stop,
                                                    sent)) for _ in range(opts.streams)]
    peak = 0.0
    started = time.monotonic()
    while time.monotonic() - started < opts.seconds:
        await asyncio.sleep(0.5)
        peak = max(peak, rss_mb(pids))
    during = latencies[attack_start:]
    attack_stop.set()
    out["stream_endings"] = await asyncio.gather(*attackers)
    out["abusive_requests_sent"] = sent[0]
    out["rss_peak_mb"] = round(peak, 1)
    out["normal_during_attack"] = percentiles(during)
    await asyncio.sleep(opts.idle)
    out["rss_after_idle_mb"] = round(rss_mb(pids), 1)
    stop.set()
    await client
    out["rss_after_vs_baseline"] = round(out["rss_after_idle_mb"] / out["rss_baseline_mb"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--message", type=int, default=500, help="requests per message")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--baseline", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=10.0)
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        with redis_backend(1, base) as (url, _):
            asyncio.run(provision(url, opts.accounts, PREFIX))
            with workers(url, 1, base / "serve.log") as served:
                result = asyncio.run(soak(served.address, served.pids, opts))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
