"""`tollgate dev cluster`: starts a local Redis Cluster, prints its URL, and removes it on
SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import redis

from tollgate.engine.storage.redis_client import connect

ROOT = Path(__file__).resolve().parents[2]


def test_dev_cluster_serves_a_cluster_until_sigterm(tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollgate", "dev", "cluster", "--nodes", "2", "--dir",
         str(tmp_path / "c")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("redis+cluster://127.0.0.1:"), url
        client = connect(url)
        for n in range(50):  # keys on both masters
            client.set(f"k{n}", n)
        assert [int(client.get(f"k{n}")) for n in range(50)] == list(range(50))
        assert len(client.get_primaries()) == 2
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    port = int(url.rsplit(":", 1)[1])
    try:
        redis.Redis(port=port, socket_connect_timeout=0.5).ping()
        raise AssertionError("a node is still running")
    except redis.ConnectionError:
        pass
