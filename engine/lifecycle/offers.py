"""Offers: a plan's add-ons named in a threshold message, and offer -> purchase conversion
(BuyAddOn carrying the offer id)."""

from __future__ import annotations

import json
from typing import cast

import redis.asyncio as aioredis

from tollgate.engine.domain import Plan
from tollgate.engine.lifecycle import results, signals
from tollgate.engine.lifecycle.metrics import OFFERS_BOUGHT, OFFERS_MADE
from tollgate.engine.lifecycle.outbox import script
from tollgate.engine.lifecycle.rules import money
from tollgate.engine.storage import keys


async def make_offer(redis: aioredis.Redis, offer_id: str, subscriber_id: str,
                     account_id: str, plan: Plan, now_ms: int, campaign: str = ""
                     ) -> tuple[list[str], str]:
    """Records the offer once (with the campaign that made it, if one did); returns the
    add-on ids offered and their text lines."""
    addon_ids = [a.addon_id for a in plan.addons]
    made = await redis.hsetnx(keys.lc_offer(offer_id), "made_ms", now_ms)
    if made:
        await redis.hset(keys.lc_offer(offer_id), mapping={
            "subscriber": subscriber_id, "account": account_id,
            "addons": json.dumps(addon_ids), "campaign": campaign})
        await redis.hincrby(keys.LC_OFFER_STATS, "made", 1)
        await signals.count_week(redis, subscriber_id, signals.OFFERED, now_ms)
        if campaign:
            await results.count(redis, campaign, offers=1)
        OFFERS_MADE.inc()
    lines = [f"- {a.name or a.addon_id}: {money(a.price_micros)} {plan.currency} "
             f"(add-on {a.addon_id}, offer {offer_id})" for a in plan.addons]
    return addon_ids, "\n".join(lines)


async def record_purchase(redis: aioredis.Redis, offer_id: str, addon_id: str,
                          order_id: str, price_micros: int = 0) -> bool:
    """Counts the first purchase answering an offer made here, with its revenue (also to
    the campaign that made the offer, and to the line's signals: an offer taken); returns
    whether it counted."""
    counted = bool(await script(redis, "lc_convert")(
        keys=[keys.lc_offer(offer_id), keys.LC_OFFER_STATS], args=[addon_id, order_id]))
    if counted:
        OFFERS_BOUGHT.labels(addon_id).inc()
        # After the once-only mark: a crash just here loses this revenue from the view,
        # never counts it twice (the purchase itself is the Provisioner's, and whole).
        await redis.hincrby(keys.LC_OFFER_STATS, "revenue", price_micros)
        sub, made, campaign = cast(list[bytes | None], await redis.hmget(
            keys.lc_offer(offer_id), "subscriber", "made_ms", "campaign"))
        if sub is not None and made is not None:
            await signals.count_week(redis, sub.decode(), signals.TAKEN, int(made))
        if campaign:
            await results.count(redis, campaign.decode(), bought=1, revenue=price_micros)
    return counted


async def offer_stats(redis: aioredis.Redis) -> dict[str, int]:
    """{'made': n, 'bought': n, 'bought:<addon>': n, 'revenue': micro-units}"""
    h = cast(dict[bytes, bytes], await redis.hgetall(keys.LC_OFFER_STATS))
    return {k.decode(): int(v) for k, v in h.items()}
