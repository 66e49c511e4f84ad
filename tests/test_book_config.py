"""The book lists every chapter and documents every module (book/_toc.yml, book/api.md)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def toc_files() -> list[str]:
    """Every ``file:`` entry in book/_toc.yml."""
    text = (BOOK / "_toc.yml").read_text()
    yaml.safe_load(text)  # must parse
    return re.findall(r"^\s*-\s*file:\s*(\S+)", text, re.M)


def test_every_chapter_is_in_the_book():
    chapters = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    listed = {Path(f).name for f in toc_files() if f.startswith("notebooks/")}
    assert sorted(set(chapters) - listed) == [], "chapters missing from book/_toc.yml"
    assert sorted(listed - set(chapters)) == [], "book/_toc.yml lists chapters with no source"


def test_every_module_is_in_the_api_page():
    modules = sorted(p.stem for p in (ROOT / "src" / "minigen").glob("*.py")
                     if not p.stem.startswith("_"))
    documented = set(re.findall(r"automodule::\s*minigen\.(\w+)", (BOOK / "api.md").read_text()))
    assert sorted(set(modules) - documented) == [], "modules missing from book/api.md"


def test_book_renders_executed_notebooks():
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    link = BOOK / "notebooks"
    assert link.is_symlink() and Path(link.readlink()) == Path("../build/executed")
