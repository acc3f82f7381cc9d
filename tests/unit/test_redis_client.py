"""Commands packed by hiredis are byte for byte what redis-py's own asyncio packer sends, and
every kind of client URL gets the hiredis packing."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from tollgate.engine.storage.redis_client import connect_async, hiredis_packing

COMMANDS = [
    ("SET", "key", "value"),
    ("EVALSHA", "a" * 40, 2, "tg:{p1}:acct:x", "tg:{p1}:s:y", 60_000, "1,2", b"\x93\x01\xa1x"),
    ("HSET", "h", "f", 1.5, "g", -7, "é", b""),
    ("CONFIG GET", "maxmemory"),  # a command name of two words is sent as two arguments
    ("PING",),
    (b"SET", bytearray(b"key"), memoryview(b"value")),  # the serializer's path
]


@pytest.mark.parametrize("command", COMMANDS)
def test_hiredis_packs_the_same_bytes(command: tuple[object, ...]) -> None:
    theirs = b"".join(Connection().pack_command(*command))
    ours = b"".join(hiredis_packing(Connection)().pack_command(*command))
    assert ours == theirs


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6379/0",
                                 "unix:///tmp/redis.sock"])
def test_every_server_client_packs_with_hiredis(url: str) -> None:
    cls = connect_async(url).connection_pool.connection_class
    assert cls.__name__.startswith("Hiredis") and cls.pack_command is not Connection.pack_command


def test_a_cluster_client_makes_its_nodes_pack_with_hiredis() -> None:
    cluster = connect_async("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    cls = cluster.nodes_manager.connection_kwargs["connection_class"]  # type: ignore[attr-defined]
    assert cls is hiredis_packing(Connection)
