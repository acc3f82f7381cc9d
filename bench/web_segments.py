"""What the segments and churn-risk page costs (issue 22, page 2), over a provisioned base whose
lines each have a churn-signals hash as the lifecycle keeps it (seeded random histories):
the census that scores every line and writes the index, against a census that only counts
states (the one before the index) in the same run; Redis memory of the signals and of the
index; segment page loads; walking a segment as a send does. `python -m
bench.web_segments [--population N]`."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from tollgate.engine.domain import SubscriberState
from tollgate.engine.lifecycle import signals
from tollgate.engine.ops.population import DEFAULT_PREFIX, provision, subscriber_id
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.engine.storage.store import Store
from tollgate.engine.web import segments
from tollgate.engine.web.aggregates import census
from tollgate.engine.web.segments import Filter

PARTITIONS = 64
CHUNK = 2000
STATES = [(SubscriberState.ACTIVE, 0.85), (SubscriberState.GRACE, 0.08),
          (SubscriberState.SUSPENDED, 0.05), (SubscriberState.PREACTIVE, 0.02)]


def history(rnd: random.Random, now: int) -> dict[str, int]:
    """A line's signals hash: weeks of use (some lines fading), a last top-up, a few refused
    grants and offers, sometimes an NPS answer."""
    day, w = signals.DAY_MS, signals.week(now)
    base = rnd.randint(50, 5000)
    fade = rnd.choice((1.0, 1.0, 1.0, 0.6, 0.3, 0.05))
    h = {signals.FIRST: now - rnd.randint(10, 400) * day,
         signals.LAST: now - int(rnd.expovariate(1 / 6) * day),
         signals.TOPUP: now - rnd.randint(0, 60) * day}
    for n in range(signals.WEEKS_KEPT):
        h[f"{signals.USAGE}{w - n}"] = int(base * (fade if n < 2 else 1) * rnd.uniform(0.7, 1.3))
    if rnd.random() < 0.2:
        h[f"{signals.REFUSED}{w}"] = rnd.randint(1, 5)
    if rnd.random() < 0.3:
        h[f"{signals.OFFERED}{w - 1}"] = rnd.randint(1, 3)
    if rnd.random() < 0.05:
        h[signals.NPS], h[signals.NPS_MS] = rnd.randint(0, 10), now - rnd.randint(1, 90) * day
    return h


def state_of(rnd: random.Random) -> SubscriberState:
    x = rnd.random()
    for state, share in STATES:
        if x < share:
            return state
        x -= share
    return SubscriberState.ACTIVE


async def write_signals(store: Store, population: int, now: int) -> None:
    """Every line's signals hash, and a mix of states (GRACE lines with their entry time)."""
    rnd = random.Random(22)
    for start in range(0, population, CHUNK):
        pipe = store.redis.pipeline(transaction=False)
        for n in range(start, min(population, start + CHUNK)):
            sid = subscriber_id(DEFAULT_PREFIX, n)
            h = history(rnd, now)
            state = state_of(rnd)
            if state != SubscriberState.ACTIVE:
                pipe.hset(keys.subscriber(sid), "state", int(state))
            if state == SubscriberState.GRACE:
                h[signals.GRACE] = now - rnd.randint(0, 14) * signals.DAY_MS
            pipe.hset(keys.lc_activity(sid), mapping=cast(Any, h))
        await pipe.execute()


async def states_only(store: Store) -> int:
    """The census as it was before the index: an incremental SCAN and each line's state."""
    counted = 0
    batch: list[bytes] = []

    async def count(ids: list[bytes]) -> int:
        pipe = store.redis.pipeline(transaction=False)
        for k in ids:
            pipe.hget(k, "state")
        return sum(1 for s in await pipe.execute() if s is not None)

    async for k in store.redis.scan_iter(match=keys.subscriber("*"), count=1000):
        batch.append(k)
        if len(batch) >= 1000:
            counted += await count(batch)
            batch = []
    return counted + (await count(batch) if batch else 0)


class Lines(list[str]):
    """The report's lines, each also printed as soon as it is known (a long run on a busy
    machine shows its progress, and what it measured if it is stopped)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


async def used_memory(store: Store) -> int:
    return int((await store.redis.info("memory"))["used_memory"])


async def run(population: int, rounds: int, out: Path | None) -> str:
    base = Path(tempfile.mkdtemp(prefix="tollgate-segments-bench-"))
    redis = RedisServer(base / "redis", appendonly=False).start()
    lines = Lines()
    try:
        store = Store(redis.url, PARTITIONS)
        await store.init()
        now = int(time.time() * 1000)
        t = time.perf_counter()
        await provision(store, population)
        lines.append(f"population: {population:,} lines provisioned in "
                     f"{time.perf_counter() - t:.0f} s")
        before = await used_memory(store)
        t = time.perf_counter()
        await write_signals(store, population, now)
        with_signals = await used_memory(store)
        lines.append(f"signals hashes (as the lifecycle keeps them, about 10 fields a line) "
                     f"written in {time.perf_counter() - t:.0f} s: Redis memory "
                     f"+{(with_signals - before) / 2**20:,.0f} MiB "
                     f"({(with_signals - before) / population:.0f} bytes a line)")
        took: dict[str, list[float]] = {"states": [], "scored": []}
        cpu: dict[str, list[float]] = {"states": [], "scored": []}
        for _ in range(rounds):  # alternating, so both see the same noise
            t, c0 = time.perf_counter(), time.process_time()
            await states_only(store)
            took["states"].append(time.perf_counter() - t)
            cpu["states"].append(time.process_time() - c0)
            t, c0 = time.perf_counter(), time.process_time()
            counts = await census(store, now)
            took["scored"].append(time.perf_counter() - t)
            cpu["scored"].append(time.process_time() - c0)
        index = await used_memory(store) - with_signals
        s, c = statistics.median(cpu["states"]), statistics.median(cpu["scored"])
        lines.append(f"census counting states only (the one before the index): wall "
                     f"{', '.join(f'{x:.1f}' for x in took['states'])} s, CPU of this "
                     f"process {', '.join(f'{x:.1f}' for x in cpu['states'])} s; census "
                     f"scoring every line and writing the index: wall "
                     f"{', '.join(f'{x:.1f}' for x in took['scored'])} s, CPU "
                     f"{', '.join(f'{x:.1f}' for x in cpu['scored'])} s "
                     f"({c / population * 1e6:.0f} µs of CPU a line; CPU ratio to states "
                     f"only {c / s:.2f}) over {sum(counts.values()):,} lines")
        lines.append(f"index in Redis after the census (the old generation dropped): "
                     f"{index / 2**20:,.0f} MiB ({index / population:.0f} bytes a line); "
                     f"while a census writes the next one, both are there")
        gen, summary = await segments.current(store.redis)
        lines.append(f"index: {len(segments.known_cells((gen, summary)))} cells; base by band "
                     f"{segments.counts(summary, Filter())['base']}")
        for words, f in (("every line", Filter()), ("GRACE", Filter(states=("GRACE",))),
                         ("high risk", Filter(bands=("high",))),
                         ("ACTIVE, dormant, high risk", Filter(
                             states=("ACTIVE",), bands=("high",), activities=("dormant",))),
                         ("every line, page at offset 5000", Filter())):
            offset = 5000 if "offset" in words else 0
            loads = []
            for _ in range(10):
                t = time.perf_counter()
                page = await segments.page(store, f, offset, 50, now)
                loads.append((time.perf_counter() - t) * 1000)
            lines.append(f"segment page ({words}: {page['count']:,} lines), 50 lines with "
                         f"their reasons: median {statistics.median(loads):.1f} ms, "
                         f"max {max(loads):.1f} ms over 10 loads")
        t = time.perf_counter()
        walked = 0
        async for chunk in segments.members(store.redis, Filter(bands=("high",))):
            walked += len(chunk)
        took_walk = time.perf_counter() - t
        lines.append(f"walking the high-risk segment as a send does (ids only; each message "
                     f"then costs what the lifecycle's Notifier costs): {walked:,} lines in "
                     f"{took_walk:.1f} s")
        await store.close()
    finally:
        redis.stop()
    text = "\n".join(lines)
    if out is not None:
        out.write_text(text + "\n")
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--population", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    asyncio.run(run(args.population, args.rounds, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
