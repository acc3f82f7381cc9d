"""The segments page's pure parts: churn signals from a line's kept hash (weeks, the four-week
average, GRACE, refused grants, offers, NPS), segment filters and band ranges, segment sizes
from the census summary, the NPS score, and the self-service link a message carries."""

from __future__ import annotations

import pytest

from tollgate.engine.domain import SubscriberState
from tollgate.engine.errors import InvalidArgument
from tollgate.engine.lifecycle import signals
from tollgate.engine.lifecycle.results import nps
from tollgate.engine.lifecycle.rules import render
from tollgate.engine.web import churn
from tollgate.engine.web.auth import SelfLinks, Signer
from tollgate.engine.web.segments import Filter, _ranges, counts

DAY = signals.DAY_MS
WEEK = signals.WEEK_MS
W = 2900  # a week number
MONDAY = W * WEEK  # the start of week W (weeks are counted from the Unix epoch)
ACTIVE = signals.Line(SubscriberState.ACTIVE, created_ms=MONDAY - 100 * DAY)


def usage(*per_week: int) -> dict[str, int]:
    """'u' fields: this week's use first, then each week's before it."""
    return {f"u{W - n}": v for n, v in enumerate(per_week) if v}


def test_a_line_whose_use_fell_away_scores_high_with_its_reasons() -> None:
    now = MONDAY + WEEK // 2  # half way through week W
    fields = {**usage(10, 40, 100, 100, 100, 100), signals.FIRST: now - 60 * DAY,
              signals.LAST: now - DAY, signals.TOPUP: now - 40 * DAY,
              f"r{W}": 2, f"o{W - 1}": 3, f"b{W - 1}": 1,
              signals.NPS: 3, signals.NPS_MS: now - 10 * DAY}
    s = signals.signals(fields, ACTIVE, now)
    # The last 7 days: this half week and the second half of the one before.
    assert s.usage_this_week == pytest.approx(10 + 20)
    # The 28 days before: the first half of last week, three whole weeks, half of the fifth.
    assert s.usage_weekly_average == pytest.approx((20 + 100 + 100 + 100 + 50) / 4)
    assert s.days_since_topup == pytest.approx(40)
    assert (s.grants_refused_week, s.offers_ignored, s.nps) == (2, 2, 3)
    assert s.days_in_grace is None  # not in GRACE
    risk = churn.risk(s)
    assert risk.band == churn.Band.HIGH
    assert {r.kind for r in risk.reasons} == {"usage", "topup", "refused", "offers", "nps"}
    assert "usage this week is 32% of its four-week average" in [r.text for r in risk.reasons]


def test_a_new_line_has_no_average_and_a_top_up_counts_from_the_account_opening() -> None:
    now = MONDAY + DAY
    new = signals.Line(SubscriberState.ACTIVE, created_ms=now - 20 * DAY)
    s = signals.signals({**usage(5, 5), signals.FIRST: now - 10 * DAY}, new, now)
    assert s.usage_weekly_average is None and s.usage_this_week is None  # 3 days of window
    assert s.days_since_topup == pytest.approx(20)
    assert churn.risk(s).reasons[0].text == "no top-up for 20 days"
    # Eleven days into the window: the average is over what was seen, per week.
    s = signals.signals({**usage(0, 0, 0, 30), signals.FIRST: now - 25 * DAY}, new, now)
    assert s.usage_weekly_average == pytest.approx(30 * WEEK / (18 * DAY))


def test_grace_days_an_old_nps_answer_and_stale_weeks() -> None:
    now = MONDAY + 3 * DAY
    grace = signals.Line(SubscriberState.GRACE, created_ms=0)
    fields = {signals.GRACE: now - 4 * DAY, signals.NPS: 2,
              signals.NPS_MS: now - signals.NPS_KEPT_MS - 1, f"r{W - 6}": 9}
    s = signals.signals(fields, grace, now)
    assert s.days_in_grace == pytest.approx(4) and s.nps is None
    assert s.grants_refused_week == 0 and s.days_since_topup is None
    assert [r.text for r in churn.risk(s).reasons] == ["in GRACE for 4 days"]
    assert f"u{W - 6}" in signals.stale_fields("u", now)
    assert signals.activity(0, now) == signals.Activity.NEVER
    assert signals.activity(now - 8 * DAY, now) == signals.Activity.IDLE
    assert signals.activity(now - 31 * DAY, now) == signals.Activity.DORMANT


def test_filters_are_checked_and_bands_merge_into_score_ranges() -> None:
    f = Filter.parse({"states": "GRACE,ACTIVE", "bands": ["high", "medium"]})
    assert f.states == ("ACTIVE", "GRACE") and _ranges(f) == [(25, 100)]
    assert _ranges(Filter.parse({"bands": "low,high"})) == [(0, 24), (50, 100)]
    assert f.cell("GRACE|everyday|idle") and not f.cell("SUSPENDED|everyday|idle")
    assert f.words() == "state ACTIVE/GRACE, risk high/medium"
    with pytest.raises(InvalidArgument, match="bands: severe not one of"):
        Filter.parse({"bands": "severe"})
    with pytest.raises(InvalidArgument, match="unknown segment conditions: colour"):
        Filter.parse({"colour": "red"})


def test_segment_size_by_band_from_the_census_summary() -> None:
    summary = {"ACTIVE|p1|active|low": 70, "ACTIVE|p1|idle|medium": 20,
               "GRACE|p1|dormant|high": 6, "GRACE|p2|dormant|high": 4,
               "why|grace|high": 10, "why|topup|high": 7, "why|topup|medium": 5,
               "time_ms": 1, "lines": 100}
    got = counts(summary, Filter.parse({"states": "GRACE"}))
    assert got["count"] == 10 and got["by_band"] == {"low": 0, "medium": 0, "high": 10}
    assert got["base"] == {"low": 70, "medium": 20, "high": 10}
    high = counts(summary, Filter.parse({"bands": "high", "plans": "p2"}))
    assert high["count"] == 4 and high["reasons_in_bands"] == {"grace": 10, "topup": 7}


def test_net_promoter_score() -> None:
    assert nps({}) is None
    assert nps({10: 5, 9: 1, 8: 2, 3: 2}) == 40  # 6 promoters, 2 detractors of 10
    assert nps({0: 1}) == -100


def test_a_message_carries_the_lines_signed_link_naming_its_campaign() -> None:
    signer = Signer(b"k" * 32)
    links = SelfLinks(signer, days=14, base_url="https://care.example.net/")
    url = links.url("sub-1", now_ms=1_700_000_000_000, campaign="winback")
    assert url.startswith("https://care.example.net/self/")
    token = url.rsplit("/", 1)[1]
    assert signer.link_subscriber(token) is None  # signed in 2023: expired by now
    fresh = SelfLinks(signer, days=14).url("sub-1", now_ms=int(9e12), campaign="winback")
    token = fresh.removeprefix("/self/")
    assert signer.link_subscriber(token) == "sub-1"
    assert signer.link_campaign(token) == "winback"
    assert render("Your page: $self_link", {"self_link": fresh}) == f"Your page: {fresh}"
