"""kernels.memory.copy_bytes against a slice assignment."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

from tollgate.engine.charging.kernels.memory import copy_bytes


@njit(cache=True)
def _copied(dst: np.ndarray, dst_at: int, src: np.ndarray, src_at: int, n: int) -> np.ndarray:
    copy_bytes(dst, dst_at, src, src_at, n)
    return dst


@settings(deadline=None)  # the first example compiles
@given(st.binary(max_size=300), st.binary(max_size=300), st.data())
def test_copy_bytes_is_a_slice_assignment(dst: bytes, src: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, min(len(dst), len(src))))
    dst_at = data.draw(st.integers(0, len(dst) - n))
    src_at = data.draw(st.integers(0, len(src) - n))
    want = bytearray(dst)
    want[dst_at:dst_at + n] = src[src_at:src_at + n]
    # A read-only source (bytes), as the kernels get the messages' buffers.
    got = _copied(np.frombuffer(dst, np.uint8).copy(), dst_at, np.frombuffer(src, np.uint8),
                  src_at, n)
    assert got.tobytes() == bytes(want)


def test_copy_bytes_takes_only_byte_arrays() -> None:
    with pytest.raises(TypingError):
        _copied(np.zeros(4, np.int64), 0, np.zeros(4, np.int64), 0, 1)
