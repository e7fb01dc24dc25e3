"""scripts/run_status.py: what a results folder has finished and the row it is inside, read without writing."""
import json

import torch

from pursamere.io import save_checkpoint
from script_module import load_script  # tests/script_module.py

EPS = 8 / 255  # a row's key writes it as 0.0313725, its group as 0.03137254901960784: they must still meet


def _group(defence, survived, attacks, planned, complete, cascaded=(), clean=1.0):
    return {"defence": defence, "norm": "inf", "eps": EPS, "n": len(survived), "survived": survived, "clean_acc": clean,
            "attacks": attacks, "planned": planned, "complete": complete, "deterministic": True,
            "cascaded": list(cascaded)}


def _in_progress(folder, attack, done, flags, seconds, defence="ERE descent", stem="0"):
    save_checkpoint(folder / "rows-in-progress" / (stem * 16 + ".ckpt"),
                    {"identity": "x", "key": f"{defence}|{attack}|inf|{EPS:.6g}", "done": done,
                     "flags": torch.tensor(flags), "points": torch.zeros(0, 1, 8, 8), "seconds": float(seconds)})


def test_status_reports_groups_rows_in_progress_and_the_queue(tmp_path, capsys, monkeypatch):
    rs = load_script("run_status")
    monkeypatch.setattr(rs, "live_jobs", lambda root: {"cifar-x", "cifar-y", "cifar-z"})
    job = tmp_path / "cifar-x"
    job.mkdir()
    survived = [True] * 6 + [False] * 4
    (job / "results.json").write_text(json.dumps({"meta": {}, "rows": [{"key": f"ERE descent|BPDA20|inf|{EPS:.6g}"}],
                                                  "worst_case": [
        _group("ERE descent", survived, ["BPDA20", "APGD-CE20"], ["BPDA20", "APGD-CE20", "exact10"], False,
               cascaded=["APGD-CE20"]),
        _group("PGD-AT", [True] * 3 + [False] * 7, ["BPDA20"], ["BPDA20"], True)]}))
    # the third attack, cascaded over the 6 survivors: 2 images done in 400 s, 1 broken → 4 left, about 13 min
    _in_progress(job, "exact10", 2, [True, False], 400)
    _in_progress(job, "BPDA20", 5, [True] * 5, 90, stem="1")  # a stale copy of a finished row: not what is running
    first = tmp_path / "cifar-y"  # inside its second attack, which (like its first) attacks all 9 clean images
    first.mkdir()
    (first / "results.json").write_text(json.dumps({"meta": {}, "rows": [], "worst_case": [
        _group("ERE descent", survived, ["gPGD20"], ["gPGD20", "BPDA20", "APGD-CE20"], False, clean=0.9)]}))
    _in_progress(first, "BPDA20", 3, [True, True, True], 30)
    done = tmp_path / "cifar-z"  # every row finished: its obfuscation checks are running
    done.mkdir()
    (done / "results.json").write_text(json.dumps({"meta": {}, "rows": [], "worst_case": [
        _group("PurSAMERE", [False] * 10, ["BPDA20"], ["BPDA20"], True)]}))
    (done / "checks-in-progress").mkdir()
    (done / "checks-in-progress" / ("a" * 16 + ".json")).write_text("{}")
    attack = {"attack": {"name": "it", "gradient": "exact", "kind": "pgd", "steps": 10}, "eps": 2 * 8 / 255}
    (done / "checks-in-progress" / ("b" * 16 + ".json")).write_text(json.dumps(
        {"ident": {"eps": 8 / 255}, "attack": json.dumps(attack), "flags": [True]}))
    rung = tmp_path / "cifar80-q"  # a longer suite's job that has just copied its finished source: no checks to run
    rung.mkdir()
    (rung / "results.json").write_text(json.dumps({"meta": {}, "rows": [], "worst_case": [
        _group("PurSAMERE", [True] + [False] * 9, ["BPDA20"], ["BPDA20"], True)]}))
    (tmp_path / "queue.log").write_text("".join(f"2026-12-02T09:10:11Z {j}: start\n" for j in ("cifar-x", "cifar-z",
                                                                                             "cifar-w", "cifar-v")))
    monkeypatch.setattr(rs, "live_jobs", lambda root: {"cifar-x", "cifar-y", "cifar-z", "cifar-w", "cifar80-q"})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert rs.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar-x  [running]" in out and "cifar-y  [running]" in out  # cifar-y: started by hand, not by the queue
    assert "ERE descent · ℓ∞ 0.03137: 2 of 3 attacks, ≤ 60.0% (6 of 10)" in out
    assert "inside exact10: 2 of 6 images, broke 1, 400 s so far, about 13 min left" in out
    assert "inside BPDA20: 3 of 9 images, broke 0, 30 s so far, about 1 min left" in out
    assert "PGD-AT · ℓ∞ 0.03137: complete, 30.0% (3 of 10)" in out and "inside its first attack" not in out
    assert out.count("every row finished: the job is running its obfuscation checks") == 1  # cifar-z only
    assert out.count("the job is starting its next attacks") == 1  # cifar80-q
    assert "check attacks finished in the checks under way: 2 (kept): it (exact, 10 steps, ε × 2)" in out
    assert "cifar-w  [running]: no results.json yet" in out and "cifar-v" not in out  # started, never wrote, not running
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    # a group whose every planned attack is recorded but whose row is in progress (a longer suite's copy) is not
    # "in its checks"; a queue killed between start and exit says so; an ended job shows its exit
    _in_progress(done, "BPDA40", 1, [True], 10, defence="PurSAMERE")
    (tmp_path / "queue.log").write_text("2026-12-02T09:10:11Z cifar-x: start\n2026-12-02T09:10:11Z cifar-z: start\n"
                                        "2026-12-02T10:10:11Z cifar-z: exit 0\n")
    monkeypatch.setattr(rs, "live_jobs", lambda root: {"cifar-z"})
    assert rs.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar-x  [started, not running]" in out and "cifar-z  [running]" in out
    assert "obfuscation checks" not in out and "inside BPDA40: 1 of 10 images" in out
    # an unreadable folder is named and does not hide the others; a root that is not there is one error line
    (first / "results.json").write_text("{not json")
    assert rs.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar-y\n  unreadable: JSONDecodeError" in out and "cifar-x" in out and "cifar-z" in out
    assert rs.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_live_jobs_finds_this_machines_ensemble_processes(tmp_path):
    import subprocess
    import sys
    import time

    rs = load_script("run_status")
    # a stand-in process whose command line names a job folder under tmp_path the way the queue's jobs do
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "pursamere", "ensemble",
                          "--out", str(tmp_path / "cifar-q")])
    try:
        live, waited = rs.live_jobs(tmp_path), 0
        while live is not None and "cifar-q" not in live and waited < 100:  # until its exec has set its command line
            time.sleep(0.1)
            live, waited = rs.live_jobs(tmp_path), waited + 1
        assert live is None or "cifar-q" in live
    finally:
        p.kill()
        p.wait()
    assert rs.live_jobs(tmp_path) in (None, set())


def test_live_jobs_reads_a_relative_out_against_the_jobs_own_directory(tmp_path, monkeypatch):
    """A job started as ``--out results/whole/NAME`` from the checkout is found from any working directory (the
    GPU take refuses a folder such a job writes), and so is ``--out=...``."""
    import subprocess
    import sys
    import time

    rs = load_script("run_status")
    (tmp_path / "whole").mkdir()
    jobs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "pursamere", *out], cwd=tmp_path)
            for out in (["--out", "whole/cifar-q"], ["--out=whole/cifar-r"])]
    try:
        monkeypatch.chdir(tmp_path.parent)
        for _ in range(100):  # a child may not show its command line the instant Popen returns
            seen = rs.live_jobs(tmp_path / "whole")
            if {"cifar-q", "cifar-r"} <= seen:
                break
            time.sleep(0.05)
        assert {"cifar-q", "cifar-r"} <= seen
    finally:
        for job in jobs:
            job.kill()
            job.wait()
