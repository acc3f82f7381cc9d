"""What the web pages cost (issue 22): charging throughput of a `tollgate serve --http` process
with and without two live dashboards open (rounds alternate, ratio to the same run's
baseline), the dashboard's full load time with an hour of series, and the background census
over the provisioned base. `python -m tollgate.bench.web_dashboards [--population N]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tollgate.bench.loadgen import Client, CpuProbe, spawn
from tollgate.bench.traffic import Traffic
from tollgate.engine.ops.population import provision
from tollgate.engine.storage.redis_server import RedisServer, free_port
from tollgate.engine.storage.store import Store
from tollgate.engine.web.aggregates import census
from tollgate.engine.web.series import BUCKET_S, HISTORY_S, KEPT_S, bucket_key, bucket_start

PARTITIONS = 64


async def _dashboard(url: str) -> None:
    """One open dashboard: the full load, then its live updates until cancelled."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        (await client.get("/api/dashboard")).raise_for_status()
        async with client.stream("GET", "/api/dashboard/stream") as stream:
            async for _ in stream.aiter_lines():
                pass


async def _fill_hour(store: Store) -> None:
    """An hour of 10-second points with the fields a busy installation writes."""
    now = time.time()
    fields = {**{f"req:{r}": 5000 for r in ("success", "credit_limit_reached",
                                            "end_user_service_denied")},
              **{f"lat:{le}": 4000 for le in ("0.0005", "0.001", "0.0025", "0.005", "0.01",
                                              "0.025", "+Inf")},
              **{f"ntf:{c}:{o}": 10 for c in ("webhook", "sms", "email")
                 for o in ("queued", "sent", "deferred", "failed", "dead")},
              **{f"ev:{k}": 50 for k in ("BUCKET_USED", "LOW_BALANCE", "TOPPED_UP",
                                          "CREDIT_EXHAUSTED", "STATE_CHANGED")},
              "money:usage": 10**9, "money:top_up": 10**8, "records:usage": 5000}
    pipe = store.redis.pipeline(transaction=False)
    for start in range(bucket_start(now) - HISTORY_S, bucket_start(now) + 1, BUCKET_S):
        pipe.hset(bucket_key(start), mapping=fields)  # type: ignore[arg-type]
        pipe.expire(bucket_key(start), KEPT_S)
    await pipe.execute()


async def run(population: int, seconds: float, rounds: int, out: Path | None) -> str:
    base = Path(tempfile.mkdtemp(prefix="tollgate-web-bench-"))
    redis = RedisServer(base / "redis", appendonly=False).start()
    lines = []
    try:
        store = Store(redis.url, PARTITIONS)
        await store.init()
        t = time.perf_counter()
        await provision(store, population)
        lines.append(f"population: {population:,} lines provisioned in "
                     f"{time.perf_counter() - t:.0f} s")
        http = f"127.0.0.1:{free_port()}"
        server = spawn(["-m", "tollgate", "serve", "--listen", f"127.0.0.1:{free_port()}",
                        "--redis-url", redis.url, "--http", http],
                       {"TOLLGATE_METRICS_PORT": "0", "TOLLGATE_LOG_LEVEL": "WARNING",
                        "TOLLGATE_HTTP_CENSUS_S": "0"}, base / "server.log")
        url = f"http://{http}"
        try:
            client = Client(server.address, Traffic(population), CpuProbe({"server": [
                server.pid]}), progress=False)
            await client.wait_ready()
            await client.run("engine", "batch", 3, concurrency=4, batch=100)  # warm-up
            rates: dict[int, list[float]] = {0: [], 2: []}
            for _ in range(rounds):
                for open_ in (0, 2):
                    tasks = [asyncio.create_task(_dashboard(url)) for _ in range(open_)]
                    await asyncio.sleep(0.5 if open_ else 0)
                    r = await client.run("engine", "batch", seconds, concurrency=4, batch=100)
                    for task in tasks:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                            await task
                    rates[open_].append(r.throughput)
            await client.close()
            ratios = [b / a for a, b in zip(rates[0], rates[2], strict=True)]
            lines.append(f"charging (ChargeBatch of 100, 4 in flight, {seconds:.0f} s rounds, "
                         f"alternating): no dashboard {', '.join(f'{x:,.0f}' for x in rates[0])}"
                         f" req/s; two dashboards {', '.join(f'{x:,.0f}' for x in rates[2])} "
                         f"req/s; ratio per round {', '.join(f'{x:.3f}' for x in ratios)}, "
                         f"median {statistics.median(ratios):.3f}")
            await _fill_hour(store)
            loads = []
            async with httpx.AsyncClient(base_url=url, timeout=30) as web:
                for _ in range(20):
                    t = time.perf_counter()
                    (await web.get("/api/dashboard")).raise_for_status()
                    loads.append((time.perf_counter() - t) * 1000)
            lines.append(f"dashboard full load (an hour of 10 s points, {population:,} lines): "
                         f"median {statistics.median(loads):.1f} ms, max {max(loads):.1f} ms "
                         f"over 20 loads")
        finally:
            server.stop()
        t = time.perf_counter()
        counts = await census(store, int(time.time() * 1000))
        took = time.perf_counter() - t
        lines.append(f"census (background, never on a page load) of {sum(counts.values()):,} "
                     f"lines: {took:.1f} s ({took / max(1, population) * 1e6:.1f} µs a line)")
        await store.close()
    finally:
        redis.stop()
    text = "\n".join(lines)
    if out is not None:
        out.write_text(text + "\n")
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--population", type=int, default=200_000)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    print(asyncio.run(run(args.population, args.seconds, args.rounds, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
