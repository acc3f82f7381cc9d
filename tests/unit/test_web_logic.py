"""The web pages' pure parts: run-out prediction, churn reasons on constructed histories,
signed links and sessions, latency quantiles from histogram buckets, counter deltas."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from tollgate.engine.errors import InvalidArgument
from tollgate.engine.web import churn, runout
from tollgate.engine.web.auth import Purpose, Signer
from tollgate.engine.web.care import money_micros
from tollgate.engine.web.series import Feed, deltas, quantile, sample

H = 3_600_000
DAY = 24 * H
NOW = 1_700_000_000_000


def test_money_and_bundle_run_out_at_the_recent_rate() -> None:
    # 2.00 a day and 10 MB a day over the last two days.
    uses = [runout.Use(NOW - 2 * DAY, 2_000_000, {"data": 10_000_000}),
            runout.Use(NOW - DAY, 2_000_000, {"data": 10_000_000})]
    out = runout.predict([runout.Balance(runout.MONEY, 6_000_000),
                          runout.Balance("data", 50_000_000)], uses, NOW)
    money, data = sorted(out, key=lambda r: r.id)
    assert money.per_day == pytest.approx(2_000_000) and money.at_ms == NOW + 3 * DAY
    assert data.per_day == pytest.approx(10_000_000) and data.at_ms == NOW + 5 * DAY
    assert out[0].id == runout.MONEY  # soonest first
    assert runout.headline(out, NOW, "EUR") == \
        "At the current rate, the EUR balance runs out in 3 days."


def test_a_bucket_that_expires_first_and_an_unused_one_never_run_out() -> None:
    uses = [runout.Use(NOW - DAY, 0, {"data": 1_000})]
    out = runout.predict([runout.Balance("data", 1_000_000, expiry_ms=NOW + DAY),
                          runout.Balance("voice", 600)], uses, NOW)
    by_id = {r.id: r for r in out}
    assert by_id["data"].expires_first and by_id["data"].at_ms is None
    assert by_id["voice"].at_ms is None and by_id["voice"].per_day == 0
    assert runout.headline(out, NOW) == "Nothing runs out at the current rate of use."


def test_old_usage_and_a_single_burst_do_not_make_a_trend() -> None:
    assert runout.rates([runout.Use(NOW - 30 * DAY, 5_000_000)], NOW) == {}
    # One record a minute ago: the rate is taken over an hour, not a minute.
    rate = runout.rates([runout.Use(NOW - 60_000, 1_000_000)], NOW)[runout.MONEY]
    assert rate == pytest.approx(1_000_000 / H)
    assert runout.in_words(90 * 60_000) == "in 2 hours"
    assert runout.in_words(20 * 60_000) == "in 20 minutes"


def test_churn_score_of_a_quiet_line_in_grace_names_each_reason() -> None:
    risk = churn.risk(churn.Signals(days_since_topup=40, usage_this_week=10,
                                    usage_weekly_average=100, days_in_grace=3,
                                    grants_refused_week=2, nps=4, offers_ignored=3))
    texts = [r.text for r in risk.reasons]
    assert texts == ["usage this week is 10% of its four-week average",
                     "in GRACE for 3 days", "no top-up for 40 days",
                     "NPS detractor (answered 4)", "2 grants refused this week",
                     "3 offers not taken in the last month"]
    assert risk.score == 100 and risk.band == churn.Band.HIGH  # capped


def test_churn_score_of_a_steady_line_is_low_and_unknowns_add_nothing() -> None:
    steady = churn.risk(churn.Signals(days_since_topup=5, usage_this_week=90,
                                      usage_weekly_average=100))
    assert steady.score == 0 and steady.band == churn.Band.LOW and steady.reasons == ()
    unknown = churn.risk(churn.Signals())
    assert unknown.score == 0
    medium = churn.risk(churn.Signals(days_since_topup=20, usage_this_week=40,
                                      usage_weekly_average=100))
    assert medium.score == 35 and medium.band == churn.Band.MEDIUM
    assert [r.points for r in medium.reasons] == [20, 15]


def test_signed_values_refuse_tampering_expiry_and_another_purpose() -> None:
    signer = Signer(b"k" * 32)
    link = signer.link("+31600000001", days=1, now_s=1000)
    assert signer.verify(Purpose.LINK, link, now_s=1000)["s"] == "+31600000001"  # type: ignore[index]
    assert signer.verify(Purpose.LINK, link, now_s=1000 + 86_400) is None  # expired
    assert signer.verify(Purpose.SESSION, link, now_s=1000) is None  # not a session
    body, mac = link.split(".")
    other = Signer(b"x" * 32).link("+31600000002", days=1, now_s=1000).split(".")[0]
    assert signer.verify(Purpose.LINK, f"{other}.{mac}", now_s=1000) is None
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    assert signer.verify(Purpose.LINK, f"{body}.{flipped}", now_s=1000) is None
    assert signer.verify(Purpose.LINK, "garbage", now_s=1000) is None
    assert Signer(b"y" * 32).verify(Purpose.LINK, link, now_s=1000) is None
    assert signer.csrf_ok("session-1", signer.csrf("session-1"))
    assert not signer.csrf_ok("session-2", signer.csrf("session-1"))
    assert not signer.csrf_ok("session-1", "")


def test_amounts_are_read_exactly() -> None:
    assert money_micros("10.50", "amount") == 10_500_000
    assert money_micros(" 0.000001", "amount") == 1
    for bad in ("ten", "1.0000001", "NaN", ""):
        with pytest.raises(InvalidArgument):
            money_micros(bad, "amount")


def test_latency_quantiles_from_cumulative_buckets() -> None:
    # 100 answers: 50 under 1 ms, 49 more under 2.5 ms, 1 under 10 ms.
    counts = {"lat:0.001": 50, "lat:0.0025": 99, "lat:0.005": 99, "lat:0.01": 100,
              "lat:0.025": 100, "lat:+Inf": 100}
    edges = (0.001, 0.0025, 0.005, 0.01, 0.025)
    assert quantile(counts, 0.5, edges) == pytest.approx(0.001)
    assert quantile(counts, 0.99, edges) == pytest.approx(0.0025)
    assert quantile({}, 0.5) is None
    # Every answer slower than the last edge: all that is known is "over 2.5 s".
    assert quantile({"lat:+Inf": 3}, 0.5) == pytest.approx(2.5)


def test_samples_become_fields_and_only_growth_is_written() -> None:
    reg = CollectorRegistry()
    c = Counter("tollgate_requests", "", ["type", "result"], registry=reg)
    h = Histogram("tollgate_answer_seconds", "", buckets=(0.001, 0.01), registry=reg)
    feeds = (Feed("tollgate_requests_total", "req", ("result",)),
             Feed("tollgate_answer_seconds_bucket", "lat", ("le",)))
    before = sample(reg, feeds)
    c.labels("initial", "success").inc(2)
    c.labels("update", "success").inc(3)
    c.labels("update", "credit_limit_reached").inc()
    h.observe(0.005)
    grown = deltas(before, sample(reg, feeds))
    assert grown == {"req:success": 5, "req:credit_limit_reached": 1, "lat:0.01": 1,
                     "lat:+Inf": 1}
