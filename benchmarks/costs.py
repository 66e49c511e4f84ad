"""costs: what the README's commands cost on this machine, measured from a fresh clone.

    .venv/bin/python benchmarks/costs.py            # clone HEAD to a temporary folder, time it
    .venv/bin/python benchmarks/costs.py --write    # ... and write results/costs.json

In a fresh ``git clone`` of the current commit this times, one after the other and nothing
else running, the steps ``.ci/run`` takes: ``make venv`` (the pinned install), ``make test``
(quick notebooks, unit tests, nbval, ruff), ``make book-quick``, the site and Lab browser
tests; then it measures the disk the clone grew to (``.venv``, ``build``, ``book/_build``) and
the machine (CPU model, cores, RAM). ``make book``'s own cost is the chapters' full-mode wall
times, which every ``results/full/*.json`` records; the README's costs table
(``python -m minigen.workbook.reproduce --full --record --no-run``, i.e. ``make tables``)
joins the two. The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = [("make venv", ["make", "venv"]), ("make test", ["make", "test"]),
         ("make book-quick", ["make", "book-quick"]),
         ("site test", [".venv/bin/python", "-m", "pytest", "-q", "-m", "site", "tests/site"]),
         ("lab test", [".venv/bin/python", "-m", "pytest", "-q", "-m", "lab", "tests/lab"])]


def du_mib(path: Path) -> float:
    """Disk use of ``path`` in MiB (0 if absent)."""
    if not path.exists():
        return 0.0
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return round(int(out.stdout.split()[0]) / 1024, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="write results/costs.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from minigen.workbook.record import git_sha, machine

    sha = git_sha()
    clone = Path(tempfile.mkdtemp(prefix="minigen-costs-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    steps = {}
    for name, cmd in STEPS:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=clone, capture_output=True, text=True,
                              env={**os.environ, "CI": "true"})
        steps[name] = round(time.perf_counter() - t0, 1)
        print(f"{name:<16} {steps[name]:8.1f} s  rc={proc.returncode}", flush=True)
        if proc.returncode:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
    disk = {p: du_mib(clone / p) for p in (".venv", "build", "book/_build")}
    disk["clone total"] = du_mib(clone)
    out = {"commit": sha, "machine": machine(), "wall_s": steps, "disk_mib": disk,
           "pip_find_links": os.environ.get("PIP_FIND_LINKS", "")}
    shutil.rmtree(clone, ignore_errors=True)
    if args.write:
        (ROOT / "results" / "costs.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
