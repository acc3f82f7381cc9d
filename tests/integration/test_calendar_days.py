"""Calendar days over the real gRPC API and a real Redis: a dated holiday window replaces the
weekly windows on its date, in the plan's time zone, and a grant's validity ends at the
holiday's local midnight.

The server runs on a clock the test moves to each request's event time, and the dates are
chosen from the real clock (the next Monday to Thursday at least two days ahead), so the
server always sees event times that are now to it.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from tests.integration.test_rating_features import (
    INITIAL,
    TERMINATION,
    Clock,
    charge,
    plan_of,
    setup,
    start_with_clock,
    stop,
    voice,
    voice_rate,
)
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb

TOKYO = ZoneInfo("Asia/Tokyo")  # UTC+9 all year: local midnight is 15:00 UTC the day before
WEEKDAYS = 0b0011111
OFF_PEAK, PEAK, HOLIDAY = 20_000, 100_000, 10_000  # per started minute


def holiday_ahead(now_ms: int) -> date:
    """A Monday to Thursday at least two days after today in Tokyo: the day before is an
    ordinary evening and the day after an ordinary weekday."""
    day = datetime.fromtimestamp(now_ms / 1000, TOKYO).date() + timedelta(days=2)
    while day.weekday() > 3:
        day += timedelta(days=1)
    return day


def tokyo_ms(day: date, hour: int, minute: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=TOKYO)
               .timestamp() * 1000)


def holiday_plan(holiday: date) -> ppb.Plan:
    """0.02 per minute off-peak, 0.10 on weekdays 08:00-20:00, 0.01 all day on the holiday."""
    return plan_of(voice_rate(
        price_micros=OFF_PEAK, validity_time_s=7200,
        windows=[ppb.TimeWindow(name="peak", weekdays=WEEKDAYS, start_minute=8 * 60,
                                end_minute=20 * 60, price_micros=PEAK),
                 ppb.TimeWindow(name="holiday", date=holiday.isoformat(), start_minute=0,
                                end_minute=24 * 60, price_micros=HOLIDAY)]),
        plan_id="holidays", timezone="Asia/Tokyo")


async def test_a_holiday_is_priced_on_its_own_and_bounds_the_grant_before_it(config):
    clock = Clock()
    holiday = holiday_ahead(clock.ms)
    before, after = holiday - timedelta(days=1), holiday + timedelta(days=1)
    app, gw = await start_with_clock(config, clock)
    try:
        await setup(gw, holiday_plan(holiday))
        stored = await gw.provisioning.GetPlan(ppb.GetPlanRequest(plan_id="holidays"))

        async def at(day: date, hour: int, minute: int, session: str, rn: int, kind: int,
                     units: cpb.ServiceUnits) -> cpb.ChargeAnswer:
            clock.ms = tokyo_ms(day, hour, minute)
            return await charge(gw, session, rn, kind, units, time_ms=clock.ms)

        # 23:59 the evening before: off-peak, valid only until the holiday starts at midnight
        # (without the holiday, until the rate's two hours).
        eve = await at(before, 23, 59, "eve", 0, INITIAL, voice(want=0))
        # Hung up at 00:01 on the holiday: one minute before midnight, one on the holiday.
        eve_end = await at(holiday, 0, 1, "eve", 1, TERMINATION, voice(used=120))
        # 10:00 on the holiday is peak time on any other weekday.
        day = await at(holiday, 10, 0, "day", 0, INITIAL, voice(want=0))
        day_held = (await gw.account("acct-0")).reserved_micros
        day_end = await at(holiday, 10, 3, "day", 1, TERMINATION, voice(used=180))
        # 10:00 the day after: the weekly peak window again.
        next_day = await at(after, 10, 0, "next", 0, INITIAL, voice(want=0))
        next_held = (await gw.account("acct-0")).reserved_micros
        next_end = await at(after, 10, 1, "next", 1, TERMINATION, voice(used=60))
        acct = await gw.account("acct-0")
    finally:
        await stop(app, gw)

    assert [(w.name, w.date) for w in stored.rates[0].windows] == [
        ("peak", ""), ("holiday", holiday.isoformat())]
    [g] = eve.grants
    assert (g.granted.time_seconds, g.validity_time_s) == (300, 60)
    assert eve_end.charged_micros == OFF_PEAK + HOLIDAY
    [g] = day.grants
    assert (g.granted.time_seconds, g.validity_time_s, day_held) == (300, 7200, 5 * HOLIDAY)
    assert day_end.charged_micros == 3 * HOLIDAY
    [g] = next_day.grants
    assert (g.granted.time_seconds, g.validity_time_s, next_held) == (300, 7200, 5 * PEAK)
    assert next_end.charged_micros == PEAK
    assert (acct.money_micros, acct.reserved_micros) == (
        10_000_000 - (OFF_PEAK + HOLIDAY) - 3 * HOLIDAY - PEAK, 0)
