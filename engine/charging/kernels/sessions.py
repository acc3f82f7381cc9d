"""Session values (session_blob's MessagePack) read into tables, and written after a batch."""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.charge import (
    FLAG_RES_MEMBER,
    I_ACCT,
    I_FLAGS,
    I_MEMBER,
    I_RATE,
    I_REQ,
    I_RES_AMOUNT,
    I_RES_SRC,
    I_RES_UNITS,
    I_RG,
    I_S_COST,
    I_S_USED,
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
    helper,
)
from tollgate.engine.charging.kernels.memory import copy_bytes
from tollgate.engine.charging.wire import Int, _utf8_valid
from tollgate.engine.domain import MONEY_SOURCE

FORMAT = 1  # session_blob.FORMAT
ST_OPEN, ST_ENDED, ST_EVENT = 0, 1, 2  # session_blob's OPEN, ENDED, EVENT
TERMINATION, EVENT = 3, 4  # RequestType (tests/unit/test_session_kernels.py checks both)
FIELDS = 11  # the value's top-level array

# read_sessions' tables. heads: a row per value; strings as (offset in the buffer, bytes);
# the [LO, HI) rows of the value's answers, reservations and rated groups in their tables.
(H_EXISTS, H_RN, H_ST, H_T, H_EXP, H_COST, H_SUB_AT, H_SUB_LEN, H_ACCT_AT, H_ACCT_LEN,
 H_ANS_LO, H_ANS_HI, H_RES_LO, H_RES_HI, H_RATED_LO, H_RATED_HI) = range(16)
HEAD_COLUMNS = 16
ANS_RN, ANS_AT, ANS_LEN = range(3)
ANS_COLUMNS = 3
(RES_RG, RES_BUCKET_AT, RES_BUCKET_LEN, RES_UNITS, RES_AMOUNT, RES_UNIT,
 RES_MEMBER) = range(7)
RES_COLUMNS = 7
RATED_RG, RATED_USED, RATED_BILLED, RATED_REM, RATED_CHARGED = range(5)
RATED_COLUMNS = 5

# write_sessions' inputs: a row per request (strings as offset and length in `strings`), and
# the batch's clock and session settings (outcome.Timing).
(Q_RN, Q_KIND, Q_TIME, Q_ANS_AT, Q_ANS_LEN, Q_SUB_AT, Q_SUB_LEN, Q_ACCT_AT,
 Q_ACCT_LEN) = range(9)
Q_COLUMNS = 9
P_NOW, P_ANSWERS_KEPT, P_DEFAULT_VALIDITY, P_STALE_GRACE = range(4)

# The smallest encoding of a table row, in bytes: a value of n bytes cannot hold more rows
# than n over these, which bounds what a value may add to the tables before it is parsed.
ANS_MIN_BYTES = 3  # key (fixint), bin8 header
RES_MIN_BYTES = 7  # fixarray, fixint, fixstr, three fixints, bool
RATED_MIN_BYTES = 6  # key, fixarray, four fixints

BAD = -1
"""A parse helper's position where the bytes are not what the value needs."""


# --- reading ----------------------------------------------------------------------------------


@helper
def _be(buf: np.ndarray, pos: int, n: int) -> Int:
    """n (1..8) big-endian bytes as int64; eight wrap into the sign, as int64 bits."""
    v = np.int64(0)
    for k in range(n):
        v = (v << np.int64(8)) | np.int64(buf[pos + k])
    return v


@helper
def _int(buf: np.ndarray, pos: int, end: int) -> tuple[Int, Int]:
    """(an integer, the position after it); BAD for anything but an int64 (a bool is no
    integer here, and a uint64 past int64 has no row to go in). Every parse helper takes a
    BAD position and gives BAD back, so a run of fields needs one check at its end."""
    if pos < 0 or pos >= end:
        return 0, BAD
    b = np.int64(buf[pos])
    if b < 0x80:
        return b, pos + 1
    if b >= 0xE0:
        return b - 256, pos + 1
    if b < 0xCC or b > 0xD3:
        return 0, BAD
    n = np.int64(1) << ((b - 0xCC) & 3)  # cc..cf unsigned, d0..d3 signed: 1, 2, 4, 8 bytes
    if n > end - pos - 1:
        return 0, BAD
    v = _be(buf, pos + 1, n)
    if b >= 0xD0:
        if n < 8 and v >= np.int64(1) << (8 * n - 1):
            v -= np.int64(1) << (8 * n)
    elif v < 0:
        return 0, BAD
    return v, pos + 1 + n


# Header forms of the sized types, for _length and _put_header: (fix: the fix form's type
# bits, fix_bits: how many low bits of it are the count (0: none), first: the byte of the
# first form with a length after it, shift: log2 of that length's bytes); the forms after
# `first` have lengths twice as long, up to 4 bytes.
STR = (0xA0, 5, 0xD9, 0)  # fixstr, str8, str16, str32
BIN = (0x00, 0, 0xC4, 0)  # bin8, bin16, bin32
ARRAY = (0x90, 4, 0xDC, 1)  # fixarray, array16, array32
MAP = (0x80, 4, 0xDE, 1)  # fixmap, map16, map32


@helper
def _length(buf: np.ndarray, pos: int, end: int, fix: int, fix_bits: int, first: int,
            shift: int) -> tuple[Int, Int]:
    """(a header's count, the position after it), for the form's constants (STR, ...)."""
    if pos < 0 or pos >= end:
        return 0, BAD
    b = np.int64(buf[pos])
    if fix_bits and b >> fix_bits == fix >> fix_bits:
        return b & ((1 << fix_bits) - 1), pos + 1
    if b < first or b > first + 2 - shift:
        return 0, BAD
    n = np.int64(1) << (b - first + shift)
    if n > end - pos - 1:
        return 0, BAD
    return _be(buf, pos + 1, n), pos + 1 + n


@helper
def _array(buf: np.ndarray, pos: int, end: int) -> tuple[Int, Int]:
    return _length(buf, pos, end, *ARRAY)


@helper
def _map(buf: np.ndarray, pos: int, end: int) -> tuple[Int, Int]:
    return _length(buf, pos, end, *MAP)


@helper
def _str(buf: np.ndarray, pos: int, end: int) -> tuple[Int, Int, Int]:
    """(offset, bytes, position after) of a str that is UTF-8 (msgpack-python refuses others)."""
    n, at = _length(buf, pos, end, *STR)
    if at < 0 or n > end - at or not _utf8_valid(buf, at, at + n):
        return 0, 0, BAD
    return at, n, at + n


@helper
def _bin(buf: np.ndarray, pos: int, end: int) -> tuple[Int, Int, Int]:
    n, at = _length(buf, pos, end, *BIN)
    if at < 0 or n > end - at:
        return 0, 0, BAD
    return at, n, at + n


@helper
def _read_value(buf: np.ndarray, pos: int, end: int, r: int, heads: np.ndarray,
                ans: np.ndarray, na: int, res: np.ndarray, nr: int, rat: np.ndarray,
                ng: int) -> tuple[int, int, int]:
    """Parses value r into its heads row and the tables' rows from na, nr and ng (which have
    room for as many as its length can hold); returns the tables' new lengths, the first
    BAD if the bytes are not a session value that ends at `end`."""
    count, pos = _array(buf, pos, end)
    if pos < 0 or count != FIELDS:
        return BAD, nr, ng
    fmt, pos = _int(buf, pos, end)
    if pos < 0 or fmt != FORMAT:
        return BAD, nr, ng
    heads[r, H_RN], pos = _int(buf, pos, end)
    st, pos = _int(buf, pos, end)
    if pos < 0 or not ST_OPEN <= st <= ST_EVENT:  # others: unpack_session reads them as ended
        return BAD, nr, ng
    heads[r, H_ST] = st
    heads[r, H_T], pos = _int(buf, pos, end)
    heads[r, H_SUB_AT], heads[r, H_SUB_LEN], pos = _str(buf, pos, end)
    heads[r, H_ACCT_AT], heads[r, H_ACCT_LEN], pos = _str(buf, pos, end)
    heads[r, H_EXP], pos = _int(buf, pos, end)
    heads[r, H_COST], pos = _int(buf, pos, end)
    count, pos = _map(buf, pos, end)
    if pos < 0 or count * ANS_MIN_BYTES > end - pos:
        return BAD, nr, ng
    heads[r, H_ANS_LO] = na
    for _ in range(count):
        ans[na, ANS_RN], pos = _int(buf, pos, end)
        ans[na, ANS_AT], ans[na, ANS_LEN], pos = _bin(buf, pos, end)
        if pos < 0:
            return BAD, nr, ng
        na += 1
    heads[r, H_ANS_HI] = na

    count, pos = _array(buf, pos, end)
    if pos < 0 or count * RES_MIN_BYTES > end - pos:
        return BAD, nr, ng
    heads[r, H_RES_LO] = nr
    for _ in range(count):
        fields, pos = _array(buf, pos, end)
        if pos < 0 or fields != 6:
            return BAD, nr, ng
        res[nr, RES_RG], pos = _int(buf, pos, end)
        res[nr, RES_BUCKET_AT], res[nr, RES_BUCKET_LEN], pos = _str(buf, pos, end)
        res[nr, RES_UNITS], pos = _int(buf, pos, end)
        res[nr, RES_AMOUNT], pos = _int(buf, pos, end)
        res[nr, RES_UNIT], pos = _int(buf, pos, end)
        if pos < 0 or pos >= end or buf[pos] & 0xFE != 0xC2:  # false c2, true c3
            return BAD, nr, ng
        res[nr, RES_MEMBER] = buf[pos] & 1
        pos += 1
        nr += 1
    heads[r, H_RES_HI] = nr

    count, pos = _map(buf, pos, end)
    if pos < 0 or count * RATED_MIN_BYTES > end - pos:
        return BAD, nr, ng
    heads[r, H_RATED_LO] = ng
    for _ in range(count):
        rat[ng, RATED_RG], pos = _int(buf, pos, end)
        fields, pos = _array(buf, pos, end)
        if pos < 0 or fields != 4:
            return BAD, nr, ng
        for c in range(RATED_USED, RATED_CHARGED + 1):
            rat[ng, c], pos = _int(buf, pos, end)
        if pos < 0:
            return BAD, nr, ng
        ng += 1
    heads[r, H_RATED_HI] = ng
    if pos != end:  # trailing bytes (msgpack's ExtraData)
        return BAD, nr, ng
    heads[r, H_EXISTS] = 1
    return na, nr, ng


@njit(cache=True, nogil=True)
def _distinct(table: np.ndarray, lo: int, hi: int) -> bool:
    """Whether the keys (column 0) of rows [lo, hi) differ: a dict keeps one of a repeated
    key, so a value that repeats one has no table that is its session."""
    if hi - lo <= 16:
        for a in range(lo, hi):
            for b in range(a + 1, hi):
                if table[a, 0] == table[b, 0]:
                    return False
        return True
    keys = np.sort(table[lo:hi, 0])
    for k in range(1, keys.size):  # noqa: SIM110 (Numba compiles no generator)
        if keys[k] == keys[k - 1]:
            return False
    return True


@njit(cache=True, nogil=True)
def _room(table: np.ndarray, need: int) -> np.ndarray:
    """The table, or a copy of its rows with room for `need` rows (at least twice as many)."""
    if need <= table.shape[0]:
        return table
    grown = np.empty((max(need, 2 * table.shape[0]), table.shape[1]), np.int64)
    grown[:table.shape[0]] = table
    return grown


@njit(cache=True, nogil=True)
def read_sessions(buf: np.ndarray, spans: np.ndarray) -> tuple:
    """The session values buf[spans[0, r]:spans[1, r]] as tables (heads, answers, held,
    rated: the H_*, ANS_*, RES_*, RATED_* columns), and the first value that is not a session
    value written by session_blob.pack_session's encoder (or any other that chooses other
    encodings of the same data), -1 if none. An empty span is no session: its heads row is
    zeros but for empty row ranges. Rows of values from the bad one on are left zero.
    Reads nothing outside buf, whatever it holds."""
    if spans.shape[0] != 2:
        raise ValueError("spans must have two rows (start, end)")
    n = spans.shape[1]
    heads = np.zeros((n, HEAD_COLUMNS), np.int64)
    guess = 4 * n + 16  # room for the usual session's few rows; grown for more
    ans = np.empty((guess, ANS_COLUMNS), np.int64)
    res = np.empty((guess, RES_COLUMNS), np.int64)
    rat = np.empty((guess, RATED_COLUMNS), np.int64)
    na = nr = ng = 0
    for r in range(n):
        start, end = spans[0, r], spans[1, r]
        if start == end:
            for lo, hi, k in ((H_ANS_LO, H_ANS_HI, na), (H_RES_LO, H_RES_HI, nr),
                              (H_RATED_LO, H_RATED_HI, ng)):
                heads[r, lo] = heads[r, hi] = k
            continue
        if start < 0 or end > buf.size or start > end:
            return heads, ans[:na], res[:nr], rat[:ng], r
        size = end - start
        ans = _room(ans, na + size // ANS_MIN_BYTES)
        res = _room(res, nr + size // RES_MIN_BYTES)
        rat = _room(rat, ng + size // RATED_MIN_BYTES)
        na_, nr_, ng_ = _read_value(buf, start, end, r, heads, ans, na, res, nr, rat, ng)
        if (na_ < 0 or not _distinct(ans, na, na_) or not _distinct(res, nr, nr_)
                or not _distinct(rat, ng, ng_)):
            heads[r] = 0
            return heads, ans[:na], res[:nr], rat[:ng], r
        na, nr, ng = na_, nr_, ng_
    return heads, ans[:na], res[:nr], rat[:ng], -1


# --- the charging kernel's inputs ---------------------------------------------------------


@njit(cache=True, nogil=True)
def session_columns(items: np.ndarray, rows: np.ndarray, heads: np.ndarray, held: np.ndarray,
                    rated: np.ndarray, buf: np.ndarray, names: np.ndarray,
                    bucket_names: np.ndarray, bucket_start: np.ndarray) -> int:
    """Fills the columns of each item (the charging kernel's item table) that its session
    gives, when it has a live one (an event's holds nothing): the reservation of its rating
    group (units, amount, the member flag, and its source: the position of the bucket it
    names among its account's, kernels.charge I_RES_*), what the group was rated so far
    (I_S_USED..I_S_CHARGED) and the session's cost. rows[r]: request r's row in read_sessions'
    tables of `buf` (-1: none); names: the batch's bucket ids end to end, bucket_names
    (offset, length) per bucket position; bucket_start: account a's buckets are positions
    bucket_start[a]..bucket_start[a + 1]. Other columns are left as they are. Returns -1, or
    the first item whose reservation names a bucket its account does not have."""
    for i in range(items.shape[0]):
        row = rows[items[i, I_REQ]]
        if row < 0 or not heads[row, H_EXISTS] or heads[row, H_ST] == ST_EVENT:
            continue
        rg = items[i, I_RG]
        items[i, I_S_COST] = heads[row, H_COST]
        for h in range(heads[row, H_RES_LO], heads[row, H_RES_HI]):
            if held[h, RES_RG] != rg:
                continue
            items[i, I_RES_UNITS], items[i, I_RES_AMOUNT] = held[h, RES_UNITS], held[h, RES_AMOUNT]
            if held[h, RES_MEMBER]:
                items[i, I_FLAGS] |= FLAG_RES_MEMBER
            at, n = held[h, RES_BUCKET_AT], held[h, RES_BUCKET_LEN]
            if n:
                a, found = items[i, I_ACCT], -1
                for b in range(bucket_start[a], bucket_start[a + 1]):
                    if bucket_names[1, b] == n and _same(buf, at, names, bucket_names[0, b], n):
                        found = b
                        break
                if found < 0:
                    return i
                items[i, I_RES_SRC] = found
            break
        for g in range(heads[row, H_RATED_LO], heads[row, H_RATED_HI]):
            if rated[g, RATED_RG] == rg:
                for c in range(RATED_CHARGED - RATED_USED + 1):
                    items[i, I_S_USED + c] = rated[g, RATED_USED + c]
                break
    return -1


@helper
def _same(a: np.ndarray, at: int, b: np.ndarray, bt: int, n: int) -> bool:
    for k in range(n):  # noqa: SIM110 (Numba compiles no generator)
        if a[at + k] != b[bt + k]:
            return False
    return True


# --- writing ----------------------------------------------------------------------------------


@helper
def _put_be(out: np.ndarray, pos: int, v: int, n: int) -> int:
    for k in range(n):
        out[pos + n - 1 - k] = (v >> np.int64(8 * k)) & 0xFF
    return pos + n


@helper
def _put_int(out: np.ndarray, pos: int, v: int) -> int:
    """v as msgpack-python packs an int: the smallest form, unsigned ones for v >= 0."""
    if v >= 0:
        if v < 0x80:
            out[pos] = v
            return pos + 1
        if v < 0x100:
            out[pos] = 0xCC
            return _put_be(out, pos + 1, v, 1)
        if v < 0x10000:
            out[pos] = 0xCD
            return _put_be(out, pos + 1, v, 2)
        if v < 0x100000000:
            out[pos] = 0xCE
            return _put_be(out, pos + 1, v, 4)
        out[pos] = 0xCF
        return _put_be(out, pos + 1, v, 8)
    if v >= -32:
        out[pos] = v & 0xFF
        return pos + 1
    if v >= -0x80:
        out[pos] = 0xD0
        return _put_be(out, pos + 1, v, 1)
    if v >= -0x8000:
        out[pos] = 0xD1
        return _put_be(out, pos + 1, v, 2)
    if v >= -0x80000000:
        out[pos] = 0xD2
        return _put_be(out, pos + 1, v, 4)
    out[pos] = 0xD3
    return _put_be(out, pos + 1, v, 8)


@helper
def _put_header(out: np.ndarray, pos: int, n: int, fix: int, fix_bits: int, first: int,
                shift: int) -> int:
    """The smallest header of n (_length's forms), as msgpack-python writes it."""
    if fix_bits and n < 1 << fix_bits:
        out[pos] = fix | n
        return pos + 1
    if shift == 0 and n < 0x100:
        out[pos] = first
        return _put_be(out, pos + 1, n, 1)
    if n < 0x10000:
        out[pos] = first + 1 - shift
        return _put_be(out, pos + 1, n, 2)
    out[pos] = first + 2 - shift
    return _put_be(out, pos + 1, n, 4)


@helper
def _put_copy(out: np.ndarray, pos: int, src: np.ndarray, at: int, n: int) -> int:
    copy_bytes(out, pos, src, at, n)
    return pos + n


@helper
def _put_str(out: np.ndarray, pos: int, src: np.ndarray, at: int, n: int) -> int:
    return _put_copy(out, _put_header(out, pos, n, *STR), src, at, n)


@helper
def _put_bin(out: np.ndarray, pos: int, src: np.ndarray, at: int, n: int) -> int:
    return _put_copy(out, _put_header(out, pos, n, *BIN), src, at, n)


@helper
def _put_array(out: np.ndarray, pos: int, n: int) -> int:
    return _put_header(out, pos, n, *ARRAY)


@helper
def _put_map(out: np.ndarray, pos: int, n: int) -> int:
    return _put_header(out, pos, n, *MAP)


@helper
def _within(at: int, n: int, size: int) -> bool:
    return at >= 0 and n >= 0 and n <= size - at


# Scratch columns of write_sessions: where a string comes from (OLD: old_buf, NEW: strings).
OLD, NEW = 0, 1
SA_RN, SA_SRC, SA_AT, SA_LEN = range(4)
(SH_RG, SH_SRC, SH_AT, SH_LEN, SH_UNITS, SH_AMOUNT, SH_UNIT, SH_MEMBER,
 SH_LIVE) = range(9)
INT_MAX_BYTES, HEADER_MAX_BYTES = 9, 5


@njit(cache=True, nogil=True)
def write_sessions(old_buf: np.ndarray, heads: np.ndarray, answers: np.ndarray,
                   held: np.ndarray, rated: np.ndarray, rows: np.ndarray, reqs: np.ndarray,
                   items: np.ndarray, outputs: np.ndarray, unit_of_rate: np.ndarray,
                   strings: np.ndarray, bucket_names: np.ndarray, params: np.ndarray) -> tuple:
    """The session value after each request of a batch (outcome.build_outcome's): (the
    values back to back, their (start, end) spans (2, n), expiry per request, rescore 0/1
    per request). `heads`.. `rated`: read_sessions' tables of old_buf; rows[r]: request r's
    old session's heads row (-1: none); reqs: Q_* columns; items, outputs: the charging
    kernel's (a request's items consecutive, requests ascending; a request may have none);
    unit_of_rate: per rate row; strings: the bytes reqs and bucket_names point into;
    bucket_names: (offset, length) per bucket position; params: P_* values. Raises
    ValueError for inputs that point outside their arrays. Its sums are int64, as the
    charging kernel keeps amounts (a session's cost, an expiry in ms), not Python ints."""
    n, m = reqs.shape[0], items.shape[0]
    now, kept = params[P_NOW], params[P_ANSWERS_KEPT]
    default_validity, grace = params[P_DEFAULT_VALIDITY], params[P_STALE_GRACE]
    first = np.empty(n + 1, np.int64)
    i = 0
    for r in range(n):
        first[r] = i
        while i < m and items[i, I_REQ] == r:
            i += 1
    first[n] = i
    if i != m:
        raise ValueError("items must be grouped by request, requests ascending")

    # Scratch for one request's answers, reservations and rated groups: its old session's
    # rows, and one per item at most (a grant pops its group's reservation and appends).
    cap_a = cap_h = cap_g = 1
    for r in range(n):
        row, k = rows[r], first[r + 1] - first[r]
        if row >= heads.shape[0] or row < -1:
            raise ValueError("rows must be heads rows or -1")
        oa = oh = og = 0
        if row >= 0 and heads[row, H_EXISTS]:
            oa = heads[row, H_ANS_HI] - heads[row, H_ANS_LO]
            oh = heads[row, H_RES_HI] - heads[row, H_RES_LO]
            og = heads[row, H_RATED_HI] - heads[row, H_RATED_LO]
            if not (_within(heads[row, H_ANS_LO], oa, answers.shape[0])
                    and _within(heads[row, H_RES_LO], oh, held.shape[0])
                    and _within(heads[row, H_RATED_LO], og, rated.shape[0])):
                raise ValueError("a heads row's ranges are outside its tables")
        cap_a, cap_h, cap_g = max(cap_a, oa + 1), max(cap_h, oh + k), max(cap_g, og + k)
    sa = np.empty((cap_a, 4), np.int64)
    sh = np.empty((cap_h, 9), np.int64)
    sg = np.empty((cap_g, RATED_COLUMNS), np.int64)

    out = np.empty(old_buf.size + strings.size + 64 * n + 64, np.uint8)
    spans = np.empty((2, n), np.int64)
    expiry = np.empty(n, np.int64)
    rescore = np.zeros(n, np.int64)
    pos = 0
    for r in range(n):
        row = rows[r]
        exists = row >= 0 and heads[row, H_EXISTS] != 0
        live = exists and heads[row, H_ST] != ST_EVENT
        rn = reqs[r, Q_RN]

        na = 0
        if exists:
            for a in range(heads[row, H_ANS_LO], heads[row, H_ANS_HI]):
                sa[na, SA_RN], sa[na, SA_SRC] = answers[a, ANS_RN], OLD
                sa[na, SA_AT], sa[na, SA_LEN] = answers[a, ANS_AT], answers[a, ANS_LEN]
                na += 1
        k = 0
        while k < na and sa[k, SA_RN] != rn:  # a dict assignment keeps a key's place
            k += 1
        na = max(na, k + 1)
        sa[k, SA_RN], sa[k, SA_SRC] = rn, NEW
        sa[k, SA_AT], sa[k, SA_LEN] = reqs[r, Q_ANS_AT], reqs[r, Q_ANS_LEN]
        if rn >= kept:  # request numbers start at 0: nothing to drop before answers_kept
            oldest, k = rn - kept, 0
            for a in range(na):
                if sa[a, SA_RN] > oldest:
                    sa[k] = sa[a]
                    k += 1
            na = k

        nh = ng = 0
        cost = 0
        if live:
            for h in range(heads[row, H_RES_LO], heads[row, H_RES_HI]):
                sh[nh, SH_RG], sh[nh, SH_SRC] = held[h, RES_RG], OLD
                sh[nh, SH_AT], sh[nh, SH_LEN] = held[h, RES_BUCKET_AT], held[h, RES_BUCKET_LEN]
                sh[nh, SH_UNITS], sh[nh, SH_AMOUNT] = held[h, RES_UNITS], held[h, RES_AMOUNT]
                sh[nh, SH_UNIT], sh[nh, SH_MEMBER] = held[h, RES_UNIT], held[h, RES_MEMBER]
                sh[nh, SH_LIVE] = 1
                nh += 1
            for g in range(heads[row, H_RATED_LO], heads[row, H_RATED_HI]):
                sg[ng] = rated[g]
                ng += 1
            cost = heads[row, H_COST]
        longest = 0
        for i in range(first[r], first[r + 1]):
            rg = items[i, I_RG]
            if (outputs[O_S_USED, i] or outputs[O_S_BILLED, i] or outputs[O_S_REM, i]
                    or outputs[O_S_CHARGED, i]):  # else: not billed, unchanged
                g = 0
                while g < ng and sg[g, RATED_RG] != rg:
                    g += 1
                ng = max(ng, g + 1)
                sg[g, RATED_RG], sg[g, RATED_USED] = rg, outputs[O_S_USED, i]
                sg[g, RATED_BILLED], sg[g, RATED_REM] = outputs[O_S_BILLED, i], outputs[O_S_REM, i]
                sg[g, RATED_CHARGED] = outputs[O_S_CHARGED, i]
            cost += outputs[O_CHARGED, i]
            granted = outputs[O_GRANTED, i]
            # Kept held: the one reservation the kernel refused to give back (int64 limits).
            if granted == 0 or outputs[O_RESULT, i] != INVALID_AVP_VALUE:
                for h in range(nh):
                    if sh[h, SH_LIVE] and sh[h, SH_RG] == rg:
                        sh[h, SH_LIVE] = 0
                        break
                if granted > 0 and items[i, I_WANT] == WANT_GRANT:
                    s, rate = outputs[O_RES_SRC, i], items[i, I_RATE]
                    at = length = 0
                    if s != MONEY_SOURCE:
                        if not 0 <= s < bucket_names.shape[1]:
                            raise ValueError("a reservation's source is no bucket position")
                        at, length = bucket_names[0, s], bucket_names[1, s]
                    if rate >= unit_of_rate.size:
                        raise ValueError("an item's rate has no unit_of_rate")
                    sh[nh, SH_RG], sh[nh, SH_SRC], sh[nh, SH_AT], sh[nh, SH_LEN] = (
                        rg, NEW, at, length)
                    sh[nh, SH_UNITS], sh[nh, SH_AMOUNT] = granted, outputs[O_RES_AMOUNT, i]
                    sh[nh, SH_UNIT] = unit_of_rate[rate] if rate >= 0 else 0
                    sh[nh, SH_MEMBER] = 1 if items[i, I_MEMBER] >= 0 else 0
                    sh[nh, SH_LIVE] = 1
                    nh += 1
                    validity = outputs[O_VALIDITY, i]
                    longest = max(longest, validity if validity else default_validity)

        kind = reqs[r, Q_KIND]
        ended = kind in (TERMINATION, EVENT)
        st = ST_EVENT if kind == EVENT else ST_ENDED if ended else ST_OPEN
        exp = 0 if ended else now + ((longest if longest else default_validity) + grace) * 1000
        expiry[r] = exp
        if not ended and exists and (heads[row, H_EXP] == 0 or exp < heads[row, H_EXP]):
            rescore[r] = 1

        # Checked before any copy, and the bytes the value can take at most made room for.
        sub_at, sub_len = reqs[r, Q_SUB_AT], reqs[r, Q_SUB_LEN]
        acct_at, acct_len = reqs[r, Q_ACCT_AT], reqs[r, Q_ACCT_LEN]
        if not (_within(sub_at, sub_len, strings.size)
                and _within(acct_at, acct_len, strings.size)):
            raise ValueError("a request's strings are outside `strings`")
        most = 1 + 6 * INT_MAX_BYTES + 5 * HEADER_MAX_BYTES + sub_len + acct_len
        for a in range(na):
            src_size = old_buf.size if sa[a, SA_SRC] == OLD else strings.size
            if not _within(sa[a, SA_AT], sa[a, SA_LEN], src_size):
                raise ValueError("an answer is outside its buffer")
            most += INT_MAX_BYTES + HEADER_MAX_BYTES + sa[a, SA_LEN]
        live_held = 0
        for h in range(nh):
            if sh[h, SH_LIVE]:
                src_size = old_buf.size if sh[h, SH_SRC] == OLD else strings.size
                if not _within(sh[h, SH_AT], sh[h, SH_LEN], src_size):
                    raise ValueError("a bucket id is outside its buffer")
                most += 2 + 4 * INT_MAX_BYTES + HEADER_MAX_BYTES + sh[h, SH_LEN]
                live_held += 1
        most += ng * (2 + 5 * INT_MAX_BYTES)
        if pos + most > out.size:
            grown = np.empty(max(2 * out.size, pos + most), np.uint8)
            grown[:pos] = out[:pos]
            out = grown

        start = pos
        pos = _put_array(out, pos, FIELDS)
        pos = _put_int(out, pos, FORMAT)
        pos = _put_int(out, pos, rn)
        pos = _put_int(out, pos, st)
        pos = _put_int(out, pos, reqs[r, Q_TIME])
        pos = _put_str(out, pos, strings, sub_at, sub_len)
        pos = _put_str(out, pos, strings, acct_at, acct_len)
        pos = _put_int(out, pos, exp)
        pos = _put_int(out, pos, cost)
        pos = _put_map(out, pos, na)
        for a in range(na):
            pos = _put_int(out, pos, sa[a, SA_RN])
            # Two calls, not one on either buffer: a read-only buffer is another Numba type.
            if sa[a, SA_SRC] == OLD:
                pos = _put_bin(out, pos, old_buf, sa[a, SA_AT], sa[a, SA_LEN])
            else:
                pos = _put_bin(out, pos, strings, sa[a, SA_AT], sa[a, SA_LEN])
        pos = _put_array(out, pos, live_held)
        for h in range(nh):
            if sh[h, SH_LIVE]:
                pos = _put_array(out, pos, 6)
                pos = _put_int(out, pos, sh[h, SH_RG])
                if sh[h, SH_SRC] == OLD:
                    pos = _put_str(out, pos, old_buf, sh[h, SH_AT], sh[h, SH_LEN])
                else:
                    pos = _put_str(out, pos, strings, sh[h, SH_AT], sh[h, SH_LEN])
                pos = _put_int(out, pos, sh[h, SH_UNITS])
                pos = _put_int(out, pos, sh[h, SH_AMOUNT])
                pos = _put_int(out, pos, sh[h, SH_UNIT])
                out[pos] = 0xC3 if sh[h, SH_MEMBER] else 0xC2
                pos += 1
        pos = _put_map(out, pos, ng)
        for g in range(ng):
            pos = _put_int(out, pos, sg[g, RATED_RG])
            pos = _put_array(out, pos, 4)
            for c in range(RATED_USED, RATED_CHARGED + 1):
                pos = _put_int(out, pos, sg[g, c])
        spans[0, r], spans[1, r] = start, pos
    return out[:pos], spans, expiry, rescore
