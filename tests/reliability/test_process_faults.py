"""Faults of whole processes: two `tollgate serve` children on one redis-server of the test's
own (AOF, appendfsync always), a gateway link that retransmits what got no answer.

- a server SIGKILLed mid-batch and restarted: the retransmissions are charged once;
- a retransmission storm: every request three times, shuffled, across both servers;
- chaos: Redis killed and restarted, a server killed and restarted, Redis paused, and a storm,
  in sequence against one traffic stream, ending with `tollgate reconcile` at zero.

Each test books its own accounts (a prefix) on the shared Redis; the books of all of them must
balance at every end. TOLLGATE_LONG=1 runs longer traffic and more rounds of faults.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
import redis

from tests.helpers import EUR, sample_plan
from tests.integration.ledger import Tariff
from tests.processes import ROOT, ServerProcess
from tests.reliability.faults import (
    FaultyTraffic,
    Lanes,
    Link,
    assert_books_balance,
    missing_records,
    setup_books,
    wait_until,
)
from tests.reliability.modes import LONG, scaled
from tollgate.engine.storage.redis_server import RedisServer

pytestmark = pytest.mark.slow

MONEY = 400 * EUR
SERVER_ENV = {"TOLLGATE_REQUEST_DEADLINE_S": "1.5", "TOLLGATE_REDIS_TIMEOUT_S": "0.5",
              "TOLLGATE_METRICS_PORT": "0", "TOLLGATE_PARTITIONS": "8"}


@dataclass
class Cluster:
    redis: RedisServer
    servers: list[ServerProcess]

    @property
    def url(self) -> str:
        return self.redis.url

    async def restart_server(self, n: int) -> None:
        self.servers[n].kill()  # SIGKILL
        self.servers[n].start()
        await asyncio.to_thread(self.servers[n].wait_ready)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("process-faults")
    store = RedisServer(tmp / "aof", appendfsync="always", die_with_parent=False).start()
    servers = [ServerProcess(store.url, tmp / f"server-{n}.log", SERVER_ENV) for n in (0, 1)]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        yield Cluster(store, servers)
    finally:
        codes = [s.stop() for s in servers]
        store.stop()
    logs = "\n".join(f"--- {s.address}\n{s.log_path.read_text()[-3000:]}" for s in servers)
    assert codes == [0, 0], f"exit codes {codes} after SIGTERM\n{logs}"


_prefixes = itertools.count()


async def start_traffic(cluster: Cluster, seed: int
                        ) -> tuple[FaultyTraffic, Link, list[str]]:
    prefix = f"t{next(_prefixes)}-"
    link = Link([s.address for s in cluster.servers], seed)
    plan = sample_plan("faults")
    subscribers = await setup_books(link.provisioning(), plan, MONEY, prefix=prefix)
    traffic = FaultyTraffic(seed, subscribers, Tariff(plan), prefix=prefix)
    return traffic, link, sorted(set(subscribers.values()))


async def kill_server_mid_batch(cluster: Cluster, link: Link, n: int) -> None:
    await wait_until(lambda: link.inflight > 0, 10, "a batch in flight")
    errors = link.errors["UNAVAILABLE"]
    await cluster.restart_server(n)
    assert link.errors["UNAVAILABLE"] > errors  # the in-flight call died with the server


async def kill_redis(cluster: Cluster, link: Link, traffic: FaultyTraffic) -> None:
    await wait_until(lambda: link.inflight > 0, 10, "a batch in flight")
    cluster.redis.kill()  # SIGKILL
    await asyncio.sleep(0.3)  # requests meet the dead Redis
    await link.quiesce()
    cluster.redis.start()  # same port, from its AOF
    assert await missing_records(traffic, cluster.url) == []
    link.gate.set()


def pause_redis(cluster: Cluster, ms: int) -> None:
    client = redis.Redis.from_url(cluster.url)
    client.execute_command("CLIENT", "PAUSE", ms, "ALL")
    client.close()


async def test_a_server_killed_mid_batch_charges_retransmissions_once(cluster):
    traffic, link, account_ids = await start_traffic(cluster, seed=31)
    lanes = Lanes(traffic, link)
    for n in range(scaled(1, 4)):
        await lanes.after(150)
        await kill_server_mid_batch(cluster, link, n % 2)
    await lanes.finish(scaled(100, 1000))
    assert link.errors["UNAVAILABLE"] > 0
    await assert_books_balance(traffic, link, cluster.url, MONEY, account_ids)
    await link.close()


async def test_a_retransmission_storm_across_two_servers_charges_once(cluster):
    traffic, link, account_ids = await start_traffic(cluster, seed=37)
    link.storm = True
    await Lanes(traffic, link).finish(scaled(400, 8000))
    assert link.stats["storm copies"] > 1000, link.stats
    await assert_books_balance(traffic, link, cluster.url, MONEY, account_ids)
    await link.close()


async def test_chaos_one_traffic_stream_through_every_fault_reconciles_to_zero(cluster):
    traffic, link, account_ids = await start_traffic(cluster, seed=41)
    lanes = Lanes(traffic, link, n=4)
    for round_ in range(scaled(1, 6)):
        await lanes.after(100)
        await kill_redis(cluster, link, traffic)
        await lanes.after(100)
        await kill_server_mid_batch(cluster, link, round_ % 2)
        await lanes.after(100)
        pause_redis(cluster, 2500)  # slow: longer than the request deadline
        await lanes.after(100)
        link.storm = True
        await lanes.after(200)
        link.storm = False
    await lanes.finish(scaled(100, 1000))
    await assert_books_balance(traffic, link, cluster.url, MONEY, account_ids)
    # ... and the CLI says so too.
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tollgate", "reconcile", "--redis-url",
                         cluster.url, "--no-progress"], cwd=ROOT, capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 discrepancies" in done.stdout, done.stdout
    for what in ("retried UNABLE_TO_COMPLY",):
        assert traffic.stats[what] > 0, traffic.stats
    assert link.errors["UNAVAILABLE"] > 0 and link.stats["storm copies"] > 0
    if LONG:
        print(f"chaos: {len(traffic.answers)} requests answered over {scaled(1, 6)} rounds")
    await link.close()




def test_a_killed_server_takes_its_embedded_redis_with_it(tmp_path) -> None:
    """No orphan redis-server keeps the data folder's AOF and port after a crash."""
    server = ServerProcess("", tmp_path / "serve.log",
                           args=("--data-dir", str(tmp_path / "data"))).start()
    try:
        server.wait_ready()
        assert server.proc is not None
        [embedded] = psutil.Process(server.proc.pid).children()
        assert embedded.name() == "redis-server"
    finally:
        server.kill()  # SIGKILL: no shutdown code runs
    embedded.wait(timeout=10)  # psutil.TimeoutExpired if it outlives the server
    assert not embedded.is_running()
