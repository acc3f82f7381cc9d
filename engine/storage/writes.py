"""A batch's account writes as tables (kernels/apply_calls.py writes the apply's calls from them),
built by the charging path from its kernels' outputs, or from AccountWrite objects."""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tollgate.engine.charging.kernels.account_tables import (
    FLAG_CREATED,
    FLAG_KEEP,
    FLAG_RESCORE,
)
from tollgate.engine.charging.kernels.apply_calls import (
    G_CHAIN,
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
    PK_COLUMNS,
    S_COLUMNS,
    S_FLAG,
    S_ID_AT,
    S_ID_LEN,
    SET_COLUMNS,
    apply_calls,
    call_cuts,
    call_plan,
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
    chained_after: int = 0  # the writer token of the write whose outcome `expected_version`
    # is (the account's `w` must be it too: a write computed before that one landed); 0: none


_PROCESS = secrets.randbits(30) + 1
_BATCHES = itertools.count(1)


def writer_token() -> int:
    """A token for one apply (apply.lua sets it as each account's `w`), unique to it: random
    per process, then counted. A chained write checks the token of the batch it was computed
    after (with its version), so two writers' tokens must not meet; an old token met again
    would also need the version it was set with, and versions only grow."""
    return (_PROCESS << 32) | (next(_BATCHES) & 0xFFFF_FFFF)


@dataclass(frozen=True, slots=True)
class KeyTable:
    """Every partition's keys (kernels/apply_calls `keys_text` and `parts`): its usage stream,
    event stream and open-session zset, then the prefixes of its account and session keys."""

    text: np.ndarray
    parts: np.ndarray  # a row per partition number, PK_* spans in text


@functools.cache
def key_table(partitions: int) -> KeyTable:
    """The keys of partitions 0 .. partitions - 1 (built once per process)."""
    t = ByteTable()
    spans = t.spans([k.encode() for p in range(partitions) for k in (
        keys.usage_stream(p), keys.events_stream(p), keys.open_sessions(p),
        keys.account(p, ""), keys.session(p, ""))])
    return KeyTable(t.table(), spans.reshape(partitions, PK_COLUMNS))


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
        return self._joined(b"".join(pieces), pieces)

    def texts(self, texts: list[str]) -> np.ndarray:
        """spans() of the texts in UTF-8; ASCII ones (the usual ids) encoded in one step (a
        character is a byte)."""
        joined = "".join(texts)
        if not joined.isascii():
            return self.spans([x.encode() for x in texts])
        return self._joined(joined.encode(), texts)

    def _joined(self, data: bytes, parts: Sequence[bytes] | list[str]) -> np.ndarray:
        """Appends `data`, the parts end to end (each len() bytes long)."""
        out = np.empty((len(parts), 2), np.int64)  # np.stack costs twice as much
        lengths = out[:, 1]
        lengths[:] = np.fromiter(map(len, parts), np.int64, len(parts))
        np.cumsum(lengths, out=out[:, 0])
        out[:, 0] += self.add(data) - lengths
        return out

    def table(self) -> np.ndarray:
        return np.concatenate([np.frombuffer(p, np.uint8) if isinstance(p, bytes) else p
                               for p in self.pieces]) if self.pieces else np.zeros(0, np.uint8)


def moved(spans: np.ndarray, by: int) -> np.ndarray:
    """(offset, length) rows of strings whose table now starts `by` bytes later."""
    out = spans.copy()
    out[:, 0] += by
    return out


@dataclass(frozen=True, slots=True)
class Texts:
    """Strings end to end in UTF-8, with each one's (offset, length), a row each."""

    text: np.ndarray
    spans: np.ndarray

    @staticmethod
    def of(texts: list[str]) -> Texts:
        t = ByteTable()
        spans = t.texts(texts)
        return Texts(t.table(), spans)


@dataclass(slots=True)
class Writes:
    """Account writes (kernels/apply_calls's tables): what Store.apply_writes sends. A group
    (row of `groups`) is one account's write."""

    strings: np.ndarray  # every string named but the partitions' keys, end to end (uint8)
    groups: np.ndarray  # G_* rows (G_PART: the partition number)
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
        return [keys.account(p, self.text(at, n))
                for p, at, n in self.groups[:, [G_PART, G_ID_AT, G_ID_LEN]].tolist()]

    def created_sessions(self) -> list[str]:
        """The keys of the sessions the writes believe new."""
        out = []
        for p, lo, hi in self.groups[:, [G_PART, G_SESS_LO, G_SESS_HI]].tolist():
            out += [keys.session(p, self.text(at, n)) for at, n, flag in
                    self.sessions[lo:hi, [S_ID_AT, S_ID_LEN, S_FLAG]].tolist()
                    if flag == FLAG_CREATED]
        return out


def of_objects(writes: dict[int, list[AccountWrite]]) -> Writes:
    """The tables of AccountWrite objects, by partition (groups in the dict's order)."""
    strings = ByteTable()
    groups: list[list[int]] = []
    sets: list[tuple[int, ...]] = []
    sessions: list[tuple[int, ...]] = []
    records: list[tuple[int, int]] = []
    events: list[tuple[int, int]] = []
    for p, ws in writes.items():
        prefix = keys.account(p, "")
        for w in ws:
            if not w.key.startswith(prefix):
                raise ValueError(f"{w.key!r} is not an account key of partition {p}")
            at = strings.add(w.key[len(prefix):].encode())
            row = [0] * G_COLUMNS
            row[G_PART], row[G_VERSION], row[G_CHAIN] = p, w.expected_version, w.chained_after
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
    return Writes(strings.table(), table(groups, G_COLUMNS),
                  table(sets, SET_COLUMNS), table(sessions, S_COLUMNS), table(records, 2),
                  table(events, 2))


def warm_up() -> None:
    """Loads (or compiles) the apply's call planner and writer for the tables the store
    passes."""
    w = of_objects({0: [AccountWrite(keys.account(0, "a"), 0, {"f": 1}, [SessionWrite(
        "s", False, b"v")], [b"r"], [b"e"])]})
    k = key_table(1)
    order, calls = call_plan(w.groups, 1)
    call_cuts(np.zeros(0, np.int64), 1)  # called alone too (Store._calls_of)
    apply_calls(w.strings, k.text, k.parts, w.groups[order], w.sets, w.sessions, w.records,
                w.events, calls, np.zeros(40, np.uint8), 0, 1)
