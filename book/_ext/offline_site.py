"""Keep the minigen book self-contained: it must render with no network.

- serves MathJax from ``book/_vendor/mathjax/`` (``make mathjax`` copies it from the
  npm package) as ``_static/mathjax/``; the path is added here rather than in
  ``_config.yml`` because jupyter-book would otherwise add every .js file under a
  static path to every page;
- drops sphinx-thebe's scripts and config block (thebe is off, but the extension
  always adds a loader that names a CDN and a Binder config);
- drops the Font Awesome 4 stylesheet that matplotlib's jshtml animations link from
  a CDN: the theme's own Font Awesome (served locally) draws the same ``fa-*`` icons;
- warns (an error under ``-W``) if MathJax is missing, or a page (its assets or the
  HTML of a notebook output) still loads a script, stylesheet, image or frame from
  another host;
- for the API page (``api.md``, sphinx.ext.autodoc): shows docstrings verbatim, as
  literal blocks, so plain-text docstrings never break the ``-W`` build, and drops
  base classes from other packages (no inventory to link them to offline).
"""

from __future__ import annotations

import re
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)
VENDOR = "_vendor"
MATHJAX = "mathjax/tex-mml-chtml.js"


# matplotlib.animation's to_jshtml() template links Font Awesome 4 from a CDN.
MPL_FONT_AWESOME = re.compile(
    r"<link[^>]*href=[\"']https?://maxcdn\.bootstrapcdn\.com/font-awesome/[^>]*>\s*", re.I)
REMOTE_TAG = re.compile(
    r"<(script|link|img|iframe|source|video|audio)\b[^>]*\b(src|href)\s*=\s*[\"']?"
    r"((https?:)?//[^\"'\s>]+)", re.I)


def _is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://", "//"))


def add_vendor_static(app, config):
    """Serve ``book/_vendor/`` as static files; warn if MathJax has not been copied there."""
    vendor = Path(app.srcdir) / VENDOR
    if not (vendor / MATHJAX).is_file():
        logger.warning(f"offline_site: {vendor / MATHJAX} is missing: run `make mathjax`")
    config.html_static_path.append(str(vendor))


def drop_thebe_config(app, doctree, docname):
    """Remove the inert ``<script type="text/x-thebe-config">`` block sphinx-thebe adds."""
    from docutils import nodes

    for node in list(doctree.findall(nodes.raw)):
        if "x-thebe-config" in node.astext():
            node.parent.remove(node)


def offline_outputs(app, doctree, docname):
    """Strip matplotlib's Font Awesome CDN link from raw HTML; warn about other remote loads."""
    from docutils import nodes

    for node in list(doctree.findall(nodes.raw)):
        if "html" not in node.get("format", "").split():
            continue
        html = node.astext()
        cleaned = MPL_FONT_AWESOME.sub("", html)
        if cleaned != html:
            node.replace_self(nodes.raw("", cleaned, format=node["format"]))
        for match in REMOTE_TAG.finditer(cleaned):
            logger.warning(f"offline_site: {docname}: an output loads {match.group(3)} "
                           "from the network; give it a static fallback",
                           location=(docname, node.line))


def drop_remote_assets(app, pagename, templatename, context, doctree):
    """Remove thebe's scripts from the page; warn about any other remote script or CSS."""
    def is_thebe(js) -> bool:
        name = str(js.filename or "")
        return name.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in js.attributes.get("body", "")

    context["script_files"] = [js for js in context.get("script_files", []) if not is_thebe(js)]
    context["css_files"] = [css for css in context.get("css_files", [])
                            if not str(css.filename).endswith("sphinx-thebe.css")]
    for asset in [*context["script_files"], *context["css_files"]]:
        if _is_remote(str(asset.filename or "")):
            logger.warning(f"offline_site: {pagename} loads {asset.filename} from the network")


def docstring_verbatim(app, what, name, obj, options, lines):
    """Show a docstring as a literal block (it is plain text, not reStructuredText)."""
    if any(line.strip() for line in lines):
        lines[:] = [".. code-block:: text", ""] + ["   " + line for line in lines] + [""]
    else:
        lines[:] = []


def local_bases_only(app, name, obj, options, bases):
    """Keep only base classes defined in minigen."""
    bases[:] = [b for b in bases if getattr(b, "__module__", "").startswith("minigen")]


def setup(app):
    app.connect("autodoc-process-docstring", docstring_verbatim)
    app.connect("autodoc-process-bases", local_bases_only)
    app.connect("config-inited", add_vendor_static)
    app.connect("doctree-resolved", drop_thebe_config, priority=900)
    app.connect("doctree-resolved", offline_outputs, priority=900)
    app.connect("html-page-context", drop_remote_assets, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
