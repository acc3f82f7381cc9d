"""Bytes a few edits away from valid ones, for the tests that hold a decoder to its oracle on
input it must refuse or read as the oracle does."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def corrupted(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A value of `valid` with one to three edits: cut short, a byte changed, bytes inserted,
    deleted or repeated."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "repeat"]))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        elif kind == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 12))]
    return bytes(data)
