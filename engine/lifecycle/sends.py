"""Segment sends: an operator sends a campaign (signal "segment") to a segment from the web
segments page; the request waits in Redis and a lifecycle process sends it through its
Notifier (quiet hours, opt-outs, channels, offers), once per line however often the request
is sent or the send is restarted (the message key holds the request's id)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis

from tollgate.engine.domain import SubscriberState
from tollgate.engine.errors import InvalidArgument, NotFound
from tollgate.engine.lifecycle.campaigns import Campaigns
from tollgate.engine.lifecycle.outbox import Schedule
from tollgate.engine.lifecycle.rules import money
from tollgate.engine.lifecycle.settings import SEGMENT, Campaign
from tollgate.engine.storage import keys
from tollgate.engine.web.segments import Filter, members

log = logging.getLogger("tollgate.lifecycle")

SENDS_SHOWN = 20
KEPT_S = 90 * 86_400
"""A finished send's progress is kept this long (the same request id is refused as long)."""


async def publish(redis: aioredis.Redis, campaigns: tuple[Campaign, ...]) -> None:
    """Tells the segments page which campaigns this lifecycle can send to a segment."""
    mine = {c.name: json.dumps({"offer": c.offer, "channels": list(c.channels)})
            for c in campaigns if c.signal == SEGMENT}
    pipe = redis.pipeline(transaction=True)
    pipe.delete(keys.LC_SEGMENT_CAMPAIGNS)
    if mine:
        pipe.hset(keys.LC_SEGMENT_CAMPAIGNS, mapping=cast(Any, mine))
    await pipe.execute()


async def sendable(redis: aioredis.Redis) -> dict[str, dict[str, Any]]:
    h = cast(dict[bytes, bytes], await redis.hgetall(keys.LC_SEGMENT_CAMPAIGNS))
    return {k.decode(): json.loads(v) for k, v in sorted(h.items())}


async def request(redis: aioredis.Redis, job_id: str, campaign: str, f: Filter, who: str,
                  now_ms: int) -> bool:
    """Queues a send once per job id (the page's idempotency key); returns whether it was
    queued now (False: this request was made before)."""
    if campaign not in await sendable(redis):
        raise NotFound(f"no lifecycle process offers campaign {campaign!r} for segments "
                       f"(a [[lifecycle.campaigns]] with signal = \"segment\")")
    if not await redis.hsetnx(keys.lc_send(job_id), "requested_ms", now_ms):
        return False
    job = {"id": job_id, "campaign": campaign, "filter": f.to_json(), "words": f.words(),
           "by": who, "requested_ms": now_ms}
    pipe = redis.pipeline(transaction=True)
    pipe.hset(keys.lc_send(job_id), mapping={"status": "waiting", "queued": 0, "lines": 0,
                                             "job": json.dumps(job)})
    pipe.hset(keys.LC_SEND_JOBS, job_id, json.dumps(job))
    pipe.zadd(keys.LC_SENDS, {job_id: now_ms})
    pipe.lpush(keys.LC_SEND_LOG, job_id)
    pipe.ltrim(keys.LC_SEND_LOG, 0, SENDS_SHOWN - 1)
    await pipe.execute()
    return True


async def recent(redis: aioredis.Redis) -> list[dict[str, Any]]:
    """The latest sends with their progress, newest first."""
    ids = [i.decode() for i in cast(list[bytes], await redis.lrange(keys.LC_SEND_LOG, 0,
                                                                    SENDS_SHOWN - 1))]
    pipe = redis.pipeline(transaction=False)
    for i in ids:
        pipe.hgetall(keys.lc_send(i))
    out = []
    for h in await pipe.execute():
        f = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], h).items()}
        if "job" in f:
            out.append({**json.loads(f["job"]), "status": f.get("status", ""),
                        "lines": int(f.get("lines", 0)), "queued": int(f.get("queued", 0)),
                        "done_ms": int(f.get("done_ms", 0))})
    return out


class Sender:
    """Runs the waiting sends (in a lifecycle process)."""

    def __init__(self, campaigns: Campaigns, by_name: dict[str, Campaign], lease_ms: int,
                 clock: Callable[[], int]) -> None:
        self.campaigns = campaigns
        self.notifier = campaigns.notifier
        self.redis = campaigns.store.redis
        self.by_name = by_name
        self.lease_ms = lease_ms
        self.clock = clock
        self.schedule = Schedule(self.redis, keys.LC_SENDS, keys.LC_SEND_JOBS)

    async def run(self, now_ms: int) -> int:
        """Claims one waiting send and sends it; returns 1 if there was one."""
        claimed = await self.schedule.claim(now_ms, self.lease_ms, 1)
        for job_id, payload in claimed:
            if payload is None:
                await self.redis.zrem(keys.LC_SENDS, job_id)
                continue
            await self.send(json.loads(payload))
        return len(claimed)

    async def send(self, job: dict[str, Any]) -> None:
        job_id, name = str(job["id"]), str(job["campaign"])
        campaign = self.by_name.get(name)
        status = keys.lc_send(job_id)
        if campaign is None:  # another process's campaign: leave it to that one
            log.warning("segment send for a campaign this lifecycle does not have",
                        extra={"job": job_id, "campaign": name})
            return
        try:
            f = Filter.parse(job["filter"])
        except InvalidArgument as e:
            await self._finish(job_id, "refused", str(e))
            return
        await self.redis.hset(status, "status", "sending")
        lines = queued = 0
        async for chunk in members(self.redis, f):
            lines += len(chunk)
            now_ms = self.clock()
            chunk_queued = 0
            for p in await self.campaigns.read(chunk):
                if p.state == SubscriberState.TERMINATED:
                    continue
                values = {"campaign": name, "money": money(p.money), "state": p.state.name,
                          "segment": str(job.get("words", "")), "days": str(campaign.days)}
                chunk_queued += await self.notifier.notify(campaign, job_id, p.subscriber_id,
                                                     p.account_id, values, now_ms,
                                                     offer=campaign.offer)
            queued += chunk_queued
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(status, "lines", lines)
            pipe.hincrby(status, "queued", chunk_queued)  # a restarted send adds the rest
            pipe.zadd(keys.LC_SENDS, {job_id: now_ms + self.lease_ms}, xx=True)  # still ours
            await pipe.execute()
        await self._finish(job_id, "done")
        log.info("segment send done", extra={"job": job_id, "campaign": name,
                                             "segment": job.get("words"), "by": job.get("by"),
                                             "lines": lines, "queued": queued})

    async def _finish(self, job_id: str, status: str, error: str = "") -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.lc_send(job_id), mapping={"status": status, "error": error,
                                                 "done_ms": self.clock()})
        pipe.expire(keys.lc_send(job_id), KEPT_S)
        pipe.zrem(keys.LC_SENDS, job_id)
        pipe.hdel(keys.LC_SEND_JOBS, job_id)
        await pipe.execute()
