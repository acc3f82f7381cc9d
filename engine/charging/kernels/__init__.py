"""Numba kernels: pure functions over arrays, each with a plain-Python twin in reference.py.

Importing the package first points Numba's on-disk cache at a directory named after a hash
of every kernel source. Numba keys a cached kernel by its own file only, so a kernel that
inlines another module's helpers (rerate_kernel inlines charge.py's pricing) would load
stale machine code after that module changed: seen here once as a re-rate priced with the
time windows of the code before, and after an upgrade in place it would price money with an
old tariff rule. A change to any kernel source now starts a fresh cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from numba.core import config as numba_config

HERE = Path(__file__).parent
SOURCES = (*sorted(HERE.glob("*.py")),
           *(HERE.parent / name for name in ("wire.py", "usage_wire.py", "answers.py")))
"""Every file whose functions compile with cache=True or are inlined into them."""


def sources_digest() -> str:
    """A short hash of every kernel source: the name of their cache directory."""
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_dir() -> str:
    # A directory the user chose (NUMBA_CACHE_DIR) is kept, with the hash below it; an
    # installation the user cannot write to caches in the user's own cache directory.
    default = (HERE / "__pycache__" / "numba" if os.access(HERE, os.W_OK)
               else Path.home() / ".cache" / "tollgate" / "numba")
    base = Path(numba_config.CACHE_DIR or default)  # type: ignore[attr-defined]
    return str(base / sources_digest())


numba_config.CACHE_DIR = _cache_dir()  # type: ignore[attr-defined]


def compiled() -> bool:
    """Whether the charge kernel of these sources is in the cache already (a start after the
    first one for an install or upgrade loads it; the first compiles every kernel)."""
    cache = Path(numba_config.CACHE_DIR)  # type: ignore[attr-defined]
    return any(cache.rglob("charge.charge_kernel-*.nbi"))
