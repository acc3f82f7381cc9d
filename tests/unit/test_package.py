"""The package's metadata holds what its generated code needs: grpcio and protobuf no older
than the generator's, grpcio-tools at build time only."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import bench
import engine
import server
from tollgate.v1 import charging_pb2, charging_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


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
    shipped = [*Path(engine.__file__).parent.rglob("*.py"), Path(server.__file__),
               *Path(bench.__file__).parent.glob("*.py")]
    importing = [p for p in shipped for node in ast.walk(ast.parse(p.read_text()))
                 if isinstance(node, ast.Import | ast.ImportFrom)
                 and any(n.startswith("grpc_tools") for n in (
                     [a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""]))]
    assert not importing, f"grpc_tools imported at run time by {importing}"
