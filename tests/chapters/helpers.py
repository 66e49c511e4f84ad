"""Shared helpers for the chapter tests: the quick-mode results each notebook recorded.

``make test`` executes every notebook once in quick mode (``python -m
minigen.workbook.reproduce --quick``), which writes ``build/results/quick/<chapter>.json``; the tests
in this folder read those files (one file per chapter). Run alone, a missing file is produced
by executing that chapter first (outside CI); under CI a missing file fails.

Assert what the chapter claims — an ordering, a ratio, a bound with a stated margin — never a
figure that depends on float summation order or on a trained network's exact weights: machines
of this kind differ in CPU, and ``ATEN_CPU_CAPABILITY=default`` simulates another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def quick_results(chapter: str) -> dict:
    """``build/results/quick/<chapter>.json`` (or under ``$MINIGEN_RESULTS_DIR``, e.g. a run made with
    another CPU kernel set: ``ATEN_CPU_CAPABILITY=default``)."""
    from minigen.workbook.record import results_dir

    path = results_dir("quick") / f"{chapter}.json"
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: the quick notebook run did not record it")
        subprocess.run([sys.executable, "-m", "minigen.workbook.reproduce", chapter[:2], "--quick"],
                       cwd=ROOT, check=True)
    return json.loads(path.read_text())


def value(res: dict, name: str) -> float:
    assert name in res["metrics"], f"{res['chapter']} did not record {name}"
    return res["metrics"][name]["value"]
