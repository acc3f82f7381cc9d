"""Every shell block of README.md and docs/*.md runs here, against real processes, so no
documented command rots.

Each fenced ``sh`` / ``bash`` / ``shell`` / ``console`` block carries a marker on the line
before its fence (an unmarked block fails the test):

- ``<!-- doc-test: run -->``: run with bash (``set -euo pipefail``); it must exit 0.
- ``<!-- doc-test: background ready=PORT -->``: a long-running process (a server); started in
  the background, ready when PORT accepts connections, stopped (SIGTERM to its process
  group) after the page's last block.
- ``<!-- doc-test: skip REASON -->``: not run here; the reason is required.

A fence without a language is refused too (``text`` for output), so no command hides in one.

Options (``run`` and ``background``): ``timeout=SECONDS`` (default 60 to run, 300 to be
ready: a first start compiles the kernels), ``in=repo`` (run in the repository root instead
of the page's scratch folder), ``needs=PROGRAM`` (run only where PROGRAM is installed, e.g.
grpcurl; otherwise the test warns that it left the block out), ``output=next`` (the next
fenced block shows what it prints: each of its lines must be printed, in order; ``...``
stands for any lines, or within a line for any text).

Blocks of a page run in order in one scratch folder that holds ``.venv`` (this interpreter's
environment) and a copy of ``examples``; ``tollgate`` and ``python`` are this environment's.
The docs' well-known ports (gRPC 50051/50052, Redis 6379/6390, metrics 9464/9465, web 8080,
SMTP 8025) are replaced by free ports in the blocks and in the copied examples, and
TOLLGATE_LISTEN / TOLLGATE_METRICS_PORT point at them, so a run never meets another server
on the machine. Nothing is downloaded."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tollgate.engine.storage.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELLS = frozenset({"sh", "bash", "shell", "console"})
DOC_PORTS = (50051, 50052, 6379, 6390, 8025, 8080, 9464, 9465)
DOC_PORT = re.compile(r"(?<![\d.])(?:" + "|".join(map(str, DOC_PORTS)) + r")(?!\d)")
KINDS = frozenset({"run", "background", "skip"})
OPTIONS = frozenset({"timeout", "in", "ready", "needs", "output"})
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(\S+)\s*(.*?)\s*-->\s*$")
DEFAULT_TIMEOUT_S = 60.0
# A background server's first start after an install compiles the Numba kernels (about a
# minute on 2 cores); later starts load them from the cache in about a second.
BACKGROUND_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Block:
    """One fenced shell block and what its marker asks."""
    page: Path
    line: int                # of the opening fence, 1-based
    text: str
    lang: str
    kind: str                # run | background | skip | "" (no marker)
    options: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    expected: str = ""       # output=next: the lines the next fenced block shows

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def timeout_s(self) -> float:
        default = BACKGROUND_TIMEOUT_S if self.kind == "background" else DEFAULT_TIMEOUT_S
        return float(self.options.get("timeout", default))

    def script(self) -> str:
        """The commands: a console block's `$ ` lines (and their continuations), else all."""
        if self.lang != "console":
            return self.text
        commands: list[str] = []
        going_on = False
        for line in self.text.splitlines():
            if line.startswith("$ ") or going_on:
                commands.append(line[2:] if line.startswith("$ ") else line)
                going_on = line.endswith("\\")
        return "\n".join(commands) + "\n"


def parse_marker(text: str) -> tuple[str, dict[str, str], str]:
    kind, _, rest = text.partition(" ")
    if kind == "skip":
        return kind, {}, rest.strip()
    options = {}
    for word in rest.split():
        key, _, value = word.partition("=")
        options[key] = value
    return kind, options, ""


def fenced(lines: list[str], start: int) -> tuple[str, list[str], int]:
    """The fenced block opening at line `start`: its language, its lines, the closing line."""
    m = FENCE.match(lines[start])
    assert m
    for end in range(start + 1, len(lines)):
        close = FENCE.match(lines[end])
        if close and close.group(1).startswith(m.group(1)) and not close.group(2):
            return m.group(2), lines[start + 1:end], end
    return m.group(2), lines[start + 1:], len(lines)


def shell_blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if not FENCE.match(lines[i]):
            i += 1
            continue
        lang, body, end = fenced(lines, i)
        if lang in SHELLS:
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(previous)
            kind, options, reason = parse_marker(marker.group(1) + " " + marker.group(2)) \
                if marker else ("", {}, "")
            expected = ""
            if options.get("output") == "next":
                following = next((j for j in range(end + 1, len(lines))
                                  if FENCE.match(lines[j])), None)
                if following is not None:
                    expected = "\n".join(fenced(lines, following)[1])
            yield Block(page, i + 1, "\n".join(body) + "\n", lang, kind, options, reason,
                        expected)
        i = end + 1


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in shell_blocks(page)]


def marker_problems(block: Block) -> list[str]:
    if not block.kind:
        return [f"{block.where}: shell block without a <!-- doc-test: ... --> marker"]
    if block.kind not in KINDS:
        return [f"{block.where}: unknown doc-test kind {block.kind!r}"]
    problems = []
    if block.kind == "skip" and not block.reason:
        problems.append(f"{block.where}: doc-test skip needs a reason")
    unknown = set(block.options) - OPTIONS
    if unknown:
        problems.append(f"{block.where}: unknown doc-test options {sorted(unknown)}")
    if block.kind == "background" and not block.options.get("ready", "").isdigit():
        problems.append(f"{block.where}: a background block needs ready=PORT")
    if "output" in block.options and (block.options["output"] != "next" or not block.expected):
        problems.append(f"{block.where}: output=next needs a fenced block after this one")
    return problems


def unlabelled_fences(page: Path) -> list[str]:
    problems = []
    fence = ""
    for i, line in enumerate(page.read_text().splitlines()):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1).startswith(fence) and not m.group(2):
                fence = ""
        elif m:
            fence = m.group(1)
            if not m.group(2):
                problems.append(f"{page.relative_to(ROOT)}:{i + 1}: a fence without a language "
                                "(sh for commands, text for output)")
    return problems


def orphan_markers(page: Path) -> list[str]:
    """Markers that are not right before a shell block (a typo would silently skip one)."""
    marked = {b.line for b in shell_blocks(page) if b.kind}
    lines = page.read_text().splitlines()
    problems = []
    for i, line in enumerate(lines):
        if not MARKER.match(line):
            continue
        following = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), -1)
        if following + 1 not in marked:
            problems.append(f"{page.relative_to(ROOT)}:{i + 1}: doc-test marker not followed "
                            "by a shell block")
    return problems


def test_every_shell_block_is_marked() -> None:
    blocks = all_blocks()
    assert blocks, "no shell blocks found: the parser is broken"
    problems = [p for b in blocks for p in marker_problems(b)]
    problems += [p for page in PAGES for p in orphan_markers(page) + unlabelled_fences(page)]
    assert not problems, "\n".join(problems)


def test_shown_output_is_looked_for_in_order() -> None:
    assert unshown("a\n...\nc", "a\nb\nc\n") == ""
    assert unshown("c\na", "a\nc\n") == "a"
    assert unshown("  a  \n\n", "a") == ""
    assert unshown("x,...,z", "x,y,z") == ""
    assert unshown("x,...,z", "x,y") == "x,...,z"


def test_the_marker_parser_sees_what_it_must() -> None:
    """The parser on a page of its own: an unmarked block, each kind, and a fence inside a
    fence are told apart (else the real test could pass on blocks it never saw)."""
    page = ROOT / "tests" / "docs" / "sample.md"
    blocks = list(shell_blocks(page))
    assert [(b.kind, b.options.get("ready"), b.reason) for b in blocks] == [
        ("", None, ""), ("run", None, ""), ("background", "50051", ""),
        ("skip", None, "needs two machines"), ("run", None, ""), ("run", None, "")]
    assert blocks[-2].script() == "echo one \\\n  two\n"
    assert blocks[-1].expected == "a\n...\nc"
    assert [p.split(": ", 1)[1] for b in blocks for p in marker_problems(b)] == [
        "shell block without a <!-- doc-test: ... --> marker"]


class Page:
    """A page's blocks run in order in one scratch folder; background processes are stopped
    at the end."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.ports = {port: free_port() for port in DOC_PORTS}
        (scratch / ".venv").symlink_to(Path(sys.prefix))
        (scratch / "examples").mkdir()
        for example in (ROOT / "examples").iterdir():
            if example.is_file():
                (scratch / "examples" / example.name).write_text(self.local(example.read_text()))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TOLLGATE_") and k not in ("REDIS_URL", "VIRTUAL_ENV")}
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env["TOLLGATE_LISTEN"] = f"127.0.0.1:{self.ports[50051]}"
        env["TOLLGATE_METRICS_PORT"] = str(self.ports[9464])
        env["TOLLGATE_VENV"] = sys.prefix  # ./dev.sh uses this environment, creates none
        self.env = env
        self.background: list[tuple[Block, subprocess.Popen[bytes]]] = []

    def local(self, text: str) -> str:
        """The text with the docs' ports replaced by this run's (in one pass)."""
        return DOC_PORT.sub(lambda m: str(self.ports[int(m.group(0))]), text)

    def cwd(self, block: Block) -> Path:
        return ROOT if block.options.get("in") == "repo" else self.scratch

    def run(self, block: Block) -> None:
        script = "set -euo pipefail\n" + self.local(block.script())
        proc = subprocess.Popen(["bash", "-c", script], cwd=self.cwd(block), env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=block.timeout_s)
        except subprocess.TimeoutExpired:
            _end_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"{block.where} ran past {block.timeout_s} s:\n{block.text}"
                                 f"\nstdout:\n{_tail(out)}\nstderr:\n{_tail(err)}") from None
        finally:
            _end_group(proc.pid, signal.SIGTERM)  # nothing it started outlives it
        assert proc.returncode == 0, (
            f"{block.where} exited {proc.returncode}:\n{block.text}\n"
            f"stdout:\n{_tail(out)}\nstderr:\n{_tail(err)}")
        missing = unshown(self.local(block.expected), out.decode(errors="replace"))
        assert not missing, (f"{block.where}: the page says it prints {missing!r}; it printed:"
                             f"\n{_tail(out)}")

    def start(self, block: Block) -> None:
        log = self.scratch / f"background-{block.line}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", "exec " + self.local(block.script())],
                                    cwd=self.cwd(block), env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append((block, proc))
        port = self.ports.get(int(block.options["ready"]), int(block.options["ready"]))
        deadline = time.monotonic() + block.timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{block.where} ended ({proc.returncode}) before port "
                                     f"{port} was ready:\n{log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"{block.where}: port {port} not ready after {block.timeout_s} s:"
                             f"\n{log.read_text()[-3000:]}")

    def stop(self) -> list[str]:
        """Stops the background processes, newest first; the ones that did not end well."""
        problems = []
        for block, proc in reversed(self.background):
            _end_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _end_group(proc.pid, signal.SIGKILL)
                proc.wait()
                problems.append(f"{block.where} did not stop within 30 s of SIGTERM")
        return problems


def unshown(expected: str, output: str) -> str:
    """The first line the page shows that the output lacks, or "". Lines are looked for in
    order, spaces at their ends aside; a line `...` skips any lines, `...` within a line any
    text."""
    printed = [line.strip() for line in output.splitlines()]
    at = 0
    for line in (line.strip() for line in expected.splitlines()):
        if not line or line == "...":
            continue
        pattern = re.compile(".*".join(map(re.escape, line.split("..."))))
        found = next((n for n in range(at, len(printed)) if pattern.fullmatch(printed[n])),
                     None)
        if found is None:
            return line
        at = found + 1
    return ""


def _end_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _tail(output: bytes | str | None) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    return text[-3000:]


RUNNABLE = [page for page in PAGES
            if any(b.kind in ("run", "background") for b in shell_blocks(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_the_page_runs(page: Path, tmp_path: Path) -> None:
    blocks = [b for b in shell_blocks(page) if b.kind in ("run", "background")]
    missing = [b for b in blocks if "needs" in b.options and not shutil.which(b.options["needs"])]
    for block in missing:
        warnings.warn(f"{block.where} left out: {block.options['needs']} is not installed",
                      stacklevel=1)
    blocks = [b for b in blocks if b not in missing]
    runner = Page(tmp_path)
    try:
        for block in blocks:
            (runner.start if block.kind == "background" else runner.run)(block)
    finally:
        stopped_badly = runner.stop()
    assert not stopped_badly, "\n".join(stopped_badly)

