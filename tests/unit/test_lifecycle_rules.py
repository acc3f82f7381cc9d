"""Pure lifecycle logic: the [lifecycle] table, rule matching, templates, channel choice, quiet
hours, campaign segments and signals, webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tollgate.engine.domain import EventKind, SubscriberState
from tollgate.engine.errors import ConfigError
from tollgate.engine.lifecycle.campaigns import DAY_MS, Profile, in_segment, signal_period
from tollgate.engine.lifecycle.channels import sign
from tollgate.engine.lifecycle.rules import channels_for, matches, money, pick_template, quiet_until
from tollgate.engine.lifecycle.settings import Segment, Template, load_settings, parse_settings
from tollgate.engine.lifecycle.states import stream_order
from tollgate.engine.storage.store import state_order
from tollgate.v1 import events_pb2

ROOT = Path(__file__).resolve().parents[2]
AMS = ZoneInfo("Europe/Amsterdam")
HOOK = {"webhook": {"url": "http://127.0.0.1:1/hook"}}


def ms(zone: ZoneInfo, *when: int) -> int:
    return int(datetime(*when, tzinfo=zone).timestamp() * 1000)  # type: ignore[misc]


def rule(**kw: object) -> dict[str, object]:
    return {"event": "BUCKET_USED", "templates": {"en": {"text": "x"}}, **kw}


def test_the_example_configuration_is_valid():
    s = load_settings(ROOT / "examples" / "lifecycle.toml")
    assert s.webhook is not None and s.email is not None and s.sms is not None
    assert s.quiet_hours == (21 * 60, 8 * 60)
    assert {r.event for r in s.rules} >= {EventKind.BUCKET_USED, EventKind.FINAL_UNITS,
                                          EventKind.STATE_CHANGED}
    assert {c.signal for c in s.campaigns} == {"inactivity", "anniversary",
                                               "renewal_low_balance", "segment"}
    assert s.self_link_url and any(c.offer for c in s.campaigns)


@pytest.mark.parametrize(("table", "words"), [
    ({"colour": "red"}, "unknown settings in [lifecycle]: colour"),
    ({"quiet_hours": "22:00"}, "not 'HH:MM-HH:MM'"),
    ({"quiet_hours": "22-07"}, "'22' is not HH:MM"),
    ({"quiet_hours": "25:00-07:00"}, "'25:00' is not HH:MM"),
    ({"timezone": "Mars/Base"}, "not a known IANA time zone"),
    ({"default_channel": "fax"}, "default_channel"),
    ({"rules": [rule(event="NOPE")]}, "rules[0].event must be one of"),
    ({"rules": [rule(channels=["fax"])]}, "'fax' is not webhook, email, sms"),
    ({"rules": [rule(channels=["email"])]}, "no [lifecycle.email] table"),
    ({"rules": [rule(templates={})]}, "needs at least one locale"),
    ({"rules": [rule(templates={"en": {"body": "x"}})]}, "must be {subject, text}"),
    ({"rules": [rule(states=["ASLEEP"])]}, "state 'ASLEEP'"),
    ({"rules": [rule(name="a"), rule(name="a")]}, "names must be unique"),
    ({"webhook": {"secret": "s"}}, "lifecycle.webhook.url is required"),
    ({"webhook": {"url": "u", "retries": 3}}, "unknown settings in [lifecycle.webhook]"),
    ({"max_attempts": "five"}, "max_attempts must be a number"),
    ({"campaigns": [{"signal": "birthday", "templates": {"en": {"text": "x"}}}]},
     "signal must be one of"),
    ({"campaigns": [{"signal": "inactivity", "segment": {"plans": ["p"], "age": 3},
                     "templates": {"en": {"text": "x"}}}]}, "segment: age"),
])
def test_bad_settings_name_what_is_wrong(table, words):
    with pytest.raises(ConfigError) as e:
        parse_settings({**HOOK, **table})
    assert words in str(e.value)


def test_rules_match_kind_threshold_and_state():
    s = parse_settings({**HOOK, "rules": [
        rule(thresholds=[80]),
        {"event": "STATE_CHANGED", "states": ["SUSPENDED", "TERMINATED"],
         "templates": {"en": {"text": "x"}}}]})
    bundle, state = s.rules
    ev = events_pb2.Event(kind=EventKind.BUCKET_USED, threshold_percent=80)
    assert matches(bundle, ev)
    assert not matches(bundle, events_pb2.Event(kind=EventKind.BUCKET_USED,
                                                threshold_percent=50))
    assert not matches(bundle, events_pb2.Event(kind=EventKind.SPENDING_CAP,
                                                threshold_percent=80))
    assert matches(state, events_pb2.Event(kind=EventKind.STATE_CHANGED, detail="SUSPENDED"))
    assert not matches(state, events_pb2.Event(kind=EventKind.STATE_CHANGED, detail="ACTIVE"))


def test_templates_fall_back_from_locale_to_language_to_default():
    t = {"en": Template("", "en"), "pt": Template("", "pt"), "nl": Template("", "nl")}
    assert pick_template(t, "pt-BR", "en").text == "pt"
    assert pick_template(t, "nl", "en").text == "nl"
    assert pick_template(t, "de", "en").text == "en"
    assert pick_template({"fr": Template("", "fr")}, "de", "en").text == "fr"
    assert money(1_234_567) == "1.23" and money(-500_000) == "-0.50"


def test_preferred_channel_resolves_once_and_only_to_configured_channels():
    s = parse_settings({**HOOK, "default_channel": "webhook"})
    assert channels_for(("preferred", "webhook"), "", s) == ["webhook"]
    assert channels_for(("preferred",), "email", s) == []  # no [lifecycle.email]
    assert channels_for(("webhook", "sms"), "", s) == ["webhook"]


@pytest.mark.parametrize(("at", "until"), [
    ((17, 21, 59), None),              # before the window: now
    ((17, 22, 0), (18, 7, 0)),         # the window starts
    ((18, 3, 30), (18, 7, 0)),         # after midnight, same window
    ((18, 7, 0), None),                # the window has ended
])
def test_quiet_hours_over_midnight_in_the_subscribers_zone(at, until):
    now = ms(AMS, 2024, 1, *at)
    want = ms(AMS, 2024, 1, *until) if until else now
    assert quiet_until(now, (22 * 60, 7 * 60), "Europe/Amsterdam") == want
    assert quiet_until(now, None, "Europe/Amsterdam") == now


def test_quiet_hours_end_at_local_wall_clock_time_across_a_dst_change():
    # The night summer time starts in Amsterdam (31 March 2024, 02:00 -> 03:00).
    now = ms(AMS, 2024, 3, 30, 23, 0)
    assert quiet_until(now, (22 * 60, 7 * 60), "Europe/Amsterdam") == \
        ms(AMS, 2024, 3, 31, 7, 0)


def test_segments_and_signals():
    p = Profile("s", "a", SubscriberState.ACTIVE, "basic", money=3_000_000,
                spent=2_000_000, created_ms=1, cycle_end_ms=40 * DAY_MS,
                last_usage_ms=DAY_MS)
    assert in_segment(p, Segment(plans=("basic",), states=(SubscriberState.ACTIVE,),
                                 min_spent_micros=1_000_000, max_spent_micros=5_000_000))
    assert not in_segment(p, Segment(max_spent_micros=2_000_000))  # the band is [min, max)
    assert not in_segment(p, Segment(plans=("gold",)))
    s = parse_settings({**HOOK, "campaigns": [
        {"name": "idle", "signal": "inactivity", "days": 30,
         "templates": {"en": {"text": "x"}}},
        {"name": "nps", "signal": "anniversary", "templates": {"en": {"text": "x"}}},
        {"name": "renew", "signal": "renewal_low_balance", "days": 3, "below": "5.00",
         "templates": {"en": {"text": "x"}}}]})
    idle, nps, renew = s.campaigns
    assert signal_period(idle, p, 30 * DAY_MS) is None
    assert signal_period(idle, p, 31 * DAY_MS) == f"idle-since-{DAY_MS}"
    assert signal_period(nps, p, 364 * DAY_MS) is None
    assert signal_period(nps, p, 366 * DAY_MS) == "year-1"
    assert signal_period(renew, p, 36 * DAY_MS) is None
    assert signal_period(renew, p, 38 * DAY_MS) == f"cycle-{40 * DAY_MS}"


def test_webhook_signature_is_hmac_sha256_of_the_body():
    body = b'{"a":1}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_stream_order_sorts_like_stream_ids():
    ids = ["3-1700000000000-2", "3-1700000000000-10", "3-999-0", "3-1700000000001-0"]
    assert sorted(ids, key=stream_order) == sorted(
        ids, key=lambda r: tuple(int(x) for x in r.split("-")[1:]))
    assert sorted(map(stream_order, ids)) == [stream_order(i) for i in sorted(
        ids, key=lambda r: tuple(int(x) for x in r.split("-")[1:]))]


def test_a_decision_made_after_a_record_sorts_between_it_and_the_next_one():
    assert state_order("5-9") < state_order("5-9", after=True) < state_order("5-10") \
        < state_order("6-0")
