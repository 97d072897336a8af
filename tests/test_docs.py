"""README.md, CONTRIBUTING.md and docs/*.md: links that resolve, tables that render, the README's
order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])

_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN_RE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# A path of the machine rather than of the repository.
_OUTSIDE_RE = re.compile(r"(?<![\w.$~-])(?:/(?:etc|var|usr|opt|run|tmp|home|root|srv|work|mnt)/|"
                         r"~/|\.\./)")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE_RE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of *path*."""
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in _prose_lines(path):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[tuple[int, str]]:
    return [(number, target) for number, line in _prose_lines(path)
            for target in _LINK_RE.findall(_CODE_SPAN_RE.sub("", line))]


def _code_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```[^\n]*\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file_and_heading_in_the_repository(page: Path) -> None:
    """A relative link leads to a file of the repository and, with #anchor, to one of its
    headings; none leaves the repository."""
    broken = []
    for number, target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(f"{page.name}:{number}: {target}: no such file in the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{page.name}:{number}: {target}: no such heading")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_row_has_as_many_cells_as_its_header(page: Path) -> None:
    """No table cell is split by a literal ``|`` (written ``\\|`` in a cell, code included)."""
    broken, header = [], None
    for number, line in _prose_lines(page):
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = line.strip().replace("\\|", "").strip("|").count("|") + 1
        if header is None:
            header = cells
        elif cells != header:
            broken.append(f"{page.name}:{number}: {cells} cells, header has {header}")
    assert broken == []


def test_the_readme_opens_with_the_install_and_the_test_command() -> None:
    """The README's first two code blocks are the command that installs and serves on SQLite
    and the command that runs the test suite, before any section."""
    readme = ROOT / "README.md"
    blocks = _code_blocks(readme)
    assert blocks[:2] == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install . && eximauthd serve\n",
        "./scripts/test\n",
    ]
    text = readme.read_text(encoding="utf-8")
    assert text.index("./scripts/test") < text.index("\n## ")


def test_the_readme_sections_follow_an_admins_order() -> None:
    """What and why, quick start, Exim, migration, operation, then the documentation index."""
    headings = [line for _, line in _prose_lines(ROOT / "README.md") if line.startswith("## ")]
    assert headings == ["## What and why", "## Quick start", "## Wire Exim",
                        "## Migrate passwords", "## Operate", "## Documentation"]


def test_the_readme_index_lists_every_page_of_docs() -> None:
    """Each docs/*.md file has its line in the README's documentation index."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = readme[readme.index("\n## Documentation"):]
    listed = set(re.findall(r"^- \[[^\]]*\]\((docs/[^)#]+\.md)\)", index, re.MULTILINE))
    assert listed == {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}


def test_the_readme_names_no_file_outside_the_repository() -> None:
    """Every path the README mentions is one a reader of the repository has."""
    readme = ROOT / "README.md"
    outside = [f"{number}: {line}" for number, line in enumerate(
        readme.read_text(encoding="utf-8").splitlines(), 1) if _OUTSIDE_RE.search(line)]
    assert outside == []
