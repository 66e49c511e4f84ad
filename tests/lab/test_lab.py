"""Browser test of JupyterLab as ``make lab`` starts it (book/design.md, "Notebooks").

``pytest -m lab tests/lab`` (``make lab-test``; .ci/run runs it): starts
``python -m minigen.workbook.lab`` on 127.0.0.1 with a token and a scratch settings / runtime
directory, drives Debian's chromium (``/usr/bin/chromium``; never ``playwright install``) to
double-click ``notebooks/`` and then chapter 00, checks that the file opened as a notebook on
the ``minigen`` kernel, runs every cell and waits for the chapter's first plot. Every request
that is not to 127.0.0.1 is aborted and reported. The run records into ``build/results/quick``:
the committed ``results/`` must be byte-identical afterwards. Without chromium the test skips,
except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("MINIGEN_CHROMIUM", "/usr/bin/chromium"))
CHAPTER = "00_unified_picture.py"
SHOTS = ROOT / "build" / "lab-screens"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A running ``python -m minigen.workbook.lab --no-browser`` and its URL."""
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"no chromium at {CHROMIUM} (CI=true)", pytrace=False)
        pytest.skip(f"no chromium at {CHROMIUM}")
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    for var in ("MINIGEN_QUICK", "MINIGEN_RESULTS_DIR", "MINIGEN_RECORD"):
        env.pop(var, None)
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "minigen.workbook.lab", "--no-browser", "--port", str(port), "--",
         f"--IdentityProvider.token={token}", "--LabApp.news_url=", "--ServerApp.open_browser=False"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"{url}/lab?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def committed_results() -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted((ROOT / "results").rglob("*")) if p.is_file()}


def test_a_double_click_opens_a_chapter_that_runs_in_quick_mode(lab):
    from playwright.sync_api import sync_playwright

    before = committed_results()
    blocked: list[str] = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.route("**/*", lambda route: route.continue_()
                   if route.request.url.startswith("http://127.0.0.1")
                   else (blocked.append(route.request.url), route.abort()))
        page.set_default_timeout(60_000)
        page.goto(lab)
        page.locator(".jp-DirListing-item", has_text="notebooks").first.dblclick()
        page.locator(".jp-DirListing-item", has_text=CHAPTER).first.dblclick()
        panel = page.locator(".jp-NotebookPanel")
        panel.locator(".jp-Cell").first.wait_for()  # a notebook, not the text editor
        assert page.locator(".jp-FileEditor").count() == 0
        kernel = page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName").first
        kernel.wait_for()
        page.wait_for_function("el => /minigen/.test(el.textContent)",
                               arg=kernel.element_handle())
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        plot = panel.locator(".jp-OutputArea-output img").first
        plot.wait_for(timeout=240_000)
        plot.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "chapter00-first-plot.png"))
        outputs = panel.locator(".jp-OutputArea-output").all_inner_texts()
        browser.close()
    assert any("quick" in text for text in outputs), "the chapter did not say it ran in quick mode"
    assert not blocked, f"requests left 127.0.0.1: {blocked}"
    assert committed_results() == before, "a run in Lab changed the committed results/"
