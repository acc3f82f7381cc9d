"""kernels.account_tables against its plain-Python twin on any batch's outputs, and the field names
it gives every kind of change, as the account hash's layout names them (storage.state)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_session_kernels import FAST
from tollgate.engine.charging.kernels import account_tables as kernel
from tollgate.engine.charging.kernels.account_cache_reference import ACCOUNT_OUTPUTS
from tollgate.engine.charging.kernels.account_tables_reference import (
    account_tables as reference,
)
from tollgate.engine.charging.kernels.account_tables_reference import (
    change_rows as reference_change_rows,
)
from tollgate.engine.charging.kernels.apply_calls import (
    G_SET_HI,
    G_SET_LO,
    SET_A_AT,
    SET_A_LEN,
    SET_B_AT,
    SET_B_LEN,
    SET_C_AT,
    SET_C_LEN,
    SET_VALUE,
)
from tollgate.engine.charging.kernels.charge import A_EXH_FLAG
from tollgate.engine.charging.kernels.items import Q_ACCT, Q_COLUMNS, Q_TYPE
from tollgate.engine.charging.kernels.sessions import H_EXISTS, HEAD_COLUMNS
from tollgate.engine.domain import RequestType
from tollgate.engine.storage.state import BUCKET_COUNTERS, MEMBER_COUNTERS

INT = st.integers(-(2**40), 2**40)
SPAN = st.tuples(st.integers(0, 10_000), st.integers(0, 200))


def test_the_kernels_constants_are_the_domains() -> None:
    assert (kernel.TERMINATION, kernel.EVENT) == (RequestType.TERMINATION, RequestType.EVENT)
    # The account outputs come first: A_MONEY .. A_EXH_FLAG, then the other kinds.
    assert len(ACCOUNT_OUTPUTS) == kernel.REMAINING == A_EXH_FLAG + 1


def test_the_pieces_are_the_account_hashs_field_names() -> None:
    """The names storage.state reads buckets' and members' counters by."""
    assert kernel.PIECES[7:10] == tuple(c.decode() for c in BUCKET_COUNTERS)
    assert kernel.PIECES[11:19] == tuple(f":{c}" for c in MEMBER_COUNTERS)


def spans(draw: st.DrawFn, n: int) -> np.ndarray:
    return np.array(draw(st.lists(SPAN, min_size=n, max_size=n)), np.int64).reshape(-1, 2)


def owned(draw: st.DrawFn, owners: int, width: int) -> np.ndarray:
    """Rows of (owner, at, length, value...) as the renewals and events tables hold them."""
    rows = draw(st.lists(st.tuples(st.integers(0, owners - 1), *[INT] * (width - 1)),
                         max_size=4))
    return np.array(rows, np.int64).reshape(-1, width)


@st.composite
def inputs(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    n_a = draw(st.integers(1, 4))
    n = draw(st.integers(0, 8))
    n_b, n_m, n_rows = draw(st.integers(1, 3)), draw(st.integers(1, 3)), max(n, 1)
    requests = np.zeros((n, Q_COLUMNS), np.int64)
    requests[:, Q_ACCT] = draw(st.lists(st.integers(0, n_a - 1), min_size=n, max_size=n))
    requests[:, Q_TYPE] = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    heads = np.zeros((n_rows, HEAD_COLUMNS), np.int64)
    heads[:, H_EXISTS] = draw(st.lists(st.integers(0, 1), min_size=n_rows, max_size=n_rows))
    ends = np.cumsum(draw(st.lists(st.integers(0, 50), min_size=n, max_size=n)) or [0])[:n]
    sizes = np.array(draw(st.lists(st.integers(0, 50), min_size=n, max_size=n)), np.int64)
    # Changes of every kind, each index within its table (a member's units: 3 per member).
    limit = {kernel.REMAINING: n_b, kernel.RESERVED: n_b, kernel.NOTIFIED: n_b,
             kernel.MEMBER_SPENT: n_m, kernel.MEMBER_MRES: n_m, kernel.MEMBER_USED: 3 * n_m,
             kernel.MEMBER_RESERVED: 3 * n_m, kernel.CYCLE: 5}
    changes = []
    for _ in range(draw(st.integers(0, 10))):
        what = draw(st.integers(0, kernel.CYCLE))
        changes.append((draw(st.integers(0, n_a - 1)), what,
                        draw(st.integers(0, limit.get(what, n_a) - 1)), draw(INT)))
    change_rows = np.array(changes, np.int64).reshape(-1, 4)
    n_cycle = int((change_rows[:, 1] == kernel.CYCLE).sum())
    n_rec = draw(st.integers(0, 5))
    rec_ends = np.cumsum(draw(st.lists(st.integers(0, 30), min_size=n_rec, max_size=n_rec))
                         or [0])[:n_rec]
    rec_sizes = np.array(draw(st.lists(st.integers(0, 30), min_size=n_rec, max_size=n_rec)),
                         np.int64)
    return (
        np.array(draw(st.lists(st.integers(0, 10_000), min_size=5, max_size=5)), np.int64),
        np.array(draw(st.lists(INT, min_size=n_a, max_size=n_a)), np.int64),
        np.array(draw(st.lists(st.integers(0, 100), min_size=n_a, max_size=n_a)), np.int64),
        requests,
        np.array(draw(st.lists(st.integers(0, n_rows - 1), min_size=n, max_size=n)), np.int64),
        np.array(draw(st.lists(st.tuples(*[st.integers(0, 500)] * 4), min_size=n_rows,
                               max_size=n_rows)), np.int64).reshape(-1, 4),
        heads, spans(draw, n),
        np.array(draw(st.lists(INT, min_size=n, max_size=n)), np.int64),
        np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.int64),
        np.stack((ends, ends + sizes)).reshape(2, -1),
        change_rows,
        spans(draw, n_b).T.copy(),
        np.array(draw(st.lists(INT, min_size=n_b, max_size=n_b)), np.int64),
        spans(draw, n_m), spans(draw, n_cycle), owned(draw, n_a, 4),
        np.stack((rec_ends, rec_ends + rec_sizes)).reshape(2, -1),
        np.array(draw(st.lists(st.integers(0, n_a - 1), min_size=n_rec, max_size=n_rec)),
                 np.int64),
        owned(draw, n_a, 4))


@settings(FAST, max_examples=300)
@given(inputs())
def test_the_tables_are_the_references(args) -> None:
    got = kernel.account_tables(*args)
    expected = reference(*args)
    assert len(got) == len(expected) == 5
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert (g == e).all()


def test_every_change_is_named_as_the_account_hash_names_it() -> None:
    names = b"data" + "voice-é".encode()
    table = kernel.PIECE_TEXT + names + b"sub-asub-bcu:5cu:77cscap"
    at = len(kernel.PIECE_TEXT)
    bases = np.zeros(5, np.int64)
    bases[kernel.B_NAMES] = at
    bucket_names = np.array([[0, 4], [4, 8]], np.int64)
    at += len(names)
    member_names = np.array([[at, 5], [at + 5, 5]], np.int64)
    cycle_names = np.array([[at + 10, 4], [at + 14, 5]], np.int64)
    renewals = np.array([[1, at + 19, 2, 1], [1, at + 21, 3, 0]], np.int64)
    changes = np.array([  # (account, what, index, value)
        *[(1, what, 1, -what) for what in range(kernel.REMAINING)],
        (0, kernel.REMAINING, 0, 5), (1, kernel.RESERVED, 1, -400), (1, kernel.NOTIFIED, 1, 80),
        (0, kernel.MEMBER_SPENT, 0, 7), (1, kernel.MEMBER_MRES, 1, 8),
        *[(1, kernel.MEMBER_USED, 3 + u, 100 + u) for u in range(3)],
        *[(0, kernel.MEMBER_RESERVED, u, 200 + u) for u in range(3)],
        (0, kernel.CYCLE, 0, 9), (1, kernel.CYCLE, 1, 10)], np.int64)
    empty = np.zeros(0, np.int64)
    groups, sets, *_ = kernel.account_tables(
        bases, np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros((0, Q_COLUMNS), np.int64),
        empty, np.zeros((0, 4), np.int64), np.zeros((0, HEAD_COLUMNS), np.int64),
        np.zeros((0, 2), np.int64), empty, empty, np.zeros((2, 0), np.int64), changes,
        bucket_names.T.copy(), np.array([10, 1000], np.int64), member_names, cycle_names,
        renewals, np.zeros((2, 0), np.int64), empty, np.zeros((0, 4), np.int64))

    def text(at: int, n: int) -> str:
        return table[at:at + n].decode()

    def named(a: int) -> list[tuple[str, int]]:
        return [(text(r[SET_A_AT], r[SET_A_LEN]) + text(r[SET_B_AT], r[SET_B_LEN])
                 + text(r[SET_C_AT], r[SET_C_LEN]), r[SET_VALUE])
                for r in sets[groups[a, G_SET_LO]:groups[a, G_SET_HI]].tolist()]

    assert named(0) == [("b:data:rem", 5), ("m:sub-a:spent", 7), ("m:sub-a:r1", 200),
                        ("m:sub-a:r2", 201), ("m:sub-a:r3", 202), ("cu:5", 9)]
    assert named(1) == [
        ("cs", 1), ("cap", 0),  # a new cycle's fields first: the kernel's values win
        *[(f, -what) for what, f in enumerate(kernel.PIECES[:kernel.REMAINING])],
        ("b:voice-é:res", 600), ("b:voice-é:ntf", 80), ("m:sub-b:mres", 8),
        ("m:sub-b:u1", 100), ("m:sub-b:u2", 101), ("m:sub-b:u3", 102), ("cu:77", 10)]


@st.composite
def outputs(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    """The charging kernel's outputs before and after (KernelBatch._changes' layout), some of
    them moved, with the owners of the buckets, members and cycle slots."""
    n_a = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(0, 3), min_size=n_a, max_size=n_a))
    bucket_start = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    member_owner = np.array(draw(st.lists(st.integers(0, n_a - 1), max_size=4)), np.int64)
    slot_owner = np.array(draw(st.lists(st.integers(0, n_a - 1), max_size=4)), np.int64)
    n = 6 * n_a + 3 * int(bucket_start[-1]) + 8 * member_owner.size + slot_owner.size
    before = np.array(draw(st.lists(INT, min_size=n, max_size=n)), np.int64)
    after = before.copy()
    for p in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=n)) if n else []:
        after[p] = draw(INT)
    return before, after, bucket_start, member_owner, slot_owner


@settings(FAST, max_examples=300)
@given(outputs())
def test_the_moved_outputs_are_the_references(args) -> None:
    got, expected = kernel.change_rows(*args), reference_change_rows(*args)
    assert got.shape == expected.shape
    assert (got == expected).all()


def test_each_moved_output_is_named_by_its_account_kind_and_index() -> None:
    # Two accounts: the second has buckets 0 and 1; one member (of account 1) and one cycle
    # slot (of account 0).
    bucket_start = np.array([0, 0, 2], np.int64)
    before = np.zeros(6 * 2 + 3 * 2 + 8 * 1 + 1, np.int64)
    after = before.copy()
    after[1] = 10  # money (what 0) of account 1
    after[12 + 2 + 1] = -4  # the reserved change of bucket 1
    after[12 + 6 + 1] = 7  # the member's money reserved
    after[12 + 6 + 2 + 3 + 2] = 9  # the member's units reserved of unit type 3
    after[-1] = 5  # the cycle slot's units
    rows = kernel.change_rows(before, after, bucket_start, np.array([1], np.int64),
                              np.array([0], np.int64))
    assert rows.tolist() == [[1, 0, 1, 10], [1, kernel.RESERVED, 1, -4],
                             [1, kernel.MEMBER_MRES, 0, 7], [1, kernel.MEMBER_RESERVED, 2, 9],
                             [0, kernel.CYCLE, 0, 5]]
