"""What the usage streams still hold. Records older than usage_retention_days that every
consumer group has acknowledged are trimmed (engine/billing/delivery.py Billing.trim); a report over
a period that reaches before the newest trimmed record says so, rather than look complete."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import cast

import redis

from tollgate.engine.storage import keys


def kept_from_ms(client: redis.Redis, partitions: Iterable[int]) -> int:
    """The write time (Unix ms) from which every one of these partitions still holds its
    usage records; 0 when none was ever trimmed."""
    newest = 0
    for p in partitions:
        raw = cast(bytes | None, client.get(keys.usage_kept_from(p)))
        if raw is not None:
            newest = max(newest, int(raw.decode().partition("-")[0]))
    return newest


def retention_notes(client: redis.Redis, partitions: Iterable[int],
                    from_ms: int | None) -> list[str]:
    """A line for a report whose period (from from_ms, None = from the start) reaches back
    to records no longer retained; none otherwise."""
    kept = kept_from_ms(client, partitions)
    if not kept or (from_ms is not None and from_ms >= kept):
        return []
    when = datetime.fromtimestamp(kept / 1000, UTC).isoformat(timespec="milliseconds")
    return [f"note: usage records written before {when} are no longer retained (trimmed "
            f"after usage_retention_days once every consumer group had acknowledged them); "
            f"the period asked for starts before that, so its records are incomplete"]
