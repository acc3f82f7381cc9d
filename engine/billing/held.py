"""Reconcile's reservation check: what an account's counters hold is what its live sessions
hold, and nothing holds less than nothing.

An account's reservation counters (engine/storage/state.py) are `mres` (money), `b:<id>:res` (bucket
units) and, per member, `m:<sub>:mres` and `m:<sub>:r1..r3`. Each must be the sum of the
reservations of the open sessions in the account's open-session set that the account opened
(engine/storage/session_blob.py). A session used by another account (a take-over) leaves one account
short (negative) and the other holding what no session will release: both show here.
"""

from __future__ import annotations

from collections import Counter

from tollgate.engine.storage.state import SessionState

RESERVATION_COUNTERS = frozenset({b"mres", b"r1", b"r2", b"r3"})
"""The member counters that reservations move (the others count what was charged)."""


def reservation_counters(h: dict[bytes, bytes]) -> dict[str, int]:
    """The account hash's reservation counters, by field name."""
    out = {"mres": int(h.get(b"mres", 0))}
    for k, v in h.items():
        bucket = k.startswith(b"b:") and k.endswith(b":res")
        member = (k.startswith(b"m:") and k.count(b":") > 1
                  and k.rpartition(b":")[2] in RESERVATION_COUNTERS)
        if bucket or member:
            out[k.decode()] = int(v)
    return out


def held_by_sessions(account_id: str, sessions: dict[str, SessionState | None]
                     ) -> tuple[Counter[str], list[str]]:
    """What the account's open sessions (id -> session) hold, per counter field, and the
    sessions of its open set that cannot hold anything for it."""
    held: Counter[str] = Counter()
    problems = []
    for sid, s in sorted(sessions.items()):
        if s is None or s.ended:
            problems.append(f"{account_id}: session {sid!r} of its open set is not open")
            continue
        if s.account_id != account_id:
            problems.append(f"{account_id}: session {sid!r} of its open set belongs to "
                            f"account {s.account_id!r}")
            continue
        sub = s.subscriber_id
        for r in s.reservations.values():
            if r.bucket_id:
                held[f"b:{r.bucket_id}:res"] += r.amount
            else:
                held["mres"] += r.amount
                if r.member:
                    held[f"m:{sub}:mres"] += r.amount
            if r.member and r.unit_type:
                held[f"m:{sub}:r{r.unit_type}"] += r.units
    return held, problems


def reservation_problems(account_id: str, h: dict[bytes, bytes],
                         sessions: dict[str, SessionState | None]) -> list[str]:
    """Negative reservation counters, and counters that differ from what the account's live
    sessions hold (read in the same instant as the account)."""
    held, problems = held_by_sessions(account_id, sessions)
    counters = reservation_counters(h)
    for name in sorted(counters.keys() | held.keys()):
        value, expected = counters.get(name, 0), held.get(name, 0)
        if value < 0:
            problems.append(f"{account_id}: negative reservation {name} = {value}")
        elif value != expected:
            problems.append(f"{account_id}: {name} holds {value} but its live sessions hold "
                            f"{expected}")
    return problems
