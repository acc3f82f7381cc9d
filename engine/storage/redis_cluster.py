"""Starts a local Redis Cluster from redis-server binaries on free ports (tests and
`tollgate dev cluster`), and moves slots or fails over masters on it (fault tests)."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tollgate.engine.errors import ConfigError
from tollgate.engine.storage.redis_server import RedisServer, free_port

SLOTS = 16384
HOST = "127.0.0.1"


def node_port() -> int:
    """A free port below the ephemeral range: a node that is killed and started again must
    get its port back, which an outgoing connection may hold if it came from that range."""
    for _ in range(1000):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    return free_port()


def _wait(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.ResponseError):
            pass
        if time.monotonic() > deadline:
            raise ConfigError(f"local Redis Cluster: timed out waiting for {what}")
        time.sleep(0.05)


class LocalCluster:
    """`masters` masters, each with `replicas` replicas, on 127.0.0.1; the slots are split
    evenly over the masters. `url` (redis+cluster://) once started."""

    def __init__(self, base_dir: str | Path, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 1000, appendonly: bool = False) -> None:
        if masters < 1 or replicas < 0:
            raise ConfigError("a cluster needs at least one master and no negative replicas")
        self.base_dir = Path(base_dir)
        self.n_masters = masters
        self.n_replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.nodes: dict[int, RedisServer] = {}  # port -> server
        self.ids: dict[int, str] = {}  # port -> cluster node id
        self.bus: dict[int, int] = {}  # port -> cluster bus port
        self._clients: dict[int, redis.Redis] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.masters())

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node (cluster commands, fault injection)."""
        if port not in self._clients:
            self._clients[port] = redis.Redis(HOST, port, socket_timeout=10,
                                              decode_responses=True)
        return self._clients[port]

    def _cmd(self, port: int, *args: Any) -> Any:
        return self.client(port).execute_command(*args)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        total = self.n_masters * (1 + self.n_replicas)
        for n in range(total):
            bus = port = node_port()
            while port == bus:  # both are free until the node binds them: not the same one
                port = node_port()
            server = RedisServer(
                self.base_dir / f"node-{n}", port=port, appendonly=self.appendonly,
                # The bus port is given: the default (port + 10000) may not exist.
                extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-port", str(bus),
                            "--cluster-node-timeout", str(self.node_timeout_ms),
                            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                            "--appendfilename", "appendonly.aof"))
            server.start()
            self.nodes[server.port] = server
            self.bus[server.port] = bus
        ports = list(self.nodes)
        for epoch, port in enumerate(ports, 1):
            self.ids[port] = self._cmd(port, "CLUSTER", "MYID")
            self._cmd(port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for port in ports[1:]:
            self._cmd(ports[0], "CLUSTER", "MEET", HOST, port, self.bus[port])
        masters, replicas = ports[:self.n_masters], ports[self.n_masters:]
        for k, port in enumerate(masters):
            lo, hi = k * SLOTS // self.n_masters, (k + 1) * SLOTS // self.n_masters - 1
            self._cmd(port, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        _wait("the nodes to meet", lambda: all(
            self._known(p) == total for p in ports))
        for k, port in enumerate(replicas):
            self._cmd(port, "CLUSTER", "REPLICATE", self.ids[masters[k % self.n_masters]])
        self.wait_ok()

    def _known(self, port: int) -> int:
        lines = self._cmd(port, "CLUSTER", "NODES").strip().splitlines()
        return sum(1 for line in lines if "handshake" not in line and "noaddr" not in line)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says the cluster is ok, agrees on who owns each slot, and
        every replica is in sync with its master."""
        def ok() -> bool:
            views = set()
            for port in self.live():
                info = self._cmd(port, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
                views.add(tuple(sorted((s[0], s[1], *(n[1] for n in s[2:])) for s in
                                       self._cmd(port, "CLUSTER", "SLOTS"))))
                role = self.client(port).info("replication")
                if role["role"] == "slave" and role.get("master_link_status") != "up":
                    return False
            return len(views) == 1
        _wait("the cluster to be ok", ok, timeout_s)

    def stop(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        for server in self.nodes.values():
            server.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- topology -----------------------------------------------------------------------

    def live(self) -> list[int]:
        return [p for p, s in self.nodes.items() if s.process is not None]

    def _nodes(self) -> list[list[str]]:
        port = self.live()[0]
        return [line.split() for line in self._cmd(port, "CLUSTER", "NODES").splitlines()]

    def masters(self) -> list[int]:
        """Ports of the live masters that own slots, in port order."""
        live = set(self.live())
        return sorted(int(f[1].split(":")[1].split("@")[0]) for f in self._nodes()
                      if "master" in f[2] and "fail" not in f[2] and len(f) > 8
                      and int(f[1].split(":")[1].split("@")[0]) in live)

    def replicas_of(self, master_port: int) -> list[int]:
        mid = self.ids[master_port]
        return sorted(int(f[1].split(":")[1].split("@")[0]) for f in self._nodes()
                      if f[3] == mid and "fail" not in f[2])

    def owner(self, slot: int) -> int:
        for lo, hi, master, *_ in self._cmd(self.live()[0], "CLUSTER", "SLOTS"):
            if lo <= slot <= hi:
                return int(master[1])
        raise ConfigError(f"slot {slot} is not served")

    def flush(self) -> None:
        """Empties every master (replicas follow)."""
        for port in self.masters():
            self._cmd(port, "FLUSHALL")

    # --- faults -------------------------------------------------------------------------

    def move_slot(self, slot: int, to_port: int, batch: int = 10, pause_s: float = 0.0) -> int:
        """Moves one slot with its keys to another master while clients keep running: the
        IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE dance (what redis-cli --cluster reshard
        does). `pause_s` between MIGRATE batches widens the window where the slot is split
        between the two nodes. Returns the number of keys moved."""
        src = self.owner(slot)
        if src == to_port:
            return 0
        self._cmd(to_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[src])
        self._cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[to_port])
        moved = 0
        while names := self._cmd(src, "CLUSTER", "GETKEYSINSLOT", slot, batch):
            self._cmd(src, "MIGRATE", HOST, to_port, "", 0, 10_000, "KEYS", *names)
            moved += len(names)
            if pause_s:
                time.sleep(pause_s)
        for port in (to_port, src, *(m for m in self.masters() if m not in (src, to_port))):
            self._cmd(port, "CLUSTER", "SETSLOT", slot, "NODE", self.ids[to_port])
        self.wait_ok()
        return moved

    def failover(self, replica_port: int) -> None:
        """A manual failover: the replica waits until it has everything of its master, then
        takes over (no write is lost)."""
        self._cmd(replica_port, "CLUSTER", "FAILOVER")
        self.wait_promoted(replica_port)

    def wait_promoted(self, replica_port: int, timeout_s: float = 30.0) -> None:
        """Until the replica is a master and the cluster is ok again (after a failover)."""
        _wait("the replica to take over", lambda: self.client(replica_port).info(
            "replication")["role"] == "master", timeout_s)
        self.wait_ok(timeout_s)

    def restart(self, port: int) -> None:
        """Starts a stopped node again on its port and data: it rejoins the cluster (a
        master that was failed over comes back as a replica of its successor)."""
        for attempt in range(3):  # the port may linger for a moment after a SIGKILL
            try:
                self.nodes[port].start()
                break
            except ConfigError:
                if attempt == 2:
                    raise
                time.sleep(0.5)
        self.wait_ok()

    def kill(self, port: int) -> None:
        """SIGKILL a node, as a crash would; its replica takes over after the node timeout
        (wait_promoted)."""
        self.nodes[port].kill()
        client = self._clients.pop(port, None)
        if client is not None:
            client.close()
