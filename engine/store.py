"""The Redis store: pipelined reads, the per-partition atomic apply, and provisioning writes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine import keys
from engine.domain import Bucket, Plan, SubscriberState
from engine.errors import AlreadyExists, ConfigError, InvalidArgument, NotFound
from engine.plans import plan_from_proto, plan_to_proto
from engine.state import AccountState, SessionState, bucket_fields, parse_account, parse_session
from tollgate.v1 import provisioning_pb2 as pb
from tollgate.v1 import usage_pb2

LUA = Path(__file__).parent / "lua"
TOPUP_MARKER_TTL_MS = 400 * 24 * 3600 * 1000  # a top-up id stays known for over a year


@dataclass(slots=True)
class SessionWrite:
    key: str
    set_key: str
    session_id: str
    ended: bool
    fields: dict[str, bytes | str | int]
    deleted: list[str]


@dataclass(slots=True)
class AccountWrite:
    """What one account group of a batch changes, applied only if the version still matches."""

    key: str
    expected_version: int
    increments: dict[str, int]
    sessions: list[SessionWrite] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)


class Store:
    """Talks to Redis; knows key layout and Lua scripts, nothing about rating."""

    def __init__(self, url: str, partitions: int, timeout_s: float = 5.0) -> None:
        self.partitions = partitions
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), 3),
            retry_on_error=[RedisConnectionError], health_check_interval=30)
        self._apply = self.redis.register_script((LUA / "apply.lua").read_text())
        self._topup = self.redis.register_script((LUA / "topup.lua").read_text())
        self._create = self.redis.register_script((LUA / "create.lua").read_text())
        self._put_plan = self.redis.register_script((LUA / "put_plan.lua").read_text())

    async def init(self) -> None:
        """Fixes the partition count at first start and refuses a different one later."""
        await self.redis.hsetnx(keys.META, "partitions", self.partitions)
        stored = int(await self.redis.hget(keys.META, "partitions") or 0)
        if stored != self.partitions:
            raise ConfigError(f"this Redis was set up with {stored} partitions; "
                              f"the configuration says {self.partitions}")

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisConnectionError, RedisTimeoutError):
            return False

    def partition(self, account_id: str) -> int:
        return keys.partition_of(account_id, self.partitions)

    # --- the hot path -------------------------------------------------------------------

    async def read_subscribers(self, ids: list[str]) -> list[tuple[str, SubscriberState] | None]:
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(keys.subscriber(sid), "acct", "state")
        out: list[tuple[str, SubscriberState] | None] = []
        for acct, state in await pipe.execute():
            out.append(None if acct is None else (acct.decode(), SubscriberState(int(state))))
        return out

    async def read_accounts(self, wanted: list[tuple[str, list[str]]]
                            ) -> list[tuple[AccountState | None, list[SessionState | None]]]:
        """Accounts and some of their sessions in one round trip. Each account is read before
        its sessions: a session changed after the account read also moved the account version,
        so the apply's version check catches any mix of old and new."""
        pipe = self.redis.pipeline(transaction=False)
        for account_id, session_ids in wanted:
            p = self.partition(account_id)
            pipe.hgetall(keys.account(p, account_id))
            for sid in session_ids:
                pipe.hgetall(keys.session(p, sid))
        replies = iter(await pipe.execute())
        out: list[tuple[AccountState | None, list[SessionState | None]]] = []
        for account_id, session_ids in wanted:
            h = next(replies)
            acct = parse_account(account_id, self.partition(account_id), h) if h else None
            out.append((acct, [parse_session(sid, next(replies)) for sid in session_ids]))
        return out

    async def apply(self, writes: dict[int, list[AccountWrite]],
                    retention_ms: int) -> dict[int, set[int]]:
        """One Lua call per partition, all in one pipeline. Returns, per partition, the
        indexes of the account writes refused because the version had moved."""
        pipe = self.redis.pipeline(transaction=False)
        order = list(writes)
        for p in order:
            keys_: list[str] = [keys.usage_stream(p)]
            slot: dict[str, int] = {}

            def key_no(k: str, keys_: list[str] = keys_, slot: dict[str, int] = slot) -> int:
                if k not in slot:
                    keys_.append(k)
                    slot[k] = len(keys_)
                return slot[k]

            args: list[Any] = [retention_ms, len(writes[p])]
            for w in writes[p]:
                group: list[Any] = [key_no(w.key), w.expected_version, len(w.increments)]
                for f, d in w.increments.items():
                    group += [f, d]
                group.append(len(w.sessions))
                for s in w.sessions:
                    group += [key_no(s.key), key_no(s.set_key), s.session_id,
                              "end" if s.ended else "open", len(s.fields)]
                    for f, v in s.fields.items():
                        group += [f, v]
                    group.append(len(s.deleted))
                    group += s.deleted
                group.append(len(w.records))
                group += w.records
                args.append(len(group))
                args += group
            await self._apply(keys=keys_, args=args, client=pipe)
        replies = await pipe.execute()
        return {p: {int(g) - 1 for g in reply} for p, reply in zip(order, replies, strict=True)}

    # --- provisioning -------------------------------------------------------------------

    async def put_plan(self, plan: Plan) -> int:
        blob = plan_to_proto(plan).SerializeToString()
        return int(await self._put_plan(keys=[keys.plan(plan.plan_id)], args=[blob]))

    async def plan_version(self, plan_id: str) -> int:
        return int(await self.redis.hget(keys.plan(plan_id), "cur") or 0)

    async def get_plan(self, plan_id: str, version: int = 0) -> Plan:
        if version == 0:
            version = await self.plan_version(plan_id)
        blob = await self.redis.hget(keys.plan(plan_id), f"v:{version}") if version else None
        if blob is None:
            raise NotFound(f"plan {plan_id!r} version {version or 'current'} does not exist")
        return plan_from_proto(pb.Plan.FromString(blob), version)

    async def create_account(self, account_id: str, plan: Plan, money: int, credit_limit: int,
                             buckets: Iterable[Bucket]) -> None:
        p = self.partition(account_id)
        fields: dict[str, Any] = {"ver": 1, "plan": plan.plan_id, "money": money, "mres": 0,
                                  "climit": credit_limit, "init": money, "topups": 0,
                                  "created": int(time.time() * 1000)}
        for b in buckets:
            fields.update(bucket_fields(b))
        args = [x for kv in fields.items() for x in kv]
        if not await self._create(keys=[keys.account(p, account_id)], args=args):
            raise AlreadyExists(f"account {account_id!r} already exists")

    async def get_account(self, account_id: str) -> tuple[AccountState, list[SessionState]]:
        p = self.partition(account_id)
        h = cast(dict[bytes, bytes], await self.redis.hgetall(keys.account(p, account_id)))
        if not h:
            raise NotFound(f"account {account_id!r} does not exist")
        acct = parse_account(account_id, p, h)
        members = cast(set[bytes],
                       await self.redis.smembers(keys.account_sessions(p, account_id)))
        session_ids = sorted(m.decode() for m in members)
        pipe = self.redis.pipeline(transaction=False)
        for sid in session_ids:
            pipe.hgetall(keys.session(p, sid))
        sessions = [s for sid, h in zip(session_ids, await pipe.execute(), strict=True)
                    if (s := parse_session(sid, h)) is not None]
        return acct, sessions

    async def create_subscriber(self, subscriber_id: str, account_id: str,
                                state: SubscriberState) -> None:
        p = self.partition(account_id)
        if not await self.redis.exists(keys.account(p, account_id)):
            raise NotFound(f"account {account_id!r} does not exist")
        created = await self._create(keys=[keys.subscriber(subscriber_id)],
                                     args=["acct", account_id, "state", int(state)])
        if not created:
            raise AlreadyExists(f"subscriber {subscriber_id!r} already exists")

    async def get_subscriber(self, subscriber_id: str) -> tuple[str, SubscriberState]:
        found = (await self.read_subscribers([subscriber_id]))[0]
        if found is None:
            raise NotFound(f"subscriber {subscriber_id!r} does not exist")
        return found

    async def top_up(self, topup_id: str, account_id: str, amount: int) -> tuple[bool, int]:
        if amount <= 0:
            raise InvalidArgument("amount_micros must be positive")
        p = self.partition(account_id)
        record = usage_pb2.RatedUsage(
            kind=usage_pb2.TOP_UP, account_id=account_id, money_micros=-amount,
            end_time_ms=int(time.time() * 1000),
            charges=[usage_pb2.BalanceCharge(micros=-amount)]).SerializeToString()
        reply = await self._topup(
            keys=[keys.account(p, account_id), keys.topup_marker(p, account_id, topup_id),
                  keys.usage_stream(p)],
            args=[amount, record, TOPUP_MARKER_TTL_MS])
        if int(reply[0]) < 0:
            raise NotFound(f"account {account_id!r} does not exist")
        return bool(int(reply[0])), int(reply[1])

    async def usage_records(self, p: int) -> list[tuple[str, usage_pb2.RatedUsage]]:
        """Every record of a partition stream, oldest first (for tests and tools)."""
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.xrange(keys.usage_stream(p)))
        return [(rid.decode(), usage_pb2.RatedUsage.FromString(f[b"r"])) for rid, f in entries]

