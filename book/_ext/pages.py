"""Readable chapter pages: the executed notebooks as a reader should see them.

The book renders ``build/executed/*.ipynb`` as they are; nbval re-runs those same files and
needs their test markers, so this extension edits each notebook only in Sphinx's copy of it
(``source-read``), through ``readable_notebook`` (a pure function the tests call):

- test markers (``# NBVAL_IGNORE_OUTPUT`` ...) are removed from code cells;
- papermill's injected-parameters cell is removed from the page (``remove-cell``);
- long listings are collapsed behind a toggle: package source shown with ``show_source``
  (``hide-output``) and code cells over ``LONG_CELL_LINES`` lines (``hide-input``: their
  output stays visible);
- a notebook executed in quick mode gets a banner under its title saying so, since the prose
  quotes the full-mode figures.
"""

from __future__ import annotations

import json
import re

MARKER = re.compile(r"^\s*#\s*NBVAL_[A-Z_]+.*\n?", re.M)
LONG_CELL_LINES = 25
QUICK_BANNER = (":::{warning}\nThis page was built from a **quick-mode** run (CI-sized settings): "
                "its figures and tables are not the full-mode numbers the text quotes. "
                "`make book` builds the full-mode pages; `results/RESULTS.md` lists the "
                "committed full-mode figures.\n:::")


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tag(cell, tag: str) -> None:
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def ran_in_quick_mode(nb: dict) -> bool:
    """papermill's record of the run's parameters says ``quick=True``."""
    return bool(nb.get("metadata", {}).get("papermill", {}).get("parameters", {}).get("quick"))


def readable_notebook(nb: dict) -> dict:
    """The notebook as the page shows it (module docstring); ``nb`` is edited and returned."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags:
            _tag(cell, "remove-cell")
            continue
        src = MARKER.sub("", _source(cell))
        cell["source"] = src
        if "show_source(" in src:
            _tag(cell, "hide-output")  # the listing is the output
        elif len(src.splitlines()) > LONG_CELL_LINES:
            _tag(cell, "hide-input")
    if ran_in_quick_mode(nb):
        first = next((c for c in nb.get("cells", []) if c.get("cell_type") == "markdown"), None)
        if first is not None:  # right under the title line, the first thing a reader sees
            title, _, rest = _source(first).partition("\n")
            first["source"] = f"{title}\n\n{QUICK_BANNER}\n\n{rest}"
    return nb


def on_source_read(app, docname: str, source: list[str]) -> None:
    """Sphinx hook: rewrite the text of a notebook document (``.ipynb`` JSON) in place."""
    if not docname.startswith("notebooks/"):
        return
    try:
        nb = json.loads(source[0])
    except ValueError:
        return
    source[0] = json.dumps(readable_notebook(nb))


def setup(app):
    app.connect("source-read", on_source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
