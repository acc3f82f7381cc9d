"""Churn risk of a line, 0-100, from signals Tollgate has, with the reason behind each point."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

REASON_KINDS = ("topup", "usage", "grace", "refused", "nps", "offers")


class Band(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class Signals:
    """What is known of a line; None = not known (then it adds nothing)."""

    days_since_topup: float | None = None
    usage_this_week: float | None = None
    usage_weekly_average: float | None = None
    """Over the four weeks before this one."""
    days_in_grace: float | None = None
    """None unless the line is in GRACE."""
    grants_refused_week: int = 0
    nps: int | None = None
    offers_ignored: int = 0
    """Offers sent in the last month (this calendar week and the four before) not bought."""


@dataclass(frozen=True)
class Reason:
    points: int
    text: str
    kind: str = ""
    """Which signal (topup, usage, grace, refused, nps, offers): the base's reasons count."""


@dataclass(frozen=True)
class Risk:
    score: int
    band: Band
    reasons: tuple[Reason, ...]


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def _topup(days: float | None) -> Reason | None:
    if days is None or days < 14:
        return None
    return Reason(25 if days >= 30 else 15, f"no top-up for {int(days)} days", "topup")


def _usage(week: float | None, average: float | None) -> Reason | None:
    if week is None or not average:
        return None
    ratio = week / average
    if ratio >= 0.5:
        return None
    return Reason(30 if ratio < 0.2 else 20,
                  f"usage this week is {ratio:.0%} of its four-week average", "usage")


def _grace(days: float | None) -> Reason | None:
    if days is None:
        return None
    return Reason(min(30, 20 + 2 * int(days)), f"in GRACE for {days:.0f} days", "grace")


def _refused(n: int) -> Reason | None:
    if not n:
        return None
    return Reason(min(15, 3 * n), f"{n} {_plural(n, 'grant')} refused this week", "refused")


def _nps(score: int | None) -> Reason | None:
    if score is None or score > 6:
        return None
    return Reason(15, f"NPS detractor (answered {score})", "nps")


def _offers(n: int) -> Reason | None:
    return Reason(min(10, 2 * n), f"{n} {_plural(n, 'offer')} not taken in the last month",
                  "offers") \
        if n else None


def risk(s: Signals) -> Risk:
    reasons = [r for r in (_topup(s.days_since_topup),
                           _usage(s.usage_this_week, s.usage_weekly_average),
                           _grace(s.days_in_grace), _refused(s.grants_refused_week),
                           _nps(s.nps), _offers(s.offers_ignored)) if r is not None]
    reasons.sort(key=lambda r: -r.points)
    score = min(100, sum(r.points for r in reasons))
    band = Band.HIGH if score >= 50 else Band.MEDIUM if score >= 25 else Band.LOW
    return Risk(score, band, tuple(reasons))
