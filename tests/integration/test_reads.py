"""How a batch reads its accounts (read.lua): accounts and sessions in one call per group of
partitions, an account the reader holds at the current version skipped inside Redis, one
that moved on read in full in the same call, order kept across calls, never a WAIT."""

from __future__ import annotations

from typing import Any

import pytest

from engine import keys
from engine import store as store_module
from engine.store import AccountWrite, SessionWrite, Store

ACCOUNTS = 6


async def _version(store: Store, account_id: str) -> int:
    return (await store.get_account(account_id))[0].version


async def test_a_read_skips_what_the_reader_holds_and_reads_the_rest_in_full(tollgate, gateway):
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    p = store.partition("acct-0")
    held = await _version(store, "acct-0")
    opened = SessionWrite("s-1", ended=False, fields=["rn", 0, "st", "open", "a:0", b"ok"],
                          deleted=[], expiry_ms=1, created=True)
    await store.apply({p: [AccountWrite(keys.account(p, "acct-0"), held, {"money": -100},
                                        sessions=[opened])]}, 60_000)
    current = await _version(store, "acct-1")
    got = await store.read_accounts([
        ("acct-0", ["s-1", "s-none"], None),
        ("acct-1", ["s-none"], current),  # the reader's copy is current
        ("acct-0", [], held),  # the reader's copy is older than the apply above
        ("acct-gone", ["s-none"], None),
        ("acct-2", [], 12345),
    ])
    first, skipped, moved, gone, other = got
    assert first is not None and first[0] is not None
    assert first[0].version == held + 1 and first[0].money == 10_000_000 - 100
    session, missing = first[1]
    assert session is not None and session.answers == {0: b"ok"} and not session.ended
    assert missing is None
    assert skipped is None
    assert moved is not None and moved[0] is not None and moved[0].version == held + 1
    assert moved[1] == []
    assert gone == (None, [None])
    assert other is not None and other[0] is not None and other[0].account_id == "acct-2"


async def test_reads_split_at_groups_per_call_keep_their_order(
        tollgate, gateway, monkeypatch: pytest.MonkeyPatch):
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    monkeypatch.setattr(store_module, "GROUPS_PER_CALL", 2)
    calls: list[int] = []
    run = store.nodes.run

    async def counted(script: Any, todo: Any, wait: bool = True) -> Any:
        calls.append(len(todo))
        assert not wait  # a read waits for no replica
        return await run(script, todo, wait)
    monkeypatch.setattr(store.nodes, "run", counted)
    await store.redis.script_flush()  # the script is loaded again on the way
    wanted = [(f"acct-{n}", [], None) for n in reversed(range(ACCOUNTS))]
    got = await store.read_accounts(wanted)
    assert [g[0].account_id for g in got if g is not None and g[0] is not None] == [
        f"acct-{n}" for n in reversed(range(ACCOUNTS))]
    # One round of calls; a partition is never split over two (a cluster: one call each).
    partitions = len({store.partition(a) for a, _, _ in wanted})
    assert len(calls) == 1 and (calls[0] == partitions if store.nodes.cluster is not None
                                else 2 <= calls[0] <= partitions)


async def test_a_read_sends_no_wait(tollgate, gateway):
    """With replicas asked for and none there, a WAIT would answer 0 and fail the read."""
    await gateway.setup(accounts=1)
    store = Store(tollgate.config.redis_url, tollgate.config.partitions, wait_replicas=1,
                  wait_timeout_ms=20)
    try:
        await store.init()
        [got] = await store.read_accounts([("acct-0", [], None)])
        assert got is not None and got[0] is not None and got[0].account_id == "acct-0"
    finally:
        await store.close()
