"""Keep the minigen book self-contained: it must render with no network.

- serves MathJax from ``book/_vendor/mathjax/`` (``make mathjax`` copies it from the
  npm package) as ``_static/mathjax/``; the path is added here rather than in
  ``_config.yml`` because jupyter-book would otherwise add every .js file under a
  static path to every page;
- drops sphinx-thebe's scripts and config block (thebe is off, but the extension
  always adds a loader that names a CDN and a Binder config);
- warns (an error under ``-W``) if MathJax is missing or a page still loads a script
  or stylesheet from another host.
"""

from __future__ import annotations

from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)
VENDOR = "_vendor"
MATHJAX = "mathjax/tex-mml-chtml.js"


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


def setup(app):
    app.connect("config-inited", add_vendor_static)
    app.connect("doctree-resolved", drop_thebe_config, priority=900)
    app.connect("html-page-context", drop_remote_assets, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
