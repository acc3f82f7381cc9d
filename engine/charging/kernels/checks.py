"""Which parsed requests are plainly valid, and their strings: one pass over the wire tables
instead of a Python check per request. The reference of both is engine/charging/decode.py's
`_request`, which still words every refusal and decodes each string on its own
(tests/unit/test_request_checks.py compares the requests built either way)."""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.memory import copy_bytes
from tollgate.engine.charging.wire import (
    LEN,
    OFF,
    R_DESTINATION,
    R_NUMBER,
    R_ORIGIN,
    R_SESSION,
    R_SUBSCRIBER,
    R_TIME,
    R_TYPE,
    R_UNITS_HI,
    R_UNITS_LO,
    R_ZONE,
    U_HAS_REQUESTED,
    U_HAS_USED,
    U_RATING_GROUP,
    U_REASON,
    U_REQUESTED,
    U_USED,
)

(L_ID_LENGTH, L_UNITS_PER_REQUEST, L_UNITS, L_EARLIEST, L_LATEST, L_MAX_TIME) = range(6)
"""The `limits` argument: max_id_length, max_units_per_request, max_units, the earliest and
latest event time accepted (the server's clock and the configured window, ms) and the latest
time there is a calendar date for."""

INITIAL, EVENT = 1, 4
STRINGS = np.array([R_SESSION, R_SUBSCRIBER, R_ZONE, R_ORIGIN, R_DESTINATION], np.int64)


@njit(cache=True, nogil=True)
def _plain_text(buf: np.ndarray, req: np.ndarray, row: int, r: int, limit: int,
                required: bool) -> bool:
    """Printable ASCII within the limit (and present if required). Other text may still be
    valid (printable non-ASCII characters): Python decides those."""
    off, n = req[row + OFF, r], req[row + LEN, r]
    if n > limit or (required and n == 0):
        return False
    outside = 0  # branch-free: ids are short, and most are plain
    for i in range(off, off + n):
        outside |= (buf[i] < 0x20) | (buf[i] > 0x7E)
    return outside == 0


@njit(cache=True, nogil=True)
def _plain_amounts(units: np.ndarray, base: int, u: int, limit: int) -> bool:
    for k in range(5):
        v = units[base + k, u]
        if v < 0 or v > limit:
            return False
    return True


@njit(cache=True, nogil=True)
def plain_requests(buf: np.ndarray, req: np.ndarray, units: np.ndarray, limits: np.ndarray,
                   reasons: np.ndarray) -> np.ndarray:
    """Per request, 1 if every check decode._request makes passes (it is built without them),
    0 if Python must look (it is refused, or has text only Python can judge). `reasons`: 1
    at each known reporting reason (values past its end are unknown)."""
    n = req.shape[1]
    out = np.zeros(n, np.uint8)
    for r in range(n):
        kind = req[R_TYPE, r]
        if kind < INITIAL or kind > EVENT or (kind == INITIAL and req[R_NUMBER, r] != 0):
            continue
        plain = True
        for k in range(STRINGS.shape[0]):
            if not _plain_text(buf, req, STRINGS[k], r, limits[L_ID_LENGTH], k < 2):
                plain = False
                break
        t = req[R_TIME, r]
        if not plain or t < 0 or t > limits[L_MAX_TIME] or (
                t != 0 and (t < limits[L_EARLIEST] or t > limits[L_LATEST])):
            continue
        lo, hi = req[R_UNITS_LO, r], req[R_UNITS_HI, r]
        if hi - lo > limits[L_UNITS_PER_REQUEST] or (kind == EVENT and hi == lo):
            continue
        for u in range(lo, hi):
            reason = units[U_REASON, u]
            if reason < 0 or reason >= reasons.shape[0] or reasons[reason] == 0:
                plain = False
            for v in range(lo, u):
                if units[U_RATING_GROUP, v] == units[U_RATING_GROUP, u]:
                    plain = False
            has_used, has_requested = units[U_HAS_USED, u] != 0, units[U_HAS_REQUESTED, u] != 0
            if has_used and not _plain_amounts(units, U_USED, u, limits[L_UNITS]):
                plain = False
            if has_requested and not _plain_amounts(units, U_REQUESTED, u, limits[L_UNITS]):
                plain = False
            if kind == EVENT:
                some = False
                for k in range(5):
                    if (has_used and units[U_USED + k, u] != 0) or (
                            has_requested and units[U_REQUESTED + k, u] != 0):
                        some = True
                plain = plain and some
            if not plain:
                break
        if plain:
            out[r] = 1
    return out


@njit(cache=True, nogil=True)
def plain_texts(buf: np.ndarray, req: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """The string fields (STRINGS' order) of the plain requests, each followed by a NUL byte;
    five empty ones for any other request. Plain text is printable ASCII, so one decode and
    one split of the whole give every request's strings (request r's from 5 * r)."""
    n = req.shape[1]
    total = 0
    for r in range(n):
        for k in range(STRINGS.shape[0]):
            total += (req[STRINGS[k] + LEN, r] if plain[r] else 0) + 1
    out = np.empty(total, np.uint8)
    pos = 0
    for r in range(n):
        for k in range(STRINGS.shape[0]):
            if plain[r]:
                off, size = req[STRINGS[k] + OFF, r], req[STRINGS[k] + LEN, r]
                copy_bytes(out, pos, buf, off, size)
                pos += size
            out[pos] = 0
            pos += 1
    return out
