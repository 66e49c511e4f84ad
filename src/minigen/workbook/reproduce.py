"""Execute the chapter notebooks once each and collect their results (book/design.md).

    python -m minigen.workbook.reproduce [CHAPTERS...] [--quick | --full | --gpu]
                                [--jobs N] [--check] [--no-run] [--out build/executed]

For each chapter ``notebooks/NN_topic.py`` (jupytext py:percent) this converts
the source to a notebook, executes it **once** with papermill on the venv's
named kernel (``quick`` injected as a parameter, ``MINIGEN_QUICK`` set, the
CPU cores shared between the notebooks that run at once: ``threads_per_notebook``)
and writes ``<out>/NN_topic.ipynb`` with its outputs; the book renders these
without executing again. ``--gpu`` runs the full settings with ``gpu=True``
where a notebook declares it and no thread cap.

It then writes the results tables: ``results/RESULTS.md`` from ``results/full/``
(and, for a CPU ``--full`` run, the headline table between the README's
``<!-- results:start -->`` / ``<!-- results:end -->`` markers), or
``results/quick/RESULTS.md`` for ``--quick``. ``--check`` asserts the full-mode
targets in each chapter's ``notebooks/<chapter>.toml``; a failing notebook or a missed target exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import operator
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# minigen.workbook.record imports torch: it is imported lazily (parent only) so that the
# spawned workers, which only drive papermill, start fast.

KERNEL_NAME = "minigen"
KERNEL_DISPLAY_NAME = "Python (minigen)"
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass
class ChapterSpec:
    """A chapter's own data, ``notebooks/<chapter>.toml``: its full-mode targets (metric ->
    (operator, threshold); a missing metric is a miss) and the README's headline metrics."""

    targets: dict[str, tuple[str, float]]
    headline: list[str]


def chapter_spec(chapter: str, root: Path | None = None) -> ChapterSpec:
    """Read ``notebooks/<chapter>.toml`` (no file: no targets, every metric a headline).

    Raises ValueError naming the file for an unknown operator or a malformed entry."""
    import tomllib

    from minigen.workbook.record import repo_root

    path = notebooks_dir(root or repo_root()) / f"{chapter}.toml"
    if not path.is_file():
        return ChapterSpec({}, [])
    data = tomllib.loads(path.read_text())
    targets = {}
    for name, entry in data.get("targets", {}).items():
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in _OPS
                and isinstance(entry[1], (int, float))):
            raise ValueError(f"{path}: target {name!r} must be [operator, number] with an operator "
                             f"in {sorted(_OPS)}, got {entry!r}")
        targets[name] = (entry[0], float(entry[1]))
    return ChapterSpec(targets, list(data.get("headline", [])))


@dataclass
class RunResult:
    """Outcome of executing one notebook."""

    stem: str
    wall_s: float
    error: str | None = None
    attempts: int = 1


# A cell that runs longer than this is treated as a stall: once, a CI kernel finished its cell
# but papermill never received the reply and waited forever. Quick cells take seconds; full
# cells (a U-Net's training) up to ~15 minutes on one CPU core.
CELL_TIMEOUT_S = {"quick": 600, "full": 3 * 3600, "gpu": 3 * 3600}
RETRIES_AFTER_STALL = 1


# --------------------------------------------------------------------------- selection

def notebooks_dir(root: Path) -> Path:
    """The directory holding the chapter sources."""
    return root / "notebooks"


def all_chapters(root: Path) -> list[Path]:
    """Every chapter source, ``notebooks/[0-9][0-9]_*.py``, in order."""
    return sorted(notebooks_dir(root).glob("[0-9][0-9]_*.py"))


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--jobs 0`` would run nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def select_chapters(root: Path, wanted: list[str]) -> list[Path]:
    """Chapter sources named by number (``01``, or ``1``) or stem (``01_flow_matching``); none = all.

    Raises SystemExit naming the choices when a name matches nothing.
    """
    chapters = all_chapters(root)
    if not wanted:
        return chapters
    picked: list[Path] = []
    for name in wanted:
        name = Path(name).stem
        if name.isdigit() and len(name) < 2:
            name = name.zfill(2)  # "1" is chapter 01
        hits = [p for p in chapters if p.stem == name or p.stem.split("_", 1)[0] == name]
        if not hits:
            choices = ", ".join(p.stem for p in chapters) or "(none)"
            raise SystemExit(f"reproduce: no chapter {name!r}; choices: {choices}")
        picked += [p for p in hits if p not in picked]
    return picked


# --------------------------------------------------------------------------- execution

def ensure_kernel() -> str:
    """Register the ``minigen`` kernel for this interpreter if it is missing; return its name.

    ``make`` registers it (``python -m ipykernel install --sys-prefix --name minigen``);
    this is the fallback for a venv set up by hand.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME, prefix=sys.prefix)
    return KERNEL_NAME


def threads_per_notebook(jobs: int, n_notebooks: int, cores: int | None = None) -> int:
    """CPU threads for each kernel: the cores shared by the notebooks that run at once.

    One chapter alone gets every core (a U-Net step at batch 64 on 14x14 takes 114 ms on
    2 threads vs 180 ms on 1 here); ``jobs`` chapters in parallel get one share each.
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, min(jobs, n_notebooks)))


def run_env(mode: str, threads: int = 1) -> dict[str, str]:
    """Environment for the kernels: quick flag, no progress bars, ``threads`` BLAS/torch threads."""
    from minigen.workbook.record import QUICK_ENV

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    env = {QUICK_ENV: "1" if mode == "quick" else "0", "TQDM_DISABLE": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    if mode != "gpu":
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def to_notebook(source: Path, kernel: str):
    """Read a jupytext py:percent file as a notebook bound to ``kernel``."""
    import jupytext

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": KERNEL_DISPLAY_NAME,
                                 "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def parameters_for(nb_path: Path, mode: str) -> dict:
    """Papermill parameters: ``quick``, plus ``gpu=True`` where the notebook declares ``gpu``."""
    params: dict = {"quick": mode == "quick"}
    if mode == "gpu":
        import papermill

        if "gpu" in papermill.inspect_notebook(str(nb_path)):
            params["gpu"] = True
    return params


def execute_one(source: str, out_dir: str, mode: str, kernel: str,
                cell_timeout: float | None = None) -> RunResult:
    """Convert and execute one chapter; never raises (errors come back in the result).

    A cell that exceeds ``cell_timeout`` seconds (default ``CELL_TIMEOUT_S[mode]``) or a kernel
    that dies is a stall: the notebook is run again from the start, once. A failing cell is not
    retried."""
    import nbformat
    import papermill

    src, out = Path(source), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged = out / f".{src.stem}.input.ipynb"
    target = out / f"{src.stem}.ipynb"
    timeout = cell_timeout or CELL_TIMEOUT_S[mode]
    t0 = time.perf_counter()
    try:
        nbformat.write(to_notebook(src, kernel), staged)
        attempt = 0
        while True:
            attempt += 1
            try:
                papermill.execute_notebook(
                    str(staged), str(target), parameters=parameters_for(staged, mode),
                    kernel_name=kernel, cwd=str(src.parent), progress_bar=False,
                    log_output=False, request_save_on_cell_execute=False,
                    execution_timeout=timeout)
                return RunResult(src.stem, time.perf_counter() - t0, attempts=attempt)
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                if is_stall(exc) and attempt <= RETRIES_AFTER_STALL:
                    print(f"  {src.stem}: {describe_error(exc)}; running it again", flush=True)
                    continue
                error = f"{describe_error(exc)}\n(outputs so far: {target})"
                return RunResult(src.stem, time.perf_counter() - t0, error=error, attempts=attempt)
    except Exception as exc:  # noqa: BLE001 - conversion failed
        return RunResult(src.stem, time.perf_counter() - t0, error=describe_error(exc))
    finally:
        staged.unlink(missing_ok=True)


def is_stall(exc: Exception) -> bool:
    """A timed-out cell or a dead kernel (worth one more run), not an error raised by a cell."""
    return isinstance(exc, TimeoutError) or type(exc).__name__ in {"DeadKernelError",
                                                                   "CellTimeoutError"}


def describe_error(exc: Exception) -> str:
    """One readable block for a papermill (or other) failure."""
    name = type(exc).__name__
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        cell = getattr(exc, "cell_index", None)
        where = f" (cell {cell})" if cell is not None else ""
        return f"{name}{where}: {ename}: {evalue}"
    return f"{name}: {exc}"


def run_all(chapters: list[Path], out_dir: Path, mode: str, jobs: int) -> list[RunResult]:
    """Execute the chapters on ``jobs`` worker processes; print each wall time, in order."""
    kernel = ensure_kernel()
    threads = threads_per_notebook(jobs, len(chapters))
    os.environ.update(run_env(mode, threads))  # inherited by the workers and their kernels
    ctx = multiprocessing.get_context("spawn")
    results: list[RunResult] = []
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx) as pool:
        futures = [pool.submit(execute_one, str(p), str(out_dir), mode, kernel)
                   for p in chapters]
        for fut in futures:
            res = fut.result()
            status = "ok" if res.error is None else "FAILED"
            if res.attempts > 1:
                status += f" (run {res.attempts} times: a cell stalled)"
            print(f"  {res.stem:<32} {res.wall_s:7.1f} s  {status}", flush=True)
            if res.error:
                print(indent(res.error), flush=True)
            results.append(res)
    return results


def indent(text: str, prefix: str = "      ") -> str:
    """Indent every line of ``text``."""
    return "\n".join(prefix + line for line in text.splitlines())


def write_timings(out_dir: Path, mode: str, results: list[RunResult], total_s: float) -> Path:
    """``<out>/timings.json``: per-notebook and total wall time of this run (read by .ci/run)."""
    path = out_dir / "timings.json"
    path.write_text(json.dumps({
        "mode": mode, "total_wall_s": round(total_s, 1),
        "notebooks": {r.stem: {"wall_s": round(r.wall_s, 1), "ok": r.error is None}
                      for r in results}}, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- results

def load_results(mode: str) -> list[dict]:
    """Every ``results/<mode>/*.json``, sorted by chapter."""
    from minigen.workbook.record import results_dir

    return [json.loads(p.read_text()) for p in sorted(results_dir(mode).glob("*.json"))]


def results_table(records: list[dict]) -> str:
    """Markdown table ``chapter | metric | value | unit | better``."""
    from minigen.workbook.record import format_value

    lines = ["| chapter | metric | value | unit | better |", "|---|---|---:|---|---|"]
    for rec in records:
        for name, m in rec.get("metrics", {}).items():
            lines.append(f"| {rec['chapter']} | `{name}` | {format_value(m['value'])} "
                         f"| {m.get('unit', '')} | {m.get('better', '')} |")
    if len(lines) == 2:
        lines.append("| – | – | – | – | – |")
    return "\n".join(lines)


def headline_names(chapter: str, metrics: dict) -> list[str]:
    """The metrics the README shows for a chapter (its spec's ``headline``, else its targets,
    else all of them)."""
    spec = chapter_spec(chapter)
    names = spec.headline or list(spec.targets) or list(metrics)
    return [n for n in names if n in metrics]


def headline_table(records: list[dict]) -> str:
    """Markdown table of the headline figures, with each one's full-mode target if any."""
    from minigen.workbook.record import format_value

    lines = ["| chapter | metric | value | unit | better | target |",
             "|---|---|---:|---|---|---|"]
    for rec in records:
        chapter, metrics = rec["chapter"], rec.get("metrics", {})
        for name in headline_names(chapter, metrics):
            m = metrics[name]
            target = chapter_spec(chapter).targets.get(name)
            target_text = f"{target[0]} {target[1]:g}" if target else ""
            lines.append(f"| {chapter} | `{name}` | {format_value(m['value'])} "
                         f"| {m.get('unit', '')} | {m.get('better', '')} | {target_text} |")
    if len(lines) == 2:
        lines.append("| – | – | – | – | – | – |")
    return "\n".join(lines)


def provenance(records: list[dict]) -> str:
    """One line saying where the numbers come from (devices, torch, threads, commit)."""
    def uniq(key):
        return ", ".join(sorted({str(r.get(key, "?")) for r in records})) or "?"
    return (f"device: {uniq('device')}; torch {uniq('torch')}; threads: {uniq('threads')}; "
            f"commit: {uniq('git_sha')}")


def write_results_md(root: Path, mode: str) -> Path:
    """Write the results table: ``results/RESULTS.md`` for full mode, else ``results/<mode>/``."""
    from minigen.workbook.record import results_dir

    records = load_results(mode)
    path = (root / "results" / "RESULTS.md") if mode == "full" else \
        results_dir(mode) / "RESULTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Results ({mode} mode)\n\n"
        "Generated by `python -m minigen.workbook.reproduce"
        f" --{mode}` from `results/{mode}/*.json`; do not edit by hand.\n\n"
        f"{provenance(records)}\n\n{results_table(records)}\n")
    return path


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between the README's results markers; False if the markers are absent."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    new = pattern.sub(lambda _: f"{README_START}\n{table}\n{README_END}", text, count=1)
    if new != text:
        readme.write_text(new)
    return True


# --------------------------------------------------------------------------- targets

def check_targets(mode: str, chapters: list[str]) -> list[str]:
    """Misses of the chapters' targets (``chapter_spec``) in ``results/<mode>/`` (missing = miss)."""
    from minigen.workbook.record import results_dir

    misses = []
    for chapter in chapters:
        targets = chapter_spec(chapter).targets
        path = results_dir(mode) / f"{chapter}.json"
        metrics = json.loads(path.read_text())["metrics"] if path.is_file() else {}
        for name, (op, threshold) in targets.items():
            if name not in metrics:
                misses.append(f"{chapter}: {name} missing (target {op} {threshold:g})")
                continue
            value = metrics[name]["value"]
            if not _OPS[op](value, threshold):
                misses.append(f"{chapter}: {name} = {value:.4g}, target {op} {threshold:g}")
    return misses


# --------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(prog="python -m minigen.workbook.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chapters", nargs="*", help="numbers (01) or stems; default: all")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="CI-sized settings (quick=True)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="full defaults (the default)")
    mode.add_argument("--gpu", dest="mode", action="store_const", const="gpu",
                      help="full settings; gpu=True where a notebook declares it")
    ap.add_argument("--jobs", "-j", type=_positive_int, default=2, help="notebooks run in parallel (>= 1)")
    ap.add_argument("--check", action="store_true", help="assert the full-mode targets")
    ap.add_argument("--no-run", action="store_true",
                    help="do not execute; only rewrite the tables (and --check)")
    ap.add_argument("--out", default="build/executed", help="executed notebooks go here")
    args = ap.parse_args(argv)
    args.mode = args.mode or "full"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected chapters, write the results tables, check targets; return exit code."""
    from minigen.workbook.record import repo_root

    args = parse_args(argv)
    root = repo_root()
    chapters = select_chapters(root, args.chapters)
    if not chapters:
        print("reproduce: no chapters found under notebooks/", file=sys.stderr)
        return 1
    out_dir = Path(args.out) if Path(args.out).is_absolute() else root / args.out
    failed: list[RunResult] = []
    if not args.no_run:
        print(f"reproduce: {len(chapters)} notebook(s), mode={args.mode}, jobs={args.jobs}, "
              f"out={out_dir}", flush=True)
        t0 = time.perf_counter()
        results = run_all(chapters, out_dir, args.mode, args.jobs)
        total = time.perf_counter() - t0
        write_timings(out_dir, args.mode, results, total)
        print(f"reproduce: total wall time {total:.1f} s", flush=True)
        failed = [r for r in results if r.error]
    # Notebooks record mode="quick" if quick else "full": a --gpu run lands in results/full/
    # (each record says its device), but only a CPU --full run rewrites the README table.
    results_mode = "quick" if args.mode == "quick" else "full"
    md = write_results_md(root, results_mode)  # under $MINIGEN_RESULTS_DIR when that is set
    print(f"reproduce: wrote {md.relative_to(root) if md.is_relative_to(root) else md}")
    if args.mode == "full":
        table = headline_table(load_results("full"))
        if update_readme(root / "README.md", table):
            print("reproduce: updated the results table in README.md")
        else:
            print(f"reproduce: README.md has no {README_START} ... {README_END} markers; "
                  "left it alone")
    code = 0
    if failed:
        print("reproduce: FAILED notebooks:\n" + "\n".join(
            f"  {r.stem}: {r.error.splitlines()[0] if r.error else ''}" for r in failed),
            file=sys.stderr)
        code = 1
    if args.check:
        code |= report_check(results_mode, [p.stem for p in chapters])
    return code


def report_check(mode: str, chapters: list[str]) -> int:
    """Print target misses for ``--check``; return 1 if there are any."""
    if mode == "quick":
        print("reproduce: --check asserts the full-mode targets; use --full or --gpu",
              file=sys.stderr)
        return 1
    misses = check_targets(mode, chapters)
    if misses:
        print("reproduce: targets missed:\n" + "\n".join(f"  {m}" for m in misses),
              file=sys.stderr)
        return 1
    n = sum(len(chapter_spec(c).targets) for c in chapters)
    print(f"reproduce: all {n} target(s) met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
