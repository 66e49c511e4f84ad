"""Execute the chapter notebooks once each and collect their results (DESIGN.md).

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
targets in ``TARGETS``; a failing notebook or a missed target exits non-zero.
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

# Full-mode targets: chapter -> metric -> (op, threshold). A missing metric is a miss.
TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "01_flow_matching": {
        "w2sq_euler1_otcfm_8gaussians-moons": ("<=", 0.15),
        "w2sq_adaptive_icfm_8gaussians-moons": ("<=", 0.15),
        "w2sq_adaptive_otcfm_8gaussians-moons": ("<=", 0.15),
        "ratio_w2sq_euler1_icfm_over_otcfm_8gaussians-moons": (">=", 20.0),
    },
    "02_denoising_diffusion": {
        "confidence_best": (">=", 0.8),
        "class_share_min_best": (">=", 0.05),
        "class_share_max_best": ("<=", 0.15),
        "bpd_ratio_bound_over_pixels": ("<", 1.0),
        "fd_ratio_refiner_over_vae": ("<", 1.0),
    },
    "03_score_sde": {  # the issue's image targets, and Song et al.'s sub-VP likelihood direction
        "mnist_top_class_prob_best": (">=", 0.8),
        "mnist_class_min_best": (">=", 0.05),
        "mnist_class_max_best": ("<=", 0.15),
        # the ODE's codelength through noise and a decoder (uniform dequantisation: reported, and
        # above the per-pixel model)
        "bpd_ratio_mnist_decoded_over_pixels": ("<", 1.0),
        "nll_2d_diff_subvp_minus_vp": ("<", 0.0),
    },
    "04_straight_paths": {  # after one reflow one Euler step works; the identity closes (MC error)
        "w2sq_euler1_2RF": ("<=", 0.3),
        "w2sq_euler1_1RF": (">=", 2.0),
        "gauss_identity_gap_over_se": ("<=", 3.0),
        "identity_gap_over_se_1RF": ("<=", 3.0),
        "identity_gap_over_se_2RF": ("<=", 3.0),  # issue 4's target; missed (learned-field error)
        "gauss_kinetic_mismatch_over_se": ("<=", 3.0),
        "gauss_cross_over_se": ("<=", 3.0),
        "identity_any_field_closure_2RF": ("<=", 1e-4),
        "mid_weighted_beats_uniform_euler8": (">=", 1),
        "mid_weighted_beats_uniform_euler8_dit": (">=", 1),
    },
    "05_unifying_frameworks": {  # every eps of the SDE family within the ODE's seed range (issue 4)
        "n_eps_within_ode_range_8gaussians-moons": (">=", 5),
        "n_eps_within_ode_range_normal-checkerboard": (">=", 5),
        "max_gap_w2sq_sde_vs_ode_8gaussians-moons": ("<=", 0.045),
        "exact_fields_mean_err_se_eps2": ("<", 5.0),
        "exact_fields_cov_err_se_eps2": ("<", 5.0),
        "gm_mean_err_se_mix_superposition_w0p5": ("<", 5.0),
    },
    "06_poisson_flows": {  # PFGM++'s robustness ordering: state noise hurts smaller D less
        "kernel_moment_rel_err_max": ("<", 0.02),
        "ratio_w2sq_increase_D4_over_Dinf_alpha0.4": ("<", 1.0),
        "ratio_fd_D4_over_Dinf_alpha0.5": ("<", 1.0),
    },
}

# The README shows these headline figures per chapter (results/RESULTS.md shows all);
# a chapter not listed here shows its TARGETS metrics, or all its metrics if it has none.
HEADLINE: dict[str, list[str]] = {
    "00_unified_picture": [f"conversion_rel_err_{p}" for p in
                           ("linear", "vp_cosine", "vp_linear", "ve")],
    "01_flow_matching": [
        "w2sq_euler1_icfm_8gaussians-moons", "w2sq_euler1_otcfm_8gaussians-moons",
        "ratio_w2sq_euler1_icfm_over_otcfm_8gaussians-moons",
        "w2sq_adaptive_icfm_8gaussians-moons", "w2sq_adaptive_otcfm_8gaussians-moons",
        "nfe_adaptive_icfm_8gaussians-moons", "nfe_adaptive_otcfm_8gaussians-moons",
        "w2sq_euler1_otcfm_sinkhorn_8gaussians-moons", "w2sq_euler1_wcfm_8gaussians-moons",
        "w2sq_euler1_sbcfm_8gaussians-moons",
        "ms_per_step_icfm_8gaussians-moons", "ms_per_step_otcfm_8gaussians-moons",
        "ms_per_step_otcfm_sinkhorn_8gaussians-moons",
        "nll_checkerboard_icfm", "nll_checkerboard_otcfm", "nll_checkerboard_true_entropy"],
    "02_denoising_diffusion": [
        "nll_simple_moons", "nll_vlb_moons", "w2sq_simple_moons", "w2sq_vlb_moons",
        "w2sq_ancestral_T1000_moons", "w2sq_DDIM_eta0_50_moons", "w2sq_ODE_Heun_50_NFE_moons",
        "fd_ratio_best", "precision_best", "recall_best", "confidence_best",
        "class_share_min_best", "class_share_max_best", "fd_ratio_VAE_alone",
        "fd_ratio_VAE_refiner", "bpd_L_simple_beta", "bpd_L_simple_fitted", "bpd_bound-tuned_fitted",
        "bpd_bound-tuned_fitted_levels", "bpd_ddpm_bound",
        "bpd_best_bound_decoder_L0", "bpd_best_bound_steps_2_12", "bpd_independent_pixels"],
    "03_score_sde": [
        "w2sq_em_vp", "w2sq_pc_vp", "w2sq_ode_vp", "w2sq_em_vs_ode_vp", "w2sq_pc_ve", "w2sq_ode_ve",
        "w2sq_floor_2d", "nll_2d_vp", "nll_2d_subvp", "nll_2d_diff_subvp_minus_vp",
        "nll_2d_diff_subvp_lik_minus_subvp", "nll_2d_true_entropy",
        "bpd_digits_vp", "bpd_digits_subvp", "bpd_digits_independent_pixels",
        "mnist_fd_ratio_best", "mnist_top_class_prob_best", "mnist_class_min_best",
        "mnist_class_max_best", "bpd_mnist", "bpd_mnist_decoded", "bpd_mnist_independent_pixels",
        "bpd_mnist_conv_warp1_steps12", "bpd_mnist_conv_warp3_steps24"],
    "04_straight_paths": [
        "w2sq_euler1_1RF", "w2sq_euler1_2RF", "w2sq_euler1_3RF", "w2sq_euler1_3RF_distilled",
        "w2sq_adaptive_1RF", "w2sq_adaptive_2RF", "straightness_1RF", "straightness_2RF",
        "cost_x_1RF", "cost_z_1RF", "cost_z_2RF", "cost_z_3RF", "identity_gap_over_se_1RF",
        "identity_gap_over_se_2RF", "rd_ddim1_teacher", "rd_ddim1_a_vp_eps", "rd_ddim1_a_vp_x1",
        "kinetic_mismatch_2RF", "cross_2RF",
        "rd_ddim1_b_linear", "fd_euler8_uniform", "fd_euler8_logit_normal", "fd_euler8_mode",
        "fd_euler8_uniform_dit", "fd_euler8_logit_normal_dit", "fd_euler8_mode_dit",
        "fd_floor_digits"],
    "05_unifying_frameworks": [
        *(f"w2sq_eps{e}_mean_{m}" for m in ("8gaussians-moons", "normal-checkerboard")
          for e in ("0", "0p5", "2")),
        "w2sq_eps2_1000steps_mean_8gaussians-moons", "w2sq_eps2_1000steps_mean_normal-checkerboard",
        "w2sq_eps2_eta5000_mean_8gaussians-moons", "w2sq_eps2_eta5000_mean_normal-checkerboard",
        "w2sq_floor_8gaussians-moons",
        "n_eps_within_ode_range_8gaussians-moons", "n_eps_within_ode_range_normal-checkerboard",
        "robust_increase_w2sq_eps0", "robust_increase_w2sq_eps0p5", "robust_increase_w2sq_eps2",
        "gm_w1_mix_flow", "gm_w1_mix_jump", "gm_w1_mix_jump_posterior",
        "gm_w1_mix_superposition_w0p5", "gm_w1_floor_mix", "exact_fields_cov_err_se_eps2"],
    "06_poisson_flows": [
        "w2sq_floor_2d", *(f"w2sq_2d_{d}_alpha0" for d in ("D2", "D4", "D16", "Dinf")),
        *(f"w2sq_increase_2d_{d}_alpha0.4" for d in ("D2", "D4", "D16", "Dinf")),
        "w2sq_2d_D4_nfe10", "w2sq_2d_Dinf_nfe10", "fd_floor_digits",
        *(f"fd_digits_{d}_alpha{a}" for a in ("0", "0.5") for d in ("D4", "D16", "Dinf")),
        "ratio_w2sq_increase_D4_over_Dinf_alpha0.4", "ratio_fd_D4_over_Dinf_alpha0.5",
        *(f"fd_increase_digits_{d}_alpha0.5_seed{k}" for d in ("D4", "Dinf") for k in (0, 1)),
        "fd_digits_D4_alpha0_seed_range"],
}

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


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


def select_chapters(root: Path, wanted: list[str]) -> list[Path]:
    """Chapter sources named by number (``01``) or stem (``01_flow_matching``); none = all.

    Raises SystemExit naming the choices when a name matches nothing.
    """
    chapters = all_chapters(root)
    if not wanted:
        return chapters
    picked: list[Path] = []
    for name in wanted:
        name = Path(name).stem
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


def format_value(v: float) -> str:
    """A metric value with four significant digits."""
    return f"{v:.4g}"


def results_table(records: list[dict]) -> str:
    """Markdown table ``chapter | metric | value | unit | better``."""
    lines = ["| chapter | metric | value | unit | better |", "|---|---|---:|---|---|"]
    for rec in records:
        for name, m in rec.get("metrics", {}).items():
            lines.append(f"| {rec['chapter']} | `{name}` | {format_value(m['value'])} "
                         f"| {m.get('unit', '')} | {m.get('better', '')} |")
    if len(lines) == 2:
        lines.append("| – | – | – | – | – |")
    return "\n".join(lines)


def headline_names(chapter: str, metrics: dict) -> list[str]:
    """The metrics the README shows for a chapter (see ``HEADLINE``)."""
    names = HEADLINE.get(chapter) or list(TARGETS.get(chapter, {})) or list(metrics)
    return [n for n in names if n in metrics]


def headline_table(records: list[dict]) -> str:
    """Markdown table of the headline figures, with each one's full-mode target if any."""
    lines = ["| chapter | metric | value | unit | better | target |",
             "|---|---|---:|---|---|---|"]
    for rec in records:
        chapter, metrics = rec["chapter"], rec.get("metrics", {})
        for name in headline_names(chapter, metrics):
            m = metrics[name]
            target = TARGETS.get(chapter, {}).get(name)
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
    """Misses of ``TARGETS`` for the given chapters in ``results/<mode>/`` (missing = miss)."""
    from minigen.workbook.record import results_dir

    misses = []
    for chapter in chapters:
        targets = TARGETS.get(chapter, {})
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
    ap.add_argument("--jobs", "-j", type=int, default=2, help="notebooks run in parallel")
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
    n = sum(len(TARGETS.get(c, {})) for c in chapters)
    print(f"reproduce: all {n} target(s) met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
