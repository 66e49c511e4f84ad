"""minigen.workbook.reproduce: selection, tables, README markers, targets; the runner on tiny notebooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minigen.workbook import reproduce, schedule


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


TINY_CHAPTER = '''# %% tags=["parameters"]
from minigen.workbook.record import quick_from_env

quick = quick_from_env()

# %%
from minigen.workbook.record import record

print(record("99_tiny", {"a": 0.5}, mode="quick" if quick else "full", seed=0, wall_s=0.1))
'''


def git(repo: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture
def tiny_repo(tmp_path, monkeypatch):
    """A committed repository with one chapter, committed results and a README table."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[project]\nname = "minigen"\n')
    (repo / "notebooks" / "99_tiny.py").write_text(TINY_CHAPTER)
    (repo / "notebooks" / "99_tiny.toml").write_text('[targets]\na = ["<", 1.0]\n')
    (repo / "results" / "full").mkdir(parents=True)
    (repo / "results" / "full" / "99_tiny.json").write_text('{"committed": true}\n')
    (repo / "results" / "RESULTS.md").write_text("committed table\n")
    (repo / "README.md").write_text("<!-- results:start -->\nold\n<!-- results:end -->\n")
    (repo / ".gitignore").write_text("build/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MINIGEN_RESULTS_DIR", raising=False)
    monkeypatch.delenv("MINIGEN_RECORD", raising=False)
    return repo


def committed_bytes(repo: Path) -> dict[str, bytes]:
    return {p: (repo / p).read_bytes() for p in
            ("results/full/99_tiny.json", "results/RESULTS.md", "README.md")}


def test_a_plain_run_leaves_the_committed_results_byte_identical(tiny_repo, capsys):
    before = committed_bytes(tiny_repo)
    assert reproduce.main(["99", "--jobs", "1", "--check"]) == 0  # full mode, the default
    assert committed_bytes(tiny_repo) == before
    run = json.loads((tiny_repo / "build/results/full/99_tiny.json").read_text())
    assert run["metrics"]["a"]["value"] == 0.5 and run["mode"] == "full"
    assert (tiny_repo / "build/results/full/RESULTS.md").is_file()
    assert "untouched" in capsys.readouterr().out


def test_record_refuses_a_dirty_tree_and_then_says_what_it_replaced(tiny_repo, capsys):
    before = committed_bytes(tiny_repo)
    (tiny_repo / "notebooks" / "99_tiny.py").write_text(TINY_CHAPTER + "\n# an edit\n")
    assert reproduce.main(["99", "--record", "--jobs", "1"]) == 2
    assert "uncommitted changes in notebooks/99_tiny.py" in capsys.readouterr().err
    assert committed_bytes(tiny_repo) == before
    git(tiny_repo, "commit", "-qam", "edit")
    assert reproduce.main(["99", "--record", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    rec = json.loads((tiny_repo / "results/full/99_tiny.json").read_text())
    assert rec["metrics"]["a"]["value"] == 0.5 and not rec["git_sha"].endswith("-dirty")
    assert "replaced committed results:\n  99_tiny.json: was None on None" in out
    assert "`a` | 0.5 |  | lower | < 1: met" in (tiny_repo / "README.md").read_text()
    assert "## Targets (1 met)" in (tiny_repo / "results/RESULTS.md").read_text()


def test_record_with_allow_dirty_marks_the_commit(tiny_repo):
    (tiny_repo / "notebooks" / "99_tiny.py").write_text(TINY_CHAPTER + "\n# an edit\n")
    assert reproduce.main(["99", "--record", "--allow-dirty", "--jobs", "1"]) == 0
    assert json.loads((tiny_repo / "results/full/99_tiny.json").read_text())["git_sha"] \
        .endswith("-dirty")


def test_quick_results_are_never_recorded(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--quick", "--record", "--no-run"])
    assert "quick results stay in build/" in capsys.readouterr().err


def test_a_full_run_reuses_chapters_whose_inputs_are_unchanged(tiny_repo, capsys):
    """The second full run executes nothing; an edit to the chapter reruns it; --force reruns."""
    assert reproduce.main(["99", "--jobs", "1"]) == 0
    first = (tiny_repo / "build/executed/99_tiny.ipynb").read_bytes()
    capsys.readouterr()
    assert reproduce.main(["99", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "reusing 99_tiny" in out and "notebook(s), mode=" not in out
    assert (tiny_repo / "build/executed/99_tiny.ipynb").read_bytes() == first
    assert reproduce.main(["99", "--jobs", "1", "--force"]) == 0
    assert "reusing" not in capsys.readouterr().out
    (tiny_repo / "notebooks" / "99_tiny.py").write_text(TINY_CHAPTER + "\n# an edit\n")
    assert reproduce.main(["99", "--jobs", "1"]) == 0
    assert "reusing" not in capsys.readouterr().out
    assert reproduce.main(["99", "--quick", "--jobs", "1"]) == 0  # a quick copy replaces it
    capsys.readouterr()
    assert reproduce.main(["99", "--jobs", "1"]) == 0
    assert "reusing" not in capsys.readouterr().out  # ... and is never taken for a full one


def test_a_plain_full_run_after_make_book_reuses_the_committed_record(tiny_repo, capsys):
    """``make book`` (--record) stamps the executed copy and writes results/full/; a plain full
    run then executes nothing and takes the committed record into build/results/full/."""
    git(tiny_repo, "commit", "-qam", "x", "--allow-empty")
    assert reproduce.main(["99", "--record", "--jobs", "1"]) == 0
    committed = (tiny_repo / "results/full/99_tiny.json").read_bytes()
    capsys.readouterr()
    assert reproduce.main(["99", "--jobs", "1", "--check"]) == 0
    out = capsys.readouterr().out
    assert "reusing 99_tiny" in out and "notebook(s), mode=" not in out
    assert (tiny_repo / "build/results/full/99_tiny.json").read_bytes() == committed
    assert (tiny_repo / "results/full/99_tiny.json").read_bytes() == committed
    (tiny_repo / "notebooks" / "99_tiny.py").write_text(TINY_CHAPTER + "\n# an edit\n")
    assert reproduce.main(["99", "--jobs", "1"]) == 0  # the committed record's key is old now
    assert "reusing" not in capsys.readouterr().out
    assert (tiny_repo / "results/full/99_tiny.json").read_bytes() == committed


def test_stale_lists_results_made_from_other_inputs(tiny_repo, capsys):
    assert reproduce.main(["--stale"]) == 0
    assert "99_tiny: no inputs key recorded" in capsys.readouterr().out
    git(tiny_repo, "commit", "-qam", "x", "--allow-empty")
    assert reproduce.main(["99", "--record", "--jobs", "1"]) == 0
    capsys.readouterr()
    assert reproduce.main(["--stale"]) == 0
    assert "0 of 1 chapter(s)" in capsys.readouterr().out
    (tiny_repo / "notebooks" / "99_tiny.py").write_text(TINY_CHAPTER + "\n# an edit\n")
    assert reproduce.main(["--stale"]) == 0
    assert "99_tiny: inputs changed since commit" in capsys.readouterr().out


def test_the_longest_chapters_are_scheduled_first(results, tmp_path):
    for stem, wall in (("01_a", 100.0), ("02_b", 300.0), ("03_c", 50.0)):
        write_result(results, "full", stem, {"x": 1.0})
        path = results / "full" / f"{stem}.json"
        rec = json.loads(path.read_text())
        rec["wall_s"] = wall
        path.write_text(json.dumps(rec))
    chapters = [tmp_path / f"{s}.py" for s in ("01_a", "02_b", "03_c", "04_new")]
    order, estimate = schedule.longest_first(chapters, results / "full", jobs=2)
    assert [p.stem for p in order] == ["02_b", "01_a", "03_c", "04_new"]  # unknown last
    assert estimate == 300.0  # 02 on one worker; 01 + 03 on the other
    assert schedule.longest_first(chapters, results / "full", jobs=1)[1] == 450.0
    # a plain run's folder holds nothing yet: the estimates come from the committed records
    empty = tmp_path / "build-results"
    empty.mkdir()
    assert schedule.last_wall_times(chapters, empty)["02_b"] == 0.0
    assert schedule.longest_first(chapters, empty, jobs=1, also=results / "full")[1] == 450.0


def test_the_progress_line_names_the_running_chapters_and_the_time_left():
    now = [0.0]
    est = {"02_b": 300.0, "01_a": 100.0, "03_c": 50.0}
    p = schedule.Progress(["02_b", "01_a", "03_c"], jobs=2, estimates=est, clock=lambda: now[0])
    now[0] = 40.0
    assert set(p.running) == {"02_b", "01_a"}
    # 02 needs 260 s more; 01 needs 60 s, then 03 takes 50 on that worker: 260 s left
    assert p.left() == 260.0
    assert p.line() == ("running: 02_b (40 s, ~300), 01_a (40 s, ~100); 0 of 3 done; "
                        "40 s elapsed, about 260 s left")
    now[0] = 110.0
    p.finished("01_a")  # 03 starts now
    assert p.running == {"02_b": 0.0, "03_c": 110.0} and p.done == 1
    now[0] = 400.0  # over every estimate: nothing negative, and the line says the overrun
    assert p.left() == 0.0
    assert p.line().endswith("about 0 s left + 2 chapter(s) past their estimate")
    fresh = schedule.Progress(["09_new"], jobs=2, estimates={}, clock=lambda: now[0])
    assert fresh.line().endswith("09_new (0 s, no estimate); 0 of 1 done; 0 s elapsed, "
                                 "about 0 s left + 1 chapter(s) never timed")
    assert schedule.makespan([5.0, 5.0, 5.0], 2) == 10.0
