"""Local message receivers for lifecycle tests: an HTTP server (webhook and SMS gateway) and an
SMTP server (aiosmtpd), each on a free port, recording what arrives."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """Answers `status` (200 unless a test changes it) after `delay_s`."""

    status: int = 200
    delay_s: float = 0.0
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (a crash test kills it): a torn request
                    # is not a delivered message, as for any real receiver.
                    return
                time.sleep(receiver.delay_s)
                receiver.hits.append(Hit(self.path, dict(self.headers.items()), body,
                                         time.monotonic()))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def on(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path.startswith(path)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Collect:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


class SmtpReceiver:
    def __init__(self) -> None:
        self.handler = _Collect()
        with socket.socket() as s:  # a free port (the controller checks it by connecting)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def messages(self) -> list[Message]:
        return self.handler.messages

    def stop(self) -> None:
        self.controller.stop()


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0,
                     what: str = "condition") -> Any:
    """Polls check() (sync or async) until it is truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class FakeClock:
    """Unix ms that a test moves by hand."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


SECRET = "test-secret"


def lifecycle_table(http: HttpReceiver, smtp: SmtpReceiver | None = None,
                    rules: list[dict[str, Any]] | None = None, **settings: Any
                    ) -> dict[str, Any]:
    """A [lifecycle] table sending to the local receivers: webhook on /hook, SMS gateway on
    /sms, e-mail to the local SMTP server; fast polls and short leases for tests."""
    table: dict[str, Any] = {
        "group": "lifecycle", "consumer": "test", "poll_s": 0.02, "lease_s": 5.0,
        "redeliver_s": 1.0, "metrics_port": 0,
        "webhook": {"url": f"{http.url}/hook", "secret": SECRET},
        "sms": {"url": f"{http.url}/sms?to=$to", "body": '{"to": "$to", "text": "$text"}'},
        "rules": rules or []}
    if smtp is not None:
        table["email"] = {"host": "127.0.0.1", "port": smtp.port,
                          "sender": "Tollgate <noreply@example.net>"}
    table.update(settings)
    return table
