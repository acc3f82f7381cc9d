"""A session's state and stored answers as one packed value (the string at its session key).

The value is a MessagePack array, written whole by every request that moves the session
(apply.lua: one SET, with the answer retention as its TTL once the session ended):

    [FORMAT, rn, st, t, sub, acct, exp, mc, answers, reservations, rated]

    st            0 open, 1 ended, 2 event
    answers       {rn: answer bytes} (the newest answers_kept, oldest first)
    reservations  [[rg, bucket_id, units, amount, unit_type, member (a bool)], ...]
    rated         {rg: [used, billed, rem, charged]} (engine.storage.state.Rated)

Integers are MessagePack integers (exact to int64). The charging path reads and writes
values with kernels (engine/charging/kernels/sessions.py: byte for byte what pack_session
writes); everything else through the functions here. Lua never reads a value: the sweeper
(sweep.lua) is handed the reservations it releases and swaps the value only if it is still
the one the sweeper read. Sessions written by an earlier release were hashes of
fields; convert_hash_sessions turns them into values once, at start.
"""

from __future__ import annotations

import msgpack

from tollgate.engine.domain import Reservation
from tollgate.engine.storage.state import Rated, SessionState

FORMAT = 1
OPEN, ENDED, EVENT = 0, 1, 2

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def pack_session(s: SessionState) -> bytes:
    st = EVENT if s.is_event else ENDED if s.ended else OPEN
    return _pack([
        FORMAT, s.last_rn, st, s.last_time_ms, s.subscriber_id, s.account_id, s.expiry_ms,
        # A Reservation is a tuple of the value's fields, in order: packed as it is.
        s.cost, s.answers, list(s.reservations.values()), s.rated])


def unpack_session(session_id: str, value: bytes | None) -> SessionState | None:
    """The session a value holds (None: no session)."""
    if not value:
        return None
    fmt, rn, st, t, sub, acct, exp, cost, answers, held, rated = msgpack.unpackb(
        value, use_list=False, strict_map_key=False)
    if fmt != FORMAT:
        raise ValueError(f"session {session_id!r}: unknown value format {fmt}")
    return SessionState(
        session_id, sub, rn, st != OPEN, st == EVENT, t, answers,
        {r[0]: Reservation(*r) for r in held}, exp,
        {rg: Rated._make(v) for rg, v in rated.items()}, cost, acct)


def reservation_value(r: Reservation) -> str:
    """A reservation as sweep.lua takes it: "bucket_id|units|amount|unit_type|member"."""
    return f"{r.bucket_id}|{r.units}|{r.amount}|{r.unit_type}|{int(r.member)}"


def parse_session_hash(session_id: str, h: dict[bytes, bytes]) -> SessionState | None:
    """A session as an earlier release kept it, a hash: rn, st (open|ended|event), t, sub,
    acct, a:<rn> (answers), r:<rg> = reservation_value, exp, c:<rg> = "used|billed|rem|
    charged", mc. Read only to convert it (convert_hash_sessions)."""
    if not h:
        return None
    st = h.get(b"st")
    s = SessionState(
        session_id=session_id, subscriber_id=h.get(b"sub", b"").decode(),
        last_rn=int(h[b"rn"]), ended=st != b"open", is_event=st == b"event",
        last_time_ms=int(h.get(b"t", 0)), expiry_ms=int(h.get(b"exp", 0)),
        cost=int(h.get(b"mc", 0)), account_id=h.get(b"acct", b"").decode())
    for k, v in h.items():
        if k.startswith(b"a:"):
            s.answers[int(k[2:])] = v
        elif k.startswith(b"c:"):
            s.rated[int(k[2:])] = Rated.parse(v)
        elif k.startswith(b"r:"):
            rg = int(k[2:])
            bucket_id, units, amount, unit, member = v.decode().split("|")
            s.reservations[rg] = Reservation(rg, bucket_id, int(units), int(amount), int(unit),
                                             member == "1")
    s.answers = dict(sorted(s.answers.items()))
    return s
