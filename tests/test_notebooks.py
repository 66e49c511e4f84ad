"""Every chapter's notebook source and results file have the contract's shape (the figures
themselves are asserted per chapter in tests/chapters/).

A chapter also needs ``tests/chapters/test_<chapter>.py``: a test here fails without it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


from chapters.helpers import quick_results  # noqa: E402


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_structure(chapter):
    src = (ROOT / "notebooks" / f"{chapter}.py").read_text()
    assert len(re.findall(r'tags=\["parameters"\]', src)) == 1, "exactly one parameters cell"
    assert "quick_from_env()" in src, "the parameters cell reads quick mode from the environment"
    cell = src[src.index('tags=["parameters"]'):]
    cell = cell[:cell.index("\n# %%")]
    assert cell.rstrip().splitlines()[-1].startswith("defaults = parameter_defaults(globals())"), \
        "the parameters cell ends by recording its defaults, so quick mode keeps passed values"
    assert "## Summary" in src and "## Exercises" in src
    assert "record(" in src
    # a Python string that meant "\\beta" leaves a backspace, which MathJax cannot typeset
    bad = sorted({hex(ord(c)) for c in src if ord(c) < 32 and c != "\n"})
    assert not bad, f"control characters in the source: {bad}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_results_format(chapter):
    res = quick_results(chapter)
    assert res["chapter"] == chapter and res["mode"] == "quick"
    for key in ("seed", "git_sha", "torch", "versions", "device", "threads", "wall_s", "metrics"):
        assert key in res
    assert {"python", "torch", "numpy", "scipy", "pot"} <= set(res["versions"])
    assert res["metrics"], "no metrics recorded"
    for name, m in res["metrics"].items():
        assert set(m) == {"value", "unit", "better"}, name
        assert m["better"] in ("lower", "higher"), name


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_has_its_test_file(chapter):
    assert (ROOT / "tests" / "chapters" / f"test_{chapter}.py").is_file(), \
        f"chapter {chapter} needs tests/chapters/test_{chapter}.py asserting its figures"
