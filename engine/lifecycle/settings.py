"""The `[lifecycle]` table of the configuration file: channels, rules, campaigns, quiet hours.

    [lifecycle]                 group, consumer, locale, timezone, quiet_hours ("21:00-08:00"),
                                default_channel, max_attempts, retry_base_s, retry_max_s,
                                dedup_days, poll_s, lease_s, redeliver_s, batch,
                                campaign_interval_s, log_kept, metrics_port,
                                max_event_age_s (older events change states, send nothing),
                                self_link_url (the web pages' address, for $self_link),
                                census_s (run the base's census here, engine/web/segments.py)
    [lifecycle.webhook]         url, secret, timeout_s
    [lifecycle.email]           host, port, sender, starttls, username, password, timeout_s
    [lifecycle.sms]             url, body, content_type, headers = {name = value}, timeout_s
    [[lifecycle.rules]]         name, event (an EventKind name), thresholds, states,
                                channels, critical, offer, templates.<locale> =
                                {subject, text}
    [[lifecycle.campaigns]]     name, signal (inactivity | anniversary | renewal_low_balance |
                                segment: sent from the web segments page only), days,
                                below (money, renewal_low_balance), segment = {plans,
                                states, min_spent, max_spent}, channels, offer,
                                templates.<locale>

Templates are `string.Template` text ($name or ${name}); the variables are listed in
engine/lifecycle/rules.py. Channel names in `channels`: webhook, email, sms, or "preferred"
(the subscriber's preferred channel, else `default_channel`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tollgate.engine.domain import EventKind, SubscriberState
from tollgate.engine.errors import ConfigError

CHANNELS = ("webhook", "email", "sms")
SIGNALS = ("inactivity", "anniversary", "renewal_low_balance", "segment")
SEGMENT = "segment"
"""The signal of a campaign sent only when an operator sends it to a segment (the web
segments page), never by the periodic pass."""
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str = ""
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Email:
    host: str
    port: int = 25
    sender: str = "tollgate@localhost"
    starttls: bool = False
    username: str = ""
    password: str = ""
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Sms:
    url: str
    """May hold $to and $text (URL-encoded when substituted)."""
    body: str = '{"to": "$to", "text": "$text"}'
    """Values are escaped for content_type: JSON string escapes or form encoding."""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Template:
    subject: str
    text: str


@dataclass(frozen=True, slots=True)
class Rule:
    """Which events make a message, on which channels, in which words."""

    name: str
    event: EventKind
    templates: dict[str, Template]
    channels: tuple[str, ...] = ("preferred",)
    thresholds: tuple[int, ...] = ()
    states: tuple[SubscriberState, ...] = ()
    critical: bool = False
    offer: bool = False


@dataclass(frozen=True, slots=True)
class Segment:
    """A query over subscribers: every given condition must hold."""

    plans: tuple[str, ...] = ()
    states: tuple[SubscriberState, ...] = ()
    min_spent_micros: int | None = None
    max_spent_micros: int | None = None
    """Usage band: money charged this billing cycle, in [min, max)."""


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    signal: str
    days: int
    templates: dict[str, Template]
    segment: Segment = Segment()
    channels: tuple[str, ...] = ("preferred",)
    below_micros: int = 0
    offer: bool = False
    """Name the plan's add-ons ($offers) with an offer id, as a rule's offer does."""


@dataclass(frozen=True, slots=True)
class Settings:
    group: str = "lifecycle"
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    locale: str = "en"
    timezone: str = "UTC"
    quiet_hours: tuple[int, int] | None = None
    """(start, end) minute of the local day; the window may wrap midnight."""
    default_channel: str = "webhook"
    max_attempts: int = 5
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0
    dedup_days: int = 62
    """A message key is remembered this long (longer than a billing cycle)."""
    poll_s: float = 0.5
    lease_s: float = 60.0
    """A claimed message or timer returns to the queue after this long (a crashed sender)."""
    redeliver_s: float = 30.0
    """An event read but not acknowledged is delivered again after this long."""
    batch: int = 200
    campaign_interval_s: float = 3600.0
    log_kept: int = 1000
    """Delivery log entries kept per subscriber."""
    max_event_age_s: int = 86_400
    """Events older than this still change states but send no message (0 = no limit)."""
    metrics_port: int = 9465
    """Prometheus /metrics of the lifecycle process (0 = off)."""
    census_s: float = 0.0
    """Take part in the census of the base (the segments page's churn-risk index, the base
    by state) every census_s (0 = never): on a big base, with http_census_s = 0 on the
    charging servers, it runs here instead of next to charging."""
    self_link_url: str = ""
    """Where the web pages are, as subscribers reach them ("https://care.example.net"):
    $self_link is this followed by /self/<signed link>; without it, the path alone."""
    webhook: Webhook | None = None
    email: Email | None = None
    sms: Sms | None = None
    rules: tuple[Rule, ...] = ()
    campaigns: tuple[Campaign, ...] = ()

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """The [lifecycle] table of a configuration file (defaults when there is none)."""
    if not path:
        return Settings()
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    return parse_settings(data.get("lifecycle", {}))


def parse_settings(t: dict[str, Any]) -> Settings:
    """Settings from a parsed [lifecycle] table; ConfigError names what is wrong."""
    t = dict(t)
    out: dict[str, Any] = {}
    scalars = {"group": str, "consumer": str, "locale": str, "timezone": str,
               "default_channel": str, "max_attempts": int, "retry_base_s": float,
               "retry_max_s": float, "dedup_days": int, "poll_s": float, "lease_s": float,
               "redeliver_s": float, "batch": int, "campaign_interval_s": float,
               "log_kept": int, "metrics_port": int, "max_event_age_s": int,
               "self_link_url": str, "census_s": float}
    for name, kind in scalars.items():
        if name in t:
            out[name] = _scalar(f"lifecycle.{name}", kind, t.pop(name))
    if "quiet_hours" in t:
        out["quiet_hours"] = parse_quiet_hours(str(t.pop("quiet_hours")))
    for name, cls in (("webhook", Webhook), ("email", Email), ("sms", Sms)):
        if name in t:
            out[name] = _channel(name, cls, t.pop(name))
    out["rules"] = tuple(_rule(n, r) for n, r in enumerate(t.pop("rules", [])))
    out["campaigns"] = tuple(_campaign(n, c) for n, c in enumerate(t.pop("campaigns", [])))
    if t:
        raise ConfigError(f"unknown settings in [lifecycle]: {', '.join(sorted(t))}")
    settings = Settings(**out)
    check_zone(settings.timezone, "lifecycle.timezone")
    if settings.default_channel not in CHANNELS:
        raise ConfigError(f"lifecycle.default_channel must be one of {', '.join(CHANNELS)}")
    if settings.max_attempts < 1 or settings.batch < 1:
        raise ConfigError("lifecycle.max_attempts and lifecycle.batch must be positive")
    names = [r.name for r in settings.rules] + [c.name for c in settings.campaigns]
    if len(set(names)) != len(names):
        raise ConfigError("lifecycle rule and campaign names must be unique")
    uses = [(r.name, r.channels) for r in settings.rules] + \
        [(c.name, c.channels) for c in settings.campaigns]
    for name, channels in uses:
        for ch in channels:
            if ch != "preferred" and getattr(settings, ch) is None:
                raise ConfigError(f"lifecycle {name!r} uses channel {ch!r}, which has "
                                  f"no [lifecycle.{ch}] table")
    return settings


def parse_quiet_hours(text: str) -> tuple[int, int] | None:
    """"21:00-08:00" -> (1260, 480); "" -> None."""
    if not text:
        return None
    start, sep, end = text.partition("-")
    if not sep:
        raise ConfigError(f"lifecycle.quiet_hours {text!r} is not 'HH:MM-HH:MM'")
    return _minute(start.strip(), text), _minute(end.strip(), text)


def _minute(hhmm: str, whole: str) -> int:
    m = _HHMM.match(hhmm)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ConfigError(f"lifecycle.quiet_hours {whole!r}: {hhmm!r} is not HH:MM")
    return int(m.group(1)) * 60 + int(m.group(2))


def check_zone(name: str, where: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: {name!r} is not a known IANA time zone") from None


def _scalar(where: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if kind in (int, float) and (isinstance(value, bool) or
                                 not isinstance(value, int | float)):
        raise ConfigError(f"{where} must be a number")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string")
    return kind(value)


def _channel(name: str, cls: Any, t: Any) -> Any:
    if not isinstance(t, dict):
        raise ConfigError(f"lifecycle.{name} must be a table")
    t = dict(t)
    kinds = {f.name: type(f.default) for f in dataclasses.fields(cls)}
    if "headers" in t:
        headers = t.pop("headers")
        if not isinstance(headers, dict):
            raise ConfigError(f"lifecycle.{name}.headers must be a table")
        t["headers"] = tuple((str(k), str(v)) for k, v in headers.items())
    unknown = set(t) - set(kinds)
    if unknown:
        raise ConfigError(f"unknown settings in [lifecycle.{name}]: {', '.join(sorted(unknown))}")
    first = dataclasses.fields(cls)[0].name
    if first not in t:
        raise ConfigError(f"lifecycle.{name}.{first} is required")
    values = {k: v if k == "headers" else _scalar(f"lifecycle.{name}.{k}",
                                                  str if k == first else kinds[k], v)
              for k, v in t.items()}
    return cls(**values)


def _templates(where: str, t: Any) -> dict[str, Template]:
    if not isinstance(t, dict) or not t:
        raise ConfigError(f"{where}.templates needs at least one locale table "
                          f"({where}.templates.en = {{subject, text}})")
    out = {}
    for locale, tpl in t.items():
        if not isinstance(tpl, dict) or not isinstance(tpl.get("text"), str) or \
                set(tpl) - {"subject", "text"}:
            raise ConfigError(f"{where}.templates.{locale} must be {{subject, text}}")
        out[str(locale)] = Template(str(tpl.get("subject", "")), tpl["text"])
    return out


def _channels(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}.channels must be a non-empty list")
    for ch in value:
        if ch not in (*CHANNELS, "preferred"):
            raise ConfigError(f"{where}.channels: {ch!r} is not webhook, email, sms or "
                              "preferred")
    return tuple(value)


def _states(where: str, value: Any) -> tuple[SubscriberState, ...]:
    try:
        return tuple(SubscriberState[str(s).upper()] for s in value)
    except KeyError as e:
        raise ConfigError(f"{where}: state {e.args[0]!r} is not one of "
                          f"{', '.join(s.name for s in SubscriberState)}") from None


def _rule(n: int, t: Any) -> Rule:
    where = f"lifecycle.rules[{n}]"
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a table")
    t = dict(t)
    try:
        event = EventKind[str(t.pop("event", "")).upper()]
    except KeyError:
        raise ConfigError(f"{where}.event must be one of "
                          f"{', '.join(k.name for k in EventKind)}") from None
    rule = Rule(
        name=str(t.pop("name", f"{event.name.lower()}-{n}")), event=event,
        templates=_templates(where, t.pop("templates", None)),
        channels=_channels(where, t.pop("channels", ["preferred"])),
        thresholds=tuple(int(x) for x in t.pop("thresholds", [])),
        states=_states(where, t.pop("states", [])),
        critical=_scalar(f"{where}.critical", bool, t.pop("critical", False)),
        offer=_scalar(f"{where}.offer", bool, t.pop("offer", False)))
    if t:
        raise ConfigError(f"unknown settings in {where}: {', '.join(sorted(t))}")
    return rule


def _money(where: str, value: Any) -> int:
    try:
        micros = Decimal(str(value)) * 1_000_000
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not an amount") from None
    if micros != micros.to_integral_value():
        raise ConfigError(f"{where}: at most six decimals")
    return int(micros)


def _campaign(n: int, t: Any) -> Campaign:
    where = f"lifecycle.campaigns[{n}]"
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a table")
    t = dict(t)
    signal = t.pop("signal", "")
    if signal not in SIGNALS:
        raise ConfigError(f"{where}.signal must be one of {', '.join(SIGNALS)}")
    seg = dict(t.pop("segment", {}))
    segment = Segment(
        plans=tuple(str(p) for p in seg.pop("plans", [])),
        states=_states(f"{where}.segment", seg.pop("states", [])),
        min_spent_micros=_money(f"{where}.segment.min_spent", seg.pop("min_spent"))
        if "min_spent" in seg else None,
        max_spent_micros=_money(f"{where}.segment.max_spent", seg.pop("max_spent"))
        if "max_spent" in seg else None)
    if seg:
        raise ConfigError(f"unknown settings in {where}.segment: {', '.join(sorted(seg))}")
    campaign = Campaign(
        name=str(t.pop("name", f"{signal}-{n}")), signal=signal,
        days=_scalar(f"{where}.days", int, t.pop("days", 30)),
        templates=_templates(where, t.pop("templates", None)), segment=segment,
        channels=_channels(where, t.pop("channels", ["preferred"])),
        below_micros=_money(f"{where}.below", t.pop("below", 0)),
        offer=_scalar(f"{where}.offer", bool, t.pop("offer", False)))
    if t:
        raise ConfigError(f"unknown settings in {where}: {', '.join(sorted(t))}")
    return campaign
