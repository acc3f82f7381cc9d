"""How the apply step reaches Redis: on a single server several partitions share a Lua call
(a refusal still names its own partition and write), calls are split at GROUPS_PER_CALL, and
a Redis that lost its scripts (restarted, failed over) gets them again without a write
applied twice."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import ResponseError

from tollgate.engine.storage import keys, record_block
from tollgate.engine.storage import store as store_module
from tollgate.engine.storage.session_blob import pack_session
from tollgate.engine.storage.state import SessionState
from tollgate.engine.storage.store import Store, lua_source
from tollgate.engine.storage.writes import AccountWrite, SessionWrite, of_objects, writer_token

ACCOUNTS = 6


async def _writes(store: Store, stale: str = "") -> dict[int, list[AccountWrite]]:
    """-100 micro-units on each account; `stale` gets a version that has moved on."""
    writes: dict[int, list[AccountWrite]] = {}
    for n in range(ACCOUNTS):
        account_id = f"acct-{n}"
        p = store.partition(account_id)
        acct, _ = await store.get_account(account_id)
        version = acct.version - 1 if account_id == stale else acct.version
        writes.setdefault(p, []).append(
            AccountWrite(keys.account(p, account_id), version, {"money": acct.money - 100}))
    return writes


def _value(session_id: str, rn: int, answer: bytes) -> bytes:
    return pack_session(SessionState(session_id, "sub", rn, False, False, 0, {rn: answer}))


async def _money(store: Store) -> list[int]:
    return [(await store.get_account(f"acct-{n}"))[0].money for n in range(ACCOUNTS)]


def _count_calls(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of Lua calls of each apply (observed on the way to the real Redis)."""
    counts: list[int] = []
    run = store.charging.run

    async def counted(script: Any, calls: Any, **kwargs: Any) -> Any:
        counts.append(len(calls))
        return await run(script, calls, **kwargs)
    monkeypatch.setattr(store.charging, "run", counted)
    return counts


async def test_partitions_share_a_call_and_a_refusal_names_its_own_write(
        tollgate, gateway, monkeypatch: pytest.MonkeyPatch):
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    before = await _money(store)
    writes = await _writes(store, stale="acct-3")
    assert len(writes) > 1  # the accounts are spread over several partitions
    p3 = store.partition("acct-3")
    i3 = [w.key for w in writes[p3]].index(keys.account(p3, "acct-3"))
    counts = _count_calls(store, monkeypatch)
    refused = await store.apply(writes, 60_000)
    assert refused == {p: ({i3} if p == p3 else set()) for p in writes}
    assert await _money(store) == [m - (0 if n == 3 else 100) for n, m in enumerate(before)]
    # A cluster needs a call per partition (each is its own slot).
    assert counts == [1 if store.nodes.cluster is None else len(writes)]


async def test_a_refused_write_with_sessions_records_and_events_is_skipped_whole(
        tollgate, gateway, monkeypatch: pytest.MonkeyPatch):
    """A refused write's arguments are stepped over exactly: the writes after it in the same
    call apply as they were meant to (a miscount would shift every one of them)."""
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    monkeypatch.setattr(store_module, "GROUPS_PER_CALL", 10_000)  # all in one call
    # (acct-0's partition comes first in the call: its refused write precedes the others)
    before = await _money(store)
    writes = await _writes(store)
    p0 = store.partition("acct-0")
    busy = SessionWrite("s-refused", ended=False, value=_value("s-refused", 1, b"answer"),
                        expiry_ms=1, created=False)
    stale, _ = await store.get_account("acct-0")
    first = writes[p0][0]
    writes[p0][0] = AccountWrite(first.key, stale.version - 1,
                                 {"money": stale.money - 100, "capn": 80},
                                 [busy, busy], [b"record-1", b"record-2"], [b"event"])
    done = SessionWrite("s-new", ended=False, value=_value("s-new", 0, b"ok"), expiry_ms=123,
                        created=True)
    other = next(p for p in writes if p != p0)
    last = writes[other][-1]
    writes[other][-1] = AccountWrite(last.key, last.expected_version,
                                     {**last.sets, "capn": 50}, [done], [b"record-3"])
    refused = await store.apply(writes, 60_000)
    assert refused == {p: ({0} if p == p0 else set()) for p in writes}
    after = await _money(store)
    assert after[0] == before[0]
    assert [m - a for m, a in zip(before[1:], after[1:], strict=True)] == [100] * (ACCOUNTS - 1)
    # The write after the refused one set exactly its own fields, session and record.
    r = store.redis
    assert await r.hget(last.key, "capn") == b"50"
    assert await r.get(keys.session(other, "s-new")) == _value("s-new", 0, b"ok")
    assert await r.zscore(keys.open_sessions(other), keys.session(other, "s-new")) == 123
    assert await r.sismember(last.key + keys.SESSIONS_SUFFIX, "s-new")
    [(sid, fields)] = await r.xrange(keys.usage_stream(other))
    assert [data for _, data in record_block.records(sid, fields)] == [b"record-3"]
    assert not await r.exists(keys.session(p0, "s-refused"))
    assert await r.xlen(keys.usage_stream(p0)) == 0


async def test_a_call_holds_at_most_groups_per_call_writes(tollgate, gateway,
                                                           monkeypatch: pytest.MonkeyPatch):
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    monkeypatch.setattr(store_module, "GROUPS_PER_CALL", 2)
    before = await _money(store)
    writes = await _writes(store)
    counts = _count_calls(store, monkeypatch)
    assert await store.apply(writes, 60_000) == {p: set() for p in writes}
    assert await _money(store) == [m - 100 for m in before]
    # A partition's writes are never split: a call closes before a partition that would
    # take it past the limit.
    assert len(counts) == 1 and 3 <= counts[0] <= len(writes)


async def test_a_redis_without_the_script_gets_it_and_applies_once(tollgate, gateway):
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    before = await _money(store)
    writes = await _writes(store)
    await store.redis.script_flush()  # every primary, on a cluster
    assert await store.apply(writes, 60_000) == {p: set() for p in writes}
    assert await _money(store) == [m - 100 for m in before]
    if store.nodes.cluster is None:
        assert await store.redis.script_exists(store._apply.sha) == [True]


async def test_a_first_call_finds_its_script_loaded_and_is_sent_once(tollgate, gateway, caplog):
    """A start used to log `partitions sent again (NoScriptError)`: its first EVALSHA was
    refused. Scripts are loaded before their first call."""
    await gateway.setup(accounts=ACCOUNTS)
    store = Store(tollgate.config.redis_url, tollgate.config.partitions)  # a fresh process's
    try:
        await store.redis.script_flush()  # every primary, on a cluster
        caplog.set_level(logging.INFO, "tollgate.store")
        before = await _money(store)
        writes = await _writes(store)
        assert await store.apply(writes, 60_000) == {p: set() for p in writes}
        assert await _money(store) == [m - 100 for m in before]
        assert not [r for r in caplog.records if r.getMessage() == "partitions sent again"]
    finally:
        await store.close()


async def test_a_write_outside_the_stores_partitions_is_refused_before_any_call(
        tollgate, gateway, monkeypatch: pytest.MonkeyPatch):
    """The call writer reads each partition's keys from a table of the store's partitions:
    a write naming another partition never reaches it, and nothing of the batch is sent."""
    await gateway.setup(accounts=ACCOUNTS)
    store = tollgate.store
    before = await _money(store)
    writes = await _writes(store)
    outside = store.partitions
    writes[outside] = [AccountWrite(keys.account(outside, "acct-x"), 1, {"money": 5})]
    counts = _count_calls(store, monkeypatch)
    with pytest.raises(ValueError, match=f"partition .*{outside}"):
        await store.apply(writes, 60_000)
    assert counts == []
    assert await _money(store) == before


def _head(n_set: int = 2, flag: bytes = b"1", ended: bytes = b"\0", chained: int = 0
          ) -> bytes:
    """A group's head (apply.lua) for one session and no records or events."""
    return struct.pack("<iiiii", 1, n_set, 0, 0, chained) + struct.pack("<ccq", flag, ended, 123)


@pytest.mark.parametrize("head, next_version, token, message", [
    (_head(flag=b"x"), None, 7, "session s-2 has a malformed flag or end mark"),
    (_head(ended=b"\2"), None, 7, "session s-2 has a malformed flag or end mark"),
    (_head()[:-1], None, 7, "group 2 has a malformed head: 1 sessions, 2 values, 0 records, "
                            "0 events, chained 0 in 29 bytes"),
    (_head(n_set=3), None, 7, "group 2 has a malformed head: 1 sessions, 3 values"),
    (_head(chained=2), None, 7, "group 2 has a malformed head: .* chained 2"),
    # Chained, its token missing: its arguments are read one on, and the last comes short.
    (_head(chained=1), None, 7, "apply: session"),  # "... has no value", cut at a newline
    (b"short", None, 7, "group 2 has no head or versions"),
    (_head(), "", 7, "group 2 has no head or versions"),  # its account's `ver` would be ''
    (_head(), None, "x1", "the writer token is not a number: x1"),
])
async def test_a_malformed_head_fails_the_call_before_any_write(
        tollgate, gateway, head: bytes, next_version: str | None, token: int | str,
        message: str) -> None:
    """The apply reads every group's head before its first write: a malformed one fails the
    whole call with what is wrong with it, and the well-formed group before it has written
    nothing (Redis keeps a script's writes made before an error)."""
    await gateway.setup(accounts=1)
    store = tollgate.store
    p = store.partition("acct-0")
    acct, _ = await store.get_account("acct-0")
    call_keys = [keys.usage_stream(p), keys.events_stream(p), keys.open_sessions(p)]
    args: list[bytes | str | int] = [60_000, "2", token]
    make: list[tuple[str, str, Callable[[], bytes], str | int]] = [
        ("acct-0", "s-1", _head, acct.version + 1),
        ("acct-x", "s-2", lambda: head,
         acct.version + 1 if next_version is None else next_version)]
    for account_id, session_id, group_head, new_version in make:
        key = keys.account(p, account_id)
        call_keys += (key, key + keys.SESSIONS_SUFFIX, keys.session(p, session_id))
        args += (group_head(), acct.version, new_version, "money", acct.money - 100,
                 session_id, _value(session_id, 1, b"ok"))
    with pytest.raises(ResponseError, match=message):
        await store.redis.eval(lua_source("apply"), len(call_keys), *call_keys, *args)
    after, _ = await store.get_account("acct-0")
    assert (after.money, after.version) == (acct.money, acct.version)
    assert not await store.redis.exists(keys.session(p, "s-1"))


async def test_a_chained_write_applies_only_on_the_state_its_batch_left(tollgate, gateway):
    """A write computed on the predicted state of a batch still in flight names that batch's
    token: it applies when the account's version and `w` are what that batch set, and is
    refused when that batch was refused and another writer moved the version to the very
    number the batch would have set (a top-up's HINCRBY): the version alone would pass it,
    and its new balance would erase the top-up."""
    await gateway.setup(accounts=1)
    store = tollgate.store
    p = store.partition("acct-0")
    key = keys.account(p, "acct-0")
    acct, _ = await store.get_account("acct-0")
    v, money = acct.version, acct.money
    first, second, third, fourth = (writer_token() for _ in range(4))
    landed = AccountWrite(key, v, {"money": money - 100})
    assert await store.apply_writes(of_objects({p: [landed]}), 60_000, token=first) == []
    assert await store.redis.hmget(key, "ver", "w") == [str(v + 1).encode(),
                                                        str(first).encode()]
    chained = AccountWrite(key, v + 1, {"money": money - 300}, chained_after=first)
    assert await store.apply_writes(of_objects({p: [chained]}), 60_000, token=second) == []
    # The third batch is refused (a top-up came first); the fourth, computed on the third's
    # predicted state, expects the version the top-up set.
    assert (await store.top_up("t-1", "acct-0", 1_000))[0]
    refused = AccountWrite(key, v + 2, {"money": money - 600})
    assert await store.apply_writes(of_objects({p: [refused]}), 60_000, token=third) == [0]
    on_refused = AccountWrite(key, v + 3, {"money": money - 1000}, chained_after=third)
    assert await store.apply_writes(of_objects({p: [on_refused]}), 60_000,
                                    token=fourth) == [0]
    after, _ = await store.get_account("acct-0")
    assert (after.money, after.version) == (money - 300 + 1_000, v + 3)
    assert await store.redis.hget(key, "w") == str(second).encode()
