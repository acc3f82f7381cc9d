"""Rating and usage-control features one at a time, over the real gRPC API and a real Redis:
tiers, first increment and rounding, zero rating, subscriber states, credit limit, grant
validity and thresholds, threshold events, plan versions, add-ons, billing cycles, the
stale-reservation sweeper, and zones picked by destination prefix (with the home fallback).

Prices are in micros (1 EUR = 1_000_000); data is priced per 1000-octet increment, so
1000 micros per increment is 1.00 per MB. Every expected number is worked out by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import pytest
import redis.asyncio as aioredis

from tests.helpers import (
    DATA_RG,
    EUR,
    MB,
    SMS_RG,
    VIDEO_RG,
    VOICE_RG,
    Gateway,
    data_rate,
    mscc,
    request,
    usage_records,
)
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import events_pb2
from tollgate.v1 import provisioning_pb2 as ppb

INITIAL, UPDATE, TERMINATION, EVENT = cpb.INITIAL, cpb.UPDATE, cpb.TERMINATION, cpb.EVENT
PORTAL_RG = 30
DAY_MS = 86_400_000
SUB = "sub-0"


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def config(config: Config) -> Config:
    """Subscriber states and plan versions are seen by the very next request."""
    return config.replace(subscriber_cache_s=0, plan_refresh_s=0)




class Clock:
    """A clock the test moves: Unix ms, starting at the wall clock."""

    def __init__(self) -> None:
        self.ms = int(time.time() * 1000)

    def __call__(self) -> int:
        return self.ms


async def start_with_clock(config: Config, clock: Clock) -> tuple[Tollgate, Gateway]:
    app = await Tollgate(config, clock=clock).start()
    return app, Gateway(grpc.aio.insecure_channel(app.address))


async def stop(app: Tollgate, gw: Gateway) -> None:
    await gw.channel.close()
    await app.stop()


async def events(db: aioredis.Redis, config: Config, account_id: str = "acct-0"
                 ) -> list[events_pb2.Event]:
    stream = keys.events_stream(keys.partition_of(account_id, config.partitions))
    found = [events_pb2.Event.FromString(f[b"e"]) for _, f in await db.xrange(stream)]
    return [e for e in found if e.account_id == account_id]



def voice_rate(**kw: object) -> ppb.Rate:
    """Voice at 0.10 per started minute, at least one minute, 300 s default quota."""
    fields: dict[str, object] = {"rating_group": VOICE_RG, "unit_type": com.SECONDS,
                                 "price_micros": 100_000, "increment": 60,
                                 "first_increment": 60, "default_quota": 300}
    fields.update(kw)
    return ppb.Rate(**fields)  # type: ignore[arg-type]


def portal_rate() -> ppb.Rate:
    """The top-up portal: zero-rated although it has a price."""
    return ppb.Rate(rating_group=PORTAL_RG, unit_type=com.OCTETS, price_micros=1000,
                    increment=1000, default_quota=10 * MB, zero_rated=True)


def sms_rate() -> ppb.Rate:
    return ppb.Rate(rating_group=SMS_RG, unit_type=com.SERVICE_UNITS, price_micros=50_000,
                    increment=1, default_quota=1)


def plan_of(*rates: ppb.Rate, plan_id: str = "p", **kw: object) -> ppb.Plan:
    return ppb.Plan(plan_id=plan_id, name=plan_id, rates=list(rates), **kw)  # type: ignore[arg-type]


def bundle(bucket_id: str, units: int, **kw: object) -> ppb.BundleTemplate:
    return ppb.BundleTemplate(bucket_id=bucket_id, rating_groups=[DATA_RG],  # type: ignore[arg-type]
                              unit_type=com.OCTETS, units=units, **kw)


async def setup(gw: Gateway, plan: ppb.Plan, *, money: int = 10 * EUR, credit_limit: int = 0,
                cap: int = 0, buckets: list[ppb.Bucket] | None = None,
                account_id: str = "acct-0", subscriber: str = SUB) -> ppb.Account:
    await gw.provisioning.PutPlan(plan)
    acct = await gw.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id=account_id, plan_id=plan.plan_id, initial_money_micros=money,
        credit_limit_micros=credit_limit, spending_cap_micros=cap, buckets=buckets or []))
    if subscriber:
        await gw.provisioning.CreateSubscriber(
            ppb.Subscriber(subscriber_id=subscriber, account_id=account_id))
    return acct


def data(*, used: int | None = None, want: int | None = None) -> cpb.ServiceUnits:
    return mscc(DATA_RG, used=used, want=want)


def voice(*, used: int | None = None, want: int | None = None) -> cpb.ServiceUnits:
    return mscc(VOICE_RG, used=used, want=want, field="time_seconds")


def portal(*, used: int | None = None, want: int | None = None) -> cpb.ServiceUnits:
    return mscc(PORTAL_RG, used=used, want=want)


async def charge(gw: Gateway, session: str, rn: int, kind: int, *units: cpb.ServiceUnits,
                 sub: str = SUB, **kw: object) -> cpb.ChargeAnswer:
    a = await gw.charge(request(session, rn, kind, sub, *units, **kw))  # type: ignore[arg-type]
    assert a.result == cpb.SUCCESS, a
    return a


def money(acct: ppb.Account) -> tuple[int, int]:
    return acct.money_micros, acct.reserved_micros


# --- tiers, first increment, rounding -------------------------------------------------------


TIERED = plan_of(data_rate(tiers=[ppb.Tier(from_units=5 * MB, price_micros=500)]),
                 plan_id="tiered")
"""1.00 per MB for the first 5 MB of the cycle, 0.50 per MB after."""


async def test_a_report_crossing_a_tier_edge_is_priced_in_two_parts(gateway, db, config):
    await setup(gateway, TIERED, money=20 * EUR)
    await charge(gateway, "s1", 0, INITIAL, data(want=4 * MB))
    first = await charge(gateway, "s1", 1, UPDATE, data(used=4 * MB, want=3 * MB))
    # The 3 MB hold starts at 4 MB in the cycle: 1 MB at 1.00 and 2 MB at 0.50.
    assert money(await gateway.account("acct-0")) == (14 * EUR, 2 * EUR)

    crossing = await charge(gateway, "s1", 2, TERMINATION, data(used=3 * MB))
    await charge(gateway, "s2", 0, INITIAL, data(want=1 * MB))
    held = await gateway.account("acct-0")
    beyond = await charge(gateway, "s2", 1, TERMINATION, data(used=1 * MB))

    assert first.charged_micros == 4 * EUR
    assert crossing.charged_micros == 1 * EUR + 1 * EUR  # 1000 x 1000 + 2000 x 500
    assert held.reserved_micros == 500_000  # beyond the edge: 0.50 per MB
    assert beyond.charged_micros == 500_000
    assert [r.money_micros for r in await usage_records(db, config)] == [4 * EUR, 2 * EUR, 500_000]
    assert money(await gateway.account("acct-0")) == (20 * EUR - 6_500_000, 0)


async def test_a_grant_limited_by_money_counts_the_cheaper_tier(gateway):
    await setup(gateway, TIERED, money=7 * EUR)
    await charge(gateway, "s1", 0, INITIAL, data(want=4 * MB))
    await charge(gateway, "s1", 1, TERMINATION, data(used=4 * MB))

    # 3.00 left at 4 MB into the cycle: 1 MB at 1.00 plus 4 MB at 0.50.
    a = await charge(gateway, "s2", 0, INITIAL, data(want=0))

    assert a.grants[0].granted.total_octets == 5 * MB
    assert money(await gateway.account("acct-0")) == (0, 3 * EUR)


async def test_usage_is_charged_at_least_the_first_increment_and_rounded_up(gateway, db, config):
    plan = plan_of(voice_rate(), ppb.Rate(
        rating_group=VIDEO_RG, unit_type=com.OCTETS, price_micros=10, increment=1000,
        first_increment=10_000, default_quota=MB), plan_id="rounding")
    await setup(gateway, plan)
    await charge(gateway, "call", 0, INITIAL, voice(want=0))
    await charge(gateway, "video", 0, INITIAL, mscc(VIDEO_RG, want=0))

    one_second = await charge(gateway, "call", 1, UPDATE, voice(used=1, want=0))
    sixty_one = await charge(gateway, "call", 2, UPDATE, voice(used=61, want=0))
    two_minutes = await charge(gateway, "call", 3, UPDATE, voice(used=120, want=0))
    nothing = await charge(gateway, "call", 4, TERMINATION, voice(used=0))
    one_octet = await charge(gateway, "video", 1, UPDATE, mscc(VIDEO_RG, used=1, want=0))
    over_first = await charge(gateway, "video", 2, TERMINATION, mscc(VIDEO_RG, used=10_001))

    # The minimum and the rounding apply to the session's cumulative usage: 1 s bills the
    # first minute, 62 s two minutes, 182 s four.
    assert [a.charged_micros for a in (one_second, sixty_one, two_minutes, nothing)] == [
        100_000, 100_000, 200_000, 0]
    assert one_octet.charged_micros == 100   # the first 10 increments
    assert over_first.charged_micros == 10   # 10 002 octets in all: 11 increments
    assert [(r.session_id, r.request_number, r.units, r.money_micros)
            for r in await usage_records(db, config)] == [
        ("call", 1, 1, 100_000), ("call", 2, 61, 100_000), ("call", 3, 120, 200_000),
        ("video", 1, 1, 100), ("video", 2, 10_001, 10)]


# --- zero rating, subscriber states, credit limit ---------------------------------------------


async def test_a_zero_rated_group_is_granted_without_money_and_recorded_at_zero(
        gateway, db, config):
    await setup(gateway, plan_of(data_rate(), portal_rate()), money=0)

    opened = await charge(gateway, "s1", 0, INITIAL, data(want=0), portal(want=0))
    ended = await charge(gateway, "s1", 1, TERMINATION, portal(used=7 * MB))

    paid, free = opened.grants
    assert paid.result == cpb.CREDIT_LIMIT_REACHED
    assert (free.result, free.granted.total_octets) == (cpb.SUCCESS, 10 * MB)
    assert not free.HasField("final_unit")
    assert ended.charged_micros == 0
    [r] = await usage_records(db, config)
    assert (r.rating_group, r.units, r.money_micros) == (PORTAL_RG, 7 * MB, 0)
    assert [(c.bucket_id, c.units, c.micros) for c in r.charges] == [("", 7 * MB, 0)]
    assert money(await gateway.account("acct-0")) == (0, 0)


async def test_in_grace_only_zero_rated_service_is_granted_but_usage_is_still_charged(
        gateway, db, config):
    await setup(gateway, plan_of(data_rate(), portal_rate(), sms_rate()))
    await charge(gateway, "s1", 0, INITIAL, data(want=0))  # 10 MB held: 10.00
    await gateway.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id=SUB,
                                                                 state=com.GRACE))

    update = await charge(gateway, "s1", 1, UPDATE, data(used=2 * MB, want=0), portal(want=0))
    fresh = await charge(gateway, "s2", 0, INITIAL, data(want=0), portal(want=0))
    sms = await charge(gateway, "sms-1", 0, EVENT, mscc(SMS_RG, used=1, field="service_units"))
    ended = await charge(gateway, "s1", 2, TERMINATION, portal(used=3 * MB))

    assert [(g.rating_group, g.result) for g in update.grants] == [
        (DATA_RG, cpb.END_USER_SERVICE_DENIED), (PORTAL_RG, cpb.SUCCESS)]
    assert update.grants[1].granted.total_octets == 10 * MB
    assert not update.grants[0].HasField("granted")
    assert update.charged_micros == 2 * EUR  # the usage before GRACE is charged
    assert [g.result for g in fresh.grants] == [cpb.END_USER_SERVICE_DENIED, cpb.SUCCESS]
    assert (sms.grants[0].result, sms.charged_micros) == (cpb.END_USER_SERVICE_DENIED, 0)
    assert ended.charged_micros == 0
    assert money(await gateway.account("acct-0")) == (8 * EUR, 0)
    assert [(r.session_id, r.rating_group, r.units, r.money_micros)
            for r in await usage_records(db, config)] == [
        ("s1", DATA_RG, 2 * MB, 2 * EUR), ("s1", PORTAL_RG, 3 * MB, 0)]


async def test_a_suspended_subscriber_is_denied_until_active_again(gateway):
    await setup(gateway, plan_of(data_rate(), portal_rate()))
    await charge(gateway, "s1", 0, INITIAL, data(want=0))
    before = await gateway.account("acct-0")
    await gateway.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id=SUB,
                                                                 state=com.SUSPENDED))

    update = await gateway.charge(request("s1", 1, UPDATE, SUB, data(used=MB, want=0)))
    opened = await gateway.charge(request("s2", 0, INITIAL, SUB, portal(want=0)))
    during = await gateway.account("acct-0")
    await gateway.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id=SUB,
                                                                 state=com.ACTIVE))
    back = await gateway.charge(request("s2", 0, INITIAL, SUB, portal(want=0)))

    for a in (update, opened):
        assert a.result == cpb.END_USER_SERVICE_DENIED
        assert list(a.grants) == []
        assert "SUSPENDED" in a.error_message
    assert money(during) == money(before)
    assert (back.result, back.grants[0].result) == (cpb.SUCCESS, cpb.SUCCESS)


async def test_a_postpaid_account_is_granted_down_to_its_credit_limit(gateway):
    await setup(gateway, plan_of(data_rate()), money=1 * EUR, credit_limit=3 * EUR)

    first = await charge(gateway, "s1", 0, INITIAL, data(want=0))
    held = await gateway.account("acct-0")
    refused = await charge(gateway, "s1", 1, UPDATE, data(used=4 * MB, want=0))

    [g] = first.grants
    assert g.granted.total_octets == 4 * MB  # 1.00 + 3.00 of credit
    assert g.final_unit.action == cpb.TERMINATE
    assert money(held) == (-3 * EUR, 4 * EUR)
    assert refused.charged_micros == 4 * EUR
    assert refused.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    acct = await gateway.account("acct-0")
    assert money(acct) == (-3 * EUR, 0)
    assert acct.credit_limit_micros == 3 * EUR


# --- destinations and zones -----------------------------------------------------------------


def destination_plan(*, fallback: bool = False) -> ppb.Plan:
    """Voice at 0.10 per minute at home, 1.00 abroad ("intl") and 0.30 roaming in "eu";
    numbers starting "+44" are abroad, "+4420" too (a longer prefix of the same zone), and
    "+3120" home. The top-up portal is zero-rated, with a home rate only."""
    return plan_of(
        voice_rate(), voice_rate(zone="intl", price_micros=1_000_000),
        voice_rate(zone="eu", price_micros=300_000), portal_rate(),
        destinations=[ppb.Destination(prefix="+44", zone="intl"),
                      ppb.Destination(prefix="+4420", zone="intl"),
                      ppb.Destination(prefix="+3120", zone="")],
        zone_fallback_home=fallback)


async def test_a_call_is_priced_in_the_zone_of_its_destination_prefix(gateway, db, config):
    await setup(gateway, destination_plan())

    async def call(session: str, destination: str, zone: str = "") -> cpb.ChargeAnswer:
        await charge(gateway, session, 0, INITIAL, voice(want=60), destination=destination,
                     zone=zone)
        return await charge(gateway, session, 1, TERMINATION, voice(used=60),
                            destination=destination, zone=zone)

    london = await call("c1", "+442071234567")
    amsterdam = await call("c2", "+31201234567")
    unmatched = await call("c3", "+12125550100")
    roaming = await call("c4", "+442071234567", zone="eu")  # the request's zone wins

    assert [a.charged_micros for a in (london, amsterdam, unmatched, roaming)] == [
        1 * EUR, 100_000, 100_000, 300_000]
    assert [(r.session_id, r.zone, r.price_micros) for r in await usage_records(db, config)] == [
        ("c1", "intl", 1_000_000), ("c2", "", 100_000), ("c3", "", 100_000),
        ("c4", "eu", 300_000)]
    assert money(await gateway.account("acct-0")) == (10 * EUR - 1_500_000, 0)


async def test_a_zone_without_a_rate_is_priced_at_home_when_the_plan_falls_back(
        gateway, db, config):
    await setup(gateway, destination_plan(fallback=True))

    opened = await charge(gateway, "s1", 0, INITIAL, portal(want=0), zone="roam-us")
    ended = await charge(gateway, "s1", 1, TERMINATION, portal(used=3 * MB), zone="roam-us")

    [g] = opened.grants
    assert (g.result, g.granted.total_octets) == (cpb.SUCCESS, 10 * MB)
    assert ended.charged_micros == 0
    [r] = await usage_records(db, config)
    assert (r.rating_group, r.zone, r.units, r.money_micros) == (PORTAL_RG, "roam-us", 3 * MB, 0)
    assert money(await gateway.account("acct-0")) == (10 * EUR, 0)


async def test_a_zone_without_a_rate_is_rating_failed_without_the_fallback(gateway):
    await setup(gateway, destination_plan())

    a = await charge(gateway, "s1", 0, INITIAL, portal(want=0), zone="roam-us")

    [g] = a.grants
    assert g.result == cpb.RATING_FAILED
    assert not g.HasField("granted")
    assert money(await gateway.account("acct-0")) == (10 * EUR, 0)


# --- validity, quota holding time, thresholds -----------------------------------------------


async def test_grants_carry_the_rates_validity_holding_time_and_threshold(gateway):
    plan = plan_of(voice_rate(validity_time_s=120, quota_holding_time_s=30,
                              threshold_percent=10),
                   data_rate(validity_time_s=0, threshold_percent=25))
    await setup(gateway, plan)

    a = await charge(gateway, "s1", 0, INITIAL, voice(want=0), data(want=2 * MB))
    b = await charge(gateway, "s1", 1, UPDATE, voice(used=300, want=200))

    v, d = a.grants
    assert (v.granted.time_seconds, v.validity_time_s, v.quota_holding_time_s,
            v.time_threshold_s, v.volume_threshold_octets) == (300, 120, 30, 30, 0)
    assert (d.granted.total_octets, d.validity_time_s, d.quota_holding_time_s,
            d.volume_threshold_octets, d.time_threshold_s) == (2 * MB, 0, 0, 500_000, 0)
    [v2] = b.grants
    assert (v2.granted.time_seconds, v2.validity_time_s, v2.time_threshold_s) == (200, 120, 20)


# --- threshold events -----------------------------------------------------------------------


async def test_bucket_used_events_come_once_at_50_80_and_100_percent_despite_retransmissions(
        gateway, db, config):
    await setup(gateway, plan_of(data_rate(), bundles=[bundle("data-100mb", 100 * MB)]))

    async def send(req: cpb.ChargeRequest) -> cpb.ChargeAnswer:
        # Sent twice in one message, then once more in a later one.
        first, dup = await gateway.batch([req, req])
        [late] = await gateway.batch([req])
        assert first == dup == late and first.result == cpb.SUCCESS
        return first

    # Ten sessions hold 10 MB each; the fifth takes the bucket to 50 %.
    for k in range(1, 6):
        await send(request(f"s{k}", 0, INITIAL, SUB, data(want=0)))
    # s5 ends unused (back to 40 %) and s11 takes it to 50 % again: no second event.
    await send(request("s5", 1, TERMINATION, SUB, data(used=0)))
    await send(request("s11", 0, INITIAL, SUB, data(want=0)))
    for k in range(6, 11):
        await send(request(f"s{k}", 0, INITIAL, SUB, data(want=0)))
    after_full = await send(request("s12", 0, INITIAL, SUB, data(want=0)))  # from money

    acct = await gateway.account("acct-0")
    assert after_full.grants[0].granted.total_octets == 10 * MB
    assert money(acct) == (0, 10 * EUR)
    found = [e for e in await events(db, config) if e.kind == events_pb2.BUCKET_USED]
    cycle = acct.cycle_start_ms
    assert [(e.event_id, e.threshold_percent, e.value, e.limit, e.bucket_id, e.session_id,
             e.rating_group) for e in found] == [
        (f"bucket:acct-0:data-100mb:{cycle}:50", 50, 50 * MB, 100 * MB, "data-100mb", "s5",
         DATA_RG),
        (f"bucket:acct-0:data-100mb:{cycle}:80", 80, 80 * MB, 100 * MB, "data-100mb", "s8",
         DATA_RG),
        (f"bucket:acct-0:data-100mb:{cycle}:100", 100, 100 * MB, 100 * MB, "data-100mb",
         "s10", DATA_RG)]
    assert all(e.cycle_start_ms == cycle for e in found)


async def test_low_balance_is_announced_once_while_money_stays_low(gateway, db, config):
    await setup(gateway, plan_of(data_rate(), low_balance_micros=2 * EUR), money=5 * EUR)
    await charge(gateway, "s1", 0, INITIAL, data(want=2 * MB))  # free money 3.00
    version = (await gateway.account("acct-0")).version

    await charge(gateway, "s1", 1, UPDATE, data(used=2 * MB, want=2 * MB))  # free 1.00
    again = request("s1", 2, UPDATE, SUB, data(used=MB, want=MB))  # free 1.00
    await gateway.batch([again, again])
    await gateway.charge(again)
    await charge(gateway, "s1", 3, TERMINATION, data(used=MB))  # free 1.00

    lows = [e for e in await events(db, config) if e.kind == events_pb2.LOW_BALANCE]
    assert [(e.event_id, e.value, e.limit, e.session_id) for e in lows] == [
        (f"low:acct-0:{version}", 1 * EUR, 2 * EUR, "s1")]
    assert money(await gateway.account("acct-0")) == (1 * EUR, 0)


async def test_one_batch_of_accounts_on_several_plans_gets_each_plans_terms(gateway, db, config):
    """What a plan gives its accounts is looked up once per plan of a batch: each account
    still gets its own plan's final-unit action in its grants, low-balance mark, and plan id
    and version in its usage records (accounts of one plan apart in the batch, plans first
    seen in another order than the accounts)."""
    def redirect(url: str) -> cpb.FinalUnitIndication:
        return cpb.FinalUnitIndication(action=cpb.REDIRECT, redirect_url=url)
    plans = {"p1": plan_of(data_rate(), plan_id="p1", final_unit=redirect("https://p1"),
                           low_balance_micros=EUR * 3 // 4),
             "p2": plan_of(data_rate(), plan_id="p2"),  # final units: TERMINATE
             "p3": plan_of(data_rate(), plan_id="p3", final_unit=redirect("https://p3"))}
    for plan_id in ("p1", "p1", "p2"):  # setup puts each plan again for each account
        await gateway.provisioning.PutPlan(plans[plan_id])
    version = {"p1": 3, "p2": 2, "p3": 2}
    of = {"a": "p3", "b": "p1", "c": "p2", "d": "p3"}  # in batch order
    for n, plan_id in of.items():
        await setup(gateway, plans[plan_id], money=1 * EUR, account_id=f"acct-{n}",
                    subscriber=f"sub-{n}")
    opened = await gateway.batch([request(f"s-{n}", 0, INITIAL, f"sub-{n}", data(want=2 * MB))
                                  for n in of])
    ended = await gateway.batch([request(f"s-{n}", 1, TERMINATION, f"sub-{n}",
                                         data(used=MB // 2)) for n in of])

    finals = [(a.grants[0].granted.total_octets, a.grants[0].final_unit.action,
               a.grants[0].final_unit.redirect_url) for a in opened]
    assert finals == [(1 * MB, cpb.REDIRECT, "https://p3"), (1 * MB, cpb.REDIRECT, "https://p1"),
                      (1 * MB, cpb.TERMINATE, ""), (1 * MB, cpb.REDIRECT, "https://p3")]
    assert [a.result for a in ended] == [cpb.SUCCESS] * 4
    for n, plan_id in of.items():
        [record] = await usage_records(db, config, f"acct-{n}")
        assert (record.plan_id, record.plan_version, record.money_micros) == (
            plan_id, version[plan_id], EUR // 2)
        low = [e for e in await events(db, config, f"acct-{n}")
               if e.kind == events_pb2.LOW_BALANCE]
        assert bool(low) == (plan_id == "p1"), (n, low)  # only p1 has a low-balance mark


async def test_final_units_and_credit_exhausted_events_once_per_exhaustion(gateway, db, config):
    await setup(gateway, plan_of(data_rate()), money=1 * EUR)

    last = await charge(gateway, "s1", 0, INITIAL, data(want=0))
    refused = request("s1", 1, UPDATE, SUB, data(used=MB, want=0))
    v1 = (await gateway.account("acct-0")).version
    await gateway.charge(refused)
    await gateway.charge(refused)  # a retransmission
    other = await charge(gateway, "s2", 0, INITIAL, data(want=0))  # still nothing: no event
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="acct-0",
                                                      amount_micros=EUR))
    resumed = await charge(gateway, "s2", 1, UPDATE, data(want=0))  # 1 MB, final again
    v2 = (await gateway.account("acct-0")).version
    await charge(gateway, "s2", 2, UPDATE, data(used=MB, want=0))  # exhausted again

    assert (last.grants[0].granted.total_octets, last.grants[0].final_unit.action) == (
        MB, cpb.TERMINATE)
    assert other.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    assert resumed.grants[0].granted.total_octets == MB
    found = [(e.kind, e.event_id, e.value, e.limit, e.session_id)
             for e in await events(db, config)
             if e.kind in (events_pb2.FINAL_UNITS, events_pb2.CREDIT_EXHAUSTED)]
    assert found == [
        (events_pb2.FINAL_UNITS, f"final:s1:0:{DATA_RG}", MB, 0, "s1"),
        (events_pb2.CREDIT_EXHAUSTED, f"exhausted:acct-0:{v1}", 0, 0, "s1"),
        (events_pb2.FINAL_UNITS, f"final:s2:1:{DATA_RG}", MB, 0, "s2"),
        (events_pb2.CREDIT_EXHAUSTED, f"exhausted:acct-0:{v2}", 0, 0, "s2")]


# --- member caps ----------------------------------------------------------------------------


async def test_a_members_money_cap_shrinks_its_grants_and_then_stops_it(gateway, db, config):
    await setup(gateway, plan_of(data_rate()), money=100 * EUR, subscriber="")
    await gateway.provisioning.AddMember(ppb.AddMemberRequest(
        account_id="acct-0", subscriber_id="teen", caps=ppb.MemberCaps(money_micros=3 * EUR)))

    first = await charge(gateway, "s1", 0, INITIAL, data(want=0), sub="teen")
    stopped = await charge(gateway, "s1", 1, UPDATE, data(used=3 * MB, want=0), sub="teen")

    assert first.grants[0].granted.total_octets == 3 * MB
    assert first.grants[0].HasField("final_unit")
    assert (stopped.charged_micros, stopped.grants[0].result) == (
        3 * EUR, cpb.CREDIT_LIMIT_REACHED)
    acct = await gateway.account("acct-0")
    [m] = acct.members
    assert (m.used.money_micros, m.caps.money_micros) == (3 * EUR, 3 * EUR)
    assert money(acct) == (97 * EUR, 0)
    [cap] = [e for e in await events(db, config) if e.kind == events_pb2.MEMBER_CAP]
    assert (cap.event_id, cap.subscriber_id, cap.value, cap.limit) == (
        f"member-cap:acct-0:teen:{acct.cycle_start_ms}:0", "teen", 0, 3 * EUR)


async def test_a_subscriber_made_a_member_while_holding_a_grant_stays_within_its_cap(gateway):
    await setup(gateway, plan_of(data_rate()), money=100 * EUR, subscriber="teen")
    await charge(gateway, "s1", 0, INITIAL, data(want=0), sub="teen")  # 10 MB held: 10.00
    await gateway.provisioning.AddMember(ppb.AddMemberRequest(
        account_id="acct-0", subscriber_id="teen", caps=ppb.MemberCaps(money_micros=3 * EUR)))

    a = await charge(gateway, "s1", 1, UPDATE, data(used=0, want=0), sub="teen")
    [m] = (await gateway.account("acct-0")).members

    assert a.grants[0].granted.total_octets <= 3 * MB
    assert m.used.money_micros <= 3 * EUR


# --- plan versions, add-ons, bucket expiry --------------------------------------------------


async def test_a_new_plan_version_prices_new_usage_and_old_records_keep_theirs(
        gateway, db, config):
    await setup(gateway, plan_of(data_rate()))
    await charge(gateway, "old", 0, INITIAL, data(want=MB))
    old = await charge(gateway, "old", 1, TERMINATION, data(used=MB))

    v2 = await gateway.provisioning.PutPlan(plan_of(data_rate(price_micros=2000)))
    await charge(gateway, "new", 0, INITIAL, data(want=MB))
    held = await gateway.account("acct-0")
    new = await charge(gateway, "new", 1, TERMINATION, data(used=MB))

    assert v2.version == 2
    assert (old.charged_micros, new.charged_micros) == (1 * EUR, 2 * EUR)
    assert held.reserved_micros == 2 * EUR
    assert [(r.session_id, r.plan_id, r.plan_version, r.price_micros, r.money_micros)
            for r in await usage_records(db, config)] == [
        ("old", "p", 1, 1000, 1 * EUR), ("new", "p", 2, 2000, 2 * EUR)]


async def test_an_add_on_bought_mid_session_pays_for_the_next_grant(gateway, db, config):
    plan = plan_of(data_rate(), addons=[ppb.AddOn(
        addon_id="data-1gb", price_micros=3 * EUR,
        bundle=ppb.BundleTemplate(bucket_id="extra", rating_groups=[DATA_RG],
                                  unit_type=com.OCTETS, units=1000 * MB, validity_days=30))])
    await setup(gateway, plan)
    await charge(gateway, "s1", 0, INITIAL, data(want=2 * MB))  # 2.00 held from money

    bought = await gateway.provisioning.BuyAddOn(ppb.BuyAddOnRequest(
        order_id="o1", account_id="acct-0", addon_id="data-1gb"))
    next_grant = await charge(gateway, "s1", 1, UPDATE, data(want=0))
    acct = await gateway.account("acct-0")
    ended = await charge(gateway, "s1", 2, TERMINATION, data(used=4 * MB))

    assert bought.applied and bought.account.money_micros == 5 * EUR
    assert next_grant.grants[0].granted.total_octets == 10 * MB
    assert money(acct) == (7 * EUR, 0)
    assert [(x.bucket_id, x.units, x.amount) for x in acct.reservations] == [
        ("extra:o1", 10 * MB, 10 * MB)]
    assert ended.charged_micros == 0
    [r] = await usage_records(db, config)
    assert [(c.bucket_id, c.units, c.micros) for c in r.charges] == [("extra:o1", 4 * MB, 0)]
    [extra] = (await gateway.account("acct-0")).buckets
    assert (extra.used, extra.reserved, extra.remaining) == (4 * MB, 0, 996 * MB)


async def test_a_bucket_is_usable_until_its_expiry_whatever_the_plans_time_zone(gateway):
    """Bucket expiry is an instant (Unix ms); a plan's time zone only moves its time windows."""
    now = int(time.time() * 1000)
    gift = ppb.Bucket(bucket_id="gift", rating_groups=[DATA_RG], unit_type=com.OCTETS,
                      initial=50 * MB, expiry_ms=now + 2 * 3600 * 1000)
    await setup(gateway, plan_of(data_rate(), timezone="Asia/Tokyo"), buckets=[gift])

    a = await charge(gateway, "s1", 0, INITIAL, data(want=0), time_ms=now)

    assert a.grants[0].granted.total_octets == 10 * MB
    acct = await gateway.account("acct-0")
    assert [(x.bucket_id, x.amount) for x in acct.reservations] == [("gift", 10 * MB)]
    assert money(acct) == (10 * EUR, 0)


# --- billing cycles and the sweeper (a clock the test moves) ---------------------------------


async def test_a_new_billing_cycle_refills_renewing_bundles_and_resets_spend_and_cap(
        config, db):
    clock = Clock()
    app, gw = await start_with_clock(config.replace(sweep_interval_s=0), clock)
    try:
        plan = plan_of(data_rate(), cycle_days=7,
                       bundles=[bundle("monthly", 10 * MB, renew=True)])
        gift = ppb.Bucket(bucket_id="gift", rating_groups=[DATA_RG], unit_type=com.OCTETS,
                          initial=5 * MB, priority=1, renew=False)
        created = await setup(gw, plan, cap=2 * EUR, buckets=[gift])

        # Cycle 1: the bundle, the gift and the 2.00 cap are all used.
        await charge(gw, "s1", 0, INITIAL, data(want=0))          # 10 MB from monthly
        g1 = await charge(gw, "s1", 1, UPDATE, data(used=10 * MB, want=0))   # gift
        g2 = await charge(gw, "s1", 2, UPDATE, data(used=5 * MB, want=0))    # money, capped
        await charge(gw, "s1", 3, TERMINATION, data(used=2 * MB))
        refused = await charge(gw, "s2", 0, INITIAL, data(want=0))
        end1 = await gw.account("acct-0")

        # A second after the cycle's end the next request starts cycle 2.
        clock.ms = created.cycle_end_ms + 1000
        renewed = await charge(gw, "s3", 0, INITIAL, data(want=0))
        cycle2 = await gw.account("acct-0")
        capped = await charge(gw, "s3", 1, UPDATE, data(used=10 * MB, want=0))
        await charge(gw, "s3", 2, TERMINATION, data(used=2 * MB))
        end2 = await gw.account("acct-0")
    finally:
        await stop(app, gw)

    assert [g1.grants[0].granted.total_octets, g2.grants[0].granted.total_octets] == [
        5 * MB, 2 * MB]
    assert refused.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    assert (end1.cycle_spent_micros, end1.money_micros) == (2 * EUR, 8 * EUR)
    assert [(b.bucket_id, b.remaining) for b in end1.buckets] == [("monthly", 0), ("gift", 0)]

    assert renewed.grants[0].granted.total_octets == 10 * MB
    assert (cycle2.cycle_start_ms, cycle2.cycle_end_ms) == (
        created.cycle_end_ms, created.cycle_end_ms + 7 * DAY_MS)
    assert cycle2.cycle_spent_micros == 0
    assert [(b.bucket_id, b.used, b.reserved, b.remaining) for b in cycle2.buckets] == [
        ("monthly", 0, 10 * MB, 0), ("gift", 5 * MB, 0, 0)]
    assert capped.grants[0].granted.total_octets == 2 * MB  # the cap is usable again
    assert (end2.cycle_spent_micros, end2.money_micros, end2.reserved_micros) == (
        2 * EUR, 6 * EUR, 0)

    found = [(e.kind, e.event_id) for e in await events(db, config)
             if e.kind in (events_pb2.BUCKET_USED, events_pb2.SPENDING_CAP)
             and e.threshold_percent == 100]
    c1, c2 = created.cycle_start_ms, created.cycle_end_ms
    assert Counter(found) == Counter([
        (events_pb2.BUCKET_USED, f"bucket:acct-0:monthly:{c1}:100"),
        (events_pb2.BUCKET_USED, f"bucket:acct-0:gift:{c1}:100"),
        (events_pb2.SPENDING_CAP, f"cap:acct-0:{c1}:100"),
        (events_pb2.BUCKET_USED, f"bucket:acct-0:monthly:{c2}:100"),
        (events_pb2.SPENDING_CAP, f"cap:acct-0:{c2}:100")])


async def test_the_running_sweeper_releases_reservations_of_silent_sessions(config, db):
    clock = Clock()
    app, gw = await start_with_clock(config.replace(sweep_interval_s=0.05), clock)
    try:
        plan = plan_of(data_rate(validity_time_s=3600), voice_rate(),
                       bundles=[bundle("data-100mb", 100 * MB)])
        await setup(gw, plan)
        await charge(gw, "s1", 0, INITIAL, data(want=0), voice(want=0))
        await asyncio.sleep(0.3)  # several sweeps, all within validity
        held = await gw.account("acct-0")

        # Past validity (3600 s) and grace (60 s): the next sweep gives everything back.
        clock.ms += (3600 + 60 + 1) * 1000
        for _ in range(100):
            swept = await gw.account("acct-0")
            if not swept.reservations:
                break
            await asyncio.sleep(0.05)
        late = await charge(gw, "s1", 1, TERMINATION, data(used=3 * MB), voice(used=90))
        final = await gw.account("acct-0")
    finally:
        await stop(app, gw)

    assert len(held.reservations) == 2
    assert (held.buckets[0].reserved, held.reserved_micros) == (10 * MB, 500_000)
    assert list(swept.reservations) == []
    assert (swept.buckets[0].reserved, swept.buckets[0].remaining) == (0, 100 * MB)
    assert money(swept) == (10 * EUR, 0)
    # Usage reported after the sweep is still charged, as overage.
    assert late.charged_micros == 200_000
    assert (final.buckets[0].used, money(final)) == (3 * MB, (10 * EUR - 200_000, 0))
    records = await usage_records(db, config)
    assert [(r.rating_group, r.overage, r.overage_units) for r in records] == [
        (DATA_RG, True, 3 * MB), (VOICE_RG, True, 90)]
