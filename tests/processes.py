"""`tollgate serve` as a child process (tests that run several servers or kill one)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tollgate.engine.storage.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
READY = "tollgate serving on"


class ServerProcess:
    """One `tollgate serve` child on a free port; logs (stderr) go to a file. `env` adds
    settings (TOLLGATE_*); start() again after kill() serves on the same address."""

    def __init__(self, redis_url: str, log_path: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.redis_url = redis_url
        self.args = args  # more `tollgate serve` options
        self.address = f"127.0.0.1:{free_port()}"
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        # No metrics unless a test asks: servers side by side would all want the default
        # port, and one that cannot bind it does not start.
        env["TOLLGATE_METRICS_PORT"] = "0"
        env.update(self.env)
        env["REDIS_URL"] = self.redis_url
        self._lines = queue.Queue()
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tollgate", "serve", "--listen", self.address,
                 "--redis-url", self.redis_url, "--log-format", "text", *self.args],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        threading.Thread(target=self._read, args=(self.proc, self._lines), daemon=True).start()
        return self

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def next_line(self, timeout_s: float = 60.0) -> str | None:
        """The next line the server printed (None: it ended); queue.Empty on timeout."""
        return self._lines.get(timeout=timeout_s)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        try:
            while (line := self.next_line(timeout_s)) is not None:
                self.seen.append(line)
                if line.startswith(READY):
                    assert line.split()[-1] == self.address, line
                    return
        except queue.Empty:
            pass
        self.kill()
        raise AssertionError(f"server {self.address} did not say {READY!r}; its log:\n"
                             + self.log_path.read_text()[-4000:])

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit code (a kill after the timeout gives a negative code)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
