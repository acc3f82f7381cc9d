"""Runs the web pages on the server's event loop (uvicorn), with the census of the base."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from tollgate.engine.errors import ConfigError
from tollgate.engine.ops.config import Config
from tollgate.engine.ops.security import TokenFile
from tollgate.engine.provisioning import Provisioner
from tollgate.engine.storage.store import Store
from tollgate.engine.web.aggregates import run_census
from tollgate.engine.web.app import make_app
from tollgate.engine.web.auth import Operators, Signer, load_secret
from tollgate.engine.web.care import Care

log = logging.getLogger("tollgate.web")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The Tollgate process handles SIGTERM/SIGINT itself (a clean stop of everything).
        yield


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot serve the web pages on {address}: {e}") from e
    sock.listen(128)
    sock.setblocking(False)
    return sock


class WebServer:
    """The pages of engine/web/app.py at config.http_listen (TLS with tls_cert / tls_key)."""

    def __init__(self, config: Config, store: Store, provisioner: Provisioner) -> None:
        self.config = config
        self.store = store
        self.provisioner = provisioner
        self.port = 0
        self._server: _Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        host = self.config.http_listen.rpartition(":")[0] or "127.0.0.1"
        if host in ("0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> WebServer:
        c = self.config
        sock = _bind(c.http_listen)
        self.port = sock.getsockname()[1]
        signer = Signer(await load_secret(self.store.redis))
        tokens = TokenFile(c.tokens_file) if c.tokens_file else None
        app = make_app(Care(self.store, self.provisioner), Operators(signer, tokens), signer,
                       self.store.redis, c.self_link_days)
        self._server = _Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=1, ssl_certfile=c.tls_cert or None,
            ssl_keyfile=c.tls_key or None))
        self._tasks = [asyncio.create_task(self._server.serve(sockets=[sock]))]
        if c.http_census_s > 0:
            self._tasks.append(asyncio.create_task(run_census(self.store,
                                                              c.http_census_s,
                                                              self._stopping)))
        while not self._server.started:
            if self._tasks[0].done():
                await self._tasks[0]  # its error
                raise ConfigError(f"the web server on {c.http_listen} did not start")
            await asyncio.sleep(0.01)
        log.info("web pages serving", extra={"url": self.url})
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._stopping.set()  # the census ends even if its cancellation is swallowed
        for task in reversed(self._tasks):
            if task is not self._tasks[0]:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
