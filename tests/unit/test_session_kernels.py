"""kernels.sessions against its plain-Python twins (sessions_reference.py): read_sessions reads
every value msgpack reads into a session's shape, the same session, and reports any other
bytes bad without reading outside its buffer; write_sessions writes, byte for byte,
pack_session's value of the session a request leaves (session_after)."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.corruption import corrupted
from tollgate.engine.charging.kernels import sessions as kernels
from tollgate.engine.charging.kernels.charge import (
    I_ACCT,
    I_MEMBER,
    I_RATE,
    I_REQ,
    I_RG,
    I_WANT,
    INVALID_AVP_VALUE,
    O_CHARGED,
    O_GRANTED,
    O_RES_AMOUNT,
    O_RES_SRC,
    O_RESULT,
    O_S_BILLED,
    O_S_CHARGED,
    O_S_REM,
    O_S_USED,
    O_VALIDITY,
    WANT_GRANT,
)
from tollgate.engine.charging.kernels.sessions import (
    ANS_AT,
    ANS_LEN,
    ANS_RN,
    H_ACCT_AT,
    H_ACCT_LEN,
    H_ANS_HI,
    H_ANS_LO,
    H_COST,
    H_EXISTS,
    H_EXP,
    H_RATED_HI,
    H_RATED_LO,
    H_RES_HI,
    H_RES_LO,
    H_RN,
    H_ST,
    H_SUB_AT,
    H_SUB_LEN,
    H_T,
    P_ANSWERS_KEPT,
    P_DEFAULT_VALIDITY,
    P_NOW,
    P_STALE_GRACE,
    Q_ACCT_AT,
    Q_ACCT_LEN,
    Q_ANS_AT,
    Q_ANS_LEN,
    Q_COLUMNS,
    Q_KIND,
    Q_RN,
    Q_SUB_AT,
    Q_SUB_LEN,
    Q_TIME,
    RES_AMOUNT,
    RES_BUCKET_AT,
    RES_BUCKET_LEN,
    RES_MEMBER,
    RES_RG,
    RES_UNIT,
    RES_UNITS,
    read_sessions,
    session_columns,
    write_sessions,
)
from tollgate.engine.charging.kernels.sessions_reference import (
    SESSION_ID,
    Malformed,
    RefItem,
    RefRequest,
    RefTiming,
    read_reference,
    read_value,
    session_after,
)
from tollgate.engine.charging.kernels.sessions_reference import (
    session_columns as session_columns_reference,
)
from tollgate.engine.domain import MONEY_SOURCE, RequestType, Reservation
from tollgate.engine.storage import session_blob
from tollgate.engine.storage.session_blob import pack_session
from tollgate.engine.storage.state import Rated, SessionState

ITEM_COLUMNS = max(I_REQ, I_RG, I_WANT, I_RATE, I_MEMBER) + 1
OUTPUT_ROWS = max(O_RESULT, O_GRANTED, O_RES_SRC, O_RES_AMOUNT, O_CHARGED, O_VALIDITY,
                  O_S_USED, O_S_BILLED, O_S_REM, O_S_CHARGED) + 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EDGES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, INT64_MAX, -1, -32, -33,
         -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, INT64_MIN]
"""Where msgpack's integer forms change."""

int64 = st.one_of(st.sampled_from(EDGES), st.integers(INT64_MIN, INT64_MAX))
# Strings and bytes where their headers change form (fix/8/16/32-bit lengths) now and then.
LONG_TEXT = ["a" * 31, "a" * 32, "é" * 16, "a" * 255, "a" * 256, "€" * 100, "a" * 65535,
             "a" * 65536]
texts = st.one_of(st.text(max_size=6), st.text(max_size=40), st.sampled_from(LONG_TEXT))
blobs = st.one_of(st.binary(max_size=70),
                  st.sampled_from([b"x" * n for n in (255, 256, 65535, 65536)]))
SIZES = [0, 1, 2, 3, 15, 16, 17]  # 16: the first map16 / array16
FAST = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _sized(draw: st.DrawFn, keys: st.SearchStrategy[int], values: st.SearchStrategy[Any],
           most: int) -> dict[int, Any]:
    size = min(draw(st.sampled_from(SIZES)), most)
    return draw(st.dictionaries(keys, values, min_size=size, max_size=size))


@st.composite
def sessions(draw: st.DrawFn, rgs: st.SearchStrategy[int] = int64,
             rns: st.SearchStrategy[int] = int64, keys: int = 17) -> SessionState:
    """`keys`: how many distinct keys rgs and rns have at least (up to 17)."""
    state = draw(st.sampled_from([0, 1, 2]))
    held = _sized(draw, rgs, st.tuples(texts, int64, int64, int64, st.booleans()), keys)
    return SessionState(
        SESSION_ID, draw(texts), draw(rns), state != 0, state == 2, draw(int64),
        _sized(draw, rns, blobs, keys), {rg: Reservation(rg, *r) for rg, r in held.items()},
        draw(int64), {rg: Rated(*v) for rg, v in _sized(
            draw, rgs, st.tuples(int64, int64, int64, int64), keys).items()},
        draw(int64), draw(texts))


def canon(s: SessionState | None) -> Any:
    """A session as comparable values: its dicts' orders count, and a bool is no int."""
    if s is None:
        return None
    return (s.subscriber_id, s.account_id, s.last_rn, s.ended, s.is_event, s.last_time_ms,
            s.expiry_ms, s.cost, list(s.answers.items()),
            [(rg, tuple(r[:5]), type(r.member), r.member) for rg, r in s.reservations.items()],
            [(rg, tuple(v)) for rg, v in s.rated.items()])


def sessions_of(buf: bytes, heads: np.ndarray, answers: np.ndarray, held: np.ndarray,
                rated: np.ndarray) -> list[SessionState | None]:
    """read_sessions' tables as sessions; also checks each table's rows are its values' rows
    in value order, every row once."""
    out: list[SessionState | None] = []
    at = {"answers": 0, "held": 0, "rated": 0}
    for h in heads.tolist():
        for name, lo, hi in (("answers", H_ANS_LO, H_ANS_HI), ("held", H_RES_LO, H_RES_HI),
                             ("rated", H_RATED_LO, H_RATED_HI)):
            assert h[lo] == at[name] <= h[hi]
            at[name] = h[hi]
        if not h[H_EXISTS]:
            assert h[:H_ANS_LO] == [0] * H_ANS_LO
            assert h[H_ANS_LO] == h[H_ANS_HI] and h[H_RES_LO] == h[H_RES_HI]
            assert h[H_RATED_LO] == h[H_RATED_HI]
            out.append(None)
            continue

        def text(at: int, n: int) -> str:
            return buf[at:at + n].decode()

        res = {}
        for row in held[h[H_RES_LO]:h[H_RES_HI]].tolist():
            assert row[RES_MEMBER] in (0, 1)
            res[row[RES_RG]] = Reservation(
                row[RES_RG], text(row[RES_BUCKET_AT], row[RES_BUCKET_LEN]), row[RES_UNITS],
                row[RES_AMOUNT], row[RES_UNIT], bool(row[RES_MEMBER]))
        assert h[H_ST] in (0, 1, 2)
        out.append(SessionState(
            SESSION_ID, text(h[H_SUB_AT], h[H_SUB_LEN]), h[H_RN], h[H_ST] != 0, h[H_ST] == 2,
            h[H_T], {row[ANS_RN]: buf[row[ANS_AT]:row[ANS_AT] + row[ANS_LEN]]
                     for row in answers[h[H_ANS_LO]:h[H_ANS_HI]].tolist()},
            res, h[H_EXP], {row[0]: Rated(*row[1:]) for row in
                            rated[h[H_RATED_LO]:h[H_RATED_HI]].tolist()},
            h[H_COST], text(h[H_ACCT_AT], h[H_ACCT_LEN])))
    assert [at["answers"], at["held"], at["rated"]] == [len(answers), len(held), len(rated)]
    return out


def read(buf: bytes, spans: list[tuple[int, int]]) -> tuple[list[SessionState | None], int]:
    """read_sessions over buf, as sessions (those before the bad value, if one is)."""
    arr = np.array(spans, np.int64).reshape(-1, 2).T.copy()
    heads, answers, held, rated, bad = read_sessions(np.frombuffer(buf, np.uint8), arr)
    assert heads.shape == (len(spans), kernels.HEAD_COLUMNS)
    if bad >= 0:
        assert not heads[bad:].any()  # rows from the bad value on are left zero
        heads = heads[:bad]
    return sessions_of(buf, heads, answers, held, rated), bad


def check_one(value: bytes) -> None:
    """A value alone: read_sessions reads it iff the reference does, into the same session."""
    got, bad = read(value, [(0, len(value))])
    try:
        expected = read_value(value)
    except Malformed:
        assert bad == 0
        return
    assert bad == -1
    assert canon(got[0]) == canon(expected)


# --- read ---------------------------------------------------------------------------------------


@settings(FAST, max_examples=150)
@given(st.lists(st.tuples(st.one_of(st.none(), sessions()), st.binary(max_size=5),
                          st.integers(0, 300)), max_size=5), st.binary(max_size=5))
def test_read_sessions_reads_packed_sessions_as_unpack_session_does(values, tail):
    buf, spans, packed = b"", [], []
    for s, gap, empty_at in values:
        buf += gap  # values need not be back to back, nor an empty span inside buf
        if s is None:
            spans.append((empty_at, empty_at))
        else:
            packed.append(s)
            v = pack_session(s)
            spans.append((len(buf), len(buf) + len(v)))
            buf += v
    buf += tail
    got, bad = read(buf, spans)
    expected, ref_bad = read_reference(buf, spans)
    assert bad == ref_bad == -1
    assert [canon(s) for s in got] == [canon(s) for s in expected]
    assert [canon(s) for s in got if s is not None] == [canon(s) for s in packed]


def _header(draw: st.DrawFn, n: int, fix: int, fix_limit: int, forms: list[tuple[int, str]]
            ) -> bytes:
    """Any header that holds n: the fix form where it fits, or a wider one."""
    choices = [bytes([fix | n])] if n < fix_limit else []
    for first, fmt in forms:
        if n < 1 << (8 * struct.calcsize(fmt)):
            choices.append(bytes([first]) + struct.pack(fmt, n))
    return draw(st.sampled_from(choices))


def _any_int(draw: st.DrawFn, v: int) -> bytes:
    choices = []
    if 0 <= v < 128 or -32 <= v < 0:
        choices.append(struct.pack(">b", v) if v < 0 else bytes([v]))
    for first, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"),
                       (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
        with contextlib.suppress(struct.error):  # v does not fit the form
            choices.append(bytes([first]) + struct.pack(fmt, v))
    return draw(st.sampled_from(choices))


def any_encoding(draw: st.DrawFn, v: Any) -> bytes:
    """v in MessagePack, each header and integer in a form drawn from those that hold it
    (msgpack-python writes the smallest; other writers need not)."""
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        return _any_int(draw, v)
    if isinstance(v, str):
        b = v.encode()
        return _header(draw, len(b), 0xA0, 32, [(0xD9, ">B"), (0xDA, ">H"), (0xDB, ">I")]) + b
    if isinstance(v, bytes):
        return _header(draw, len(v), 0, 0, [(0xC4, ">B"), (0xC5, ">H"), (0xC6, ">I")]) + v
    if isinstance(v, list | tuple):
        return (_header(draw, len(v), 0x90, 16, [(0xDC, ">H"), (0xDD, ">I")])
                + b"".join(any_encoding(draw, x) for x in v))
    assert isinstance(v, dict)
    return (_header(draw, len(v), 0x80, 16, [(0xDE, ">H"), (0xDF, ">I")])
            + b"".join(any_encoding(draw, k) + any_encoding(draw, x) for k, x in v.items()))


@settings(FAST, max_examples=100)
@given(st.data(), sessions())
def test_read_sessions_reads_any_encoding_of_a_session(data, s):
    value = any_encoding(data.draw, msgpack.unpackb(pack_session(s), strict_map_key=False))
    got, bad = read(value, [(0, len(value))])
    assert bad == -1
    assert canon(got[0]) == canon(s)


def test_read_sessions_reads_32_bit_counts():
    many = 70_000  # past map16 / array16
    s = SessionState(SESSION_ID, "sub", 1, False, False, 2, {n: b"" for n in range(many)},
                     {g: Reservation(g, "", 1, 2, 3, False) for g in range(many)}, 3,
                     {g: Rated(1, 2, 3, 4) for g in range(many)}, 4, "acct")
    value = pack_session(s)
    assert value[1 + 1 + 1 + 1 + 1 + 4 + 5 + 1 + 1] == 0xDF  # the answers' map32
    got, bad = read(value, [(0, len(value))])
    assert bad == -1
    assert canon(got[0]) == canon(s)


def mutated() -> st.SearchStrategy[bytes]:
    """Session values a few edits away from valid ones."""
    return corrupted(sessions(rgs=st.integers(-40, 300), rns=st.integers(-40, 300)).map(
        pack_session))


WRONG = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=3),
                  st.binary(max_size=3), st.integers(INT64_MIN, 2**64 - 1),
                  st.lists(st.integers(0, 3), max_size=6), st.just(2**63))


@st.composite
def retyped(draw: st.DrawFn) -> bytes:
    """A session's value with one field, at any depth, swapped for another value (often of
    another type, or a uint64 past int64), packed by msgpack."""
    v = msgpack.unpackb(pack_session(draw(sessions(rgs=st.integers(0, 3),
                                                   rns=st.integers(0, 3), keys=4))),
                        strict_map_key=False)
    node: Any = v
    while True:
        keys = list(range(len(node))) if isinstance(node, list) else list(node)
        if not keys:
            break
        k = draw(st.sampled_from(keys))
        if isinstance(node[k], list | dict) and draw(st.booleans()):
            node = node[k]
            continue
        node[k] = draw(WRONG)
        break
    return msgpack.packb(v, use_bin_type=True)


@settings(FAST, max_examples=300)
@given(st.one_of(st.binary(max_size=120), mutated(), retyped(),
                 st.builds(lambda b: b"\x9b\x01" + b, st.binary(max_size=60))))
def test_read_sessions_reads_only_what_msgpack_reads_as_a_session(value):
    check_one(value)


def test_read_sessions_reports_what_no_dict_holds():
    # A repeated key: unpack_session would keep one; pack_session never writes one.
    pack = msgpack.Packer(use_bin_type=True)
    for answers, held, rated in (
            ([(1, b"a"), (1, b"b")], [], []),
            ([], [[3, "", 1, 1, 1, False], [3, "b", 1, 1, 1, True]], []),
            ([], [], [(5, [1, 2, 3, 4]), (5, [1, 2, 3, 4])]),
            ([(k % 20, b"") for k in range(21)], [], [])):  # sorted, not compared pairwise
        value = (b"\x9b" + pack.pack(1) + pack.pack(2) + pack.pack(0) + pack.pack(3)
                 + pack.pack("s") + pack.pack("a") + pack.pack(4) + pack.pack(5)
                 + pack.pack_map_pairs(answers) + pack.pack(held)
                 + pack.pack_map_pairs(rated))
        assert read(value, [(0, len(value))])[1] == 0
        check_one(value)


@settings(FAST, max_examples=100)
@given(st.lists(st.one_of(sessions(rgs=st.integers(0, 3), rns=st.integers(0, 3), keys=4).map(
    pack_session), mutated()), min_size=1, max_size=4), st.data())
def test_read_sessions_reports_the_first_bad_value(values, data):
    buf = b"".join(values)
    spans, at = [], 0
    for v in values:
        spans.append((at, at + len(v)))
        at += len(v)
    # And spans that are not spans of buf (outside it, reversed).
    spans += data.draw(st.lists(st.tuples(st.integers(-3, len(buf) + 3),
                                          st.integers(-3, len(buf) + 3)), max_size=2))
    got, bad = read(buf, spans)
    expected, ref_bad = read_reference(buf, spans)
    assert bad == ref_bad
    assert [canon(s) for s in got] == [canon(s) for s in expected]


# --- the charging kernel's inputs -------------------------------------------------------------

BUCKET_IDS = ["b1", "b2", "data", "é€", "a" * 40]


@st.composite
def column_batches(draw: st.DrawFn) -> tuple[list[list[int]], list[SessionState | None],
                                            list[list[str]]]:
    """Item rows (other columns random, to show they are left alone), a session or none per
    request, and each account's bucket ids: reservations name buckets of their account, or
    the money balance, or now and then a bucket the account does not have."""
    bucket_ids = draw(st.lists(st.lists(st.sampled_from(BUCKET_IDS), unique=True, max_size=4),
                               min_size=1, max_size=3))
    requests = draw(st.lists(st.tuples(
        st.integers(0, len(bucket_ids) - 1),
        st.one_of(st.none(), sessions(rgs=st.integers(0, 6), keys=7)),
        st.lists(st.integers(0, 7), unique=True, max_size=4)), max_size=6))
    rows, found = [], []
    for r, (a, s, rgs) in enumerate(requests):
        if s is not None:
            s.reservations = {rg: res._replace(bucket_id=draw(st.sampled_from(
                ["", *bucket_ids[a], *([BUCKET_IDS[0]] * draw(st.booleans()))])))
                for rg, res in s.reservations.items()}
        found.append(s)
        for rg in rgs:
            row = draw(st.lists(int64, min_size=ITEM_COLUMNS, max_size=ITEM_COLUMNS))
            row[I_ACCT], row[I_REQ], row[I_RG] = a, r, rg
            rows.append(row)
    return rows, found, bucket_ids


@settings(FAST, max_examples=200)
@given(column_batches())
def test_session_columns_fills_what_the_reference_fills(batch):
    rows, found, bucket_ids = batch
    values = [pack_session(s) if s is not None else b"" for s in found]
    ends = np.cumsum([len(v) for v in values], dtype=np.int64)
    spans = np.stack((ends - [len(v) for v in values], ends)) if values \
        else np.zeros((2, 0), np.int64)
    buf = np.frombuffer(b"".join(values), np.uint8)
    heads, _, held, rated, bad = read_sessions(buf, spans)
    assert bad == -1
    names = [b.encode() for ids in bucket_ids for b in ids]
    lengths = np.array([len(b) for b in names], np.int64)
    start = np.cumsum([0] + [len(ids) for ids in bucket_ids], dtype=np.int64)
    items = np.array(rows, np.int64).reshape(-1, ITEM_COLUMNS)
    got = session_columns(items, np.arange(len(found), dtype=np.int64), heads, held, rated,
                          buf, np.frombuffer(b"".join(names), np.uint8),
                          np.stack((np.cumsum(lengths) - lengths, lengths)), start)
    expected = session_columns_reference(rows, found, bucket_ids)
    if isinstance(expected, int):
        assert got == expected
    else:
        assert got == -1
        assert items.tolist() == expected


# --- write --------------------------------------------------------------------------------------

ids = st.one_of(st.text(max_size=6), st.sampled_from(["", "a" * 40, "é" * 130]))
small_rg = st.integers(0, 5)
small_rn = st.integers(0, 12)


@st.composite
def old_session(draw: st.DrawFn) -> SessionState:
    s = draw(sessions(rgs=small_rg, rns=small_rn, keys=6))
    s.last_rn = draw(small_rn)
    s.cost = draw(st.integers(-(2**61), 2**61))  # room for the batch's charges in int64
    s.expiry_ms = draw(st.one_of(st.just(0), st.integers(0, 2**50)))
    return s


amount = st.one_of(st.just(0), st.integers(1, 2**40), int64)


@st.composite
def items_of(draw: st.DrawFn, n_rates: int, n_buckets: int) -> list[tuple[RefItem, int, int]]:
    """A request's items: (the reference's item, its rate row, its member index)."""
    out = []
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3, 5]))):
        rate = draw(st.integers(-1, n_rates - 1))
        member = draw(st.integers(-1, 2))
        billed = draw(st.booleans())
        s = [draw(int64) if billed else 0 for _ in range(4)]
        out.append((RefItem(
            rating_group=draw(small_rg), want=draw(st.integers(0, 2)), unit_type=None,
            member=member >= 0, result=draw(st.sampled_from([2001, INVALID_AVP_VALUE, 4012])),
            granted=draw(st.one_of(st.just(0), st.integers(1, 2**40), st.just(INT64_MAX))),
            res_src=draw(st.integers(MONEY_SOURCE, n_buckets - 1)), res_amount=draw(amount),
            charged=draw(st.integers(-(2**50), 2**50)),
            validity=draw(st.one_of(st.just(0), st.integers(1, 10**6))),
            s_used=s[0], s_billed=s[1], s_rem=s[2], s_charged=s[3]), rate, member))
    return out


@st.composite
def batches(draw: st.DrawFn) -> tuple:
    olds = draw(st.lists(st.one_of(st.none(), old_session()), max_size=4))
    bucket_ids = draw(st.lists(ids, max_size=3))
    unit_of_rate = draw(st.lists(st.integers(0, 3), max_size=3))
    requests = []
    for _ in range(draw(st.integers(0, 6))):
        requests.append((
            draw(st.integers(-1, len(olds) - 1)),
            draw(st.one_of(small_rn, int64)), draw(st.sampled_from(list(RequestType))),
            draw(int64), draw(blobs), draw(ids), draw(ids),
            draw(items_of(len(unit_of_rate), len(bucket_ids)))))
    timing = RefTiming(draw(st.integers(0, 2**45)), draw(st.integers(0, 5)),
                       draw(st.integers(1, 10**6)), draw(st.integers(0, 10**5)))
    return olds, bucket_ids, unit_of_rate, requests, timing


@settings(FAST, max_examples=250)
@given(batches())
def test_write_sessions_writes_what_the_reference_packs(batch):
    olds, bucket_ids, unit_of_rate, requests, timing = batch
    old_values = [pack_session(s) if s is not None else b"" for s in olds]
    old_buf = b"".join(old_values)
    spans, at = [], 0
    for v in old_values:
        spans.append((at, at + len(v)))
        at += len(v)
    old_arr = np.frombuffer(old_buf, np.uint8)
    heads, answers, held, rated, bad = read_sessions(
        old_arr, np.array(spans, np.int64).reshape(-1, 2).T.copy())
    assert bad == -1

    strings = bytearray(b"?")  # offsets that are not 0

    def put(b: bytes) -> tuple[int, int]:
        strings.extend(b"#")
        strings.extend(b)
        return len(strings) - len(b), len(b)

    names = np.array([put(b.encode()) for b in bucket_ids], np.int64).reshape(-1, 2).T.copy()
    reqs = np.zeros((len(requests), Q_COLUMNS), np.int64)
    item_rows: list[list[int]] = []
    out_cols: list[list[int]] = []
    expected = []
    for r, (row, rn, kind, time_ms, answer, sub, acct, items) in enumerate(requests):
        reqs[r, Q_RN], reqs[r, Q_KIND], reqs[r, Q_TIME] = rn, kind, time_ms
        reqs[r, Q_ANS_AT], reqs[r, Q_ANS_LEN] = put(answer)
        reqs[r, Q_SUB_AT], reqs[r, Q_SUB_LEN] = put(sub.encode())
        reqs[r, Q_ACCT_AT], reqs[r, Q_ACCT_LEN] = put(acct.encode())
        ref_items = []
        for it, rate, member in items:
            it.unit_type = unit_of_rate[rate] if rate >= 0 else None
            ref_items.append(it)
            item = [0] * ITEM_COLUMNS
            item[I_REQ], item[I_RG], item[I_WANT], item[I_RATE], item[I_MEMBER] = (
                r, it.rating_group, it.want, rate, member)
            item_rows.append(item)
            out = [0] * OUTPUT_ROWS
            for k, v in ((O_RESULT, it.result), (O_GRANTED, it.granted),
                         (O_RES_SRC, it.res_src), (O_RES_AMOUNT, it.res_amount),
                         (O_CHARGED, it.charged), (O_VALIDITY, it.validity),
                         (O_S_USED, it.s_used), (O_S_BILLED, it.s_billed),
                         (O_S_REM, it.s_rem), (O_S_CHARGED, it.s_charged)):
                out[k] = v
            out_cols.append(out)
        old = read_value(old_values[row]) if row >= 0 else None
        expected.append(session_after(RefRequest(rn, int(kind), time_ms, answer, sub, acct, old),
                                      ref_items, bucket_ids, timing))
    params = np.array([0] * 4, np.int64)
    params[P_NOW], params[P_ANSWERS_KEPT] = timing.now_ms, timing.answers_kept
    params[P_DEFAULT_VALIDITY], params[P_STALE_GRACE] = (timing.default_validity_s,
                                                         timing.stale_grace_s)
    values, value_spans, expiry, rescore = write_sessions(
        old_arr, heads, answers, held, rated,
        np.array([row for row, *_ in requests], np.int64), reqs,
        np.array(item_rows, np.int64).reshape(-1, ITEM_COLUMNS),
        np.array(out_cols, np.int64).reshape(-1, OUTPUT_ROWS).T.copy(),
        np.array(unit_of_rate, np.int64), np.frombuffer(bytes(strings), np.uint8), names,
        params)
    got = values.tobytes()
    assert value_spans.shape == (2, len(requests))
    ends = [0, *value_spans[1].tolist()]
    assert value_spans[0].tolist() == ends[:-1] and ends[-1] == len(got)  # back to back
    assert [got[a:b] for a, b in value_spans.T.tolist()] == [v for v, _, _ in expected]
    assert expiry.tolist() == [e for _, e, _ in expected]
    assert rescore.tolist() == [int(x) for _, _, x in expected]


def test_write_sessions_refuses_inputs_that_point_outside_their_arrays():
    empty = np.zeros((0, 16), np.int64)
    reqs = np.zeros((1, Q_COLUMNS), np.int64)
    reqs[0, Q_SUB_LEN] = 5  # past `strings`
    with pytest.raises(ValueError, match="strings"):
        write_sessions(np.zeros(0, np.uint8), empty, np.zeros((0, 3), np.int64),
                       np.zeros((0, 7), np.int64), np.zeros((0, 5), np.int64),
                       np.array([-1], np.int64), reqs, np.zeros((0, ITEM_COLUMNS), np.int64),
                       np.zeros((OUTPUT_ROWS, 0), np.int64), np.zeros(0, np.int64),
                       np.zeros(2, np.uint8), np.zeros((2, 0), np.int64),
                       np.array([0, 1, 1, 0], np.int64))


def test_the_kernels_constants_are_the_engines():
    assert kernels.FORMAT == session_blob.FORMAT
    assert (kernels.ST_OPEN, kernels.ST_ENDED, kernels.ST_EVENT) == (
        session_blob.OPEN, session_blob.ENDED, session_blob.EVENT)
    assert (kernels.TERMINATION, kernels.EVENT) == (RequestType.TERMINATION, RequestType.EVENT)
    assert WANT_GRANT == 1 and INVALID_AVP_VALUE == 5004  # sessions_reference's
