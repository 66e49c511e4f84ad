"""minigen.workbook.inputs: a chapter's inputs key follows exactly the package files it imports,
and ``stale_chapters`` names exactly the chapters a change touches."""

from __future__ import annotations

import json
from pathlib import Path

from minigen.workbook import inputs

ROOT = Path(__file__).resolve().parents[1]


def make_tree(root: Path) -> None:
    """src/minigen with a -> c, b (no imports); chapter 01 imports a, chapter 02 imports b."""
    pkg = root / "src" / "minigen"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""pkg"""\n')
    (pkg / "sub" / "__init__.py").write_text('"""sub"""\n')
    (pkg / "sub" / "a.py").write_text("from minigen.sub.c import f\n\ndef g():\n    return f()\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    return 1\n")
    (pkg / "b.py").write_text("import math\n")
    (root / "notebooks").mkdir()
    (root / "notebooks" / "01_a.py").write_text("# %%\nfrom minigen.sub import a\n")
    (root / "notebooks" / "02_b.py").write_text("# %%\nimport minigen.b as b\n")
    (root / "constraints.txt").write_text("torch==2.13.0\n")


def record_keys(root: Path) -> Path:
    res = root / "results" / "full"
    res.mkdir(parents=True)
    for ch in ("01_a", "02_b"):
        (res / f"{ch}.json").write_text(json.dumps(
            {"chapter": ch, "mode": "full", "git_sha": "abc",
             "inputs": {"key": inputs.inputs_key(ch, root)}}))
    return res


def test_the_files_a_chapter_depends_on_are_followed_through_imports(tmp_path):
    make_tree(tmp_path)
    files = set(inputs.chapter_inputs("01_a", tmp_path))
    assert files == {"notebooks/01_a.py", "src/minigen/__init__.py", "src/minigen/sub/__init__.py",
                     "src/minigen/sub/a.py", "src/minigen/sub/c.py", "constraints.txt", "mode"}
    assert "src/minigen/sub/a.py" not in inputs.chapter_inputs("02_b", tmp_path)


def test_a_changed_module_marks_exactly_the_chapters_that_import_it(tmp_path):
    make_tree(tmp_path)
    res = record_keys(tmp_path)
    chapters = ["01_a", "02_b"]
    assert inputs.stale_chapters(tmp_path, res, chapters) == []
    (tmp_path / "src" / "minigen" / "sub" / "c.py").write_text("def f():\n    return 2\n")
    assert [c for c, _ in inputs.stale_chapters(tmp_path, res, chapters)] == ["01_a"]  # via a
    (tmp_path / "src" / "minigen" / "b.py").write_text("import math  # a comment\n")
    assert [c for c, _ in inputs.stale_chapters(tmp_path, res, chapters)] == ["01_a"]  # no code
    (tmp_path / "src" / "minigen" / "b.py").write_text("import math\nimport os\n")
    assert [c for c, _ in inputs.stale_chapters(tmp_path, res, chapters)] == chapters
    record_keys_again = {ch: inputs.inputs_key(ch, tmp_path) for ch in chapters}
    (tmp_path / "constraints.txt").write_text("torch==2.14.0\n")  # the environment: all of them
    assert all(inputs.inputs_key(ch, tmp_path) != k for ch, k in record_keys_again.items())


def test_a_results_file_without_a_key_or_missing_is_stale(tmp_path):
    make_tree(tmp_path)
    res = tmp_path / "results" / "full"
    res.mkdir(parents=True)
    (res / "01_a.json").write_text(json.dumps({"chapter": "01_a", "git_sha": "old"}))
    assert inputs.stale_chapters(tmp_path, res, ["01_a", "02_b"]) == [
        ("01_a", "no inputs key recorded (commit old)"), ("02_b", "no results")]


def test_the_key_s_own_code_is_not_an_input_but_the_recorder_is():
    files = inputs.chapter_inputs("00_unified_picture", ROOT)
    assert "src/minigen/workbook/record.py" in files
    assert "src/minigen/workbook/inputs.py" not in files


def test_the_modes_have_different_keys():
    assert inputs.inputs_key("00_unified_picture", ROOT, "quick") != \
        inputs.inputs_key("00_unified_picture", ROOT, "full")


def test_docstrings_and_comments_of_a_module_mark_nothing_stale_but_code_does(tmp_path):
    make_tree(tmp_path)
    res = record_keys(tmp_path)
    pkg = tmp_path / "src" / "minigen"
    (pkg / "__init__.py").write_text('"""pkg, with a longer module map"""\n# a comment\n')
    (pkg / "sub" / "c.py").write_text('def f():\n    """One, as documented."""\n    return 1\n')
    assert inputs.stale_chapters(tmp_path, res, ["01_a", "02_b"]) == []
    (pkg / "sub" / "c.py").write_text('def f():\n    """One, as documented."""\n    return "1"\n')
    assert [c for c, _ in inputs.stale_chapters(tmp_path, res, ["01_a", "02_b"])] == ["01_a"]
    # a notebook enters by its full text: its prose is part of the executed copy
    nb = tmp_path / "notebooks" / "02_b.py"
    nb.write_text(nb.read_text() + "# %% [markdown]\n# prose\n")
    assert [c for c, _ in inputs.stale_chapters(tmp_path, res, ["01_a", "02_b"])] == ["01_a", "02_b"]
    assert inputs.code_fingerprint("x = 1  # one\n") == inputs.code_fingerprint("x = 1\n")
    documented, bare = 'def f():\n    """doc"""\n', "def f():\n    pass\n"
    assert inputs.code_fingerprint(documented) == inputs.code_fingerprint(bare)


def test_the_lock_enters_by_its_runtime_pins_only(tmp_path):
    make_tree(tmp_path)
    res = record_keys(tmp_path)
    chapters = ["01_a", "02_b"]
    lock = tmp_path / "constraints.txt"
    lock.write_text("# a comment\ntorch==2.13.0\n\n# --- test-only ---\ndiffusers==0.42.1\n")
    assert inputs.stale_chapters(tmp_path, res, chapters) == []  # comments, test-only pins
    lock.write_text(lock.read_text() + "vector-quantize-pytorch==1.32.0\n")
    assert inputs.stale_chapters(tmp_path, res, chapters) == []
    lock.write_text("numpy==2.3.0\ntorch==2.13.0\n# --- test-only ---\ndiffusers==0.42.1\n")
    assert [c for c, _ in inputs.stale_chapters(tmp_path, res, chapters)] == chapters
    assert inputs.test_only_pins(lock.read_text()) == ["diffusers==0.42.1"]


def _top_level_imports(source: str) -> set[str]:
    import ast
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_notebook_or_package_module_imports_a_test_only_library():
    """The promise behind leaving the test-only pins out of the key: a chapter's run cannot
    import them. Import names come from the installed distributions' metadata."""
    from importlib.metadata import packages_distributions
    test_only = {p.split("==")[0].lower().replace("_", "-")
                 for p in inputs.test_only_pins((ROOT / "constraints.txt").read_text())}
    assert {"diffusers", "vector-quantize-pytorch"} <= test_only
    by_dist: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for d in dists:
            by_dist.setdefault(d.lower().replace("_", "-"), set()).add(module)
    forbidden = set().union(*(by_dist.get(d, set()) for d in test_only))
    assert {"diffusers", "vector_quantize_pytorch"} <= forbidden
    sources = [*(ROOT / "src" / "minigen").rglob("*.py"), *(ROOT / "notebooks").glob("*.py")]
    used = {p.relative_to(ROOT).as_posix(): _top_level_imports(p.read_text()) & forbidden
            for p in sources}
    assert {p: u for p, u in used.items() if u} == {}
