"""Usage-control stories as a gateway drives them, over the real gRPC API and a real Redis.

Each story is one subscriber (or one family) meeting one control: a bundle running out with a
final-unit redirect and a top-up, roaming and a barred zone, a call over a tariff change, a
family member's cap, a spending cap. Every expected number is worked out by hand in the
comments next to it; money is in micros (1 EUR = 1_000_000).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from tests.helpers import (
    DATA_RG,
    EUR,
    MB,
    VOICE_RG,
    Gateway,
    any_event_time,
    data_rate,
    mscc,
    request,
    usage_records,
)
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import events_pb2
from tollgate.v1 import provisioning_pb2 as ppb

INITIAL, UPDATE, TERMINATION = cpb.INITIAL, cpb.UPDATE, cpb.TERMINATION
GB = 1000 * MB
TOPUP_URL = "https://topup.example.net/"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
WEEKDAYS = 0b0011111  # Monday .. Friday


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
def config(config: Config) -> Config:
    """The tariff-change story dates its requests on a Wednesday in January 2024."""
    return any_event_time(config)



async def events(db: aioredis.Redis, config: Config, account_id: str) -> list[events_pb2.Event]:
    stream = keys.events_stream(keys.partition_of(account_id, config.partitions))
    found = [events_pb2.Event.FromString(f[b"e"]) for _, f in await db.xrange(stream)]
    return [e for e in found if e.account_id == account_id]



async def open_account(gateway: Gateway, plan: ppb.Plan, account_id: str, money: int,
                       subscribers: tuple[str, ...] = (), cap: int = 0) -> None:
    await gateway.provisioning.PutPlan(plan)
    await gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id=account_id, plan_id=plan.plan_id, initial_money_micros=money,
        spending_cap_micros=cap))
    for sub in subscribers:
        await gateway.provisioning.CreateSubscriber(
            ppb.Subscriber(subscriber_id=sub, account_id=account_id))


def local_ms(hour: int, minute: int, second: int = 0) -> int:
    """Wednesday 17 January 2024 at this Amsterdam wall-clock time (UTC+1), as Unix ms."""
    return int(datetime(2024, 1, 17, hour, minute, second, tzinfo=AMSTERDAM).timestamp() * 1000)


def granted(a: cpb.ChargeAnswer) -> int:
    [g] = a.grants
    return g.granted.total_octets or g.granted.time_seconds


# --- (a) the bundle runs out, a redirect to the top-up portal, a top-up ----------------------


async def test_a_bundle_runs_out_with_a_redirect_then_a_top_up_resumes_the_session(
        gateway, db, config):
    plan = ppb.Plan(
        plan_id="prepaid-20mb", name="Prepaid 20 MB",
        rates=[data_rate(validity_time_s=3600, threshold_percent=20)],
        bundles=[ppb.BundleTemplate(bucket_id="data-20mb", rating_groups=[DATA_RG],
                                    unit_type=com.OCTETS, units=20 * MB)],
        final_unit=cpb.FinalUnitIndication(action=cpb.REDIRECT, redirect_url=TOPUP_URL,
                                           filter_ids=["allow-topup-portal"]))
    await open_account(gateway, plan, "anna", 3 * EUR, ("+31600000001",))
    rn = 0

    async def send(kind: int, used: int | None, want: int | None = 0) -> cpb.ChargeAnswer:
        nonlocal rn
        a = await gateway.charge(request("pgw;anna;1", rn, kind, "+31600000001",
                                         mscc(DATA_RG, used=used, want=want)))
        assert a.result == cpb.SUCCESS, a
        rn += 1
        return a

    # The bundle pays for the first two default quotas of 10 MB; neither is the last.
    first = await send(INITIAL, None)
    second = await send(UPDATE, 10 * MB)
    assert [granted(first), granted(second)] == [10 * MB, 10 * MB]
    assert [a.grants[0].HasField("final_unit") for a in (first, second)] == [False, False]
    assert [first.charged_micros, second.charged_micros] == [0, 0]

    # The bundle is gone; 3.00 buys the last 3 MB, which carry the redirect to the portal.
    last = await send(UPDATE, 10 * MB)
    assert granted(last) == 3 * MB
    assert last.grants[0].final_unit == cpb.FinalUnitIndication(
        action=cpb.REDIRECT, redirect_url=TOPUP_URL, filter_ids=["allow-topup-portal"])
    assert last.grants[0].volume_threshold_octets == 600_000  # 20 % of 3 MB
    acct = await gateway.account("anna")
    assert (acct.money_micros, acct.reserved_micros) == (0, 3 * EUR)
    assert (acct.buckets[0].used, acct.buckets[0].remaining) == (20 * MB, 0)
    version = acct.version  # the exhaustion below is announced under this account version

    # Those 3 MB cost 3.00 and nothing is left: the next grant is refused.
    refused = await send(UPDATE, 3 * MB)
    assert refused.charged_micros == 3 * EUR
    [g] = refused.grants
    assert g.result == cpb.CREDIT_LIMIT_REACHED
    assert not g.HasField("granted") and not g.HasField("final_unit")
    acct = await gateway.account("anna")
    assert (acct.money_micros, acct.reserved_micros) == (0, 0)

    # The subscriber tops up 20.00 on the portal; the session gets full quotas again.
    topup = await gateway.provisioning.TopUp(ppb.TopUpRequest(
        topup_id="portal-1", account_id="anna", amount_micros=20 * EUR))
    assert (topup.applied, topup.money_micros) == (True, 20 * EUR)
    resumed = await send(UPDATE, None)
    assert resumed.grants[0].result == cpb.SUCCESS
    assert granted(resumed) == 10 * MB
    assert not resumed.grants[0].HasField("final_unit")
    bye = await send(TERMINATION, 4 * MB, want=None)
    assert bye.charged_micros == 4 * EUR

    acct = await gateway.account("anna")
    assert (acct.money_micros, acct.reserved_micros) == (16 * EUR, 0)  # 3 + 20 - 3 - 4
    assert [(r.request_number, r.money_micros,
             [(c.bucket_id, c.units, c.micros) for c in r.charges])
            for r in await usage_records(db, config, "anna")] == [
        (1, 0, [("data-20mb", 10 * MB, 0)]),
        (2, 0, [("data-20mb", 10 * MB, 0)]),
        (3, 3 * EUR, [("", 3 * MB, 3 * EUR)]),
        (5, 4 * EUR, [("", 4 * MB, 4 * EUR)])]
    assert [(e.kind, e.threshold_percent, e.event_id) for e in await events(db, config, "anna")
            if e.kind in (events_pb2.FINAL_UNITS, events_pb2.CREDIT_EXHAUSTED)] == [
        (events_pb2.FINAL_UNITS, 0, f"final:pgw;anna;1:2:{DATA_RG}"),
        (events_pb2.CREDIT_EXHAUSTED, 0, f"exhausted:anna:{version}")]


# --- (b) roaming at the roaming price, a barred zone denied ---------------------------------


async def test_roaming_is_priced_at_the_zone_rate_and_a_barred_zone_is_denied(
        gateway, db, config):
    plan = ppb.Plan(plan_id="travel", name="Travel", rates=[
        data_rate(),                                                  # home: 1.00 per MB
        data_rate(zone="eu", price_micros=2000, default_quota=1 * MB,
                  validity_time_s=1800),                              # EU: 2.00 per MB
        data_rate(zone="world", not_allowed=True, price_micros=0, increment=1,
                  default_quota=1)])                                  # barred
    await open_account(gateway, plan, "bram", 10 * EUR, ("+31600000002",))
    sub = "+31600000002"

    # In the EU: a 1 MB default quota held at 2.00, used and charged at 2.00.
    a0 = await gateway.charge(request("eu-1", 0, INITIAL, sub, mscc(DATA_RG, want=0),
                                      zone="eu"))
    assert (a0.grants[0].result, granted(a0), a0.grants[0].validity_time_s) == (
        cpb.SUCCESS, 1 * MB, 1800)
    assert (await gateway.account("bram")).reserved_micros == 2 * EUR
    a1 = await gateway.charge(request("eu-1", 1, UPDATE, sub,
                                      mscc(DATA_RG, used=1 * MB, want=0), zone="eu"))
    a2 = await gateway.charge(request("eu-1", 2, TERMINATION, sub,
                                      mscc(DATA_RG, used=250_000), zone="eu"))
    assert (a1.charged_micros, a2.charged_micros) == (2 * EUR, 500_000)  # 250 kB at 2000

    # The same megabyte at home costs half.
    await gateway.charge(request("home-1", 0, INITIAL, sub, mscc(DATA_RG, want=1 * MB)))
    home = await gateway.charge(request("home-1", 1, TERMINATION, sub,
                                        mscc(DATA_RG, used=1 * MB)))
    assert home.charged_micros == 1 * EUR

    # Outside the allowed zones: the grant is denied, nothing is held or charged.
    before = await gateway.account("bram")
    barred = await gateway.charge(request("world-1", 0, INITIAL, sub, mscc(DATA_RG, want=0),
                                          zone="world"))
    assert barred.result == cpb.SUCCESS
    [g] = barred.grants
    assert g.result == cpb.END_USER_SERVICE_DENIED
    assert not g.HasField("granted")
    after = await gateway.account("bram")
    assert (after.money_micros, after.reserved_micros) == (before.money_micros, 0)
    assert after.money_micros == 10 * EUR - 2 * EUR - 500_000 - 1 * EUR

    records = await usage_records(db, config, "bram")
    assert [(r.session_id, r.zone, r.units, r.price_micros, r.money_micros) for r in records] == [
        ("eu-1", "eu", 1 * MB, 2000, 2 * EUR),
        ("eu-1", "eu", 250_000, 2000, 500_000),
        ("home-1", "", 1 * MB, 1000, 1 * EUR)]


# --- (c) a call over the 19:00 tariff change ------------------------------------------------


async def test_a_call_over_the_evening_tariff_change_gets_validity_to_it_and_two_prices(
        gateway, db, config):
    plan = ppb.Plan(
        plan_id="voice", name="Voice", timezone="Europe/Amsterdam",
        rates=[ppb.Rate(
            rating_group=VOICE_RG, unit_type=com.SECONDS, price_micros=100_000,  # 0.10/min
            increment=60, first_increment=60, default_quota=600, validity_time_s=3600,
            threshold_percent=10,
            windows=[ppb.TimeWindow(name="evening", weekdays=WEEKDAYS, start_minute=19 * 60,
                                    end_minute=24 * 60, price_micros=50_000),
                     ppb.TimeWindow(name="night", weekdays=WEEKDAYS, start_minute=0,
                                    end_minute=8 * 60, price_micros=50_000)])])
    await open_account(gateway, plan, "carla", 10 * EUR, ("+31600000003",))
    sub = "+31600000003"

    def voice(*, used: int | None = None, want: int | None = None) -> cpb.ServiceUnits:
        return mscc(VOICE_RG, used=used, want=want, field="time_seconds")

    # 18:55 on a Wednesday: ten peak minutes are held (1.00), valid until 19:00 only.
    a0 = await gateway.charge(request("call-1", 0, INITIAL, sub, voice(want=0),
                                      time_ms=local_ms(18, 55)))
    [g] = a0.grants
    assert (g.result, g.granted.time_seconds, g.validity_time_s, g.time_threshold_s) == (
        cpb.SUCCESS, 600, 300, 60)
    assert (await gateway.account("carla")).reserved_micros == 1 * EUR

    # At 19:03 the gateway reports the 8 minutes since 18:55: 5 peak minutes at 0.10 and 3
    # evening minutes at 0.05. The new grant is priced and valid as evening time.
    a1 = await gateway.charge(request("call-1", 1, UPDATE, sub, voice(used=480, want=0),
                                      time_ms=local_ms(19, 3)))
    assert a1.charged_micros == 5 * 100_000 + 3 * 50_000
    [g] = a1.grants
    assert (g.granted.time_seconds, g.validity_time_s) == (600, 3600)
    acct = await gateway.account("carla")
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR - 650_000 - 500_000, 500_000)

    # Hung up at 19:05:30: 150 s is three started evening minutes.
    a2 = await gateway.charge(request("call-1", 2, TERMINATION, sub, voice(used=150),
                                      time_ms=local_ms(19, 5, 30)))
    assert a2.charged_micros == 3 * 50_000

    acct = await gateway.account("carla")
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR - 800_000, 0)
    split, evening = await usage_records(db, config, "carla")
    assert (split.units, split.start_time_ms, split.end_time_ms, split.money_micros) == (
        480, local_ms(18, 55), local_ms(19, 3), 650_000)
    assert [(c.bucket_id, c.units, c.micros) for c in split.charges] == [("", 480, 650_000)]
    assert (evening.units, evening.start_time_ms, evening.end_time_ms,
            evening.money_micros) == (150, local_ms(19, 3), local_ms(19, 5, 30), 150_000)


# --- (d) a family sharing 20 GB, one child capped -------------------------------------------


async def test_a_family_shares_a_bundle_and_the_capped_child_is_stopped_alone(
        gateway, db, config):
    plan = ppb.Plan(
        plan_id="family-20gb", name="Family 20 GB",
        rates=[data_rate(default_quota=500 * MB)],
        bundles=[ppb.BundleTemplate(bucket_id="shared-20gb", rating_groups=[DATA_RG],
                                    unit_type=com.OCTETS, units=20 * GB)])
    await open_account(gateway, plan, "family", 10 * EUR)
    for who in ("mum", "dad", "kid-2"):
        await gateway.provisioning.AddMember(ppb.AddMemberRequest(
            account_id="family", subscriber_id=who))
    await gateway.provisioning.AddMember(ppb.AddMemberRequest(
        account_id="family", subscriber_id="kid-1", caps=ppb.MemberCaps(octets=1 * GB)))
    family = ("mum", "dad", "kid-1", "kid-2")

    # Everybody opens a session with a 500 MB quota from the shared bundle.
    opened = [await gateway.charge(request(f"s-{who}", 0, INITIAL, who, mscc(DATA_RG, want=0)))
              for who in family]
    assert [(a.grants[0].result, granted(a)) for a in opened] == [(cpb.SUCCESS, 500 * MB)] * 4

    # kid-1 uses 500 MB and gets the last 500 MB of the 1 GB cap, marked final.
    a = await gateway.charge(request("s-kid-1", 1, UPDATE, "kid-1",
                                     mscc(DATA_RG, used=500 * MB, want=0)))
    assert (a.grants[0].result, granted(a)) == (cpb.SUCCESS, 500 * MB)
    assert a.grants[0].final_unit.action == cpb.TERMINATE

    # kid-1 uses those too: the cap is reached, the grant refused though bundle and money
    # are plenty; a new session of kid-1 is refused as well.
    stopped = await gateway.charge(request("s-kid-1", 2, UPDATE, "kid-1",
                                           mscc(DATA_RG, used=500 * MB, want=0)))
    again = await gateway.charge(request("s-kid-1b", 0, INITIAL, "kid-1",
                                         mscc(DATA_RG, want=0)))
    for ans in (stopped, again):
        assert ans.result == cpb.SUCCESS
        assert ans.grants[0].result == cpb.CREDIT_LIMIT_REACHED
        assert not ans.grants[0].HasField("granted")
    assert stopped.charged_micros == 0

    # The other three go on.
    going = [await gateway.charge(request(f"s-{who}", 1, UPDATE, who,
                                          mscc(DATA_RG, used=500 * MB, want=0)))
             for who in ("mum", "dad", "kid-2")]
    assert [(a.grants[0].result, granted(a), a.grants[0].HasField("final_unit"))
            for a in going] == [(cpb.SUCCESS, 500 * MB, False)] * 3

    acct = await gateway.account("family")
    [b] = acct.buckets
    assert (b.used, b.reserved, b.remaining) == (2500 * MB, 1500 * MB, 16 * GB)
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR, 0)
    assert {m.subscriber_id: (m.caps.octets, m.used.octets) for m in acct.members} == {
        "dad": (0, 1 * GB), "kid-1": (1 * GB, 1 * GB), "kid-2": (0, 1 * GB),
        "mum": (0, 1 * GB)}
    caps = [e for e in await events(db, config, "family") if e.kind == events_pb2.MEMBER_CAP]
    assert caps, "no MEMBER_CAP event"
    assert {(e.event_id, e.subscriber_id, e.threshold_percent, e.value, e.limit)
            for e in caps} == {(f"member-cap:family:kid-1:{acct.cycle_start_ms}:{com.OCTETS}",
                                "kid-1", 100, com.OCTETS, 1 * GB)}
    assert caps[0].session_id == "s-kid-1"


# --- (e) a spending cap ---------------------------------------------------------------------


async def test_a_spending_cap_shrinks_grants_so_the_cycle_spend_stops_at_it(
        gateway, db, config):
    plan = ppb.Plan(plan_id="capped", name="Capped", rates=[data_rate()])
    await open_account(gateway, plan, "dirk", 100 * EUR, ("+31600000004",), cap=25 * EUR)
    sub = "+31600000004"

    # Two sessions hold 10.00 each: 20.00 of the 25.00 cap is taken (80 %).
    s1 = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))
    s2 = await gateway.charge(request("s2", 0, INITIAL, sub, mscc(DATA_RG, want=0)))
    assert [granted(s1), granted(s2)] == [10 * MB, 10 * MB]

    # s1 spends its 10.00 (20.00 with s2's hold): only 5.00 of cap is left, so 5 MB.
    a = await gateway.charge(request("s1", 1, UPDATE, sub, mscc(DATA_RG, used=10 * MB, want=0)))
    assert (a.charged_micros, granted(a)) == (10 * EUR, 5 * MB)
    assert a.grants[0].HasField("final_unit")

    # s2 spends its 10.00: the cap is all spent or held, the grant is refused.
    b = await gateway.charge(request("s2", 1, UPDATE, sub, mscc(DATA_RG, used=10 * MB, want=0)))
    assert b.charged_micros == 10 * EUR
    assert b.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    await gateway.charge(request("s1", 2, TERMINATION, sub, mscc(DATA_RG, used=5 * MB)))
    late = await gateway.charge(request("s3", 0, INITIAL, sub, mscc(DATA_RG, want=0)))
    assert late.grants[0].result == cpb.CREDIT_LIMIT_REACHED

    acct = await gateway.account("dirk")
    assert (acct.cycle_spent_micros, acct.reserved_micros, acct.money_micros) == (
        25 * EUR, 0, 75 * EUR)
    cap_events = [(e.threshold_percent, e.value, e.limit, e.session_id, e.event_id)
                  for e in await events(db, config, "dirk") if e.kind == events_pb2.SPENDING_CAP]
    cycle = acct.cycle_start_ms
    assert cap_events == [(80, 20 * EUR, 25 * EUR, "s2", f"cap:dirk:{cycle}:80"),
                          (100, 25 * EUR, 25 * EUR, "s1", f"cap:dirk:{cycle}:100")]
