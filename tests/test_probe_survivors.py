"""scripts/probe_survivors.py: the candidates it tries and its refusals (one line each, no run started)."""
import json
from pathlib import Path

import pytest

from script_module import load_script  # tests/script_module.py

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe():
    return load_script("probe_survivors")


def test_candidates_scale_with_the_point_and_are_exact_gradient_apgd(probe):
    c = probe.candidates(80)
    c.pop("the suite doubled")  # groups of attacks: their own tests below
    c.pop("the exact tail")
    assert all(len(v) == 1 for v in c.values())
    c = {k: v[0] for k, v in c.items()}
    assert {a.name for a in c.values()} == {"APGD-CE80→exact-APGD-CE80", "APGD-CE80→exact-APGD-DLR40", "exact-APGD-T80",
                                             "exact-APGD-T40-9cls", "exact-APGD-T160", "Square5000",
                                             "Square10000"}
    for q in (5000, 10000):
        square = c.pop(f"Square, {q} queries")
        assert square.kind == "square" and square.queries == q and square.cascade
    assert all(a.gradient == "exact" and a.cascade and a.kind.startswith("apgd") for a in c.values())
    assert c["exact APGD-T, 9 targets"].targets == 9 and c["warm exact APGD-DLR"].warm_from == "APGD-CE80"
    # a point with restarts names its APGD-CE by them: the warm candidates start from that attack's end points
    assert probe.candidates(80, 2)["warm exact APGD-CE, full steps"][0].warm_from == "APGD-CE80×2"


def test_the_doubled_suite_is_the_strong_check_cascaded_after_the_point(probe):
    """Twice the steps and the restarts (Budget.doubled, as --strong), every attack only on the point's survivors,
    and no name the point's suite already uses (its recorded rows would be taken for the candidate's)."""
    from pursamere.evaluation.suite import standard_suite
    from pursamere.experiments.protocols import budget_at
    suite = probe.candidates(80)["the suite doubled"]
    assert [a.name for a in suite] == [a.name for a in standard_suite(budget_at(160, 2))]
    assert suite[1].name == "BPDA160" and suite[2].name == "APGD-CE160×2" and all(a.cascade for a in suite)
    point = {a.name for a in standard_suite(budget_at(80, 1))}
    assert not point & {a.name for a in suite}


def test_the_exact_tail_is_the_doubled_points_exact_apgd_with_its_own_starts(probe):
    """APGD-CE from the point's APGD-CE at the point's steps and targeted APGD at twice them, on the exact gradient,
    named apart from the point's and the doubled point's attacks (their starts are salted by the name)."""
    from pursamere.evaluation.suite import standard_suite
    from pursamere.experiments.protocols import budget_at
    tail = probe.candidates(80)["the exact tail"]
    assert [a.name for a in tail] == ["APGD-CE80→exact-APGD-CE80-tail", "exact-APGD-T160-tail"]
    assert all(a.gradient == "exact" and a.cascade and a.kind.startswith("apgd") for a in tail)
    assert tail[0].warm_from == "APGD-CE80" and tail[0].steps == 80 and tail[1].steps == 160
    assert not {a.name for a in tail} & {a.name for b in (budget_at(80), budget_at(160)) for a in standard_suite(b)}
    assert probe.candidates(80, 2)["the exact tail"][0].warm_from == "APGD-CE80×2"


def test_the_recorded_probe_is_what_the_suite_was_chosen_from(probe):
    """book/data's probe: targeted exact APGD at the full step count broke what twice the steps broke."""
    rec = json.loads((ROOT / "book" / "data" / "digits-convergence" / "probe-80x1.json").read_text())
    got = {k: set(v["broke"]) for k, v in rec["candidates"].items()}
    assert got["exact APGD-T, full steps"] == got["exact APGD-T, twice the steps"]
    assert got["exact APGD-T, 9 targets"] <= got["exact APGD-T, full steps"]
    assert set(got) <= set(probe.candidates(rec["steps"]))


def test_bad_inputs_get_one_line(probe, tmp_path, capsys):
    assert probe.main(["--point", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "not a recorded convergence point" in err and len(err.splitlines()) == 1
    point = ROOT / "book" / "data" / "digits-convergence" / "80x1"
    assert probe.main(["--point", str(point), "--out", str(tmp_path / "o"), "--only", "a spell"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a spell" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before anything was written
    broken = tmp_path / "broken"
    broken.mkdir()
    rec = json.loads((point / "results.json").read_text())
    rec["meta"]["preset"] = "no-such-preset"
    (broken / "results.json").write_text(json.dumps(rec))
    assert probe.main(["--point", str(broken), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a recorded convergence point" in err and len(err.splitlines()) == 1


def test_a_candidate_named_like_the_points_attack_is_refused(probe, tmp_path, capsys):
    """Its recorded row would be reused as the candidate's: one line, nothing run or written."""
    point = ROOT / "book" / "data" / "digits-convergence" / "80x1"
    rec = json.loads((point / "results.json").read_text())
    rec["meta"]["attack_order"] = rec["meta"]["attack_order"] + ["exact-APGD-T80"]
    fake = tmp_path / "point"
    fake.mkdir()
    (fake / "results.json").write_text(json.dumps(rec))
    assert probe.main(["--point", str(fake), "--out", str(tmp_path / "o"), "--only", "exact APGD-T, full steps"]) == 2
    err = capsys.readouterr().err.strip()
    assert "exact-APGD-T80" in err and "already the point's" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_the_recorded_probes_of_160_steps_broke_only_what_some_ladder_run_broke():
    """Chapter 7's reading of probe-160x1.json: the doubled suite broke nothing with a gradient (only Square), and no
    probe broke an image that every run of the ladder had left, so the union of every run did not move."""
    data = ROOT / "book" / "data" / "digits-convergence"
    rec = json.loads((data / "probe-160x1.json").read_text())
    doubled = rec["candidates"]["the suite doubled"]
    assert rec["steps"] == 160 and doubled["survivors_before"] == 13
    assert {a for a in doubled["broke_by"].values()} <= {a for a in doubled["attack"] if a.startswith("Square")}
    from pursamere.experiments.studies import ladder_union
    curve = json.loads((data / "convergence.json").read_text())["curve"]
    ere = next(p["defence"] for p in curve if p["defence"].startswith("ERE descent"))
    union = {i for i, s in enumerate(ladder_union(curve, ere)["survived"]) if s}
    assert len(union) == 11
    for f in ("probe-160x1.json", "probe-80x1-square.json"):
        for name, c in json.loads((data / f).read_text())["candidates"].items():
            assert not set(c["broke"]) & union, (f, name)
