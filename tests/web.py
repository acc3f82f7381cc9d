"""What the web tests share: a Tollgate with its web pages and a tokens file, gRPC clients that
send a token, and an HTTP client logged in as an operator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from tests.helpers import EUR, Gateway
from tollgate.engine.ops.config import Config
from tollgate.engine.ops.security import create_token
from tollgate.server import Tollgate


class Bearer(grpc.aio.UnaryUnaryClientInterceptor):
    """Sends `authorization: Bearer <token>` with every unary call."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")]
        return await continuation(grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready), request)


@dataclass
class Site:
    app: Tollgate
    gw: Gateway
    url: str
    operator_token: str
    gateway_token: str

    async def login(self, token: str | None = None) -> httpx.AsyncClient:
        """A client holding an operator session (the cookie sent by hand: it is Secure, and
        httpx keeps Secure cookies for https only)."""
        client = httpx.AsyncClient(base_url=self.url, timeout=10)
        r = await client.post("/login", json={"token": token or self.operator_token})
        assert r.status_code == 200, r.text
        client.headers["cookie"] = r.headers["set-cookie"].split(";")[0]
        client.headers["x-csrf-token"] = (await client.get("/api/me")).json()["csrf"]
        return client


def web_config(config: Config, tmp_path: Path, census_s: float = 0.5
               ) -> tuple[Config, str, str]:
    tokens = tmp_path / "tokens"
    operator = create_token(tokens, "care-desk", ["operator"])
    gateway = create_token(tokens, "pgw", ["gateway", "operator"])
    return (config.replace(http_listen="127.0.0.1:0", tokens_file=str(tokens),
                           dashboard_interval_s=0.2, http_census_s=census_s),
            operator, gateway)


@asynccontextmanager
async def site(config: Config, tmp_path: Path, census_s: float = 0.5) -> AsyncIterator[Site]:
    """census_s: the web server's census interval (0: none in the server)."""
    config, operator, gateway = web_config(config, tmp_path, census_s)
    app = await Tollgate(config).start()
    assert app.web is not None
    channel = grpc.aio.insecure_channel(app.address, interceptors=[Bearer(gateway)])
    try:
        yield Site(app, Gateway(channel), app.web.url, operator, gateway)
    finally:
        await channel.close()
        await app.stop()


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Polls an async check until it returns something true; fails after timeout_s."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        got = await check()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: last {got!r}")
        await asyncio.sleep(0.1)


__all__ = ["EUR", "Bearer", "Site", "eventually", "site", "web_config"]
