"""The method notes (docs/method/*.md) that docstrings cite exist, with the headings they cite.

A docstring or comment cites a note as ``docs/method/ijepa.md, "Masks"`` (one or more quoted
headings, joined by commas or "and") or ``docs/method/ijepa.md#masks`` (a GitHub anchor). Every
cited file and heading must exist, every ``docs/*.md`` a module names must exist, and no module may
point at a file outside the repository (the reference documents the notes were written from are
not shipped with it).
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jepa"
METHOD = ROOT / "docs" / "method"
NOTES = ("ijepa.md", "vjepa.md", "lejepa.md")

# docs/method/NAME.md followed by an #anchor, or by quoted headings: , "A", "B" and "C"
CITATION = re.compile(r'(docs/method/[\w.-]+\.md)(?:#([\w-]+)|((?:\s*,?\s*(?:and\s+)?"[^"\n]+")+))?')
QUOTED = re.compile(r'"([^"\n]+)"')
DOC_PATH = re.compile(r"\bdocs/[\w/.-]+\.md\b")
# what used to stand for the notes: the out-of-tree spec files and citations of them
FORBIDDEN = re.compile(r'IJEPA_SPEC|(?-i:\bLEJEPA\.md)|\.\./shared|shared/docs|\bthe spec\b|\bspec\s*,\s*"', re.IGNORECASE)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and string literal of a module: docstrings, comments, messages."""
    out = []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    for tok in tokens:
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            out.append((tok.start[0], tok.string))
    return out


def _headings(note: Path) -> list[str]:
    """Markdown headings (any level) of a note, outside fenced code blocks."""
    headings, fenced = [], False
    for line in note.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            headings.append(m.group(1))
    return headings


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _citations() -> list[tuple[str, str, str | None, list[str]]]:
    """(where, note path, anchor, quoted headings) of every citation of a method note in jepa/."""
    found = []
    for path in _modules():
        for line, text in _prose(path):
            for m in CITATION.finditer(text):
                where = f"{path.relative_to(ROOT)}:{line + text.count(chr(10), 0, m.start())}"
                found.append((where, m.group(1), m.group(2), QUOTED.findall(m.group(3) or "")))
    return found


def test_the_notes_exist_and_their_headings_are_unique():
    for name in NOTES:
        note = METHOD / name
        assert note.is_file(), f"{note.relative_to(ROOT)} is missing"
        headings = _headings(note)
        anchors = [_anchor(h) for h in headings]
        twice = sorted({a for a in anchors if anchors.count(a) > 1})
        assert not twice, f"{name}: headings with the same anchor {twice}; citations would be ambiguous"


def test_modules_cite_the_notes():
    """Guards the parser: the notes are cited, so a regex that matches nothing fails here."""
    cited = {note for _, note, _, _ in _citations()}
    assert {f"docs/method/{name}" for name in NOTES} <= cited, cited


def test_every_cited_note_and_heading_exists():
    problems = []
    for where, note, anchor, headings in _citations():
        path = ROOT / note
        if not path.is_file():
            problems.append(f"{where}: {note} does not exist")
            continue
        known = _headings(path)
        if anchor is not None and anchor not in {_anchor(h) for h in known}:
            problems.append(f"{where}: {note} has no heading with the anchor #{anchor}")
        for heading in headings:
            if heading not in known:
                problems.append(f"{where}: {note} has no heading {heading!r} (headings: {known})")
    assert not problems, "\n".join(problems)


def test_every_docs_file_a_module_names_exists():
    missing = [f"{path.relative_to(ROOT)}:{line}: {doc}"
               for path in _modules() for line, text in _prose(path) for doc in DOC_PATH.findall(text)
               if not (ROOT / doc).is_file()]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_cites_a_file_outside_the_repository(path):
    hits = [f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r}"
            for line, text in _prose(path) for m in FORBIDDEN.finditer(text)]
    assert not hits, ("cite the method notes in docs/method/ instead (e.g. docs/method/ijepa.md, \"Masks\"):\n"
                      + "\n".join(hits))


def test_the_notes_link_only_to_what_exists():
    """Relative links between the notes (and to other docs) resolve, anchors included."""
    problems = []
    for name in NOTES:
        note = METHOD / name
        for target in re.findall(r"\]\(([^)\s]+)\)", note.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (note.parent / file_part).resolve() if file_part else note
            if not dest.is_file():
                problems.append(f"{name}: link {target} names a missing file")
            elif anchor and dest.suffix == ".md" and anchor not in {_anchor(h) for h in _headings(dest)}:
                problems.append(f"{name}: link {target} names a missing heading")
    assert not problems, "\n".join(problems)
