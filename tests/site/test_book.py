"""Browser test of the built book: every chapter renders offline (book/design.md, "Book").

Run after ``make book`` or ``make book-quick``: ``pytest -m site tests/site``
(``make site-test``). The site is served from ``book/_build/html`` on 127.0.0.1 and
chromium (Debian's, ``/usr/bin/chromium``; never ``playwright install``) may load
nothing else: every other request is aborted and reported, so a passing test proves
the pages render with no network. Without a built site or a browser the tests skip,
except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"
SITE = BOOK / "_build" / "html"
CHROMIUM = Path(os.environ.get("MINIGEN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
TIMEOUT_MS = 30_000


def under_ci() -> bool:
    """True when running under CI (``CI=true``), where missing prerequisites fail."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(reason: str):
    """Fail under CI, skip elsewhere."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def toc_files(toc: dict) -> list[str]:
    """Every ``file:`` entry of a jupyter-book ``_toc.yml``, in order (not the root)."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(str(node["file"]))
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key, []))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return found


def chapter_pages() -> list[str]:
    """Site-relative URLs of the chapter notebooks (``notebooks/...``) in ``book/_toc.yml``."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    return [f"{Path(f).with_suffix('').as_posix()}.html" for f in toc_files(toc)
            if f.startswith("notebooks/")]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def site_url():
    """Serve ``book/_build/html`` on 127.0.0.1 (a free port) for the module."""
    if not (SITE / "index.html").is_file():
        missing(f"no built book at {SITE}: run `make book-quick` (or `make book`) first")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by playwright (no downloaded browsers)."""
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} not found: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def offline_page(browser, site_url):
    """A page that may only load from the local server; ``page.blocked`` lists the rest."""
    context = browser.new_context(viewport={"width": 1280, "height": 1600},
                                  service_workers="block")
    page = context.new_page()
    page.blocked = []

    def route(r):
        url = r.request.url
        if url.startswith((site_url + "/", "file://", "data:", "blob:")):
            r.continue_()
        else:
            page.blocked.append(url)
            r.abort()

    page.route("**/*", route)
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def open_page(page, site_url: str, rel: str):
    """Load a page and wait until MathJax has finished typesetting (if it is present)."""
    path = SITE / rel
    assert path.is_file(), f"{rel} is listed in book/_toc.yml but was not built ({path})"
    page.goto(f"{site_url}/{rel}", wait_until="load")
    page.evaluate("async () => { const s = window.MathJax && window.MathJax.startup;"
                  " if (s && s.promise) await s.promise; }")
    page.wait_for_load_state("networkidle")


@pytest.mark.parametrize("rel", chapter_pages())
def test_chapter_renders_offline(offline_page, site_url, rel):
    """Headings, a decoded figure, typeset maths and a results table; nothing from the network."""
    page = offline_page
    open_page(page, site_url, rel)

    heading = page.locator("article h1").first
    assert heading.is_visible() and heading.inner_text().strip(), f"{rel}: no article heading"
    assert page.get_by_role("heading").count() >= 1

    decoded = page.evaluate(
        "() => Array.from(document.querySelectorAll('article img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length")
    assert decoded >= 1, f"{rel}: no figure image decoded"

    assert page.locator("mjx-container").count() >= 1, f"{rel}: MathJax produced no output"
    assert page.locator("mjx-merror").count() == 0, f"{rel}: MathJax reported a TeX error"

    rows = page.locator("table.minigen-results tbody tr")
    assert rows.count() >= 1, f"{rel}: no results table (table.minigen-results) with rows"
    assert page.locator("details.minigen-results table.minigen-results").count() >= 1, \
        f"{rel}: the full results table is not folded in a <details>"

    text = page.locator("article").inner_text()
    assert "NBVAL_" not in text, f"{rel}: a test marker is visible"
    assert "# Parameters" not in text, f"{rel}: papermill's injected-parameters cell is visible"
    if quick_build(rel):
        assert "quick-mode" in text, f"{rel}: a quick-mode page without the banner"
    wide = page.evaluate(
        "() => Array.from(document.querySelectorAll('article div.cell pre'))"
        ".filter(p => p.offsetParent !== null && p.scrollWidth > p.clientWidth + 1).length")
    assert wide == 0, f"{rel}: {wide} code block(s) scroll sideways"

    assert not page.blocked, f"{rel}: requests to the network were blocked: {page.blocked}"


def quick_build(rel: str) -> bool:
    """The executed notebook behind a chapter page ran in quick mode (papermill's record)."""
    import json

    nb = BOOK / "notebooks" / (Path(rel).with_suffix(".ipynb").name)
    meta = json.loads(nb.read_text()).get("metadata", {}) if nb.is_file() else {}
    return bool(meta.get("papermill", {}).get("parameters", {}).get("quick"))


REMOTE_TAG = re.compile(
    r"<(script|link|img|iframe|source|video|audio)\b[^>]*\b(src|href)\s*=\s*[\"']?"
    r"((https?:)?//[^\"'\s>]+)", re.I)
REMOTE_CSS = re.compile(r"(@import\s+|url\()\s*[\"']?((https?:)?//[^\"')\s]+)", re.I)


def test_no_remote_assets_in_built_html():
    """No page or stylesheet of the site names a remote script, stylesheet, image or font."""
    if not (SITE / "index.html").is_file():
        missing(f"no built book at {SITE}: run `make book-quick` (or `make book`) first")
    found = []
    for path in sorted(SITE.rglob("*.html")) + sorted(SITE.rglob("*.css")):
        text = path.read_text(errors="replace")
        pattern = REMOTE_CSS if path.suffix == ".css" else REMOTE_TAG
        found += [f"{path.relative_to(SITE)}: {m.group(2 if path.suffix == '.css' else 3)}"
                  for m in pattern.finditer(text)]
    assert not found, "remote assets in the built site:\n" + "\n".join(found)


def test_toc_lists_chapters():
    """The table of contents names at least one chapter page."""
    assert chapter_pages(), "book/_toc.yml lists no chapters"
