"""Reconcile's reservation check: what an account's counters hold is what its live sessions
hold, and nothing holds less than nothing.

An account's reservation counters (engine/state.py) are `mres` (money), `b:<id>:res` (bucket
units) and, per member, `m:<sub>:mres` and `m:<sub>:r1..r3`. Each must be the sum of the
reservations (`r:<rg>` fields) of the open sessions in the account's open-session set whose
`acct` is the account. A session used by another account (a take-over) leaves one account
short (negative) and the other holding what no session will release: both show here.
"""

from __future__ import annotations

from collections import Counter

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


def held_by_sessions(account_id: str, sessions: dict[str, dict[bytes, bytes]]
                     ) -> tuple[Counter[str], list[str]]:
    """What the account's open sessions (id -> session hash) hold, per counter field, and
    the sessions of its open set that cannot hold anything for it."""
    held: Counter[str] = Counter()
    problems = []
    for sid, h in sorted(sessions.items()):
        if h.get(b"st") != b"open":
            problems.append(f"{account_id}: session {sid!r} of its open set is not open")
            continue
        owner = h.get(b"acct", b"").decode()
        if owner != account_id:
            problems.append(f"{account_id}: session {sid!r} of its open set belongs to "
                            f"account {owner!r}")
            continue
        sub = h.get(b"sub", b"").decode()
        for k, v in h.items():
            if not k.startswith(b"r:"):
                continue
            bucket, units, amount, unit, member = v.decode().split("|")
            if bucket:
                held[f"b:{bucket}:res"] += int(amount)
            else:
                held["mres"] += int(amount)
                if member == "1":
                    held[f"m:{sub}:mres"] += int(amount)
            if member == "1" and unit != "0":
                held[f"m:{sub}:r{unit}"] += int(units)
    return held, problems


def reservation_problems(account_id: str, h: dict[bytes, bytes],
                         sessions: dict[str, dict[bytes, bytes]]) -> list[str]:
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
