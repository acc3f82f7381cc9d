"""Shared fixtures: a real redis-server started on a free port, and a running Tollgate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import redis

from engine.config import Config
from engine.redis_server import RedisServer
from server import Tollgate
from tests.helpers import Gateway


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def config(redis_url: str) -> Config:
    return Config(listen="127.0.0.1:0", redis_url=redis_url, partitions=8,
                  batch_window_ms=0.5, log_format="text", metrics_port=0)


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
