"""Build the Jupyter Book into a temporary directory and check its pages, images, downloads and
that nothing on them comes from another host (tests/test_browser.py checks the same pages in
Chromium, on the same build)."""
import re

import nbformat
import pytest
import yaml
from book_build import ROOT, built_book


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for entry in toc.get("chapters", []):
        files.append(entry["file"])
    for part in toc.get("parts", []):
        files += [e["file"] for e in part.get("chapters", [])]
    return files


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_book(tmp_path_factory)


def test_every_toc_entry_has_a_page(built):
    for f in toc_files():
        page = built / f"{f}.html"
        assert page.exists(), f"no HTML page for {f}"
        assert page.stat().st_size > 1000
    assert (built / "index.html").exists()


def test_every_image_exists(built):
    pages = list(built.rglob("*.html"))
    n_img = 0
    for page in pages:
        for src in re.findall(r'<img[^>]*\bsrc="([^"]+)"', page.read_text(encoding="utf-8")):
            if src.startswith(("http:", "https:", "data:")):
                continue
            n_img += 1
            assert (page.parent / src.split("#")[0].split("?")[0]).resolve().exists(), f"{page.name}: missing {src}"
    assert n_img >= 8  # the toy chapters have at least this many figures


def test_notebook_pages_have_no_error_output(built):
    for f in toc_files():
        if f.startswith("notebooks/"):
            html = (built / f"{f}.html").read_text(encoding="utf-8")
            assert "Traceback" not in html and "output_error" not in html, f


# An asset another host would serve: a script, stylesheet, font, image or frame address with a
# scheme (http:, https:) or protocol-relative (//host/...).
_LOADED = re.compile(r"""<(?:script|img|iframe|source|audio|video)\b[^>]*\bsrc\s*=\s*["']([^"']+)["']"""
                     r"""|<link\b[^>]*\bhref\s*=\s*["']([^"']+)["'][^>]*>""", re.I)
_CSS_URL = re.compile(r"""(?:@import\s+(?:url\()?|url\()\s*["']?([^"')\s]+)""", re.I)


def _external(url):
    return re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url, re.I) is not None and not url.startswith("file:")


def test_no_page_loads_anything_from_another_host(built):
    """Every page, every stylesheet in _static: no script, style, font or image from another host."""
    pages = sorted(built.rglob("*.html"))
    assert len(pages) >= len(toc_files())
    bad = []
    for page in pages:
        html = page.read_text(encoding="utf-8")
        for m in _LOADED.finditer(html):
            tag, url = m.group(0), m.group(1) or m.group(2)
            if m.group(2) and not re.search(r"""rel\s*=\s*["'][^"']*(stylesheet|preload|icon|prefetch|modulepreload|manifest)""", tag, re.I):
                continue  # an ordinary hyperlink (<link rel="next"> etc.) loads nothing
            if _external(url):
                bad.append(f"{page.relative_to(built)}: {url}")
        for css in re.findall(r"<style[^>]*>(.*?)</style>", html, re.S | re.I):
            bad += [f"{page.relative_to(built)}: inline style {u}" for u in _CSS_URL.findall(css) if _external(u)]
        # sphinx-thebe writes its CDN address into an inline script; offline.py removes it
        assert "unpkg.com" not in html and "cdn.jsdelivr" not in html, page
    for css in built.joinpath("_static").rglob("*.css"):
        text = re.sub(r"/\*.*?\*/", "", css.read_text(encoding="utf-8", errors="replace"), flags=re.S)
        bad += [f"{css.relative_to(built)}: {u}" for u in _CSS_URL.findall(text) if _external(u)]
    assert not bad, "assets from another host:\n" + "\n".join(bad[:20])


def test_maths_renderer_and_plotly_are_in_the_build(built):
    for f in toc_files():
        html = (built / f"{f}.html").read_text(encoding="utf-8")
        if 'class="math' in html:  # a page with maths loads the local MathJax
            assert re.search(r'src="(\.\./)*_static/mathjax/tex-chtml\.js"', html), f
    assert (built / "_static/mathjax/tex-chtml.js").stat().st_size > 500_000
    assert (built / "_static/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff").is_file()
    js = built / "_static/plotly.min.js"
    assert js.stat().st_size > 1_000_000
    with_sliders = [f for f in toc_files() if "data-pursamere-slider" in (built / f"{f}.html").read_text(encoding="utf-8")]
    assert {"notebooks/01_ere_on_toys", "notebooks/02_theorem1", "notebooks/03_sam_and_sliders"} <= set(with_sliders)
    for f in toc_files():  # ONE shared plotly.js, loaded only where a slider figure is
        html = (built / f"{f}.html").read_text(encoding="utf-8")
        loads = re.findall(r'<script[^>]*\bsrc="[^"]*_static/plotly\.min\.js"', html)
        assert len(loads) == (1 if f in with_sliders else 0), f
        assert "Plotly.newPlot = " not in html and len(html) < 1_000_000, f  # no inlined plotly.js


def test_every_chapter_downloads_as_a_notebook(built):
    """The page's download button points at the chapter's .ipynb, shipped in the build."""
    for f in toc_files():
        if not f.startswith("notebooks/"):
            continue
        html = (built / f"{f}.html").read_text(encoding="utf-8")
        hrefs = [h for h in re.findall(r'href="([^"]+\.ipynb)"', html)]
        assert hrefs, f"{f}: no .ipynb download link"
        target = (built / f).parent / hrefs[0]
        assert target.resolve().is_file(), f"{f}: download link {hrefs[0]} has no file"
        nb = nbformat.read(target, as_version=4)
        assert nb.metadata.kernelspec.name == "python3"
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), f


def test_front_page_says_how_to_run_the_book_live(built):
    text = " ".join(re.sub(r"<[^>]+>", " ", (built / "book/intro.html").read_text(encoding="utf-8")).split())
    assert "make book" in text and "Jupyter" in text
