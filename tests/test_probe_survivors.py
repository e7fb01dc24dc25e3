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
    assert {a.name for a in c.values()} == {"APGD-CE80→exact-APGD-CE80", "APGD-CE80→exact-APGD-DLR40", "exact-APGD-T80",
                                             "exact-APGD-T40-9cls", "exact-APGD-T160"}
    assert all(a.gradient == "exact" and a.cascade and a.kind.startswith("apgd") for a in c.values())
    assert c["exact APGD-T, 9 targets"].targets == 9 and c["warm exact APGD-DLR"].warm_from == "APGD-CE80"
    # a point with restarts names its APGD-CE by them: the warm candidates start from that attack's end points
    assert probe.candidates(80, 2)["warm exact APGD-CE, full steps"].warm_from == "APGD-CE80×2"


def test_the_recorded_probe_is_what_the_suite_was_chosen_from(probe):
    """book/data's probe: targeted exact APGD at the full step count broke what twice the steps broke."""
    rec = json.loads((ROOT / "book" / "data" / "digits-convergence" / "probe-80x1.json").read_text())
    got = {k: set(v["broke"]) for k, v in rec["candidates"].items()}
    assert got["exact APGD-T, full steps"] == got["exact APGD-T, twice the steps"]
    assert got["exact APGD-T, 9 targets"] <= got["exact APGD-T, full steps"]
    assert set(got) == set(probe.candidates(rec["steps"]))


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
