"""Bulk provisioning of a load-test population: accounts with one subscriber each, pipelined."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tollgate.engine.domain import SubscriberState
from tollgate.engine.ops.demo import DEMO_PLAN
from tollgate.engine.provisioning import plan_buckets
from tollgate.engine.rating.plans import plan_from_proto
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import Store, account_fields, hash_blob, subscriber_fields
from tollgate.v1 import provisioning_pb2 as ppb

EUR = 1_000_000
BENCH_PLAN = DEMO_PLAN
"""Data (rating group 10, 1 GB bundle, then money) and voice (rating group 100)."""
DEFAULT_PREFIX = "bench-"
DEFAULT_MONEY = 1000 * EUR
CHUNK = 2000
"""Accounts per pipeline: large enough to hide round trips, small enough for steady progress."""


def subscriber_id(prefix: str, n: int) -> str:
    return f"{prefix}sub-{n}"


def account_id(prefix: str, n: int) -> str:
    return f"{prefix}acct-{n}"


@dataclass(frozen=True, slots=True)
class Provisioned:
    subscribers: int
    created: int  # accounts and subscribers created now (the rest existed already)
    seconds: float

    @property
    def rate(self) -> float:
        return self.subscribers / max(self.seconds, 1e-9)


async def provision(store: Store, count: int, *, prefix: str = DEFAULT_PREFIX,
                    plan: ppb.Plan = BENCH_PLAN, money: int = DEFAULT_MONEY,
                    progress: Callable[[int], None] | None = None) -> Provisioned:
    """Stores the plan (when it has no version yet) and accounts `<prefix>acct-N` with
    subscribers `<prefix>sub-N` (ACTIVE), N in [0, count). Existing ones are left as they
    are, so running it again is cheap and a grown population only adds the new ones."""
    started = time.perf_counter()
    if await store.plan_version(plan.plan_id) == 0:
        await store.put_plan(plan_from_proto(plan))
    stored = await store.get_plan(plan.plan_id)
    now = int(time.time() * 1000)
    blob = hash_blob(account_fields(stored, money, 0, plan_buckets(stored, now), 0, now))
    created = 0
    for start in range(0, count, CHUNK):
        hashes = []
        for n in range(start, min(count, start + CHUNK)):
            acct = account_id(prefix, n)
            hashes.append((keys.account(store.partition(acct), acct), blob))
            hashes.append((keys.subscriber(subscriber_id(prefix, n)),
                           hash_blob(subscriber_fields(acct, SubscriberState.ACTIVE))))
        created += await store.create_many(hashes)
        if progress is not None:
            progress(len(hashes) // 2)
    return Provisioned(count, created, time.perf_counter() - started)
