"""`tollgate serve --workers N`: N server processes on one port (SO_REUSEPORT, each with its
own batcher), started and restarted by a supervisor process."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from tollgate.engine.errors import ConfigError
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_server import RedisServer, die_with_parent, free_port

log = logging.getLogger("tollgate.supervisor")

READY = "tollgate serving on"
FAST_DEATH_S = 2.0
"""A worker that dies sooner than this after its start is restarted after a growing pause
(up to MAX_PAUSE_S), so a worker that cannot start does not spin."""
MAX_PAUSE_S = 10.0


def worker_config(config: Config, index: int) -> Config:
    """Worker 0 runs the sweeper and the stream trimmer (both are safe to run more than once,
    but once is enough); each worker serves its metrics on metrics_port + index."""
    changes: dict[str, object] = {"workers": 1}
    if index > 0:
        changes.update(sweep_interval_s=0.0, stream_trim_interval_s=0.0)
    if config.metrics_port:
        changes["metrics_port"] = config.metrics_port + index
    return config.replace(**changes)


def config_env(config: Config) -> dict[str, str]:
    """The whole configuration as TOLLGATE_* variables (what a worker reads at start)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOLLGATE_") and k != "REDIS_URL"}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        env[f"TOLLGATE_{f.name.upper()}"] = (",".join(value) if isinstance(value, tuple)
                                             else str(value))
    return env


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    pause_s: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    """Starts the workers (and the embedded redis-server when no redis_url is set), waits
    until all serve, restarts any that dies, and on SIGTERM/SIGINT stops them all."""

    def __init__(self, config: Config) -> None:
        if config.workers < 1:
            raise ConfigError("workers must be at least 1")
        self.config = config
        self.redis: RedisServer | None = None
        self.workers = [Worker(k) for k in range(config.workers)]
        self._stop = threading.Event()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        config = self.config
        try:
            if not config.redis_url:
                self.redis = RedisServer(config.data_dir, appendfsync=config.appendfsync).start()
                config = config.replace(redis_url=self.redis.url)
            host, port = config.listen.rsplit(":", 1)
            if int(port) == 0:  # the workers must share one port
                config = config.replace(listen=f"{host}:{free_port()}")
            if config.diameter_listen.endswith(":0"):
                config = config.replace(
                    diameter_listen=f"{config.diameter_listen[:-2]}:{free_port()}")
            self.config = config
            for w in self.workers:
                self._start(w)
            for w in self.workers:
                while not w.ready.wait(0.1):
                    if self._stop.is_set() or (w.proc and w.proc.poll() is not None):
                        raise ConfigError(f"worker {w.index} did not start (see its log)")
            print(f"tollgate workers: {len(self.workers)} (pids "
                  f"{' '.join(str(w.proc.pid) for w in self.workers if w.proc)})", flush=True)
            print(f"{READY} {config.listen}", flush=True)
            while not self._stop.wait(0.2):
                for w in self.workers:
                    self._check(w)
            return 0
        except ConfigError as e:
            log.error("%s", e)
            return 2
        finally:
            self._stop_all()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _start(self, w: Worker) -> None:
        env = config_env(worker_config(self.config, w.index))
        w.ready.clear()
        w.proc = subprocess.Popen(
            die_with_parent([sys.executable, "-m", "tollgate", "serve", "--worker-index",
                             str(w.index)]),
            env=env, stdout=subprocess.PIPE, text=True)
        w.started = time.monotonic()
        threading.Thread(target=self._read, args=(w, w.proc), daemon=True).start()

    @staticmethod
    def _read(w: Worker, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY):
                w.ready.set()

    def _check(self, w: Worker) -> None:
        if w.proc is None or w.proc.poll() is None:
            return
        code = w.proc.returncode
        lived = time.monotonic() - w.started
        w.pause_s = min(MAX_PAUSE_S, max(0.5, 2 * w.pause_s)) if lived < FAST_DEATH_S else 0.0
        log.warning("worker died; restarting", extra={"worker": w.index, "exit": code,
                                                      "pid": w.proc.pid, "pause_s": w.pause_s})
        if self._stop.wait(w.pause_s):
            return
        self._start(w)
        assert w.proc is not None
        print(f"tollgate worker {w.index} restarted: pid {w.proc.pid}", flush=True)

    def _stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + self.config.shutdown_grace_s + 5
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
