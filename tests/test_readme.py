"""The README as printed: its first example runs with the output it shows, and its headline tables are the recorded data."""
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


BOOK_DATA = README.parent / "book" / "data"


def _table_lines(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_readme_headline_tables_are_the_recorded_ones():
    """The README's digits whole-test (80 and 160 steps) and CIFAR-10 tables sit between recorded-table markers and
    are exactly what ``scripts/record_tables.py --readme README.md`` writes there from the recorded data (no number
    drifts from its JSON)."""
    from script_module import load_script  # tests/script_module.py

    record_tables = load_script("record_tables")
    blocks = record_tables.readme_blocks(README.read_text(encoding="utf-8"))
    assert {"digits-whole-test", "digits-whole-test-160", "cifar10-cpu-table"} <= set(blocks)
    for table, body in blocks.items():
        expected = record_tables.readme_table(BOOK_DATA, table)
        assert len(_table_lines(expected)) > 3, table
        assert body == expected, (f"README's {table} table differs from book/data/{table}: run "
                                  "`python scripts/record_tables.py --readme README.md`")


def test_record_tables_rewrites_the_readme_tables_between_their_markers(tmp_path, capsys):
    from script_module import load_script

    rt = load_script("record_tables")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- recorded table: cifar10-cpu-table (note) -->\n| old |\n<!-- end of recorded table -->\n"
                      "text between\n<!-- recorded table: digits-whole-test-160 -->\nstale\n<!-- end of recorded table -->\n"
                      "outro\n", encoding="utf-8")
    assert rt.main(["--readme", str(readme), "--book", str(BOOK_DATA)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n<!-- recorded table: cifar10-cpu-table (note) -->\n") and text.endswith("outro\n")
    assert rt.readme_blocks(text) == {t: rt.readme_table(BOOK_DATA, t) for t in ("cifar10-cpu-table", "digits-whole-test-160")}
    assert "text between" in text and "rewrote cifar10-cpu-table, digits-whole-test-160" in capsys.readouterr().out
    assert rt.main(["--readme", str(readme), "--book", str(BOOK_DATA)]) == 0
    assert "current" in capsys.readouterr().out and readme.read_text(encoding="utf-8") == text
    for bad, message in [("<!-- recorded table: no-such -->\nx\n<!-- end of recorded table -->\n", "no such recorded table"),
                         ("<!-- recorded table: cifar10-cpu-table -->\nx\n", "do not pair up")]:
        readme.write_text(bad, encoding="utf-8")
        assert rt.main(["--readme", str(readme), "--book", str(BOOK_DATA)]) == 2
        assert message in capsys.readouterr().err and readme.read_text(encoding="utf-8") == bad  # one line; nothing written
    assert rt.main([]) == 2 and "ROOT" in capsys.readouterr().err
