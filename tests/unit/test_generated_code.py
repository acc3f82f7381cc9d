"""The installed tollgate.v1 modules were generated from the current .proto files."""

from __future__ import annotations

import runpy
from pathlib import Path

import tollgate.v1

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_match_the_proto_files(tmp_path):
    generate = runpy.run_path(str(ROOT / "proto" / "generate.py"))["generate"]
    fresh = generate(tmp_path)
    installed = Path(tollgate.v1.__file__).parent
    assert fresh, "protoc produced nothing"
    for path in fresh:
        current = installed / path.relative_to(tmp_path / "tollgate" / "v1")
        assert current.exists(), f"{current.name} missing: run `pip install -e .`"
        assert current.read_text() == path.read_text(), (
            f"{current.name} is stale: a .proto changed; run `pip install -e .`")
