"""Account and session state as held in Redis hashes, parsed and cached in process."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine.domain import Bucket, Reservation, UnitType

NEVER = 2**62
"""Sort key of a bucket without expiry."""


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


@dataclass(slots=True)
class AccountState:
    """One account as of `version`; `sessions` holds the ones this process has seen."""

    account_id: str
    partition: int
    version: int
    plan_id: str
    money: int
    money_reserved: int
    credit_limit: int
    buckets: list[Bucket]
    sessions: dict[str, SessionState] = field(default_factory=dict)

    def bucket_index(self, bucket_id: str) -> int:
        for k, b in enumerate(self.buckets):
            if b.bucket_id == bucket_id:
                return k
        raise KeyError(bucket_id)


def _s(v: bytes) -> str:
    return v.decode()


def bucket_fields(b: Bucket) -> dict[str, str | int]:
    meta = {"rgs": list(b.rating_groups), "unit": int(b.unit_type), "prio": b.priority,
            "exp": b.expiry_ms, "init": b.initial}
    return {f"b:{b.bucket_id}": json.dumps(meta, separators=(",", ":")),
            f"b:{b.bucket_id}:rem": b.remaining, f"b:{b.bucket_id}:res": b.reserved}


def parse_account(account_id: str, partition: int, h: dict[bytes, bytes]) -> AccountState:
    metas: dict[str, dict[str, Any]] = {}
    counters: dict[str, int] = {}
    for k, v in h.items():
        key = _s(k)
        if key.startswith("b:"):
            if key.endswith(":rem") or key.endswith(":res"):
                counters[key] = int(v)
            else:
                metas[key[2:]] = json.loads(v)
    buckets = []
    for bid, m in metas.items():
        buckets.append(Bucket(
            bucket_id=bid, rating_groups=tuple(m["rgs"]), unit_type=UnitType(m["unit"]),
            initial=int(m["init"]), remaining=counters.get(f"b:{bid}:rem", 0),
            reserved=counters.get(f"b:{bid}:res", 0), priority=int(m["prio"]),
            expiry_ms=int(m["exp"])))
    buckets.sort(key=lambda b: (b.priority, b.expiry_ms or NEVER, b.bucket_id))
    return AccountState(
        account_id=account_id, partition=partition, version=int(h[b"ver"]),
        plan_id=_s(h[b"plan"]), money=int(h[b"money"]), money_reserved=int(h.get(b"mres", 0)),
        credit_limit=int(h.get(b"climit", 0)), buckets=buckets)


def reservation_value(r: Reservation) -> str:
    return f"{r.bucket_id}|{r.units}|{r.amount}"


def parse_session(session_id: str, h: dict[bytes, bytes]) -> SessionState | None:
    if not h:
        return None
    s = SessionState(
        session_id=session_id, subscriber_id=_s(h.get(b"sub", b"")), last_rn=int(h[b"rn"]),
        ended=h.get(b"st") != b"open", is_event=h.get(b"st") == b"event",
        last_time_ms=int(h.get(b"t", 0)))
    for k, v in h.items():
        if k.startswith(b"a:"):
            s.answers[int(k[2:])] = v
        elif k.startswith(b"r:"):
            rg = int(k[2:])
            bucket_id, units, amount = _s(v).split("|")
            s.reservations[rg] = Reservation(rg, bucket_id, int(units), int(amount))
    return s
