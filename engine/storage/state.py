"""Account and session state as held in Redis hashes, parsed and cached in process.

Account hash `tg:{pN}:acct:<id>` (money in micros, units as integers, all counters
changed only through the per-account version check or by Lua that bumps `ver`):

    ver            version, +1 on every change
    plan           plan id (its current version prices)
    money / mres   free money / money held by live reservations
    climit         credit limit (money may go down to -climit)
    init / topups  initial money / sum of top-ups (for reconciliation)
    cap / spent    spending cap per cycle (0 = none) / money charged this cycle
    cs / ce        current cycle start / end, Unix ms
    capn lown exhn cap level announced (0/80/100), low-balance and exhausted flags (0/1)
    cu:<rg>        units billed this cycle for a rating group (tiers)
    b:<id>         bucket metadata, "rgs|unit|prio|exp|init|renew" (rgs comma-separated;
                   short, so the hash stays in Redis's compact listpack encoding)
    b:<id>:rem / :res / :ntf   free units / reserved units / used-% level announced
    m:<sub>        member caps, JSON {money, oct, sec, svc} (0 = none)
    m:<sub>:spent / :mres      money charged this cycle / money reserved
    m:<sub>:u1..u3 / :r1..r3   units charged this cycle / reserved, per unit type

Session `tg:{pN}:sess:<id>`: one packed value, the session's state and its stored answers,
written whole on each request (engine/storage/session_blob.py holds the layout, pack_session and
unpack_session). An open session has no TTL; an ended one keeps its answers for
answer_retention_s. Its subscriber and account never change; its expiry (Unix ms: its score
in the partition's open-session zset is at or before it) is when its reservations go stale.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import NamedTuple

from tollgate.engine.domain import Bucket, Member, Reservation, UnitType

NEVER = 2**62
"""Sort key of a bucket without expiry."""


class Rated(NamedTuple):
    """What a session has reported and been billed for one rating group so far: the first
    increment, steps, connect fee and rounding apply to these cumulative amounts once."""

    used: int
    billed: int
    rem: int  # price x units not yet charged (rounding), in the rate's price units
    charged: int

    @staticmethod
    def parse(v: bytes) -> Rated:
        used, billed, rem, charged = v.split(b"|")
        return Rated(int(used), int(billed), int(rem), int(charged))


NOTHING_RATED = Rated(0, 0, 0, 0)


@dataclass(slots=True)
class SessionState:
    session_id: str
    subscriber_id: str
    last_rn: int
    ended: bool
    is_event: bool
    last_time_ms: int
    answers: dict[int, bytes] = field(default_factory=dict)
    reservations: dict[int, Reservation] = field(default_factory=dict)
    expiry_ms: int = 0  # when an open session's reservations go stale (0: unknown)
    rated: dict[int, Rated] = field(default_factory=dict)
    cost: int = 0  # money charged to the whole session so far
    account_id: str = ""  # the account that opened it (its `acct` field; never changes)

    def owned_by(self, subscriber_id: str, account_id: str) -> bool:
        """Session ids are chosen by gateways, and every account of a partition shares its
        session keys: only the subscriber (and account) that opened a session may use it."""
        return self.subscriber_id == subscriber_id and self.account_id == account_id


@dataclass(slots=True)
class AccountState:
    """One account as of `version` (as read, or as a batch not yet applied will leave it:
    `token`); `sessions` holds the values (session_blob) of the
    sessions this process has seen, by id. Once the charging engine caches it
    (charging.cache.AccountCache), its balances and its buckets' and members' counters move
    on in the cache's tables (its `row`), not in this object."""

    account_id: str
    partition: int
    version: int
    plan_id: str
    money: int
    money_reserved: int
    credit_limit: int
    buckets: list[Bucket]
    sessions: dict[str, bytes] = field(default_factory=dict)
    cap: int = 0
    spent: int = 0
    cycle_start: int = 0
    cycle_end: int = 0
    cap_level: int = 0
    low_flag: int = 0
    exhausted_flag: int = 0
    cycle_units: dict[int, int] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    row: int = field(default=-1, repr=False, compare=False)  # in the account cache (-1: none)
    # The writer token of the batch whose predicted outcome this state is, until that batch
    # lands (0: the state as read or applied): a write computed on it checks that token.
    token: int = field(default=0, repr=False, compare=False)


class BucketMeta(NamedTuple):
    """A bucket's fixed part, as stored in its `b:<id>` field (a tuple: built for every
    bucket of every account read)."""

    rating_groups: tuple[int, ...]
    unit_type: UnitType
    priority: int
    expiry_ms: int
    initial: int
    renew: bool

    def value(self) -> str:
        rgs = ",".join(map(str, self.rating_groups))
        return (f"{rgs}|{int(self.unit_type)}|{self.priority}|{self.expiry_ms}|{self.initial}|"
                f"{int(self.renew)}")

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def parse(v: bytes) -> BucketMeta:
        # Cached: the accounts of a plan carry the same bundles, so an account read for the
        # first time mostly finds its buckets' bytes parsed already (2.6 µs each otherwise).
        rgs, unit, prio, exp, init, renew = v.split(b"|")
        return BucketMeta(tuple(int(g) for g in rgs.split(b",") if g), UnitType(int(unit)),
                          int(prio), int(exp), int(init), renew == b"1")


def bucket_fields(b: Bucket) -> dict[str, str | int]:
    meta = BucketMeta(tuple(b.rating_groups), b.unit_type, b.priority, b.expiry_ms, b.initial,
                      b.renew)
    return {f"b:{b.bucket_id}": meta.value(),
            f"b:{b.bucket_id}:rem": b.remaining, f"b:{b.bucket_id}:res": b.reserved,
            f"b:{b.bucket_id}:ntf": b.notified}


def member_caps_value(money: int, units: list[int]) -> str:
    return json.dumps({"money": money, "oct": units[0], "sec": units[1], "svc": units[2]},
                      separators=(",", ":"))


MEMBER_COUNTERS = ("spent", "mres", "u1", "u2", "u3", "r1", "r2", "r3")
MEMBER_COUNTER_FIELDS = frozenset(c.encode() for c in MEMBER_COUNTERS)
BUCKET_COUNTERS = (b":rem", b":res", b":ntf")


def parse_account(account_id: str, partition: int, h: dict[bytes, bytes]) -> AccountState:
    # Read for every account not cached (a cold INITIAL): fields are matched as bytes and
    # decoded only where a string is kept.
    metas: dict[bytes, bytes] = {}
    counters: dict[bytes, int] = {}
    member_caps: dict[bytes, bytes] = {}
    cycle_units: dict[int, int] = {}
    for k, v in h.items():
        head = k[:2]
        if head == b"b:":
            if k.endswith(BUCKET_COUNTERS):
                counters[k] = int(v)
            else:
                metas[k[2:]] = v
        elif head == b"m:":
            if k.count(b":") > 1 and k.rpartition(b":")[2] in MEMBER_COUNTER_FIELDS:
                counters[k] = int(v)
            else:
                member_caps[k[2:]] = v
        elif head == b"cu" and k[2:3] == b":":
            cycle_units[int(k[3:])] = int(v)
    count = counters.get
    members: dict[str, Member] = {}
    for sub, v in member_caps.items():
        caps = json.loads(v)
        pre = b"m:" + sub + b":"
        sid = sub.decode()
        members[sid] = Member(
            sid, caps["money"], [caps["oct"], caps["sec"], caps["svc"]],
            spent=count(pre + b"spent", 0), money_reserved=count(pre + b"mres", 0),
            used_units=[count(pre + b"u1", 0), count(pre + b"u2", 0), count(pre + b"u3", 0)],
            reserved_units=[count(pre + b"r1", 0), count(pre + b"r2", 0),
                            count(pre + b"r3", 0)])
    buckets = []
    for bid, value in metas.items():
        m = BucketMeta.parse(value)
        pre = b"b:" + bid + b":"
        buckets.append(Bucket(
            bucket_id=bid.decode(), rating_groups=m.rating_groups, unit_type=m.unit_type,
            initial=m.initial, remaining=count(pre + b"rem", 0),
            reserved=count(pre + b"res", 0), priority=m.priority, expiry_ms=m.expiry_ms,
            renew=m.renew, notified=count(pre + b"ntf", 0)))
    if len(buckets) > 1:
        buckets.sort(key=lambda b: (b.priority, b.expiry_ms or NEVER, b.bucket_id))
    get = h.get
    return AccountState(
        account_id=account_id, partition=partition, version=int(h[b"ver"]),
        plan_id=h[b"plan"].decode(), money=int(h[b"money"]), money_reserved=int(get(b"mres", 0)),
        credit_limit=int(get(b"climit", 0)), buckets=buckets, cap=int(get(b"cap", 0)),
        spent=int(get(b"spent", 0)), cycle_start=int(get(b"cs", 0)),
        cycle_end=int(get(b"ce", 0)), cap_level=int(get(b"capn", 0)),
        low_flag=int(get(b"lown", 0)), exhausted_flag=int(get(b"exhn", 0)),
        cycle_units=cycle_units, members=members)
