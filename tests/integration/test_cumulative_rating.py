"""Cumulative session pricing over the real gRPC API and a real Redis: a session costs the same
however often the gateway reports, a bundle never makes usage dearer, and the tariff shapes
built on it (connect fees, billing steps, prices finer than a micro-unit per step with their
rounding, a session's maximum cost, bucket expiry by the server's clock).

Every expected amount is worked out by hand in micro-units (1.00 = 1_000_000).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import EUR, VOICE_RG, Gateway, mscc, request, usage_records
from tests.integration.test_rating_features import Clock, plan_of, setup, start_with_clock, stop
from tollgate.engine.billing.rerate import rerate
from tollgate.engine.ops.config import Config
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

INITIAL, UPDATE, TERMINATION, EVENT = cpb.INITIAL, cpb.UPDATE, cpb.TERMINATION, cpb.EVENT
SUB = "sub-0"


def per_second(**kw: object) -> ppb.Rate:
    """Voice at 1.00 per second, at least 60 s per session, 600 s default quota."""
    fields: dict[str, object] = {"rating_group": VOICE_RG, "unit_type": com.SECONDS,
                                 "price_micros": EUR, "increment": 1, "first_increment": 60,
                                 "default_quota": 600}
    fields.update(kw)
    return ppb.Rate(**fields)  # type: ignore[arg-type]


def per_minute(**kw: object) -> ppb.Rate:
    """Voice at 1.00 per started minute."""
    fields: dict[str, object] = {"increment": 60, "first_increment": 0}
    fields.update(kw)
    return per_second(**fields)


def voice(*, used: int | None = None, want: int | None = None) -> cpb.ServiceUnits:
    return mscc(VOICE_RG, used=used, want=want, field="time_seconds")


def seconds_bucket(units: int) -> ppb.Bucket:
    return ppb.Bucket(bucket_id="minutes", rating_groups=[VOICE_RG], unit_type=com.SECONDS,
                      initial=units, remaining=units)


async def call(gw: Gateway, session: str, *reports: int, sub: str = SUB) -> list[int]:
    """A voice call reported in these parts (the last with the TERMINATION): what each
    answer charged."""
    answers = [await gw.charge(request(session, 0, INITIAL, sub, voice(want=0)))]
    for n, used in enumerate(reports, start=1):
        last = n == len(reports)
        answers.append(await gw.charge(request(
            session, n, TERMINATION if last else UPDATE, sub,
            voice(used=used) if last else voice(used=used, want=0))))
    assert [a.result for a in answers] == [cpb.SUCCESS] * len(answers), answers
    return [a.charged_micros for a in answers]


async def balances(gw: Gateway) -> tuple[int, int, list[tuple[str, int]]]:
    acct = await gw.account("acct-0")
    return (acct.money_micros, acct.reserved_micros,
            [(b.bucket_id, b.remaining) for b in acct.buckets])


# --- 1. the first increment and rounding apply per session, not per report --------------------


async def test_an_interim_report_does_not_change_what_a_call_costs(gateway):
    await setup(gateway, plan_of(per_second()), money=1000 * EUR)

    once = await call(gateway, "once", 132)
    split = await call(gateway, "split", 30, 102)
    many = await call(gateway, "many", 1, 1, 1, 50, 79)

    assert once == [0, 132 * EUR]
    assert split == [0, 60 * EUR, 72 * EUR]  # the first 60 s once, then per second
    assert sum(many) == 132 * EUR
    assert many[1:4] == [60 * EUR, 0, 0]  # 3 s used: still inside the first minute


async def test_rounding_to_the_increment_applies_to_the_sessions_total(gateway, db, config):
    await setup(gateway, plan_of(per_minute()), money=100 * EUR)

    charged = await call(gateway, "c", 10, 10, 10, 10, 10, 10, 10)  # 70 s in 7 reports

    assert charged == [0, EUR, 0, 0, 0, 0, 0, EUR]  # 2 started minutes, not 7
    records = await usage_records(db, config)
    assert [(r.units, r.money_micros) for r in records] == [
        (10, EUR), *[(10, 0)] * 5, (10, EUR)]
    assert [c.units for c in records[0].charges] == [60]  # billed units, not reported ones


# --- 2. a part-used bundle never makes a call dearer ------------------------------------------


async def test_a_bucket_smaller_than_the_first_increment_pays_its_part_of_it(gateway):
    await setup(gateway, plan_of(per_second()), money=100 * EUR, buckets=[seconds_bucket(30)])

    charged = await call(gateway, "c", 40)

    # 60 s billed (the first increment): 30 from the bucket, 30 paid at 1.00.
    assert sum(charged) == 30 * EUR
    assert await balances(gateway) == (70 * EUR, 0, [("minutes", 0)])


async def test_a_bucket_smaller_than_a_step_pays_its_share_of_the_step(gateway, db, config):
    await setup(gateway, plan_of(per_minute()), money=10 * EUR, buckets=[seconds_bucket(5)])

    charged = await call(gateway, "c", 10)

    # One minute billed: 5 s from the bucket, 55 s at 1.00 per 60 s = 0.916 666.. (rounded up).
    assert sum(charged) == 916_667
    [r] = await usage_records(db, config)
    assert [(c.bucket_id, c.units, c.micros) for c in r.charges] == [
        ("minutes", 5, 0), ("", 55, 916_667)]


async def test_bundles_and_money_bill_octets_in_the_same_increments(gateway, db, config):
    rate = ppb.Rate(rating_group=10, unit_type=com.OCTETS, price_micros=1000, increment=1000,
                    default_quota=10_000_000)
    bucket = ppb.Bucket(bucket_id="data", rating_groups=[10], unit_type=com.OCTETS,
                        initial=20_000_000, remaining=20_000_000)
    await setup(gateway, plan_of(rate), money=10 * EUR, buckets=[bucket])

    await gateway.charge(request("d", 0, INITIAL, SUB, mscc(10, want=0)))
    await gateway.charge(request("d", 1, TERMINATION, SUB, mscc(10, used=7_000_001)))

    assert (await balances(gateway))[2] == [("data", 20_000_000 - 7_001_000)]
    [r] = await usage_records(db, config)
    assert (r.units, [(c.bucket_id, c.units) for c in r.charges]) == (
        7_000_001, [("data", 7_001_000)])


# --- tariff shapes ----------------------------------------------------------------------------


async def test_a_connect_fee_is_charged_once_with_the_first_billed_units(gateway):
    await setup(gateway, plan_of(per_minute(connect_fee_micros=250_000)), money=10 * EUR)

    charged = await call(gateway, "c", 30, 30, 30)
    silent = await call(gateway, "never-connected", 0)
    sms = await gateway.charge(request("e", 0, EVENT, SUB, voice(used=1)))

    assert charged == [0, EUR + 250_000, 0, EUR]
    assert silent == [0, 0]  # no usage, no fee
    assert sms.charged_micros == EUR + 250_000  # an EVENT is its own session


async def test_a_connect_fee_that_cannot_be_paid_is_refused_like_any_charge(gateway):
    await setup(gateway, plan_of(per_minute(price_micros=0, connect_fee_micros=2 * EUR)),
                money=EUR)

    event = await gateway.charge(request("e", 0, EVENT, SUB, voice(used=30)))
    opened = await gateway.charge(request("c", 0, INITIAL, SUB, voice(want=0)))

    assert event.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    assert opened.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    assert await balances(gateway) == (EUR, 0, [])


async def test_billing_steps_change_with_the_sessions_usage(gateway):
    # The first 60 s in 30 s steps, then 10 s steps, at 0.01 per second.
    rate = per_second(price_micros=10_000, price_units=1, increment=30, first_increment=0,
                      steps=[ppb.Step(from_units=60, increment=10)])
    await setup(gateway, plan_of(rate), money=10 * EUR)

    short = await call(gateway, "short", 45)
    longer = await call(gateway, "longer", 45, 16)

    assert sum(short) == 600_000     # 60 s billed
    assert longer[1:] == [600_000, 100_000]  # 61 s: 70 s billed in all


@pytest.mark.parametrize(("rounding", "one_second", "sixty_seconds"), [
    (ppb.ROUNDING_UP, 1667, 100_000),
    (ppb.ROUNDING_HALF_EVEN, 1667, 100_000),
    (ppb.ROUNDING_DOWN, 1666, 100_000)])
async def test_a_price_finer_than_a_micro_unit_per_step_accumulates_no_error(
        gateway, rounding, one_second, sixty_seconds):
    # 0.10 per 60 s, charged per second: 1 666.67 micro-units per second.
    rate = per_second(price_micros=100_000, price_units=60, increment=1, first_increment=0,
                      rounding=rounding)
    await setup(gateway, plan_of(rate), money=10 * EUR)

    one = await call(gateway, "one", 1)
    minute = await call(gateway, "minute", *[1] * 60)

    assert sum(one) == one_second
    assert sum(minute) == sixty_seconds  # 60 one-second reports: exactly 0.10


async def test_a_session_at_its_maximum_cost_gets_final_units(gateway):
    plan = plan_of(per_second(first_increment=0, default_quota=100),
                   session_max_micros=150 * EUR)
    await setup(gateway, plan, money=1000 * EUR)

    opened = await gateway.charge(request("c", 0, INITIAL, SUB, voice(want=0)))
    second = await gateway.charge(request("c", 1, UPDATE, SUB, voice(used=100, want=0)))
    over = await gateway.charge(request("c", 2, TERMINATION, SUB, voice(used=80)))

    assert not opened.grants[0].HasField("final_unit")
    # 100 charged: 50 s more reach the maximum, and the gateway is told they are the last.
    assert second.grants[0].granted.time_seconds == 50
    assert second.grants[0].final_unit.action == cpb.TERMINATE
    assert [second.charged_micros, over.charged_micros] == [100 * EUR, 50 * EUR]
    assert await balances(gateway) == (850 * EUR, 0, [])


async def test_a_session_at_its_maximum_cost_can_go_on_free(gateway):
    plan = plan_of(per_second(first_increment=0, default_quota=100),
                   session_max_micros=150 * EUR, session_max_action=ppb.SESSION_MAX_FREE)
    await setup(gateway, plan, money=1000 * EUR)

    charged = await call(gateway, "c", 100, 100, 100)

    assert charged == [0, 100 * EUR, 50 * EUR, 0]
    assert await balances(gateway) == (850 * EUR, 0, [])


async def test_bucket_expiry_is_judged_by_the_servers_clock(config: Config):
    clock = Clock()
    app, gw = await start_with_clock(config, clock)
    try:
        bucket = seconds_bucket(600)
        bucket.expiry_ms = clock.ms + 60_000
        await setup(gw, plan_of(per_minute()), money=10 * EUR, buckets=[bucket])
        clock.ms += 120_000  # the bucket has expired; the gateway says the call was earlier

        a = await gw.charge(request("e", 0, EVENT, SUB, voice(used=60), time_ms=clock.ms - 90_000))

        assert a.charged_micros == EUR
        assert (await balances(gw))[2] == [("minutes", 600)]
    finally:
        await stop(app, gw)



async def test_re_rating_keeps_the_connect_fee_at_the_new_versions_amount(gateway, redis_url):
    plan = plan_of(per_minute(connect_fee_micros=250_000))
    await setup(gateway, plan, money=10 * EUR)
    await call(gateway, "c", 30, 70)  # 2 minutes and the fee: 2.25
    v2 = plan_of(per_minute(price_micros=2 * EUR, connect_fee_micros=100_000))
    await gateway.provisioning.PutPlan(v2)

    report = await asyncio.to_thread(rerate, redis_url, plan_id="p", progress=False)

    # Each record is priced anew: 1 minute + the new fee, then 1 minute.
    assert (report.old_micros, report.new_micros) == (2_250_000, 4_100_000)
    assert report.delta_micros == 1_850_000
