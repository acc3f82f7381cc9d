"""Compiled kernels are cached per version of all kernel sources, never per file alone."""

from __future__ import annotations

from pathlib import Path

from numba.core import config as numba_config

import tollgate.engine.charging.kernels
from tests.unit.kernel_inputs import kernel_args
from tollgate.engine.charging.kernels.charge import charge_kernel
from tollgate.engine.charging.kernels.reference import RefAccount, RefRate, RefState


def test_every_kernel_source_decides_the_cache_directory():
    names = {p.name for p in tollgate.engine.charging.kernels.SOURCES}

    # rerate.py inlines charge.py's pricing: a change to charge.py alone must not reuse
    # rerate_kernel's old machine code.
    assert {"charge.py", "rerate.py", "wire.py"} <= names
    assert Path(numba_config.CACHE_DIR).name == tollgate.engine.charging.kernels.sources_digest()


def test_every_module_with_cached_kernels_is_a_kernel_source():
    root = Path(tollgate.engine.__file__).parent
    cached = {p for p in root.rglob("*.py") if "cache=True" in p.read_text()}

    sources = set(tollgate.engine.charging.kernels.SOURCES)
    assert cached <= sources, "a module caches kernels the digest ignores"


def test_compiled_kernels_are_stored_under_that_directory():
    rate = RefRate(price=1, increment=1, first=0, quota=1, unit=1)
    charge_kernel(*kernel_args([], [rate], RefState([RefAccount(money=0, floor=0)], [], [], [0])))

    stored = list(Path(numba_config.CACHE_DIR).rglob("charge.charge_kernel-*.nbi"))
    assert stored, f"no cached charge_kernel under {numba_config.CACHE_DIR}"


def test_compiled_says_whether_the_charge_kernel_is_cached(tmp_path, monkeypatch):
    rate = RefRate(price=1, increment=1, first=0, quota=1, unit=1)
    charge_kernel(*kernel_args([], [rate], RefState([RefAccount(money=0, floor=0)], [], [], [0])))
    assert tollgate.engine.charging.kernels.compiled()

    monkeypatch.setattr(numba_config, "CACHE_DIR", str(tmp_path))  # an empty cache
    assert not tollgate.engine.charging.kernels.compiled()
