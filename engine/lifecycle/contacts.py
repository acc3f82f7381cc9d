"""Subscriber contact preferences in Redis: address per channel, locale, time zone,
preferred channel and opt-outs."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

from tollgate.engine.errors import ConfigError, InvalidArgument
from tollgate.engine.lifecycle.settings import CHANNELS, check_zone
from tollgate.engine.storage import keys
from tollgate.v1 import lifecycle_pb2 as lpb

FIELDS = ("email", "phone", "locale", "timezone", "preferred_channel")
OPT_OUTS = (*CHANNELS, "campaigns")


def check(p: lpb.Preferences) -> None:
    if p.preferred_channel and p.preferred_channel not in CHANNELS:
        raise InvalidArgument(f"preferred_channel must be one of {', '.join(CHANNELS)}")
    bad = [o for o in p.opt_outs if o not in OPT_OUTS]
    if bad:
        raise InvalidArgument(f"opt_outs: {bad[0]!r} is not one of {', '.join(OPT_OUTS)}")
    if p.timezone:
        try:
            check_zone(p.timezone, "timezone")
        except ConfigError as e:
            raise InvalidArgument(str(e)) from None


async def save(redis: aioredis.Redis, p: lpb.Preferences) -> None:
    """Replaces the subscriber's preferences."""
    check(p)
    key = keys.lc_prefs(p.subscriber_id)
    mapping: dict[Any, Any] = {f: getattr(p, f) for f in FIELDS}
    mapping["opt_outs"] = ",".join(sorted(set(p.opt_outs)))
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=mapping)
    await pipe.execute()


async def load(redis: aioredis.Redis, subscriber_id: str) -> lpb.Preferences:
    h = cast(dict[bytes, bytes], await redis.hgetall(keys.lc_prefs(subscriber_id)))
    values = {k.decode(): v.decode() for k, v in h.items()}
    opt_outs = [o for o in values.pop("opt_outs", "").split(",") if o]
    return lpb.Preferences(subscriber_id=subscriber_id, opt_outs=opt_outs,
                           **{f: values.get(f, "") for f in FIELDS})
