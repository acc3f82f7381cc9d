"""Usage-control provisioning over a real gRPC channel and a real Redis: billing cycles and
spending caps, subscriber states, shared-account members, add-ons, the events and usage
records they write, and `tollgate plans load`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from tests.helpers import DATA_RG, EUR, MB, VOICE_RG, mscc, request, sample_plan
from tollgate.engine.charging.kernels.charge import MONEY_LIMIT
from tollgate.engine.domain import ResultCode
from tollgate.engine.ops import cli
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys, record_block
from tollgate.engine.storage.state import BucketMeta, member_caps_value
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import events_pb2, usage_pb2
from tollgate.v1 import provisioning_pb2 as ppb

DAY_MS = 86_400_000
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans.toml"

# --- helpers --------------------------------------------------------------------------------


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value




def now_ms() -> int:
    return int(time.time() * 1000)


def plan_with_addons(plan_id: str = "basic") -> ppb.Plan:
    """The sample plan on a 7-day cycle, its 100 MB bundle renewing, and two add-ons."""
    plan = sample_plan(plan_id)
    plan.cycle_days = 7
    plan.bundles[0].renew = True
    plan.addons.extend([
        ppb.AddOn(addon_id="data-1gb", name="1 GB extra", price_micros=3 * EUR,
                  bundle=ppb.BundleTemplate(bucket_id="extra-1gb", rating_groups=[DATA_RG],
                                            unit_type=com.OCTETS, units=1000 * MB,
                                            priority=-1, validity_days=30)),
        ppb.AddOn(addon_id="minutes", price_micros=2 * EUR,
                  bundle=ppb.BundleTemplate(bucket_id="minutes", rating_groups=[VOICE_RG],
                                            unit_type=com.SECONDS, units=6000, renew=True)),
    ])
    return plan


async def new_account(gateway, account_id: str = "acct-0", money: int = 10 * EUR,
                      credit_limit: int = 0, cap: int = 0,
                      plan: ppb.Plan | None = None) -> ppb.Account:
    await gateway.provisioning.PutPlan(plan or plan_with_addons())
    return await gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id=account_id, plan_id=(plan or plan_with_addons()).plan_id,
        initial_money_micros=money, credit_limit_micros=credit_limit, spending_cap_micros=cap))


def account_key(config: Config, account_id: str) -> str:
    return keys.account(keys.partition_of(account_id, config.partitions), account_id)


async def events(db: aioredis.Redis, config: Config, account_id: str) -> list[events_pb2.Event]:
    """The account's events on its partition stream, parsed from field `e`."""
    stream = keys.events_stream(keys.partition_of(account_id, config.partitions))
    found = [events_pb2.Event.FromString(fields[b"e"]) for _, fields in await db.xrange(stream)]
    return [e for e in found if e.account_id == account_id]


async def records(db: aioredis.Redis, config: Config, account_id: str
                  ) -> list[usage_pb2.RatedUsage]:
    """The account's usage records on its partition stream (one per entry or in blocks)."""
    stream = keys.usage_stream(keys.partition_of(account_id, config.partitions))
    found = [usage_pb2.RatedUsage.FromString(r) for sid, fields in await db.xrange(stream)
             for _, r in record_block.records(sid, fields)]
    return [r for r in found if r.account_id == account_id]


def buy(order_id: str, account_id: str = "acct-0", addon_id: str = "data-1gb"
        ) -> ppb.BuyAddOnRequest:
    return ppb.BuyAddOnRequest(order_id=order_id, account_id=account_id, addon_id=addon_id)


def member(subscriber_id: str, account_id: str = "acct-0", money: int = 0, octets: int = 0,
           seconds: int = 0, service_units: int = 0) -> ppb.AddMemberRequest:
    return ppb.AddMemberRequest(account_id=account_id, subscriber_id=subscriber_id,
                                caps=ppb.MemberCaps(money_micros=money, octets=octets,
                                                    seconds=seconds,
                                                    service_units=service_units))


# --- accounts: cycle, cap, renewing buckets -------------------------------------------------


async def test_create_account_starts_a_cycle_with_its_cap_and_renewing_buckets(
        gateway, db, config):
    before = now_ms()
    acct = await new_account(gateway, cap=25 * EUR)
    after = now_ms()

    assert acct.spending_cap_micros == 25 * EUR
    assert acct.cycle_spent_micros == 0
    assert before <= acct.cycle_start_ms <= after
    assert acct.cycle_end_ms == acct.cycle_start_ms + 7 * DAY_MS
    assert [(b.bucket_id, b.renew, b.expiry_ms) for b in acct.buckets] == [
        ("data-100mb", True, 0)]
    assert list(acct.members) == []
    h = await db.hgetall(account_key(config, "acct-0"))
    assert {k: h[k] for k in (b"cap", b"spent", b"capn", b"lown", b"exhn", b"ver")} == {
        b"cap": b"25000000", b"spent": b"0", b"capn": b"0", b"lown": b"0", b"exhn": b"0",
        b"ver": b"1"}
    assert (int(h[b"cs"]), int(h[b"ce"])) == (acct.cycle_start_ms, acct.cycle_end_ms)
    assert BucketMeta.parse(h[b"b:data-100mb"]).renew


async def test_create_account_without_a_cap_has_none_and_a_30_day_default_cycle(gateway):
    acct = await new_account(gateway, plan=sample_plan())

    assert acct.spending_cap_micros == 0
    assert acct.cycle_end_ms - acct.cycle_start_ms == 30 * DAY_MS
    assert [b.renew for b in acct.buckets] == [False]


@pytest.mark.parametrize("cap", [-1, MONEY_LIMIT // 4 + 1])
async def test_create_account_with_a_cap_out_of_range_is_invalid_argument(gateway, cap):
    await gateway.provisioning.PutPlan(sample_plan())

    err = await rpc_error(gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="acct-0", plan_id="basic", spending_cap_micros=cap)))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spending_cap_micros" in err.details()


async def test_extra_buckets_keep_their_renew_flag(gateway):
    await gateway.provisioning.PutPlan(sample_plan())

    acct = await gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="acct-0", plan_id="basic",
        buckets=[ppb.Bucket(bucket_id="sms-50", rating_groups=[200],
                            unit_type=com.SERVICE_UNITS, initial=50, renew=True)]))

    assert sorted((b.bucket_id, b.renew) for b in acct.buckets) == [
        ("data-100mb", False), ("sms-50", True)]


async def test_an_extra_bucket_id_that_reads_as_a_counter_is_invalid_argument(gateway):
    await gateway.provisioning.PutPlan(sample_plan())

    err = await rpc_error(gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="acct-0", plan_id="basic",
        buckets=[ppb.Bucket(bucket_id="sms:rem", rating_groups=[200],
                            unit_type=com.SERVICE_UNITS, initial=50)])))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "buckets[0].bucket_id" in err.details()


# --- spending cap ---------------------------------------------------------------------------


async def test_set_spending_cap_sets_the_cap_and_moves_the_version(gateway, db, config):
    created = await new_account(gateway)

    capped = await gateway.provisioning.SetSpendingCap(
        ppb.SetSpendingCapRequest(account_id="acct-0", cap_micros=15 * EUR))
    uncapped = await gateway.provisioning.SetSpendingCap(
        ppb.SetSpendingCapRequest(account_id="acct-0", cap_micros=0))

    assert (capped.spending_cap_micros, capped.version) == (15 * EUR, created.version + 1)
    assert (uncapped.spending_cap_micros, uncapped.version) == (0, created.version + 2)
    assert await db.hget(account_key(config, "acct-0"), "cap") == b"0"
    assert uncapped.money_micros == created.money_micros


async def test_set_spending_cap_of_a_missing_account_is_not_found(gateway, db):
    err = await rpc_error(gateway.provisioning.SetSpendingCap(
        ppb.SetSpendingCapRequest(account_id="ghost", cap_micros=EUR)))

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in err.details()
    assert await db.keys("*ghost*") == []


@pytest.mark.parametrize("cap", [-1, MONEY_LIMIT // 4 + 1])
async def test_set_spending_cap_out_of_range_is_invalid_argument(gateway, cap):
    created = await new_account(gateway, cap=5 * EUR)

    err = await rpc_error(gateway.provisioning.SetSpendingCap(
        ppb.SetSpendingCapRequest(account_id="acct-0", cap_micros=cap)))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cap_micros" in err.details()
    assert await gateway.account("acct-0") == created


# --- subscriber states ----------------------------------------------------------------------


async def test_set_subscriber_state_changes_it_and_appends_a_state_changed_event(
        gateway, db, config):
    [sub] = await gateway.setup()
    before = now_ms()

    answer = await gateway.provisioning.SetSubscriberState(
        ppb.Subscriber(subscriber_id=sub, state=com.SUSPENDED))
    read = await gateway.provisioning.GetSubscriber(
        ppb.GetSubscriberRequest(subscriber_id=sub))

    assert (answer.subscriber_id, answer.account_id, answer.state) == (
        sub, "acct-0", com.SUSPENDED)
    assert read == answer
    assert await db.hget(keys.subscriber(sub), "state") == str(com.SUSPENDED).encode()
    [event] = await events(db, config, "acct-0")
    assert (event.kind, event.account_id, event.subscriber_id, event.detail) == (
        events_pb2.STATE_CHANGED, "acct-0", sub, "SUSPENDED")
    assert event.event_id == f"state:{sub}:{event.time_ms}"
    assert before <= event.time_ms <= now_ms()


async def test_setting_the_same_state_again_changes_nothing_and_adds_no_event(
        gateway, db, config):
    [sub] = await gateway.setup()
    await gateway.provisioning.SetSubscriberState(
        ppb.Subscriber(subscriber_id=sub, state=com.GRACE))

    again = await gateway.provisioning.SetSubscriberState(
        ppb.Subscriber(subscriber_id=sub, state=com.GRACE))
    back = await gateway.provisioning.SetSubscriberState(
        ppb.Subscriber(subscriber_id=sub, state=com.ACTIVE))

    assert (again.state, back.state) == (com.GRACE, com.ACTIVE)
    assert [e.detail for e in await events(db, config, "acct-0")] == ["GRACE", "ACTIVE"]


async def test_set_state_of_a_missing_subscriber_is_not_found(gateway):
    await gateway.setup()

    err = await rpc_error(gateway.provisioning.SetSubscriberState(
        ppb.Subscriber(subscriber_id="ghost", state=com.SUSPENDED)))

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in err.details()


@pytest.mark.parametrize("state", [com.SUBSCRIBER_STATE_UNSPECIFIED, 99])
async def test_set_an_unknown_state_is_invalid_argument(gateway, db, config, state):
    [sub] = await gateway.setup()

    err = await rpc_error(gateway.provisioning.SetSubscriberState(
        ppb.Subscriber(subscriber_id=sub, state=state)))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "state" in err.details()
    assert (await gateway.provisioning.GetSubscriber(
        ppb.GetSubscriberRequest(subscriber_id=sub))).state == com.ACTIVE
    assert await events(db, config, "acct-0") == []


# --- members --------------------------------------------------------------------------------


async def test_add_member_creates_an_active_subscriber_with_its_caps(gateway, db, config):
    created = await new_account(gateway)

    acct = await gateway.provisioning.AddMember(
        member("kid-1", money=5 * EUR, octets=500 * MB, seconds=3600, service_units=20))

    assert acct.version == created.version + 1
    [m] = acct.members
    assert m.subscriber_id == "kid-1"
    assert m.caps == ppb.MemberCaps(money_micros=5 * EUR, octets=500 * MB, seconds=3600,
                                    service_units=20)
    assert m.used == ppb.MemberCaps()
    sub = await gateway.provisioning.GetSubscriber(ppb.GetSubscriberRequest(
        subscriber_id="kid-1"))
    assert (sub.account_id, sub.state) == ("acct-0", com.ACTIVE)
    assert await db.hget(account_key(config, "acct-0"), "m:kid-1") == member_caps_value(
        5 * EUR, [500 * MB, 3600, 20]).encode()
    assert await gateway.account("acct-0") == acct


async def test_add_member_again_updates_the_caps_and_the_same_caps_change_nothing(gateway):
    await new_account(gateway)
    first = await gateway.provisioning.AddMember(member("kid-1", money=5 * EUR))

    updated = await gateway.provisioning.AddMember(member("kid-1", octets=MB))
    same = await gateway.provisioning.AddMember(member("kid-1", octets=MB))

    assert [(m.subscriber_id, m.caps.money_micros, m.caps.octets) for m in updated.members] == [
        ("kid-1", 0, MB)]
    assert updated.version == first.version + 1
    assert same == updated


async def test_add_member_keeps_an_existing_subscriber_of_the_account_and_its_state(
        gateway, db, config):
    await new_account(gateway)
    await gateway.provisioning.CreateSubscriber(ppb.Subscriber(
        subscriber_id="mum", account_id="acct-0", state=com.PREACTIVE))

    acct = await gateway.provisioning.AddMember(member("mum", money=EUR))
    acct = await gateway.provisioning.AddMember(member("dad"))

    assert [(m.subscriber_id, m.caps.money_micros) for m in acct.members] == [
        ("dad", 0), ("mum", EUR)]
    mum = await gateway.provisioning.GetSubscriber(ppb.GetSubscriberRequest(subscriber_id="mum"))
    assert (mum.account_id, mum.state) == ("acct-0", com.PREACTIVE)


async def test_add_member_of_another_accounts_subscriber_is_failed_precondition(
        gateway, db, config):
    await new_account(gateway, "acct-0")
    await new_account(gateway, "acct-1")
    await gateway.provisioning.AddMember(member("kid-1", account_id="acct-1"))
    before = await gateway.account("acct-0")

    err = await rpc_error(gateway.provisioning.AddMember(member("kid-1", money=EUR)))

    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "kid-1" in err.details() and "acct-1" in err.details()
    assert await gateway.account("acct-0") == before
    assert await db.hget(keys.subscriber("kid-1"), "acct") == b"acct-1"


async def test_add_member_to_a_missing_account_is_not_found_and_creates_no_subscriber(
        gateway, db):
    err = await rpc_error(gateway.provisioning.AddMember(member("kid-1", account_id="ghost")))

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in err.details()
    assert not await db.exists(keys.subscriber("kid-1"))


@pytest.mark.parametrize("caps", [{"money": -1}, {"octets": -5},
                                  {"seconds": MONEY_LIMIT // 4 + 1}])
async def test_add_member_with_a_bad_cap_is_invalid_argument(gateway, db, caps):
    await new_account(gateway)

    err = await rpc_error(gateway.provisioning.AddMember(member("kid-1", **caps)))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "caps." in err.details()
    assert not await db.exists(keys.subscriber("kid-1"))


async def test_a_member_id_that_reads_as_a_member_counter_is_invalid_argument(gateway, db):
    await new_account(gateway)

    err = await rpc_error(gateway.provisioning.AddMember(member("kid:spent")))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kid:spent" in err.details()
    assert not await db.exists(keys.subscriber("kid:spent"))


async def test_get_account_shows_member_use_as_charged_plus_reserved(gateway, db, config):
    await new_account(gateway)
    await gateway.provisioning.AddMember(member("kid-1", money=5 * EUR, octets=100 * MB))
    await db.hset(account_key(config, "acct-0"), mapping={
        "m:kid-1:spent": 300_000, "m:kid-1:mres": 200_000, "m:kid-1:u1": 5 * MB,
        "m:kid-1:r1": 2 * MB, "m:kid-1:u2": 60, "m:kid-1:r3": 1})

    [m] = (await gateway.account("acct-0")).members

    assert m.used == ppb.MemberCaps(money_micros=500_000, octets=7 * MB, seconds=60,
                                    service_units=1)
    assert (m.caps.money_micros, m.caps.octets) == (5 * EUR, 100 * MB)


async def test_after_charging_the_cached_account_is_what_redis_holds(
        tollgate: Tollgate, gateway) -> None:
    """The engine writes and caches only the outputs that moved (KernelBatch.run's changes):
    balances, reservations, bucket, member and cycle counters must still all agree."""
    await new_account(gateway, cap=20 * EUR)
    await gateway.provisioning.AddMember(member("kid-1", money=5 * EUR, octets=500 * MB))
    await gateway.provisioning.AddMember(member("kid-2", money=EUR, seconds=600))
    voice = {"field": "time_seconds"}
    for rn, kind, units in (
            (0, cpb.INITIAL, [mscc(DATA_RG, want=20 * MB), mscc(VOICE_RG, want=120, **voice)]),
            (1, cpb.UPDATE, [mscc(DATA_RG, used=12 * MB, want=20 * MB),
                             mscc(VOICE_RG, used=95, want=120, **voice)]),
            (2, cpb.TERMINATION, [mscc(DATA_RG, used=3 * MB)])):
        answers = await gateway.batch([
            request("s-1", rn, kind, "kid-1", *units),
            request("s-2", rn, kind, "kid-2", *units[1:])])
        assert [a.result for a in answers] == [ResultCode.SUCCESS] * 2

    cached = tollgate.engine.accounts.up_to_date("acct-0")
    stored, _ = await tollgate.store.get_account("acct-0")

    assert stored.members["kid-1"].used_units[0] == 15 * MB  # moved: checked for real
    assert stored.spent > 0 and stored.buckets[0].remaining < 100 * MB
    assert dataclasses.replace(cached, sessions={}) == dataclasses.replace(stored, sessions={})


async def test_remove_member_deletes_its_caps_counters_and_subscriber(gateway, db, config):
    await new_account(gateway)
    await gateway.provisioning.AddMember(member("kid-1", money=EUR))
    kept = await gateway.provisioning.AddMember(member("kid-2", money=2 * EUR))
    key = account_key(config, "acct-0")
    await db.hset(key, mapping={"m:kid-1:spent": 400_000, "m:kid-1:u1": 3 * MB,
                                "m:kid-1:mres": 0, "m:kid-1:r1": 0})
    await db.hincrby(key, "ver", 1)

    acct = await gateway.provisioning.RemoveMember(
        ppb.RemoveMemberRequest(account_id="acct-0", subscriber_id="kid-1"))

    assert [m.subscriber_id for m in acct.members] == ["kid-2"]
    assert acct.version == kept.version + 2
    assert [f for f in await db.hkeys(key) if f.startswith(b"m:kid-1")] == []
    assert not await db.exists(keys.subscriber("kid-1"))
    assert await db.hget(keys.subscriber("kid-2"), "acct") == b"acct-0"
    gone = await rpc_error(gateway.provisioning.GetSubscriber(
        ppb.GetSubscriberRequest(subscriber_id="kid-1")))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("counter", ["mres", "r1", "r2", "r3"])
async def test_remove_member_with_live_reservations_is_failed_precondition(
        gateway, db, config, counter):
    await new_account(gateway)
    await gateway.provisioning.AddMember(member("kid-1", money=EUR))
    await db.hset(account_key(config, "acct-0"), f"m:kid-1:{counter}", 250)
    before = await gateway.account("acct-0")

    err = await rpc_error(gateway.provisioning.RemoveMember(
        ppb.RemoveMemberRequest(account_id="acct-0", subscriber_id="kid-1")))

    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "member has live reservations" in err.details()
    assert await gateway.account("acct-0") == before
    assert await db.hget(keys.subscriber("kid-1"), "acct") == b"acct-0"


async def test_remove_a_subscriber_that_is_not_a_member_is_not_found(gateway, db):
    [sub] = await gateway.setup(plan=plan_with_addons())
    before = await gateway.account("acct-0")

    err = await rpc_error(gateway.provisioning.RemoveMember(
        ppb.RemoveMemberRequest(account_id="acct-0", subscriber_id=sub)))
    missing = await rpc_error(gateway.provisioning.RemoveMember(
        ppb.RemoveMemberRequest(account_id="ghost", subscriber_id=sub)))

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "not a member" in err.details()
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert await gateway.account("acct-0") == before
    assert await db.exists(keys.subscriber(sub))


# --- add-ons --------------------------------------------------------------------------------


async def test_buy_add_on_takes_the_price_and_adds_the_bucket_atomically(gateway, db, config):
    created = await new_account(gateway, money=10 * EUR)
    before = now_ms()

    answer = await gateway.provisioning.BuyAddOn(buy("o-1"))

    assert answer.applied
    acct = answer.account
    assert acct.money_micros == 7 * EUR
    assert acct.version == created.version + 1
    [extra] = [b for b in acct.buckets if b.bucket_id == "extra-1gb:o-1"]
    assert (list(extra.rating_groups), extra.unit_type, extra.initial, extra.remaining,
            extra.reserved, extra.used, extra.priority, extra.renew) == (
        [DATA_RG], com.OCTETS, 1000 * MB, 1000 * MB, 0, 0, -1, False)
    assert before + 30 * DAY_MS <= extra.expiry_ms <= now_ms() + 30 * DAY_MS
    assert [b.bucket_id for b in acct.buckets] == ["extra-1gb:o-1", "data-100mb"]
    assert await gateway.account("acct-0") == acct
    [record] = await records(db, config, "acct-0")
    assert (record.kind, record.account_id, record.money_micros, record.plan_id,
            record.plan_version) == (usage_pb2.ADD_ON, "acct-0", 3 * EUR, "basic", 1)
    assert list(record.charges) == [usage_pb2.BalanceCharge(micros=3 * EUR)]
    [event] = await events(db, config, "acct-0")
    assert (event.event_id, event.kind, event.account_id, event.detail, event.value,
            event.bucket_id) == ("addon:acct-0:o-1", events_pb2.ADD_ON_BOUGHT, "acct-0",
                                 "data-1gb", 3 * EUR, "extra-1gb:o-1")
    partition = keys.partition_of("acct-0", config.partitions)
    assert await db.exists(keys.order_marker(partition, "acct-0", "o-1"))


async def test_buy_add_on_twice_with_one_order_id_charges_once(gateway, db, config):
    await new_account(gateway, money=10 * EUR)
    first = await gateway.provisioning.BuyAddOn(buy("o-1"))

    second = await gateway.provisioning.BuyAddOn(buy("o-1"))
    as_other_addon = await gateway.provisioning.BuyAddOn(buy("o-1", addon_id="minutes"))

    assert first.applied and not second.applied and not as_other_addon.applied
    assert second.account == first.account == as_other_addon.account
    assert second.account.money_micros == 7 * EUR
    assert [b.bucket_id for b in second.account.buckets] == ["extra-1gb:o-1", "data-100mb"]
    assert len(await records(db, config, "acct-0")) == 1
    assert len(await events(db, config, "acct-0")) == 1


async def test_new_order_ids_buy_again_and_an_order_id_is_per_account(gateway, db, config):
    await new_account(gateway, "acct-0", money=10 * EUR)
    await new_account(gateway, "acct-1", money=10 * EUR)
    await gateway.provisioning.BuyAddOn(buy("o-1", "acct-0"))

    again = await gateway.provisioning.BuyAddOn(buy("o-2", "acct-0", addon_id="minutes"))
    other = await gateway.provisioning.BuyAddOn(buy("o-1", "acct-1"))

    assert again.applied and other.applied
    assert again.account.money_micros == 5 * EUR
    assert sorted((b.bucket_id, b.renew) for b in again.account.buckets) == [
        ("data-100mb", True), ("extra-1gb:o-1", False), ("minutes:o-2", True)]
    assert other.account.money_micros == 7 * EUR
    assert [b.bucket_id for b in other.account.buckets] == ["extra-1gb:o-1", "data-100mb"]
    assert sorted(e.event_id for e in
                  await events(db, config, "acct-0") + await events(db, config, "acct-1")) == [
        "addon:acct-0:o-1", "addon:acct-0:o-2", "addon:acct-1:o-1"]


async def test_buy_add_on_without_enough_money_is_refused_and_changes_nothing(
        gateway, db, config):
    await new_account(gateway, money=2 * EUR)
    before = await gateway.account("acct-0")

    err = await rpc_error(gateway.provisioning.BuyAddOn(buy("o-1")))

    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "insufficient money" in err.details()
    assert await gateway.account("acct-0") == before
    assert await records(db, config, "acct-0") == []
    assert await events(db, config, "acct-0") == []
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t-1", account_id="acct-0",
                                                      amount_micros=EUR))
    retry = await gateway.provisioning.BuyAddOn(buy("o-1"))  # the refusal used no order id
    assert retry.applied and retry.account.money_micros == 0


async def test_buy_add_on_may_use_the_credit_limit_down_to_its_end(gateway):
    await new_account(gateway, money=EUR, credit_limit=5 * EUR)

    first = await gateway.provisioning.BuyAddOn(buy("o-1"))
    second = await gateway.provisioning.BuyAddOn(buy("o-2"))
    err = await rpc_error(gateway.provisioning.BuyAddOn(buy("o-3")))

    assert (first.account.money_micros, second.account.money_micros) == (-2 * EUR, -5 * EUR)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await gateway.account("acct-0")).money_micros == -5 * EUR


async def test_buy_add_on_compares_money_exactly_beyond_double_precision(gateway):
    big = MONEY_LIMIT // 4  # 2**60: doubles cannot tell 2**60 - 1 from 2**60
    plan = plan_with_addons()
    plan.addons[0].price_micros = big
    await new_account(gateway, money=big - 1, plan=plan)

    err = await rpc_error(gateway.provisioning.BuyAddOn(buy("o-1")))
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t-1", account_id="acct-0",
                                                      amount_micros=1))
    bought = await gateway.provisioning.BuyAddOn(buy("o-2"))

    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(big - 1) in err.details()
    assert bought.applied
    assert bought.account.money_micros == 0


async def test_buy_an_add_on_the_plan_does_not_offer_is_not_found(gateway, db, config):
    await new_account(gateway)
    newer = plan_with_addons()
    del newer.addons[1]
    await gateway.provisioning.PutPlan(newer)  # version 2 no longer offers "minutes"

    unknown = await rpc_error(gateway.provisioning.BuyAddOn(buy("o-1", addon_id="gold")))
    withdrawn = await rpc_error(gateway.provisioning.BuyAddOn(buy("o-2", addon_id="minutes")))
    no_account = await rpc_error(gateway.provisioning.BuyAddOn(buy("o-3", "ghost")))

    assert [e.code() for e in (unknown, withdrawn, no_account)] == [grpc.StatusCode.NOT_FOUND] * 3
    assert "gold" in unknown.details() and "basic" in unknown.details()
    assert "minutes" in withdrawn.details() and "version 2" in withdrawn.details()
    assert "ghost" in no_account.details()
    assert (await gateway.account("acct-0")).money_micros == 10 * EUR
    assert await records(db, config, "acct-0") == []


@pytest.mark.parametrize("order_id", ["", "x:rem", "a|b"])
async def test_buy_add_on_with_a_bad_order_id_is_invalid_argument(gateway, order_id):
    await new_account(gateway)

    err = await rpc_error(gateway.provisioning.BuyAddOn(buy(order_id)))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "order_id" in err.details()
    assert (await gateway.account("acct-0")).money_micros == 10 * EUR


# --- top-ups write events -------------------------------------------------------------------


async def test_top_up_appends_one_topped_up_event_per_topup_id(gateway, db, config):
    await new_account(gateway, money=EUR)

    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t-1", account_id="acct-0",
                                                      amount_micros=5 * EUR))
    repeated = await gateway.provisioning.TopUp(ppb.TopUpRequest(
        topup_id="t-1", account_id="acct-0", amount_micros=5 * EUR))

    assert (repeated.applied, repeated.money_micros) == (False, 6 * EUR)
    [event] = await events(db, config, "acct-0")
    assert (event.event_id, event.kind, event.account_id, event.value) == (
        "topup:acct-0:t-1", events_pb2.TOPPED_UP, "acct-0", 5 * EUR)
    assert event.time_ms > 0
    [record] = await records(db, config, "acct-0")
    assert (record.kind, record.money_micros) == (usage_pb2.TOP_UP, -5 * EUR)


async def test_top_up_answers_the_balance_exactly_beyond_double_precision(gateway):
    big = MONEY_LIMIT // 4
    await new_account(gateway, money=big - 1)

    answer = await gateway.provisioning.TopUp(ppb.TopUpRequest(
        topup_id="t-1", account_id="acct-0", amount_micros=big))
    repeated = await gateway.provisioning.TopUp(ppb.TopUpRequest(
        topup_id="t-1", account_id="acct-0", amount_micros=big))

    assert answer.money_micros == repeated.money_micros == 2 * big - 1
    assert (await gateway.account("acct-0")).money_micros == 2 * big - 1


# --- tollgate plans load --------------------------------------------------------------------


async def test_plans_load_puts_every_plan_of_the_file_on_a_running_server(
        gateway, tollgate, capsys):
    argv = ["plans", "load", str(EXAMPLES), "--server", tollgate.address]

    first = await asyncio.to_thread(cli.main, argv)
    second = await asyncio.to_thread(cli.main, argv)

    assert (first, second) == (0, 0)
    assert capsys.readouterr().out.splitlines() == [
        "everyday: version 1", "flat-postpaid: version 1", "talk-more: version 1",
        "everyday: version 2", "flat-postpaid: version 2", "talk-more: version 2"]
    stored = await gateway.provisioning.GetPlan(ppb.GetPlanRequest(plan_id="everyday"))
    assert (stored.version, stored.timezone, stored.low_balance_micros) == (
        2, "Europe/Amsterdam", 2 * EUR)
    assert [(a.addon_id, a.price_micros) for a in stored.addons] == [
        ("data-5gb", 10 * EUR), ("voice-100", 5 * EUR)]
    acct = await gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="acct-0", plan_id="everyday", initial_money_micros=20 * EUR))
    assert sorted((b.bucket_id, b.initial, b.renew) for b in acct.buckets) == [
        ("data-1gb", 1_000_000_000, True), ("welcome-sms", 50, False)]
    bought = await gateway.provisioning.BuyAddOn(buy("o-1", addon_id="voice-100"))
    assert bought.account.money_micros == 15 * EUR
    assert [(b.bucket_id, b.initial) for b in bought.account.buckets
            if b.bucket_id.startswith("minutes")] == [("minutes-100:o-1", 6000)]


async def test_plans_load_of_a_bad_file_stores_nothing(gateway, tollgate, tmp_path, capsys):
    bad = tmp_path / "plans.toml"
    bad.write_text(EXAMPLES.read_text() + '\n[[plans]]\nplan_id = "x"\nprise = 1\n')

    rc = await asyncio.to_thread(
        cli.main, ["plans", "load", str(bad), "--server", tollgate.address])

    assert rc == 1
    err = capsys.readouterr().err
    assert "plan 'x'" in err and "'prise'" in err
    missing = await rpc_error(gateway.provisioning.GetPlan(
        ppb.GetPlanRequest(plan_id="everyday")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_plans_load_without_a_server_fails_with_the_grpc_status(tmp_path, capsys):
    rc = await asyncio.to_thread(
        cli.main, ["plans", "load", str(EXAMPLES), "--server", "127.0.0.1:1", "--timeout", "2"])

    assert rc == 1
    assert "everyday: UNAVAILABLE" in capsys.readouterr().err
