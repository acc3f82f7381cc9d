"""Bulk provisioning for load tests: same account layout as CreateAccount, chargeable at once."""

from __future__ import annotations

from tests.helpers import Gateway, mscc, request
from tollgate.engine.ops import population
from tollgate.engine.storage.store import Store
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb


async def test_bulk_accounts_match_create_account_and_charge(tollgate: Tollgate,
                                                             gateway: Gateway) -> None:
    store = Store(tollgate.config.redis_url, tollgate.config.partitions)
    seen: list[int] = []
    try:
        done = await population.provision(store, 5, prefix="t-", money=7_000_000,
                                          progress=seen.append)
        again = await population.provision(store, 6, prefix="t-", money=7_000_000)
    finally:
        await store.close()
    assert (done.subscribers, done.created, sum(seen)) == (5, 10, 5)
    assert again.created == 2  # only the sixth account and subscriber are new

    made = await gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="by-rpc", plan_id=population.BENCH_PLAN.plan_id,
        initial_money_micros=7_000_000))
    bulk = await gateway.account(population.account_id("t-", 3))
    for msg in (made, bulk):
        msg.ClearField("account_id")
        msg.ClearField("partition")
        for b in msg.buckets:
            b.ClearField("expiry_ms")
    made.ClearField("cycle_start_ms")
    made.ClearField("cycle_end_ms")
    assert bulk.cycle_end_ms > bulk.cycle_start_ms > 0
    bulk.ClearField("cycle_start_ms")
    bulk.ClearField("cycle_end_ms")
    assert bulk == made

    sub = await gateway.provisioning.GetSubscriber(
        ppb.GetSubscriberRequest(subscriber_id=population.subscriber_id("t-", 5)))
    assert sub.account_id == population.account_id("t-", 5)
    ans = await gateway.charge(request("s1", 0, cpb.INITIAL, sub.subscriber_id,
                                       mscc(10, want=0)))
    assert ans.result == cpb.SUCCESS and ans.grants[0].granted.total_octets > 0
