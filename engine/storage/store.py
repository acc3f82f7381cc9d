"""The Redis store: pipelined reads, the per-partition atomic apply, and provisioning writes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import msgpack
import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tollgate.engine.charging.kernels.apply_calls import (
    CALL_LO,
    G_PART,
    apply_calls,
    call_cuts,
    call_plan,
)
from tollgate.engine.domain import AddOn, Bucket, EventKind, Plan, SubscriberState
from tollgate.engine.errors import AlreadyExists, ConfigError, Conflict, InvalidArgument, NotFound
from tollgate.engine.rating.plans import plan_from_proto, plan_to_proto
from tollgate.engine.storage import keys, record_block
from tollgate.engine.storage.node_pipelines import Call, NodePipelines
from tollgate.engine.storage.redis_client import (
    Prepacked,
    cluster_of,
    connect_async,
    exchange,
    packed,
)
from tollgate.engine.storage.session_blob import pack_session, parse_session_hash, unpack_session
from tollgate.engine.storage.state import (
    MEMBER_COUNTERS,
    AccountState,
    SessionState,
    bucket_fields,
    member_caps_value,
    parse_account,
)
from tollgate.engine.storage.writes import (
    AccountWrite,
    Writes,
    key_table,
    of_objects,
    writer_token,
)
from tollgate.v1 import events_pb2, usage_pb2
from tollgate.v1 import provisioning_pb2 as pb

log = logging.getLogger("tollgate.store")

LUA = Path(__file__).parent / "lua"
TOPUP_MARKER_TTL_MS = 400 * 24 * 3600 * 1000  # a top-up id stays known for over a year
ORDER_MARKER_TTL_MS = TOPUP_MARKER_TTL_MS  # and so does an add-on order id
DAY_MS = 86_400_000
T = TypeVar("T")
SESSION_FORMAT = b"packed"
"""tg:meta's `sessions`: every session key holds a packed value (engine/storage/session_blob.py)."""


def _flat(fields: dict[str, Any]) -> list[bytes | str]:
    """field, value, field, value...; numbers as strings (Lua numbers are doubles)."""
    return [x for f, v in fields.items() for x in (f, v if type(v) is bytes else str(v))]


SNAPSHOT_TRIES = 10
"""Reads of a busy account before GetAccount gives what it read last (see get_account)."""

_pack = msgpack.Packer(use_bin_type=False).pack  # Redis's cmsgpack predates the bin type


GROUPS_PER_CALL = 128
"""Accounts per apply or read call on a single server: fewer calls are fewer commands to
build, send and answer (a unary batch of 11 requests made 11), but one call holds Redis's
other clients while it runs (some tens of µs per write)."""


def lua_source(name: str) -> str:
    """A script of engine/storage/lua with the libraries it may call (lib_*.lua) before it."""
    libs = "".join(lib.read_text() for lib in sorted(LUA.glob("lib_*.lua")))
    return libs + (LUA / f"{name}.lua").read_text()


def state_order(stream_id: str, after: bool = False) -> str:
    """The place of a decision on a subscriber's state (engine/storage/lua/lib_order.lua): that of
    the stream record '<ms>-<seq>' behind it (a record of a block, '<ms>-<seq>-<i>', has its
    entry's), or with after=True, of a decision made just after that record (and before the
    next). Fixed-width: it sorts like the stream ids."""
    ms, seq, _ = record_block.position(stream_id)
    return f"{int(ms):015d}-{int(seq):010d}-{int(after)}"


def hash_blob(fields: dict[str, Any]) -> bytes:
    """A hash's fields for create_many (encode a shared one once)."""
    return _pack(_flat(fields))


class Store:
    """Talks to Redis; knows key layout and Lua scripts, nothing about rating."""

    def __init__(self, url: str, partitions: int, timeout_s: float = 5.0,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.partitions = partitions

        def client(socket_timeout: float | None, **more: Any) -> aioredis.Redis:
            return connect_async(
                url, socket_timeout=socket_timeout, socket_connect_timeout=timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), 3),
                retry_on_error=[RedisConnectionError], health_check_interval=30, **more)
        self.redis = client(timeout_s)
        self.nodes = NodePipelines(self.redis, timeout_s, wait_replicas, wait_timeout_ms)
        # The charging path's reads and applies: no per-socket-operation timeout. Each of
        # its calls runs under its batch's deadline (engine.charging.engine.by_deadline),
        # which abandons it (and redis-py then drops the connection); redis-py's own timeout
        # runs asyncio.wait_for, a task, for each send and read: about 50 µs of CPU per
        # round trip, half of what a small batch's apply costs the client. RESP2: no push
        # frame can come between its replies, so exchange() takes those already read
        # straight from the parser (redis_client._buffered).
        self.charging_redis = client(None, protocol=2)
        self.charging = NodePipelines(self.charging_redis, timeout_s, wait_replicas,
                                      wait_timeout_ms)
        self.use_apply_script(lua_source("apply"))
        self._versions = self._script("versions")
        self._topup = self._script("topup")
        self._create = self._script("create")
        self._create_many = self._script("create_many")
        self._put_plan = self._script("put_plan")
        self._account_set = self._script("account_set")
        self._member_add = self._script("member_add")
        self._member_remove = self._script("member_remove")
        self._subscriber_state = self._script("subscriber_state")
        self._buy_addon = self._script("buy_addon")
        self.subscriber_listeners: list[Callable[[str | None], None]] = []
        """Called with a subscriber id whose account or state changed, None = maybe any."""
        self._subscriber_claim = self._script("subscriber_claim")
        self._subscriber_release = self._script("subscriber_release")
        self._outbox_clear = self._script("outbox_clear")
        self._session_convert = self._script("session_convert")

    def _script(self, name: str) -> AsyncScript:
        return self.redis.register_script(lua_source(name))

    def use_apply_script(self, source: str) -> None:
        """Applies writes with this script (apply.lua; a benchmark's cut-down one): its sha
        goes into the calls' bytes as an array (kernels.apply_calls)."""
        self._apply = self.redis.register_script(source)
        self._apply_sha = np.frombuffer(self._apply.sha.encode(), np.uint8).copy()

    async def init(self) -> None:
        """Fixes the partition count at first start and refuses a different one later."""
        await self.redis.hsetnx(keys.META, "partitions", self.partitions)
        stored = int(await self.redis.hget(keys.META, "partitions") or 0)
        if stored != self.partitions:
            raise ConfigError(f"this Redis was set up with {stored} partitions; "
                              f"the configuration says {self.partitions}")
        await self.convert_hash_sessions()

    async def convert_hash_sessions(self) -> int:
        """Sessions written by a release before packed values were hashes: each becomes its
        packed value, once (tg:meta remembers it). Returns how many were converted."""
        if await self.redis.hget(keys.META, "sessions") == SESSION_FORMAT:
            return 0
        converted = 0
        async for key in self.redis.scan_iter(match="tg:*:sess:*", _type="hash", count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            h = cast(dict[bytes, bytes], await self.redis.hgetall(name))
            s = parse_session_hash(name.partition(":sess:")[2], h)
            if s is not None:
                converted += int(await self._session_convert(keys=[name],
                                                             args=[pack_session(s)]))
        await self.redis.hset(keys.META, "sessions", SESSION_FORMAT)
        if converted:
            log.info("sessions converted to packed values", extra={"sessions": converted})
        return converted

    async def close(self) -> None:
        for nodes in (self.nodes, self.charging):
            await nodes.close()
        for c in (self.redis, self.charging_redis):
            await c.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisConnectionError, RedisTimeoutError):
            return False

    def partition(self, account_id: str) -> int:
        return keys.partition_of(account_id, self.partitions)

    async def _subscriber_changed(self, subscriber_id: str) -> None:
        """Tells this process's caches at once and the other servers through pub/sub."""
        self._tell_listeners(subscriber_id)
        await self.redis.publish(keys.SUBSCRIBER_CHANGES, subscriber_id)

    async def watch_subscriber_changes(self) -> None:
        """Feeds the listeners from the pub/sub channel until cancelled. Whenever the channel
        (re)connects they hear None: changes may have been missed while it was down."""
        while True:
            try:
                async with self.redis.pubsub() as ps:
                    await ps.subscribe(keys.SUBSCRIBER_CHANGES)
                    self._tell_listeners(None)
                    async for msg in ps.listen():
                        if msg["type"] == "message":
                            self._tell_listeners(msg["data"].decode())
            except (RedisConnectionError, RedisTimeoutError) as e:
                log.warning("subscriber change channel lost, reconnecting: %s", e)
                self._tell_listeners(None)
                await asyncio.sleep(0.5)

    def _tell_listeners(self, subscriber_id: str | None) -> None:
        for listener in self.subscriber_listeners:
            listener(subscriber_id)

    # --- the hot path -------------------------------------------------------------------

    async def read_subscribers(self, ids: list[str], charging: bool = False
                               ) -> list[tuple[str, SubscriberState] | None]:
        """Each subscriber's account and state (None: not known). `charging`: on the
        charging path's client, whose caller bounds the call (see __init__)."""
        client = self.charging_redis if charging else self.redis
        commands = [("HMGET", keys.subscriber(sid), "acct", "state") for sid in ids]
        out: list[tuple[str, SubscriberState] | None] = []
        for acct, state in await self._replies(client, commands):
            out.append(None if acct is None else (acct.decode(), SubscriberState(int(state))))
        return out

    async def account_subscribers(self, account_id: str, also: Iterable[str] = ()
                                  ) -> list[str]:
        """The subscribers on the account now, sorted: those provisioning put there and
        those of `also` (ids known elsewhere) that are still there."""
        listed = cast(set[bytes], await self.redis.smembers(
            keys.account_subscribers(self.partition(account_id), account_id)))
        ids = sorted({m.decode() for m in listed} | set(also))
        return [sid for sid, found in zip(ids, await self.read_subscribers(ids), strict=True)
                if found is not None and found[0] == account_id]

    async def read_accounts(self, wanted: list[tuple[str, list[str]]]
                            ) -> list[tuple[AccountState | None, list[bytes | None]]]:
        """Accounts and some of their sessions' values (session_blob; None: no session), in
        one round trip. Each account is read
        before its sessions: a session changed after the account read also moved the
        account version, so the apply's version check catches any mix of old and new. On
        the charging path's client: its caller bounds the call (see __init__)."""
        partitions = [self.partition(account_id) for account_id, _ in wanted]
        commands: list[tuple[str, ...]] = []
        for (account_id, session_ids), p in zip(wanted, partitions, strict=True):
            commands.append(("HGETALL", keys.account(p, account_id)))
            commands += [("GET", keys.session(p, sid)) for sid in session_ids]
        replies = iter(await self._replies(self.charging_redis, commands))
        out: list[tuple[AccountState | None, list[bytes | None]]] = []
        for (account_id, session_ids), p in zip(wanted, partitions, strict=True):
            h = next(replies)
            if isinstance(h, list):  # RESP2's flat list of fields and values (exchange)
                h = dict(zip(h[::2], h[1::2], strict=True))
            acct = parse_account(account_id, p, h) if h else None
            out.append((acct, [next(replies) or None for _ in session_ids]))
        return out

    @staticmethod
    async def _replies(client: aioredis.Redis, commands: Sequence[tuple[str, ...]]
                       ) -> list[Any]:
        """The replies to read commands, in one round trip; the first error reply raised.
        On a single server without a pipeline's machinery (redis_client.exchange); on a
        cluster, a pipeline sends each to its slot's node. Nothing to read: no round trip."""
        if not commands:
            return []
        if cluster_of(client) is None:
            replies = await exchange(client, packed(commands), len(commands))
        else:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def moved_accounts(self, held: dict[str, int]) -> set[str]:
        """The accounts, of those held at a version, whose version is another by now (or that
        are gone): versions.lua, one call per partition on a cluster, up to GROUPS_PER_CALL
        accounts of several partitions on a single server, in one round trip."""
        by_partition: dict[int, list[str]] = {}
        for account_id in held:
            by_partition.setdefault(self.partition(account_id), []).append(account_id)
        calls: dict[int, Call] = {}
        order: dict[int, list[str]] = {}
        for c, chunk in enumerate(self._calls_of(by_partition)):
            order[c] = [a for _, ids in chunk for a in ids]
            calls[c] = ([keys.account(p, a) for p, ids in chunk for a in ids],
                        [held[a] for a in order[c]])
        replies = await self.charging.run(self._versions, calls, wait=False)
        return {order[c][int(i) - 1] for c, reply in replies.items() for i in reply}

    @property
    def _per_call(self) -> int:
        """Items of a script call at most (kernels.apply_calls.call_cuts): one partition per
        call on a cluster (a partition is a slot), up to GROUPS_PER_CALL otherwise."""
        return 1 if self.nodes.cluster is not None else GROUPS_PER_CALL

    def _calls_of(self, by_partition: dict[int, list[T]]) -> list[list[tuple[int, list[T]]]]:
        """Partitions' items split into script calls of whole partitions (call_cuts)."""
        items = list(by_partition.items())
        cuts = call_cuts(np.array([len(v) for _, v in items], np.int64), self._per_call)
        return [items[lo:hi] for lo, hi in cuts.tolist()]

    async def apply(self, writes: dict[int, list[AccountWrite]],
                    retention_ms: int) -> dict[int, set[int]]:
        """apply_writes of AccountWrite objects by partition (lifecycle, tools): returns, per
        partition, the indexes of the account writes refused."""
        owners = [(p, i) for p, ws in writes.items() for i in range(len(ws))]
        refused: dict[int, set[int]] = {p: set() for p in writes}
        for g in await self.apply_writes(of_objects(writes), retention_ms):
            p, i = owners[g]
            refused[p].add(i)
        return refused

    async def apply_writes(self, w: Writes, retention_ms: int,
                           sent: Callable[[], None] | None = None, token: int = 0) -> list[int]:
        """Lua calls pipelined per Redis node (engine.storage.node_pipelines: a call sent again
        after an error finds the version moved, so it never applies twice): on a cluster one per
        partition (its own slot), on a single server up to GROUPS_PER_CALL account writes of
        several partitions per call, each written whole by a kernel (kernels/apply_calls).
        Returns the groups (rows of w.groups) refused because the version had moved or a
        session believed new exists. `sent`: called once the calls are written
        (NodePipelines.run). `token`: the writer's (writes.writer_token; a new one if 0),
        which the accounts keep as `w`: the groups of a later batch computed on this one's
        predicted state check it (G_CHAIN)."""
        if not len(w):
            return []
        # A call's groups come partition by partition (apply.lua's blocks).
        order, bounds = call_plan(w.groups, self._per_call)
        groups = w.groups[order]
        first, last = groups[[0, -1], G_PART].tolist()
        if first < 0 or last >= self.partitions:
            raise ValueError(f"a write names partition {first} or {last}; there are "
                             f"{self.partitions}")
        k = key_table(self.partitions)
        data, spans = apply_calls(w.strings, k.text, k.parts, groups, w.sets, w.sessions,
                                  w.records, w.events, bounds, self._apply_sha, retention_ms,
                                  token or writer_token())
        # Every key the script touches is in the command (the same slot): during resharding
        # Redis redirects by those. The first key of a call names its slot for the routing.
        los = bounds[:, CALL_LO].tolist()
        calls: dict[int, Call] = {
            c: ([keys.usage_stream(p)], Prepacked(data[a:b]))
            for c, (p, a, b) in enumerate(zip(groups[los, G_PART].tolist(), spans[0].tolist(),
                                              spans[1].tolist(), strict=True))}
        replies = await self.charging.run(self._apply, calls, sent=sent)
        return [int(order[los[c] + int(g) - 1]) for c, reply in replies.items() for g in reply]

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
                             buckets: Iterable[Bucket], cap: int = 0,
                             now_ms: int | None = None) -> None:
        """A new account in its first billing cycle, which starts now."""
        p = self.partition(account_id)
        now = _now_ms() if now_ms is None else now_ms
        fields = account_fields(plan, money, credit_limit, buckets, cap, now)
        args = [x for kv in fields.items() for x in kv]
        if not await self._create(keys=[keys.account(p, account_id)], args=args):
            raise AlreadyExists(f"account {account_id!r} already exists")

    async def create_many(self, hashes: list[tuple[str, bytes]]) -> int:
        """Bulk provisioning: creates each (key, hash_blob(fields)) hash that does not exist
        yet; returns how many were created. One call on a single Redis; on a cluster one call
        per hash slot (keys of a call must share it), pipelined per node."""
        calls: dict[int, tuple[list[str], list[bytes]]] = {}
        cluster = self.nodes.cluster
        for key, blob in hashes:
            group = calls.setdefault(cluster.keyslot(key) if cluster is not None else 0,
                                     ([], []))
            group[0].append(key)
            group[1].append(blob)
        replies = await self.nodes.run(self._create_many, calls)
        return sum(int(r) for r in replies.values())

    async def get_account(self, account_id: str) -> tuple[AccountState, list[SessionState]]:
        """The account with its open sessions, as one snapshot: every change to either
        moves the account version, so the reads are repeated until the version stayed the
        same across them (a charge or a sweep in between would show reservations and
        balances that do not match). An account charged without pause is given as last
        read after SNAPSHOT_TRIES."""
        p = self.partition(account_id)
        account_key = keys.account(p, account_id)
        for _ in range(SNAPSHOT_TRIES):
            h = cast(dict[bytes, bytes], await self.redis.hgetall(account_key))
            if not h:
                raise NotFound(f"account {account_id!r} does not exist")
            acct = parse_account(account_id, p, h)
            members = cast(set[bytes],
                           await self.redis.smembers(keys.account_sessions(p, account_id)))
            session_ids = sorted(m.decode() for m in members)
            pipe = self.redis.pipeline(transaction=False)
            for sid in session_ids:
                pipe.get(keys.session(p, sid))
            sessions = [s for sid, v in zip(session_ids, await pipe.execute(), strict=True)
                        if (s := unpack_session(sid, v)) is not None]
            if int(await self.redis.hget(account_key, "ver") or 0) == acct.version:
                break
        return acct, sessions

    async def account_plan(self, account_id: str) -> str:
        """The plan id of an account."""
        plan_id = await self.redis.hget(keys.account(self.partition(account_id), account_id),
                                        "plan")
        if plan_id is None:
            raise NotFound(f"account {account_id!r} does not exist")
        return cast(bytes, plan_id).decode()

    async def set_spending_cap(self, account_id: str, cap: int) -> None:
        account_key = keys.account(self.partition(account_id), account_id)
        if not await self._account_set(keys=[account_key], args=["cap", cap]):
            raise NotFound(f"account {account_id!r} does not exist")

    async def create_subscriber(self, subscriber_id: str, account_id: str,
                                state: SubscriberState) -> None:
        p = self.partition(account_id)
        if not await self.redis.exists(keys.account(p, account_id)):
            raise NotFound(f"account {account_id!r} does not exist")
        # Listed first (another slot): a crash between the two leaves an entry that readers
        # drop, never a subscriber its account does not list.
        await self.redis.sadd(keys.account_subscribers(p, account_id), subscriber_id)
        fields = subscriber_fields(account_id, state)
        created = await self._create(keys=[keys.subscriber(subscriber_id)],
                                     args=[x for kv in fields.items() for x in kv])
        if not created:
            raise AlreadyExists(f"subscriber {subscriber_id!r} already exists")

    async def get_subscriber(self, subscriber_id: str) -> tuple[str, SubscriberState]:
        found = (await self.read_subscribers([subscriber_id]))[0]
        if found is None:
            raise NotFound(f"subscriber {subscriber_id!r} does not exist")
        return found

    async def set_subscriber_state(self, subscriber_id: str, state: SubscriberState,
                                   now_ms: int | None = None) -> str:
        """Sets the state; a change appends a STATE_CHANGED event to the events stream of the
        account's partition. Returns the subscriber's account id.

        The subscriber and the stream live in different slots (Redis Cluster), so the event
        goes through an outbox field of the subscriber, set with the state in one atomic
        call; it is appended to the stream and then cleared. A crash in between leaves it
        for the next call on this subscriber (a consumer may see it twice, same event id)."""
        now = _now_ms() if now_ms is None else now_ms
        while True:
            account_id, _ = await self.get_subscriber(subscriber_id)
            event = _event(f"state:{subscriber_id}:{now}", EventKind.STATE_CHANGED, account_id,
                           now, subscriber_id=subscriber_id, detail=state.name)
            order = await self._decision_order(account_id)
            reply = await self._subscriber_state(keys=[keys.subscriber(subscriber_id)],
                                                 args=[account_id, int(state), event, order])
            code = int(reply[0])
            if code == -1:
                raise NotFound(f"subscriber {subscriber_id!r} does not exist")
            if code == -2:  # moved to another account meanwhile; read again
                continue
            if code == 1:
                await self._subscriber_changed(subscriber_id)
            outbox = [e for e in (reply[1], event if code == 1 else b"") if e]
            stream = keys.events_stream(self.partition(account_id))
            for e in outbox:
                await self.redis.xadd(stream, {"e": e})
            if outbox:
                await self._outbox_clear(keys=[keys.subscriber(subscriber_id)],
                                         args=[outbox[-1]])
            return account_id

    async def _decision_order(self, account_id: str) -> str:
        """The place of a decision on a subscriber of the account made now: after every
        record already in the account's partition streams (events and usage, which the
        lifecycle acts on), so none of them, handled late or again, undoes it."""
        p = self.partition(account_id)
        pipe = self.redis.pipeline(transaction=False)
        for stream in (keys.events_stream(p), keys.usage_stream(p)):
            pipe.xrevrange(stream, count=1)
        newest = [rows[0][0].decode() for rows in await pipe.execute() if rows]
        return max((state_order(i, after=True) for i in newest),
                   default=state_order("0-0", after=True))

    async def add_member(self, account_id: str, subscriber_id: str, cap_money: int,
                         cap_units: list[int]) -> bool:
        """Makes the subscriber (created if new) a member with these caps, or updates its
        caps. Returns whether anything changed.

        The account and the subscriber are in different slots (Redis Cluster): the caps are
        set first, then the subscriber is claimed. Between the two, the member has caps but
        no subscriber record, which charges nothing; a retry completes it."""
        found = cast(bytes | None, await self.redis.hget(keys.subscriber(subscriber_id), "acct"))
        if found is not None and found.decode() != account_id:
            raise Conflict(f"subscriber {subscriber_id!r} belongs to account "
                           f"{found.decode()!r}, not {account_id!r}")
        p = self.partition(account_id)
        account_key = keys.account(p, account_id)
        code = int((await self._member_add(
            keys=[account_key, keys.account_subscribers(p, account_id)],
            args=[f"m:{subscriber_id}", member_caps_value(cap_money, cap_units),
                  subscriber_id]))[0])
        if code == -1:
            raise NotFound(f"account {account_id!r} does not exist")
        claim = await self._subscriber_claim(keys=[keys.subscriber(subscriber_id)],
                                             args=[account_id, int(SubscriberState.ACTIVE)])
        if int(claim[0]) == -2:  # created on another account meanwhile: undo a new member
            if code == 2:
                await self._remove_member_fields(account_key, subscriber_id)
            raise Conflict(f"subscriber {subscriber_id!r} belongs to account "
                           f"{claim[1].decode()!r}, not {account_id!r}")
        return code > 0 or int(claim[0]) == 1

    async def _remove_member_fields(self, account_key: str, subscriber_id: str) -> list[Any]:
        m = f"m:{subscriber_id}"
        held = [f"{m}:{c}" for c in MEMBER_COUNTERS if c == "mres" or c.startswith("r")]
        return cast(list[Any], await self._member_remove(
            keys=[account_key],
            args=[m, len(held), *held, m, *(f"{m}:{c}" for c in MEMBER_COUNTERS)]))

    async def remove_member(self, account_id: str, subscriber_id: str) -> None:
        """Removes the member, its counters and the subscriber; refused while it holds
        reservations.

        The subscriber record (another slot on Redis Cluster) goes first, so no state in
        between lets it charge without its caps; if the member turns out to hold
        reservations by then (a request in flight), the subscriber is put back."""
        account_key = keys.account(self.partition(account_id), account_id)
        m = f"m:{subscriber_id}"
        held = [f"{m}:{c}" for c in MEMBER_COUNTERS if c == "mres" or c.startswith("r")]
        if not await self.redis.exists(account_key):
            raise NotFound(f"account {account_id!r} does not exist")
        caps, *counters = cast(list[bytes | None], await self.redis.hmget(account_key, [m, *held]))
        if caps is None:
            raise NotFound(f"subscriber {subscriber_id!r} is not a member of account "
                           f"{account_id!r}")
        for f, v in zip(held, counters, strict=True):
            if v is not None and v != b"0":
                raise Conflict(f"member has live reservations: {subscriber_id!r} holds "
                               f"{f} = {v.decode()}; end its sessions first")
        released = await self._subscriber_release(keys=[keys.subscriber(subscriber_id)],
                                                  args=[account_id])
        reply = await self._remove_member_fields(account_key, subscriber_id)
        code = int(reply[0])
        if code == -4:
            if int(released[0]) == 1:
                await self._create(keys=[keys.subscriber(subscriber_id)],
                                   args=["acct", account_id, "state", released[1]])
            raise Conflict(f"member has live reservations: {subscriber_id!r} holds "
                           f"{reply[1].decode()} = {reply[2].decode()}; end its sessions first")
        if code == -1:
            raise NotFound(f"account {account_id!r} does not exist")
        await self._subscriber_changed(subscriber_id)

    async def top_up(self, topup_id: str, account_id: str, amount: int) -> tuple[bool, int]:
        if amount <= 0:
            raise InvalidArgument("amount_micros must be positive")
        p = self.partition(account_id)
        now = _now_ms()
        record = usage_pb2.RatedUsage(
            kind=usage_pb2.TOP_UP, account_id=account_id, money_micros=-amount,
            end_time_ms=now,
            charges=[usage_pb2.BalanceCharge(micros=-amount)]).SerializeToString()
        event = _event(f"topup:{account_id}:{topup_id}", EventKind.TOPPED_UP, account_id, now,
                       value=amount, detail=topup_id)
        reply = await self._topup(
            keys=[keys.account(p, account_id), keys.topup_marker(p, account_id, topup_id),
                  keys.usage_stream(p), keys.events_stream(p)],
            args=[amount, record, TOPUP_MARKER_TTL_MS, event])
        if int(reply[0]) == -1:
            raise NotFound(f"account {account_id!r} does not exist")
        if int(reply[0]) == -2:
            raise Conflict(f"top-up refused: the account's {reply[1].decode()} would pass "
                           f"int64 (9223372036854775807 micro-units)")
        return bool(int(reply[0])), int(reply[1])

    async def buy_addon(self, order_id: str, account_id: str, plan: Plan, addon: AddOn,
                        now_ms: int | None = None) -> bool:
        """Takes the add-on's price from the money balance (down to -credit limit) and adds
        its bucket `<bucket_id>:<order_id>`, once per order id of the account. Returns
        whether it was applied now (False: this order was applied before)."""
        p = self.partition(account_id)
        now = _now_ms() if now_ms is None else now_ms
        b = addon.bundle
        bucket = Bucket(f"{b.bucket_id}:{order_id}", b.rating_groups, b.unit_type, b.units,
                        b.units, priority=b.priority,
                        expiry_ms=now + b.validity_days * DAY_MS if b.validity_days else 0,
                        renew=b.renew)
        fields = bucket_fields(bucket)  # metadata field first: the script checks it exists
        price = addon.price_micros
        record = usage_pb2.RatedUsage(
            kind=usage_pb2.ADD_ON, account_id=account_id, money_micros=price,
            start_time_ms=now, end_time_ms=now, plan_id=plan.plan_id,
            plan_version=plan.version,
            charges=[usage_pb2.BalanceCharge(micros=price)]).SerializeToString()
        event = _event(f"addon:{account_id}:{order_id}", EventKind.ADD_ON_BOUGHT, account_id,
                       now, value=price, detail=addon.addon_id, bucket_id=bucket.bucket_id)
        reply = await self._buy_addon(
            keys=[keys.account(p, account_id), keys.order_marker(p, account_id, order_id),
                  keys.usage_stream(p), keys.events_stream(p)],
            args=[-price, ORDER_MARKER_TTL_MS, record, event, len(fields),
                  *(x for kv in fields.items() for x in kv)])
        code = int(reply[0])
        if code == -1:
            raise NotFound(f"account {account_id!r} does not exist")
        if code == -2:
            raise Conflict(f"insufficient money: add-on {addon.addon_id!r} costs {price} "
                           f"micros, the account has {reply[1].decode()} free")
        return code == 1

    async def usage_records(self, p: int) -> list[tuple[str, usage_pb2.RatedUsage]]:
        """Every record of a partition stream, oldest first (for tests and tools)."""
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.xrange(keys.usage_stream(p)))
        return [(place, usage_pb2.RatedUsage.FromString(r)) for sid, f in entries
                for place, r in record_block.records(sid, f)]

    async def events(self, p: int) -> list[tuple[str, events_pb2.Event]]:
        """Every event of a partition stream, oldest first (for tests and tools)."""
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.xrange(keys.events_stream(p)))
        return [(eid.decode(), events_pb2.Event.FromString(f[b"e"])) for eid, f in entries]


def cancel_requested() -> bool:
    """Whether the current task was asked to stop. A background loop around Redis calls
    checks this rather than rely on the CancelledError: a cancellation can be lost inside
    redis-py (seen under load: the sweeper task stayed 'cancelling' and went back to sleep,
    so the shutdown that awaited it never ended)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def account_fields(plan: Plan, money: int, credit_limit: int, buckets: Iterable[Bucket],
                   cap: int, now: int) -> dict[str, Any]:
    """The hash of a new account in its first billing cycle, which starts `now`."""
    fields: dict[str, Any] = {"ver": 1, "plan": plan.plan_id, "money": money, "mres": 0,
                              "climit": credit_limit, "init": money, "topups": 0,
                              "created": now, "cap": cap, "spent": 0, "cs": now,
                              "ce": now + plan.cycle_days * DAY_MS,
                              "capn": 0, "lown": 0, "exhn": 0}
    for b in buckets:
        fields.update(bucket_fields(b))
    return fields


def subscriber_fields(account_id: str, state: SubscriberState) -> dict[str, Any]:
    return {"acct": account_id, "state": int(state)}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _event(event_id: str, kind: EventKind, account_id: str, time_ms: int, *,
           subscriber_id: str = "", bucket_id: str = "", value: int = 0,
           detail: str = "") -> bytes:
    return events_pb2.Event(event_id=event_id, kind=int(kind), account_id=account_id,
                            subscriber_id=subscriber_id, bucket_id=bucket_id, value=value,
                            time_ms=time_ms, detail=detail).SerializeToString()
