"""Redis CPU per request of the apply step: engine-made batches of the traffic mix replayed
through Store.apply (bench.ceiling.apply_ceiling) on a redis-server of its own, Redis's
CPU read from INFO cpu before and after, and per command (calls, µs) per request from INFO
commandstats (commands inside the script count in both theirs and EVALSHA's). Prints one
JSON line.

It uses only what engine and bench held before packed sessions, so the same file measures an
older tree too: `PYTHONPATH=<tree> python bench/apply_cpu.py` (docs/performance.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from typing import Any

from tollgate.bench.ceiling import apply_ceiling, capture_writes, rebase
from tollgate.bench.traffic import Traffic
from tollgate.engine.ops import population
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_client import connect
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.engine.storage.store import Store, lua_source
from tollgate.engine.storage.writes import Writes


def _redis_cpu_s(url: str) -> float:
    client = connect(url)
    try:
        info: dict[str, Any] = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    finally:
        client.close()


def _commands(url: str) -> dict[str, tuple[int, int]]:
    """Per command: (calls, µs) so far (INFO commandstats)."""
    client = connect(url)
    try:
        stats: dict[str, Any] = client.info("commandstats")
        return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                for k, v in stats.items()}
    finally:
        client.close()


async def variants(url: str, recorded: list[Writes], rounds: int = 3) -> dict[str, Any]:
    """Redis CPU per request of the same calls run by cut-down scripts: `empty` (Redis reading
    the call and its arguments into Lua), `pass1` (apply.lua's checks, no write) and `full`;
    each with the commands its script called per request (INFO commandstats), which shows
    that it ran."""
    source = lua_source("apply")
    scripts = {"empty": "return {}",
               "pass1": source[:source.index("-- Pass 2")] + "return conflicts\n",
               "full": source}
    store = Store(url, 8)
    requests = rounds * sum(len(writes.sessions) for writes in recorded)
    out: dict[str, Any] = {}
    try:
        for name, text in scripts.items():
            store.use_apply_script(text)
            spent, calls = 0.0, Counter[str]()
            for _ in range(rounds):
                await rebase(store, recorded)
                cpu0, commands0 = _redis_cpu_s(url), _commands(url)
                for writes in recorded:
                    await store.apply_writes(writes, 3_600_000)
                spent += _redis_cpu_s(url) - cpu0
                calls.update({command: n - commands0.get(command, (0, 0))[0]
                              for command, (n, _) in _commands(url).items()})
            out[name] = {"redis_us": round(spent * 1e6 / requests, 2),
                         "calls_per_request": {command: round(n / requests, 3)
                                               for command, n in sorted(calls.items())
                                               if n > 0 and command != "info"}}
    finally:
        await store.close()
    return out


async def measure(url: str, batch: int, subscribers: int, seconds: float,
                  with_variants: bool = False) -> dict[str, Any]:
    config = Config(listen="127.0.0.1:0", redis_url=url, partitions=8, batch_window_ms=0.5,
                    log_format="text", metrics_port=0)
    store = Store(url, config.partitions)
    await store.init()
    await population.provision(store, subscribers)
    await store.close()
    recorded = await capture_writes(config, Traffic(subscribers, sessions=batch), batch,
                                    warmup=3, batches=4)
    cpu0, t0, cmd0 = _redis_cpu_s(url), time.perf_counter(), _commands(url)
    ceiling = await apply_ceiling(config, recorded, seconds)
    cpu1, wall, cmd1 = _redis_cpu_s(url), time.perf_counter() - t0, _commands(url)
    requests = ceiling.batches * ceiling.requests_per_batch
    per_request = {name: (round((calls - cmd0.get(name, (0, 0))[0]) / requests, 3),
                          round((usec - cmd0.get(name, (0, 0))[1]) / requests, 2))
                   for name, (calls, usec) in cmd1.items()
                   if calls > cmd0.get(name, (0, 0))[0]}
    return {"requests_per_s": round(ceiling.requests_per_s),
            "batch_ms_p50": round(ceiling.batch_ms_p50, 2),
            "redis_us_per_request": round((cpu1 - cpu0) * 1e6 / requests, 2),
            "redis_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
            "requests": int(requests), "refused": ceiling.refused,
            "commands_per_request": per_request,
            **({"script_variants": await variants(url, recorded)} if with_variants else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--subscribers", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--variants", action="store_true",
                   help="also the Redis CPU of cut-down apply scripts (where the time goes)")
    p.add_argument("--aof", action="store_true",
                   help="Redis with its append-only file (everysec), as Tollgate runs it: the "
                        "log's own cost is the difference")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, appendonly=args.aof).start()
        try:
            out = asyncio.run(measure(server.url, args.batch, args.subscribers, args.seconds,
                                      args.variants))
        finally:
            server.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
