"""A stochastic row's longer suite against the same suite from another seed (results.redraw_control)."""
import json

import pytest

from pursamere.evaluation.results import redraw_control


def _res(seed, groups, fp="d"):
    return {"meta": {"data_fingerprint": fp, "seed": seed},
            "worst_case": [{"defence": d, "norm": "inf", "eps": 0.2, "survived": s, "attacks": a, "complete": c}
                           for d, s, a, c in groups]}


A80, A160 = ["BPDA80", "APGD-T80"], ["BPDA80", "APGD-T80", "BPDA160", "APGD-T160"]


def test_it_counts_what_each_breaks_of_what_the_first_suite_left():
    first = _res(0, [("DiffPure", [1, 1, 1, 1, 1, 0], A80, True)])
    again = _res(1, [("DiffPure", [1, 0, 0, 1, 1, 1], A80, True)])  # breaks 2 of the 5 the first left
    longer = (160, _res(0, [("DiffPure", [1, 1, 0, 0, 0, 0], A160, True)]))  # breaks 3 of them
    (e,) = redraw_control(first, again, longer)
    assert (e["n"], e["of"], e["first_robust"], e["again_robust"], e["both_robust"]) == (6, 5, 5, 4, 3)
    assert (e["again_broke"], e["longer_steps"], e["longer_broke"]) == (2, 160, 3)
    # image 2 broken by both; 3 and 4 by the longer suite only; 1 by the second draw only
    assert (e["only_longer"], e["only_again"], e["p"]) == (2, 1, 1.0) and e["seeds"] == [0, 1]
    (e,) = redraw_control(first, again)  # without a longer suite: the second draw alone
    assert e["again_broke"] == 2 and e["longer_broke"] is None and "p" not in e


def test_unfinished_groups_are_left_out_and_mismatches_refused():
    first = _res(0, [("ADP", [1, 1], A80, True), ("DiffPure", [1, 0], A80, True)])
    assert redraw_control(first, _res(1, [("ADP", [1, 0], A80[:1], False)])) == []
    running = (160, _res(0, [("ADP", [1, 1], A160[:3], False)]))
    (e,) = redraw_control(first, _res(1, [("ADP", [1, 0], A80, True)]), running)
    assert e["again_broke"] == 1 and e["longer_broke"] is None  # the longer suite has not finished: not compared
    for again, match in ((_res(1, [("ADP", [1, 1], A80, True)], fp="other"), "other images"),
                         (_res(0, [("ADP", [1, 1], A80, True)]), "both runs have seed 0"),
                         ({**_res(1, [("ADP", [1, 1], A80, True)]), "meta": {"data_fingerprint": "d", "seed": 1,
                                                                              "models": {"score": "x"}}}, "other models"),
                         (_res(1, [("TRADES", [1, 1], A80, True)]), "TRADES at ℓ∞ ε=0.2: the first run has no such row"),
                         (_res(1, [("ADP", [1, 1], A160, True)]), "ran other suites"),
                         ({**_res(1, [("ADP", [1, 1], A80, True)]), "rows": [{"seed": 0}]}, "rows of several seeds")):
        with pytest.raises(ValueError, match=match):
            redraw_control(first, again)


def test_the_script_refuses_bad_inputs_in_one_line(tmp_path, capsys):
    from script_module import load_script  # tests/script_module.py

    rr = load_script("record_redraws")
    assert rr.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("record_redraws:") and "holds no results.json" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    assert rr.main([str(tmp_path), "--book", str(tmp_path / "nobook"), "--out", str(tmp_path / "out")]) == 2
    from pursamere.evaluation.results import SCHEMA

    for seed in (0, 1):  # two folders of two seeds: the merged table would keep the first's meta
        (tmp_path / f"s{seed}").mkdir()
        meta = {"schema": SCHEMA, "n": 2, "seed": seed, "data_fingerprint": "d"}
        (tmp_path / f"s{seed}" / "results.json").write_text(json.dumps({"meta": meta, "rows": [], "worst_case": []}))
    capsys.readouterr()
    assert rr.main([str(tmp_path / "s1"), str(tmp_path / "s0"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "differ in their seed" in err and "\n" not in err and not (tmp_path / "out").exists()
    assert "\n" not in capsys.readouterr().err.strip() and not (tmp_path / "out").exists()


def test_the_recorded_redraws_are_what_the_recorded_tables_give():
    """book/data/digits-redraws/redraws.json is redraw_control of the recorded seed-1 rows against the recorded 80-
    and 160-step tables: re-recording either table without re-running scripts/record_redraws.py fails here."""
    import json
    from pathlib import Path

    from pursamere.evaluation.results import read_results

    data = Path(__file__).resolve().parents[1] / "book" / "data"
    rec = json.loads((data / "digits-redraws" / "redraws.json").read_text())
    got = redraw_control(read_results(data / "digits-whole-test"), read_results(data / "digits-redraws"),
                         (160, read_results(data / "digits-whole-test-160")))
    assert got == rec["rows"] and {e["defence"] for e in got} >= {"DiffPure-style", "ADP"}
