"""Segments and churn risk over the whole base. The census scores every line from the signals
the lifecycle keeps (engine/lifecycle/signals.py) and writes an index: a sorted set by score
per cell (state, plan, activity) and the lines per cell and band, a new generation each
time. The segments page reads a page of it; a segment send walks one generation (pinned
while it walks). Nothing reads all subscribers on a page load."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from tollgate.engine.domain import SubscriberState
from tollgate.engine.errors import InvalidArgument
from tollgate.engine.lifecycle import signals
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import Store
from tollgate.engine.web import churn

GEN = "tg:{web}:risk:gen"
"""The generation of the index the pages read (the census that made it, Unix ms)."""
GENS = "tg:{web}:risk:gens"
"""Set of the generations in Redis: the current one, one being written, ones a segment send
still walks (a census that died leaves its own, dropped by the next)."""
PINS = "tg:{web}:risk:pins"
"""Hash: generation -> until when (Unix ms) a segment send walks it: no census drops it."""
PIN_MS = 600_000
"""A walk renews its pin at every chunk; a walker that died lets it go after this long."""
BANDS = {churn.Band.LOW: (0, 24), churn.Band.MEDIUM: (25, 49), churn.Band.HIGH: (50, 100)}
"""Score range of each band (churn.risk's thresholds)."""
PAGE_MAX = 200
OFFSET_MAX = 10_000
"""Deeper pages cost (cells x offset) reads: a narrower segment is the way there."""
SCAN_CHUNK = 500


def cells_key(gen: str) -> str:
    """Set of the index's cells."""
    return f"tg:{{web}}:risk:{gen}:cells"


def cell_key(gen: str, cell: str) -> str:
    """Sorted set: the cell's lines by churn score."""
    return f"tg:{{web}}:risk:{gen}:c:{cell}"


def summary_key(gen: str) -> str:
    """Hash: '<cell>|<band>' -> lines; 'why|<reason kind>|<band>' -> lines; time_ms, lines,
    seconds."""
    return f"tg:{{web}}:risk:{gen}:sum"


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def cell_of(state: str, plan: str, activity: str) -> str:
    return f"{state}|{plan}|{activity}"  # '|' is in no id (plans.check_id)


@dataclass(frozen=True)
class Filter:
    """A segment: every non-empty condition must hold (empty = any)."""

    states: tuple[str, ...] = ()
    plans: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()
    activities: tuple[str, ...] = ()

    @staticmethod
    def parse(data: Mapping[str, Any]) -> Filter:
        """From the page's JSON ({states: [...], ...}) or query (comma-separated)."""
        def values(name: str, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
            raw = data.get(name, ())
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple):
                raise InvalidArgument(f"{name} must be a list")
            out = tuple(sorted({str(v).strip() for v in items if str(v).strip()}))
            bad = [v for v in out if allowed is not None and v not in allowed]
            if bad:
                raise InvalidArgument(f"{name}: {', '.join(bad)} not one of "
                                      f"{', '.join(allowed or ())}")
            return out
        unknown = set(data) - {"states", "plans", "bands", "activities", "offset", "limit"}
        if unknown:
            raise InvalidArgument(f"unknown segment conditions: {', '.join(sorted(unknown))}")
        return Filter(values("states", tuple(SubscriberState.__members__)),
                      values("plans", None), values("bands", tuple(b.value for b in BANDS)),
                      values("activities", tuple(a.value for a in signals.Activity)))

    def cell(self, cell: str) -> bool:
        state, plan, act = cell.split("|")
        return ((not self.states or state in self.states) and
                (not self.plans or plan in self.plans) and
                (not self.activities or act in self.activities))

    def band_list(self) -> list[churn.Band]:
        return [b for b in BANDS if not self.bands or b.value in self.bands]

    def words(self) -> str:
        parts = [f"{name} {'/'.join(v)}" for name, v in (
            ("state", self.states), ("plan", self.plans), ("risk", self.bands),
            ("activity", self.activities)) if v]
        return ", ".join(parts) or "every line"

    def to_json(self) -> dict[str, list[str]]:
        return {"states": list(self.states), "plans": list(self.plans),
                "bands": list(self.bands), "activities": list(self.activities)}


@dataclass(frozen=True)
class Scored:
    subscriber_id: str
    account_id: str
    state: SubscriberState
    plan_id: str
    activity: signals.Activity
    risk: churn.Risk
    last_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"subscriber_id": self.subscriber_id, "account_id": self.account_id,
                "state": self.state.name, "plan": self.plan_id,
                "activity": self.activity.value, "score": self.risk.score,
                "band": self.risk.band.value, "last_ms": self.last_ms,
                "reasons": [{"points": r.points, "text": r.text} for r in self.risk.reasons]}


async def score_lines(store: Store, subscriber_ids: list[str], now_ms: int) -> list[Scored]:
    """Each line's churn risk from its signals: two round trips for the whole list."""
    pipe = store.redis.pipeline(transaction=False)
    for sid in subscriber_ids:
        pipe.hmget(keys.subscriber(sid), "acct", "state")
        pipe.hgetall(keys.lc_activity(sid))
    replies = await pipe.execute()
    found = []
    for n, sid in enumerate(subscriber_ids):
        acct, raw = cast(list[bytes | None], replies[2 * n])
        if acct is None or raw is None or int(raw) not in SubscriberState._value2member_map_:
            continue
        found.append((sid, acct.decode(), SubscriberState(int(raw)),
                      signals.decode(replies[2 * n + 1])))
    accounts = sorted({a for _, a, _, _ in found})
    pipe = store.redis.pipeline(transaction=False)
    for a in accounts:
        pipe.hmget(keys.account(store.partition(a), a), "plan", "created")
    plan_of = {a: cast(list[bytes | None], h) for a, h in zip(accounts, await pipe.execute(),
                                                              strict=True)}
    out = []
    for sid, account_id, state, fields in found:
        plan, created = plan_of[account_id]
        if plan is None:
            continue  # an account removed while we read
        last = fields.get(signals.LAST, 0)
        line = signals.Line(state, int(created or 0))
        out.append(Scored(sid, account_id, state, plan.decode(),
                          signals.activity(last, now_ms),
                          churn.risk(signals.signals(fields, line, now_ms)), last))
    return out


@dataclass
class IndexBuilder:
    """The census's half that writes a new generation of the index, page by page."""

    store: Store
    now_ms: int
    gen: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    async def start(self) -> None:
        self.gen = str(self.now_ms)
        await self.store.redis.sadd(GENS, self.gen)

    async def add(self, subscriber_ids: list[str]) -> list[Scored]:
        scored = await score_lines(self.store, subscriber_ids, self.now_ms)
        by_cell: dict[str, dict[str, int]] = {}
        for s in scored:
            cell = cell_of(s.state.name, s.plan_id, s.activity.value)
            by_cell.setdefault(cell, {})[s.subscriber_id] = s.risk.score
            band = s.risk.band.value
            self.counts[f"{cell}|{band}"] = self.counts.get(f"{cell}|{band}", 0) + 1
            for r in s.risk.reasons:
                key = f"why|{r.kind}|{band}"
                self.counts[key] = self.counts.get(key, 0) + 1
        if by_cell:
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.sadd(cells_key(self.gen), *by_cell)
            for cell, members in by_cell.items():
                pipe.zadd(cell_key(self.gen, cell), cast(Any, members))
            await pipe.execute()
        return scored

    async def finish(self) -> None:
        """Makes the new generation the one the pages read, and drops the old one."""
        redis = self.store.redis
        summary: dict[str, int | float] = {
            **self.counts, "time_ms": self.now_ms,
            "lines": sum(n for k, n in self.counts.items() if not k.startswith("why|")),
            "seconds": round(time.monotonic() - self.started, 3)}
        await redis.hset(summary_key(self.gen), mapping=cast(Any, summary))
        await redis.set(GEN, self.gen)  # before the pins are read: see members()
        pins = {_text(g): int(t) for g, t in cast(dict[bytes, bytes],
                                                  await redis.hgetall(PINS)).items()}
        now_ms = int(time.time() * 1000)
        for g in sorted(_text(x) for x in cast(set[bytes], await redis.smembers(GENS))):
            if g != self.gen and pins.get(g, 0) < now_ms:
                await drop(redis, g)


async def drop(redis: aioredis.Redis, gen: str) -> None:
    """Deletes a generation (UNLINK: Redis frees the memory in the background)."""
    cells = cast(set[bytes], await redis.smembers(cells_key(gen)))
    names = [cell_key(gen, _text(c)) for c in cells]
    for n in range(0, len(names), 500):
        await redis.unlink(*names[n:n + 500])
    await redis.unlink(cells_key(gen), summary_key(gen))
    pipe = redis.pipeline(transaction=False)
    pipe.srem(GENS, gen)
    pipe.hdel(PINS, gen)
    await pipe.execute()


async def current(redis: aioredis.Redis) -> tuple[str, dict[str, int]]:
    """The generation the pages read and its summary ('' and {} before the first census)."""
    gen = await redis.get(GEN)
    if gen is None:
        return "", {}
    h = cast(dict[bytes, bytes], await redis.hgetall(summary_key(_text(gen))))
    return _text(gen), {_text(k): int(float(v)) for k, v in h.items()}


def counts(summary: Mapping[str, int], f: Filter) -> dict[str, Any]:
    """The segment's size by band, the base's, and the reasons of the segment's lines...
    as far as the summary knows them: reasons are counted by band over the whole base."""
    by_band = {b.value: 0 for b in BANDS}
    base = {b.value: 0 for b in BANDS}
    for k, n in summary.items():
        if k.count("|") != 3:
            continue
        cell, band = k.rsplit("|", 1)
        base[band] = base.get(band, 0) + n
        if f.cell(cell) and band in [b.value for b in f.band_list()]:
            by_band[band] += n
    why: dict[str, int] = {}
    for k, n in summary.items():
        if k.startswith("why|"):
            _, kind, band = k.split("|")
            if band in [b.value for b in f.band_list()]:
                why[kind] = why.get(kind, 0) + n
    return {"count": sum(by_band.values()), "by_band": by_band, "base": base,
            "reasons_in_bands": why}


def known_cells(current: tuple[str, Mapping[str, int]]) -> list[str]:
    """Every cell of an index (current()'s answer)."""
    return _cells(current[1], Filter())


def _cells(summary: Mapping[str, int], f: Filter) -> list[str]:
    return sorted({k.rsplit("|", 1)[0] for k in summary
                   if k.count("|") == 3 and f.cell(k.rsplit("|", 1)[0])})


def _ranges(f: Filter) -> list[tuple[int, int]]:
    """The bands' score ranges, merged where they touch (low + medium: 0..49)."""
    out: list[tuple[int, int]] = []
    for b in f.band_list():
        lo, hi = BANDS[b]
        if out and out[-1][1] + 1 == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


async def page(store: Store, f: Filter, offset: int, limit: int, now_ms: int
               ) -> dict[str, Any]:
    """One page of the segment, riskiest first (by the census's score; each line's score
    and reasons are worked out again now, so a line changed since shows as it is)."""
    if not 0 <= offset <= OFFSET_MAX or not 1 <= limit <= PAGE_MAX:
        raise InvalidArgument(f"offset must be 0..{OFFSET_MAX} and limit 1..{PAGE_MAX}")
    redis = store.redis
    gen, summary = await current(redis)
    out: dict[str, Any] = {"census_ms": summary.get("time_ms"), "lines": [],
                           "offset": offset, "limit": limit, "filter": f.to_json(),
                           "words": f.words(), **counts(summary, f)}
    if not gen:
        return out
    pipe = redis.pipeline(transaction=False)
    wanted = [(c, r) for c in _cells(summary, f) for r in _ranges(f)]
    for c, (lo, hi) in wanted:
        pipe.zrevrangebyscore(cell_key(gen, c), hi, lo, start=0, num=offset + limit,
                              withscores=True)
    merged = [(score, member) for rows in await pipe.execute() for member, score in rows]
    merged.sort(reverse=True)  # Redis's own order within a cell: score, then member, down
    chosen = [m.decode() for _, m in merged[offset:offset + limit]]
    indexed = {m.decode(): int(s) for s, m in merged[offset:offset + limit]}
    now = {s.subscriber_id: s for s in await score_lines(store, chosen, now_ms)}
    out["lines"] = [{**now[sid].to_json(), "census_score": indexed[sid]}
                    for sid in chosen if sid in now]
    return out


async def members(redis: aioredis.Redis, f: Filter,
                  clock: Callable[[], float] = time.time) -> AsyncIterator[list[str]]:
    """Every line of the segment in the current index, in chunks (ZSCAN: a line may come
    twice; a segment send is de-duplicated per line anyway). The walk pins the generation
    it started on: a census that replaces it meanwhile keeps it until the walk ends, so a
    long send walks one consistent segment and ends."""
    async def pin(gen: str) -> None:
        await redis.hset(PINS, gen, int(clock() * 1000) + PIN_MS)

    while True:  # pinned, then still current: a census that finishes later sees the pin
        gen, summary = await current(redis)
        if not gen:
            return
        await pin(gen)
        if _text(await redis.get(GEN) or b"") == gen:
            break
        await redis.hdel(PINS, gen)
    ranges = _ranges(f)
    try:
        for cell in _cells(summary, f):
            async for chunk in _scan(redis, cell_key(gen, cell), ranges):
                yield chunk
                await pin(gen)
    finally:
        await redis.hdel(PINS, gen)


async def _scan(redis: aioredis.Redis, key: str, ranges: list[tuple[int, int]]
                ) -> AsyncIterator[list[str]]:
    cursor = 0
    while True:
        cursor, rows = await redis.zscan(key, cursor, count=SCAN_CHUNK)
        chunk = [_text(m) for m, score in cast(list[tuple[bytes, float]], rows)
                 if any(lo <= score <= hi for lo, hi in ranges)]
        if chunk:
            yield chunk
        if cursor == 0:
            return
