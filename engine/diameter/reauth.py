"""Re-Auth (RFC 4006 §5.5): a session refused for credit (4012, 4010) is remembered with the
connection that carries it; when its account is topped up, buys an add-on or changes state,
or its plan gets a new version (new prices may allow the service), the gateway gets an RAR so
it reports and asks for quota at once instead of at its next timer.

The account events come from the partition event streams Tollgate already writes (TOPPED_UP,
ADD_ON_BOUGHT, STATE_CHANGED), read only while some session waits, from just before its
refusal: whichever server process took the top-up, every process sees it. Plan versions are
read alongside (one field per plan of a waiting session), against the version current when
the session's account was first looked up, within a poll of the refusal; the RAR goes out
once every server has had time to price with the new version (plan_refresh_s)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from tollgate.engine.domain import EventKind
from tollgate.engine.errors import NotFound
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import Store
from tollgate.v1 import events_pb2

log = logging.getLogger("tollgate.diameter")

POLL_S = 0.5
"""How often the event streams of waiting accounts are read."""
CLOCK_SLACK_MS = 1000
"""Events this much older than a refusal count too: the stream ids come from Redis's clock."""
WAKING = frozenset({EventKind.TOPPED_UP, EventKind.ADD_ON_BOUGHT, EventKind.STATE_CHANGED})


@dataclass(slots=True)
class Refused:
    session_id: str
    subscriber_id: str
    send_rar: Callable[[str], None]
    """Sends the RAR for this session on the connection that carries it."""
    since_ms: int
    account_id: str = ""
    plan: tuple[str, int] = ("", 0)  # the account's plan id and the version it was refused on
    plan_moved_ms: int = 0  # when a newer version of its plan was first seen (0: not yet)


class ReAuth:
    def __init__(self, store: Store, clock: Callable[[], int], plan_refresh_s: float) -> None:
        self.store = store
        self.clock = clock
        self.plan_settle_ms = int(plan_refresh_s * 1000)
        self.waiting: dict[str, Refused] = {}
        self._cursor: dict[int, str] = {}  # partition -> last event id read
        self._wake = asyncio.Event()

    def refused(self, session_id: str, subscriber_id: str, send_rar: Callable[[str], None]
                ) -> None:
        if session_id not in self.waiting:
            self.waiting[session_id] = Refused(session_id, subscriber_id, send_rar, self.clock())
            self._wake.set()

    def forget(self, session_id: str) -> None:
        self.waiting.pop(session_id, None)

    async def run(self) -> None:
        while True:
            if not self.waiting:
                self._cursor.clear()
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._poll()
            except RedisError as e:
                log.warning("re-auth: cannot read account events (%s), retrying", e)
            await asyncio.sleep(POLL_S)

    async def _poll(self) -> None:
        await self._resolve_accounts()
        by_partition: dict[int, list[Refused]] = {}
        for r in list(self.waiting.values()):
            if r.account_id:
                by_partition.setdefault(self.store.partition(r.account_id), []).append(r)
        pipe = self.store.redis.pipeline(transaction=False)
        partitions = list(by_partition)
        for p in partitions:
            start = self._cursor.get(p) or (
                f"{min(r.since_ms for r in by_partition[p]) - CLOCK_SLACK_MS}-0")
            pipe.xrange(keys.events_stream(p), f"({start}" if p in self._cursor else start,
                        "+", count=1000)
        plans = sorted({r.plan[0] for r in self.waiting.values() if r.plan[0]})
        for plan_id in plans:
            pipe.hget(keys.plan(plan_id), "cur")
        replies = await pipe.execute()
        for p, entries in zip(partitions, replies, strict=False):
            for entry_id, fields in entries:
                self._cursor[p] = entry_id.decode()
                event = events_pb2.Event.FromString(fields[b"e"])
                if event.kind in WAKING:
                    self._wake_account(event.account_id, by_partition[p])
        current = dict(zip(plans, (int(v or 0) for v in replies[len(partitions):]),
                           strict=True))
        now = self.clock()
        for r in list(self.waiting.values()):
            if r.plan[0] and current.get(r.plan[0], 0) > r.plan[1]:
                # Engines check a cached plan's version every plan_refresh_s: a gateway asking
                # at once could still be priced on the old one.
                r.plan_moved_ms = r.plan_moved_ms or now
                if now - r.plan_moved_ms >= self.plan_settle_ms:
                    self._send(r, "its plan has a new version")

    async def _resolve_accounts(self) -> None:
        unknown = [r for r in self.waiting.values() if not r.account_id]
        if not unknown:
            return
        found = await self.store.read_subscribers([r.subscriber_id for r in unknown])
        for r, sub in zip(unknown, found, strict=True):
            if sub is None:
                self.waiting.pop(r.session_id, None)  # no such subscriber: nothing to wake
                continue
            r.account_id = sub[0]
            try:
                plan_id = await self.store.account_plan(r.account_id)
            except NotFound:
                self.waiting.pop(r.session_id, None)
                continue
            r.plan = (plan_id, await self.store.plan_version(plan_id))

    def _wake_account(self, account_id: str, candidates: list[Refused]) -> None:
        for r in candidates:
            if r.account_id == account_id:
                self._send(r, "its account changed")

    def _send(self, r: Refused, why: str) -> None:
        if self.waiting.pop(r.session_id, None) is not None:
            log.info("re-auth: %s, RAR sent", why,
                     extra={"session_id": r.session_id, "account_id": r.account_id})
            r.send_rar(r.session_id)
