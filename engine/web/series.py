"""The dashboard's time series: each process's Prometheus counters, sampled every second and
added (as deltas) to 10-second buckets and running totals in Redis, so that every server and
lifecycle process adds up and a page reads a few keys, never the subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from tollgate.engine.ops.metrics import LATENCY_BUCKETS

log = logging.getLogger("tollgate.web")

BUCKET_S = 10
"""Width of one time-series point."""
HISTORY_S = 3600
"""How far back the dashboard's charts go."""
KEPT_S = HISTORY_S + 600
"""Buckets expire a while after they leave the charts."""


def bucket_key(start_s: int) -> str:
    return f"tg:{{web}}:ts:{start_s}"


TOTALS = "tg:{web}:totals"
"""Hash: every field's total since the installation's first sample."""


def bucket_start(t_s: float) -> int:
    return int(t_s) // BUCKET_S * BUCKET_S


@dataclass(frozen=True)
class Feed:
    """A counter family and how its samples become series fields: the prefix, then the
    values of `labels` joined with ':' (other labels are summed)."""

    sample: str
    prefix: str
    labels: tuple[str, ...] = ()


FEEDS = (
    Feed("tollgate_requests_total", "req", ("result",)),
    Feed("tollgate_grants_total", "grant", ("result",)),
    Feed("tollgate_answer_seconds_bucket", "lat", ("le",)),
    Feed("tollgate_notifications_total", "ntf", ("channel", "outcome")),
    Feed("tollgate_lifecycle_events_total", "ev", ("kind",)),
    Feed("tollgate_state_transitions_total", "to", ("state",)),
    Feed("tollgate_offers_made_total", "offers_made"),
    Feed("tollgate_offers_bought_total", "offers_bought"),
    Feed("tollgate_record_money_micros_total", "money", ("kind",)),
    Feed("tollgate_records_read_total", "records", ("kind",)),
)


def sample(registry: CollectorRegistry = REGISTRY,
           feeds: Iterable[Feed] = FEEDS) -> dict[str, float]:
    """The current value of every field the feeds define."""
    by_sample = {f.sample: f for f in feeds}
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            feed = by_sample.get(s.name)
            if feed is None:
                continue
            field = ":".join((feed.prefix, *(s.labels.get(n, "") for n in feed.labels)))
            out[field] = out.get(field, 0.0) + s.value
    return out


def deltas(before: dict[str, float], now: dict[str, float]) -> dict[str, int]:
    """What each field gained since `before` (whole units: every feed counts integers)."""
    out = {}
    for field, value in now.items():
        d = round(value - before.get(field, 0.0))
        if d > 0:
            out[field] = d
    return out


class Recorder:
    """Adds this process's counter growth to Redis every `interval_s`. One per process: the
    counters are process-wide, so two recorders would count them twice (see `shared`)."""

    def __init__(self, redis: aioredis.Redis, interval_s: float = 1.0,
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.redis = redis
        self.interval_s = interval_s
        self.registry = registry
        self._last = sample(registry)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        # Told to stop, not cancelled: a cancellation that reaches the task inside redis-py's
        # pipeline can be swallowed there, and the task then sleeps on forever (seen: a
        # server's shutdown hanging in a test).
        if self._task is not None:
            self._stopping.set()
            await self._task
        with contextlib.suppress(RedisError, OSError):
            await self.flush()  # what the last interval counted

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
            if self._stopping.is_set():
                return
            try:
                await self.flush()
            except (RedisError, OSError) as e:  # counted again next time: nothing is lost
                log.warning("dashboard counters not written: %s", e)

    async def flush(self, now_s: float | None = None) -> None:
        current = sample(self.registry)
        grown = deltas(self._last, current)
        if not grown:
            self._last = current
            return
        key = bucket_key(bucket_start(time.time() if now_s is None else now_s))
        pipe = self.redis.pipeline(transaction=False)
        for field, d in grown.items():
            pipe.hincrby(key, field, d)
            pipe.hincrby(TOTALS, field, d)
        pipe.expire(key, KEPT_S)
        await pipe.execute()
        self._last = current  # only once written: a failed write is retried with the next


_shared: dict[int, tuple[Recorder, int]] = {}


@contextlib.asynccontextmanager
async def shared(redis: aioredis.Redis, interval_s: float = 1.0):  # type: ignore[no-untyped-def]
    """The process's one recorder (per event loop), started by the first user and stopped
    with the last: the server and the lifecycle of `tollgate demo` share it."""
    loop = id(asyncio.get_running_loop())
    rec, users = _shared.get(loop, (None, 0))
    if rec is None:
        rec = Recorder(redis, interval_s).start()
    _shared[loop] = (rec, users + 1)
    try:
        yield rec
    finally:
        rec, users = _shared[loop]
        if users == 1:
            del _shared[loop]
            await rec.stop()
        else:
            _shared[loop] = (rec, users - 1)


async def read_buckets(redis: aioredis.Redis, now_s: float,
                       span_s: int = HISTORY_S) -> list[tuple[int, dict[str, int]]]:
    """The buckets of the last span_s seconds, oldest first, empty ones included."""
    last = bucket_start(now_s)
    starts = list(range(last - span_s + BUCKET_S, last + 1, BUCKET_S))
    pipe = redis.pipeline(transaction=False)
    for s in starts:
        pipe.hgetall(bucket_key(s))
    rows = cast(list[dict[bytes, bytes]], await pipe.execute())
    return [(s, {k.decode(): int(v) for k, v in row.items()})
            for s, row in zip(starts, rows, strict=True)]


async def read_totals(redis: aioredis.Redis) -> dict[str, int]:
    h = cast(dict[bytes, bytes], await redis.hgetall(TOTALS))
    return {k.decode(): int(v) for k, v in h.items()}


def quantile(counts: dict[str, int], q: float,
             edges: Iterable[float] = LATENCY_BUCKETS) -> float | None:
    """The q-quantile (seconds) of a bucket's latency histogram fields `lat:<le>` (cumulative
    counts, as Prometheus keeps them; a missing field counted 0), interpolated within its
    bucket; None without observations."""
    points = [(e, counts.get(f"lat:{floatToGoString(e)}", 0)) for e in edges]
    points.append((math.inf, counts.get("lat:+Inf", 0)))
    total = points[-1][1]
    if total == 0:
        return None
    rank = q * total
    lower_edge, lower_count = 0.0, 0
    for edge, n in points:
        if n >= rank and n > lower_count:
            if math.isinf(edge):
                return lower_edge  # past the last edge: all that is known is "over it"
            return lower_edge + (edge - lower_edge) * (rank - lower_count) / (n - lower_count)
        lower_edge, lower_count = edge, n
    return lower_edge
