"""Redis clients by URL: one server (redis://, rediss://, unix://) or a Redis Cluster
(redis+cluster://host:port[,host:port...], any nodes of it; rediss+cluster:// with TLS)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def _seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """The cluster URL as a plain one for the first node (redis-py's parser), and the other
    nodes named (any one reachable at start is enough). A cluster has one database, so a
    /db path is dropped."""
    parts = urlsplit(url)
    first, *more = parts.netloc.split(",")
    others = []
    for node in more:
        host, _, port = node.rpartition(":")
        others.append((host, int(port)))
    return urlunsplit((CLUSTER_SCHEMES[parts.scheme], first, "", parts.query, "")), others


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A blocking client (tools and tests). A RedisCluster client offers the same commands
    for keys of one slot; it is typed as redis.Redis for the callers' sake."""
    if is_cluster(url):
        seed, others = _seeds(url)
        return cast(redis.Redis, redis.RedisCluster.from_url(
            seed, startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in others],
            **kwargs))
    return redis.Redis.from_url(url, **kwargs)


def connect_async(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client; see connect()."""
    if is_cluster(url):
        # A cluster client retries on its own after a connection error to a node (and after
        # MOVED/ASK); the per-server retry options do not apply to it.
        for name in ("retry", "retry_on_error", "health_check_interval"):
            kwargs.pop(name, None)
        seed, others = _seeds(url)
        cluster = AsyncRedisCluster.from_url(
            seed, startup_nodes=[AsyncClusterNode(h, p) for h, p in others], **kwargs)
        # The nodes it discovers are made with these (the seeds keep redis-py's packing).
        options = cluster.nodes_manager.connection_kwargs
        options["connection_class"] = hiredis_packing(options["connection_class"])
        return cast(aioredis.Redis, cluster)
    return packed_by_hiredis(aioredis.Redis.from_url(url, **kwargs))


class Prepacked(bytes):
    """A whole command already written in RESP (kernels/apply_calls.py), given after its name:
    `execute_command("EVALSHA", Prepacked(...))` sends these bytes as they are."""


_SERIALIZER = HiredisRespSerializer()
_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """The connection class with commands packed by hiredis in C. redis-py's asyncio
    connections pack them in Python (its blocking ones use hiredis): about 1.8 µs per
    argument against 0.25, and an apply call has thousands of arguments."""
    if cls not in _PACKED:
        class Packed(cls):  # type: ignore[valid-type, misc]
            def pack_command(self, *args: Any) -> list[bytes]:
                if len(args) == 2 and type(args[1]) is Prepacked:
                    return [args[1]]
                first = args[0]
                # A command name of several words ("CONFIG GET") is split by the serializer.
                if ((type(first) is str and " " not in first)
                        or (type(first) is bytes and b" " not in first)):
                    try:  # directly: the serializer's own pass over the arguments doubles it
                        return [hiredis.pack_command(args)]
                    except TypeError:  # bytearray, memoryview: the serializer converts them
                        pass
                return _SERIALIZER.pack(*args)
        Packed.__name__ = Packed.__qualname__ = f"Hiredis{cls.__name__}"
        _PACKED[cls] = Packed
    return _PACKED[cls]


def packed_by_hiredis(client: aioredis.Redis) -> aioredis.Redis:
    """The client, its connections packing commands with hiredis (see hiredis_packing)."""
    pool = client.connection_pool
    pool.connection_class = hiredis_packing(pool.connection_class)
    return client


def packed(commands: Iterable[tuple[Any, ...]]) -> bytes:
    """Commands written in RESP end to end, for exchange()."""
    return b"".join(map(hiredis.pack_command, commands))


async def exchange(client: aioredis.Redis, data: bytes, replies: int,
                   sent: Callable[[], None] | None = None) -> list[Any]:
    """The replies to commands written already (`data`, `replies` of them), sent at once on
    one of a single server's pooled connections and read in order; an error reply comes as
    its exception, as from a pipeline's execute(raise_on_error=False), and the raw replies
    (HGETALL's a map, or under RESP2 a flat list). What a pipeline does, with about 35 µs
    less of the client's CPU per round trip (its command stack and callbacks, and the
    pool's events on every execute): a small batch's fixed cost. A lost connection is
    retried as the client's retry policy says, as a pipeline's is (the charging path sends
    reads, and applies whose version check refuses a second run); a failed or cancelled
    exchange drops its connection, so none is used again with replies unread. `sent` is
    called once the commands are written (a retry's second write calls it again). Its
    connections are the pool's, kept for exchanges (_lease)."""
    pool = client.connection_pool
    conn = await _lease(pool)
    buffered = _buffered(conn)

    async def run() -> list[Any]:
        await conn.send_packed_command(data)
        if sent is not None:
            sent()
        out: list[Any] = []
        while len(out) < replies:
            try:
                out.append(await conn.read_response())
            except ResponseError as e:
                out.append(e)
            try:
                buffered(out, replies)
            except BaseException:
                # As read_response does: a connection that read a broken reply is not reused.
                await conn.disconnect(nowait=True)
                raise
        return out
    try:
        out = await conn.retry.call_with_retry(run, lambda _: conn.disconnect())
    except BaseException:
        # Dropped, with whatever it left unread (redis-py's send and read drop it on their
        # errors; this is for any other, as `sent` raising), and given back to the pool.
        await conn.disconnect(nowait=True)
        await pool.release(conn)
        raise
    _idle(pool).append(conn)
    return out


_IDLE: weakref.WeakKeyDictionary[aioredis.ConnectionPool, list[AbstractConnection]] = (
    weakref.WeakKeyDictionary())
"""Per pool, its connections kept for exchange() that are idle now."""


def _idle(pool: aioredis.ConnectionPool) -> list[AbstractConnection]:
    return _IDLE.setdefault(pool, [])


async def _lease(pool: aioredis.ConnectionPool) -> AbstractConnection:
    """A connection for exchange(): one an exchange read every reply on, kept for the next,
    or else one checked out of the pool as usual (it stays checked out until it fails, or
    the client closes, which disconnects it). The pool's checkout and return cost about
    12 µs of CPU and a turn of the event loop per round trip (its lock, its observability
    records, and a read attempt with a timeout of 0 to see that nothing is left unread): a
    small batch's apply waited behind everything else ready in that turn."""
    idle = _idle(pool)
    return idle.pop() if idle else await pool.get_connection()


def _buffered(conn: AbstractConnection) -> Callable[[list[Any], int], None]:
    """Appends to `out`, up to `replies` in all, the replies the connection's hiredis reader
    has whole already, without a turn through the connection's read path for each (about
    5 µs a reply: a cold subscriber's or account's read, the apply's calls); an error reply
    comes as its exception, as read_response raises it. The connection reads what has not
    come yet (its waits, errors and disconnects). The reader is looked up each time (a
    reconnection makes a new one). Under RESP3 (pushes may come between replies), without a
    hiredis reader (another parser, another redis-py), nothing: every reply goes through
    read_response."""
    if str(getattr(conn, "protocol", 2) or 2) != "2" or _NOT_ENOUGH_DATA is None:
        return _none_buffered

    def take(out: list[Any], replies: int) -> None:
        reader = getattr(getattr(conn, "_parser", None), "_reader", None)
        if not isinstance(reader, hiredis.Reader):
            return
        while len(out) < replies:
            reply = reader.gets()
            if reply is _NOT_ENOUGH_DATA:  # the next one is not whole yet
                return
            # As the parser does: a connection error in the reply (or first in it) is raised.
            first = reply[0] if isinstance(reply, list) and reply else reply
            if isinstance(first, RedisConnectionError):
                raise first
            out.append(reply)
    return take


def _none_buffered(out: list[Any], replies: int) -> None:
    return None


try:  # what redis-py's hiredis reader returns for "not whole yet" (its parser's own marker)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # another redis-py: every reply through read_response
    _NOT_ENOUGH_DATA = None


def cluster_of(client: aioredis.Redis) -> AsyncRedisCluster | None:
    """The client as a cluster client, or None for a single server."""
    return client if isinstance(client, AsyncRedisCluster) else None
