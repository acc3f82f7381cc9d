"""kernels.apply_calls against its plain-Python twin, and both against the layout apply.lua reads
as the store sent it before the kernel (keys and arguments packed by hiredis): any account
writes, split into calls anywhere, numbers from the int64 minimum to its maximum."""

from __future__ import annotations

import itertools
import struct

import hiredis
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_session_kernels import FAST
from tollgate.engine.charging.kernels import apply_calls as kernel
from tollgate.engine.charging.kernels.apply_calls_reference import apply_calls as reference
from tollgate.engine.charging.kernels.apply_calls_reference import call_plan as plan_reference
from tollgate.engine.charging.kernels.apply_calls_reference import field_1
from tollgate.engine.charging.wire import field_1 as wire_field_1
from tollgate.engine.storage import keys
from tollgate.engine.storage.writes import (
    AccountWrite,
    SessionWrite,
    Writes,
    key_table,
    of_objects,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(min_size=1, max_size=12)
VERSION = st.integers(0, 2**62)  # an account's writes so far: the next one is sent too
TOKEN = st.integers(1, 2**63 - 1)  # a writer's (writes.writer_token)
SHA = b"0123456789abcdef0123456789abcdef01234567"
PARTITIONS = 1001
KEYS = key_table(PARTITIONS)


def test_the_kernels_sessions_suffix_is_the_key_layouts() -> None:
    assert kernel.SESSIONS_SUFFIX.decode() == keys.SESSIONS_SUFFIX


@st.composite
def account_writes(draw: st.DrawFn, p: int) -> AccountWrite:
    sessions = draw(st.lists(st.builds(
        SessionWrite, TEXT, st.booleans(), st.binary(min_size=1, max_size=40), INT64,
        st.booleans(), st.booleans()), max_size=3))
    return AccountWrite(keys.account(p, draw(TEXT)), draw(VERSION),
                        draw(st.dictionaries(TEXT, INT64, max_size=4)), sessions,
                        # up to 300 bytes: one- and two-byte length prefixes
                        draw(st.lists(st.binary(max_size=300), max_size=3)),
                        draw(st.lists(st.binary(max_size=20), max_size=2)),
                        draw(st.one_of(st.just(0), TOKEN)))


@st.composite
def batches(draw: st.DrawFn) -> tuple[dict[int, list[AccountWrite]], list[tuple[int, int]]]:
    partitions = draw(st.lists(st.integers(0, PARTITIONS - 1), min_size=1, max_size=4,
                               unique=True))
    writes = {p: draw(st.lists(account_writes(p), min_size=1, max_size=3)) for p in partitions}
    n = sum(len(ws) for ws in writes.values())
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=3)) if n > 1 else set())
    bounds = [0, *cuts, n]
    return writes, list(itertools.pairwise(bounds))


def as_before(writes: list[tuple[int, AccountWrite]], retention_ms: int, token: int) -> bytes:
    """A call of these writes, built as the store built it before the kernel."""
    blocks: list[tuple[int, list[AccountWrite]]] = []
    for p, w in writes:
        if not blocks or blocks[-1][0] != p:
            blocks.append((p, []))
        blocks[-1][1].append(w)
    call_keys: list[str] = []
    args: list[bytes | str | int] = [retention_ms, ",".join(str(len(ws)) for _, ws in blocks),
                                     token]
    for p, ws in blocks:
        call_keys += (keys.usage_stream(p), keys.events_stream(p), keys.open_sessions(p))
        for w in ws:
            call_keys += (w.key, w.key + keys.SESSIONS_SUFFIX)
            call_keys += [keys.session(p, s.session_id) for s in w.sessions]
            # The head: the counts and whether chained, then each session's flag, end mark
            # and expiry.
            args += [struct.pack("<iiiii", len(w.sessions), 2 * len(w.sets), len(w.records),
                                 len(w.events), bool(w.chained_after))
                     + b"".join(struct.pack("<ccq", b"1" if s.created else
                                            b"2" if s.rescore else b"0", bytes([s.ended]),
                                            s.expiry_ms) for s in w.sessions),
                     w.expected_version, w.expected_version + 1]
            if w.chained_after:
                args.append(w.chained_after)
            for f, v in w.sets.items():
                args += (f, v)
            for s in w.sessions:
                args += (s.session_id, s.value)
            if w.records:
                args.append(wire_field_1(w.records))
            args += w.events
    return bytes(hiredis.pack_command(("EVALSHA", SHA.decode(), len(call_keys), *call_keys,
                                       *args)))


def run_kernel(w: Writes, calls: np.ndarray, retention_ms: int, token: int) -> list[bytes]:
    out, spans = kernel.apply_calls(w.strings, KEYS.text, KEYS.parts, w.groups, w.sets,
                                    w.sessions, w.records, w.events, calls,
                                    np.frombuffer(SHA, np.uint8).copy(), retention_ms, token)
    data = out.tobytes()
    return [data[a:b] for a, b in zip(*spans.tolist(), strict=True)]


@settings(FAST, max_examples=200)
@given(batches(), st.integers(0, 2**62), TOKEN)
def test_calls_are_the_references_and_the_layout_apply_reads(batch, retention_ms, token
                                                             ) -> None:
    writes, bounds = batch
    w = of_objects(writes)
    calls = np.array(bounds, np.int64).reshape(-1, 2)
    got = run_kernel(w, calls, retention_ms, token)
    assert got == reference(w.strings.tobytes(), KEYS.text.tobytes(), KEYS.parts, w.groups,
                            w.sets, w.sessions, w.records, w.events, calls, SHA, retention_ms,
                            token)
    flat = [(p, x) for p, ws in writes.items() for x in ws]
    assert got == [as_before(flat[lo:hi], retention_ms, token) for lo, hi in bounds]


def test_field_1_is_the_codecs() -> None:
    parts = [b"", b"x", b"y" * 127, b"z" * 128, b"w" * 20_000]
    assert field_1(parts) == wire_field_1(parts)


def test_three_piece_field_names_are_written_end_to_end() -> None:
    """The charging path names a field in up to three pieces ("b:", a bucket id, ":rem")."""
    w = of_objects({7: [AccountWrite(keys.account(7, "acct"), 3, {"x": 1})]})
    text = w.strings.tobytes()
    extra = b"b:bucket-1:rem"
    w.strings = np.frombuffer(text + extra, np.uint8).copy()
    base = len(text)
    w.sets[0, [kernel.SET_A_AT, kernel.SET_A_LEN]] = base, 2
    w.sets[0, [kernel.SET_B_AT, kernel.SET_B_LEN]] = base + 2, 8
    w.sets[0, [kernel.SET_C_AT, kernel.SET_C_LEN]] = base + 10, 4
    w.sets[0, kernel.SET_VALUE] = -5
    expected = as_before([(7, AccountWrite(keys.account(7, "acct"), 3, {"b:bucket-1:rem": -5}))],
                         60, 9)
    assert run_kernel(w, np.array([[0, 1]], np.int64), 60, 9) == [expected]


@settings(FAST, max_examples=300)
@given(st.lists(st.integers(0, 6), max_size=40), st.integers(1, 8))
def test_call_plans_are_the_references(partitions: list[int], per_call: int) -> None:
    """The groups in partition order (stable), cut into calls of whole partitions of at most
    per_call groups, but a larger partition alone."""
    groups = np.zeros((len(partitions), kernel.G_COLUMNS), np.int64)
    groups[:, kernel.G_PART] = partitions
    order, calls = kernel.call_plan(groups, per_call)
    assert (order.tolist(), [tuple(c) for c in calls.tolist()]) == plan_reference(partitions,
                                                                                  per_call)
    parts = [partitions[g] for g in order.tolist()]
    for lo, hi in calls.tolist():
        assert hi - lo <= per_call or len(set(parts[lo:hi])) == 1
        assert lo == 0 or parts[lo] != parts[lo - 1]  # whole partitions
    assert [lo for lo, _ in calls.tolist()][1:] == [hi for _, hi in calls.tolist()][:-1]


def test_a_call_plan_by_hand() -> None:
    groups = np.zeros((6, kernel.G_COLUMNS), np.int64)
    groups[:, kernel.G_PART] = [5, 2, 5, 2, 9, 2]
    order, calls = kernel.call_plan(groups, 3)
    assert order.tolist() == [1, 3, 5, 0, 2, 4]  # partitions 2, 2, 2, 5, 5, 9
    assert calls.tolist() == [[0, 3], [3, 6]]  # partition 2 fills a call; 5 and 9 share one
    assert kernel.call_cuts(np.array([1, 5, 1, 1], np.int64), 3).tolist() == [[0, 1], [1, 2],
                                                                                [2, 4]]
