"""Citations of the docs point inside the repository, at sections that exist.

A citation is `<path>.md §N[.M]` (also `§N, §M`, `§N-§M`, `§N/§M`, and a markdown link
`[name](path.md) §N`). The path is taken relative to the repository root, or, inside docs/*.md,
relative to docs/ first. The file must exist and have a heading numbered N[.M]
(`## 3. Semantics`, `### 3.1 One update family`). The design contract is cited as
`docs/design.md` from code and tests; docs/*.md may link it relatively. No text points at a
folder outside the repository.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Where citations are checked: code and its data files, tests, docs, README, presets, benchmarks.
CITING = ["nestdsl/**/*.py", "nestdsl/**/*.yaml", "nestdsl/**/*.nest", "tests/**/*.py",
          "docs/*.md", "README.md", "specs/**/*.yaml", "specs/**/*.nest", "examples/**/*",
          "benchmarks/*.py"]

SECTION = r"§\d+(?:\.\d+)*"
CITATION = re.compile(
    rf"(?P<path>[\w./-]*\w\.md)\)?\s+(?P<sections>{SECTION}(?:\s*(?:,|-|–|/|and)\s*{SECTION})*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.M)
DESIGN = "design" + ".md"
OUTSIDE = ("../" + "shared", "/work/" + "shared")
#: Sections of the team's private paper notes (outside the repository): cite the paper instead.
PRIVATE_NOTES = re.compile(r"\bnotes " + "§")


def _files(patterns: list[str]) -> list[Path]:
    out: set[Path] = set()
    for pattern in patterns:
        out.update(p for p in ROOT.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(out)


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


@cache
def _sections(path: Path) -> frozenset[str]:
    return frozenset(HEADING.findall(path.read_text(encoding="utf-8")))


def _resolve(cited: str, source: Path) -> Path | None:
    bases = [source.parent, ROOT] if source.parent == ROOT / "docs" else [ROOT]
    for base in bases:
        target = (base / cited).resolve()
        if target.is_file() and target.is_relative_to(ROOT):
            return target
    return None


def _citations(text: str) -> list[tuple[int, str, list[str]]]:
    found = []
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        found.append((line, m["path"], re.findall(r"§(\d+(?:\.\d+)*)", m["sections"])))
    return found


def test_every_cited_section_exists() -> None:
    problems, count = [], 0
    for source in _files(CITING):
        text = _text(source)
        if text is None:
            continue
        for line, cited, sections in _citations(text):
            count += 1
            where = f"{source.relative_to(ROOT)}:{line}: {cited}"
            target = _resolve(cited, source)
            if target is None:
                problems.append(f"{where}: no such file in the repository")
                continue
            missing = [s for s in sections if s not in _sections(target)]
            if missing:
                problems.append(f"{where}: no section {', '.join('§' + s for s in missing)}")
    assert count >= 60, f"only {count} citations found: is the pattern still right?"
    assert not problems, "\n".join(problems)


def test_the_design_contract_is_cited_by_its_repository_path() -> None:
    bare = re.compile(rf"(?<![\w./-]){re.escape(DESIGN)}")
    problems = []
    for source in _files(CITING):
        if source.parent == ROOT / "docs":
            continue                 # docs/*.md may link it relatively
        text = _text(source)
        if text is None:
            continue
        for m in bare.finditer(text):
            problems.append(f"{source.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert not problems, f"cite it as docs/{DESIGN}: " + ", ".join(problems)
    assert (ROOT / "docs" / DESIGN).is_file()


def _repository_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available to list the repository's files")
    return [ROOT / name for name in listed if name and (ROOT / name).is_file()]


def test_no_text_points_outside_the_repository() -> None:
    problems = []
    for path in _repository_files():
        text = _text(path)
        if text is None:
            continue
        for needle in OUTSIDE:
            if needle in text:
                problems.append(f"{path.relative_to(ROOT)}: {needle}")
        if path.suffix != ".json" and PRIVATE_NOTES.search(text):
            problems.append(f"{path.relative_to(ROOT)}: cites the paper notes, not the paper")
    assert not problems, "\n".join(problems)


def test_the_citation_pattern() -> None:
    text = ("see docs/design.md §3.1, §3.4 and [notes](docs/hope-dynamics.md) §6; "
            "docs/design.md §3.2-§3.4; NL paper §3 is not a file")
    assert _citations(text) == [(1, "docs/design.md", ["3.1", "3.4"]),
                                (1, "docs/hope-dynamics.md", ["6"]),
                                (1, "docs/design.md", ["3.2", "3.4"])]
