"""The quality-against-cost frontier of chapters 09 and 10 (and chapters 01 and 04's few-step
figures): one table per data set of every method's quality at each NFE, with the sampling time
per sample where the chapter measured it.

    .venv/bin/python benchmarks/frontier.py --no-run           # collect the committed results/full/
    .venv/bin/python benchmarks/frontier.py --mode quick       # rerun 09 and 10 in quick mode first
    .venv/bin/python benchmarks/frontier.py --mode full        # rerun them at full defaults (~25 min)

A run executes the chapters with ``minigen.workbook.reproduce`` (into build/, never touching the
committed results) and reads what they recorded; ``--no-run`` reads ``results/full/`` as
committed. Its last line is one JSON object: {data set: {method: [[nfe, value, ms or null], ...]}}.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = {"01": "01_flow_matching", "04": "04_straight_paths", "09": "09_fast_sampling",
            "10": "10_one_step"}
MOONS8, MOONS_N, MNIST = "8gaussians->moons (W2²)", "N(0,I)->moons (W2²)", "MNIST 14x14 (FD)"


def points(chapter: str, m: dict) -> list[tuple[str, str, float, float, float | None]]:
    """(data set, method, nfe, value, ms per sample or None) for one chapter's metrics."""
    out = []

    def val(name):
        return m[name]["value"] if name in m else None
    for name, rec in m.items():
        v = rec["value"]
        if chapter == "01" and (g := re.fullmatch(r"w2sq_euler(\d+)_icfm_8gaussians-moons", name)):
            out.append((MOONS8, "01 I-CFM euler", float(g[1]), v, None))
        elif chapter == "04" and (g := re.fullmatch(r"w2sq_euler(\d+)_(\w+RF\w*)", name)):
            out.append((MOONS8, f"04 {g[2]} euler", float(g[1]), v, None))
        elif chapter == "09":
            if g := re.fullmatch(r"w2sq_(fm|vp)_(.+)_nfe(\d+)", name):
                out.append((MOONS8 if g[1] == "fm" else MOONS_N, f"09 {g[1]} {g[2]}", float(g[3]), v, None))
            elif g := re.fullmatch(r"w2sq_euler_(boss|uniform)_nfe(\d+)", name):
                out.append((MOONS8, f"09 fm euler {g[1]} steps", float(g[2]), v, None))
            elif g := re.fullmatch(r"fd_(fm|vp)_(.+)_nfe(\d+)", name):
                out.append((MNIST, f"09 {g[1]} {g[2]}", float(g[3]), v, val(f"ms_{g[1]}_{g[2]}_nfe{g[3]}")))
            elif g := re.fullmatch(r"fd_euler_boss_nfe(\d+)", name):
                out.append((MNIST, "09 fm euler boss steps", float(g[1]), v, None))
            elif g := re.fullmatch(r"fd_flowturbo_(\w+)", name):
                out.append((MNIST, f"09 flowturbo {g[1]}", val(f"nfe_equiv_flowturbo_{g[1]}"), v,
                            val(f"ms_flowturbo_{g[1]}")))
            elif g := re.fullmatch(r"fd_blockwise_nfe(\d+)", name):
                nfe = float(g[1]) * val("flops_ratio_block_over_teacher")
                out.append((MNIST, "09 blockwise (NFE in teacher FLOPs)", nfe, v,
                            val(f"ms_blockwise_nfe{g[1]}")))
        elif chapter == "10":
            if g := re.fullmatch(r"w2sq_(.+)_nfe(\d+)", name):
                out.append((MOONS8, f"10 {g[1]}", float(g[2]), v, val(f"sample_ms_{g[1]}_nfe{g[2]}")))
            elif (g := re.fullmatch(r"fd_(.+)_nfe(\d+)", name)) and g[1] != "teacher":
                out.append((MNIST, f"10 {g[1]}", float(g[2]), v, val(f"sample_ms_{g[1]}_nfe{g[2]}")))
    return out


def collect(results: Path, chapters: list[str]) -> dict:
    frontier: dict = {}
    for ch in chapters:
        path = results / f"{CHAPTERS[ch]}.json"
        if not path.is_file():
            print(f"frontier: no {path.relative_to(ROOT)}; chapter {ch} left out")
            continue
        for data, method, nfe, v, ms in points(ch, json.loads(path.read_text())["metrics"]):
            frontier.setdefault(data, {}).setdefault(method, []).append([nfe, v, ms])
    for methods in frontier.values():
        for pts in methods.values():
            pts.sort()
    return frontier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("quick", "full"), default="full")
    ap.add_argument("--no-run", action="store_true", help="read the committed results/full/ instead")
    args = ap.parse_args()
    if args.no_run:
        results = ROOT / "results" / "full"
    else:
        subprocess.run([sys.executable, "-m", "minigen.workbook.reproduce", "09", "10", f"--{args.mode}",
                        "--out", str(ROOT / "build" / "frontier")], check=True, cwd=ROOT)
        results = ROOT / "build" / "results" / args.mode
    chapters = list(CHAPTERS) if args.no_run or args.mode == "full" else ["09", "10"]
    frontier = collect(results, chapters)
    for data, methods in frontier.items():
        print(f"\n{data}")
        for nfe in sorted({p[0] for pts in methods.values() for p in pts if p[0] <= 16}):
            best = min(((p[1], m) for m, pts in methods.items() for p in pts if p[0] == nfe), default=None)
            if best:
                print(f"  NFE {nfe:>5.2f}: best {best[1]} ({best[0]:.4g})")
    print(json.dumps(frontier))


if __name__ == "__main__":
    main()
