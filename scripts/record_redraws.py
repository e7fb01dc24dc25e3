"""Record the digits stochastic rows' second draw: the 80-step suite again from another seed, against the 160-step one.

    python -m pursamere ensemble --preset digits --weights shipped --n 476 --batch-size 64 --steps 80 --eps 0.2 \\
        --only "DiffPure-style,ADP" --seed 1 --out results/redraws/digits-seed1-0.2        # and --eps 0.15
    python scripts/record_redraws.py results/redraws/digits-seed1-0.2 results/redraws/digits-seed1-0.15

Against a stochastic purifier every attack draws fresh noise, so part of what the whole-test table's 160-step
suite broke after the 80-step one may be new draws rather than longer attacks. The same 80-step suite from
another seed has the new draws without the longer attacks. This merges the seed-1 runs into
``book/data/digits-redraws/`` (``results.json``, ``table.md``) and writes ``redraws.json``: per row,
:func:`pursamere.evaluation.results.redraw_control` against the recorded 80-step table
(``book/data/digits-whole-test/``) and its 160-step rung (``…-160/``). Only finished rows are compared; the
files are written only when every input reads and matches (one error line otherwise).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="the seed-1 results folders (pursamere ensemble --seed)")
    ap.add_argument("--book", default=str(ROOT / "book" / "data"), help="the recorded tables (default: book/data)")
    ap.add_argument("--out", default=None, help="where to record (default: BOOK/digits-redraws)")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except (ValueError, OSError, KeyError) as e:  # one line, no traceback
        print(f"record_redraws: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    import shutil
    import tempfile

    from pursamere.evaluation.results import merge_results, norm_label, read_results, redraw_control
    from pursamere.io import atomic_write_json

    book = Path(args.book)
    out = Path(args.out) if args.out else book / "digits-redraws"
    first = read_results(book / "digits-whole-test")
    longer = (160, read_results(book / "digits-whole-test-160"))
    metas = []
    for run in args.runs:
        if not (Path(run) / "results.json").is_file():
            raise ValueError(f"{run} holds no results.json")
        metas.append(read_results(Path(run))["meta"])
    for key in ("seed", "models"):  # the merged table keeps the first folder's meta: every folder must agree with it
        if any(m.get(key) != metas[0].get(key) for m in metas):
            raise ValueError(f"{', '.join(args.runs)}: these runs differ in their {key}; record runs of one seed and "
                             "one set of models together")
    with tempfile.TemporaryDirectory() as tmp:  # nothing is written to the book until everything has matched
        again = merge_results(args.runs, tmp, title="digits: the ensemble from seed 1 (the stochastic rows' second draw)")
        entries = redraw_control(first, again, longer)
        if not entries:
            raise ValueError("no row of these runs has finished: nothing to compare")
        summary = {"first": "digits-whole-test", "longer": "digits-whole-test-160", "again": [str(r) for r in args.runs],
                   "rows": entries}
        atomic_write_json(Path(tmp) / "redraws.json", summary)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "table.md", "redraws.json"):
            shutil.copyfile(Path(tmp) / name, out / f".{name}.new")
        for name in ("results.json", "table.md", "redraws.json"):  # each file whole; the set in three renames
            (out / f".{name}.new").replace(out / name)
    for e in entries:
        line = (f"{e['defence']} at {norm_label(e['norm'], e['eps'])}: of the {e['of']} images the 80-step suite left, "
                f"the same suite from seed {e['seeds'][1]} broke {e['again_broke']}")
        if e["longer_broke"] is not None:
            line += (f", the {e['longer_steps']}-step suite {e['longer_broke']} ({e['only_longer']} only it, "
                     f"{e['only_again']} only the second draw, p = {e['p']:.2g})")
        print(line)
    print(f"wrote {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
