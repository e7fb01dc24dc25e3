"""One build of the Jupyter Book per test session, shared by tests/test_book.py and tests/test_browser.py.

The build runs every notebook (~80 s on 2 cores), so it is done once and cached here at module
level; both test modules ask for it through ``built_book``. Set ``PURSAMERE_BOOK_HTML`` to an
existing ``_build/html`` (``make check-book`` does) to check that build instead of making one.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_cache: dict = {}


def built_book(tmp_path_factory) -> Path:
    """The ``html`` folder of a fresh build into a temporary directory (built on first call)."""
    if "html" in _cache:
        return _cache["html"]
    given = os.environ.get("PURSAMERE_BOOK_HTML")
    if given:
        html = Path(given).resolve()
        if not (html / "index.html").is_file():
            raise FileNotFoundError(f"PURSAMERE_BOOK_HTML={given}: no index.html there; build the book first (make book)")
    else:
        jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
        assert jb, "jupyter-book is not installed"
        out = tmp_path_factory.mktemp("book")
        # -W: a warning (broken reference, failed notebook cell) fails the build; -n: nitpicky
        proc = subprocess.run([jb, "build", str(ROOT), "--path-output", str(out), "-W", "-n"],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        html = out / "_build" / "html"
    _cache["html"] = html
    return html
