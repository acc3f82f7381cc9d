"""Redis faults under load, against a real Tollgate and a real redis-server of the test's own:
killed with SIGKILL and restarted from its AOF (appendfsync always), paused (slow), and gone
(unreachable). Answered charges survive; in-flight requests get UNABLE_TO_COMPLY, never a
false SUCCESS; the server reconnects by itself; the queue stays bounded."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest
import redis

from tests.helpers import EUR, SMS_RG, mscc, request, running, sample_plan
from tests.integration.ledger import Tariff
from tests.reliability.faults import (
    UNABLE,
    FaultyTraffic,
    Lanes,
    Link,
    assert_books_balance,
    missing_records,
    setup_books,
    wait_until,
)
from tests.reliability.modes import scaled
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb

pytestmark = pytest.mark.slow

MONEY = 400 * EUR
DEADLINE_S = 1.5
SLACK_S = 1.5  # the event loop's own delays on a busy 2-core machine
PROBE = "probe-sub"


@pytest.fixture
def aof_redis(tmp_path: Path):
    """A redis-server that fsyncs its AOF before answering (nothing answered is lost)."""
    server = RedisServer(tmp_path / "aof", appendfsync="always", die_with_parent=False).start()
    yield server
    server.stop()


def fault_config(url: str, **kw: object) -> Config:
    return Config(listen="127.0.0.1:0", redis_url=url, partitions=8, batch_window_ms=0.5,
                  log_format="text", metrics_port=0, sweep_interval_s=0,
                  stream_trim_interval_s=0, redis_timeout_s=0.5,
                  request_deadline_s=DEADLINE_S).replace(**kw)


async def traffic_on(app: Tollgate, seed: int) -> tuple[FaultyTraffic, Link, list[str]]:
    link = Link([app.address], seed)
    plan = sample_plan("faults")
    subscribers = await setup_books(link.provisioning(), plan, MONEY)
    # Probes and bursts charge an account of their own, outside the traffic model.
    await link.provisioning().CreateAccount(ppb.CreateAccountRequest(
        account_id="probe", plan_id=plan.plan_id, initial_money_micros=MONEY))
    await link.provisioning().CreateSubscriber(ppb.Subscriber(subscriber_id=PROBE,
                                                              account_id="probe"))
    return FaultyTraffic(seed, subscribers, Tariff(plan)), link, sorted(set(subscribers.values()))


async def test_redis_killed_under_load_loses_no_answered_charge(aof_redis):
    async with Tollgate(fault_config(aof_redis.url)) as app:
        traffic, link, account_ids = await traffic_on(app, seed=17)
        lanes = Lanes(traffic, link)
        for _ in range(scaled(1, 5)):
            await lanes.after(150)
            await wait_until(lambda: link.inflight > 0, 10, "a batch in flight")
            aof_redis.kill()  # SIGKILL, in the middle of batches
            failed = link.stats["UNABLE_TO_COMPLY"]
            await wait_until(lambda f=failed: link.stats["UNABLE_TO_COMPLY"] > f, 10,
                             "in-flight requests to fail")
            await link.quiesce()
            # Unreachable: a clear answer, in time.
            started = time.monotonic()
            ans = await link.stub().Charge(cpb.ChargeRequest(
                session_id="probe", type=cpb.EVENT, subscriber_id=PROBE,
                units=[cpb.ServiceUnits(rating_group=SMS_RG, used=cpb.Units(service_units=1))]))
            assert ans.result == UNABLE and "storage" in ans.error_message, ans
            assert time.monotonic() - started < DEADLINE_S + SLACK_S
            aof_redis.start()  # same port, from the AOF
            # Every SUCCESS answered before the kill is in Redis after it.
            assert await missing_records(traffic, aof_redis.url) == []
            link.gate.set()  # the same server carries on: it reconnects by itself
        await lanes.finish(scaled(150, 1500))
        assert traffic.stats["retried UNABLE_TO_COMPLY"] > 0, traffic.stats
        assert link.errors == {}, link.errors  # errors came as answers, not dead calls
        await assert_books_balance(traffic, link, aof_redis.url, MONEY, account_ids)
        await link.close()


async def test_a_storage_failure_is_told_to_gateways_without_redis_internals(aof_redis, caplog):
    caplog.set_level(logging.WARNING, "tollgate.engine")
    async with running(fault_config(aof_redis.url)) as gw:
        [sub] = await gw.setup()
        aof_redis.kill()
        ans = await gw.charge(request("sms", 0, cpb.EVENT, sub,
                                      mscc(SMS_RG, used=1, field="service_units")))
        aof_redis.start()
    assert (ans.result, ans.error_message) == (UNABLE, "storage unavailable, retry"), ans
    logged = [r.getMessage() for r in caplog.records if r.name == "tollgate.engine"]
    assert any(f"127.0.0.1:{aof_redis.port}" in m for m in logged), logged


async def test_slow_redis_answers_within_the_deadline_and_the_queue_stays_bounded(aof_redis):
    cfg = fault_config(aof_redis.url, max_queue=40, max_batch=8)
    async with Tollgate(cfg) as app:
        traffic, link, account_ids = await traffic_on(app, seed=23)
        lanes = Lanes(traffic, link, n=2)
        await lanes.after(100)
        pauser = redis.Redis.from_url(aof_redis.url)
        pauser.execute_command("CLIENT", "PAUSE", int(DEADLINE_S * 2 * 1000), "ALL")
        # A burst while Redis is stuck: each call is answered within the deadline, and what
        # does not fit the queue is refused at once.
        sms = cpb.ServiceUnits(rating_group=SMS_RG, used=cpb.Units(service_units=1))

        async def one(n: int) -> tuple[float, object]:
            started = time.monotonic()
            try:
                ans = await link.stub().Charge(cpb.ChargeRequest(
                    session_id=f"burst-{n}", type=cpb.EVENT, subscriber_id=PROBE,
                    units=[sms]))
                return time.monotonic() - started, ans.result
            except grpc.aio.AioRpcError as e:
                return time.monotonic() - started, e
        results = await asyncio.gather(*(one(n) for n in range(100)))
        pauser.close()
        refused = [r for _, r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                               and "max_queue 40" in (e.details() or "") for e in refused)
        slowest = sorted(((t, n, r) for n, (t, r) in enumerate(results)), reverse=True)[:4]
        assert slowest[0][0] < DEADLINE_S + SLACK_S, slowest  # (seconds, call, result)
        assert {r for _, r in results if not isinstance(r, grpc.aio.AioRpcError)} <= {
            UNABLE, cpb.SUCCESS}
        assert app.engine is not None and app.engine.batcher.queued <= cfg.max_queue
        await lanes.finish(scaled(100, 3000))
        assert traffic.stats["retried UNABLE_TO_COMPLY"] > 0, traffic.stats
        await assert_books_balance(traffic, link, aof_redis.url, MONEY, account_ids)
        await link.close()
