"""scripts/run_status.py: what a results folder has finished and the row it is inside, read without writing."""
import json

import torch

from pursamere.io import save_checkpoint
from script_module import load_script  # tests/script_module.py


def _group(defence, survived, attacks, planned, complete, deterministic=True):
    return {"defence": defence, "norm": "inf", "eps": 0.1, "n": len(survived), "survived": survived,
            "attacks": attacks, "planned": planned, "complete": complete, "deterministic": deterministic}


def test_status_reports_groups_rows_in_progress_and_the_queue(tmp_path, capsys):
    rs = load_script("run_status")
    job = tmp_path / "digits-0.1-x"
    job.mkdir()
    survived = [True] * 6 + [False] * 4
    res = {"meta": {}, "rows": [], "worst_case": [
        _group("ERE descent", survived, ["BPDA80", "APGD-CE80"], ["BPDA80", "APGD-CE80", "exact40"], False),
        _group("PGD-AT", [True] * 3 + [False] * 7, ["BPDA80"], ["BPDA80"], True)]}
    (job / "results.json").write_text(json.dumps(res))
    # the third attack of the first group, inside its cascade over the 6 survivors: 4 images done, 1 broken, 40 s
    save_checkpoint(job / "rows-in-progress" / ("0" * 16 + ".ckpt"),
                    {"identity": "x", "key": "ERE descent|exact40|inf|0.1", "done": 4,
                     "flags": torch.tensor([True, False, True, True]), "points": torch.zeros(0, 1, 8, 8), "seconds": 40.0})
    done = tmp_path / "digits-0.2-y"
    done.mkdir()
    (done / "results.json").write_text(json.dumps({"meta": {}, "rows": [], "worst_case": [
        _group("PurSAMERE", [False] * 10, ["BPDA80"], ["BPDA80"], True)]}))
    (tmp_path / "queue.log").write_text("2026-12-02T09:10:11Z digits-0.1-x: start\n"
                                        "2026-12-02T09:10:11Z digits-0.2-y: start\n"
                                        "2026-12-02T09:10:11Z cifar-z: start\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert rs.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "digits-0.1-x  [running]" in out
    assert "ERE descent · ℓ∞ 0.1: 2 of 3 attacks, ≤ 60.0% (6 of 10)" in out
    assert "inside exact40: 4 of 6 images, broke 1, 40 s so far, ≈ 0 min left" in out
    assert "PGD-AT · ℓ∞ 0.1: complete, 30.0% (3 of 10)" in out
    assert "every row finished: the job is running its obfuscation checks" in out  # digits-0.2-y
    assert out.count("obfuscation checks") == 1 and "cifar-z  [running]: no results.json yet" in out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    # a finished job's queue line, and a root that is not there
    (tmp_path / "queue.log").write_text("2026-12-02T09:10:11Z digits-0.2-y: start\n2026-12-02T10:10:11Z digits-0.2-y: exit 0\n")
    assert rs.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "digits-0.2-y  [exit 0]" in out and "obfuscation checks" not in out
    assert rs.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
