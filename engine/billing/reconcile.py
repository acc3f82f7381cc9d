"""`tollgate reconcile`: proves, per account, that the money (and bucket units) add up.

Money, per account (micros; records as they lie on the usage streams):

    init + topups - add-on prices - usage money - forfeits + adjustment credits
        = money (free) + mres (held by live reservations)

Every record carries its effect on the money balance in `money_micros` (a TOP_UP is negative,
an ADJUSTMENT is new price - old price), so this is `init - sum(money_micros) = money + mres`;
the account's `topups` counter must also equal minus the sum of its TOP_UP records.

Units, per bucket: initial = remaining + reserved + units charged from it in the records.
Buckets that renew are checked only while the account is in its first billing cycle (a
renewal resets the allowance without a record).

Consistent while traffic runs: each account is read together with its partition stream's
last entry id in one MULTI/EXEC, and only records up to that id count for it (the charging
apply writes balance and records in one atomic Lua call, so both sides are of one instant).
Records trimmed from a stream (billing retention) are not lost to it: the trimmer adds
what they did, per account, to the partition's carried totals (keys.carried) in the same
atomic call as the trim, and reconcile starts from those. The carried totals are read in the
same MULTI/EXEC as the accounts; a partition whose stream head moved during the scan is read
again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

import redis

from tollgate.engine.billing.export import (
    CHUNK,
    Progress,
    Totals,
    connect,
    iter_stream,
    partition_count,
    stream_id,
)
from tollgate.engine.billing.held import reservation_problems
from tollgate.engine.billing.retention import retention_notes
from tollgate.engine.storage import keys
from tollgate.engine.storage.session_blob import unpack_session
from tollgate.engine.storage.state import BucketMeta
from tollgate.v1 import usage_pb2

SNAPSHOT_CHUNK = 200
SESSION_READS = 10
"""Tries at reading a chunk of accounts with their open sessions in one instant, while new
sessions keep opening."""


class SessionsMoving(Exception):
    """Sessions kept opening while a partition was read: run again."""


@dataclass
class Books:
    """One account: its stored counters as of `cutoff`, and the sums of its records."""

    account_id: str
    partition: int
    cutoff: tuple[int, int]
    init: int
    topups: int
    money: int
    mres: int
    renewed: bool
    buckets: dict[str, tuple[int, int, int, bool]]  # id -> (initial, remaining, reserved, renew)
    records: Totals = field(default_factory=Totals)
    topup_records: int = 0
    bucket_taken: dict[str, int] = field(default_factory=dict)
    carried_money: int = 0  # what trimmed records did (keys.carried)
    reservations: list[str] = field(default_factory=list)  # engine/billing/held.py


    def problems(self) -> list[str]:
        out = list(self.reservations)
        left = self.init - self.records.money_micros - self.carried_money
        if left != self.money + self.mres:
            kinds = ", ".join(f"{k} {m}" for k, (_, m) in sorted(self.records.kinds.items()))
            out.append(f"{self.account_id}: money off by {self.money + self.mres - left}: "
                       f"init {self.init} - records {self.records.money_micros} ({kinds}) "
                       f"- trimmed records {self.carried_money} = "
                       f"{left}, but money {self.money} + reserved {self.mres} = "
                       f"{self.money + self.mres}")
        if -self.topup_records != self.topups:
            out.append(f"{self.account_id}: topups counter {self.topups} but TOP_UP records "
                       f"add {-self.topup_records}")
        for bid, (initial, rem, res, renew) in sorted(self.buckets.items()):
            if renew and self.renewed:
                continue
            taken = self.bucket_taken.get(bid, 0)
            if initial != rem + res + taken:
                out.append(f"{self.account_id}/{bid}: units off by "
                           f"{rem + res + taken - initial}: initial {initial} != remaining "
                           f"{rem} + reserved {res} + records {taken}")
        return out


@dataclass
class Report:
    accounts: int = 0
    problems: list[str] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    """Totals of the records counted (those of existing accounts, up to their snapshot)."""
    buckets_checked: int = 0
    buckets_skipped: int = 0
    orphans: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = list(self.problems)
        out.append(f"{self.accounts} accounts, {len(self.problems)} discrepancies; "
                   f"{self.buckets_checked} buckets checked, {self.buckets_skipped} renewed "
                   f"buckets skipped")
        out += self.totals.lines()
        return out


def _books(account_id: str, p: int, h: dict[bytes, bytes], cutoff: tuple[int, int]) -> Books:
    buckets: dict[str, tuple[int, int, int, bool]] = {}
    for k, v in h.items():
        key = k.decode()
        if key.startswith("b:") and not key.endswith((":rem", ":res", ":ntf")):
            bid = key[2:]
            meta = BucketMeta.parse(v)
            buckets[bid] = (meta.initial, int(h.get(f"{key}:rem".encode(), 0)),
                            int(h.get(f"{key}:res".encode(), 0)), meta.renew)
    created = int(h.get(b"created", 0))
    return Books(account_id, p, cutoff, int(h.get(b"init", 0)), int(h.get(b"topups", 0)),
                 int(h.get(b"money", 0)), int(h.get(b"mres", 0)),
                 renewed=int(h.get(b"cs", 0)) > created, buckets=buckets)


def _account_ids(client: redis.Redis, p: int) -> list[str]:
    prefix = keys.account(p, "")
    out = []
    for k in client.scan_iter(match=prefix + "*", count=1000, _type="hash"):
        out.append(cast(bytes, k).decode()[len(prefix):])
    return sorted(out)


def _open_sessions(client: redis.Redis, p: int, ids: list[str]) -> dict[str, set[str]]:
    pipe = client.pipeline(transaction=False)
    for a in ids:
        pipe.smembers(keys.account_sessions(p, a))
    return {a: {m.decode() for m in members}
            for a, members in zip(ids, pipe.execute(), strict=True)}


def _read_instant(client: redis.Redis, p: int, ids: list[str]
                  ) -> tuple[list[Any], list[tuple[dict[bytes, bytes], dict[str, Any]]]]:
    """The stream's last and first entries and the carried totals, and per account its hash
    and its open sessions, all in one MULTI/EXEC. The open-session sets are read first: a
    session opened between the two reads is not in the transaction, so it is read again."""
    known = _open_sessions(client, p, ids)
    for _ in range(SESSION_READS):
        pipe = client.pipeline(transaction=True)
        pipe.xrevrange(keys.usage_stream(p), count=1)
        pipe.xrange(keys.usage_stream(p), count=1)
        pipe.hgetall(keys.carried(p))
        for a in ids:
            pipe.hgetall(keys.account(p, a))
            pipe.smembers(keys.account_sessions(p, a))
            for sid in sorted(known[a]):
                pipe.get(keys.session(p, sid))
        replies = iter(pipe.execute())
        stream = [next(replies) for _ in range(3)]
        accounts = []
        opened = False
        for a in ids:
            h, members = next(replies), {m.decode() for m in next(replies)}
            read = {sid: next(replies) for sid in sorted(known[a])}
            opened |= not members <= known[a]
            known[a] |= members
            accounts.append((h, {sid: unpack_session(sid, read[sid])
                                 for sid in members if sid in read}))
        if not opened:
            return stream, accounts
    raise SessionsMoving


def snapshot(client: redis.Redis, p: int, account_ids: list[str]
             ) -> tuple[dict[str, Books], bytes | None]:
    """The accounts with their open sessions, each with the stream's last id and the carried
    totals of trimmed records at the same instant (MULTI/EXEC); and the stream's first id
    (the scan's start)."""
    out: dict[str, Books] = {}
    head: bytes | None = None
    for k in range(0, len(account_ids), SNAPSHOT_CHUNK):
        ids = account_ids[k:k + SNAPSHOT_CHUNK]
        (last, first, carried), accounts = _read_instant(client, p, ids)
        if head is None and first:
            head = first[0][0]
        cutoff = stream_id(last[0][0]) if last else (0, 0)
        for a, (h, sessions) in zip(ids, accounts, strict=True):
            if h and b"money" in h:
                b = out[a] = _books(a, p, h, cutoff)
                b.reservations = reservation_problems(a, h, sessions)
                b.carried_money = int(carried.get(f"{a}|m".encode(), 0))
                b.topup_records = int(carried.get(f"{a}|t".encode(), 0))
                for bid in b.buckets:
                    b.bucket_taken[bid] = int(carried.get(f"{a}|b|{bid}".encode(), 0))
    return out, head


def _scan(client: redis.Redis, p: int, ids: list[str], account: str | None, chunk: int,
          bar: Progress) -> tuple[dict[str, int], dict[str, Books] | None]:
    """The books of a partition's accounts and the records of unknown accounts; None for
    the books when the stream was trimmed or sessions kept opening during the scan (read
    again)."""
    orphans: dict[str, int] = {}
    try:
        books, head = snapshot(client, p, ids)
    except SessionsMoving:
        return orphans, None
    until = max((b.cutoff for b in books.values()), default=(0, 0))
    if books and until > (0, 0):
        for rid, blob in iter_stream(client, keys.usage_stream(p), chunk=chunk,
                                     until=until):
            r = usage_pb2.RatedUsage.FromString(blob)
            b = books.get(r.account_id)
            bar.record()
            if b is None:
                if not account:
                    orphans[r.account_id] = orphans.get(r.account_id, 0) + 1
                continue
            if stream_id(rid) > b.cutoff:
                continue
            b.records.add(r)
            if r.kind == usage_pb2.TOP_UP:
                b.topup_records += r.money_micros
            for c in r.charges:
                if c.bucket_id:
                    b.bucket_taken[c.bucket_id] = (b.bucket_taken.get(c.bucket_id, 0)
                                                   + c.units)
    first = cast(list[tuple[bytes, Any]], client.xrange(keys.usage_stream(p), count=1))
    if head is not None and (not first or first[0][0] != head):
        return orphans, None
    return orphans, books


def reconcile(redis_url: str, account: str | None = None, chunk: int = CHUNK,
              progress: bool = True, progress_stream: IO[str] | None = None,
              on_books: Callable[[Books], None] | None = None) -> Report:
    client = connect(redis_url)
    try:
        n = partition_count(client)
        parts = [keys.partition_of(account, n)] if account else list(range(n))
        report = Report()
        # Reconcile covers all time: trimmed records count through the carried totals, but
        # the record totals it prints leave them out.
        report.totals.notes = retention_notes(client, parts, None)
        bar = Progress(len(parts), "reconcile", progress_stream, progress)
        for p in parts:
            ids = [account] if account else _account_ids(client, p)
            for _ in range(5):
                orphans, books = _scan(client, p, ids, account, chunk, bar)
                if books is not None:
                    break
            else:
                report.problems.append(f"partition {p}: trimmed or sessions opened while read; "
                                       "run again")
                continue
            if account and account not in books:
                report.problems.append(f"{account}: no such account")
            for b in books.values():
                report.accounts += 1
                report.problems += b.problems()
                report.totals.merge(b.records)
                for _, _, _, renew in b.buckets.values():
                    if renew and b.renewed:
                        report.buckets_skipped += 1
                    else:
                        report.buckets_checked += 1
                if on_books is not None:
                    on_books(b)
            if orphans:  # an account created after the scan is no orphan
                pipe = client.pipeline(transaction=False)
                for a in orphans:
                    pipe.exists(keys.account(p, a))
                for count, found in zip(orphans.values(), pipe.execute(), strict=True):
                    if not found:
                        report.orphans += count
            bar.partition_done(p)
        bar.draw(final=True)
        if report.orphans:
            report.problems.append(f"{report.orphans} records belong to no existing account")
        return report
    finally:
        client.close()
