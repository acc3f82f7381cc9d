"""Redis clients by URL: one server (redis://, rediss://, unix://) or a Redis Cluster
(redis+cluster://host:port[,host:port...], any nodes of it; rediss+cluster:// with TLS)."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

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
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(
            seed, startup_nodes=[AsyncClusterNode(h, p) for h, p in others], **kwargs))
    return aioredis.Redis.from_url(url, **kwargs)


def cluster_of(client: aioredis.Redis) -> AsyncRedisCluster | None:
    """The client as a cluster client, or None for a single server."""
    return client if isinstance(client, AsyncRedisCluster) else None
