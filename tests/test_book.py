"""Build the Jupyter Book into a temporary directory and check its pages and images."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


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
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    assert jb, "jupyter-book is not installed"
    out = tmp_path_factory.mktemp("book")
    # -W: a warning (broken reference, failed notebook cell) fails the build; -n: nitpicky
    proc = subprocess.run([jb, "build", str(ROOT), "--path-output", str(out), "-W", "-n"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "_build" / "html"


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
