"""Campaigns on lifecycle signals, for the subscribers of a segment: inactivity (no usage for N
days: win-back), service anniversary (NPS survey), low balance within N days of the renewal
date (top-up reminder). Each subscriber gets a campaign's message once per signal period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from tollgate.engine.domain import SubscriberState
from tollgate.engine.lifecycle.notify import Notifier
from tollgate.engine.lifecycle.outbox import DAY_MS
from tollgate.engine.lifecycle.rules import money
from tollgate.engine.lifecycle.settings import SEGMENT, Campaign, Segment
from tollgate.engine.storage import keys

YEAR_MS = 365 * DAY_MS
SCAN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Profile:
    """What segments and signals look at, for one subscriber."""

    subscriber_id: str
    account_id: str
    state: SubscriberState
    plan_id: str
    money: int
    spent: int
    created_ms: int
    cycle_end_ms: int
    last_usage_ms: int  # 0 = never seen using the service


def in_segment(p: Profile, s: Segment) -> bool:
    return ((not s.plans or p.plan_id in s.plans) and (not s.states or p.state in s.states)
            and (s.min_spent_micros is None or p.spent >= s.min_spent_micros)
            and (s.max_spent_micros is None or p.spent < s.max_spent_micros))


def signal_period(c: Campaign, p: Profile, now_ms: int) -> str | None:
    """The period this signal fires for now ('' never): the de-duplication key part."""
    if c.signal == "inactivity":
        if p.last_usage_ms and now_ms - p.last_usage_ms >= c.days * DAY_MS:
            return f"idle-since-{p.last_usage_ms}"
    elif c.signal == "anniversary":
        years = (now_ms - p.created_ms) // YEAR_MS if p.created_ms else 0
        if years >= 1:
            return f"year-{years}"
    elif (c.signal == "renewal_low_balance" and p.money < c.below_micros
          and 0 <= p.cycle_end_ms - now_ms <= c.days * DAY_MS):
        return f"cycle-{p.cycle_end_ms}"
    return None


class Campaigns:
    def __init__(self, notifier: Notifier, campaigns: tuple[Campaign, ...]) -> None:
        self.notifier = notifier
        self.campaigns = campaigns
        self.store = notifier.store

    async def profiles(self) -> AsyncIterator[Profile]:
        """Every subscriber, read in pipelined chunks (the segment query runs over these)."""
        redis = self.store.redis
        chunk: list[str] = []
        async for key in redis.scan_iter(match=keys.subscriber("*"), count=SCAN_CHUNK):
            chunk.append(key.decode()[len(keys.subscriber("")):])
            if len(chunk) >= SCAN_CHUNK:
                for p in await self.read(chunk):
                    yield p
                chunk = []
        for p in await self.read(chunk):
            yield p

    async def read(self, subscriber_ids: list[str]) -> list[Profile]:
        if not subscriber_ids:
            return []
        found = await self.store.read_subscribers(subscriber_ids)
        pipe = self.store.redis.pipeline(transaction=False)
        live = [(sid, f) for sid, f in zip(subscriber_ids, found, strict=True) if f]
        for sid, (account_id, _) in live:
            pipe.hmget(keys.account(self.store.partition(account_id), account_id),
                       "plan", "money", "spent", "created", "ce")
            pipe.hget(keys.lc_activity(sid), "last")
        replies = await pipe.execute()
        out = []
        for n, (sid, (account_id, state)) in enumerate(live):
            h = cast(list[bytes | None], replies[2 * n])
            if h[0] is None:
                continue
            last = replies[2 * n + 1]
            out.append(Profile(sid, account_id, state, h[0].decode(), int(h[1] or 0),
                               int(h[2] or 0), int(h[3] or 0), int(h[4] or 0),
                               int(last or 0)))
        return out

    async def run(self, now_ms: int) -> int:
        """One pass over every subscriber; returns how many campaign messages were queued."""
        scheduled = [c for c in self.campaigns if c.signal != SEGMENT]
        if not scheduled:
            return 0
        queued = 0
        async for p in self.profiles():
            if p.state == SubscriberState.TERMINATED:
                continue
            for c in scheduled:
                if not in_segment(p, c.segment):
                    continue
                period = signal_period(c, p, now_ms)
                if period is None:
                    continue
                values = {"campaign": c.name, "days": str(c.days), "money": money(p.money),
                          "state": p.state.name}
                queued += await self.notifier.notify(c, period, p.subscriber_id, p.account_id,
                                                     values, now_ms, offer=c.offer)
        return queued
