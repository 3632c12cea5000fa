"""The documentation's relative links resolve, and the README stays an entry point.

Every relative Markdown link in README.md and docs/*.md must name an existing file or
folder; a ``#anchor`` into a Markdown file must name one of its headings, slugged as
GitHub does. Links inside code (fenced blocks, inline code) are not links. No
TensorFlow here: plain text only.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+).+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(].*?[\"')])?\s*\)"
)
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(text: str, *, drop_inline_code: bool = True) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks (inline code removed)."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        out.append((number, _INLINE_CODE.sub("", line) if drop_inline_code else line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed
    (letters, marks, digits, ``_``, ``-`` and spaces kept), spaces turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    text = path.read_text(encoding="utf-8")
    for _, line in prose_lines(text, drop_inline_code=False):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """``(line number, target)`` of every link in ``path``'s prose."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        out += [(number, t) for t in _INLINE_LINK.findall(line)]
        m = _REFERENCE_DEF.match(line)
        if m:
            out.append((number, m.group(1)))
    return out


def broken_links(path: Path) -> list[str]:
    """What is wrong with the relative links of one Markdown file (empty: nothing)."""
    problems = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for number, target in links(path):
        if not target or _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}:{number}: {target}: no such file")
            continue
        heading = unquote(anchor)
        if heading and dest.suffix == ".md" and heading not in anchors(dest):
            missing = f"no heading '#{heading}' in {dest.name}"
            problems.append(f"{where}:{number}: {target}: {missing}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (ROOT / unquote(t.partition("#")[0])).resolve()
        for _, t in links(ROOT / "README.md")
        if not _EXTERNAL.match(t)
    }
    pages = sorted((ROOT / "docs").glob("*.md"))
    missing = [p.name for p in pages if p.resolve() not in linked]
    assert missing == []


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference "
        "material to a page under docs/ and link it"
    )


def test_the_checker_catches_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# A page\n\n## Its section (`x`) — ρ₂, 1/255\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#its-section-x--ρ₂-1255) [ok](#here) [web](https://x.y)\n"
        "# Here\n"
        "```\n[in code](missing.md)\n```\n`[inline](missing.md)`\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere)\n"
    )
    assert broken_links(page) == [
        f"{page}:7: missing.md: no such file",
        f"{page}:7: other.md#nowhere: no heading '#nowhere' in other.md",
    ]


@pytest.mark.parametrize(
    "heading, expected",
    [
        (
            "Defense results on real data (Imagenette, 3 × 500)",
            "defense-results-on-real-data-imagenette-3--500",
        ),
        ("The attacks (`src/advpipe/attacks/`)", "the-attacks-srcadvpipeattacks"),
        ("The ε sweep vs Foolbox", "the-ε-sweep-vs-foolbox"),
        ("The transfer matrix (`transfer`)", "the-transfer-matrix-transfer"),
        ("Step 1: the [module](x.md)", "step-1-the-module"),
    ],
)
def test_slug_is_githubs(heading, expected):
    assert slug(heading) == expected
