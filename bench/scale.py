"""Scale-out benchmark: charging throughput of `tollgate serve --workers N` for N in 1, 2, 4
on one redis-server and on a 3-master local Redis Cluster, as ratios against 1 worker on
one redis-server measured in the same run.

    .venv/bin/python -m bench.scale [--workers 1,2,4] [--masters 1,3] [--seconds 10]

The load: EVENT requests (one SMS each, a new session id each), ChargeBatch calls of
--batch requests, --concurrency calls in flight per load process, --clients processes,
over --accounts accounts. The load processes run on the same machine as the servers and
Redis (they share its cores), and Redis runs without AOF: this measures the engine's CPU
path, not a disk. Prints one line per setup and the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from engine.redis_client import connect
from engine.redis_cluster import LocalCluster
from engine.redis_server import RedisServer, die_with_parent, free_port
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc, provisioning_pb2_grpc
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

ROOT = Path(__file__).resolve().parents[1]
READY = "tollgate serving on"
SMS_RG = 200
PLAN = ppb.Plan(plan_id="bench", name="Bench", currency="EUR", rates=[
    ppb.Rate(rating_group=SMS_RG, unit_type=com.SERVICE_UNITS, price_micros=50_000,
             increment=1, default_quota=1)])


def sms_event(session_id: str, subscriber_id: str) -> cpb.ChargeRequest:
    return cpb.ChargeRequest(
        session_id=session_id, request_number=0, type=cpb.EVENT, subscriber_id=subscriber_id,
        units=[cpb.ServiceUnits(rating_group=SMS_RG, used=cpb.Units(service_units=1))])


@contextmanager
def redis_backend(masters: int, base: Path) -> Iterator[str]:
    """One redis-server (masters=1) or a local cluster of `masters` masters; its URL."""
    if masters == 1:
        server = RedisServer(base / "single", appendonly=False).start()
        try:
            yield server.url
        finally:
            server.stop()
    else:
        with LocalCluster(base / "cluster", masters=masters) as cluster:
            yield cluster.url


@contextmanager
def tollgate(url: str, workers: int, log: Path) -> Iterator[str]:
    """`tollgate serve --workers N` as a child process; its address once it serves."""
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(TOLLGATE_METRICS_PORT="0", TOLLGATE_LOG_LEVEL="WARNING")
    with log.open("w") as err:
        proc = subprocess.Popen(
            die_with_parent([sys.executable, "-m", "engine.cli", "serve", "--workers",
                             str(workers), "--listen", address, "--redis-url", url,
                             "--log-format", "text"]),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY):
                break
        else:
            raise RuntimeError(f"tollgate did not start: {log.read_text()[-2000:]}")
        yield address
    finally:
        proc.terminate()
        proc.wait(60)


async def provision(address: str, accounts: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = provisioning_pb2_grpc.ProvisioningStub(channel)
        await stub.PutPlan(PLAN)
        for a in range(accounts):
            await stub.CreateAccount(ppb.CreateAccountRequest(
                account_id=f"acct-{a}", plan_id="bench", initial_money_micros=10**12))
            await stub.CreateSubscriber(ppb.Subscriber(subscriber_id=f"sub-{a}",
                                                       account_id=f"acct-{a}"))


async def _load(address: str, client: int, accounts: int, batch: int, concurrency: int,
                start: float, end: float) -> tuple[int, int]:
    """Sends until `end`; counts the answers (and the SUCCESS ones) received in
    [start, end)."""
    counts = [0, 0]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = charging_pb2_grpc.ChargingStub(channel)

        async def lane(n: int) -> None:
            k = 0
            while time.time() < end:
                reqs = []
                for _ in range(batch):
                    a = (k * 7919 + n * 104729 + client) % accounts
                    reqs.append(sms_event(f"e{client}-{n}-{k}", f"sub-{a}"))
                    k += 1
                ans = await stub.ChargeBatch(cpb.ChargeBatchRequest(requests=reqs))
                if start <= time.time() < end:
                    counts[0] += len(ans.answers)
                    counts[1] += sum(a.result == cpb.SUCCESS for a in ans.answers)

        await asyncio.gather(*(lane(n) for n in range(concurrency)))
    return counts[0], counts[1]


def _load_process(args: tuple[str, int, int, int, int, float, float],
                  out: mp.Queue[tuple[int, int]]) -> None:
    out.put(asyncio.run(_load(*args)))


def measure(address: str, opts: argparse.Namespace) -> tuple[float, float]:
    """Answers per second and the share that succeeded, over --seconds after --warmup."""
    start = time.time() + opts.warmup
    end = start + opts.seconds
    out: mp.Queue[tuple[int, int]] = mp.Queue()
    procs = [mp.Process(target=_load_process, args=(
        (address, c, opts.accounts, opts.batch, opts.concurrency, start, end), out))
        for c in range(opts.clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=opts.warmup + opts.seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    answers = sum(r[0] for r in results)
    ok = sum(r[1] for r in results)
    return answers / opts.seconds, ok / answers if answers else 0.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    ap.add_argument("--masters", default="1,3",
                    help="1 = one redis-server, N = an N-master cluster (default 1,3)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per setup")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=2, help="load processes")
    ap.add_argument("--concurrency", type=int, default=8, help="calls in flight per process")
    ap.add_argument("--batch", type=int, default=50, help="requests per ChargeBatch call")
    ap.add_argument("--accounts", type=int, default=500)
    opts = ap.parse_args(argv)
    workers = [int(w) for w in opts.workers.split(",")]
    masters = [int(m) for m in opts.masters.split(",")]
    print(f"machine: {machine()}; load: {opts.clients} processes x {opts.concurrency} calls "
          f"x {opts.batch} events, {opts.seconds:g} s per setup", flush=True)
    baseline: float | None = None
    with tempfile.TemporaryDirectory(prefix="tollgate-scale-") as tmp:
        for m in masters:
            with redis_backend(m, Path(tmp) / f"m{m}") as url:
                for w in workers:
                    with tollgate(url, w, Path(tmp) / f"serve-{m}-{w}.log") as address:
                        asyncio.run(provision(address, opts.accounts))
                        rate, ok = measure(address, opts)
                    baseline = baseline or rate
                    kind = "1 redis-server" if m == 1 else f"{m}-master cluster"
                    print(f"{kind:>18}, {w} worker{'s' if w > 1 else ' '}: {rate:9.0f} "
                          f"answers/s ({ok:.1%} SUCCESS), x{rate / baseline:.2f}", flush=True)
                    _flush(url)
    return 0


def _flush(url: str) -> None:
    """Empties Redis between setups (a cluster client flushes every master)."""
    client = connect(url)
    client.flushall()
    client.close()


if __name__ == "__main__":
    sys.exit(main())
