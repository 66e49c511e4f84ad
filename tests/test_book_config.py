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
    """Every module and subpackage of src/minigen has an ``automodule`` entry (one section per
    subpackage)."""
    pkg = ROOT / "src" / "minigen"
    modules = set()
    for p in pkg.rglob("*.py"):
        parts = p.relative_to(pkg).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules.add("minigen." + ".".join(parts))
    text = "".join(p.read_text() for p in [BOOK / "api.md", *sorted((BOOK / "api").glob("*.md"))])
    documented = set(re.findall(r"automodule::\s*(minigen[\w.]*)", text))
    assert sorted(modules - documented) == [], "modules missing from book/api.md and book/api/"


def test_book_renders_executed_notebooks():
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    link = BOOK / "notebooks"
    assert link.is_symlink() and Path(link.readlink()) == Path("../build/executed")


def test_every_package_reference_in_the_chapters_resolves():
    """Each ``minigen.…`` name a chapter or book page links to (``{py:func}`` and friends, or
    in backticks) is a real module or attribute, so a moved name fails here, not only in the
    book build's -W."""
    import importlib

    texts = [p.read_text() for p in [*(ROOT / "notebooks").glob("*.py"), *BOOK.glob("*.md")]]
    refs = sorted({m.strip("`~") for t in texts for m in re.findall(r"`~?minigen(?:\.\w+)+`", t)})
    assert refs
    bad = []
    for ref in refs:
        parts = ref.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            bad.append(ref)
    assert not bad, f"references to names that do not exist: {bad}"


def test_the_design_page_is_in_the_book_and_every_reference_points_to_it():
    """The architecture page lives in the repository (book/design.md) and the book; nothing
    points to a DESIGN.md the repository does not have."""
    assert (BOOK / "design.md").is_file() and "design" in toc_files()
    text = (BOOK / "design.md").read_text()
    for section in ("One time convention", "The five parts", "Where the code lives",
                    "How notebooks run", "Adding a chapter"):
        assert section in text
    files = [*ROOT.glob("src/minigen/**/*.py"), *ROOT.glob("notebooks/*.py"), *ROOT.glob("tests/**/*.py"),
             ROOT / "README.md"]
    stale = [str(p.relative_to(ROOT)) for p in files
             if "DESIGN.md" in p.read_text() and p.name != "test_book_config.py"]
    assert not stale, f"references to a DESIGN.md the repository does not have: {stale}"
