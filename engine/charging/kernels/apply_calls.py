"""The apply's script calls (engine/storage/lua/apply.lua) written as whole RESP commands from a
batch's account writes in tables: no argument of a call is a Python object. Its plain-Python
twin is apply_calls_reference.py (tests/unit/test_apply_calls_kernel.py compares them)."""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.charge import helper
from tollgate.engine.charging.kernels.memory import copy_bytes

# Every string a call names is strings[at:at + length] of one byte table, but the partitions'
# keys: `parts` has a row per partition (by number) with the spans in `keys_text` of its usage
# stream's key, its event stream's, its open-session zset's, then the prefixes of its account
# keys and of its session keys.
(PK_USAGE_AT, PK_USAGE_LEN, PK_EVENTS_AT, PK_EVENTS_LEN, PK_OPEN_AT, PK_OPEN_LEN, PK_ACCT_AT,
 PK_ACCT_LEN, PK_SESS_AT, PK_SESS_LEN) = range(10)
PK_COLUMNS = 10
# `groups`: a row per account write, in call order (the groups of a partition together): its
# partition, the version it was computed on, its account id (the key is the
# partition's prefix and the id), then its rows of `sets`, `sessions`, `records` and `events`
# (each [lo, hi)), and the token of the batch whose predicted state it was computed on (0:
# none, the state as read or applied; apply.lua's chained groups).
(G_PART, G_VERSION, G_ID_AT, G_ID_LEN, G_SET_LO, G_SET_HI, G_SESS_LO, G_SESS_HI, G_REC_LO,
 G_REC_HI, G_EV_LO, G_EV_HI, G_CHAIN) = range(13)
G_COLUMNS = 13
# `sets`: a row per account field set: its name is three pieces end to end (e.g. "b:", a bucket
# id, ":rem"), then its new value.
(SET_A_AT, SET_A_LEN, SET_B_AT, SET_B_LEN, SET_C_AT, SET_C_LEN, SET_VALUE) = range(7)
SET_COLUMNS = 7
# `sessions`: a row per session write: its id, its flag (a byte of apply.lua's head: '0', '1'
# or '2'), 1 if it ended, its expiry (ms) and its packed value (session_blob).
(S_ID_AT, S_ID_LEN, S_FLAG, S_ENDED, S_EXPIRY, S_VALUE_AT, S_VALUE_LEN) = range(7)
S_COLUMNS = 7
# `records` and `events`: a row per usage record (RatedUsage bytes; a group's records are sent
# as one piece of a block, each as field 1) or event (Event bytes).
SPAN_AT, SPAN_LEN = 0, 1
# `calls`: a row per script call: its first group and the one after its last.
CALL_LO, CALL_HI = 0, 1

SESSIONS_SUFFIX = b":sessions"  # keys.SESSIONS_SUFFIX (the test checks they agree)
# Constants as arrays: Numba compiles global arrays in as they are.
_SUFFIX = np.frombuffer(SESSIONS_SUFFIX, np.uint8)
_EVALSHA = np.frombuffer(b"EVALSHA", np.uint8)
# A group's head (apply.lua): four int32 counts and its chained flag, then per session a flag
# byte, an end byte and its expiry as an int64, little-endian.
HEAD_SIZE, SESSION_HEAD_SIZE = 20, 10


@helper
def _digits(v: int) -> int:
    """The length of v in decimal, sign included."""
    n = 1 if v >= 0 else 2
    if v > 0:
        v = -v  # counted on the negative side, where every int64 has its magnitude
    while v <= -10:
        v = -(v // -10)
        n += 1
    return n


@helper
def _put_int(out: np.ndarray, at: int, v: int) -> int:
    """v in decimal at out[at:]; returns the position after it."""
    end = at + _digits(v)
    if v < 0:
        out[at] = 45  # '-'
    else:
        v = -v
    pos = end - 1
    while True:
        q = -(v // -10)  # v / 10, toward zero
        out[pos] = 48 + q * 10 - v
        v = q
        pos -= 1
        if v == 0:
            return end


@helper
def _put_le(out: np.ndarray, at: int, v: int, n: int) -> int:
    """v's n low bytes, little-endian (two's complement), at out[at:]; returns the position
    after them."""
    for i in range(n):
        out[at + i] = (v >> (8 * i)) & 255
    return at + n


@helper
def _put_bytes(out: np.ndarray, at: int, src: np.ndarray, src_at: int, n: int) -> int:
    copy_bytes(out, at, src, src_at, n)
    return at + n


@helper
def _put_crlf(out: np.ndarray, at: int) -> int:
    out[at] = 13
    out[at + 1] = 10
    return at + 2


@helper
def _put_head(out: np.ndarray, at: int, mark: int, n: int) -> int:
    """'*n' or '$n' with its line end."""
    out[at] = mark
    return _put_crlf(out, _put_int(out, at + 1, n))


@helper
def _put_bulk(out: np.ndarray, at: int, src: np.ndarray, src_at: int, n: int) -> int:
    return _put_crlf(out, _put_bytes(out, _put_head(out, at, 36, n), src, src_at, n))


@helper
def _put_bulk_int(out: np.ndarray, at: int, v: int) -> int:
    at = _put_head(out, at, 36, _digits(v))
    return _put_crlf(out, _put_int(out, at, v))


@helper
def _varint_size(n: int) -> int:
    size = 1
    while n >= 128:
        n >>= 7
        size += 1
    return size


@helper
def _put_varint(out: np.ndarray, at: int, n: int) -> int:
    while n >= 128:
        out[at] = (n & 127) | 128
        n >>= 7
        at += 1
    out[at] = n
    return at + 1


@helper
def _call_size(g_lo: int, g_hi: int, groups: np.ndarray, parts: np.ndarray, sets: np.ndarray,
               sessions: np.ndarray, records: np.ndarray, events: np.ndarray
               ) -> tuple[int, int, int, int, int]:
    """A call's numbers of keys, of arguments after them, of bytes the strings and numbers
    take (a bound: every number counted at 20 digits), of partition blocks, and its record
    pieces' total length."""
    n_keys = n_args = size = blocks = 0
    pieces = 0
    for g in range(g_lo, g_hi):
        if g == g_lo or groups[g, G_PART] != groups[g - 1, G_PART]:
            blocks += 1
            pr = groups[g, G_PART]
            n_keys += 3
            size += parts[pr, PK_USAGE_LEN] + parts[pr, PK_EVENTS_LEN] + parts[pr, PK_OPEN_LEN]
            size += 22  # its count in the blocks' argument, and a comma
        pr = groups[g, G_PART]
        id_len = parts[pr, PK_ACCT_LEN] + groups[g, G_ID_LEN]
        n_sess = groups[g, G_SESS_HI] - groups[g, G_SESS_LO]
        n_keys += 2 + n_sess
        size += 2 * id_len + _SUFFIX.size
        chained = 1 if groups[g, G_CHAIN] else 0
        n_args += 3 + chained + 2 * (groups[g, G_SET_HI] - groups[g, G_SET_LO]) + 2 * n_sess
        size += HEAD_SIZE + SESSION_HEAD_SIZE * n_sess + (2 + chained) * 20
        for s in range(groups[g, G_SET_LO], groups[g, G_SET_HI]):
            size += sets[s, SET_A_LEN] + sets[s, SET_B_LEN] + sets[s, SET_C_LEN] + 20
        for s in range(groups[g, G_SESS_LO], groups[g, G_SESS_HI]):
            size += (parts[pr, PK_SESS_LEN] + 2 * sessions[s, S_ID_LEN]
                     + sessions[s, S_VALUE_LEN])
        if groups[g, G_REC_HI] > groups[g, G_REC_LO]:
            n_args += 1
            for r in range(groups[g, G_REC_LO], groups[g, G_REC_HI]):
                n = records[r, SPAN_LEN]
                pieces += 1 + _varint_size(n) + n
        n_args += groups[g, G_EV_HI] - groups[g, G_EV_LO]
        for e in range(groups[g, G_EV_LO], groups[g, G_EV_HI]):
            size += events[e, SPAN_LEN]
    return n_keys, n_args, size + pieces, blocks, pieces


@njit(cache=True, nogil=True)
def call_cuts(sizes: np.ndarray, per_call: int) -> np.ndarray:
    """Partitions' item counts, in order, cut into script calls of whole partitions: a row
    per call, its first partition and the one after its last; a call takes partitions while
    its items stay within `per_call` (a partition with more is a call of its own)."""
    cuts = np.empty((sizes.size, 2), np.int64)
    c, held = -1, 0
    for i in range(sizes.size):
        if c < 0 or held + sizes[i] > per_call:
            c += 1
            cuts[c, 0] = i
            held = 0
        cuts[c, 1] = i + 1
        held += sizes[i]
    return cuts[:c + 1]


@njit(cache=True, nogil=True)
def call_plan(groups: np.ndarray, per_call: int) -> tuple[np.ndarray, np.ndarray]:
    """The groups (account writes) in call order, their partitions together and each
    partition's in the order given (a stable sort), and the calls (call_cuts) as `calls` rows
    of that order: what apply_calls takes."""
    order = np.argsort(groups[:, G_PART], kind="mergesort")
    n = order.size
    starts = np.empty(n + 1, np.int64)  # where each partition's run of groups starts
    runs = 0
    for i in range(n):
        if i == 0 or groups[order[i], G_PART] != groups[order[i - 1], G_PART]:
            starts[runs] = i
            runs += 1
    starts[runs] = n
    cuts = call_cuts(starts[1:runs + 1] - starts[:runs], per_call)
    calls = np.empty((cuts.shape[0], 2), np.int64)
    for c in range(cuts.shape[0]):
        calls[c, CALL_LO], calls[c, CALL_HI] = starts[cuts[c, 0]], starts[cuts[c, 1]]
    return order, calls


@njit(cache=True, nogil=True)
def apply_calls(strings: np.ndarray, keys_text: np.ndarray, parts: np.ndarray,
                groups: np.ndarray, sets: np.ndarray, sessions: np.ndarray,
                records: np.ndarray, events: np.ndarray, calls: np.ndarray, sha: np.ndarray,
                retention_ms: int, token: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each call as one EVALSHA command in RESP (rows of the second output: its [start, end)
    in the first): the keys and arguments apply.lua reads, in its order. `token`: the
    writer's (a positive int64 unique to the batch)."""
    n_calls = calls.shape[0]
    bounds = np.zeros((n_calls, 5), np.int64)
    total = 0
    for c in range(n_calls):
        n_keys, n_args, size, blocks, pieces = _call_size(
            calls[c, CALL_LO], calls[c, CALL_HI], groups, parts, sets, sessions, records,
            events)
        bounds[c, 0], bounds[c, 1], bounds[c, 2], bounds[c, 3] = n_keys, n_args, blocks, pieces
        # 16 bytes of RESP framing per key and argument, 6 fixed arguments.
        total += size + 16 * (n_keys + n_args + 6) + sha.size + 60
    out = np.empty(total, np.uint8)
    spans = np.zeros((2, n_calls), np.int64)
    at = 0
    for c in range(n_calls):
        g_lo, g_hi = calls[c, CALL_LO], calls[c, CALL_HI]
        n_keys, n_args, blocks, pieces = bounds[c, 0], bounds[c, 1], bounds[c, 2], bounds[c, 3]
        spans[0, c] = at
        at = _put_head(out, at, 42, 3 + n_keys + 3 + n_args)  # '*'
        at = _put_bulk(out, at, _EVALSHA, 0, _EVALSHA.size)
        at = _put_bulk(out, at, sha, 0, sha.size)
        at = _put_bulk_int(out, at, n_keys)
        # Keys: per partition block its three, then per group its account, its open-session
        # set and its sessions.
        for g in range(g_lo, g_hi):
            pr = groups[g, G_PART]
            if g == g_lo or pr != groups[g - 1, G_PART]:
                at = _put_bulk(out, at, keys_text, parts[pr, PK_USAGE_AT], parts[pr, PK_USAGE_LEN])
                at = _put_bulk(out, at, keys_text, parts[pr, PK_EVENTS_AT],
                               parts[pr, PK_EVENTS_LEN])
                at = _put_bulk(out, at, keys_text, parts[pr, PK_OPEN_AT], parts[pr, PK_OPEN_LEN])
            for suffix in range(2):
                n = parts[pr, PK_ACCT_LEN] + groups[g, G_ID_LEN]
                at = _put_head(out, at, 36, n + suffix * _SUFFIX.size)
                at = _put_bytes(out, at, keys_text, parts[pr, PK_ACCT_AT],
                                    parts[pr, PK_ACCT_LEN])
                at = _put_bytes(out, at, strings, groups[g, G_ID_AT], groups[g, G_ID_LEN])
                if suffix:
                    at = _put_bytes(out, at, _SUFFIX, 0, _SUFFIX.size)
                at = _put_crlf(out, at)
            for s in range(groups[g, G_SESS_LO], groups[g, G_SESS_HI]):
                at = _put_head(out, at, 36, parts[pr, PK_SESS_LEN] + sessions[s, S_ID_LEN])
                at = _put_bytes(out, at, keys_text, parts[pr, PK_SESS_AT],
                                parts[pr, PK_SESS_LEN])
                at = _put_bytes(out, at, strings, sessions[s, S_ID_AT], sessions[s, S_ID_LEN])
                at = _put_crlf(out, at)
        # Arguments: the retention, the blocks' group counts ("3,1"), the token, then each
        # group.
        at = _put_bulk_int(out, at, retention_ms)
        length = blocks - 1
        g = g_lo
        while g < g_hi:
            first = g
            while g < g_hi and groups[g, G_PART] == groups[first, G_PART]:
                g += 1
            length += _digits(g - first)
        at = _put_head(out, at, 36, length)
        g = g_lo
        while g < g_hi:
            first = g
            while g < g_hi and groups[g, G_PART] == groups[first, G_PART]:
                g += 1
            at = _put_int(out, at, g - first)
            if g < g_hi:
                out[at] = 44  # ','
                at += 1
        at = _put_crlf(out, at)
        at = _put_bulk_int(out, at, token)
        for g in range(g_lo, g_hi):
            s_lo, s_hi = groups[g, G_SESS_LO], groups[g, G_SESS_HI]
            n_records = groups[g, G_REC_HI] - groups[g, G_REC_LO]
            # The head: the group's counts, then each session's flag, end mark and expiry.
            at = _put_head(out, at, 36, HEAD_SIZE + SESSION_HEAD_SIZE * (s_hi - s_lo))
            at = _put_le(out, at, s_hi - s_lo, 4)
            at = _put_le(out, at, 2 * (groups[g, G_SET_HI] - groups[g, G_SET_LO]), 4)
            at = _put_le(out, at, n_records, 4)
            at = _put_le(out, at, groups[g, G_EV_HI] - groups[g, G_EV_LO], 4)
            at = _put_le(out, at, 1 if groups[g, G_CHAIN] else 0, 4)
            for s in range(s_lo, s_hi):
                out[at] = sessions[s, S_FLAG]
                out[at + 1] = 1 if sessions[s, S_ENDED] else 0
                at = _put_le(out, at + 2, sessions[s, S_EXPIRY], 8)
            at = _put_crlf(out, at)
            at = _put_bulk_int(out, at, groups[g, G_VERSION])
            at = _put_bulk_int(out, at, groups[g, G_VERSION] + 1)
            if groups[g, G_CHAIN]:
                at = _put_bulk_int(out, at, groups[g, G_CHAIN])
            for s in range(groups[g, G_SET_LO], groups[g, G_SET_HI]):
                at = _put_head(out, at, 36,
                               sets[s, SET_A_LEN] + sets[s, SET_B_LEN] + sets[s, SET_C_LEN])
                at = _put_bytes(out, at, strings, sets[s, SET_A_AT], sets[s, SET_A_LEN])
                at = _put_bytes(out, at, strings, sets[s, SET_B_AT], sets[s, SET_B_LEN])
                at = _put_bytes(out, at, strings, sets[s, SET_C_AT], sets[s, SET_C_LEN])
                at = _put_crlf(out, at)
                at = _put_bulk_int(out, at, sets[s, SET_VALUE])
            for s in range(s_lo, s_hi):
                at = _put_bulk(out, at, strings, sessions[s, S_ID_AT], sessions[s, S_ID_LEN])
                at = _put_bulk(out, at, strings, sessions[s, S_VALUE_AT],
                               sessions[s, S_VALUE_LEN])
            if n_records:
                size = 0
                for r in range(groups[g, G_REC_LO], groups[g, G_REC_HI]):
                    size += 1 + _varint_size(records[r, SPAN_LEN]) + records[r, SPAN_LEN]
                at = _put_head(out, at, 36, size)
                for r in range(groups[g, G_REC_LO], groups[g, G_REC_HI]):
                    out[at] = 10  # field 1, length-delimited
                    at = _put_varint(out, at + 1, records[r, SPAN_LEN])
                    at = _put_bytes(out, at, strings, records[r, SPAN_AT], records[r, SPAN_LEN])
                at = _put_crlf(out, at)
            for e in range(groups[g, G_EV_LO], groups[g, G_EV_HI]):
                at = _put_bulk(out, at, strings, events[e, SPAN_AT], events[e, SPAN_LEN])
        spans[1, c] = at
    return out[:at], spans
