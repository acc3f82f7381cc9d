"""Byte copies for the kernels that write bytes: one memcpy each, where Numba compiles a slice
assignment or a loop into a copy of a byte per step (about 1 ns a byte; the apply's calls took
twice as long, kernels.apply_calls)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _bytes(t: Any) -> bool:
    return (isinstance(t, types.Array) and t.dtype == types.uint8 and t.ndim == 1
            and t.layout == "C")


@intrinsic
def _memcpy(typingctx: Any, dst: Any, dst_at: Any, src: Any, src_at: Any, n: Any) -> Any:
    if not (_bytes(dst) and _bytes(src)
            and all(isinstance(t, types.Integer) for t in (dst_at, src_at, n))):
        return None
    sig = types.void(dst, dst_at, src, src_at, n)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> None:
        d, d_at, s, s_at, count = (
            context.cast(builder, v, t, types.intp) if isinstance(t, types.Integer) else v
            for v, t in zip(args, signature.args, strict=True))
        d_arr = context.make_array(signature.args[0])(context, builder, d)
        s_arr = context.make_array(signature.args[2])(context, builder, s)
        cgutils.raw_memcpy(builder, builder.gep(d_arr.data, [d_at]),
                           builder.gep(s_arr.data, [s_at]), count, 1)

    return sig, codegen


copy_bytes = cast(Callable[[np.ndarray, int, np.ndarray, int, int], None], _memcpy)
"""copy_bytes(dst, dst_at, src, src_at, n): dst[dst_at:dst_at + n] = src[src_at:src_at + n], for
contiguous uint8 arrays that do not overlap, in a kernel. No bounds check, as in the kernels'
own loops: the callers size `dst` first."""
