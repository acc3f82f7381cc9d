"""What the operator's dashboard shows, from the series in Redis (engine/web/series.py), the
lifecycle's own counters and the census of the base (by state, and scored for churn risk):
a few keys per page load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis

from tollgate.engine.domain import SubscriberState
from tollgate.engine.lifecycle.offers import offer_stats
from tollgate.engine.lifecycle.results import campaign_results
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import Store
from tollgate.engine.web.segments import IndexBuilder
from tollgate.engine.web.series import BUCKET_S, HISTORY_S, quantile, read_buckets, read_totals

log = logging.getLogger("tollgate.web")

BASE = "tg:{web}:base"
"""Hash: state name -> lines in it, at the last census (and 'time_ms')."""
BASE_TREND = "tg:{web}:base-trend"
"""List of past censuses (JSON), newest first."""
TREND_KEPT = 288
CENSUS_LEASE = "tg:{web}:census-lease"
SCAN_COUNT = 1000


async def census(store: Store, now_ms: int, lease_ms: int = 0) -> dict[str, int]:
    """Counts the subscribers by state and scores each for churn risk (the segments index,
    engine/web/segments.py), with an incremental SCAN: a page of ids, then their lines in
    a few round trips, so Redis stays free for charging between pages. lease_ms: the
    census lease is held that long past each page (no second census starts meanwhile)."""
    redis = store.redis
    counts = {s.name: 0 for s in SubscriberState}
    index = IndexBuilder(store, now_ms)
    await index.start()
    batch: list[str] = []
    prefix = len(keys.subscriber(""))

    async def count(ids: list[str]) -> None:
        for line in await index.add(ids):
            counts[line.state.name] += 1
        if lease_ms:
            await redis.pexpire(CENSUS_LEASE, lease_ms)

    async for k in redis.scan_iter(match=keys.subscriber("*"), count=SCAN_COUNT):
        batch.append(k.decode()[prefix:])
        if len(batch) >= SCAN_COUNT:
            await count(batch)
            batch = []
    if batch:
        await count(batch)
    await index.finish()
    pipe = redis.pipeline(transaction=False)
    pipe.hset(BASE, mapping=cast(Any, {**counts, "time_ms": now_ms}))
    pipe.lpush(BASE_TREND, json.dumps({"t": now_ms // 1000, **counts}))
    pipe.ltrim(BASE_TREND, 0, TREND_KEPT - 1)
    await pipe.execute()
    return counts


async def run_census(store: Store, interval_s: float, stopping: asyncio.Event,
                     clock: Callable[[], float] = time.time) -> None:
    """A census every interval_s by whichever process takes the interval's lease: web
    servers and lifecycle processes all try (http_census_s = 0 keeps a process out). Ends
    once `stopping` is set: a cancellation that lands inside redis-py's pipeline can be
    swallowed there, and the loop then slept its whole interval (five minutes by default)
    while its server's shutdown waited for it."""
    lease_ms = max(1, int(interval_s * 1000))
    while not stopping.is_set():
        try:
            if await store.redis.set(CENSUS_LEASE, "1", nx=True, px=lease_ms):
                started = time.monotonic()
                counts = await census(store, int(clock() * 1000), lease_ms)
                log.info("census of the base", extra={"counts": counts,
                                                      "seconds": time.monotonic() - started})
        except asyncio.CancelledError:
            raise
        except Exception:  # a Redis outage: the next interval counts again
            log.exception("census failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)


def _sum(buckets: list[tuple[int, dict[str, int]]], prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, fields in buckets:
        for f, n in fields.items():
            if f.startswith(prefix):
                out[f[len(prefix):]] = out.get(f[len(prefix):], 0) + n
    return out


def _answered(fields: dict[str, int]) -> int:
    return sum(n for f, n in fields.items() if f.startswith("req:"))


def series(buckets: list[tuple[int, dict[str, int]]], now_s: float) -> dict[str, list[Any]]:
    """The time-series charts: one point per bucket (rates of the bucket still filling are
    over the part of it that has passed)."""
    out: dict[str, list[Any]] = {"t": [], "rate": [], "p50_ms": [], "p99_ms": [],
                                 "money_per_hour": [], "topups_per_hour": []}
    for start, fields in buckets:
        width = min(BUCKET_S, max(1.0, now_s - start))
        per_hour = 3600 / width
        out["t"].append(start)
        out["rate"].append(round(_answered(fields) / width, 2))
        for q, name in ((0.5, "p50_ms"), (0.99, "p99_ms")):
            v = quantile(fields, q)
            out[name].append(None if v is None else round(v * 1000, 3))
        out["money_per_hour"].append(fields.get("money:usage", 0) * per_hour / 1e6)
        out["topups_per_hour"].append(fields.get("money:top_up", 0) * per_hour / 1e6)
    return out


def breakdowns(buckets: list[tuple[int, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """The bar charts: sums over the buckets given."""
    answers = _sum(buckets, "req:")
    return {"answers": answers,
            "refused": {r: n for r, n in answers.items() if r != "success"},
            "notifications": _sum(buckets, "ntf:"), "events": _sum(buckets, "ev:"),
            "transitions": _sum(buckets, "to:"), "records": _sum(buckets, "records:"),
            "money": _sum(buckets, "money:")}


async def _base(redis: aioredis.Redis) -> tuple[dict[str, int], list[dict[str, int]]]:
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(BASE)
    pipe.lrange(BASE_TREND, 0, TREND_KEPT - 1)
    base, trend = await pipe.execute()
    now = {k.decode(): int(v) for k, v in cast(dict[bytes, bytes], base).items()}
    return now, [json.loads(x) for x in reversed(cast(list[bytes], trend))]


async def _lifecycle(redis: aioredis.Redis) -> dict[str, int]:
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(keys.LC_OUTBOX)
    pipe.xlen(keys.LC_DEAD)
    waiting, dead = await pipe.execute()
    return {"waiting": int(waiting), "dead_letters": int(dead)}


async def dashboard(redis: aioredis.Redis, now_s: float, span_s: int = HISTORY_S
                    ) -> dict[str, Any]:
    """Everything the dashboard shows; span_s < HISTORY_S for the live updates (the last
    buckets only, which the page merges into its charts)."""
    buckets = await read_buckets(redis, now_s, span_s)
    base, trend = await _base(redis)
    offers = await offer_stats(redis)
    return {"now": now_s, "bucket_s": BUCKET_S, "series": series(buckets, now_s),
            "last_hour": breakdowns(buckets) if span_s == HISTORY_S else None,
            "totals": await read_totals(redis), "base": base,
            "base_trend": trend if span_s == HISTORY_S else None,
            "offers": offers, "lifecycle": await _lifecycle(redis),
            "campaigns": await campaign_results(redis)}
