"""Links between README.md and docs/*.md: every relative link names a file in the repository
and every #anchor a heading of its page (GitHub's slugs), so moving a section cannot leave a
dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs.test_shell_blocks import FENCE, PAGES, ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def prose(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced blocks, numbered from 1."""
    lines, fence = [], ""
    for number, line in enumerate(page.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1).startswith(fence) and not m.group(2):
                fence = ""
        elif m:
            fence = m.group(1)
        else:
            lines.append((number, line))
    return lines


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for _, line in prose(page):
        m = HEADING.match(line)
        if m:
            anchor, n = slug(m.group(2)), 1
            while anchor in found:  # GitHub numbers repeated headings
                anchor, n = f"{slug(m.group(2))}-{n}", n + 1
            found.add(anchor)
    return found


def dead_links(page: Path) -> list[str]:
    problems = []
    for number, line in prose(page):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not file.exists() or ROOT not in (file, *file.parents):
                problems.append(f"{where}: no such file in the repository")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                problems.append(f"{where}: no heading with that anchor")
    return problems


def test_slugs_are_githubs() -> None:
    assert slug("Scaling out: workers and Redis Cluster") == \
        "scaling-out-workers-and-redis-cluster"
    assert slug("Event time: a window around the server's clock") == \
        "event-time-a-window-around-the-servers-clock"
    assert slug("Workers: `tollgate serve --workers N`") == "workers-tollgate-serve---workers-n"


def test_no_dead_links() -> None:
    problems = [p for page in PAGES for p in dead_links(page)]
    assert not problems, "\n".join(problems)
