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

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        # bench/ holds the tools behind `tollgate bench` and the benchmark suites; the suites
        # (test_*.py, conftest.py) import the tests package, which is not installed.
        modules = super().find_package_modules(package, package_dir)
        if package != "tollgate.bench":
            return modules
        return [m for m in modules if not (m[1].startswith("test_") or m[1] == "conftest")]


setup(cmdclass={"build_py": BuildPyWithProtos})
