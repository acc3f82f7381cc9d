"""redis_client.exchange, the charging path's round trip on a single server: commands written
end to end, replies in order with error replies as values, and a connection that is used
again only with nothing left unread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ResponseError

from tollgate.engine.ops import population
from tollgate.engine.storage.redis_client import _buffered, exchange, packed
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.engine.storage.store import Store


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[Store]:
    s = Store(redis_server.url, 8)
    await s.redis.flushall()
    yield s
    await s.close()


async def test_replies_come_in_order_and_an_error_reply_as_a_value(store: Store) -> None:
    client = store.charging_redis
    await client.hset("h", mapping={"a": "1", "b": "2"})
    await client.set("s", "text")
    replies = await exchange(client, packed([("HGETALL", "h"), ("HGET", "s", "a"),
                                             ("GET", "s"), ("GET", "missing")]), 4)
    # Redis's own reply, not a pipeline's callback's: a map (RESP3, redis-py's default), or
    # under RESP2 (`?protocol=2`) its fields and values in a flat list.
    assert replies[0] in ({b"a": b"1", b"b": b"2"}, [b"a", b"1", b"b", b"2"])
    assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
    assert replies[2:] == [b"text", None]
    # The connection went back to the pool with nothing unread: the next command's reply is
    # its own.
    assert await client.get("s") == b"text"


async def test_a_cancelled_exchange_leaves_no_reply_for_the_next_one(store: Store) -> None:
    client = store.charging_redis
    await client.set("x", "mine")
    waiting = asyncio.create_task(exchange(client, packed([("BLPOP", "queue", "5")]), 1))
    await asyncio.sleep(0.1)
    waiting.cancel()  # as by_deadline abandons a batch's round trip
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await client.rpush("queue", "late")  # what the abandoned BLPOP would have read
    for _ in range(3):  # whichever pooled connection each one gets
        assert await exchange(client, packed([("GET", "x")]), 1) == [b"mine"]


async def test_an_exchange_that_fails_after_its_send_leaves_no_reply_for_the_next_one(
        store: Store) -> None:
    client = store.charging_redis

    def fails() -> None:
        raise RuntimeError("after the send")
    with pytest.raises(RuntimeError):
        await exchange(client, packed([("ECHO", "stale")]), 1, sent=fails)
    for _ in range(3):  # whichever connection each one gets
        assert await exchange(client, packed([("ECHO", "fresh")]), 1) == [b"fresh"]


async def test_a_connection_lost_between_round_trips_is_opened_again(store: Store) -> None:
    client = store.charging_redis
    await client.set("x", "1")
    assert await exchange(client, packed([("GET", "x")]), 1) == [b"1"]
    await store.redis.client_kill_filter(_type="normal", skipme=True)  # the pooled one too
    assert await exchange(client, packed([("INCR", "x"), ("GET", "x")]), 2) == [2, b"2"]


async def test_exchanges_keep_their_connections_without_the_pools_round_trip(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool's get_connection and release cost a round trip ~12 µs and an event-loop turn
    # per round trip: a connection an exchange read whole is kept for the next exchange.
    client = store.charging_redis
    await client.set("x", "1")
    firsts = await asyncio.gather(*[exchange(client, packed([("GET", "x")]), 1)
                                    for _ in range(2)])  # two at once: two connections
    assert firsts == [[b"1"], [b"1"]]

    async def not_used(*_: object) -> None:
        raise AssertionError("the pool's get_connection or release was used")
    monkeypatch.setattr(client.connection_pool, "get_connection", not_used)
    monkeypatch.setattr(client.connection_pool, "release", not_used)
    again = await asyncio.gather(*[exchange(client, packed([("INCR", "x")]), 1)
                                   for _ in range(2)])
    assert sorted(again) == [[2], [3]]
    monkeypatch.undo()
    assert await client.get("x") == b"3"  # redis-py's own commands: the pool as before


async def test_replies_read_already_are_taken_whole_in_order_and_no_further(store: Store
                                                                            ) -> None:
    # The charging client speaks RESP2, so what its parser holds is replies only: exchange
    # takes those that are whole at once (_buffered) and leaves a partial one to the reader.
    client = store.charging_redis
    conn = await client.connection_pool.get_connection()
    try:
        take = _buffered(conn)
        # Bytes as the socket would have brought them: two whole replies, an error, half of
        # a fourth.
        conn._parser._reader.feed(b"+OK\r\n$2\r\nab\r\n-ERR nope\r\n$3\r\nxy")
        out: list[object] = [b"first"]
        take(out, 5)
        assert out[:3] == [b"first", b"OK", b"ab"] and len(out) == 4
        assert isinstance(out[3], ResponseError) and "nope" in str(out[3])
        conn._parser._reader.feed(b"z\r\n:7\r\n")
        take(out, 5)  # the fourth is whole now; the fifth is left: only five were asked for
        assert out[4:] == [b"xyz"]
        assert conn._parser._reader.gets() == 7
    finally:
        await conn.disconnect()
        await client.connection_pool.release(conn)
    # Under RESP3 (the store's other client: pushes may come between replies) nothing is
    # taken this way.
    other = await store.redis.connection_pool.get_connection()
    try:
        assert str(other.protocol) == "3"
        other._parser._reader.feed(b"+OK\r\n")
        kept: list[object] = []
        _buffered(other)(kept, 1)
        assert kept == []
    finally:
        await other.disconnect()
        await store.redis.connection_pool.release(other)


async def test_accounts_read_under_resp2_as_under_resp3(redis_server: RedisServer) -> None:
    resp2 = Store(redis_server.url + "?protocol=2", 8)
    try:
        await resp2.redis.flushall()
        await population.provision(resp2, 2)
        resp3 = Store(redis_server.url, 8)
        try:
            account = population.account_id(population.DEFAULT_PREFIX, 1)
            wanted: list[tuple[str, list[str]]] = [(account, []), ("none", [])]
            raw = await exchange(resp2.charging_redis, packed([("HGETALL", "none")]), 1)
            assert raw == [[]]  # RESP2 indeed: an empty hash is an empty list, not a map
            [(two, _), (missing, _)] = await resp2.read_accounts(wanted)
            [(three, _), _] = await resp3.read_accounts(wanted)
        finally:
            await resp3.close()
    finally:
        await resp2.close()
    assert two is not None and missing is None
    assert two == three and two.money == population.DEFAULT_MONEY
