"""Who may see what on the web pages: operator sessions from the tokens file (a signed,
http-only cookie), CSRF tokens for every action, and subscribers' signed self-service links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from tollgate.engine.ops.security import Role, TokenFile, token_hash

SECRET_KEY = "tg:{web}:secret"
"""The signing key, made once per installation, shared by every server: a link signed by one
opens on any, and revoking all links and sessions is deleting this key."""
SESSION_COOKIE = "tg_session"
SESSION_S = 12 * 3600
OPEN_OPERATOR = "anonymous"
"""The operator's name when the installation has no tokens_file (no authentication, like
its gRPC port)."""


class Purpose(StrEnum):
    """Signed values of one purpose never pass for another (a link is not a session)."""

    SESSION = "session"
    LINK = "link"
    CSRF = "csrf"


async def load_secret(redis: aioredis.Redis) -> bytes:
    await redis.set(SECRET_KEY, secrets.token_hex(32), nx=True)
    value = await redis.get(SECRET_KEY)
    if value is None:  # deleted between the two calls: make it again
        return await load_secret(redis)
    return value.encode() if isinstance(value, str) else bytes(value)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Signer:
    secret: bytes

    def _mac(self, purpose: Purpose, body: str) -> str:
        return _b64(hmac.new(self.secret, f"{purpose}|{body}".encode(),
                             hashlib.sha256).digest())

    def sign(self, purpose: Purpose, payload: dict[str, Any]) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def verify(self, purpose: Purpose, token: str, now_s: float | None = None
               ) -> dict[str, Any] | None:
        """The payload of a token this key signed for this purpose and not expired (its 'x'
        field, Unix s); None for anything else."""
        body, _, mac = token.partition(".")
        if not body or not hmac.compare_digest(mac.encode(), self._mac(purpose, body).encode()):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("x"), int):
            return None
        if payload["x"] <= (time.time() if now_s is None else now_s):
            return None
        return payload

    def csrf(self, bound_to: str) -> str:
        """The CSRF token of a session (or link): only pages of that session can read it."""
        return self._mac(Purpose.CSRF, bound_to)

    def csrf_ok(self, bound_to: str, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self.csrf(bound_to).encode())

    def link(self, subscriber_id: str, days: int, now_s: float | None = None,
             campaign: str = "") -> str:
        """A self-service link; one sent by a campaign names it (its NPS answers count
        there)."""
        expiry = int((time.time() if now_s is None else now_s) + days * 86_400)
        payload: dict[str, Any] = {"s": subscriber_id, "x": expiry}
        if campaign:
            payload["c"] = campaign
        return self.sign(Purpose.LINK, payload)

    def link_subscriber(self, token: str) -> str | None:
        payload = self.verify(Purpose.LINK, token)
        return str(payload["s"]) if payload and isinstance(payload.get("s"), str) else None

    def link_campaign(self, token: str) -> str:
        payload = self.verify(Purpose.LINK, token) or {}
        return str(payload.get("c", ""))


@dataclass(frozen=True)
class SelfLinks:
    """What the lifecycle needs to put a subscriber's self-service link in a message."""

    signer: Signer
    days: int
    base_url: str = ""

    def url(self, subscriber_id: str, now_ms: int, campaign: str = "") -> str:
        token = self.signer.link(subscriber_id, self.days, now_ms / 1000, campaign)
        return f"{self.base_url.rstrip('/')}/self/{token}"


@dataclass(frozen=True)
class Operator:
    name: str
    session: str
    """The cookie's value ('' without authentication): what CSRF tokens are bound to."""


class Operators:
    """Operator sessions: a login with an operator token of the tokens file gets a signed
    cookie naming the token's hash, checked against the file on every request (a token
    revoked in the file ends its sessions at once)."""

    def __init__(self, signer: Signer, tokens: TokenFile | None) -> None:
        self.signer = signer
        self.tokens = tokens

    @property
    def open(self) -> bool:
        return self.tokens is None

    def login(self, token: str, now_s: float | None = None) -> tuple[str, str] | None:
        """(cookie value, operator name) for an operator token; None for any other."""
        if self.tokens is None:
            return None
        client = self.tokens.client(token)
        if client is None or Role.OPERATOR not in client.roles:
            return None
        expiry = int((time.time() if now_s is None else now_s) + SESSION_S)
        cookie = self.signer.sign(Purpose.SESSION, {"n": client.name, "h": token_hash(token),
                                                    "x": expiry})
        return cookie, client.name

    def operator(self, cookie: str | None) -> Operator | None:
        if self.tokens is None:
            return Operator(OPEN_OPERATOR, "")
        payload = self.signer.verify(Purpose.SESSION, cookie or "")
        if payload is None:
            return None
        self.tokens.refresh()
        client = self.tokens.clients.get(str(payload.get("h")))
        if client is None or Role.OPERATOR not in client.roles:
            return None
        return Operator(client.name, cookie or "")
