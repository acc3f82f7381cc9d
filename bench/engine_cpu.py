"""The engine's CPU per request in process, without gRPC: provisioned subscribers, the bench
traffic through Engine.submit in batches, the process's CPU time (minus the traffic
generator's) and Redis's, per request. Runs one commit; to compare two, run it from a
worktree of each, alternately:

    python -m tollgate.bench.engine_cpu --batch 1000
    cd ../old && PYTHONPATH=.:proto python -m tollgate.bench.engine_cpu --batch 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from typing import Any

from tollgate.bench import stages as bench_stages
from tollgate.bench.traffic import Traffic
from tollgate.engine.charging.engine import Engine
from tollgate.engine.ops import population
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.engine.storage.store import Store
from tollgate.server import tune_gc
from tollgate.v1 import charging_pb2 as pb

WARM_BATCHES = 12


async def measure(subscribers: int, batch: int, requests: int, stages: bool = False
                  ) -> dict[str, Any]:
    """CPU per request of the engine (less the traffic generator's) and of Redis; with
    `stages`, also each stage's (bench.stages), timed over the same requests."""
    redis = RedisServer(tempfile.mkdtemp(prefix="tollgate-cpu-"), appendonly=False).start()
    try:
        config = Config(redis_url=redis.url).replace(max_batch=batch)
        store = Store(config.redis_url, config.partitions)
        await store.init()
        await population.provision(store, subscribers)
        engine = Engine(store, config)
        engine.start()
        tune_gc(config.gc_threshold)  # as the server does
        traffic = Traffic(subscribers, sessions=max(5000, batch))
        for _ in range(WARM_BATCHES):
            msgs = traffic.batch(batch)
            for m, a in zip(msgs, await engine.charge(msgs), strict=True):
                traffic.answered(m, a)
        info = await store.redis.info("cpu")
        redis_before = info["used_cpu_sys"] + info["used_cpu_user"]
        timed = (bench_stages.timing() if stages
                 else contextlib.nullcontext(bench_stages.Totals(float)))
        with timed as totals:
            start, outside, done = time.process_time(), 0.0, 0
            while done < requests:
                t = time.process_time()
                msgs = traffic.batch(batch)
                data = pb.ChargeBatchRequest(requests=msgs).SerializeToString()
                outside += time.process_time() - t
                answers = await (await engine.submit(data, engine.parse(data))).future
                t = time.process_time()
                for m, a in zip(msgs, answers, strict=True):
                    traffic.answered(m, pb.ChargeAnswer.FromString(a))
                outside += time.process_time() - t
                done += len(msgs)
            engine_s = time.process_time() - start - outside
        info = await store.redis.info("cpu")
        redis_s = info["used_cpu_sys"] + info["used_cpu_user"] - redis_before
        await engine.close()
        await store.close()
        out: dict[str, Any] = {"batch": batch, "requests": done,
                               "engine_us": 1e6 * engine_s / done,
                               "redis_us": 1e6 * redis_s / done}
        if stages:
            out["stages_us"] = dict(bench_stages.table(totals, done))
        return out
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage of the charging path (bench/stages.py)")
    args = parser.parse_args()
    out = asyncio.run(measure(args.subscribers, args.batch, args.requests, args.stages))
    for label, us in out.pop("stages_us", {}).items():
        print(f"{label:44s} {us:7.2f} µs/request")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
