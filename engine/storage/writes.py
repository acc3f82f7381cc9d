"""A batch's account writes as tables (kernels/apply_calls.py writes the apply's calls from them),
built by the charging path from its kernels' outputs, or from AccountWrite objects."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tollgate.engine.charging.kernels.apply_calls import (
    G_COLUMNS,
    G_EV_HI,
    G_EV_LO,
    G_ID_AT,
    G_ID_LEN,
    G_PART,
    G_REC_HI,
    G_REC_LO,
    G_SESS_HI,
    G_SESS_LO,
    G_SET_HI,
    G_SET_LO,
    G_VERSION,
    PK_ACCT_AT,
    PK_ACCT_LEN,
    PK_COLUMNS,
    PK_SESS_AT,
    PK_SESS_LEN,
    S_COLUMNS,
    S_FLAG,
    S_ID_AT,
    S_ID_LEN,
    SET_COLUMNS,
    apply_calls,
)
from tollgate.engine.storage import keys


@dataclass(slots=True)
class SessionWrite:
    session_id: str
    ended: bool
    value: bytes  # the whole session (engine/storage/session_blob.py), as apply.lua sets it
    expiry_ms: int = 0  # open sessions: when its reservations go stale (the sweeper's clock)
    created: bool = False  # the writer believes it new: if it exists, the account's write is
    # refused like a version conflict (so a new session needs no read before its INITIAL)
    rescore: bool = False  # an open session's expiry is earlier than its zset score may be
    # (or that score is unknown): the score is set again. Otherwise the score stays, and
    # the sweeper, finding it due, moves it to the `exp` field's later expiry


@dataclass(slots=True)
class AccountWrite:
    """What one account group of a batch changes, applied only if the version still matches.
    Fields are given their new values: on the version they were computed from, that is the
    same as adding the changes, and Redis sets them in one HSET with the new version."""

    key: str
    expected_version: int
    sets: dict[str, int]
    sessions: list[SessionWrite] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)


FLAG_KEEP, FLAG_CREATED, FLAG_RESCORE = 48, 49, 50
"""A session write's flag (apply.lua's `created`): '0', '1' (the writer believes it new), '2'
(set its open-session score again)."""


@functools.cache
def partition_keys(p: int) -> tuple[bytes, ...]:
    """A partition's usage stream, event stream and open-session zset keys, then the prefixes of
    its account and session keys (kernels/apply_calls PK_* order)."""
    return tuple(k.encode() for k in (
        keys.usage_stream(p), keys.events_stream(p), keys.open_sessions(p),
        keys.account(p, ""), keys.session(p, "")))


class ByteTable:
    """A byte table built piece by piece: each piece's offset is known when it is added."""

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes | np.ndarray] = []
        self.size = 0

    def add(self, piece: bytes | np.ndarray) -> int:
        """Appends a piece; returns its offset."""
        at = self.size
        self.pieces.append(piece)
        self.size += len(piece)
        return at

    def spans(self, pieces: Sequence[bytes]) -> np.ndarray:
        """Appends pieces end to end; returns (offset, length) of each, a row per piece."""
        lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
        at = self.add(b"".join(pieces))
        ends = np.cumsum(lengths) + at
        return np.stack((ends - lengths, lengths), axis=1)

    def table(self) -> np.ndarray:
        return np.concatenate([np.frombuffer(p, np.uint8) if isinstance(p, bytes) else p
                               for p in self.pieces]) if self.pieces else np.zeros(0, np.uint8)


def encoded(texts: list[str]) -> list[bytes]:
    """Each text in UTF-8; ASCII ones (the usual ids) in one step for all."""
    joined = "".join(texts)
    if not joined.isascii():
        return [t.encode() for t in texts]
    data = joined.encode()
    out = []
    at = 0
    for n in map(len, texts):
        out.append(data[at:at + n])
        at += n
    return out


@dataclass(slots=True)
class Writes:
    """Account writes (kernels/apply_calls's tables): what Store.apply_writes sends. A group
    (row of `groups`) is one account's write."""

    strings: np.ndarray  # every string named, end to end (uint8)
    partitions: np.ndarray  # the partition number of each row of `parts`
    parts: np.ndarray  # PK_* rows
    groups: np.ndarray  # G_* rows
    sets: np.ndarray  # SET_* rows
    sessions: np.ndarray  # S_* rows
    records: np.ndarray  # (offset, length) rows
    events: np.ndarray  # (offset, length) rows

    def __len__(self) -> int:
        return int(self.groups.shape[0])

    def text(self, at: int, n: int) -> str:
        return self.strings[at:at + n].tobytes().decode()

    def account_keys(self) -> list[str]:
        """Each group's account key."""
        return [self.text(*self.parts[pr, [PK_ACCT_AT, PK_ACCT_LEN]].tolist()) + self.text(at, n)
                for pr, at, n in self.groups[:, [G_PART, G_ID_AT, G_ID_LEN]].tolist()]

    def created_sessions(self) -> list[str]:
        """The keys of the sessions the writes believe new."""
        out = []
        for pr, lo, hi in self.groups[:, [G_PART, G_SESS_LO, G_SESS_HI]].tolist():
            prefix = self.text(*self.parts[pr, [PK_SESS_AT, PK_SESS_LEN]].tolist())
            out += [prefix + self.text(at, n) for at, n, flag in
                    self.sessions[lo:hi, [S_ID_AT, S_ID_LEN, S_FLAG]].tolist()
                    if flag == FLAG_CREATED]
        return out


def part_rows(partitions: list[int], strings: ByteTable) -> np.ndarray:
    """The `parts` table of these partitions (their keys added to `strings`)."""
    spans = strings.spans([k for p in partitions for k in partition_keys(p)])
    return spans.reshape(len(partitions), PK_COLUMNS)


def of_objects(writes: dict[int, list[AccountWrite]]) -> Writes:
    """The tables of AccountWrite objects, by partition (groups in the dict's order)."""
    strings = ByteTable()
    partitions = list(writes)
    parts = part_rows(partitions, strings)
    groups: list[list[int]] = []
    sets: list[tuple[int, ...]] = []
    sessions: list[tuple[int, ...]] = []
    records: list[tuple[int, int]] = []
    events: list[tuple[int, int]] = []
    for pr, (p, ws) in enumerate(writes.items()):
        prefix = keys.account(p, "")
        for w in ws:
            if not w.key.startswith(prefix):
                raise ValueError(f"{w.key!r} is not an account key of partition {p}")
            at = strings.add(w.key[len(prefix):].encode())
            row = [0] * G_COLUMNS
            row[G_PART], row[G_VERSION] = pr, w.expected_version
            row[G_ID_AT], row[G_ID_LEN] = at, strings.size - at
            row[G_SET_LO] = len(sets)
            for f, v in w.sets.items():
                at = strings.add(f.encode())
                sets.append((at, strings.size - at, 0, 0, 0, 0, v))
            row[G_SET_HI], row[G_SESS_LO] = len(sets), len(sessions)
            for s in w.sessions:
                sid = s.session_id.encode()
                at, value = strings.add(sid), strings.add(s.value)
                sessions.append((at, len(sid),
                                 FLAG_CREATED if s.created else FLAG_RESCORE if s.rescore
                                 else FLAG_KEEP, int(s.ended), s.expiry_ms, value,
                                 len(s.value)))
            row[G_SESS_HI], row[G_REC_LO] = len(sessions), len(records)
            records += [(strings.add(r), len(r)) for r in w.records]
            row[G_REC_HI], row[G_EV_LO] = len(records), len(events)
            events += [(strings.add(e), len(e)) for e in w.events]
            row[G_EV_HI] = len(events)
            groups.append(row)

    def table(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
        return np.array(rows, np.int64).reshape(-1, width)
    return Writes(strings.table(), np.array(partitions, np.int64), parts, table(groups, G_COLUMNS),
                  table(sets, SET_COLUMNS), table(sessions, S_COLUMNS), table(records, 2),
                  table(events, 2))



def warm_up() -> None:
    """Loads (or compiles) the apply's call writer for the tables the store passes."""
    w = of_objects({0: [AccountWrite(keys.account(0, "a"), 0, {"f": 1}, [SessionWrite(
        "s", False, b"v")], [b"r"], [b"e"])]})
    apply_calls(w.strings, w.parts, w.groups, w.sets, w.sessions, w.records, w.events,
                np.array([[0, 1]], np.int64), np.zeros(40, np.uint8), 0)
