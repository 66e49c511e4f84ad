"""Recording a chapter's figures of merit (book/design.md, "Results JSON").

A notebook calls ``record(...)`` once at its end; the file lands in
``build/results/<mode>/<chapter>.json`` — or, for a run asked to record
(``reproduce --full --record``, ``make book``), the committed ``results/<mode>/`` —
with the format

    {chapter, mode, seed, git_sha, torch, versions, device, threads, machine, inputs, wall_s,
     metrics: {name: {value, unit, better: "lower" | "higher"}}}

so that the tests, ``python -m minigen.workbook.reproduce`` and the README table read
one format. ``versions`` holds the versions that move figures (python, torch, numpy, scipy,
POT); the whole environment is pinned in ``constraints.txt``. ``git_sha`` ends in ``-dirty``
when the sources had uncommitted changes.
"""

from __future__ import annotations

import copy
import html
import json
import math
import os
import subprocess
from pathlib import Path

import torch

QUICK_ENV = "MINIGEN_QUICK"
RESULTS_ENV = "MINIGEN_RESULTS_DIR"
RECORD_ENV = "MINIGEN_RECORD"


def env_flag(name: str, default: bool = False) -> bool:
    """An on/off environment variable: 1, true, yes or on (any case) is on; unset is ``default``."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def quick_from_env(default: bool = False) -> bool:
    """Quick mode as set by the environment (``MINIGEN_QUICK=1``).

    nbval and myst-nb cannot inject papermill parameters, so every notebook's
    ``parameters`` cell reads this as its default.
    """
    return env_flag(QUICK_ENV, default)


_PLAIN = (bool, int, float, str, type(None), list, tuple, dict)


def parameter_defaults(namespace: dict) -> dict:
    """A copy of a notebook's parameters, taken as the last line of its ``parameters`` cell —
    before papermill's injected cell, which follows it — so ``apply_quick`` can tell the
    values a run passed (``-p steps 500``) from the cell's defaults. Plain values only."""
    return {k: copy.deepcopy(v) for k, v in namespace.items()
            if not k.startswith("_") and isinstance(v, _PLAIN)}


def apply_quick(namespace: dict, defaults: dict, **quick_values) -> list[str]:
    """Quick mode's settings, written into the notebook's ``namespace`` (its ``globals()``),
    except for a parameter the run passed itself: one whose value differs from the parameters
    cell's default is kept, and named. (A value passed equal to the full-mode default cannot be
    told from it, and gets the quick value.) Returns the names kept."""
    unknown = sorted(set(quick_values) - set(defaults))
    if unknown:
        raise KeyError(f"apply_quick: {unknown} are not parameters of this notebook")
    kept = [k for k in quick_values if namespace.get(k) != defaults[k]]
    for name, value in quick_values.items():
        if name not in kept:
            namespace[name] = value
    if kept:
        print("quick mode keeps the values passed for: " + ", ".join(kept))
    return kept


def repo_root(start: Path | None = None) -> Path:
    """The nearest directory above ``start`` holding minigen's pyproject.toml."""
    here = (start or Path.cwd()).resolve()
    for d in [here, *here.parents]:
        p = d / "pyproject.toml"
        if p.is_file() and 'name = "minigen"' in p.read_text():
            return d
    return here


def recording() -> bool:
    """True when this run was asked to write the committed results (``MINIGEN_RECORD=1``, set by
    ``reproduce --record`` and ``make book``)."""
    return env_flag(RECORD_ENV)


def results_dir(mode: str, committed: bool | None = None) -> Path:
    """Where the results of ``mode`` are written (``record``) and read.

    ``$MINIGEN_RESULTS_DIR/<mode>`` when that is set (tests, side runs); else the committed
    ``<repo>/results/<mode>`` when ``committed`` (default: ``recording()``); else
    ``<repo>/build/results/<mode>``. So a chapter run in JupyterLab or by a plain ``reproduce``
    never overwrites a committed result: only ``--record`` does."""
    base = os.environ.get(RESULTS_ENV)
    if base:
        return Path(base) / mode
    committed = recording() if committed is None else committed
    return repo_root() / ("results" if committed else "build/results") / mode


# What moves the figures: a tree with changes here records its commit as "<sha>-dirty".
SOURCE_PATHS = ("src", "notebooks", "pyproject.toml", "constraints.txt")


def dirty_paths(root: Path | None = None) -> list[str]:
    """Changed or untracked files under ``SOURCE_PATHS`` (git status), [] outside a repository."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", *SOURCE_PATHS],
                             cwd=root or repo_root(), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 \
        else []


def git_sha() -> str:
    """The short commit of the repository, with ``-dirty`` if ``dirty_paths()`` is not empty."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(),
                             capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if sha != "unknown" and dirty_paths() else sha


VERSIONED = ("torch", "numpy", "scipy", "pot")


def versions() -> dict[str, str]:
    """The installed versions of the packages whose numerics the figures depend on."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict:
    """The machine class a run's wall times belong to: CPU model, logical cores, RAM in GiB."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                    if ln.startswith("model name")), cpu)
        mem_kib = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                       if ln.startswith("MemTotal"))
        ram = round(mem_kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        ram = None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram}


def inputs(chapter: str, mode: str) -> dict:
    """``{"key": ...}``: the hash of what this chapter's run depends on (``workbook.inputs``);
    None for a name with no ``notebooks/<chapter>.py`` (tests, scratch records)."""
    from minigen.workbook.inputs import inputs_key

    root = repo_root()
    found = (root / "notebooks" / f"{chapter}.py").is_file()
    return {"key": inputs_key(chapter, root, mode) if found else None}


def key_number(v: float) -> str:
    """A number as it appears in a metric key: ``%g`` with "p" for the decimal point (0.5 ->
    "0p5", 2.0 -> "2"), the one spelling of decimals in every chapter's keys."""
    return f"{v:g}".replace(".", "p")


def metric(value: float, unit: str = "", better: str = "lower") -> dict:
    """One figure of merit: ``{value, unit, better}``."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"metric value must be finite, got {value}")
    return {"value": value, "unit": unit, "better": better}


def record(chapter: str, metrics: dict, *, mode: str, seed: int, wall_s: float,
           device: str | torch.device = "cpu") -> Path:
    """Write ``results/<mode>/<chapter>.json`` atomically and return its path.

    ``metrics`` maps a name to ``metric(value, unit, better)`` (or a plain dict of
    the same keys).
    """
    if mode not in ("quick", "full", "gpu"):
        raise ValueError(f"mode must be quick, full or gpu, got {mode!r}")
    clean = {k: metric(**v) if isinstance(v, dict) else metric(v) for k, v in metrics.items()}
    out = {
        "chapter": chapter, "mode": mode, "seed": int(seed), "git_sha": git_sha(),
        "torch": torch.__version__, "versions": versions(), "device": str(device),
        "threads": torch.get_num_threads(), "machine": machine(), "inputs": inputs(chapter, mode),
        "wall_s": round(float(wall_s), 2), "metrics": clean,
    }
    path = results_dir(mode) / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def load(chapter: str, mode: str) -> dict:
    """Read a recorded results file (raises FileNotFoundError with the path)."""
    path = results_dir(mode) / f"{chapter}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}: run python -m minigen.workbook.reproduce "
                                f"{chapter.split('_')[0]} --{mode}")
    return json.loads(path.read_text())


def format_value(v: float) -> str:
    """A metric value with four significant digits (notebook tables, RESULTS.md, the README)."""
    return f"{v:.4g}"


class ResultsTable:
    """A metrics dict shown as an HTML table (class ``minigen-results``) in a notebook."""

    def __init__(self, metrics: dict):
        self.metrics = {k: metric(**v) if isinstance(v, dict) else metric(v)
                        for k, v in metrics.items()}

    def _repr_html_(self) -> str:
        """The table folded in a ``<details>`` (it runs to 100+ rows): a click shows it."""
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{format_value(m['value'])}</td>"
            f"<td>{html.escape(m['unit'])}</td><td>{m['better']}</td></tr>"
            for k, m in self.metrics.items())
        return (f'<details class="minigen-results"><summary>All {len(self.metrics)} figures of '
                'merit (click to show)</summary><table class="minigen-results"><thead><tr>'
                "<th>metric</th><th>value</th><th>unit</th><th>better</th></tr></thead>"
                f"<tbody>{rows}</tbody></table></details>")

    def __repr__(self) -> str:
        w = max((len(k) for k in self.metrics), default=6)
        return "\n".join(f"{k:<{w}}  {format_value(m['value']):>10}  {m['unit']}"
                         for k, m in self.metrics.items())
