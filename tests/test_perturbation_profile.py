"""scripts/perturbation_profile.py: what a purifier's ℓ∞ ball cannot undo of an attack's end points."""
import json

import pytest
import torch
from script_module import load_script  # tests/script_module.py


@pytest.fixture(scope="module")
def pp():
    return load_script("perturbation_profile")


def test_profile_counts_the_coordinates_and_the_l1_mass_outside_the_ball(pp):
    x = torch.full((3, 1, 2, 2), 0.5)
    pts = x.clone()
    pts[0, 0, 0, 0] += 0.4  # one coordinate far (0.3 beyond a radius of 0.1), one inside the ball
    pts[0, 0, 1, 1] -= 0.05
    pts[1, 0, 0, 1] += 0.2
    attacked = torch.tensor([True, True, False])  # the third is not part of the row
    out = pp.profile(x, pts, attacked, 0.1)
    per = out["per_image"]
    assert out["images"] == 2 and out["coordinates"] == 4
    assert per["moved"] == [2, 1] and per["moved_beyond_radius"] == [1, 1]
    assert per["l1_outside_ball"] == pytest.approx([0.3, 0.1]) and per["l1"] == pytest.approx([0.45, 0.2])
    assert per["share_beyond_radius"] == pytest.approx([0.4 / 0.45, 1.0]) and per["linf"] == pytest.approx([0.4, 0.2])
    assert out["median"]["l1_outside_ball"] == pytest.approx(0.2)


def test_bad_inputs_get_one_line(pp, tmp_path, capsys):
    job = tmp_path / "job"
    job.mkdir()
    from pursamere.evaluation.results import SCHEMA

    meta = {"schema": SCHEMA, "n": 4, "data_fingerprint": "x"}
    (job / "results.json").write_text(json.dumps({"meta": meta, "rows": [], "worst_case": []}))
    out = tmp_path / "p.json"
    assert pp.main([str(job), "d|A|1|12", "--radius", "12/255", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perturbation_profile:") and "no finished row" in err and "\n" not in err and not out.exists()
    with pytest.raises(SystemExit):
        pp.main([str(job), "d|A|1|12", "--radius", "twelve", "--out", str(out)])
    assert "--radius 'twelve'" in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["cifar10-cpu-table", "cifar10-cpu-eq17"])
def test_the_recorded_profiles_are_of_the_images_their_row_attacked(folder):
    """Each recorded profile covers exactly the images its row's attack was given (those BPDA40 left at ℓ1), on the
    ℓ1 sphere of radius 12, and bounds every one away from the clean image: it could not be of another row or job."""
    from pathlib import Path

    book = Path(__file__).resolve().parents[1] / "book" / "data" / folder
    prof = json.loads((book / "l1-profile.json").read_text())
    res = json.loads((book / "results.json").read_text())
    rows = {r["key"]: r for r in res["rows"]}
    row = rows.get(prof["row"])
    assert row is not None, f"{prof['row']} is not a row of {folder}"
    before = rows[row["key"].replace(row["attack"], "BPDA40")]
    assert prof["data_fingerprint"] == res["meta"]["data_fingerprint"]
    assert prof["images"] == sum(before["survived"]) > 0 and sum(row["survived"]) == 0
    per = prof["per_image"]
    assert all(abs(v - 12) < 1e-3 for v in per["l1"]) and len(per["l1"]) == prof["images"]
    assert all(0 < v <= 12 for v in per["l1_outside_ball"])
