"""Campaign results for the dashboard: reach (lines a message was queued for), offers made
and taken with the revenue of those taken, and NPS answers (score and distribution)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis

from tollgate.engine.errors import AlreadyExists, InvalidArgument
from tollgate.engine.lifecycle import signals
from tollgate.engine.storage import keys

NO_CAMPAIGN = "-"
"""Where NPS answers from a link that came from no campaign (made by customer care) go."""


async def count(redis: aioredis.Redis, campaign: str, **fields: int) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.sadd(keys.LC_CAMPAIGNS, campaign)
    for name, n in fields.items():
        pipe.hincrby(keys.lc_campaign(campaign), name, n)
    await pipe.execute()


async def record_nps(redis: aioredis.Redis, campaign: str, subscriber_id: str,
                     score: object, now_ms: int) -> None:
    """One answer per line and campaign (a second one is refused: the distribution counts
    people, not clicks); the line's own last answer feeds its churn signals."""
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
        raise InvalidArgument(f"an NPS answer is a whole number 0..10; got {score!r}")
    name = campaign or NO_CAMPAIGN
    if not await redis.hsetnx(keys.lc_nps_answers(name), subscriber_id, score):
        raise AlreadyExists("this survey was answered already: thank you")
    await count(redis, name, **{f"nps:{score}": 1, "answers": 1})
    await signals.record_nps(redis, subscriber_id, score, now_ms)


def nps(distribution: Mapping[int, int]) -> int | None:
    """Net Promoter Score: % promoters (9-10) minus % detractors (0-6); None unanswered."""
    total = sum(distribution.values())
    if not total:
        return None
    promoters = sum(n for s, n in distribution.items() if s >= 9)
    detractors = sum(n for s, n in distribution.items() if s <= 6)
    return round(100 * (promoters - detractors) / total)


async def campaign_results(redis: aioredis.Redis) -> list[dict[str, Any]]:
    """Every campaign with results: one round trip for the names, one for their hashes."""
    names = sorted(m.decode() for m in cast(set[bytes], await redis.smembers(keys.LC_CAMPAIGNS)))
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.lc_campaign(name))
    out = []
    for name, h in zip(names, await pipe.execute(), strict=True):
        f = {k.decode(): int(v) for k, v in cast(dict[bytes, bytes], h).items()}
        dist = {s: f.get(f"nps:{s}", 0) for s in range(11)}
        out.append({"name": name, "reach": f.get("reach", 0), "offers": f.get("offers", 0),
                    "bought": f.get("bought", 0), "revenue": f.get("revenue", 0),
                    "answers": sum(dist.values()), "nps": nps(dist),
                    "distribution": [dist[s] for s in range(11)]})
    return out
