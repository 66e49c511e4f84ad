"""What a chapter's run depends on, as one key: its notebook source, every package module it
imports (followed through the package's own imports), the pinned environment and the mode.

``record`` writes the key into each results JSON (``inputs``) and ``reproduce`` stamps each
executed copy with it (``<out>/.<chapter>.inputs``): a full-mode run reuses the chapters whose
copy and results were made from the tree's inputs as they are (``--force`` reruns them), and
``reproduce --stale`` lists the chapters whose committed ``results/full/`` came from other
inputs than the tree's, so a stale number is seen, not hidden. Imports are read from the
source (``ast``), not executed: a module imported inside a function counts too, and nothing
is imported to compute a key.

A package module enters the key by its code, not its text: the hash of its syntax tree with
docstrings removed (``code_fingerprint``), so a comment or a docstring (a subpackage's module
map gaining a line) marks no chapter stale. A notebook enters by its full text: its prose is
part of the executed copy. The lock enters by its pins above the ``# --- test-only ---`` line
(``runtime_pins``): the cross-check libraries below it are imported by tests only, so adding
one re-keys no chapter. This module is not an input itself: it computes the key, no figure (a
change to what it computes changes the keys anyway).
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

ENVIRONMENT_FILES = ("constraints.txt",)  # the lock: every dependency pinned
TEST_ONLY_LINE = "# --- test-only ---"  # in the lock: the pins below it are the tests' alone
NOT_INPUTS = ("minigen/workbook/inputs.py",)  # the key's own code


def runtime_pins(lock: str) -> list[str]:
    """The pin lines of a lock file above ``TEST_ONLY_LINE``, sorted, comments and blanks left out."""
    head = lock.split(TEST_ONLY_LINE, 1)[0]
    return sorted(ln.strip() for ln in head.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))


def test_only_pins(lock: str) -> list[str]:
    """The pin lines below ``TEST_ONLY_LINE`` (none if the lock has no such line)."""
    parts = lock.split(TEST_ONLY_LINE, 1)
    tail = parts[1] if len(parts) == 2 else ""
    return sorted(ln.strip() for ln in tail.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))


def minigen_imports(source: str) -> set[str]:
    """The ``minigen...`` names a Python source imports (``from minigen.a import b`` gives both
    ``minigen.a`` and ``minigen.a.b``; the caller keeps those that are modules)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "minigen"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "minigen":
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def module_file(name: str, src: Path) -> Path | None:
    """The file of module ``name`` under ``src`` (``src/minigen/...``), None if it is not one."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def package_files(source: str, src: Path) -> set[Path]:
    """Every package file ``source`` depends on: its imports, theirs, and the ``__init__.py`` of
    each package on the way (importing ``minigen.a.b`` runs ``minigen/a/__init__.py``)."""
    seen: set[Path] = set()
    todo = [source]
    while todo:
        for name in minigen_imports(todo.pop()):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                path = module_file(".".join(parts[:i]), src)
                if path is not None and path not in seen \
                        and not path.as_posix().endswith(NOT_INPUTS):
                    seen.add(path)
                    todo.append(path.read_text())
    return seen


def code_fingerprint(source: str) -> str:
    """sha256 of ``ast.dump`` of ``source`` without its docstrings (module, class and function):
    equal for two sources that differ only in comments, docstrings and layout."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def file_hash(path: Path, src: Path) -> str:
    """``code_fingerprint`` for a package module under ``src``, sha256 of ``runtime_pins`` for the
    lock, sha256 of the bytes otherwise."""
    if path.suffix == ".py" and path.is_relative_to(src):
        return code_fingerprint(path.read_text())
    if path.name in ENVIRONMENT_FILES:
        return hashlib.sha256("\n".join(runtime_pins(path.read_text())).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chapter_inputs(chapter: str, root: Path, mode: str = "full") -> dict[str, str]:
    """``{file relative to root: hash}`` (``file_hash``) of everything the chapter's run depends on, plus the
    mode (quick / full / gpu)."""
    notebook = root / "notebooks" / f"{chapter}.py"
    files = {notebook, *package_files(notebook.read_text(), root / "src"),
             *(root / f for f in ENVIRONMENT_FILES if (root / f).is_file())}
    out = {p.relative_to(root).as_posix(): file_hash(p, root / "src") for p in sorted(files)}
    out["mode"] = mode
    return out


def inputs_key(chapter: str, root: Path, mode: str = "full") -> str:
    """A short hash of ``chapter_inputs``: equal keys, equal inputs."""
    blob = json.dumps(chapter_inputs(chapter, root, mode), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stale_chapters(root: Path, results: Path, chapters: list[str]) -> list[tuple[str, str]]:
    """``(chapter, why)`` for each chapter whose ``results/<chapter>.json`` is missing, has no
    recorded key, or was made from other inputs than the tree's now."""
    stale = []
    for chapter in chapters:
        path = results / f"{chapter}.json"
        if not path.is_file():
            stale.append((chapter, "no results"))
            continue
        rec = json.loads(path.read_text())
        recorded = rec.get("inputs", {}).get("key")
        if recorded is None:
            stale.append((chapter, f"no inputs key recorded (commit {rec.get('git_sha', '?')})"))
        elif recorded != inputs_key(chapter, root, rec.get("mode", "full")):
            stale.append((chapter, f"inputs changed since commit {rec.get('git_sha', '?')}"))
    return stale


def inputs_stamp(out_dir: Path, stem: str) -> Path:
    """``<out>/.<stem>.inputs``: the mode and inputs key the executed copy was made from."""
    return out_dir / f".{stem}.inputs"


def stamp(root: Path, out_dir: Path, mode: str, stems: list[str]) -> None:
    """Write the inputs stamp of each executed copy in ``stems`` (the ones that ran without
    error): ``<mode>:<key>``, so a quick copy is never taken for a full one."""
    for stem in stems:
        key = inputs_key(stem, root, "quick" if mode == "quick" else "full")
        inputs_stamp(out_dir, stem).write_text(f"{mode}:{key}\n")


def reusable(root: Path, chapters: list[Path], out_dir: Path, results: Path, mode: str,
             also: Path | None = None) -> dict[Path, Path]:
    """``{chapter: its results file}`` for the chapters whose executed copy (its stamp) and results
    file (its recorded key) were both made in ``mode`` from the tree's inputs as they are now:
    nothing to rerun. The results file is looked for in ``results``, then in ``also`` (a plain
    full run, which writes build/results/full/, also takes the committed results/full/ that
    ``make book`` wrote beside the same executed copy)."""
    keep = {}
    for p in chapters:
        key = inputs_key(p.stem, root, "full")
        st = inputs_stamp(out_dir, p.stem)
        if not ((out_dir / f"{p.stem}.ipynb").is_file() and st.is_file()
                and st.read_text().strip() == f"{mode}:{key}"):
            continue
        for folder in (results, also):
            res = folder / f"{p.stem}.json" if folder is not None else None
            if res is not None and res.is_file() \
                    and json.loads(res.read_text()).get("inputs", {}).get("key") == key:
                keep[p] = res
                break
    return keep


def take_reusable(root: Path, chapters: list[Path], out_dir: Path, results: Path, mode: str,
                  also: Path | None) -> dict[Path, Path]:
    """``reusable``'s chapters; a record found in ``also`` (the committed results/full/ that a
    plain run also reads) is copied into ``results``, where the run's tables look for it."""
    reused = reusable(root, chapters, out_dir, results, mode, also=also)
    for res in reused.values():
        if res.parent != results:
            results.mkdir(parents=True, exist_ok=True)
            (results / res.name).write_bytes(res.read_bytes())
    return reused
