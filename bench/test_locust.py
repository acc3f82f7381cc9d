"""The Locust file runs: a short headless run of both gateway users against a real server."""

from __future__ import annotations

import asyncio
import json
import sys

from tollgate.engine.ops import population
from tollgate.engine.storage.store import Store
from tollgate.server import Tollgate


async def test_locust_headless_run(tollgate: Tollgate) -> None:
    store = Store(tollgate.config.redis_url, tollgate.config.partitions)
    try:
        await population.provision(store, 200)
    finally:
        await store.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", "bench/locustfile.py", "--headless",
        "--users", "6", "--spawn-rate", "6", "--run-time", "3s", "--host", tollgate.address,
        "--population", "200", "--think", "0.05", "--gateway-batch", "20",
        "--gateway-interval", "0.2", "--json", "--only-summary", "--stop-timeout", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    stats = {s["name"]: s for s in json.loads(out)}
    assert stats["Charge INITIAL"]["num_requests"] > 0
    assert stats["Charge UPDATE"]["num_requests"] > 0
    assert any(name.startswith("ChargeBatch") for name in stats)
    assert sum(s["num_failures"] for s in stats.values()) == 0


async def test_locust_without_the_population_stops_at_once_naming_the_command(
        tollgate: Tollgate) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", "bench/locustfile.py", "--headless",
        "--users", "2", "--spawn-rate", "2", "--run-time", "30s", "--host", tollgate.address,
        "--population", "200", "--only-summary", "--stop-timeout", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    started = asyncio.get_running_loop().time()
    _, err = await proc.communicate()
    assert proc.returncode != 0
    assert asyncio.get_running_loop().time() - started < 25  # not the 30 s of failures
    assert "run `tollgate bench provision --subscribers 200 --prefix bench-" in err.decode()
