"""JupyterLab set up for the workbook: ``make lab`` (``python -m minigen.workbook.lab``).

    python -m minigen.workbook.lab [--full] [--port 8888] [--no-browser] [-- LAB ARGS...]

Three things make a chapter open and run as a newcomer expects:

- a double-click on ``notebooks/NN_topic.py`` opens it as a notebook: the jupytext viewer is
  made the default for Python files in this venv's JupyterLab (``overrides.json`` under
  ``<venv>/share/jupyter/lab/settings/``, which no other environment reads);
- the chapters' headers ask for the venv's ``minigen`` kernel, and jupytext saves them back
  unchanged (``tests/test_notebooks.py`` checks both);
- quick mode is on (``MINIGEN_QUICK=1``, CI-sized settings, seconds per chapter): ``--full``
  (``make lab QUICK=0``) starts Lab with the full defaults instead, or set ``quick = False``
  in a chapter's parameters cell. Either way a chapter run in Lab writes its results to
  ``build/results/``, never over the committed ``results/full/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Python files open as notebooks; Lab does not ask to fetch news or check for updates (offline).
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}},
    "@jupyterlab/apputils-extension:notification": {"checkForUpdates": False, "fetchNews": "false"},
}


def lab_overrides(prefix: Path | None = None) -> Path:
    """Write ``LAB_SETTINGS`` into ``<prefix>/share/jupyter/lab/settings/overrides.json`` (merged
    with what is there) and return the file's path."""
    path = Path(prefix or sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.is_file() else {}
    for plugin, values in LAB_SETTINGS.items():
        for key, value in values.items():
            old = current.setdefault(plugin, {}).get(key)
            current[plugin][key] = {**old, **value} if isinstance(old, dict) else value
    path.write_text(json.dumps(current, indent=2) + "\n")
    return path


def lab_command(root: Path, port: int, browser: bool, extra: list[str]) -> list[str]:
    """The ``jupyter lab`` command line: this venv's, on 127.0.0.1, rooted at the repository,
    with the read-only extension manager (the default one queries PyPI); root allowed where
    the workbook runs as root (containers)."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--ServerApp.allow_root=True")
    return cmd + ([] if browser else ["--no-browser"]) + extra


def main(argv: list[str] | None = None) -> int:
    """Set the default viewer and the quick flag, then replace this process with JupyterLab."""
    from minigen.workbook.record import QUICK_ENV, repo_root

    ap = argparse.ArgumentParser(prog="python -m minigen.workbook.lab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full-mode defaults (default: quick)")
    ap.add_argument("--port", type=int, default=8888)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("extra", nargs="*", help="passed to jupyter lab (after --)")
    args = ap.parse_args(argv)
    root = repo_root()
    print(f"minigen lab: {lab_overrides()} makes the jupytext notebook the default viewer")
    os.environ[QUICK_ENV] = "0" if args.full else "1"
    print(f"minigen lab: {'full' if args.full else 'quick'} mode ({QUICK_ENV}="
          f"{os.environ[QUICK_ENV]}); results go to {root / 'build' / 'results'}")
    cmd = lab_command(root, args.port, not args.no_browser, args.extra)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
