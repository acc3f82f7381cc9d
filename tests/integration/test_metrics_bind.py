"""The /metrics endpoint is exposed no wider than gRPC (it binds to the listen host unless
configured), and a metrics port that cannot be bound stops the start with a clear error."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tollgate.engine.errors import ConfigError
from tollgate.engine.storage.redis_server import free_port
from tollgate.server import Tollgate


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at this port (the kernel's table)."""
    found = set()
    with open("/proc/net/tcp", encoding="ascii") as fh:
        for line in fh.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


async def test_metrics_bind_to_the_grpc_listen_host(config):
    port = free_port()
    async with Tollgate(config.replace(listen="127.0.0.1:0", metrics_port=port)):
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"tollgate_requests" in body
        assert listening_addresses(port) == {"127.0.0.1"}


async def test_a_configured_metrics_host_wins(config):
    port = free_port()
    async with Tollgate(config.replace(listen="127.0.0.1:0", metrics_port=port,
                                       metrics_host="0.0.0.0")):
        assert listening_addresses(port) == {"0.0.0.0"}


async def test_a_metrics_port_in_use_stops_the_start(config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = Tollgate(config.replace(listen="127.0.0.1:0", metrics_port=port))
        with pytest.raises(ConfigError) as e:
            await app.start()
        await app.stop()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in str(e.value)
    assert app.server is None  # no gRPC server was started
