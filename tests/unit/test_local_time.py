"""A plan's UTC offset, cached per minute, is exactly the time zone's offset at every moment,
transitions included (also the odd-second ones of old tzdata)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from tollgate.engine.charging.batch import LATEST_LOCAL_MS, local_offset_ms

ZONES = ["Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe", "Asia/Kathmandu",
         "Africa/Monrovia", "Europe/Amsterdam", "Pacific/Apia", "UTC"]


def exact(zone: str, time_ms: int) -> int:
    offset = datetime.fromtimestamp(min(time_ms, LATEST_LOCAL_MS) / 1000,
                                    ZoneInfo(zone)).utcoffset()
    return int(offset.total_seconds() * 1000) if offset else 0


@given(st.sampled_from(ZONES), st.integers(0, LATEST_LOCAL_MS + 2 * 86_400_000))
def test_the_cached_offset_is_the_exact_one(zone: str, time_ms: int) -> None:
    assert local_offset_ms(zone, time_ms) == exact(zone, time_ms)


# Europe/Berlin to summer time 2026-03-29 01:00 UTC; Africa/Monrovia from -0:44:30 to UTC
# on 1972-01-07 00:44:30 UTC, in the middle of a minute.
TRANSITIONS = [("Europe/Berlin", 1_774_746_000_000), ("Africa/Monrovia", 63_593_070_000)]


@given(st.sampled_from(TRANSITIONS), st.integers(-90_000, 90_000))
def test_around_a_transition_every_millisecond_is_right(transition: tuple[str, int],
                                                       delta: int) -> None:
    zone, at = transition
    assert local_offset_ms(zone, at + delta) == exact(zone, at + delta)


def test_the_transitions_are_where_the_test_says() -> None:
    for zone, at in TRANSITIONS:
        assert exact(zone, at - 1) != exact(zone, at)


def test_no_time_zone_is_utc() -> None:
    assert local_offset_ms("", 1_774_746_000_000) == 0
