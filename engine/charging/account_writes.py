"""A batch's account writes as the store's tables (storage.writes), from the kernels' outputs:
each account's changed fields, each request's session, its usage records and events. Python
steps here are per batch, per changed member or per event, never per request or field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tollgate.engine.charging.batch import KernelBatch, KernelResult
from tollgate.engine.charging.cache import T_RESERVED
from tollgate.engine.charging.kernels.account_tables import (
    CYCLE,
    MEMBER_RESERVED,
    MEMBER_SPENT,
    MEMBER_USED,
    PIECE_TEXT,
    account_tables,
)
from tollgate.engine.charging.kernels.apply_calls import G_CHAIN
from tollgate.engine.charging.kernels.items import Q_COLUMNS
from tollgate.engine.charging.kernels.sessions import HEAD_COLUMNS
from tollgate.engine.storage.writes import ByteTable, Texts, Writes, moved

NONE = np.zeros((0, 4), np.int64)  # no renewals, no events
NO_NAMES = np.zeros((0, 2), np.int64)


@dataclass(slots=True)
class SessionValues:
    """Each request's session after it, packed by the session kernel: its bytes are
    buf[spans[0, n]:spans[1, n]]."""

    buf: np.ndarray
    spans: np.ndarray
    expiry: np.ndarray  # when its reservations go stale (ms)
    rescore: np.ndarray  # 1: set its open-session score again


@dataclass(slots=True)
class RecordBytes:
    """The batch's usage records, encoded end to end (record r: buf[spans[0, r]:spans[1, r]]),
    with each one's account position, in batch order."""

    buf: np.ndarray
    spans: np.ndarray
    accounts: np.ndarray


def account_writes(kb: KernelBatch, res: KernelResult, values: SessionValues,
                   session_ids: Texts, records: RecordBytes, events: list[tuple[int, bytes]]
                   ) -> Writes:
    """Group g is account g of the batch (every account is written: its version moves); a
    group on a state a batch in flight predicts is chained on that batch (G_CHAIN).
    `events`: (account position, Event bytes), in batch order. Python gathers the strings
    (the batch's id tables whole; names only of the members and cycle slots that moved) and
    the kernel (kernels/account_tables) builds the tables."""
    t = ByteTable()
    accounts = kb.accounts
    bases = np.array([t.add(kb.view.ids), t.add(kb.names), t.add(PIECE_TEXT),
                      t.add(values.buf), t.add(records.buf)], np.int64)
    changes = res.change_rows
    kinds = np.bincount(changes[:, 1], minlength=CYCLE + 1)  # changes of each kind
    # Each account's version and token (rows; nonzero: the state a batch in flight predicts).
    numbers = np.array([(a.version, a.token) for a in accounts], np.int64).reshape(-1, 2).T.copy()
    groups, sets, sessions, record_rows, event_rows = account_tables(
        bases, numbers[0],
        np.array([a.partition for a in accounts], np.int64),
        kb.requests, kb.view_rows, kb.view.owners, kb.view.arrays[0],
        moved(session_ids.spans, t.add(session_ids.text)), values.expiry, values.rescore,
        values.spans, changes, kb.bucket_names, kb.gathered.buckets[T_RESERVED],
        _member_names(kb, changes, kinds, t), _cycle_names(kb, changes, kinds, t),
        _renewals(kb, t), records.spans, records.accounts, _events(events, t))
    groups[:, G_CHAIN] = numbers[1]
    return Writes(t.table(), groups, sets, sessions, record_rows, event_rows)


def _member_names(kb: KernelBatch, changes: np.ndarray, kinds: np.ndarray, t: ByteTable
                  ) -> np.ndarray:
    """Per member its subscriber id's span, for the members whose counters moved."""
    out = np.zeros((len(kb.members), 2), np.int64)
    if kinds[MEMBER_SPENT:MEMBER_RESERVED + 1].any():
        what, i = changes[:, 1], changes[:, 2]
        of = (what >= MEMBER_SPENT) & (what <= MEMBER_RESERVED)
        m = np.unique(np.where(what[of] >= MEMBER_USED, i[of] // 3, i[of]))
        out[m] = t.texts([kb.members[k][1].subscriber_id for k in m.tolist()])
    return out


def _cycle_names(kb: KernelBatch, changes: np.ndarray, kinds: np.ndarray, t: ByteTable
                 ) -> np.ndarray:
    """The field name of each CYCLE change, in order."""
    if not kinds[CYCLE]:
        return NO_NAMES
    slots = changes[changes[:, 1] == CYCLE, 2]
    return t.texts([f"cu:{rg}" for rg in kb.slots[1, slots].tolist()])


def _renewals(kb: KernelBatch, t: ByteTable) -> np.ndarray:
    """The fields new billing cycles set: account, name at, length, value."""
    renewals = kb.renewals
    if not renewals:
        return NONE
    fields = [(kb.index[a], f, v) for a, sets in renewals.items() for f, v in sets.items()]
    out = np.empty((len(fields), 4), np.int64)
    out[:, 0] = [a for a, _, _ in fields]
    out[:, 1:3] = t.texts([f for _, f, _ in fields])
    out[:, 3] = [v for _, _, v in fields]
    return out


def _events(events: list[tuple[int, bytes]], t: ByteTable) -> np.ndarray:
    """The events: account, bytes at, length."""
    if not events:
        return NONE
    out = np.empty((len(events), 4), np.int64)
    out[:, 0] = [a for a, _ in events]
    out[:, 1:3] = t.spans([e for _, e in events])
    out[:, 3] = 0
    return out


def warm_up() -> None:
    """Loads (or compiles) the tables kernel for the arrays the engine passes."""
    empty, pairs = np.zeros(0, np.int64), np.zeros((2, 0), np.int64)
    account_tables(np.zeros(5, np.int64), empty, empty, np.zeros((0, Q_COLUMNS), np.int64),
                   empty, np.zeros((0, 4), np.int64), np.zeros((0, HEAD_COLUMNS), np.int64),
                   NO_NAMES, empty, empty, pairs, NONE, pairs, empty, NO_NAMES, NO_NAMES,
                   NONE, pairs, empty, NONE)
