"""The churn signals of each line, kept by the lifecycle as it reads the streams (a small hash
per line, `keys.lc_activity`): usage by week, the last top-up, refused grants, when it went
into GRACE, offers made and taken, its NPS answer. The census turns them into scores
(engine/web/segments.py) without reading any stream back."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from tollgate.engine.domain import SubscriberState
from tollgate.engine.storage import keys
from tollgate.engine.web.churn import Signals

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
WEEKS_KEPT = 6
"""This week and the five before: the four-week average needs the fifth for its start."""
NPS_KEPT_MS = 180 * DAY_MS
"""An NPS answer older than this says nothing about the line any more."""

LAST = "last"
"""Last usage time (also read by the inactivity campaigns)."""
FIRST = "first"
TOPUP = "topup"
GRACE = "grace"
NPS = "nps"
NPS_MS = "nps_ms"
USAGE, REFUSED, OFFERED, TAKEN = "u", "r", "o", "b"
"""Prefixes of the per-week fields: '<prefix><week number>'."""


def week(t_ms: int) -> int:
    return t_ms // WEEK_MS


def week_field(prefix: str, t_ms: int) -> str:
    return f"{prefix}{week(t_ms)}"


def stale_fields(prefix: str, t_ms: int) -> list[str]:
    """The week fields that have just left the kept weeks (deleted as new ones are written,
    so a line's hash never grows)."""
    w = week(t_ms)
    return [f"{prefix}{w - n}" for n in range(WEEKS_KEPT, WEEKS_KEPT + 2)]


class Activity(StrEnum):
    """The activity filter of the segments page, from the last use."""

    ACTIVE = "active"
    """Used the service in the last 7 days."""
    IDLE = "idle"
    """Last use 7 to 30 days ago."""
    DORMANT = "dormant"
    """Last use 30 days ago or more."""
    NEVER = "never"


def activity(last_ms: int, now_ms: int) -> Activity:
    if not last_ms:
        return Activity.NEVER
    idle = now_ms - last_ms
    return Activity.ACTIVE if idle < 7 * DAY_MS else Activity.IDLE if idle < 30 * DAY_MS \
        else Activity.DORMANT


@dataclass(frozen=True)
class Line:
    """What the census knows of a line besides its signals hash."""

    state: SubscriberState
    created_ms: int


@functools.lru_cache(maxsize=64)
def _names(prefix: str, w: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{w - n}" for n in range(WEEKS_KEPT))


def _weeks(fields: Mapping[str, int], prefix: str, w: int) -> list[int]:
    """This week's count, then each week's before it, WEEKS_KEPT in all."""
    get = fields.get  # the census calls this a few million times
    return [get(k, 0) for k in _names(prefix, w)]


def signals(fields: Mapping[str, int], line: Line, now_ms: int) -> Signals:
    """The churn signals of a line's hash at now_ms. Weeks are calendar weeks; a window of
    7 days that straddles two takes the older one's share in proportion (as if the use were
    even within a week). A signal the hash cannot show stays None."""
    w, f = week(now_ms), (now_ms % WEEK_MS) / WEEK_MS
    u = _weeks(fields, USAGE, w)
    this_week = u[0] + u[1] * (1 - f)
    before = u[1] * f + u[2] + u[3] + u[4] + u[5] * (1 - f)  # the 28 days before those 7
    first = fields.get(FIRST, 0)
    window_start, window_end = now_ms - 35 * DAY_MS, now_ms - 7 * DAY_MS
    covered = window_end - max(first, window_start) if first else 0
    average = before * WEEK_MS / covered if covered >= WEEK_MS else None
    r = _weeks(fields, REFUSED, w)
    topup = fields.get(TOPUP) or line.created_ms  # never topped up: since it opened
    offered = sum(_weeks(fields, OFFERED, w)[:5])
    taken = sum(_weeks(fields, TAKEN, w)[:5])
    nps = fields.get(NPS) if now_ms - fields.get(NPS_MS, 0) < NPS_KEPT_MS else None
    grace = fields.get(GRACE, 0)
    return Signals(
        days_since_topup=(now_ms - topup) / DAY_MS if topup else None,
        usage_this_week=this_week if average is not None else None,
        usage_weekly_average=average,
        days_in_grace=(now_ms - grace) / DAY_MS if line.state == SubscriberState.GRACE
        and grace else None,
        grants_refused_week=round(r[0] + r[1] * (1 - f)),
        nps=nps, offers_ignored=max(0, offered - taken))


def decode(h: Mapping[bytes, bytes]) -> dict[str, int]:
    """A signals hash as read from Redis (every field is an integer)."""
    out = {}
    for k, v in h.items():
        try:
            out[k.decode()] = int(v)
        except ValueError:
            continue
    return out


@dataclass
class Use:
    """One line's use in a batch of usage records."""

    account_id: str
    first_ms: int
    last_ms: int
    amounts: dict[int, int]
    """Week number -> amount of use (money micro-units + units, as the care page counts)."""

    def add(self, t_ms: int, amount: int) -> None:
        self.first_ms = min(self.first_ms, t_ms)
        self.last_ms = max(self.last_ms, t_ms)
        if amount:
            self.amounts[week(t_ms)] = self.amounts.get(week(t_ms), 0) + amount


async def record_usage(redis: aioredis.Redis, used: Mapping[str, Use]) -> None:
    """One usage batch's lines: last and first use, use per week."""
    pipe = redis.pipeline(transaction=False)
    for sub, u in used.items():
        key = keys.lc_activity(sub)
        pipe.sadd(keys.lc_account_subscribers(u.account_id), sub)
        pipe.hset(key, LAST, u.last_ms)
        pipe.hsetnx(key, FIRST, u.first_ms)
        for w, amount in u.amounts.items():
            pipe.hincrby(key, f"{USAGE}{w}", amount)
        if u.amounts:
            pipe.hdel(key, *stale_fields(USAGE, u.last_ms))
    await pipe.execute()


async def count_week(redis: aioredis.Redis, subscriber_id: str, prefix: str, t_ms: int,
                     n: int = 1) -> None:
    key = keys.lc_activity(subscriber_id)
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(key, week_field(prefix, t_ms), n)
    pipe.hdel(key, *stale_fields(prefix, t_ms))
    await pipe.execute()


async def record_topup(redis: aioredis.Redis, subscriber_ids: list[str], t_ms: int) -> None:
    """A top-up or add-on bought on the account: every line of it (a later one wins)."""
    pipe = redis.pipeline(transaction=False)
    for sub in subscriber_ids:
        pipe.hget(keys.lc_activity(sub), TOPUP)
    known = await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    for sub, was in zip(subscriber_ids, known, strict=True):
        if was is None or int(was) < t_ms:
            pipe.hset(keys.lc_activity(sub), TOPUP, t_ms)
    await pipe.execute()


async def record_state(redis: aioredis.Redis, subscriber_id: str, state: SubscriberState,
                       t_ms: int) -> None:
    """When the line went into GRACE (cleared when it leaves)."""
    key = keys.lc_activity(subscriber_id)
    if state == SubscriberState.GRACE:
        await redis.hsetnx(key, GRACE, t_ms)
    else:
        await redis.hdel(key, GRACE)


async def record_nps(redis: aioredis.Redis, subscriber_id: str, score: int, t_ms: int) -> None:
    await redis.hset(keys.lc_activity(subscriber_id), mapping={NPS: score, NPS_MS: t_ms})


async def read(redis: aioredis.Redis, subscriber_ids: list[str]) -> list[dict[str, int]]:
    pipe = redis.pipeline(transaction=False)
    for sub in subscriber_ids:
        pipe.hgetall(keys.lc_activity(sub))
    return [decode(h) for h in await pipe.execute()]
