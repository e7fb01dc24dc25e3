"""The README's first example runs as printed: same code, same output (so it cannot drift)."""
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _section(title):
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_using_the_package_example_lands_on_the_mode_and_prints_what_the_readme_says():
    sec = _section("Using the package")
    code = re.search(r"```python\n(.*?)```", sec, re.S).group(1)
    expected = re.search(r"```text\n(.*?)```", sec, re.S).group(1)
    out, scope = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), scope)  # the README is this repository's own file
    assert out.getvalue() == expected
    x_pur, x_adv = scope["x_pur"], scope["x_adv"]
    assert float(x_pur.norm()) < 0.01  # near the mode (0, 0), from 0.985 away
    assert float((x_pur - x_adv).norm()) <= scope["cfg"].eps_pur + 1e-12  # inside the ball
    ere, score, draws = scope["ere"], scope["score"], scope["draws"]
    assert ere(score, x_pur, 0.05, draws).item() < ere(score, x_adv, 0.05, draws).item()
