"""Redis clients by URL: one server (redis://, rediss://, unix://) or a Redis Cluster
(redis+cluster://host:port, any node of it; rediss+cluster:// with TLS)."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def _seed(url: str) -> str:
    """The cluster URL as a plain one for the seed node (redis-py's parser); a cluster has
    one database, so a /db path is dropped."""
    parts = urlsplit(url)
    return urlunsplit((CLUSTER_SCHEMES[parts.scheme], parts.netloc, "", parts.query, ""))


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A blocking client (tools and tests). A RedisCluster client offers the same commands
    for keys of one slot; it is typed as redis.Redis for the callers' sake."""
    if is_cluster(url):
        return cast(redis.Redis, redis.RedisCluster.from_url(_seed(url), **kwargs))
    return redis.Redis.from_url(url, **kwargs)


def connect_async(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client; see connect()."""
    if is_cluster(url):
        # A cluster client retries on its own after a connection error to a node (and after
        # MOVED/ASK); the per-server retry options do not apply to it.
        for name in ("retry", "retry_on_error", "health_check_interval"):
            kwargs.pop(name, None)
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(_seed(url), **kwargs))
    return aioredis.Redis.from_url(url, **kwargs)


def cluster_of(client: aioredis.Redis) -> AsyncRedisCluster | None:
    """The client as a cluster client, or None for a single server."""
    return client if isinstance(client, AsyncRedisCluster) else None
