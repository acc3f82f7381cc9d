"""Pure notification logic: which rules an event matches, template rendering, locales,
channel choice and quiet hours.

Template variables ($name): subscriber, account, plan, plan_name, currency, kind, event_id,
rule, bucket, threshold, value, limit, money (value as an amount), limit_money, state,
offers (one line per add-on offered), offer_id, campaign, days, self_link (the line's
signed self-service page: needs the web pages' key in Redis, made when they first start;
lifecycle.self_link_url gives its address).
"""

from __future__ import annotations

import string
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from tollgate.engine.domain import EventKind, SubscriberState
from tollgate.engine.lifecycle.settings import Rule, Settings, Template
from tollgate.v1 import events_pb2

MINUTE_MS = 60_000


def matches(rule: Rule, event: events_pb2.Event) -> bool:
    if rule.event != event.kind:
        return False
    if rule.thresholds and event.threshold_percent not in rule.thresholds:
        return False
    if rule.states:
        if event.kind != EventKind.STATE_CHANGED:
            return False
        try:
            return SubscriberState[event.detail] in rule.states
        except KeyError:
            return False
    return True


def money(micros: int) -> str:
    return f"{Decimal(micros) / 1_000_000:.2f}"


def render(text: str, values: dict[str, str]) -> str:
    """Unknown $names are left as written (a typo shows in the message, never crashes)."""
    return string.Template(text).safe_substitute(values)


def pick_template(templates: dict[str, Template], locale: str, default: str) -> Template:
    """The subscriber's locale, else its language ("pt" for "pt-BR"), else the default
    locale, else the first one configured."""
    for want in (locale, locale.split("-")[0], default):
        if want in templates:
            return templates[want]
    return next(iter(templates.values()))


def channels_for(wanted: tuple[str, ...], preferred: str, settings: Settings) -> list[str]:
    """The rule's channels with "preferred" resolved, each once, in order."""
    out: list[str] = []
    for ch in wanted:
        name = ch if ch != "preferred" else (preferred or settings.default_channel)
        if name not in out and getattr(settings, name, None) is not None:
            out.append(name)
    return out


def quiet_until(now_ms: int, quiet: tuple[int, int] | None, tz: str) -> int:
    """When the quiet hours around now_ms end in time zone tz, or now_ms if it is not quiet."""
    if quiet is None:
        return now_ms
    start, end = quiet
    zone = ZoneInfo(tz or "UTC")
    local = datetime.fromtimestamp(now_ms / 1000, zone)
    minute = local.hour * 60 + local.minute
    inside = (start <= minute < end) if start <= end else (minute >= start or minute < end)
    if not inside:
        return now_ms
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    end_at = day.replace(hour=end // 60, minute=end % 60)
    if end_at <= local:
        end_at = (day + timedelta(days=1)).replace(hour=end // 60, minute=end % 60)
    # Through UTC: the wall-clock end of the window, whatever the zone's offset does.
    return int(end_at.timestamp() * 1000)


def event_values(event: events_pb2.Event) -> dict[str, str]:
    kind = EventKind(event.kind).name if event.kind in EventKind._value2member_map_ else ""
    return {"subscriber": event.subscriber_id, "account": event.account_id, "kind": kind,
            "event_id": event.event_id, "bucket": event.bucket_id,
            "threshold": str(event.threshold_percent), "value": str(event.value),
            "limit": str(event.limit), "money": money(event.value),
            "limit_money": money(event.limit), "state": event.detail}
