"""The package's metadata holds what its generated code needs (grpcio and protobuf no older
than the generator's, grpcio-tools at build time only), and all of it is one namespace."""

from __future__ import annotations

import ast
import os
import re
import tomllib
from pathlib import Path

import tollgate
from tollgate.v1 import charging_pb2, charging_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHIPPED = sorted(Path(d, f) for d, _, files in os.walk(Path(tollgate.__file__).parent,
                                                     followlinks=True)
                 for f in files if f.endswith(".py"))
"""Every module the wheel installs, as the repository links them under tollgate/."""


def _imported(path: Path) -> list[str]:
    return [name for node in ast.walk(ast.parse(path.read_text()))
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom)
                         and not node.level else [])]


def _lower_bound(requirements: list[str], name: str) -> str:
    [bound] = [m.group(1) for r in requirements
               if (m := re.fullmatch(rf"{name}(?:\[[^]]*\])?(?:>=|==)([\d.]+)", r))]
    return bound


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split("."))


def test_grpcio_is_no_older_than_the_generated_code_needs():
    needed = charging_pb2_grpc.GRPC_GENERATED_VERSION
    assert _version(_lower_bound(PYPROJECT["project"]["dependencies"], "grpcio")) >= \
        _version(needed)
    # The build's generator decides what the generated code needs: pinned to the same.
    assert _lower_bound(PYPROJECT["build-system"]["requires"], "grpcio-tools") == needed


def test_protobuf_is_no_older_than_the_gencode():
    call = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
                     r"\s*(\d+),\s*(\d+),\s*(\d+),", Path(charging_pb2.__file__).read_text())
    assert call, "no runtime version check in the generated code"
    gencode = tuple(int(n) for n in call.groups())
    assert _version(_lower_bound(PYPROJECT["project"]["dependencies"], "protobuf")) >= gencode


def test_grpcio_tools_is_a_build_requirement_only():
    assert not [r for r in PYPROJECT["project"]["dependencies"] if r.startswith("grpcio-tools")]
    importing = [p for p in SHIPPED if any(n.startswith("grpc_tools") for n in _imported(p))]
    assert not importing, f"grpc_tools imported at run time by {importing}"


def test_the_links_put_the_top_level_folders_under_the_namespace():
    for name in ("engine", "bench", "server.py"):
        link = ROOT / "tollgate" / name
        assert link.is_symlink() and link.resolve() == ROOT / name
    assert {p.name for p in SHIPPED} >= {"server.py", "cli.py", "engine.py", "loadgen.py"}


def test_our_code_imports_its_own_modules_through_the_namespace():
    # A module imported both as engine.x and tollgate.engine.x would run twice, with two
    # copies of every class and enum; the wheel has no top-level engine, bench or server.
    ours = {"engine", "bench", "server"}
    code = [*SHIPPED, *(ROOT / "tests").rglob("*.py")]
    stray = [f"{p}: {n}" for p in code for n in _imported(p) if n.split(".")[0] in ours]
    assert not stray, stray


def test_the_wheel_lists_only_the_namespace():
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert "py-modules" not in setuptools
    assert all(p == "tollgate" or p.startswith("tollgate.") for p in setuptools["packages"])
    assert PYPROJECT["project"]["scripts"]["tollgate"].startswith("tollgate.")
