"""Starts and stops a local redis-server child (the embedded default and the tests' Redis)."""

from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import redis

from tollgate.engine.errors import ConfigError


def die_with_parent(command: list[str]) -> list[str]:
    """The command, made to get SIGTERM when its parent dies, so a killed Tollgate leaves no
    orphan holding its port or AOF (Linux PR_SET_PDEATHSIG, set by util-linux's `setpriv`
    just before it execs the command). Not a preexec_fn: running Python between fork and
    exec in a process with threads (gRPC's) can crash the child. The signal follows the
    thread that started the child. Without setpriv the command is unchanged."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", *command] if setpriv else command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server on 127.0.0.1 with AOF in `data_dir`; `url` once started."""

    def __init__(self, data_dir: str | Path, port: int = 0, appendfsync: str = "everysec",
                 appendonly: bool = True, password: str = "", die_with_parent: bool = True,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args  # e.g. the cluster options of a cluster node
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        self.password = password  # requirepass (tests of authenticated Redis)
        # Tests that restart Redis from a worker thread turn this off: the parent-death
        # signal would come when that thread ends.
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError("redis-server not found: install it (apt-get install redis-server) "
                              "or set REDIS_URL")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.data_dir / "tollgate.lock", "w")  # noqa: SIM115  held while running
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise ConfigError(
                f"data folder {self.data_dir} is in use by another Tollgate") from None
        command = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync, "--protected-mode", "yes",
            "--daemonize", "no", "--loglevel", "warning", *self.extra_args,
            *(["--requirepass", self.password] if self.password else [])]
        self.process = subprocess.Popen(
            die_with_parent(command) if self.die_with_parent else command,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2,
                             password=self.password or None)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    self.stop()
                    raise ConfigError(
                        f"redis-server did not start on port {self.port}: {err}") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        """SIGTERM (Redis flushes its AOF), SIGKILL if it hangs."""
        self._end(graceful=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        self._end(graceful=False)

    def _end(self, graceful: bool) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            if graceful:
                process.terminate()
            else:
                process.kill()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
