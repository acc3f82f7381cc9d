"""Shared fixtures: a real Redis started by the tests (one redis-server on a free port, and a
3-master local Redis Cluster), and a running Tollgate.

Every test that uses `redis_url` (directly or through `config`, `tollgate`, `gateway`) runs
once per backend: `[single]` and `[cluster]`. TOLLGATE_TEST_REDIS=single (or cluster) runs
one of them only. Tests open their own clients with engine.storage.redis_client.connect /
connect_async, which understand both kinds of URL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import redis.asyncio as aioredis

from tests.helpers import Gateway
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_client import connect, connect_async
from tollgate.engine.storage.redis_cluster import LocalCluster
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.server import Tollgate

BACKENDS = os.environ.get("TOLLGATE_TEST_REDIS", "single,cluster").split(",")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters, no replicas; shared by every `[cluster]` test (fault tests that kill or
    move nodes start their own)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=BACKENDS)
def redis_url(request: pytest.FixtureRequest) -> str:
    """An empty Redis for this test: the single server or the cluster."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return cluster.url
    server: RedisServer = request.getfixturevalue("redis_server")
    client = connect(server.url)
    client.flushall()
    client.close()
    return server.url


@pytest.fixture
def config(redis_url: str) -> Config:
    return Config(listen="127.0.0.1:0", redis_url=redis_url, partitions=8,
                  batch_window_ms=0.5, log_format="text", metrics_port=0)


@pytest.fixture
async def db(config: Config) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's Redis, to look at what Tollgate stored."""
    client = connect_async(config.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def tollgate(config: Config) -> AsyncIterator[Tollgate]:
    app = await Tollgate(config).start()
    yield app
    await app.stop()


@pytest.fixture
async def gateway(tollgate: Tollgate) -> AsyncIterator[Gateway]:
    channel = grpc.aio.insecure_channel(tollgate.address)
    yield Gateway(channel)
    await channel.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


__all__ = ["asyncio"]
