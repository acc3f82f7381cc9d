"""The lifecycle's logs and delivery log carry no SMS gateway key, phone number, e-mail
address or subscriber id (issue 24): what it logs goes through the server's masking."""

from __future__ import annotations

import io
import logging
import smtplib
import sys
from collections.abc import Iterator

import pytest

from tests.integration.receivers import HttpReceiver, lifecycle_table
from tollgate.engine.lifecycle.channels import Channels, SendError
from tollgate.engine.lifecycle.settings import parse_settings
from tollgate.engine.ops.logs import setup_logging

API_KEY, PHONE, EMAIL, SUB = "k3y-5ecr3t-0042", "+491701234567", "bob.smith@example.com", \
    "sub-private-4711"
SECRETS = (API_KEY, PHONE, PHONE[1:], "%2B491701234567", EMAIL, SUB)


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.stop()


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The lifecycle's logging as `tollgate lifecycle` sets it up (JSON to stderr, masked);
    stderr is a buffer the test reads."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("INFO", "json")
    yield out
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


async def test_sms_sent_and_failed_log_no_key_number_address_or_subscriber(
        http, json_logs):
    table = lifecycle_table(http)
    table["sms"]["url"] = f"{http.url}/sms?api_key={API_KEY}&to=$to"
    channels = Channels(parse_settings(table))
    msg = {"channel": "sms", "to": PHONE, "text": "Your balance is low", "id": "m1",
           "subscriber": SUB}
    log = logging.getLogger("tollgate.lifecycle")
    try:
        await channels.send(msg)  # httpx logs the request it made
        http.status = 500
        with pytest.raises(SendError) as failed:
            await channels.send(msg)
        # What the lifecycle process logs when a message fails for good.
        log.warning("notification dead-lettered", extra={
            "message_id": msg["id"], "subscriber": SUB, "to": PHONE,
            "error": str(failed.value)})
        try:
            raise smtplib.SMTPRecipientsRefused({EMAIL: (550, b"no such user")})
        except smtplib.SMTPRecipientsRefused:
            log.exception("lifecycle step failed", extra={"email": EMAIL})
    finally:
        await channels.close()

    assert len(http.on("/sms")) == 2 and API_KEY in http.on("/sms")[0].path
    out = json_logs.getvalue()
    assert "HTTP Request" in out and "dead-lettered" in out and "SMTPRecipientsRefused" in out
    for secret in SECRETS:
        assert secret not in out
        assert secret not in str(failed.value)  # also kept in the delivery log
