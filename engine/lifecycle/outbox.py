"""The message queue in Redis: de-duplicated enqueue, leased claims (several senders), retries
with exponential back-off, the dead-letter stream, and the per-subscriber delivery log.

A message is a JSON object: id, event_id, rule, channel, subscriber, to, subject, text,
payload (the webhook body), critical, attempts, offer_id, addon_ids, due_ms.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis.asyncio as aioredis
from google.protobuf import json_format

from tollgate.engine.lifecycle.metrics import NOTIFICATIONS
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import lua_source
from tollgate.v1 import lifecycle_pb2 as lpb

DAY_MS = 86_400_000


def script(redis: aioredis.Redis, name: str) -> Any:
    return redis.register_script(lua_source(name))


class Schedule:
    """A sorted set of members by due time, claimed under a lease
    (engine/storage/lua/lc_claim.lua)."""

    def __init__(self, redis: aioredis.Redis, key: str, payloads: str) -> None:
        self.redis = redis
        self.key = key
        self.payloads = payloads
        self._claim = script(redis, "lc_claim")

    async def claim(self, now_ms: int, lease_ms: int, count: int
                    ) -> list[tuple[str, bytes | None]]:
        flat = await self._claim(keys=[self.key, self.payloads],
                                 args=[now_ms, now_ms + lease_ms, count])
        return [(flat[i].decode(), flat[i + 1] or None) for i in range(0, len(flat), 2)]


class Outbox:
    def __init__(self, redis: aioredis.Redis, log_kept: int = 1000) -> None:
        self.redis = redis
        self.log_kept = log_kept
        self.schedule = Schedule(redis, keys.LC_OUTBOX, keys.LC_MESSAGES)
        self._enqueue = script(redis, "lc_enqueue")
        self._settle = script(redis, "lc_settle")

    async def enqueue(self, dedup_key: str, messages: list[dict[str, Any]], ttl_ms: int,
                      now_ms: int) -> bool:
        """Queues the messages unless dedup_key was queued before; logs them as QUEUED or
        DEFERRED (quiet hours) or SKIPPED (no address / opted out: never queued)."""
        send = [m for m in messages if not m.get("skip")]
        args: list[Any] = [ttl_ms, len(send)]
        for m in send:
            args += (m["id"], m["due_ms"], json.dumps(m, separators=(",", ":")))
        queued = bool(await self._enqueue(
            keys=[keys.lc_dedup(dedup_key), keys.LC_OUTBOX, keys.LC_MESSAGES], args=args))
        if queued:
            for m in messages:
                status = "SKIPPED" if m.get("skip") else (
                    "DEFERRED" if m["due_ms"] > now_ms else "QUEUED")
                NOTIFICATIONS.labels(m["channel"], status.lower()).inc()
                await self.log(m, status, now_ms, error=m.get("skip", ""))
        return queued

    async def claim(self, now_ms: int, lease_ms: int, count: int) -> list[dict[str, Any]]:
        return [json.loads(p) for _, p in await self.schedule.claim(now_ms, lease_ms, count)
                if p is not None]

    async def settle(self, action: str, msg: dict[str, Any], due_ms: int = 0) -> bool:
        return bool(await self._settle(
            keys=[keys.LC_OUTBOX, keys.LC_MESSAGES, keys.LC_DEAD],
            args=[action, msg["id"], due_ms, json.dumps(msg, separators=(",", ":"))]))

    async def log(self, msg: dict[str, Any], status: str, now_ms: int, error: str = "") -> None:
        entry = {"message_id": msg["id"], "event_id": msg["event_id"], "rule": msg["rule"],
                 "channel": msg["channel"], "status": status, "attempts": msg["attempts"],
                 "time_ms": now_ms, "due_ms": msg["due_ms"], "subject": msg["subject"],
                 "text": msg["text"], "error": error, "offer_id": msg.get("offer_id", ""),
                 "addon_ids": msg.get("addon_ids", []), "critical": msg["critical"]}
        key = keys.lc_log(msg["subscriber"])
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(key, json.dumps(entry, separators=(",", ":")))
        pipe.ltrim(key, 0, self.log_kept - 1)
        await pipe.execute()

    async def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead-lettered message, oldest first (for tools and tests)."""
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.xrange(keys.LC_DEAD))
        return [json.loads(f[b"m"]) for _, f in entries]


async def list_notifications(redis: aioredis.Redis, subscriber_id: str,
                             limit: int) -> list[lpb.Notification]:
    rows = cast(list[bytes], await redis.lrange(keys.lc_log(subscriber_id), 0, limit - 1))
    return [json_format.ParseDict(json.loads(r), lpb.Notification(),
                                  ignore_unknown_fields=True) for r in rows]
