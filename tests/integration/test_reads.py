"""How a batch learns which cached accounts moved on (versions.lua): versions compared inside
Redis in one call per group of partitions, positions kept across calls, never a WAIT."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.engine.storage import keys
from tollgate.engine.storage import store as store_module
from tollgate.engine.storage.store import Store
from tollgate.engine.storage.writes import AccountWrite

ACCOUNTS = 6


async def _versions(store: Store) -> dict[str, int]:
    return {f"acct-{n}": (await store.get_account(f"acct-{n}"))[0].version
            for n in range(ACCOUNTS)}


async def _charge(store: Store, account_id: str, version: int) -> None:
    p = store.partition(account_id)
    money = (await store.get_account(account_id))[0].money
    await store.apply({p: [AccountWrite(keys.account(p, account_id), version,
                                        {"money": money - 100})]}, 60_000)


async def test_only_accounts_whose_version_moved_or_that_are_gone_come_back(tollgate, gateway):
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    held = await _versions(store)
    await _charge(store, "acct-2", held["acct-2"])
    await _charge(store, "acct-5", held["acct-5"])
    assert await store.moved_accounts({**held, "acct-gone": 1}) == {"acct-2", "acct-5",
                                                                    "acct-gone"}
    assert await store.moved_accounts(await _versions(store)) == set()


async def test_checks_split_at_groups_per_call_keep_their_positions(
        tollgate, gateway, monkeypatch: pytest.MonkeyPatch):
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    monkeypatch.setattr(store_module, "GROUPS_PER_CALL", 2)
    held = await _versions(store)
    moved = {"acct-0", "acct-3", "acct-4"}
    for a in moved:
        await _charge(store, a, held[a])
    calls: list[int] = []
    run = store.charging.run

    async def counted(script: Any, todo: Any, wait: bool = True) -> Any:
        calls.append(len(todo))
        assert not wait  # a read waits for no replica
        return await run(script, todo, wait)
    monkeypatch.setattr(store.charging, "run", counted)
    await store.redis.script_flush()  # the script is loaded again on the way
    assert await store.moved_accounts(held) == moved
    # One round of calls; a partition is never split over two (a cluster: one call each).
    partitions = len({store.partition(a) for a in held})
    assert len(calls) == 1 and (calls[0] == partitions if store.nodes.cluster is not None
                                else 3 <= calls[0] <= partitions)


async def test_a_check_sends_no_wait(tollgate, gateway):
    """With replicas asked for and none there, a WAIT would answer 0 and fail the read."""
    await gateway.setup(accounts=1)
    store = Store(tollgate.config.redis_url, tollgate.config.partitions, wait_replicas=1,
                  wait_timeout_ms=20)
    try:
        await store.init()
        assert await store.moved_accounts({"acct-0": 0}) == {"acct-0"}
    finally:
        await store.close()


async def test_the_charging_path_has_a_client_without_socket_timeouts(tollgate):
    """Its calls run under the batch's deadline (by_deadline); redis-py's per-operation
    timeout would cost a task per send and read. The other callers keep theirs."""
    store = tollgate.store

    def socket_timeout(client: Any) -> Any:
        kwargs = (client.nodes_manager.connection_kwargs if store.charging.cluster is not None
                  else client.connection_pool.connection_kwargs)
        return kwargs.get("socket_timeout")
    assert socket_timeout(store.charging_redis) is None
    assert socket_timeout(store.redis) == tollgate.config.redis_timeout_s
    assert store.charging.client is store.charging_redis and store.nodes.client is store.redis
