"""Billing: rated usage records and events delivered to billing systems through Redis consumer
groups (at least once, explicit Ack, redelivery after a timeout), GetUsage (one account, one
period, paged), and the stream trimmer (only what every group has acknowledged).

Record ids are "<partition>-<place>": stable, so a consumer that sees one twice drops it.
A place is the record's stream id ('<ms>-<seq>', the Redis clock's Unix ms when the record
was written), or '<ms>-<seq>-<i>' for record i of a block of usage records (one stream entry,
engine/storage/record_block.py). Redis acknowledges whole entries: a block's records acknowledged so
far are kept, per group, in a hash of the partition (keys.acked) until the last one is,
and are not delivered again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from prometheus_client import Counter
from redis.exceptions import ResponseError

from tollgate.engine.errors import InvalidArgument
from tollgate.engine.ops.config import Config
from tollgate.engine.ops.metrics import USAGE_PAST_RETENTION
from tollgate.engine.storage import keys, record_block
from tollgate.engine.storage.node_pipelines import Call
from tollgate.engine.storage.redis_client import cluster_of
from tollgate.engine.storage.store import LUA, Store, cancel_requested
from tollgate.v1 import billing_pb2 as pb
from tollgate.v1 import billing_pb2_grpc, events_pb2, usage_pb2

log = logging.getLogger("tollgate.billing")

USAGE = pb.FEED_USAGE
EVENTS = pb.FEED_EVENTS
FEED_NAMES = {USAGE: "usage", EVENTS: "events"}
FIELD = {USAGE: b"r", EVENTS: b"e"}

DROPPED_UNACKED = Counter(
    "tollgate_usage_dropped_unacked",
    "Stream records dropped by the max-age safety net before every consumer group had "
    "acknowledged them", ["feed"])

DAY_MS = 86_400_000
MAX_SCAN = 100_000
"""GetUsage reads at most this many stream entries per call (a page may then be short)."""
MAX_ACK_IDS = 100_000
CLUSTER_POLL_S = 0.02
"""Redis Cluster: how often an idle stream looks for new records (no multi-slot blocking)."""

StreamId = tuple[int, int]
Entry = tuple[str, bytes]
"""(record id, payload)"""
StartAt = str | int | None
"""Where a new group starts: a record id, a time (Unix ms), or None (the oldest retained)."""


def parse_sid(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_sid(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def _before(sid: StreamId) -> str:
    """The greatest stream id below sid (an inclusive XRANGE / XPENDING end)."""
    return format_sid((sid[0] - 1, 2**64 - 1)) if sid[1] == 0 else format_sid((sid[0], sid[1] - 1))


def record_id(partition: int, place: bytes | str) -> str:
    return f"{partition}-{place.decode() if isinstance(place, bytes) else place}"


def split_record_id(rid: str, partitions: int) -> tuple[int, str]:
    """'<partition>-<place>' -> (partition, place), or InvalidArgument."""
    p, _, place = rid.partition("-")
    try:
        record_block.position(place)
    except ValueError:
        place = ""
    if not p.isdigit() or int(p) >= partitions or not place:
        raise InvalidArgument(f"record id {rid[:80]!r} is not '<partition>-<stream id>' "
                              f"or '<partition>-<stream id>-<index>'")
    return int(p), place


def stream_key(feed: int, p: int) -> str:
    return keys.usage_stream(p) if feed == USAGE else keys.events_stream(p)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class TrimReport:
    trimmed: int = 0
    """Records removed (acknowledged by every group, or dropped by max age)."""
    dropped_unacked: int = 0
    """Of those, records some group had not acknowledged (max age forced them out)."""


def carry(sums: dict[str, int], r: usage_pb2.RatedUsage) -> None:
    """Adds what one record did to its account into carried-totals fields (keys.carried)."""
    a = r.account_id
    sums[f"{a}|m"] += r.money_micros
    if r.kind == usage_pb2.TOP_UP:
        sums[f"{a}|t"] += r.money_micros
    for c in r.charges:
        if c.bucket_id:
            sums[f"{a}|b|{c.bucket_id}"] += c.units


class Billing:
    """Consumer-group delivery, acknowledgement, GetUsage and trimming over the partition
    streams. Knows nothing about rating."""

    def __init__(self, store: Store, config: Config) -> None:
        self.redis = store.redis
        self.nodes = store.nodes
        self.partitions = store.partitions
        self.cluster = cluster_of(store.redis) is not None
        self.config = config
        self._groups: set[tuple[int, str]] = set()
        self._closing = asyncio.Event()
        self._carry_script = self.redis.register_script((LUA / "carry_trim.lua").read_text())
        self._ack_block = self.redis.register_script((LUA / "ack_block.lua").read_text())

    def close(self) -> None:
        """Ends every open stream at its next turn (server shutdown)."""
        self._closing.set()

    # --- delivery -----------------------------------------------------------------------

    def _check_name(self, what: str, value: str) -> None:
        if not value:
            raise InvalidArgument(f"{what} is required")
        if len(value) > self.config.max_id_length:
            raise InvalidArgument(f"{what} is longer than {self.config.max_id_length}")

    async def ensure_group(self, feed: int, group: str, start: StartAt = None) -> None:
        """Creates the group on every partition stream unless it exists, at `start`
        (_start_ids: by default the oldest record retained); registering it everywhere
        keeps the trimmer from dropping what it has not read."""
        if (feed, group) in self._groups:
            return
        pipe = self.redis.pipeline(transaction=False)
        for p, sid in enumerate(self._start_ids(start)):
            pipe.xgroup_create(stream_key(feed, p), group, id=sid, mkstream=True)
        created = await pipe.execute(raise_on_error=False)
        for r in created:
            if isinstance(r, Exception) and "BUSYGROUP" not in str(r):
                raise r
        if isinstance(start, str):
            p, place = split_record_id(start, self.partitions)
            ms, seq, i = record_block.position(place)
            if i and not isinstance(created[p], Exception):
                # Starting within a block: its records before the start count as
                # acknowledged, so they are never delivered.
                await self.redis.hset(keys.acked(stream_key(feed, p), group), f"{ms}-{seq}",
                                      "1" * i)
        self._groups.add((feed, group))

    def _start_ids(self, start: StartAt) -> list[str]:
        """Per partition, the id a new group is created at (its last delivered id)."""
        if start is None:
            return ["0"] * self.partitions
        if isinstance(start, int):
            return [_before((start, 0)) if start else "0"] * self.partitions
        p, place = split_record_id(start, self.partitions)
        at = record_block.position(place)[:2]
        return [_before(at if q == p else (at[0], 0)) for q in range(self.partitions)]

    @staticmethod
    def _start_of(req: pb.StreamRequest) -> StartAt:
        if req.start_record_id and req.start_time_ms:
            raise InvalidArgument("give start_record_id or start_time_ms, not both")
        if req.start_time_ms < 0:
            raise InvalidArgument("start_time_ms must not be negative")
        return req.start_record_id or req.start_time_ms or None

    def _stream_params(self, req: pb.StreamRequest) -> tuple[list[int], int, int]:
        self._check_name("group", req.group)
        self._check_name("consumer", req.consumer)
        default = self.config.billing_max_batch
        if req.max_batch > 10 * default:
            raise InvalidArgument(f"max_batch {req.max_batch} is over {10 * default}")
        bad = [p for p in req.partitions if p >= self.partitions]
        if bad:
            raise InvalidArgument(f"partition {bad[0]} does not exist "
                                  f"(there are {self.partitions})")
        parts = sorted(set(req.partitions)) or list(range(self.partitions))
        # A blocking read must end well within the Redis client's socket timeout.
        block = min(req.block_ms or self.config.billing_block_ms,
                    int(self.config.redis_timeout_s * 500))
        return parts, req.max_batch or default, max(1, block)

    async def deliver(self, feed: int, req: pb.StreamRequest) -> AsyncIterator[list[Entry]]:
        """Batches of (record id, payload) for one consumer of a group, until cancelled or
        closed: records idle (delivered, unacknowledged) for billing_redeliver_ms are claimed
        first (this consumer's own and a dead consumer's), then new ones."""
        parts, max_batch, block_ms = self._stream_params(req)
        await self.ensure_group(feed, req.group, self._start_of(req))
        redeliver_ms = max(1, self.config.billing_redeliver_ms)
        claim_every = min(5.0, max(0.02, redeliver_ms / 2000))
        block_ms = max(1, min(block_ms, int(claim_every * 1000)))
        cursors = dict.fromkeys(parts, "0-0")
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        while not self._closing.is_set():
            out: list[Entry] = []
            if loop.time() >= next_claim:
                claimed, more = await self._claim(feed, req.group, req.consumer, cursors,
                                                  redeliver_ms, max_batch)
                out += claimed
                next_claim = loop.time() + (0 if more else claim_every)
            if len(out) < max_batch:
                out += await self._read_new(feed, req.group, req.consumer, parts,
                                            max_batch - len(out), None if out else block_ms)
            out = await self._unacked(feed, req.group, out)
            for i in range(0, len(out), max_batch):
                yield out[i:i + max_batch]

    async def _claim(self, feed: int, group: str, consumer: str, cursors: dict[int, str],
                     min_idle_ms: int, count: int) -> tuple[list[Entry], bool]:
        pipe = self.redis.pipeline(transaction=False)
        for p, cursor in cursors.items():
            pipe.xautoclaim(stream_key(feed, p), group, consumer, min_idle_ms,
                            start_id=cursor, count=count)
        replies = await pipe.execute(raise_on_error=False)
        out: list[Entry] = []
        more = False
        for (p, _), reply in zip(list(cursors.items()), replies, strict=True):
            if isinstance(reply, Exception):
                if "NOGROUP" in str(reply):
                    await self._recreate_group(feed, group)
                    continue
                raise reply
            cursor = _text(reply[0])
            cursors[p] = cursor
            more = more or cursor != "0-0"
            out += self._entries(feed, p, reply[1])
        return out, more

    async def _read_new(self, feed: int, group: str, consumer: str, parts: list[int],
                        count: int, block_ms: int | None) -> list[Entry]:
        if self.cluster:
            return await self._read_new_per_partition(feed, group, consumer, parts, count,
                                                      block_ms)
        streams: dict[Any, Any] = {stream_key(feed, p): ">" for p in parts}
        try:
            reply = await self.redis.xreadgroup(group, consumer, streams, count=count,
                                                block=block_ms)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self._recreate_group(feed, group)
            return []
        out: list[Entry] = []
        partition_of = {stream_key(feed, p): p for p in parts}
        for key, entries in _stream_items(reply):
            out += self._entries(feed, partition_of[_text(key)], entries)
        return out

    async def _read_new_per_partition(self, feed: int, group: str, consumer: str,
                                      parts: list[int], count: int,
                                      block_ms: int | None) -> list[Entry]:
        """Redis Cluster: one XREADGROUP names streams of one slot only, so each partition
        stream is read by its own (pipelined per node); nothing new on any of them, it looks
        again every CLUSTER_POLL_S until block_ms is over."""
        loop = asyncio.get_running_loop()
        until = loop.time() + (block_ms or 0) / 1000
        while True:
            pipe = self.redis.pipeline(transaction=False)
            for p in parts:
                pipe.xreadgroup(group, consumer, {stream_key(feed, p): ">"}, count=count)
            out: list[Entry] = []
            for p, reply in zip(parts, await pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, Exception):
                    if "NOGROUP" not in str(reply):
                        raise reply
                    await self._recreate_group(feed, group)
                    continue
                for _, entries in _stream_items(reply):
                    out += self._entries(feed, p, entries)
            if out or block_ms is None or loop.time() >= until or self._closing.is_set():
                return out
            await asyncio.sleep(CLUSTER_POLL_S)

    async def _recreate_group(self, feed: int, group: str) -> None:
        """The stream was deleted: set the group up again."""
        self._groups.discard((feed, group))
        await self.ensure_group(feed, group)

    @staticmethod
    def _entries(feed: int, p: int, entries: Iterable[Any]) -> list[Entry]:
        out: list[Entry] = []
        for sid, fields in entries:
            if feed == USAGE:  # an entry's record or its block's (engine/storage/record_block.py)
                out += [(record_id(p, place), r) for place, r in record_block.records(sid, fields)]
            elif fields and FIELD[feed] in fields:  # None: deleted while pending (trimmed)
                out.append((record_id(p, sid), fields[FIELD[feed]]))
        return out

    async def _unacked(self, feed: int, group: str, entries: list[Entry]) -> list[Entry]:
        """The entries less the records of blocks the group has acknowledged (a block is
        pending, and comes again, until all its records are)."""
        blocks: dict[int, set[str]] = defaultdict(set)
        for rid, _ in entries:
            p, place = split_record_id(rid, self.partitions)
            if record_block.in_block(place):
                blocks[p].add(record_block.entry_of(place))
        if not blocks:
            return entries
        pipe = self.redis.pipeline(transaction=False)
        asked = [(p, sorted(ids)) for p, ids in blocks.items()]
        for p, ids in asked:
            pipe.hmget(keys.acked(stream_key(feed, p), group), ids)
        marks = {(p, i): m for (p, ids), ms in zip(asked, await pipe.execute(), strict=True)
                 for i, m in zip(ids, ms, strict=True) if m}
        if not marks:
            return entries
        out: list[Entry] = []
        for rid, data in entries:
            p, place = split_record_id(rid, self.partitions)
            m = marks.get((p, record_block.entry_of(place)))
            i = record_block.position(place)[2]
            if not (m and record_block.in_block(place) and m[i:i + 1] == b"1"):
                out.append((rid, data))
        return out

    async def ack(self, feed: int, group: str, record_ids: Sequence[str]) -> int:
        """Acknowledges records of a group; returns how many were pending. A record of a
        block is kept as acknowledged until the block's last one is (ack_block.lua)."""
        self._check_name("group", group)
        if len(record_ids) > MAX_ACK_IDS:
            raise InvalidArgument(f"{len(record_ids)} record ids; the limit is {MAX_ACK_IDS}")
        by_partition: dict[int, list[str]] = defaultdict(list)
        in_blocks: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for rid in record_ids:
            p, place = split_record_id(rid, self.partitions)
            if record_block.in_block(place):
                if feed != USAGE:
                    raise InvalidArgument(f"record id {rid[:80]!r}: events are "
                                          f"'<partition>-<stream id>'")
                ms, seq, i = record_block.position(place)
                in_blocks[p][f"{ms}-{seq}"].append(str(i))
            else:
                by_partition[p].append(place)
        acked = 0
        if by_partition:
            pipe = self.redis.pipeline(transaction=False)
            for p, sids in by_partition.items():
                pipe.xack(stream_key(feed, p), group, *sids)
            acked += sum(int(n) for n in await pipe.execute())
        calls: dict[int, Call] = {}
        for p, blocks in in_blocks.items():
            stream = stream_key(feed, p)
            args: list[bytes | str | int] = [group]
            for entry, indexes in blocks.items():
                args += (entry, ",".join(indexes))
            calls[p] = ([stream, keys.acked(stream, group)], args)
        if calls:  # per node, a script call per partition (its own slot on a cluster)
            replies = await self.nodes.run(self._ack_block, calls, wait=False)
            acked += sum(int(n) for n in replies.values())
        return acked

    # --- GetUsage -----------------------------------------------------------------------

    async def get_usage(self, req: pb.GetUsageRequest) -> pb.GetUsageAnswer:
        """Records of one account written in [from_ms, to_ms), in stream order, with running
        totals carried in the page token."""
        self._check_name("account_id", req.account_id)
        if req.from_ms < 0 or req.to_ms < 0 or (req.to_ms and req.to_ms <= req.from_ms):
            raise InvalidArgument("the period needs 0 <= from_ms < to_ms (to_ms 0 = now)")
        default = self.config.billing_page_size
        if req.page_size > 10 * default:
            raise InvalidArgument(f"page_size {req.page_size} is over {10 * default}")
        page_size = req.page_size or default
        after, totals = self._read_token(req)
        p = keys.partition_of(req.account_id, self.partitions)
        key = keys.usage_stream(p)
        # From the entry of the last record given: more of its block may follow it.
        start = f"{after[0]}-{after[1]}" if after else str(req.from_ms)
        end = str(req.to_ms - 1) if req.to_ms else "+"
        records: list[usage_pb2.RatedUsage] = []
        scanned = 0
        last: record_block.Position | None = None
        exhausted = more = False
        while len(records) < page_size and scanned < MAX_SCAN:
            chunk = min(max(page_size, 500), MAX_SCAN - scanned)
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                           await self.redis.xrange(key, start, end, count=chunk))
            for i, (sid, fields) in enumerate(entries):
                scanned += 1
                items = record_block.records(sid, fields)
                for j, (place, data) in enumerate(items):
                    pos = record_block.position(place)
                    if after is not None and pos <= after:
                        continue
                    last = pos
                    rec = usage_pb2.RatedUsage.FromString(data)
                    if rec.account_id == req.account_id:
                        rec.record_id = record_id(p, place)
                        records.append(rec)
                        _add(totals, rec)
                        if len(records) == page_size:
                            more = (j < len(items) - 1 or i < len(entries) - 1
                                    or len(entries) == chunk)
                            break
                if len(records) == page_size:
                    break
            if len(entries) < chunk and not more:
                exhausted = True
                break
            if entries:
                start = f"({_text(entries[-1][0])}"
        token = "" if exhausted or last is None else self._make_token(req, last, totals)
        return pb.GetUsageAnswer(records=records, next_page_token=token,
                                 totals=_totals_proto(totals))

    @staticmethod
    def _make_token(req: pb.GetUsageRequest, after: record_block.Position,
                    totals: dict[str, Any]) -> str:
        data = {"a": req.account_id, "f": req.from_ms, "t": req.to_ms,
                "after": "-".join(map(str, after)), "tot": totals}
        return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()

    @staticmethod
    def _read_token(req: pb.GetUsageRequest
                    ) -> tuple[record_block.Position | None, dict[str, Any]]:
        if not req.page_token:
            return None, {"n": 0, "m": 0, "u": {}, "k": {}}
        try:
            data = json.loads(base64.urlsafe_b64decode(req.page_token.encode()))
            if (data["a"], data["f"], data["t"]) != (req.account_id, req.from_ms, req.to_ms):
                raise InvalidArgument("page_token belongs to another account or period")
            tot = data["tot"]
            return record_block.position(data["after"]), {
                "n": int(tot["n"]), "m": int(tot["m"]),
                "u": {str(k): int(v) for k, v in tot["u"].items()},
                "k": {str(k): [int(v[0]), int(v[1])] for k, v in tot["k"].items()}}
        except InvalidArgument:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise InvalidArgument("page_token is not one GetUsage gave") from e

    # --- retention ----------------------------------------------------------------------

    async def trim(self, now_ms: int | None = None) -> TrimReport:
        """Trims the partition streams; a stream without a group is kept whole.

        A usage stream loses only records older than usage_retention_days that every
        registered group has acknowledged: rated usage is what operators invoice from, and
        export, rerate and a group registered later read it. Records past retention that a
        group has not acknowledged stay; the group is named in a warning and counted in
        tollgate_usage_unacked_past_retention (never trimmed silently).
        An event stream loses what every group has acknowledged and, past stream_max_age_s,
        everything (the unacknowledged counted in tollgate_usage_dropped_unacked_total)."""
        if now_ms is None:
            secs, micros = await self.redis.time()
            now_ms = int(secs) * 1000 + int(micros) // 1000
        retention: StreamId = (max(0, now_ms - self.config.usage_retention_days * DAY_MS), 0)
        max_age_ms = self.config.stream_max_age_s * 1000
        cutoff = (now_ms - max_age_ms, 0) if max_age_ms and now_ms > max_age_ms else None
        report = TrimReport()
        behind: dict[str, int] = defaultdict(int)
        for p in range(self.partitions):
            report.trimmed += await self._trim_usage(keys.usage_stream(p), retention, behind)
        for group, n in behind.items():
            USAGE_PAST_RETENTION.labels(group).set(n)
            if n:
                log.warning("consumer group has not acknowledged usage records older than "
                            "the retention: they are kept for it, not trimmed",
                            extra={"group": group, "records": n,
                                   "retention_days": self.config.usage_retention_days})
        for p in range(self.partitions):
            key = keys.events_stream(p)
            trimmed, dropped = await self._trim_events(key, cutoff)
            report.trimmed += trimmed
            report.dropped_unacked += dropped
            if dropped:
                DROPPED_UNACKED.labels(FEED_NAMES[EVENTS]).inc(dropped)
                log.warning("unacknowledged stream records dropped by max age",
                            extra={"stream": key, "records": dropped})
        return report

    async def _group_bounds(self, key: str) -> dict[str, tuple[StreamId, StreamId]]:
        """Per group of the stream: its last delivered id and the first id it has not
        acknowledged (its oldest pending one, else the one after the last delivered)."""
        try:
            groups = await self.redis.xinfo_groups(key)
        except ResponseError:  # no such stream
            return {}
        out: dict[str, tuple[StreamId, StreamId]] = {}
        for g in groups:
            last = parse_sid(g["last-delivered-id"])
            bound = (last[0], last[1] + 1)
            if int(g["pending"]):
                summary = await self.redis.xpending(key, g["name"])
                if summary.get("min"):
                    bound = min(bound, parse_sid(summary["min"]))
            out[_text(g["name"])] = (last, bound)
        return out

    async def _trim_usage(self, key: str, retention: StreamId, behind: dict[str, int]) -> int:
        """Trims below min(retention, what every group acknowledged); adds to `behind`, per
        group, the records older than retention it has not acknowledged (kept for it)."""
        groups = await self._group_bounds(key)
        if not groups:
            return 0
        safe = min(bound for _, bound in groups.values())
        for name, (last, bound) in groups.items():
            behind[name] += (await self._unacked_before(key, name, last, retention)
                             if bound < retention else 0)
        upto = min(safe, retention)
        return await self._xtrim(key, upto) if upto > (0, 1) else 0

    async def _unacked_before(self, key: str, group: str, last: StreamId,
                              before: StreamId) -> int:
        """Records before `before` the group has not acknowledged: its pending ones up to
        `last`, and those after `last` (its last delivered id when it was read: a record
        delivered meanwhile is counted once, as after it)."""
        end = _before(before)
        n = 0
        lo = "-"
        pending_end = format_sid(last) if last < before else end
        while True:
            rows = await self.redis.xpending_range(key, group, lo, pending_end, 1000)
            n += await self._unacked_in(key, group, [_text(r["message_id"]) for r in rows])
            if len(rows) < 1000:
                break
            lo = f"({_text(rows[-1]['message_id'])}"
        lo = f"({format_sid(last)}"
        while True:
            entries = cast(list[tuple[bytes, Any]],
                           await self.redis.xrange(key, lo, end, count=1000))
            n += sum(record_block.count(fields) for _, fields in entries)
            if len(entries) < 1000:
                return n
            lo = f"({_text(entries[-1][0])}"

    async def _unacked_in(self, key: str, group: str, pending: list[str]) -> int:
        """The records of pending entries the group has not acknowledged (some records of a
        block may be)."""
        if not pending:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for sid in pending:
            pipe.xrange(key, sid, sid)
        pipe.hmget(keys.acked(key, group), pending)
        *found, marks = await pipe.execute()
        return sum(record_block.count(rows[0][1] if rows else None) - (m or b"").count(b"1")
                   for rows, m in zip(found, marks, strict=True))

    async def _trim_events(self, key: str, cutoff: StreamId | None) -> tuple[int, int]:
        groups = await self._group_bounds(key)
        lasts = {name: last for name, (last, _) in groups.items()}
        safe = min((bound for _, bound in groups.values()), default=None)
        trimmed = 0
        if safe is not None and safe > (0, 1):
            trimmed += await self._xtrim(key, safe)
        if cutoff is None or (safe is not None and cutoff <= safe):
            return trimmed, 0
        dropped = await self._count_unacked(key, lasts, safe or (0, 0), cutoff)
        trimmed += await self._xtrim(key, cutoff)
        return trimmed, dropped

    async def _xtrim(self, key: str, minid: StreamId) -> int:
        """Trims entries before minid; returns the records trimmed. For a usage stream, what
        the trimmed records did to each account is first added to the partition's carried
        totals, in the same atomic call, so `tollgate reconcile` still proves the books after
        trimming."""
        p_match = re.match(r"^tg:\{p(\d+)\}:usage$", key)
        if p_match is None:
            return int(await self.redis.xtrim(key, minid=format_sid(minid), approximate=False))
        p = int(p_match.group(1))
        for _ in range(5):
            head = cast(list[tuple[bytes, Any]], await self.redis.xrange(key, count=1))
            if not head or parse_sid(head[0][0]) >= minid:
                return 0
            sums: dict[str, int] = defaultdict(int)
            counted = 0  # records (an entry may hold a block of them)
            lo = _text(head[0][0])
            end = _before(minid)
            while True:
                rows = cast(list[tuple[bytes, dict[bytes, bytes]]],
                            await self.redis.xrange(key, lo, end, count=1000))
                for sid, fields in rows:
                    for _, r in record_block.records(sid, fields):
                        carry(sums, usage_pb2.RatedUsage.FromString(r))
                        counted += 1
                if len(rows) < 1000:
                    break
                lo = f"({_text(rows[-1][0])}"
            args: list[Any] = [_text(head[0][0]), format_sid(minid)]
            for f, d in sums.items():
                if d:
                    args += (f, d)
            done = int(await self._carry_script(
                keys=[key, keys.carried(p), keys.usage_kept_from(p)], args=args))
            if done >= 0:  # the head was as read: [head, minid) is what went
                return counted if done else 0
        return 0

    async def _count_unacked(self, key: str, lasts: dict[str, StreamId], start: StreamId,
                             cutoff: StreamId) -> int:
        """Entries in [start, cutoff) some group has not acknowledged; acknowledges their
        pending ids on the way (they are about to be dropped)."""
        if not lasts:
            return 0
        end = _before(cutoff)
        pending: set[StreamId] = set()
        for name in lasts:
            lo = format_sid(start)
            while True:
                rows = await self.redis.xpending_range(key, name, lo, end, 1000)
                ids = [_text(r["message_id"]) for r in rows]
                if ids:
                    await self.redis.xack(key, name, *ids)
                pending.update(parse_sid(i) for i in ids)
                if len(rows) < 1000:
                    break
                lo = f"({ids[-1]}"
        lowest_last = min(lasts.values())
        dropped = 0
        lo = format_sid(start)
        while True:
            entries = cast(list[tuple[bytes, Any]],
                           await self.redis.xrange(key, lo, end, count=1000))
            for sid, _ in entries:
                s = parse_sid(sid)
                if s > lowest_last or s in pending:
                    dropped += 1
            if len(entries) < 1000:
                return dropped
            lo = f"({_text(entries[-1][0])}"

    async def run_trimmer(self, interval_s: float) -> None:
        """Trims every interval_s until cancelled; errors are logged, never fatal."""
        while not cancel_requested():
            await asyncio.sleep(interval_s)
            try:
                report = await self.trim()
                if report.trimmed:
                    log.info("streams trimmed", extra={"records": report.trimmed})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stream trim failed")


def _stream_items(reply: Any) -> Iterable[tuple[Any, Any]]:
    """(stream, entries) pairs of an XREADGROUP reply (a dict with RESP3, a list before)."""
    return cast(Iterable[tuple[Any, Any]],
                reply.items() if isinstance(reply, dict) else (reply or []))


def _add(totals: dict[str, Any], rec: usage_pb2.RatedUsage) -> None:
    totals["n"] += 1
    totals["m"] += rec.money_micros
    if rec.units:
        ut = str(rec.unit_type)
        totals["u"][ut] = totals["u"].get(ut, 0) + rec.units
    kind = totals["k"].setdefault(str(rec.kind), [0, 0])
    kind[0] += 1
    kind[1] += rec.money_micros


def _totals_proto(totals: dict[str, Any]) -> pb.UsageTotals:
    return pb.UsageTotals(
        records=totals["n"], money_micros=totals["m"],
        units=[pb.UnitTotal(unit_type=int(k), units=v) for k, v in sorted(totals["u"].items())],
        by_kind=[pb.KindTotal(kind=int(k), records=v[0], money_micros=v[1])
                 for k, v in sorted(totals["k"].items(), key=lambda kv: int(kv[0]))])


# --- gRPC -------------------------------------------------------------------------------


class BillingServicer(billing_pb2_grpc.BillingServicer):
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def StreamRatedUsage(self, request: pb.StreamRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.UsageBatch]:
        try:
            async for batch in self.billing.deliver(USAGE, request):
                records = []
                for rid, data in batch:
                    rec = usage_pb2.RatedUsage.FromString(data)
                    rec.record_id = rid
                    records.append(rec)
                yield pb.UsageBatch(records=records)
        except InvalidArgument as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def StreamEvents(self, request: pb.StreamRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EventBatch]:
        try:
            async for batch in self.billing.deliver(EVENTS, request):
                yield pb.EventBatch(events=[
                    pb.EventRecord(record_id=rid, event=events_pb2.Event.FromString(data))
                    for rid, data in batch])
        except InvalidArgument as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def Ack(self, request: pb.AckRequest,
                  context: grpc.aio.ServicerContext) -> pb.AckAnswer:
        try:
            n = await self.billing.ack(request.feed, request.group, list(request.record_ids))
        except InvalidArgument as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.AckAnswer(acked=n)

    async def GetUsage(self, request: pb.GetUsageRequest,
                       context: grpc.aio.ServicerContext) -> pb.GetUsageAnswer:
        try:
            return await self.billing.get_usage(request)
        except InvalidArgument as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises


BILLING = pb.DESCRIPTOR.services_by_name["Billing"]
