"""Build hook: generate the protobuf and gRPC modules from proto/ before packaging."""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        # Generated at build time, never committed, so the code always matches the
        # installed protobuf/grpc runtimes and the .proto files it came from.
        runpy.run_path(str(Path(__file__).parent / "proto" / "generate.py"))["generate"]()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
