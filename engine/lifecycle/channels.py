"""The delivery channels: webhook (JSON over HTTP POST, HMAC-SHA256 signed), e-mail over SMTP
(the standard library's smtplib) and SMS through an HTTP gateway (URL and body templates).

A send either returns (delivered) or raises SendError with the reason (tried again later).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import smtplib
import string
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

from tollgate.engine.lifecycle.settings import Email, Settings, Sms, Webhook
from tollgate.engine.ops.logs import mask_secrets

SIGNATURE_HEADER = "X-Tollgate-Signature"
"""sha256=<hex HMAC-SHA256 of the request body with the webhook secret>"""
MESSAGE_ID_HEADER = "X-Tollgate-Message-Id"
"""Stable per message: a receiver drops a message id it has seen (a retry after a timeout)."""


class SendError(Exception):
    pass


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _escape(value: str, content_type: str) -> str:
    if "json" in content_type:
        return json.dumps(value)[1:-1]
    if "x-www-form-urlencoded" in content_type:
        return quote_plus(value)
    return value


class Channels:
    """One HTTP client for the webhook and SMS gateway; SMTP connections per message."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http = httpx.AsyncClient()

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, msg: dict[str, Any]) -> None:
        channel = msg["channel"]
        try:
            if channel == "webhook" and self.settings.webhook is not None:
                await self._webhook(self.settings.webhook, msg)
            elif channel == "email" and self.settings.email is not None:
                await asyncio.to_thread(self._email, self.settings.email, msg)
            elif channel == "sms" and self.settings.sms is not None:
                await self._sms(self.settings.sms, msg)
            else:
                raise SendError(f"channel {channel!r} is not configured")
        except (httpx.HTTPError, smtplib.SMTPException, OSError) as e:
            # Kept in the delivery log and logged: no gateway key, number or address.
            raise SendError(mask_secrets(f"{type(e).__name__}: {e}")) from e

    async def _post(self, url: str, body: bytes, headers: dict[str, str],
                    timeout_s: float) -> None:
        r = await self.http.post(url, content=body, headers=headers, timeout=timeout_s)
        if not r.is_success:
            raise SendError(mask_secrets(f"HTTP {r.status_code} from {url}: {r.text[:200]}"))

    async def _webhook(self, hook: Webhook, msg: dict[str, Any]) -> None:
        body = json.dumps(msg["payload"], separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", MESSAGE_ID_HEADER: msg["id"]}
        if hook.secret:
            headers[SIGNATURE_HEADER] = sign(hook.secret, body)
        await self._post(hook.url, body, headers, hook.timeout_s)

    @staticmethod
    def _email(cfg: Email, msg: dict[str, Any]) -> None:
        mail = EmailMessage()
        mail["From"] = cfg.sender
        mail["To"] = msg["to"]
        mail["Subject"] = msg["subject"]
        mail[MESSAGE_ID_HEADER] = msg["id"]
        mail.set_content(msg["text"])
        with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s) as smtp:
            if cfg.starttls:
                smtp.starttls()
            if cfg.username:
                smtp.login(cfg.username, cfg.password)
            smtp.send_message(mail)

    async def _sms(self, cfg: Sms, msg: dict[str, Any]) -> None:
        values = {"to": msg["to"], "text": msg["text"], "id": msg["id"]}
        url = string.Template(cfg.url).safe_substitute(
            {k: quote(v, safe="") for k, v in values.items()})
        body = string.Template(cfg.body).safe_substitute(
            {k: _escape(v, cfg.content_type) for k, v in values.items()})
        headers = {"Content-Type": cfg.content_type, MESSAGE_ID_HEADER: msg["id"],
                   **dict(cfg.headers)}
        await self._post(url, body.encode(), headers, cfg.timeout_s)
