"""book/_ext/pages.py (what a chapter page shows) and viz.offline_player (no CDN in outputs)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pages():
    spec = importlib.util.spec_from_file_location("pages", ROOT / "book" / "_ext" / "pages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def notebook(quick: bool) -> dict:
    code = lambda src, tags=(): {"cell_type": "code", "source": src, "outputs": [],
                                 "metadata": {"tags": list(tags)}, "execution_count": 1}
    return {"metadata": {"papermill": {"parameters": {"quick": quick}}}, "cells": [
        {"cell_type": "markdown", "source": "# 01 · Title", "metadata": {}},
        code("quick = False\n", ["parameters"]),
        code("quick = True\n", ["injected-parameters"]),
        code("# NBVAL_IGNORE_OUTPUT\nprint(timing)\n"),
        code(["show_source(", "CFM)\n"]),
        code("".join(f"x{i} = {i}\n" for i in range(40))),
        code("y = 1\n"),
    ]}


def test_markers_go_the_injected_cell_is_removed_and_listings_fold():
    nb = pages().readable_notebook(notebook(quick=False))
    cells = nb["cells"]
    assert len(cells) == 7 and cells[0]["source"] == "# 01 · Title"  # no banner in full mode
    tags = [c["metadata"].get("tags", []) for c in cells]
    assert "remove-cell" in tags[2] and "remove-cell" not in tags[1]
    assert cells[3]["source"] == "print(timing)\n"
    assert "hide-output" in tags[4] and "hide-input" in tags[5] and tags[6] == []
    assert not any("NBVAL" in c["source"] for c in cells if isinstance(c["source"], str))


def test_a_quick_mode_run_gets_a_banner_under_its_title():
    nb = pages().readable_notebook(notebook(quick=True))
    title, banner = nb["cells"][0]["source"].split("\n", 1)
    assert title == "# 01 · Title" and len(nb["cells"]) == 7
    assert "quick-mode" in banner and "{warning}" in banner


def test_the_animation_player_loads_nothing_from_the_network():
    import torch

    from minigen.workbook.viz import animation_html

    traj = torch.randn(5, 20, 2)
    html = animation_html(traj, torch.linspace(0, 1, 5), frames=3)
    assert not re.search(r"https?://|//cdn|font-awesome", html), "a network reference is left"
    assert 'class="fa' not in html and html.count("<button") >= 9  # buttons, with text symbols
    import html as html_lib

    labels = [html_lib.unescape(b).strip() for b in re.findall(r"<button[^>]*>(.*?)</button>", html, re.S)]
    assert len(labels) >= 9 and all(labels), f"a player button has no label: {labels}"
    # U+2300-23FF (the media symbols) is missing from common fonts: the button would be a box.
    assert not [c for label in labels for c in label if 0x2300 <= ord(c) < 0x2400], labels


def test_figure_titles_are_readable_on_the_page():
    """viz's style (set on import): on the widest figures the notebooks make (13 inches, shown
    at most 688 px wide in a 1280 px window) a title is at least 10 px, ticks at least 8.5 px."""
    import matplotlib.pyplot as plt
    from matplotlib.font_manager import FontProperties

    import minigen.workbook.viz  # noqa: F401

    px_per_inch = 688 / 13.0
    size = lambda key: FontProperties(size=plt.rcParams[key]).get_size_in_points() / 72 * px_per_inch
    assert size("axes.titlesize") >= 10
    assert min(size("xtick.labelsize"), size("ytick.labelsize"), size("legend.fontsize")) >= 8.5
