"""The Provisioning service: plans, accounts, subscribers, top-ups, over a real gRPC channel."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from tests.helpers import (
    DATA_RG,
    EUR,
    MB,
    SMS_RG,
    VOICE_RG,
    mscc,
    request,
    running,
    sample_plan,
)
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.keys import partition_of
from tollgate.engine.storage.store import Store
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb
from tollgate.v1 import usage_pb2

# --- helpers --------------------------------------------------------------------------------


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def usage_records(config: Config) -> list[usage_pb2.RatedUsage]:
    store = Store(config.redis_url, config.partitions)
    try:
        return [r for p in range(config.partitions) for _, r in await store.usage_records(p)]
    finally:
        await store.close()



def sms_price(plan: ppb.Plan) -> int:
    [rate] = [r for r in plan.rates if r.rating_group == SMS_RG]
    return rate.price_micros


def with_sms_price(price: int) -> ppb.Plan:
    plan = sample_plan()
    for r in plan.rates:
        if r.rating_group == SMS_RG:
            r.price_micros = price
    return plan


def top_up(topup_id: str, amount: int, account_id: str = "acct-0") -> ppb.TopUpRequest:
    return ppb.TopUpRequest(topup_id=topup_id, account_id=account_id, amount_micros=amount)


# --- plans ----------------------------------------------------------------------------------


async def test_put_plan_stores_numbered_versions(gateway):
    first = await gateway.provisioning.PutPlan(sample_plan())
    second = await gateway.provisioning.PutPlan(with_sms_price(80_000))

    assert (first.plan_id, first.version) == ("basic", 1)
    assert (second.plan_id, second.version) == ("basic", 2)
    assert sms_price(first) == 50_000
    assert sms_price(second) == 80_000


async def test_get_plan_version_zero_returns_the_current_version(gateway):
    await gateway.provisioning.PutPlan(sample_plan())
    await gateway.provisioning.PutPlan(with_sms_price(80_000))

    current = await gateway.provisioning.GetPlan(ppb.GetPlanRequest(plan_id="basic"))

    assert current.version == 2
    assert sms_price(current) == 80_000
    assert len(current.rates) == 4
    assert [(b.bucket_id, b.units) for b in current.bundles] == [("data-100mb", 100 * MB)]


async def test_get_plan_with_an_explicit_version_returns_that_old_version(gateway):
    await gateway.provisioning.PutPlan(sample_plan())
    await gateway.provisioning.PutPlan(with_sms_price(80_000))

    old = await gateway.provisioning.GetPlan(ppb.GetPlanRequest(plan_id="basic", version=1))

    assert old.version == 1
    assert sms_price(old) == 50_000


async def test_get_plan_that_does_not_exist_is_not_found(gateway):
    await gateway.provisioning.PutPlan(sample_plan())

    missing = await rpc_error(gateway.provisioning.GetPlan(ppb.GetPlanRequest(plan_id="gold")))
    no_version = await rpc_error(gateway.provisioning.GetPlan(
        ppb.GetPlanRequest(plan_id="basic", version=7)))

    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "gold" in missing.details()
    assert no_version.code() == grpc.StatusCode.NOT_FOUND


def _bad_increment(p: ppb.Plan) -> None:
    p.rates[0].increment = 0


def _negative_price(p: ppb.Plan) -> None:
    p.rates[1].price_micros = -1


def _no_quota(p: ppb.Plan) -> None:
    p.rates[2].default_quota = 0


def _no_unit_type(p: ppb.Plan) -> None:
    p.rates[0].unit_type = com.UNIT_TYPE_UNSPECIFIED


def _priced_twice(p: ppb.Plan) -> None:
    p.rates.append(ppb.Rate(rating_group=SMS_RG, unit_type=com.SERVICE_UNITS, price_micros=1,
                            increment=1, default_quota=1))


def _threshold(p: ppb.Plan) -> None:
    p.rates[0].threshold_percent = 101


def _no_plan_id(p: ppb.Plan) -> None:
    p.plan_id = ""


def _bundle_without_rating_groups(p: ppb.Plan) -> None:
    del p.bundles[0].rating_groups[:]


@pytest.mark.parametrize(("spoil", "named"), [
    (_bad_increment, "increment"),
    (_negative_price, "price_micros"),
    (_no_quota, "default_quota"),
    (_no_unit_type, "unit_type"),
    (_priced_twice, "priced twice"),
    (_threshold, "threshold_percent"),
    (_no_plan_id, "plan_id"),
    (_bundle_without_rating_groups, "rating_groups"),
])
async def test_invalid_plan_is_refused_with_invalid_argument(gateway, spoil, named):
    await gateway.provisioning.PutPlan(sample_plan())
    plan = sample_plan()
    spoil(plan)

    err = await rpc_error(gateway.provisioning.PutPlan(plan))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in err.details()
    current = await gateway.provisioning.GetPlan(ppb.GetPlanRequest(plan_id="basic"))
    assert current.version == 1


async def test_new_plan_version_prices_new_usage_and_leaves_rated_records_alone(config):
    async with running(config.replace(plan_refresh_s=0.0)) as gw:
        [sub] = await gw.setup()
        before = await gw.charge(request("e1", 0, cpb.EVENT, sub,
                                         mscc(SMS_RG, used=1, field="service_units")))
        await gw.provisioning.PutPlan(with_sms_price(80_000))

        after = await gw.charge(request("e2", 0, cpb.EVENT, sub,
                                        mscc(SMS_RG, used=1, field="service_units")))
        acct = await gw.account("acct-0")

    assert (before.charged_micros, after.charged_micros) == (50_000, 80_000)
    assert acct.money_micros == 10 * EUR - 130_000
    records = sorted((r for r in await usage_records(config) if r.kind == usage_pb2.USAGE),
                     key=lambda r: r.session_id)
    assert [(r.session_id, r.plan_version, r.price_micros, r.money_micros) for r in records] == [
        ("e1", 1, 50_000, 50_000), ("e2", 2, 80_000, 80_000)]


# --- accounts -------------------------------------------------------------------------------


async def test_create_account_gets_the_plan_bundles_and_the_initial_money(gateway):
    await gateway.provisioning.PutPlan(sample_plan())

    acct = await gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="acct-1", plan_id="basic", initial_money_micros=5 * EUR,
        credit_limit_micros=2 * EUR))

    assert (acct.account_id, acct.plan_id) == ("acct-1", "basic")
    assert (acct.money_micros, acct.reserved_micros, acct.credit_limit_micros) == (
        5 * EUR, 0, 2 * EUR)
    [b] = acct.buckets
    assert (b.bucket_id, list(b.rating_groups), b.unit_type) == ("data-100mb", [DATA_RG],
                                                                 com.OCTETS)
    assert (b.initial, b.remaining, b.reserved, b.used) == (100 * MB, 100 * MB, 0, 0)
    assert list(acct.reservations) == []
    assert await gateway.account("acct-1") == acct


async def test_create_account_twice_is_already_exists(gateway):
    await gateway.setup(money=3 * EUR)
    before = await gateway.account("acct-0")

    err = await rpc_error(gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="acct-0", plan_id="basic", initial_money_micros=50 * EUR)))

    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "acct-0" in err.details()
    assert await gateway.account("acct-0") == before


async def test_create_account_on_a_missing_plan_is_not_found(gateway):
    err = await rpc_error(gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="acct-1", plan_id="nope", initial_money_micros=EUR)))

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.details()


async def test_create_account_with_negative_money_is_invalid_argument(gateway):
    await gateway.provisioning.PutPlan(sample_plan())

    err = await rpc_error(gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="acct-1", plan_id="basic", initial_money_micros=-1)))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "initial_money_micros" in err.details()


async def test_get_account_that_does_not_exist_is_not_found(gateway):
    err = await rpc_error(gateway.provisioning.GetAccount(
        ppb.GetAccountRequest(account_id="ghost")))

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in err.details()


async def test_get_account_shows_live_reservations_during_a_session(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0),
                                 mscc(VOICE_RG, want=0, field="time_seconds")))
    await gateway.charge(request("s1", 1, cpb.UPDATE, sub, mscc(DATA_RG, used=3 * MB, want=0)))

    live = await gateway.account("acct-0")
    await gateway.charge(request("s1", 2, cpb.TERMINATION, sub, mscc(DATA_RG, used=MB)))
    ended = await gateway.account("acct-0")

    assert sorted((r.session_id, r.rating_group, r.bucket_id, r.units, r.amount)
                  for r in live.reservations) == [
        ("s1", DATA_RG, "data-100mb", 10 * MB, 10 * MB), ("s1", VOICE_RG, "", 300, 500_000)]
    assert live.reserved_micros == 500_000
    assert live.money_micros == 10 * EUR - 500_000
    [b] = live.buckets
    assert (b.used, b.reserved, b.remaining) == (3 * MB, 10 * MB, 87 * MB)
    assert list(ended.reservations) == []
    assert (ended.money_micros, ended.reserved_micros) == (10 * EUR, 0)
    [b] = ended.buckets
    assert (b.used, b.reserved, b.remaining) == (4 * MB, 0, 96 * MB)
    assert ended.version > live.version


# --- subscribers ----------------------------------------------------------------------------


async def test_create_subscriber_for_a_missing_account_is_not_found(gateway):
    await gateway.provisioning.PutPlan(sample_plan())

    err = await rpc_error(gateway.provisioning.CreateSubscriber(
        ppb.Subscriber(subscriber_id="4670000001", account_id="ghost")))

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in err.details()
    missing = await rpc_error(gateway.provisioning.GetSubscriber(
        ppb.GetSubscriberRequest(subscriber_id="4670000001")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_created_subscriber_is_active_on_its_account(gateway):
    await gateway.setup()

    created = await gateway.provisioning.CreateSubscriber(
        ppb.Subscriber(subscriber_id="4670000001", account_id="acct-0"))
    read = await gateway.provisioning.GetSubscriber(
        ppb.GetSubscriberRequest(subscriber_id="4670000001"))

    assert created == read
    assert (read.account_id, read.state) == ("acct-0", com.ACTIVE)


async def test_create_subscriber_twice_is_already_exists(gateway):
    [sub] = await gateway.setup()

    err = await rpc_error(gateway.provisioning.CreateSubscriber(
        ppb.Subscriber(subscriber_id=sub, account_id="acct-0")))

    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


# --- top-ups --------------------------------------------------------------------------------


async def test_top_up_is_applied_once_per_topup_id(gateway, config):
    await gateway.setup(money=1 * EUR)

    first = await gateway.provisioning.TopUp(top_up("t-1", 5 * EUR))
    second = await gateway.provisioning.TopUp(top_up("t-1", 5 * EUR))

    assert (first.applied, first.money_micros) == (True, 6 * EUR)
    assert (second.applied, second.money_micros) == (False, 6 * EUR)
    assert (await gateway.account("acct-0")).money_micros == 6 * EUR
    topups = [r for r in await usage_records(config) if r.kind == usage_pb2.TOP_UP]
    assert [(r.account_id, r.money_micros) for r in topups] == [("acct-0", -5 * EUR)]


async def test_top_ups_with_different_ids_both_apply(gateway):
    await gateway.setup(money=0)

    await gateway.provisioning.TopUp(top_up("t-1", 2 * EUR))
    last = await gateway.provisioning.TopUp(top_up("t-2", 3 * EUR))

    assert (last.applied, last.money_micros) == (True, 5 * EUR)
    assert (await gateway.account("acct-0")).money_micros == 5 * EUR


async def test_topup_ids_are_per_account_in_every_partition(gateway, config):
    await gateway.setup(accounts=16, money=0)
    by_partition: dict[int, list[str]] = {}
    for n in range(16):
        account_id = f"acct-{n}"
        by_partition.setdefault(partition_of(account_id, config.partitions), []).append(
            account_id)
    first, same = next(ids for ids in by_partition.values() if len(ids) > 1)[:2]
    other = next(ids[0] for p, ids in by_partition.items()
                 if p != partition_of(first, config.partitions))
    await gateway.provisioning.TopUp(top_up("voucher-7", EUR, account_id=first))

    in_same = await gateway.provisioning.TopUp(top_up("voucher-7", EUR, account_id=same))
    in_other = await gateway.provisioning.TopUp(top_up("voucher-7", EUR, account_id=other))

    assert in_same.applied and in_other.applied
    assert (await gateway.account(same)).money_micros == EUR
    assert (await gateway.account(other)).money_micros == EUR


@pytest.mark.parametrize("amount", [0, -1, -5 * EUR])
async def test_top_up_of_a_non_positive_amount_is_invalid_argument(gateway, amount):
    await gateway.setup(money=1 * EUR)

    err = await rpc_error(gateway.provisioning.TopUp(top_up("t-1", amount)))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "amount_micros" in err.details()
    assert (await gateway.account("acct-0")).money_micros == 1 * EUR
    retry = await gateway.provisioning.TopUp(top_up("t-1", 1 * EUR))
    assert retry.applied  # the refused call did not use up the id


async def test_top_up_of_a_missing_account_is_not_found(gateway):
    await gateway.setup()

    err = await rpc_error(gateway.provisioning.TopUp(top_up("t-1", EUR, account_id="ghost")))

    assert err.code() == grpc.StatusCode.NOT_FOUND
