"""The engine's steps around the kernel, without gRPC: batch assembly (protobuf -> arrays ->
protobuf) and the Redis apply step against a real redis-server (pytest-benchmark)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

import pytest

from tollgate.bench.ceiling import apply_ceiling, capture_writes, rebase
from tollgate.bench.traffic import Traffic
from tollgate.engine.charging import wire
from tollgate.engine.charging.batch import assemble
from tollgate.engine.charging.decode import decode_all
from tollgate.engine.charging.engine import Engine
from tollgate.engine.charging.outcome import Timing, build_outcome
from tollgate.engine.charging.request import Answers, Request
from tollgate.engine.domain import RequestType
from tollgate.engine.ops import population
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.store import Store
from tollgate.v1 import charging_pb2 as cpb

BATCH = 1000
QUICK_BATCH = 100
"""Batch size when benchmarks are disabled (./dev.sh bench-quick): the code runs, quickly."""
SUBSCRIBERS = 5000


@pytest.fixture
def size(benchmark) -> int:
    return QUICK_BATCH if benchmark.disabled else BATCH


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def populated(config: Config, loop: asyncio.AbstractEventLoop) -> Config:
    async def provision() -> None:
        store = Store(config.redis_url, config.partitions)
        await store.init()
        await population.provision(store, SUBSCRIBERS)
        await store.close()
    loop.run_until_complete(provision())
    return config


def queued(request: Request, call: Answers, slot: int, account_id: str = "") -> Request:
    """A decoded request told where its answer goes, as the engine queues it."""
    request.call, request.slot, request.account_id = call, slot, account_id
    return request


def test_batch_assembly(benchmark, populated: Config, loop: asyncio.AbstractEventLoop,
                        size: int) -> None:
    """decode -> assemble -> kernel -> outcome -> answers serialized, for one batch of the
    traffic mix (sessions mid-life, accounts and sessions in the engine's cache)."""
    store = Store(populated.redis_url, populated.partitions)
    engine = Engine(store, populated.replace(max_batch=size))
    traffic = Traffic(SUBSCRIBERS, sessions=size)

    data = b""

    async def warm() -> list[Request]:
        nonlocal data
        engine.start()
        for _ in range(4):  # INITIALs first, then a mix of UPDATE and TERMINATION
            requests = traffic.batch(size)
            for r, a in zip(requests, await engine.charge(requests), strict=True):
                traffic.answered(r, a)
        await engine.close()
        now = engine.clock()
        data = cpb.ChargeBatchRequest(requests=traffic.batch(size)).SerializeToString()
        call = Answers([0] * size, loop.create_future())
        batch = [queued(cast(Request, r), call, slot) for slot, r in
                 enumerate(decode_all(data, wire.parse_batch(data), populated, now))]
        batch = await engine._resolve_subscribers(batch)
        batch, _ = await engine._load(batch, set())
        batch, rows, _, _ = engine._check_sessions(batch, set())
        assert rows == list(range(len(batch)))  # every request of the traffic is charged
        await engine._load_plans({engine.accounts[p.account_id].plan_id for p in batch})
        return batch

    prepared = loop.run_until_complete(warm())
    loop.run_until_complete(store.close())
    kinds = {p.type for p in prepared}
    assert {RequestType.UPDATE, RequestType.TERMINATION} <= kinds and len(prepared) == size
    plans = {pid: entry[0] for pid, entry in engine._plans.items()}
    timing = Timing(engine.clock(), populated.answers_kept, populated.default_validity_s,
                    populated.stale_grace_s)

    def steps() -> bytes:
        requests = decode_all(data, wire.parse_batch(data), populated, timing.now_ms)
        batch = [queued(cast(Request, requests[p.slot]), p.call, p.slot, p.account_id)
                 for p in prepared]
        _, rows, view, _ = engine._check_sessions(batch, set())  # the traffic's all pass
        kb = assemble(batch, engine.accounts, plans, engine.rates, timing.now_ms, view, rows)
        res = kb.run(engine.rates)
        outcome = build_outcome(batch, kb, res, engine.rates, timing)
        return wire.field_1(outcome.answers)

    benchmark.extra_info["requests"] = size
    blob = benchmark(steps)
    answers = cpb.ChargeBatchAnswer.FromString(blob).answers
    assert len(answers) == size and all(a.result == cpb.SUCCESS for a in answers)


def test_apply(benchmark, populated: Config, loop: asyncio.AbstractEventLoop,
               size: int) -> None:
    """Store.apply of four engine-made 1000-request batches (Lua calls of up to
    GROUPS_PER_CALL account writes on a single server, one per partition on a cluster)."""
    traffic = Traffic(SUBSCRIBERS, sessions=size)
    recorded = loop.run_until_complete(
        capture_writes(populated, traffic, size, warmup=3, batches=4))
    store = Store(populated.redis_url, populated.partitions)
    retention = populated.answer_retention_s * 1000
    refused: list[int] = []

    def replay() -> None:
        async def all_batches() -> None:
            for writes in recorded:
                out = await store.apply_writes(writes, retention)
                refused.append(len(out))
        loop.run_until_complete(all_batches())

    def setup() -> None:
        loop.run_until_complete(rebase(store, recorded))

    benchmark.extra_info["requests"] = sum(len(w.sessions) for w in recorded)
    benchmark.pedantic(replay, setup=setup, rounds=5)
    loop.run_until_complete(store.close())
    assert len(recorded) == 4 and refused and sum(refused) == 0
    ceiling = loop.run_until_complete(apply_ceiling(populated, recorded, 0.2))
    assert ceiling.refused == 0 and ceiling.requests_per_s > 0
