"""The package's shape: layering between subpackages, module and function sizes, module maps.

Layering (src/minigen/__init__.py): the recipe's parts import no family, networks and data
import no paradigm, evaluation imports no family, and only notebooks, benchmarks and
``eval.fd`` (for its cache path) touch the workbook.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "minigen"
FAMILIES = {"diffusion", "transport", "flows", "latent", "sampling", "onestep", "control", "discrete",
            "gflownets"}

# subpackage -> the minigen subpackages (first component after ``minigen.``) it may import
ALLOWED = {
    "recipe": {"recipe", "broadcast"},
    "nets": {"nets", "broadcast"},
    "data": {"data"},
    "eval": {"eval", "recipe", "data", "nets", "broadcast", "train", "workbook"},
    "workbook": {"workbook"},
    **{f: {"recipe", "broadcast", "nets", "data", "eval", "train", *FAMILIES} for f in FAMILIES},
}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Over the guide, with the reason (each is one algorithm or one CLI that reads best whole).
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS = {
    "train.py:train": "the one training loop: seed, device, EMA, clipping, per-t bins, checkpoints",
}


def modules():
    return sorted(p for p in PKG.rglob("*.py"))


def rel(p: Path) -> str:
    return p.relative_to(PKG).as_posix()


def minigen_imports(path: Path) -> set[str]:
    """The minigen subpackages (``recipe``, ``train``, ...) a module imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{rel(path)}: relative import; import from minigen.<subpackage>")
            mod = node.module or ""
            if mod == "minigen":
                out |= {a.name for a in node.names}
            elif mod.startswith("minigen."):
                out.add(mod.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("minigen.")}
    return out


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_layering(path):
    top = rel(path).split("/")[0]
    allowed = ALLOWED.get(top)
    if allowed is None:  # train.py, broadcast.py, __init__.py at the top
        allowed = {"recipe", "broadcast"} if top == "train.py" else {"broadcast"}
    bad = minigen_imports(path) - allowed
    assert not bad, f"{rel(path)} imports minigen.{sorted(bad)}; {top} may import {sorted(allowed)}"


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_module_size(path):
    n = len(path.read_text().splitlines())
    if rel(path) in LONG_MODULES:
        return
    assert n <= MAX_MODULE_LINES, f"{rel(path)} has {n} lines (guide {MAX_MODULE_LINES}): split it"


def functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_function_size(path):
    too_long = []
    for fn in functions(path):
        n = fn.end_lineno - fn.lineno + 1
        if n > MAX_FUNCTION_LINES and f"{rel(path)}:{fn.name}" not in LONG_FUNCTIONS:
            too_long.append(f"{fn.name} ({n} lines)")
    assert not too_long, f"{rel(path)}: over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_allowlists_name_real_things_that_are_over_the_guide():
    """A stale entry (a module or function back under the guide, or gone) fails here."""
    for key in LONG_MODULES:
        assert len((PKG / key).read_text().splitlines()) > MAX_MODULE_LINES, key
    for key in LONG_FUNCTIONS:
        file, name = key.split(":")
        sizes = {f.name: f.end_lineno - f.lineno + 1 for f in functions(PKG / file)}
        assert sizes.get(name, 0) > MAX_FUNCTION_LINES, key


@pytest.mark.parametrize("init", sorted(PKG.rglob("__init__.py")), ids=rel)
def test_init_is_a_module_map(init):
    """Every __init__ has a docstring naming each module beside it, and re-exports nothing."""
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree)
    assert doc, f"{rel(init)} needs a module-map docstring"
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], \
        f"{rel(init)} imports: no re-exports, import names from the module that defines them"
    for p in init.parent.iterdir():
        if p.suffix == ".py" and p.name != "__init__.py":
            assert p.name in doc, f"{rel(init)}'s docstring does not list {p.name}"
        if p.is_dir() and (p / "__init__.py").exists():
            assert f"{p.name}/" in doc, f"{rel(init)}'s docstring does not list {p.name}/"


def test_readme_names_every_module():
    """The README's package table lists every module (by file name) and every subpackage."""
    readme = (PKG.parents[1] / "README.md").read_text()
    table = readme[readme.index("## The package"):]
    for p in modules():
        if p.name == "__init__.py":
            if p.parent != PKG:
                assert f"`{p.parent.name}/`" in table, f"README package table lacks {p.parent.name}/"
        else:
            assert f"`{p.name}`" in table, f"README package table lacks {rel(p)}"
