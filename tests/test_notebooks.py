"""Every chapter's notebook source and results file have the contract's shape (the figures
themselves are asserted per chapter in tests/chapters/).

A chapter also needs ``tests/chapters/test_<chapter>.py``: a test here fails without it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


from chapters.helpers import quick_results  # noqa: E402


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_structure(chapter):
    src = (ROOT / "notebooks" / f"{chapter}.py").read_text()
    assert len(re.findall(r'tags=\["parameters"\]', src)) == 1, "exactly one parameters cell"
    assert "quick_from_env()" in src, "the parameters cell reads quick mode from the environment"
    cell = src[src.index('tags=["parameters"]'):]
    cell = cell[:cell.index("\n# %%")]
    assert cell.rstrip().splitlines()[-1].startswith("defaults = parameter_defaults(globals())"), \
        "the parameters cell ends by recording its defaults, so quick mode keeps passed values"
    # papermill reads a parameter's help from its comment and skips a line with a second "="
    # (it warns "Unable to parse line"): keep "=" out of the comments
    for line in cell.splitlines()[1:]:
        if not line.lstrip().startswith("#"):
            assert line.count("=") <= 1, f"papermill cannot parse this parameter line: {line!r}"
    assert "## Summary" in src and "## Exercises" in src
    assert "record(" in src
    # a Python string that meant "\\beta" leaves a backspace, which MathJax cannot typeset
    bad = sorted({hex(ord(c)) for c in src if ord(c) < 32 and c != "\n"})
    assert not bad, f"control characters in the source: {bad}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_results_format(chapter):
    res = quick_results(chapter)
    assert res["chapter"] == chapter and res["mode"] == "quick"
    for key in ("seed", "git_sha", "torch", "versions", "device", "threads", "wall_s", "metrics"):
        assert key in res
    assert {"python", "torch", "numpy", "scipy", "pot"} <= set(res["versions"])
    assert res["metrics"], "no metrics recorded"
    for name, m in res["metrics"].items():
        assert set(m) == {"value", "unit", "better"}, name
        # one spelling of decimals in keys (record.key_number): 0p5, never 0.5
        assert not re.search(r"\d\.\d", name), f"{name}: write decimals in keys as 0p5 (key_number)"
        assert m["better"] in ("lower", "higher"), name


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_has_its_test_file(chapter):
    assert (ROOT / "tests" / "chapters" / f"test_{chapter}.py").is_file(), \
        f"chapter {chapter} needs tests/chapters/test_{chapter}.py asserting its figures"


NOTEBOOK_GUIDE_LINES = 600
# Over the soft guide, each with its reason (the chapter contract: say why, or split).
LONG_CHAPTERS = {
    "14_discrete": "five papers' ideas on one set of digits: an autoregressive transformer with its "
                   "KV cache and in-flight batching, masked and uniform discrete diffusion, RVQ with "
                   "ResGen's collective tokens, marginalization models; splits when PixelCNN joins",
    "02_denoising_diffusion": "three papers on one epsilon network: DDPM's bound term by term, "
                              "DDIM and the ODE, DiffuseVAE's refiner; splits when chapter 09 "
                              "takes over the sampler comparison",
    "07_normalizing_flows": "two flow designs on three data sets, plus STARFlow's denoising, guidance, "
                            "Bayes classifier, Jacobi sampling and deep-shallow allocation; splits "
                            "when ARFlow joins",
    "03_score_sde": "three SDEs x two weightings on 2D, digits and MNIST, plus the likelihood "
                    "convergence checks the committed figures rest on",
    "04_straight_paths": "three papers (rectified flow, Rectified Diffusion, SD3's time samplers), "
                         "each with its own experiment",
    "05_unifying_frameworks": "two frameworks (stochastic interpolants, generator matching) with "
                              "exact and learned fields each",
}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_length_guide(chapter):
    n = len((ROOT / "notebooks" / f"{chapter}.py").read_text().splitlines())
    if chapter in LONG_CHAPTERS:
        assert n > NOTEBOOK_GUIDE_LINES, f"{chapter} is back under the guide: drop it from LONG_CHAPTERS"
        return
    assert n <= NOTEBOOK_GUIDE_LINES, (f"{chapter} has {n} lines (guide {NOTEBOOK_GUIDE_LINES}): split "
                                       "it, or give the reason in LONG_CHAPTERS")


def test_committed_full_results_spell_decimals_one_way():
    for path in sorted((ROOT / "results" / "full").glob("*.json")):
        import json
        bad = [k for k in json.loads(path.read_text())["metrics"] if re.search(r"\d\.\d", k)]
        assert not bad, f"{path.name}: keys with a decimal point {bad[:3]}: use key_number's 0p5"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_save_from_jupyterlab_leaves_the_source_unchanged(chapter, tmp_path):
    """JupyterLab opens and saves the .py through jupytext's contents manager: after a run (outputs,
    execution counts, cell metadata, the kernel's language_info) the saved file is byte-identical,
    and the header asks for the venv's ``minigen`` kernel."""
    import asyncio
    import shutil

    from jupytext import AsyncTextFileContentsManager

    name = f"{chapter}.py"
    shutil.copy(ROOT / "notebooks" / name, tmp_path / name)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # its [tool.jupytext]
    cm = AsyncTextFileContentsManager(root_dir=str(tmp_path))

    async def open_run_save():
        nb = (await cm.get(name, content=True, type="notebook"))["content"]
        assert nb["metadata"]["kernelspec"]["name"] == "minigen"
        nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.2",
                                           "mimetype": "text/x-python"}
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["execution_count"] = 1
                cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran"}]
                cell["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
                cell["metadata"]["scrolled"] = True
        await cm.save({"type": "notebook", "format": "json", "content": nb}, name)

    asyncio.run(open_run_save())
    assert (tmp_path / name).read_text() == (ROOT / "notebooks" / name).read_text()
