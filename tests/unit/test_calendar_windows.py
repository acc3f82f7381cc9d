"""Calendar days: a rate's dated windows replace its weekly ones on their date, and the window
changes (so a grant's validity ends) at that day's local midnights. Each case is checked on
the kernel's helpers and on the plain-Python reference."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.kernel_inputs import rate_arrays
from tests.unit.test_charge_kernel import run_kernel
from tollgate.engine.charging.kernels import reference
from tollgate.engine.charging.kernels.charge import NO_BOUNDARY, next_change, window_at
from tollgate.engine.charging.kernels.reference import (
    RefAccount,
    RefItem,
    RefRate,
    RefState,
    RefWindow,
    charge_reference,
)

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
MON, TUE, WED, THU, FRI, SAT, SUN = range(4, 11)  # local day numbers: 1970-01-05 was a Monday
WEEKDAYS, WEEKEND = 0b0011111, 0b1100000
PEAK, EVENING, WEEKEND_PRICE, HOLIDAY, PROMO = 100_000, 50_000, 20_000, 10_000, 5_000


def at(day: int, hour: float) -> int:
    return day * DAY + int(hour * HOUR)


def voice(*dated: RefWindow) -> RefRate:
    """0.10 per minute at peak; weekdays 19:00-22:00 0.05, weekends 0.02; then the dated
    windows."""
    return RefRate(price=PEAK, increment=60, first=60, quota=300, unit=2, validity=7200,
                   windows=[RefWindow(WEEKDAYS, 19 * 60, 22 * 60, EVENING),
                            RefWindow(WEEKEND, 0, 1440, WEEKEND_PRICE), *dated])


def holiday(day: int) -> RefWindow:
    return RefWindow(0, 0, 1440, HOLIDAY, day)


def promo(day: int) -> RefWindow:
    return RefWindow(0, 10 * 60, 14 * 60, PROMO, day)


def kernel_window(rate: RefRate, t: int) -> int:
    rt, _, wins, _ = rate_arrays([rate])
    return window_at(0, t, rt, wins)


def kernel_change(rate: RefRate, t: int) -> int | None:
    rt, _, wins, _ = rate_arrays([rate])
    change = next_change(0, t, rt, wins)
    return None if change == NO_BOUNDARY else change


BOTH = pytest.mark.parametrize(("window", "change"), [
    (kernel_window, kernel_change), (reference.window_at, reference.next_change)],
    ids=["kernel", "reference"])
Window = Callable[[RefRate, int], int]
Change = Callable[[RefRate, int], "int | None"]


@BOTH
def test_a_holiday_replaces_the_weekly_windows_all_day(window: Window, change: Change):
    rate = voice(holiday(WED))

    assert [window(rate, at(WED, h)) for h in (3, 12, 20)] == [2, 2, 2]
    assert window(rate, at(TUE, 20)) == 0  # the evening before is a weekday evening
    assert window(rate, at(THU, 20)) == 0  # and so is the evening after


@BOTH
def test_a_holiday_on_a_weekend_day_replaces_the_weekend_price(window: Window, change: Change):
    rate = voice(holiday(SAT))

    assert (window(rate, at(SAT, 12)), window(rate, at(SUN, 12))) == (2, 1)
    assert change(rate, at(SAT, 12)) == at(SUN, 0)


@BOTH
def test_outside_a_promotional_days_windows_the_base_price_applies(window: Window,
                                                                   change: Change):
    rate = voice(promo(WED))

    assert [window(rate, at(WED, h)) for h in (9, 12, 15, 20)] == [-1, 2, -1, -1]
    # No weekday evening on the promotional day: the next change after 15:00 is Thursday's.
    assert change(rate, at(WED, 9)) == at(WED, 10)
    assert change(rate, at(WED, 12)) == at(WED, 14)
    assert change(rate, at(WED, 15)) == at(THU, 19)


@BOTH
def test_validity_ends_at_the_local_midnight_before_a_holiday(window: Window, change: Change):
    # Thursday 23:00 is peak time; without the holiday Friday evening is the next change.
    assert change(voice(), at(THU, 23)) == at(FRI, 19)
    assert change(voice(holiday(FRI)), at(THU, 23)) == at(FRI, 0)
    # From the holiday the next change is the weekend at the end of it.
    assert change(voice(holiday(FRI)), at(FRI, 12)) == at(SAT, 0)


@BOTH
def test_a_dated_window_beyond_the_horizon_bounds_nothing(window: Window, change: Change):
    always = RefRate(price=PEAK, increment=60, first=60, quota=300, unit=2,
                     windows=[RefWindow(127, 0, 1440, EVENING)])
    later = RefRate(**{**vars(always), "windows": [*always.windows, holiday(MON + 30)]})

    assert change(always, at(MON, 12)) is None
    assert change(later, at(MON, 12)) is None
    assert change(later, at(MON + 25, 12)) == at(MON + 30, 0)


def weekly_only_next_change(rate: RefRate, t: int) -> int | None:
    """next_change as it was before calendar days: every window edge on the 9 days from t's,
    checked in order (the kernel stopped a week and a day after t; no difference, as a week
    of weekly windows repeats)."""
    if not rate.windows:
        return None
    now = reference.window_at(rate, t)
    midnight = t - t % DAY
    edges = sorted({midnight + d * DAY + m * MINUTE
                    for d in range(9) for w in rate.windows for m in (w.start, w.end)})
    return next((e for e in edges if e > t and reference.window_at(rate, e) != now), None)


EDGES = [0, 60, 420, 480, 1050, 1080, 1110, 1140, 1439, 1440]


@given(st.lists(st.tuples(st.integers(1, 127), st.sampled_from(EDGES),
                          st.sampled_from(EDGES)).filter(lambda w: w[1] < w[2]), max_size=4),
       st.integers(0, 30 * DAY))
def test_weekly_windows_change_where_they_did_before_calendar_days(windows, t):
    rate = RefRate(price=PEAK, increment=60, first=60, quota=300, unit=2,
                   windows=[RefWindow(days, s, e, k) for k, (days, s, e) in enumerate(windows)])

    assert kernel_change(rate, t) == reference.next_change(rate, t) == weekly_only_next_change(
        rate, t)


def grant(rate: RefRate, t: int) -> RefItem:
    return RefItem(account=0, rating_group=100, rate=0, time=t, used=0, want=1, requested=0,
                   res_src=-1, res_amount=0)


@pytest.mark.parametrize(("t", "price", "validity_s"), [
    (at(THU, 23), PEAK, 3600),                 # peak, valid until the holiday begins
    (at(FRI, 23), HOLIDAY, 3600),              # the holiday price, valid until it ends
    (at(SAT, 12), WEEKEND_PRICE, 7200),        # the weekend again, the rate's validity
])
def test_a_grant_is_priced_by_the_holiday_and_valid_until_its_edge(t, price, validity_s):
    rate = voice(holiday(FRI))
    state = RefState([RefAccount(money=10**9, floor=0)], [], [], [0])
    item = grant(rate, t)

    out = run_kernel([item], [rate], state)[0]
    [ref], _ = charge_reference([item], [rate], state)

    result, granted, _, reserved, _, validity = (int(x[0]) for x in out[:6])
    assert (result, granted, reserved, validity) == (2001, 300, 5 * price, validity_s)
    assert (ref.result, ref.granted, ref.res_amount, ref.validity) == (
        result, granted, reserved, validity)
