"""Execute the chapter notebooks once each and collect their results (book/design.md).

    python -m minigen.workbook.reproduce [CHAPTERS...] [--quick | --full | --gpu] [--record]
                                [--jobs N] [--check] [--no-run] [--out build/executed]

For each chapter ``notebooks/NN_topic.py`` (jupytext py:percent) this converts
the source to a notebook, executes it **once** with papermill on the venv's
named kernel (``quick`` injected as a parameter, ``MINIGEN_QUICK`` set, the
CPU cores shared between the notebooks that run at once: ``threads_per_notebook``)
and writes ``<out>/NN_topic.ipynb`` with its outputs; the book renders these
without executing again. ``--gpu`` runs the full settings with ``gpu=True``
where a notebook declares it and no thread cap.

Results land in ``build/results/<mode>/`` with their ``RESULTS.md``: a plain run never
touches the committed figures. ``--record`` (``make book``) writes the committed
``results/full/``, ``results/RESULTS.md`` and the README's tables instead, and says which
committed results it replaced; it refuses a tree whose sources have uncommitted changes
(``--allow-dirty`` records them with the commit marked ``-dirty``). ``--check`` judges the
chapters' targets (``notebooks/<chapter>.toml``, see ``minigen.workbook.targets``) and prints
them as a table; a failing notebook or an undocumented miss exits non-zero.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from minigen.workbook.schedule import Progress, last_wall_times, longest_first
from minigen.workbook.workers import exit_with_parent

# minigen.workbook.record imports torch: it is imported lazily (parent only) so that the
# spawned workers, which only drive papermill, start fast.

KERNEL_NAME = "minigen"
KERNEL_DISPLAY_NAME = "Python (minigen)"


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


def run_env(mode: str, threads: int = 1, record: bool = False) -> dict[str, str]:
    """Environment for the kernels: quick flag, where results go (``record``: the committed
    ``results/``), no progress bars, ``threads`` BLAS/torch threads."""
    from minigen.workbook.record import QUICK_ENV, RECORD_ENV

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    env = {QUICK_ENV: "1" if mode == "quick" else "0", RECORD_ENV: "1" if record else "0",
           "TQDM_DISABLE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    if mode != "gpu":
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def ipc_kernel_manager():
    """A kernel manager whose kernels talk over local IPC sockets in a folder of their own (two
    kernels must never share one), not over unencrypted TCP, which the kernel warns about on
    every start."""
    import tempfile

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _own_socket_folder(self):
            return os.path.join(tempfile.mkdtemp(prefix="minigen-kernel-"), "ipc")

    return IPCKernelManager


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
                    execution_timeout=timeout, kernel_manager_class=ipc_kernel_manager())
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


def run_all(chapters: list[Path], out_dir: Path, mode: str, jobs: int, record: bool = False,
            estimates: dict[str, float] | None = None, status_every: float = 60.0) -> list[RunResult]:
    """Execute the chapters on ``jobs`` worker processes; print each one's wall time as it
    finishes and, every ``status_every`` seconds, which are running and the time left."""
    kernel = ensure_kernel()
    threads = threads_per_notebook(jobs, len(chapters))
    os.environ.update(run_env(mode, threads, record))  # inherited by the workers and their kernels
    ctx = multiprocessing.get_context("spawn")
    results: list[RunResult] = []
    progress = Progress([p.stem for p in chapters], jobs, estimates or {})
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx, initializer=exit_with_parent) as pool:
        waiting = {pool.submit(execute_one, str(p), str(out_dir), mode, kernel) for p in chapters}
        while waiting:
            finished, waiting = wait(waiting, timeout=status_every, return_when=FIRST_COMPLETED)
            if not finished:
                print(f"  {progress.line()}", flush=True)
            for fut in finished:
                res = fut.result()
                progress.finished(res.stem)
                status = "ok" if res.error is None else "FAILED"
                if res.attempts > 1:
                    status += f" (run {res.attempts} times: a cell stalled)"
                print(f"  {res.stem:<32} {res.wall_s:7.1f} s  {status}  "
                      f"[{time.perf_counter() - progress.t0:.0f} s elapsed]", flush=True)
                if res.error:
                    print(indent(res.error), flush=True)
                results.append(res)
    order = [p.stem for p in chapters]
    return sorted(results, key=lambda r: order.index(r.stem))


def indent(text: str, prefix: str = "      ") -> str:
    """Indent every line of ``text``."""
    return "\n".join(prefix + line for line in text.splitlines())


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
    ap.add_argument("--record", action="store_true",
                    help="write the committed results/full/, results/RESULTS.md and the README "
                         "tables (default: build/results/ only)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="with --record: record from a tree with uncommitted source changes")
    ap.add_argument("--jobs", "-j", type=_positive_int, default=2, help="notebooks run in parallel (>= 1)")
    ap.add_argument("--check", action="store_true",
                    help="judge the targets; exit 1 on an undocumented miss")
    ap.add_argument("--no-run", action="store_true",
                    help="do not execute: --check the committed results (with --record: rewrite "
                         "their tables)")
    ap.add_argument("--force", action="store_true",
                    help="full / gpu mode: rerun chapters whose inputs are unchanged too")
    ap.add_argument("--stale", action="store_true",
                    help="list the chapters whose committed results/full/ came from other inputs "
                         "than the tree's (no execution)")
    ap.add_argument("--out", default="build/executed", help="executed notebooks go here")
    args = ap.parse_args(argv)
    args.mode = args.mode or "full"
    if args.record and args.mode == "quick":
        ap.error("--record writes the committed full-mode results; quick results stay in build/")
    return args


def refuse_dirty(root: Path, args: argparse.Namespace) -> str | None:
    """Why a ``--record`` run must not start (uncommitted source changes), or None."""
    from minigen.workbook.record import dirty_paths

    if not args.record or args.no_run or args.allow_dirty:
        return None
    dirty = dirty_paths(root)
    if not dirty:
        return None
    listed = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
    return (f"reproduce: --record refused: uncommitted changes in {listed}. The committed results "
            "must come from a commit: commit first, run without --record (results go to "
            "build/results/), or pass --allow-dirty (recorded as <commit>-dirty)")


def main(argv: list[str] | None = None) -> int:
    """Run the selected chapters, write the results tables, check targets; return exit code."""
    from minigen.workbook import inputs, tables
    from minigen.workbook.record import repo_root, results_dir

    args = parse_args(argv)
    root = repo_root()
    chapters = select_chapters(root, args.chapters)
    if not chapters:
        print("reproduce: no chapters found under notebooks/", file=sys.stderr)
        return 1
    if args.stale:
        return tables.report_stale(root, [p.stem for p in chapters])
    if why := refuse_dirty(root, args):
        print(why, file=sys.stderr)
        return 2
    # Notebooks record mode="quick" if quick else "full": a --gpu run lands in full/ (each
    # record names its device). The committed results are read for --record and --no-run.
    results_mode = "quick" if args.mode == "quick" else "full"
    results = results_dir(results_mode, committed=args.record or args.no_run)
    out_dir = Path(args.out) if Path(args.out).is_absolute() else root / args.out
    before = tables.snapshot(results)
    failed: list[RunResult] = []
    committed = results_dir(results_mode, committed=True)
    also = None if results == committed else committed  # a plain run: the committed records too
    reused = {} if args.force or args.mode == "quick" or args.no_run else \
        inputs.take_reusable(root, chapters, out_dir, results, args.mode, also)
    if reused:
        print(f"reproduce: inputs unchanged, reusing {', '.join(p.stem for p in reused)} "
              "(--force reruns them)", flush=True)
    to_run, estimate = longest_first([p for p in chapters if p not in reused], results, args.jobs, also)
    last = last_wall_times(to_run, results, also)
    if not args.no_run and to_run:
        print(f"reproduce: {len(to_run)} notebook(s), mode={args.mode}, jobs={args.jobs}, "
              f"out={out_dir}, results={results}; about {estimate:.0f} s by the last recorded "
              "wall times, longest first", flush=True)
        t0 = time.perf_counter()
        runs = run_all(to_run, out_dir, args.mode, args.jobs, args.record, last)
        total = time.perf_counter() - t0
        tables.write_timings(out_dir, args.mode, [(r.stem, r.wall_s, r.error is None) for r in runs],
                             total)
        inputs.stamp(root, out_dir, args.mode, [r.stem for r in runs if r.error is None])
        print(f"reproduce: total wall time {total:.1f} s", flush=True)
        failed = [r for r in runs if r.error]
    if args.record or not args.no_run:
        tables.write_tables(root, results, results_mode, args.record, args.mode)
    if args.record and (replaced := tables.describe_replacements(before, results)):
        print("reproduce: replaced committed results:\n" + "\n".join(replaced))
    code = 0
    if failed:
        print("reproduce: FAILED notebooks:\n" + "\n".join(
            f"  {r.stem}: {r.error.splitlines()[0] if r.error else ''}" for r in failed),
            file=sys.stderr)
        code = 1
    if args.check:
        code |= tables.report_check(results_mode, results, [p.stem for p in chapters])
    return code


if __name__ == "__main__":
    sys.exit(main())
