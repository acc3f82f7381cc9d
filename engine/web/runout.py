"""Predicted run-out: when the money and each bundle will be used up at the recent rate of
use (the invoice-shock warning of the subscriber pages)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

DAY_MS = 86_400_000
WINDOW_MS = 7 * DAY_MS
"""The rate is that of the last week's usage (or of the span the records seen cover)."""
MIN_SPAN_MS = 3_600_000
"""A rate is never taken over less than an hour: one burst is not a trend."""
MONEY = ""
"""The money balance's id among run-outs (bucket ids are never empty)."""


@dataclass(frozen=True)
class Use:
    """One usage record's draw: money (micro-units) and units per bucket id."""

    time_ms: int
    money: int
    units: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Balance:
    """Something that runs out: the money (id MONEY) or a bucket, with what is left."""

    id: str
    left: int
    expiry_ms: int = 0


@dataclass(frozen=True)
class RunOut:
    id: str
    left: int
    per_day: float
    """Use per day at the recent rate (micro-units or units)."""
    at_ms: int | None
    """When it is used up at that rate; None: not before it expires, or not used."""
    expires_first: bool = False
    """The bucket expires before the rate would use it up."""


def rates(uses: Sequence[Use], now_ms: int, window_ms: int = WINDOW_MS) -> dict[str, float]:
    """Use per ms of the money (MONEY) and of each bucket over the window's records."""
    recent = [u for u in uses if now_ms - window_ms <= u.time_ms <= now_ms]
    if not recent:
        return {}
    span = max(now_ms - min(u.time_ms for u in recent), MIN_SPAN_MS)
    totals: dict[str, float] = {}
    for u in recent:
        if u.money > 0:
            totals[MONEY] = totals.get(MONEY, 0.0) + u.money
        for bucket, n in u.units.items():
            totals[bucket] = totals.get(bucket, 0.0) + n
    return {k: v / span for k, v in totals.items()}


def predict(balances: Sequence[Balance], uses: Sequence[Use], now_ms: int,
            window_ms: int = WINDOW_MS) -> list[RunOut]:
    """Each balance's run-out at the recent rate, soonest first (those never reached last)."""
    per_ms = rates(uses, now_ms, window_ms)
    out = []
    for b in balances:
        rate = per_ms.get(b.id, 0.0)
        at = now_ms + int(max(b.left, 0) / rate) if rate > 0 else None
        expires_first = bool(b.expiry_ms and at is not None and b.expiry_ms < at)
        out.append(RunOut(b.id, b.left, rate * DAY_MS, None if expires_first else at,
                          expires_first))
    return sorted(out, key=lambda r: (r.at_ms is None, r.at_ms or 0))


def headline(runouts: Sequence[RunOut], now_ms: int, currency: str = "") -> str:
    """The one line: what runs out first and when, in plain words."""
    first = next((r for r in runouts if r.at_ms is not None), None)
    if first is None or first.at_ms is None:
        return "Nothing runs out at the current rate of use."
    what = f"the {currency} balance".replace("  ", " ") if first.id == MONEY \
        else f"bundle {first.id}"
    return f"At the current rate, {what} runs out {in_words(first.at_ms - now_ms)}."


def in_words(ms: int) -> str:
    """'now', 'in 5 hours', 'in 3 days'."""
    if ms <= 0:
        return "now"
    hours = ms / 3_600_000
    if hours < 1:
        return f"in {max(1, round(ms / 60_000))} minutes"
    if hours < 48:
        return f"in {round(hours)} hours"
    return f"in {round(hours / 24)} days"
