"""Sphinx extension: a built book that loads nothing from another host.

Listed in ``_config.yml`` (``sphinx: extra_extensions``) after ``sphinx-mathjax-offline``,
which copies MathJax 3 into ``_static/mathjax`` and points ``mathjax_path`` at it. This
extension does the rest:

* drops every script or stylesheet whose address names another host (none should be left;
  a reader without network would otherwise wait on them), and sphinx-thebe's loader, whose
  inline configuration names thebe's CDN (launching live code is switched off in
  ``_config.yml``, so nothing on the page uses it);
* on pages that contain a slider figure (:mod:`pursamere.book.sliders`), adds ONE shared copy
  of ``plotly.min.js``, taken from the installed ``plotly`` package and copied into
  ``_static`` at the end of the build.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

__all__ = ["setup", "is_external", "plotly_js"]

PLOTLY_JS = "plotly.min.js"
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)  # http://, https://, protocol-relative //


def is_external(url) -> bool:
    """Whether an asset address names another host (``http(s)://`` or ``//host``)."""
    return bool(url) and bool(_EXTERNAL.match(str(url))) and not str(url).startswith("file:")


def plotly_js() -> Path:
    """The minified plotly.js that the installed ``plotly`` package ships."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the plotly package ships no {PLOTLY_JS}; reinstall plotly")
    return path


def _filename(asset) -> str:
    return str(getattr(asset, "filename", asset) or "")  # Sphinx 7: an object; older: a str


def _is_thebe(asset) -> bool:
    body = getattr(asset, "attributes", {}).get("body", "") or ""
    return "THEBE_JS_URL" in body or posixpath.basename(_filename(asset)).startswith("sphinx-thebe")


def _page_assets(app, pagename, templatename, context, doctree):
    for key in ("script_files", "css_files"):
        assets = context.get(key)
        if assets is None:
            continue
        # mutate in place: Sphinx restores the list after each page
        assets[:] = [a for a in assets if not is_external(_filename(a)) and not _is_thebe(a)]
    if "data-pursamere-slider" in (context.get("body") or ""):
        app.add_js_file(PLOTLY_JS, loading_method="defer")


def _copy_plotly(app, exc):
    if exc is None and app.builder.format == "html":
        from sphinx.util.fileutil import copy_asset_file

        copy_asset_file(str(plotly_js()), str(Path(app.outdir) / "_static"))


def setup(app):
    app.connect("html-page-context", _page_assets)
    app.connect("build-finished", _copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
