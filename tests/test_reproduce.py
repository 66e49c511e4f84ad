"""minigen.workbook.reproduce: selection, tables, README markers, targets; the runner on tiny notebooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minigen.workbook import reproduce


def write_result(base, mode, chapter, metrics):
    path = base / mode / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "chapter": chapter, "mode": mode, "seed": 0, "git_sha": "abc", "torch": "2", "device":
        "cpu", "threads": 1, "wall_s": 1.0,
        "metrics": {k: {"value": v, "unit": "", "better": "lower"} for k, v in metrics.items()}}))


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGEN_RESULTS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for stem in ("00_intro", "01_flow", "02_diffusion"):
        (tmp_path / "notebooks" / f"{stem}.py").write_text("")
    (tmp_path / "notebooks" / "helper.py").write_text("")
    return tmp_path


def test_select_by_number_stem_or_all(repo):
    stems = lambda ps: [p.stem for p in ps]
    assert stems(reproduce.select_chapters(repo, [])) == ["00_intro", "01_flow", "02_diffusion"]
    assert stems(reproduce.select_chapters(repo, ["02", "01_flow"])) == ["02_diffusion",
                                                                         "01_flow"]
    assert stems(reproduce.select_chapters(repo, ["notebooks/00_intro.py"])) == ["00_intro"]
    assert stems(reproduce.select_chapters(repo, ["1"])) == ["01_flow"]  # "1" is chapter 01
    with pytest.raises(SystemExit, match="no chapter '07'"):
        reproduce.select_chapters(repo, ["07"])


def test_quick_mode_sets_env_and_one_thread():
    env = reproduce.run_env("quick")
    assert env["MINIGEN_QUICK"] == "1" and env["TQDM_DISABLE"] == "1"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert reproduce.run_env("full")["MINIGEN_QUICK"] == "0"
    assert "OMP_NUM_THREADS" not in reproduce.run_env("gpu")
    assert reproduce.run_env("full", threads=2)["OMP_NUM_THREADS"] == "2"
    with pytest.raises(ValueError, match="threads"):
        reproduce.run_env("quick", threads=0)


def test_cores_are_shared_between_the_notebooks_that_run_at_once():
    assert reproduce.threads_per_notebook(jobs=2, n_notebooks=7, cores=2) == 1
    assert reproduce.threads_per_notebook(jobs=2, n_notebooks=1, cores=2) == 2  # one chapter alone
    assert reproduce.threads_per_notebook(jobs=1, n_notebooks=7, cores=2) == 2
    assert reproduce.threads_per_notebook(jobs=3, n_notebooks=7, cores=2) == 1  # never below one
    assert reproduce.threads_per_notebook(jobs=2, n_notebooks=4, cores=8) == 4


def test_results_table_lists_every_metric(results):
    write_result(results, "full", "01_flow", {"w2": 0.12345678, "nfe": 38})
    table = reproduce.results_table(reproduce.load_results("full"))
    lines = table.splitlines()
    assert lines[0] == "| chapter | metric | value | unit | better |"
    assert "| 01_flow | `w2` | 0.1235 |  | lower |" in lines
    assert len(lines) == 4


def test_readme_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:start -->\nold\n<!-- results:end -->\nb\n")
    assert reproduce.update_readme(readme, "| new |")
    assert readme.read_text() == "a\n<!-- results:start -->\n| new |\n<!-- results:end -->\nb\n"
    readme.write_text("no markers\n")
    assert not reproduce.update_readme(readme, "| new |")
    assert readme.read_text() == "no markers\n"


def use_specs(monkeypatch, tmp_path, specs: dict[str, str]):
    """Chapter specs (TOML text per chapter) in a scratch notebooks/ folder."""
    (tmp_path / "notebooks").mkdir(exist_ok=True)
    for chapter, text in specs.items():
        (tmp_path / "notebooks" / f"{chapter}.toml").write_text(text)
    real = reproduce.chapter_spec
    monkeypatch.setattr(reproduce, "chapter_spec", lambda c, root=None: real(c, tmp_path))


def test_check_targets_reports_misses_and_missing(results, monkeypatch, tmp_path):
    use_specs(monkeypatch, tmp_path, {"01_flow": '[targets]\nw2 = ["<=", 0.15]\nratio = [">=", 20.0]\n'
                                                 'gone = ["<=", 1.0]\n'})
    write_result(results, "full", "01_flow", {"w2": 0.1, "ratio": 7.5})
    misses = reproduce.check_targets("full", ["01_flow"])
    assert misses == ["01_flow: ratio = 7.5, target >= 20",
                      "01_flow: gone missing (target <= 1)"]
    assert reproduce.check_targets("full", ["00_other"]) == []
    assert len(reproduce.check_targets("full", ["01_flow", "02_none"])) == 2


def test_missing_results_file_misses_every_target(results):
    chapter = "01_flow_matching"  # the real spec, notebooks/01_flow_matching.toml
    targets = reproduce.chapter_spec(chapter).targets
    assert targets
    misses = reproduce.check_targets("full", [chapter])
    assert len(misses) == len(targets)
    assert all("missing" in m for m in misses)


def test_every_chapter_spec_reads_and_names_recorded_metrics():
    """Each notebooks/<chapter>.toml parses, and its targets and headline name metrics the
    committed full results hold (a renamed metric would silently leave the table)."""
    root = Path(__file__).resolve().parents[1]
    for nb in sorted((root / "notebooks").glob("[0-9][0-9]_*.py")):
        spec = reproduce.chapter_spec(nb.stem, root)
        full = root / "results" / "full" / f"{nb.stem}.json"
        if not full.is_file():
            continue
        recorded = set(json.loads(full.read_text())["metrics"])
        missing = [n for n in [*spec.headline, *spec.targets] if n not in recorded]
        assert not missing, f"{nb.stem}.toml names metrics its full results lack: {missing}"


def test_a_malformed_target_is_refused(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "07_x.toml").write_text('[targets]\nw2 = ["~", 0.1]\n')
    with pytest.raises(ValueError, match="07_x.toml"):
        reproduce.chapter_spec("07_x", tmp_path)


def test_headline_table_shows_targets(results, monkeypatch, tmp_path):
    use_specs(monkeypatch, tmp_path, {"01_flow": '[targets]\nw2 = ["<=", 0.15]\n'})
    write_result(results, "full", "01_flow", {"w2": 0.1, "nfe": 38})
    write_result(results, "full", "02_x", {"a": 1.0})
    lines = reproduce.headline_table(reproduce.load_results("full")).splitlines()
    assert "| 01_flow | `w2` | 0.1 |  | lower | <= 0.15 |" in lines
    assert not any("`nfe`" in line for line in lines)  # not a headline
    assert "| 02_x | `a` | 1 |  | lower |  |" in lines  # no targets: every metric


STALL_ONCE = '''# %%
import pathlib
import time

marker = pathlib.Path({marker!r})
if {always} or not marker.exists():
    marker.write_text("stalled once")
    time.sleep(120)
print("finished")
'''


@pytest.mark.parametrize("always", [False, True])
def test_a_stalled_cell_is_run_again_once(tmp_path, always):
    """A cell past the timeout (a lost kernel reply looks the same) gets one more run; a
    notebook that stalls twice fails with the timeout named, rather than hanging CI."""
    src = tmp_path / "99_stall.py"
    src.write_text(STALL_ONCE.format(marker=str(tmp_path / "marker"), always=always))
    kernel = reproduce.ensure_kernel()
    res = reproduce.execute_one(str(src), str(tmp_path / "out"), "quick", kernel, cell_timeout=4)
    assert res.attempts == 2
    if always:
        assert res.error is not None and "Timeout" in res.error
        assert res.wall_s < 60
    else:
        assert res.error is None, res.error
        assert "finished" in (tmp_path / "out" / "99_stall.ipynb").read_text()


def test_a_failing_cell_is_not_run_again(tmp_path):
    src = tmp_path / "98_fail.py"
    src.write_text("# %%\nraise ValueError('boom')\n")
    res = reproduce.execute_one(str(src), str(tmp_path / "out"), "quick", reproduce.ensure_kernel())
    assert res.attempts == 1 and "ValueError" in res.error and "boom" in res.error


QUICK_PARAMS = '''# %% tags=["parameters"]
from minigen.workbook.record import parameter_defaults

quick = False
steps = 10000
width = 64
defaults = parameter_defaults(globals())

# %%
from minigen.workbook.record import apply_quick

if quick:
    apply_quick(globals(), defaults, steps=1500, width=16)
print(f"steps={steps} width={width}")
'''


@pytest.mark.parametrize("params,expected", [
    ({"quick": True}, "steps=1500 width=16"),
    ({"quick": True, "steps": 500}, "steps=500 width=16"),   # a passed parameter is kept
    ({"quick": False, "steps": 500}, "steps=500 width=64"),
])
def test_quick_mode_keeps_the_parameters_a_run_passes(tmp_path, params, expected):
    """papermill -p steps 500 in quick mode takes effect: apply_quick only overrides the values
    still at the parameters cell's defaults."""
    import nbformat
    import papermill

    py = tmp_path / "97_params.py"
    py.write_text(QUICK_PARAMS)
    kernel = reproduce.ensure_kernel()
    src, out = tmp_path / "97_params.ipynb", tmp_path / "out.ipynb"
    nbformat.write(reproduce.to_notebook(py, kernel), src)
    papermill.execute_notebook(str(src), str(out), parameters=params, kernel_name=kernel,
                               progress_bar=False, log_output=False)
    assert expected in out.read_text()


def test_apply_quick_refuses_a_name_that_is_not_a_parameter():
    from minigen.workbook.record import apply_quick, parameter_defaults

    ns = {"steps": 10}
    with pytest.raises(KeyError, match="not parameters"):
        apply_quick(ns, parameter_defaults(ns), stpes=1)


@pytest.mark.parametrize("jobs", ["0", "-2", "two"])
def test_jobs_must_be_a_positive_integer(jobs, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--quick", "--no-run", "--jobs", jobs])
    assert "--jobs" in capsys.readouterr().err
