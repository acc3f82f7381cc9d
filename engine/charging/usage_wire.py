"""Rated usage records written as `RatedUsage` wire bytes from a table by one Numba kernel,
byte for byte what upb writes (tests/unit/test_usage_wire.py): the hot path builds no
record objects.

A record is a column of the records table (REC_* rows): its numbers, and its strings as
indexes into a string table (string k is text[spans[k, 0]:][:spans[k, 1]], so the strings
may be spans of the batch's id tables; -1 or an empty string: not written, as proto3 leaves
out empty fields). Its balance charges are the columns [REC_CHARGES_LO,
REC_CHARGES_HI) of the charges table (C_* rows). The fields the hot path never sets (the
record id, which a reader sets from the stream entry, and the re-rating fields) are left out.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.charge import helper
from tollgate.engine.charging.kernels.memory import copy_bytes
from tollgate.engine.charging.wire import (
    WT_LEN,
    WT_VARINT,
    _nested_size,
    _put_varint,
    _varint_size,
)

(REC_KIND, REC_ACCOUNT, REC_SUBSCRIBER, REC_SESSION, REC_NUMBER, REC_RATING_GROUP,
 REC_SERVICE_ID, REC_ZONE, REC_UNIT, REC_UNITS, REC_START, REC_END, REC_PLAN,
 REC_PLAN_VERSION, REC_PRICE, REC_INCREMENT, REC_MONEY, REC_CHARGES_LO, REC_CHARGES_HI,
 REC_OVERAGE, REC_OVERAGE_UNITS, REC_ORIGIN, REC_FEE) = range(23)
REC_ROWS = 23
C_BUCKET, C_UNITS, C_MICROS = range(3)
"""Charge rows: the bucket id's string index (-1: the money balance), units, micros."""
C_ROWS = 3

FIELDS = np.array([
    # (row, field number, kind): kind 0 int64/bool, 1 uint32, 2 enum, 3 string, 4 charges
    (REC_KIND, 2, 2), (REC_ACCOUNT, 3, 3), (REC_SUBSCRIBER, 4, 3), (REC_SESSION, 5, 3),
    (REC_NUMBER, 6, 1), (REC_RATING_GROUP, 7, 1), (REC_SERVICE_ID, 8, 1), (REC_ZONE, 9, 3),
    (REC_UNIT, 10, 2), (REC_UNITS, 11, 0), (REC_START, 12, 0), (REC_END, 13, 0),
    (REC_PLAN, 14, 3), (REC_PLAN_VERSION, 15, 1), (REC_PRICE, 16, 0), (REC_INCREMENT, 17, 0),
    (REC_MONEY, 18, 0), (REC_CHARGES_LO, 19, 4), (REC_OVERAGE, 20, 0),
    (REC_OVERAGE_UNITS, 21, 0), (REC_ORIGIN, 22, 3), (REC_FEE, 25, 0)], np.int64)
"""RatedUsage's fields in field-number order (upb's order), and where each comes from."""
INT64, UINT32, ENUM, STRING, CHARGES = range(5)


@helper
def _value(kind: int, v: int) -> np.uint64:
    """A scalar field's varint value: int64 as two's complement, uint32 its low 32 bits,
    an enum (int32) sign-extended."""
    if kind == UINT32:
        return np.uint64(v) & np.uint64(0xFFFFFFFF)
    if kind == ENUM:
        return np.uint64(np.int64(np.int32(v)))
    return np.uint64(v)


@helper
def _tag_size(field: int) -> int:
    return _varint_size(np.uint64(field << 3))


@helper
def _scalar(field: int, value: np.uint64) -> int:
    return 0 if value == np.uint64(0) else _tag_size(field) + _varint_size(value)


@helper
def _text(spans: np.ndarray, k: int) -> int:
    return spans[k, 1] if k >= 0 else 0


@helper
def _charge_size(charges: np.ndarray, c: int, spans: np.ndarray) -> int:
    size = _scalar(2, np.uint64(charges[C_UNITS, c])) + _scalar(3, np.uint64(charges[C_MICROS, c]))
    n = _text(spans, charges[C_BUCKET, c])
    return size + (_nested_size(n) if n > 0 else 0)


@helper
def _record_size(records: np.ndarray, r: int, charges: np.ndarray, spans: np.ndarray) -> int:
    size = 0
    for f in range(FIELDS.shape[0]):
        row, field, kind = FIELDS[f, 0], FIELDS[f, 1], FIELDS[f, 2]
        if kind == STRING:
            n = _text(spans, records[row, r])
            if n > 0:
                size += _tag_size(field) + _varint_size(np.uint64(n)) + n
        elif kind == CHARGES:
            for c in range(records[REC_CHARGES_LO, r], records[REC_CHARGES_HI, r]):
                n = _charge_size(charges, c, spans)
                size += _tag_size(field) + _varint_size(np.uint64(n)) + n
        else:
            size += _scalar(field, _value(kind, records[row, r]))
    return size


@helper
def _put_tag(out: np.ndarray, pos: int, field: int, wire_type: int) -> int:
    return _put_varint(out, pos, np.uint64(field << 3 | wire_type))


@helper
def _put_scalar(out: np.ndarray, pos: int, field: int, value: np.uint64) -> int:
    if value == np.uint64(0):
        return pos
    return _put_varint(out, _put_tag(out, pos, field, WT_VARINT), value)


@helper
def _put_text(out: np.ndarray, pos: int, field: int, text: np.ndarray, spans: np.ndarray,
              k: int) -> int:
    n = _text(spans, k)
    if n == 0:
        return pos
    pos = _put_varint(out, _put_tag(out, pos, field, WT_LEN), np.uint64(n))
    copy_bytes(out, pos, text, spans[k, 0], n)
    return pos + n


@helper
def _check(records: np.ndarray, charges: np.ndarray, text: np.ndarray, spans: np.ndarray
           ) -> bool:
    strings = spans.shape[0]
    for k in range(strings):
        if spans[k, 0] < 0 or spans[k, 1] < 0 or spans[k, 0] + spans[k, 1] > text.size:
            return False
    for r in range(records.shape[1]):
        for row in (REC_ACCOUNT, REC_SUBSCRIBER, REC_SESSION, REC_ZONE, REC_PLAN, REC_ORIGIN):
            if not -1 <= records[row, r] < strings:
                return False
        lo, hi = records[REC_CHARGES_LO, r], records[REC_CHARGES_HI, r]
        if lo < 0 or hi < lo or hi > charges.shape[1]:
            return False
    for c in range(charges.shape[1]):  # noqa: SIM110 (Numba compiles no generator)
        if not -1 <= charges[C_BUCKET, c] < strings:
            return False
    return True


@njit(cache=True, nogil=True)
def encode_kernel(records: np.ndarray, charges: np.ndarray, text: np.ndarray,
                  spans: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The records' bytes end to end, each record's [start, end) (rows 0 and 1), and True;
    or nothing and False if an index points outside its table (checked first)."""
    n = records.shape[1]
    if not _check(records, charges, text, spans):
        return np.empty(0, np.uint8), np.empty((2, 0), np.int64), False
    sizes = np.empty(n, np.int64)
    total = 0
    for r in range(n):
        sizes[r] = _record_size(records, r, charges, spans)
        total += sizes[r]
    out = np.empty(total, np.uint8)
    bounds = np.empty((2, n), np.int64)
    pos = 0
    for r in range(n):
        bounds[0, r] = pos
        for f in range(FIELDS.shape[0]):
            row, field, kind = FIELDS[f, 0], FIELDS[f, 1], FIELDS[f, 2]
            if kind == STRING:
                pos = _put_text(out, pos, field, text, spans, records[row, r])
            elif kind == CHARGES:
                for c in range(records[REC_CHARGES_LO, r], records[REC_CHARGES_HI, r]):
                    pos = _put_varint(out, _put_tag(out, pos, field, WT_LEN),
                                      np.uint64(_charge_size(charges, c, spans)))
                    pos = _put_text(out, pos, 1, text, spans, charges[C_BUCKET, c])
                    pos = _put_scalar(out, pos, 2, np.uint64(charges[C_UNITS, c]))
                    pos = _put_scalar(out, pos, 3, np.uint64(charges[C_MICROS, c]))
            else:
                pos = _put_scalar(out, pos, field, _value(kind, records[row, r]))
        bounds[1, r] = pos
    return out, bounds, True


def encode_table(records: np.ndarray, charges: np.ndarray, text: np.ndarray,
                 spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The records' RatedUsage bytes end to end, and each one's (2, n) [start, end); string
    k is text[spans[k, 0]:][:spans[k, 1]]. ValueError if an index points outside its table."""
    out, bounds, ok = encode_kernel(records, charges, text, spans)
    if not ok:
        raise ValueError("cannot encode the records: an index points outside its table")
    return out, bounds


def warm_up() -> None:
    """Loads (or compiles) the kernel for the arrays the engine passes."""
    encode_table(np.zeros((REC_ROWS, 0), np.int64), np.zeros((C_ROWS, 0), np.int64),
                 np.zeros(0, np.uint8), np.zeros((0, 2), np.int64))
