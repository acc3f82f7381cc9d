"""Structured logging: one JSON object per line (or plain text), extras included; secrets and
subscriber ids masked unless log_sensitive is set."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

SUBSCRIBER_FIELDS = frozenset({"subscriber", "subscriber_id", "msisdn", "imsi", "supi", "to",
                               "email", "phone"})
SECRET_FIELDS = frozenset({"token", "password", "secret", "authorization"})
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]+@",
                           re.IGNORECASE)
_TOKEN = re.compile(r"\btgk_[A-Za-z0-9_-]+")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
# Query parameters named like credentials (an SMS gateway's api_key=...) and like the
# recipient (to=, phone=...): the lifecycle logs the URLs it posts to (httpx, errors).
_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:[a-z_-]*(?:key|token|secret|password|passwd|signature|sig|auth)"
    r"|to|phone|msisdn|number|recipient|email)=)[^&\s#'\"]+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+\.)+[A-Za-z]{2,}")
# E.164 numbers as written (+49...) and URL-encoded (%2B49...).
_PHONE = re.compile(r"(?i)(?:\+|%2B)\d[\d -]{5,18}\d")


def mask_id(value: str) -> str:
    """Keeps the last 3 characters: enough to tell subscribers apart in an incident."""
    return "*" * max(len(value) - 3, 3) + value[-3:] if len(value) > 3 else "***"


def mask_secrets(text: str) -> str:
    """URL passwords (redis://user:***@), tokens, bearer credentials, query parameters named
    like keys, tokens or recipients, e-mail addresses and phone numbers in free text."""
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    text = _TOKEN.sub("tgk_***", text)
    text = _BEARER.sub(r"\1***", text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    text = _EMAIL.sub("***@***", text)
    return _PHONE.sub("+***", text)


def _mask_field(key: str, value: Any) -> Any:
    if key in SECRET_FIELDS:
        return "***"
    if key in SUBSCRIBER_FIELDS and isinstance(value, str):
        return mask_id(value)
    return mask_secrets(value) if isinstance(value, str) else value


class Redactor(logging.Filter):
    """Masks extras named like subscriber ids or secrets, and secrets in every message."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                setattr(record, key, _mask_field(key, value))
        try:
            record.msg = mask_secrets(record.getMessage())
            record.args = None
        except (TypeError, ValueError):  # a bad format string: leave it to the handler
            pass
        if record.exc_info:
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: " \
               f"{record.getMessage()} {extras}".rstrip()
        if record.exc_info:
            line += "\n" + (record.exc_text or self.formatException(record.exc_info))
        return line


def setup_logging(level: str = "INFO", fmt: str = "json", sensitive: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if not sensitive:
        handler.addFilter(Redactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
