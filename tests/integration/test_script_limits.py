"""No Lua script fails after its first write (Redis keeps what a script wrote before an
error): a batch of one shared account with thousands of members is applied whole, and a
top-up whose running total would pass int64 is refused before anything is credited."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.helpers import EUR, SMS_RG, mscc, request, sample_plan, usage_records
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import Store
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

MEMBERS = 5000
SMS_PRICE = 50_000  # sample_plan's SMS price per unit
INT64_MAX = 2**63 - 1


@pytest.fixture
def config(config: Config) -> Config:
    """The whole ChargeBatch in one micro-batch, so one account write carries every member."""
    return config.replace(max_batch=2 * MEMBERS)


async def _add_members(store: Store, account_id: str, n: int) -> list[str]:
    """AddMember's store path (the gRPC answer lists every member: 5 000 of them would make
    the arranging quadratic)."""
    members = [f"member-{m}" for m in range(n)]
    for start in range(0, n, 32):  # a few calls in flight at a time (the pool is bounded)
        await asyncio.gather(*(store.add_member(account_id, sub, 0, [0, 0, 0])
                               for sub in members[start:start + 32]))
    return members


async def test_a_batch_of_5000_members_of_one_account_is_charged_whole(tollgate, gateway, db,
                                                                     config):
    await gateway.setup(money=1000 * EUR, subscribers_per_account=0)
    members = await _add_members(tollgate.store, "acct-0", MEMBERS)
    before = await gateway.account("acct-0")

    answers = await gateway.batch([
        request(f"sms-{sub}", 0, cpb.EVENT, sub, mscc(SMS_RG, used=1, field="service_units"))
        for sub in members])

    assert [a.result for a in answers] == [cpb.SUCCESS] * MEMBERS
    after = await gateway.account("acct-0")
    records = await usage_records(db, config)
    assert len(records) == MEMBERS
    assert sum(r.money_micros for r in records) == MEMBERS * SMS_PRICE
    assert before.money_micros - after.money_micros == MEMBERS * SMS_PRICE
    assert sum(m.used.money_micros for m in after.members) == MEMBERS * SMS_PRICE


async def test_a_top_up_past_the_int64_running_total_is_refused_and_changes_nothing(gateway,
                                                                                   db, config):
    """Money spent (an add-on here) keeps the balance under the running total of top-ups,
    so the total reaches int64's limit first."""
    step = 2**60  # the largest top-up and add-on price
    plan = sample_plan()
    plan.addons.add(addon_id="big", price_micros=step,
                     bundle=ppb.BundleTemplate(bucket_id="big", rating_groups=[SMS_RG],
                                               unit_type=com.SERVICE_UNITS, units=1))
    await gateway.setup(plan=plan, money=0)
    for n in range(7):
        await gateway.provisioning.TopUp(ppb.TopUpRequest(
            topup_id=f"t-{n}", account_id="acct-0", amount_micros=step))
    await gateway.provisioning.BuyAddOn(ppb.BuyAddOnRequest(
        order_id="o-1", account_id="acct-0", addon_id="big"))
    before = await gateway.account("acct-0")
    records = len(await db.xrange(_usage_key(config)))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.provisioning.TopUp(ppb.TopUpRequest(
            topup_id="t-last", account_id="acct-0", amount_micros=step))

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "int64" in (refused.value.details() or "")
    assert await gateway.account("acct-0") == before
    assert len(await db.xrange(_usage_key(config))) == records
    assert int(await db.hget(_account_key(config), "topups")) == 7 * step <= INT64_MAX


def _usage_key(config) -> str:
    return keys.usage_stream(keys.partition_of("acct-0", config.partitions))


def _account_key(config) -> str:
    return keys.account(keys.partition_of("acct-0", config.partitions), "acct-0")
