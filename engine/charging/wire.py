"""The wire codec: Charging requests parsed from protobuf wire bytes into arrays, and answers
encoded from arrays into wire bytes, each by one Numba kernel (docs/internals.md, the hot
path). Python touches the batch, never a request.

Parsing reads a `ChargeBatchRequest` (or one `ChargeRequest`) into two tables:
- `requests`, rows R_*, a column per request: the scalar fields as int64, each string field as
  (offset, length) into the message buffer plus a 64-bit hash (`hash64`), the request's own
  span in the buffer and the range of its rating-group entries;
- `units`, rows U_*, a column per `ServiceUnits` entry in message order: the owning request's
  column, rating group, service, reporting reason, whether `requested` / `used` were present,
  and their five `Units` fields each.
It decides as upb does wherever the format leaves a choice, because upb is the parser it
replaces and the oracle of tests/unit/test_wire.py: a scalar given twice keeps the last value,
a sub-message given twice is merged (its fields are parsed on top of the earlier ones), a known
field with the wrong wire type is kept as an unknown field (skipped), uint32 fields keep the low
32 bits of the varint and enums its low 32 bits as a signed int32, strings must be valid UTF-8,
tags are at most 5 bytes and 32 bits, lengths at most 5 bytes, other varints at most 10.
One deliberate difference: groups (wire type 3, unused since proto2) are refused, where upb
skips an unknown one; no proto3 sender writes them.

Encoding writes a `ChargeBatchAnswer` from an answers table (A_*), a grants table (G_*), a
table of final-unit indications (F_*) and a table of strings (error messages, redirect URLs,
filter ids), in two passes (sizes, then bytes), byte for byte what upb's SerializeToString
writes for the same message. It also returns each answer's span: the bytes of one
`ChargeAnswer`, which are the stored answer of that request and the reply of a unary call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.charge import helper
from tollgate.engine.charging.kernels.memory import copy_bytes
from tollgate.engine.errors import InvalidArgument

# --- parse: the tables' rows ---------------------------------------------------------------

(R_NUMBER, R_TYPE, R_TIME, R_UNITS_LO, R_UNITS_HI, R_MSG_OFF, R_MSG_LEN) = range(7)
"""Request rows: request_number, type, event_time_ms; the request's units are columns
[R_UNITS_LO, R_UNITS_HI) of the units table; the request message is buf[R_MSG_OFF:][:R_MSG_LEN]
(what a retransmission check or an error answer may want)."""
R_SESSION, R_SUBSCRIBER, R_ZONE, R_ORIGIN, R_DESTINATION = 7, 10, 13, 16, 19
"""A string field takes three rows from its base: offset, length (bytes) and hash."""
OFF, LEN, HASH = 0, 1, 2
R_ROWS = 22

(U_REQ, U_RATING_GROUP, U_SERVICE_ID, U_REASON, U_HAS_REQUESTED, U_HAS_USED) = range(6)
U_REQUESTED, U_USED = 6, 11
"""Five rows each from these, in the order of Units' fields: total_octets, input_octets,
output_octets, time_seconds, service_units."""
U_ROWS = 16

# Parse errors: a code, the byte offset of the field (or tag) that failed, the request's column
# (-1 between requests) and the ChargeRequest field it failed in (0: in a tag or between).
E_OK, E_TRUNCATED, E_VARINT_TOO_LONG, E_LENGTH, E_WIRE_TYPE, E_GROUP, E_TAG, E_UTF8 = range(8)
E_ROOM = 99  # internal: the units table is full (the kernel grows it and parses again)
ERR_CODE, ERR_POS, ERR_REQUEST, ERR_FIELD = range(4)
ERRORS = {
    E_TRUNCATED: "a value runs past the end of its message",
    E_VARINT_TOO_LONG: "a varint is longer than 10 bytes (5 for a length)",
    E_LENGTH: "a length runs past the end of its message",
    E_WIRE_TYPE: "an invalid wire type (6, 7 or an unmatched end of group)",
    E_GROUP: "a group (wire type 3), which Tollgate does not read",
    E_TAG: "an invalid tag (field number 0, or over 32 bits or 5 bytes)",
    E_UTF8: "a string field is not valid UTF-8",
}

HASH_K = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio: odd, bits well spread
FMIX_1, FMIX_2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53  # MurmurHash3's 64-bit finalizer
_HASH_K, _FMIX_1, _FMIX_2 = np.uint64(HASH_K), np.uint64(FMIX_1), np.uint64(FMIX_2)
# Numba turns arithmetic mixing uint64 and int64 into float64: every constant that meets a
# varint's uint64 value is a uint64 too.
_U0, _U7, _LOW7, _LOW32 = np.uint64(0), np.uint64(7), np.uint64(0x7F), np.uint64(0xFFFFFFFF)
_INT32_SIGN = np.uint64(0x80000000)
_U8, _U32, _U33, _HIGH_BITS = (np.uint64(8), np.uint64(32), np.uint64(33),
                               np.uint64(0x8080808080808080))

Int = int | np.int64
"""An integer in a kernel (Numba types Python's and numpy's alike)."""

WT_VARINT, WT_FIXED64, WT_LEN, WT_START_GROUP, WT_END_GROUP, WT_FIXED32 = range(6)


@helper
def _varint(buf: np.ndarray, pos: int, end: int) -> tuple[np.uint64, int]:
    """(value, position after it); the position is -E_* where the varint is broken. Bits past
    the 64th are dropped, as upb does."""
    if pos < end and buf[pos] < 0x80:  # most tags and small values: one byte
        return np.uint64(buf[pos]), pos + 1
    value = _U0
    shift = _U0
    for _ in range(10):
        if pos >= end:
            return value, -E_TRUNCATED
        b = buf[pos]
        pos += 1
        value |= (np.uint64(b) & _LOW7) << shift
        if b < 0x80:
            return value, pos
        shift += _U7
    return value, -E_VARINT_TOO_LONG


@helper
def _tag(buf: np.ndarray, pos: int, end: int) -> tuple[Int, Int, int]:
    """(field number, wire type, position after the tag), the position -E_* if it is bad."""
    value, after = _varint(buf, pos, end)
    if after == -E_TRUNCATED:
        return 0, 0, after
    if after < 0 or after - pos > 5 or value > _LOW32 or value >> np.uint64(3) == _U0:
        return 0, 0, -E_TAG
    return np.int64(value >> np.uint64(3)), np.int64(value & _U7), after


@helper
def _length(buf: np.ndarray, pos: int, end: int) -> tuple[int, int]:
    """A length-delimited value's (start, end), the end -E_* if it does not fit."""
    size, start = _varint(buf, pos, end)
    if start < 0:
        return 0, start
    if start - pos > 5:
        return 0, -E_VARINT_TOO_LONG
    if size > np.uint64(end - start):
        return 0, -E_LENGTH
    return start, start + np.int64(size)


@helper
def _skip(buf: np.ndarray, pos: int, end: int, wire_type: int) -> int:
    """The position after an unknown field's value, or -E_*."""
    if wire_type == WT_VARINT:
        return _varint(buf, pos, end)[1]
    if wire_type == WT_LEN:
        return _length(buf, pos, end)[1]
    if wire_type in (WT_FIXED64, WT_FIXED32):
        after = pos + (8 if wire_type == WT_FIXED64 else 4)
        return after if after <= end else -E_TRUNCATED
    if wire_type == WT_START_GROUP:
        return -E_GROUP
    return -E_WIRE_TYPE


@helper
def _uint32(value: np.uint64) -> Int:
    return np.int64(value & _LOW32)


@helper
def _int32(value: np.uint64) -> Int:
    """An enum's value: the low 32 bits, signed (a negative enum arrives as 10 bytes)."""
    low = value & _LOW32
    return np.int64(low) - (np.int64(1) << 32) if low & _INT32_SIGN else np.int64(low)


@helper
def _utf8_valid(buf: np.ndarray, pos: int, end: int) -> bool:
    """Well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or code points past
    U+10FFFF), the check upb makes on a proto3 string."""
    while pos < end:
        b = buf[pos]
        if b < 0x80:
            pos += 1
            continue
        lo, hi = 0x80, 0xBF  # the second byte's range; further bytes are always 80..BF
        if 0xC2 <= b <= 0xDF:
            more = 1
        elif 0xE0 <= b <= 0xEF:
            more = 2
            if b == 0xE0:
                lo = 0xA0
            elif b == 0xED:
                hi = 0x9F
        elif 0xF0 <= b <= 0xF4:
            more = 3
            if b == 0xF0:
                lo = 0x90
            elif b == 0xF4:
                hi = 0x8F
        else:
            return False
        if pos + more >= end:
            return False
        if not lo <= buf[pos + 1] <= hi:
            return False
        for k in range(2, more + 1):
            if not 0x80 <= buf[pos + k] <= 0xBF:
                return False
        pos += more + 1
    return True


@helper
def _fmix(h: np.uint64) -> np.uint64:
    h = (h ^ (h >> _U33)) * _FMIX_1
    h = (h ^ (h >> _U33)) * _FMIX_2
    return h ^ (h >> _U33)


@helper
def _string(buf: np.ndarray, start: int, end: int, req: np.ndarray, row: int, r: int) -> bool:
    """Records a string field (last one wins) with its hash64; False if it is not UTF-8.
    The hash takes 8 bytes a step: byte-wise FNV-1a is a chain of one multiply per byte."""
    h = _HASH_K * np.uint64(end - start)
    seen = _U0
    pos = start
    while pos < end:
        word = _U0
        if pos + 8 <= end:  # a whole word, spelled out: LLVM makes it one load
            word = (np.uint64(buf[pos]) | np.uint64(buf[pos + 1]) << _U8
                    | np.uint64(buf[pos + 2]) << np.uint64(16)
                    | np.uint64(buf[pos + 3]) << np.uint64(24)
                    | np.uint64(buf[pos + 4]) << _U32
                    | np.uint64(buf[pos + 5]) << np.uint64(40)
                    | np.uint64(buf[pos + 6]) << np.uint64(48)
                    | np.uint64(buf[pos + 7]) << np.uint64(56))
        else:
            shift = _U0
            for i in range(pos, end):
                word |= np.uint64(buf[i]) << shift
                shift += _U8
        seen |= word
        h = (h ^ word) * _HASH_K
        h ^= h >> _U32
        pos += 8
    req[row + OFF, r] = start
    req[row + LEN, r] = end - start
    req[row + HASH, r] = np.int64(_fmix(h))
    # ASCII (the usual id) needs no further look.
    return seen & _HIGH_BITS == _U0 or _utf8_valid(buf, start, end)


@helper
def _string_row(field: int) -> int:
    """The base row of a ChargeRequest string field, -1 for the other fields."""
    if field == 1:
        return R_SESSION
    if field == 4:
        return R_SUBSCRIBER
    if field == 6:
        return R_ZONE
    if field == 8:
        return R_ORIGIN
    if field == 9:
        return R_DESTINATION
    return -1


@helper
def _parse_amounts(buf: np.ndarray, pos: int, end: int, units: np.ndarray, base: int,
                   u: int) -> tuple[int, int]:
    """A Units message into rows base..base+4 of column u, on top of what a earlier copy of
    the same field left there (proto3 merges a repeated sub-message). (error position, E_*)."""
    while pos < end:
        at = pos
        field, wire_type, pos = _tag(buf, pos, end)
        if pos < 0:
            return at, -pos
        if wire_type == WT_VARINT and 1 <= field <= 5:
            value, pos = _varint(buf, pos, end)
            if pos < 0:
                return at, -pos
            units[base + field - 1, u] = np.int64(value)
        else:
            pos = _skip(buf, pos, end, wire_type)
            if pos < 0:
                return at, -pos
    return 0, E_OK


@helper
def _parse_service_units(buf: np.ndarray, pos: int, end: int, units: np.ndarray,
                         u: int) -> tuple[int, int]:
    """A ServiceUnits message into column u: (error position, E_*)."""
    while pos < end:
        at = pos
        field, wire_type, pos = _tag(buf, pos, end)
        if pos < 0:
            return at, -pos
        if wire_type == WT_VARINT and (field == 1 or field == 2 or field == 5):
            value, pos = _varint(buf, pos, end)
            if pos < 0:
                return at, -pos
            if field == 1:
                units[U_RATING_GROUP, u] = _uint32(value)
            elif field == 2:
                units[U_SERVICE_ID, u] = _uint32(value)
            else:
                units[U_REASON, u] = _int32(value)
        elif wire_type == WT_LEN and (field == 3 or field == 4):
            start, pos = _length(buf, pos, end)
            if pos < 0:
                return at, -pos
            units[U_HAS_REQUESTED if field == 3 else U_HAS_USED, u] = 1
            bad, code = _parse_amounts(buf, start, pos, units,
                                       U_REQUESTED if field == 3 else U_USED, u)
            if code != E_OK:
                return bad, code
        else:
            pos = _skip(buf, pos, end, wire_type)
            if pos < 0:
                return at, -pos
    return 0, E_OK


@helper
def _parse_request(buf: np.ndarray, start: int, end: int, r: int, req: np.ndarray,
                   units: np.ndarray, nu: int) -> tuple[int, int, int, int]:
    """A ChargeRequest in buf[start:end] into column r, its units from column nu on:
    (units used so far, error position, E_*, the field it failed in). E_ROOM when the units
    table is full: nothing is lost, the caller grows it and calls again."""
    for row in range(R_ROWS):
        req[row, r] = 0
    for row in (R_SESSION, R_SUBSCRIBER, R_ZONE, R_ORIGIN, R_DESTINATION):
        req[row + HASH, r] = EMPTY_HASH  # an absent string is the empty string
    req[R_MSG_OFF, r] = start
    req[R_MSG_LEN, r] = end - start
    req[R_UNITS_LO, r] = nu
    pos = start
    while pos < end:
        at = pos
        field, wire_type, pos = _tag(buf, pos, end)
        if pos < 0:
            return nu, at, -pos, 0
        if wire_type == WT_LEN and field == 7:
            if nu == units.shape[1]:
                return nu, at, E_ROOM, field
            sub, pos = _length(buf, pos, end)
            if pos < 0:
                return nu, at, -pos, field
            for row in range(U_ROWS):
                units[row, nu] = 0
            units[U_REQ, nu] = r
            bad, code = _parse_service_units(buf, sub, pos, units, nu)
            if code != E_OK:
                return nu, bad, code, field
            nu += 1
        elif wire_type == WT_LEN and _string_row(field) >= 0:
            sub, pos = _length(buf, pos, end)
            if pos < 0:
                return nu, at, -pos, field
            if not _string(buf, sub, pos, req, _string_row(field), r):
                return nu, at, E_UTF8, field
        elif wire_type == WT_VARINT and (field == 2 or field == 3 or field == 5):
            value, pos = _varint(buf, pos, end)
            if pos < 0:
                return nu, at, -pos, field
            if field == 2:
                req[R_NUMBER, r] = _uint32(value)
            elif field == 3:
                req[R_TYPE, r] = _int32(value)
            else:
                req[R_TIME, r] = np.int64(value)
        else:
            pos = _skip(buf, pos, end, wire_type)
            if pos < 0:
                return nu, at, -pos, field
    req[R_UNITS_HI, r] = nu
    return nu, 0, E_OK, 0


@helper
def _count_requests(buf: np.ndarray) -> int:
    """How many requests a ChargeBatchRequest holds (up to its first flaw, which the parse
    then reports), so the requests table is allocated once."""
    pos, end, n = 0, buf.shape[0], 0
    while pos < end:
        field, wire_type, pos = _tag(buf, pos, end)
        if pos < 0:
            break
        if field == 1 and wire_type == WT_LEN:
            n += 1
        pos = _skip(buf, pos, end, wire_type)
        if pos < 0:
            break
    return n


@helper
def _parse_requests(buf: np.ndarray, single: bool, pos: int, r: int, nu: int,
                    req: np.ndarray, units: np.ndarray, err: np.ndarray) -> tuple[int, int, int]:
    """Parses the requests from byte `pos` on (request r, units column nu): (pos, r, nu) where
    it stopped, at the end, at an error (written to err) or, with err[ERR_CODE] == E_ROOM, at
    the start of a request that did not fit in the units table.
    A helper of its own so that the kernel's arrays are not reference-counted per request."""
    end = buf.shape[0]
    while (single and r == 0) or (not single and pos < end):
        at = pos
        if single:
            start, stop = 0, end
        else:
            field, wire_type, pos = _tag(buf, pos, end)
            if pos >= 0 and field == 1 and wire_type == WT_LEN:
                start, stop = _length(buf, pos, end)
                pos = stop
            elif pos >= 0:
                pos = _skip(buf, pos, end, wire_type)
                if pos >= 0:
                    continue  # an unknown field of the batch
            if pos < 0:
                err[ERR_CODE], err[ERR_POS], err[ERR_REQUEST] = -pos, at, -1
                return pos, r, nu
        done, bad, code, field = _parse_request(buf, start, stop, r, req, units, nu)
        if code != E_OK:
            err[ERR_CODE], err[ERR_POS], err[ERR_REQUEST], err[ERR_FIELD] = code, bad, r, field
            return at, r, nu
        nu = done
        r += 1
    return pos, r, nu


@njit(cache=True, nogil=True)
def parse_kernel(buf: np.ndarray, single: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parses a ChargeBatchRequest (a ChargeRequest if `single`) into (requests: R_* rows,
    units: U_* rows, err: ERR_* values, err[ERR_CODE] == E_OK when it parsed). Every read is
    bounded by the end of the message it is in: bad input is an error code, never a read
    outside buf."""
    n = 1 if single else _count_requests(buf)
    req = np.empty((R_ROWS, n), np.int64)  # each column is zeroed as its request starts
    units = np.empty((U_ROWS, 2 * n + 8), np.int64)  # one or two rating groups is usual
    err = np.zeros(4, np.int64)
    pos = r = nu = 0
    while True:
        pos, r, nu = _parse_requests(buf, single, pos, r, nu, req, units, err)
        if err[ERR_CODE] != E_ROOM:
            break
        err[:] = 0
        grown = np.empty((U_ROWS, 2 * units.shape[1]), np.int64)
        grown[:, :nu] = units[:, :nu]
        units = grown
    return req, units[:, :nu if err[ERR_CODE] == E_OK else 0], err


# --- parse: the Python side ----------------------------------------------------------------


class WireError(InvalidArgument):
    """A message that cannot be read at all: the call is refused with INVALID_ARGUMENT, with
    the text today's upb-based server gives ("cannot read <type>: Error parsing message with
    type ...") and where it failed."""

    def __init__(self, message_type: str, err: np.ndarray) -> None:
        self.code, self.position, self.request, self.field = (int(v) for v in err)
        where = f"at byte {self.position}"
        if self.request >= 0:
            where += f", request {self.request}"
        if self.field:
            where += f", field {self.field}"
        super().__init__(f"cannot read {message_type}: Error parsing message with type "
                         f"'tollgate.v1.{message_type}': {ERRORS[self.code]} ({where})")


@dataclass(frozen=True, slots=True)
class Parsed:
    """The tables of one parsed message; strings are offsets into `buf`, which they keep."""

    buf: np.ndarray
    requests: np.ndarray  # int64, R_* rows, a column per request
    units: np.ndarray  # int64, U_* rows, a column per rating-group entry (rows contiguous)

    def text(self, row: int, r: int) -> str:
        """A string field of request r (row: R_SESSION, R_SUBSCRIBER, ...), for Python's
        occasional use (messages, logs); the hot path keeps to offsets and hashes."""
        off = self.requests[row + OFF, r]
        return bytes(self.buf[off:off + self.requests[row + LEN, r]]).decode()


def _as_array(buf: bytes | np.ndarray) -> np.ndarray:
    # np.frombuffer shares the bytes gRPC hands over (read-only): no copy.
    return np.frombuffer(buf, np.uint8) if isinstance(buf, bytes) else buf


def parse_batch(buf: bytes | np.ndarray) -> Parsed:
    """A ChargeBatchRequest's wire bytes as tables; WireError if they cannot be read."""
    return _parse(_as_array(buf), False, "ChargeBatchRequest")


def parse_request(buf: bytes | np.ndarray) -> Parsed:
    """One ChargeRequest (the unary Charge call) as tables of one request."""
    return _parse(_as_array(buf), True, "ChargeRequest")


def _parse(buf: np.ndarray, single: bool, message_type: str) -> Parsed:
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise TypeError("the wire codec reads a 1-D uint8 array")
    req, units, err = parse_kernel(buf, single)
    if err[ERR_CODE] != E_OK:
        raise WireError(message_type, err)
    # The kernel's table is a slice of what it allocated: as such Numba types it as of any
    # layout, a variant of each kernel it is passed to beside the contiguous one.
    return Parsed(buf, req, np.ascontiguousarray(units))


def hash64(data: bytes) -> int:
    """The hash the kernel stores for a string field's bytes, as a signed int64 (the key of
    Python-side lookups, and the kernel's reference in tests): each 8 bytes (little-endian,
    the last zero-padded) mixed in by multiply and shift, seeded with the length, finished
    by MurmurHash3's fmix64."""
    mask = 2**64 - 1
    h = HASH_K * len(data) & mask
    for i in range(0, len(data), 8):
        h = (h ^ int.from_bytes(data[i:i + 8], "little")) * HASH_K & mask
        h ^= h >> 32
    for k in (FMIX_1, FMIX_2):
        h = (h ^ h >> 33) * k & mask
    h ^= h >> 33
    return h - (1 << 64) if h >= 1 << 63 else h


EMPTY_HASH = hash64(b"")


# --- encode --------------------------------------------------------------------------------

(A_SESSION_OFF, A_SESSION_LEN, A_NUMBER, A_RESULT, A_GRANTS_LO, A_GRANTS_HI, A_ERROR,
 A_CHARGED) = range(8)
"""Answer rows: session_id is src[A_SESSION_OFF:][:A_SESSION_LEN] (the request's bytes);
grants are columns [A_GRANTS_LO, A_GRANTS_HI) of the grants table; A_ERROR is the error
message's index in the string table, -1 for none."""
A_ROWS = 8
(G_RATING_GROUP, G_SERVICE_ID, G_RESULT, G_UNIT, G_AMOUNT, G_VALIDITY, G_HOLDING,
 G_VOLUME_THRESHOLD, G_TIME_THRESHOLD, G_FINAL) = range(10)
"""Grant rows: G_UNIT is the Units field (1..5) that carries G_AMOUNT, 0 for no `granted`
(a present one is written even when the amount is 0); G_FINAL is the index of the
final-unit indication, -1 for none."""
G_ROWS = 10
F_ACTION, F_REDIRECT, F_FILTERS_LO, F_FILTERS_HI = range(4)
"""Final-unit rows (a plan's indication, shared by its grants): the redirect URL's string
index (-1: none); its filter ids are the string indices filters[F_FILTERS_LO:F_FILTERS_HI]."""
F_ROWS = 4
_FIELD_1 = 1  # tags (field << 3 | wire type), all one byte: every field number is under 16

BAD_SESSION, BAD_GRANTS, BAD_ERROR, BAD_FINAL, BAD_REDIRECT, BAD_FILTERS, BAD_UNIT = range(1, 8)
BAD_TABLES = {
    BAD_SESSION: "a session_id range outside the request bytes",
    BAD_GRANTS: "an answer's grants outside the grants table",
    BAD_ERROR: "an error message index outside the string table",
    BAD_FINAL: "a final-unit index outside its table",
    BAD_REDIRECT: "a redirect URL index outside the string table",
    BAD_FILTERS: "filter ids outside their table, or an index outside the string table",
    BAD_UNIT: "G_UNIT other than 0 (no granted units) or a Units field (1 to 5)",
}


@helper
def _outside(start: int, size: int, limit: int) -> bool:
    return start < 0 or size < 0 or start > limit - size


@helper
def _check_tables(src: np.ndarray, answers: np.ndarray, grants: np.ndarray,
                  finals: np.ndarray, filters: np.ndarray, at: np.ndarray) -> int:
    """The first BAD_* the tables have, 0 if the kernel may follow every index unchecked."""
    strings = at.shape[0] - 1
    for a in range(answers.shape[1]):
        if _outside(answers[A_SESSION_OFF, a], answers[A_SESSION_LEN, a], src.shape[0]):
            return BAD_SESSION
        lo = answers[A_GRANTS_LO, a]
        if _outside(lo, answers[A_GRANTS_HI, a] - lo, grants.shape[1]):
            return BAD_GRANTS
        if not -1 <= answers[A_ERROR, a] < strings:
            return BAD_ERROR
    for g in range(grants.shape[1]):
        if not -1 <= grants[G_FINAL, g] < finals.shape[1]:
            return BAD_FINAL
        if not 0 <= grants[G_UNIT, g] <= 5:
            return BAD_UNIT
    for f in range(finals.shape[1]):
        if not -1 <= finals[F_REDIRECT, f] < strings:
            return BAD_REDIRECT
        lo = finals[F_FILTERS_LO, f]
        if _outside(lo, finals[F_FILTERS_HI, f] - lo, filters.shape[0]):
            return BAD_FILTERS
    for i in range(filters.shape[0]):
        if not 0 <= filters[i] < strings:
            return BAD_FILTERS
    return 0


@helper
def _tag_of(field: int, wire_type: int) -> int:
    return field << 3 | wire_type


@helper
def _varint_size(value: np.uint64) -> int:
    n = 1
    while value >= np.uint64(0x80):
        value >>= _U7
        n += 1
    return n


@helper
def _enum(value: int) -> np.uint64:
    """An int32 field's varint: a negative value sign-extended to 64 bits (10 bytes)."""
    return np.uint64(np.int64(np.int32(value)))


@helper
def _u32(value: int) -> np.uint64:
    return np.uint64(value) & _LOW32


@helper
def _scalar_size(value: np.uint64) -> int:
    """A varint field's size with its tag; proto3 does not write a zero."""
    return 0 if value == _U0 else 1 + _varint_size(value)


@helper
def _nested_size(size: int) -> int:
    """A length-delimited field's size with its tag and length."""
    return 1 + _varint_size(np.uint64(size)) + size


@helper
def _string_size(at: np.ndarray, k: int) -> int:
    """The size of string k of the table as a field; nothing for an empty one."""
    size = at[k + 1] - at[k] if k >= 0 else 0
    return _nested_size(size) if size > 0 else 0


@helper
def _put_varint(out: np.ndarray, pos: int, value: np.uint64) -> int:
    while value >= np.uint64(0x80):
        out[pos] = np.uint8((value & _LOW7) | np.uint64(0x80))
        value >>= _U7
        pos += 1
    out[pos] = np.uint8(value)
    return pos + 1


@helper
def _put_scalar(out: np.ndarray, pos: int, field: int, value: np.uint64) -> int:
    if value == _U0:
        return pos
    out[pos] = _tag_of(field, WT_VARINT)
    return _put_varint(out, pos + 1, value)


@helper
def _put_head(out: np.ndarray, pos: int, field: int, size: int) -> int:
    """A length-delimited field's tag and length; its bytes follow."""
    out[pos] = _tag_of(field, WT_LEN)
    return _put_varint(out, pos + 1, np.uint64(size))


@helper
def _put_bytes(out: np.ndarray, pos: int, field: int, src: np.ndarray, start: int,
               size: int, always: bool) -> int:
    if size == 0 and not always:
        return pos
    pos = _put_head(out, pos, field, size)
    copy_bytes(out, pos, src, start, size)
    return pos + size


@helper
def _final_size(finals: np.ndarray, f: int, filters: np.ndarray, at: np.ndarray) -> int:
    size = _scalar_size(_enum(finals[F_ACTION, f])) + _string_size(at, finals[F_REDIRECT, f])
    for i in range(finals[F_FILTERS_LO, f], finals[F_FILTERS_HI, f]):
        k = filters[i]
        size += _nested_size(at[k + 1] - at[k])  # a repeated string writes empty ones too
    return size


@helper
def _grant_size(grants: np.ndarray, g: int, final_sizes: np.ndarray) -> int:
    size = (_scalar_size(_u32(grants[G_RATING_GROUP, g]))
            + _scalar_size(_u32(grants[G_SERVICE_ID, g]))
            + _scalar_size(_enum(grants[G_RESULT, g]))
            + _scalar_size(_u32(grants[G_VALIDITY, g]))
            + _scalar_size(_u32(grants[G_HOLDING, g]))
            + _scalar_size(np.uint64(grants[G_VOLUME_THRESHOLD, g]))
            + _scalar_size(_u32(grants[G_TIME_THRESHOLD, g])))
    if grants[G_UNIT, g] > 0:
        size += _nested_size(_scalar_size(np.uint64(grants[G_AMOUNT, g])))
    if grants[G_FINAL, g] >= 0:
        size += _nested_size(final_sizes[grants[G_FINAL, g]])
    return size


@helper
def _put_grant(out: np.ndarray, pos: int, grants: np.ndarray, g: int, final_sizes: np.ndarray,
               finals: np.ndarray, filters: np.ndarray, text: np.ndarray,
               at: np.ndarray) -> int:
    pos = _put_scalar(out, pos, 1, _u32(grants[G_RATING_GROUP, g]))
    pos = _put_scalar(out, pos, 2, _u32(grants[G_SERVICE_ID, g]))
    pos = _put_scalar(out, pos, 3, _enum(grants[G_RESULT, g]))
    unit = grants[G_UNIT, g]
    if unit > 0:
        amount = np.uint64(grants[G_AMOUNT, g])
        pos = _put_head(out, pos, 4, _scalar_size(amount))
        pos = _put_scalar(out, pos, unit, amount)
    pos = _put_scalar(out, pos, 5, _u32(grants[G_VALIDITY, g]))
    pos = _put_scalar(out, pos, 6, _u32(grants[G_HOLDING, g]))
    pos = _put_scalar(out, pos, 7, np.uint64(grants[G_VOLUME_THRESHOLD, g]))
    pos = _put_scalar(out, pos, 8, _u32(grants[G_TIME_THRESHOLD, g]))
    f = grants[G_FINAL, g]
    if f >= 0:
        pos = _put_head(out, pos, 9, final_sizes[f])
        pos = _put_scalar(out, pos, 1, _enum(finals[F_ACTION, f]))
        k = finals[F_REDIRECT, f]
        if k >= 0:
            pos = _put_bytes(out, pos, 2, text, at[k], at[k + 1] - at[k], False)
        for i in range(finals[F_FILTERS_LO, f], finals[F_FILTERS_HI, f]):
            k = filters[i]
            pos = _put_bytes(out, pos, 3, text, at[k], at[k + 1] - at[k], True)
    return pos


@njit(cache=True, nogil=True)
def encode_kernel(src: np.ndarray, answers: np.ndarray, grants: np.ndarray,
                  finals: np.ndarray, filters: np.ndarray, text: np.ndarray,
                  at: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A ChargeBatchAnswer's bytes, each answer's span (rows 0 and 1: start and end of its
    ChargeAnswer bytes) and 0, or a BAD_* code and nothing if an index points outside its
    table (checked first, here: numpy's checks would cost more than the encoding).
    First pass: every message's size (a length comes before its bytes); second: the bytes,
    fields in field-number order, zeros left out, as upb writes them."""
    n = answers.shape[1]
    bad = _check_tables(src, answers, grants, finals, filters, at)
    if bad:
        return np.empty(0, np.uint8), np.empty((2, 0), np.int64), bad
    final_sizes = np.empty(finals.shape[1], np.int64)
    for f in range(finals.shape[1]):
        final_sizes[f] = _final_size(finals, f, filters, at)
    grant_sizes = np.empty(grants.shape[1], np.int64)
    answer_sizes = np.empty(n, np.int64)
    total = 0
    for a in range(n):
        size = (_scalar_size(_u32(answers[A_NUMBER, a]))
                + _scalar_size(_enum(answers[A_RESULT, a]))
                + _string_size(at, answers[A_ERROR, a])
                + _scalar_size(np.uint64(answers[A_CHARGED, a])))
        if answers[A_SESSION_LEN, a] > 0:
            size += _nested_size(answers[A_SESSION_LEN, a])
        for g in range(answers[A_GRANTS_LO, a], answers[A_GRANTS_HI, a]):
            grant_sizes[g] = _grant_size(grants, g, final_sizes)
            size += _nested_size(grant_sizes[g])
        answer_sizes[a] = size
        total += _nested_size(size)

    out = np.empty(total, np.uint8)
    spans = np.empty((2, n), np.int64)
    pos = 0
    for a in range(n):
        pos = _put_head(out, pos, _FIELD_1, answer_sizes[a])
        spans[0, a] = pos
        pos = _put_bytes(out, pos, 1, src, answers[A_SESSION_OFF, a], answers[A_SESSION_LEN, a],
                         False)
        pos = _put_scalar(out, pos, 2, _u32(answers[A_NUMBER, a]))
        pos = _put_scalar(out, pos, 3, _enum(answers[A_RESULT, a]))
        for g in range(answers[A_GRANTS_LO, a], answers[A_GRANTS_HI, a]):
            pos = _put_head(out, pos, 4, grant_sizes[g])
            pos = _put_grant(out, pos, grants, g, final_sizes, finals, filters, text, at)
        k = answers[A_ERROR, a]
        if k >= 0:
            pos = _put_bytes(out, pos, 5, text, at[k], at[k + 1] - at[k], False)
        pos = _put_scalar(out, pos, 6, np.uint64(answers[A_CHARGED, a]))
        spans[1, a] = pos
    return out, spans, 0



@dataclass(frozen=True, slots=True)
class Strings:
    """A table of strings by index (error messages, a plan's redirect URL and filter ids):
    their UTF-8 bytes end to end, string k in text[at[k]:at[k + 1]]."""

    text: np.ndarray  # uint8
    at: np.ndarray  # int64, one more than there are strings

    @classmethod
    def of(cls, strings: Sequence[str]) -> Strings:
        encoded = [s.encode() for s in strings]
        at = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=at[1:])
        return cls(np.frombuffer(b"".join(encoded), np.uint8).copy(), at)


NO_FINALS = np.zeros((F_ROWS, 0), np.int64)
NO_FILTERS = np.zeros(0, np.int64)


def encode_answers(src: np.ndarray, answers: np.ndarray, grants: np.ndarray,
                   strings: Strings, finals: np.ndarray = NO_FINALS,
                   filters: np.ndarray = NO_FILTERS) -> tuple[np.ndarray, np.ndarray]:
    """A ChargeBatchAnswer's wire bytes (uint8) and the (2, n) spans of its answers, each a
    ChargeAnswer's bytes. ValueError if an index points outside its table."""
    out, spans, bad = encode_kernel(src, answers, grants, finals, filters, strings.text,
                                    strings.at)
    if bad:
        raise ValueError(f"cannot encode the answers: {BAD_TABLES[bad]}")
    return out, spans


def _length_prefix(n: int) -> bytes:
    out = bytearray(b"\x0a")  # field 1, length-delimited
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


PREFIXES = tuple(_length_prefix(n) for n in range(1 << 14))
"""The tag and length of a part up to 16 KiB (all but a few), made once."""


def field_1(parts: Sequence[bytes]) -> bytes:
    """Messages' bytes as the repeated field 1 of another, as upb writes it: a
    ChargeBatchAnswer from its answers, a UsageBatch (block of records) from its records."""
    return b"".join([PREFIXES[len(a)] + a if len(a) < 1 << 14 else _length_prefix(len(a)) + a
                     for a in parts])


def warm_up() -> None:
    """Loads (or compiles) the codec's kernels for the argument types the server passes:
    bytes from gRPC (a read-only array) and writable arrays."""
    message = b"\x0a\x02\x08\x01"
    parse_batch(message)
    parse_request(message[2:])
    parse_batch(np.frombuffer(message, np.uint8).copy())
    parse_request(np.frombuffer(message, np.uint8)[2:].copy())
    empty = np.zeros(0, np.uint8)
    encode_answers(empty, np.zeros((A_ROWS, 0), np.int64), np.zeros((G_ROWS, 0), np.int64),
                   Strings.of([]))
