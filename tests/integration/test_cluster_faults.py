"""Redis Cluster under change while charging traffic runs: slots move between masters
(resharding) and a master fails over to its replica. Conservation and exactly-once hold:
every answered charge is in the records and balances once, nothing else is.

These run on a cluster of their own (they move slots and kill nodes), so they are not
parametrized over the single server: there is nothing to reshard or fail over there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.crc import key_slot

from tests.helpers import EUR, running, sample_plan
from tests.integration.ledger import (
    Send,
    Tariff,
    Traffic,
    check_books,
    get_accounts,
    money_only,
    provision,
    run_lane,
    summary,
    usage_records,
)
from tollgate.engine.billing.reconcile import reconcile
from tollgate.engine.ops import metrics
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect
from tollgate.engine.storage.redis_cluster import LocalCluster
from tollgate.v1 import charging_pb2 as cpb

PARTITIONS = 8


def cluster_config(cluster: LocalCluster, **kw: object) -> Config:
    return Config(listen="127.0.0.1:0", redis_url=cluster.url, partitions=PARTITIONS,
                  batch_window_ms=0.5, log_format="text", metrics_port=0, sweep_interval_s=0,
                  **kw)  # type: ignore[arg-type]


def backing_off(send: Send) -> Send:
    """A gateway pauses a little before sending again what was answered UNABLE_TO_COMPLY."""
    async def call(reqs: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        answers = await send(reqs)
        if any(a.result == cpb.UNABLE_TO_COMPLY for a in answers):
            await asyncio.sleep(0.05)
        return answers
    return call


def slot_of(p: int) -> int:
    return key_slot(keys.usage_stream(p).encode())


def resent() -> float:
    return metrics.REDIRECTS._value.get()


async def traffic_during(cluster: LocalCluster, config: Config, fault: Callable[[], object],
                         seed: int) -> tuple[Traffic, list[str], dict, list]:
    """Charging lanes that keep starting sessions until `fault` (run in a thread) is over
    and a little after; returns the traffic and the books."""
    async with running(config) as gw:
        plan = money_only(sample_plan(), "cash")
        subscribers = await provision(gw.provisioning, plan, accounts=12,
                                      subscribers_per_account=2, money=500 * EUR,
                                      credit_limit=0)
        account_ids = sorted(set(subscribers.values()))
        # Gateways send again what was answered UNABLE_TO_COMPLY (a batch that met the
        # fault); that resend must be answered from the stored answer if the first send was
        # applied. Extra retransmissions stay off: the model cannot pair them with a
        # first answer that was UNABLE_TO_COMPLY.
        traffic = Traffic(seed, subscribers, Tariff(plan), overage=True, max_retries=1000,
                          retransmit=False, retry_codes=frozenset({cpb.UNABLE_TO_COMPLY}))
        done = asyncio.Event()

        async def lane(n: int) -> None:
            rounds = 0
            while not done.is_set() or rounds < 2:
                await run_lane(traffic, backing_off(gw.batch), f"lane{n}.{rounds}", 12, 6)
                rounds += 1

        async def inject() -> None:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(fault)
            finally:
                done.set()

        await asyncio.gather(inject(), *(lane(n) for n in range(4)))
        accounts = await get_accounts(gw.provisioning, account_ids)
    records = await usage_records(config.redis_url)
    return traffic, account_ids, accounts, records


@pytest.mark.slow
async def test_resharding_while_charging_keeps_the_books(tmp_path: Path):
    with LocalCluster(tmp_path / "cluster", masters=3) as cluster:
        config = cluster_config(cluster)
        moved: list[int] = []

        def reshard() -> None:
            # Every partition's slot moves to the next master, a few keys at a time with
            # pauses, so requests meet the slot half moved (ASK, TRYAGAIN) and moved (MOVED).
            masters = cluster.masters()
            for _ in range(2):
                for p in range(PARTITIONS):
                    owner = cluster.owner(slot_of(p))
                    to = masters[(masters.index(owner) + 1) % len(masters)]
                    moved.append(cluster.move_slot(slot_of(p), to, batch=3, pause_s=0.01))

        before = resent()
        traffic, account_ids, accounts, records = await traffic_during(
            cluster, config, reshard, seed=31)
        info = summary(traffic, accounts)
        problems = check_books(traffic, accounts, dict.fromkeys(account_ids, 500 * EUR),
                               records, dict.fromkeys(account_ids, 0))
        assert not problems, "\n".join(problems[:25]) + "\n" + info
        assert sum(moved) > 60, moved  # the slots held data (accounts, sessions, streams)
        assert resent() > before, "no apply met a moving slot"
        assert len(traffic.answers) > 100, info
        report = await asyncio.to_thread(reconcile, cluster.url, progress=False)
        assert report.ok, report.lines()


@pytest.mark.slow
async def test_a_killed_master_fails_over_without_losing_an_answered_charge(tmp_path: Path):
    """With redis_wait_replicas=1, a charge is answered only once the replica has it, so
    killing the master (SIGKILL, no goodbye) loses nothing that was answered. The promoted
    replica has no replica of its own until the dead node comes back (as its replica): until
    then its partitions answer UNABLE_TO_COMPLY (the price of WAIT), and gateways retry."""
    with LocalCluster(tmp_path / "cluster", masters=3, replicas=1) as cluster:
        config = cluster_config(cluster, redis_wait_replicas=1, redis_wait_timeout_ms=2000,
                                redis_timeout_s=10.0)
        p = keys.partition_of("acct-0", PARTITIONS)
        victim = cluster.owner(slot_of(p))
        replica = cluster.replicas_of(victim)[0]
        promoted_ms: list[int] = []

        def kill_master() -> None:
            cluster.kill(victim)
            cluster.wait_promoted(replica)
            promoted_ms.append(int(time.time() * 1000))
            time.sleep(0.5)  # traffic meets the new master without a replica (WAIT fails)
            cluster.restart(victim)
            time.sleep(1.0)  # and with its replica back

        traffic, account_ids, accounts, records = await traffic_during(
            cluster, config, kill_master, seed=41)
        assert cluster.owner(slot_of(p)) == replica
        assert cluster.replicas_of(replica) == [victim]
        info = summary(traffic, accounts)
        problems = check_books(traffic, accounts, dict.fromkeys(account_ids, 500 * EUR),
                               records, dict.fromkeys(account_ids, 0))
        assert not problems, "\n".join(problems[:25]) + "\n" + info
        # The promoted master took charges: records it wrote after the takeover (the books
        # above hold the ones from before, which its replica had to have).
        db = connect(cluster.url)
        after = sum(len(db.xrange(keys.usage_stream(q), min=str(promoted_ms[0])))
                    for q in range(PARTITIONS) if cluster.owner(slot_of(q)) == replica)
        db.close()
        assert after, info
        assert len(traffic.answers) > 100, info


@pytest.mark.slow
async def test_a_manual_failover_while_charging_keeps_the_books(tmp_path: Path):
    """CLUSTER FAILOVER (the replica catches up first): no WAIT needed to lose nothing."""
    with LocalCluster(tmp_path / "cluster", masters=3, replicas=1) as cluster:
        config = cluster_config(cluster)
        victim = cluster.owner(slot_of(1))
        replica = cluster.replicas_of(victim)[0]
        traffic, account_ids, accounts, records = await traffic_during(
            cluster, config, lambda: cluster.failover(replica), seed=51)
        assert cluster.owner(slot_of(1)) == replica
        problems = check_books(traffic, accounts, dict.fromkeys(account_ids, 500 * EUR),
                               records, dict.fromkeys(account_ids, 0))
        assert not problems, "\n".join(problems[:25]) + "\n" + summary(traffic, accounts)
