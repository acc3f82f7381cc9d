"""account_writes' field names and values: every kind of change the charging kernel reports, named
as the account hash's layout names it (storage.state), with a new cycle's fields before them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tollgate.engine.charging.account_writes import PIECES, _sets
from tollgate.engine.charging.batch import (
    ACCOUNT_OUTPUTS,
    CYCLE,
    MEMBER_MRES,
    MEMBER_RESERVED,
    MEMBER_SPENT,
    MEMBER_USED,
    NOTIFIED,
    REMAINING,
    RESERVED,
)
from tollgate.engine.charging.kernels.apply_calls import (
    SET_A_AT,
    SET_A_LEN,
    SET_B_AT,
    SET_B_LEN,
    SET_C_AT,
    SET_C_LEN,
    SET_VALUE,
)
from tollgate.engine.storage.state import BUCKET_COUNTERS, MEMBER_COUNTERS
from tollgate.engine.storage.writes import ByteTable


def batch() -> SimpleNamespace:
    names = [b"data", b"voice-\xc3\xa9"]
    return SimpleNamespace(
        names=np.frombuffer(b"".join(names), np.uint8),
        bucket_names=np.array([[0, 4], [4, 8]], np.int64),
        buckets=[SimpleNamespace(reserved=10), SimpleNamespace(reserved=1000)],
        members=[(0, SimpleNamespace(subscriber_id="sub-a")),
                 (1, SimpleNamespace(subscriber_id="sub-b"))],
        slots=[(0, 5), (1, 77)],
        index={"acct-0": 0, "acct-1": 1})


def named(rows: np.ndarray, owners: np.ndarray, table: bytes) -> list[tuple[int, str, int]]:
    def text(at: int, n: int) -> str:
        return table[at:at + n].decode()
    return [(o, text(r[SET_A_AT], r[SET_A_LEN]) + text(r[SET_B_AT], r[SET_B_LEN])
             + text(r[SET_C_AT], r[SET_C_LEN]), r[SET_VALUE])
            for o, r in zip(owners.tolist(), rows.tolist(), strict=True)]


def test_every_change_is_named_as_the_account_hash_names_it() -> None:
    changes = [  # (account, what, index, value)
        *[(1, what, 1, -what) for what in range(len(ACCOUNT_OUTPUTS))],
        (0, REMAINING, 0, 5), (1, RESERVED, 1, -400), (1, NOTIFIED, 1, 80),
        (0, MEMBER_SPENT, 0, 7), (1, MEMBER_MRES, 1, 8),
        *[(1, MEMBER_USED, 3 + u, 100 + u) for u in range(3)],
        *[(0, MEMBER_RESERVED, u, 200 + u) for u in range(3)],
        (0, CYCLE, 0, 9), (1, CYCLE, 1, 10)]
    res = SimpleNamespace(change_rows=np.array(changes, np.int64))
    t = ByteTable()
    rows, owners = _sets(batch(), res, {"acct-1": {"cs": 1, "spent": 0}}, t)
    got = named(rows, owners, t.table().tobytes())
    assert got == [
        (1, "cs", 1), (1, "spent", 0),  # the renewal's, first: the kernel's values win
        *[(1, f, -what) for what, f in enumerate(PIECES[:len(ACCOUNT_OUTPUTS)])],
        (0, "b:data:rem", 5), (1, "b:voice-é:res", 600), (1, "b:voice-é:ntf", 80),
        (0, "m:sub-a:spent", 7), (1, "m:sub-b:mres", 8),
        (1, "m:sub-b:u1", 100), (1, "m:sub-b:u2", 101), (1, "m:sub-b:u3", 102),
        (0, "m:sub-a:r1", 200), (0, "m:sub-a:r2", 201), (0, "m:sub-a:r3", 202),
        (0, "cu:5", 9), (1, "cu:77", 10)]


def test_the_pieces_are_the_account_hashs_field_names() -> None:
    """The names storage.state reads buckets' and members' counters by."""
    assert PIECES[7:10] == tuple(c.decode() for c in BUCKET_COUNTERS)
    assert PIECES[11:19] == tuple(f":{c}" for c in MEMBER_COUNTERS)
