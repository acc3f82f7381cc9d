"""Plain-Python twin of kernels/apply_calls.py: each call's keys and arguments as a list, the way
the store built them before the kernel, then written in RESP; used only by property tests."""

from __future__ import annotations

import itertools
import struct

import numpy as np

from tollgate.engine.charging.kernels.apply_calls import (
    CALL_HI,
    CALL_LO,
    G_CHAIN,
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
    PK_ACCT_AT,
    PK_ACCT_LEN,
    PK_EVENTS_AT,
    PK_EVENTS_LEN,
    PK_OPEN_AT,
    PK_OPEN_LEN,
    PK_SESS_AT,
    PK_SESS_LEN,
    PK_USAGE_AT,
    PK_USAGE_LEN,
    S_ENDED,
    S_EXPIRY,
    S_FLAG,
    S_ID_AT,
    S_ID_LEN,
    S_VALUE_AT,
    S_VALUE_LEN,
    SESSIONS_SUFFIX,
    SET_A_AT,
    SET_A_LEN,
    SET_B_AT,
    SET_B_LEN,
    SET_C_AT,
    SET_C_LEN,
    SET_VALUE,
    SPAN_AT,
    SPAN_LEN,
)


def resp(args: list[bytes]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out += (b"$%d\r\n" % len(a), a, b"\r\n")
    return b"".join(out)


def field_1(parts: list[bytes]) -> bytes:
    """Messages as the repeated field 1 of another (tag, length as a varint, bytes)."""
    out = bytearray()
    for p in parts:
        out.append(10)
        n = len(p)
        while n >= 128:
            out.append(n & 127 | 128)
            n >>= 7
        out.append(n)
        out += p
    return bytes(out)


def apply_calls(strings: bytes, keys_text: bytes, parts: np.ndarray, groups: np.ndarray,
                sets: np.ndarray, sessions: np.ndarray, records: np.ndarray,
                events: np.ndarray, calls: np.ndarray, sha: bytes, retention_ms: int,
                token: int) -> list[bytes]:
    """Each call's command."""
    def text(at: int, n: int) -> bytes:
        return strings[at:at + n]

    def key(at: int, n: int) -> bytes:
        return keys_text[at:at + n]

    def num(v: int) -> bytes:
        return str(v).encode()

    out = []
    for lo, hi in calls[:, [CALL_LO, CALL_HI]].tolist():
        call_keys: list[bytes] = []
        counts: list[int] = []
        args: list[bytes] = []
        for g in range(lo, hi):
            row = groups[g].tolist()
            pk = parts[row[G_PART]].tolist()
            if g == lo or row[G_PART] != groups[g - 1, G_PART]:
                call_keys += (key(pk[PK_USAGE_AT], pk[PK_USAGE_LEN]),
                              key(pk[PK_EVENTS_AT], pk[PK_EVENTS_LEN]),
                              key(pk[PK_OPEN_AT], pk[PK_OPEN_LEN]))
                counts.append(0)
            counts[-1] += 1
            account = key(pk[PK_ACCT_AT], pk[PK_ACCT_LEN]) + text(row[G_ID_AT], row[G_ID_LEN])
            call_keys += (account, account + SESSIONS_SUFFIX)
            own = sessions[row[G_SESS_LO]:row[G_SESS_HI]].tolist()
            call_keys += [key(pk[PK_SESS_AT], pk[PK_SESS_LEN]) + text(s[S_ID_AT], s[S_ID_LEN])
                          for s in own]
            n_records = row[G_REC_HI] - row[G_REC_LO]
            chained = row[G_CHAIN] != 0
            args += (struct.pack("<5i", len(own), 2 * (row[G_SET_HI] - row[G_SET_LO]),
                                 n_records, row[G_EV_HI] - row[G_EV_LO], chained)
                     + b"".join(struct.pack("<BBq", s[S_FLAG], 1 if s[S_ENDED] else 0,
                                            s[S_EXPIRY]) for s in own),
                     num(row[G_VERSION]), num(row[G_VERSION] + 1))
            if chained:
                args.append(num(row[G_CHAIN]))
            for f in sets[row[G_SET_LO]:row[G_SET_HI]].tolist():
                args += (text(f[SET_A_AT], f[SET_A_LEN]) + text(f[SET_B_AT], f[SET_B_LEN])
                         + text(f[SET_C_AT], f[SET_C_LEN]), num(f[SET_VALUE]))
            for s in own:
                args += (text(s[S_ID_AT], s[S_ID_LEN]), text(s[S_VALUE_AT], s[S_VALUE_LEN]))
            if n_records:
                args.append(field_1([text(r[SPAN_AT], r[SPAN_LEN]) for r in
                                     records[row[G_REC_LO]:row[G_REC_HI]].tolist()]))
            args += [text(e[SPAN_AT], e[SPAN_LEN])
                     for e in events[row[G_EV_LO]:row[G_EV_HI]].tolist()]
        out.append(resp([b"EVALSHA", sha, num(len(call_keys)), *call_keys, num(retention_ms),
                         ",".join(map(str, counts)).encode(), num(token), *args]))
    return out


def call_cuts(sizes: list[int], per_call: int) -> list[tuple[int, int]]:
    """kernels.apply_calls.call_cuts, as the store cut its calls before the kernel."""
    bounds: list[tuple[int, int]] = []
    held = 0
    for i, n in enumerate(sizes):
        if not bounds or held + n > per_call:
            bounds.append((i, i))
            held = 0
        bounds[-1] = (bounds[-1][0], i + 1)
        held += n
    return bounds


def call_plan(partitions: list[int], per_call: int) -> tuple[list[int], list[tuple[int, int]]]:
    """kernels.apply_calls.call_plan from the groups' partitions."""
    order = sorted(range(len(partitions)), key=lambda g: partitions[g])
    runs = [len(list(run)) for _, run in itertools.groupby(partitions[g] for g in order)]
    starts = [0, *itertools.accumulate(runs)]
    return order, [(starts[lo], starts[hi]) for lo, hi in call_cuts(runs, per_call)]
