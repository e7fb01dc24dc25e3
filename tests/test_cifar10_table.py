"""The cifar10-cpu preset's table: its protocol, the CLI around it, merged tables and the chapter's frames."""
import itertools
import json
from pathlib import Path

import pytest

from pursamere.evaluation.defences import Family
from pursamere.evaluation.suite import Role
from pursamere.experiments import cifar10_cpu as C
from pursamere.experiments.presets import CIFAR10_CPU, get_preset

from fake_data import fake_cifar  # tests/fake_data.py

ROOT = Path(__file__).resolve().parents[1]


def test_preset_is_registered_and_never_trains():
    p = get_preset("cifar10-cpu")
    assert p is CIFAR10_CPU and p.models == "shipped" and p.purify == C.PURIFY
    assert p.threats == {"inf": 8 / 255, 2: 0.5, 1: 12.0} and p.validation_size == C.CIFAR10_CPU.validation_size
    b = p.ensemble.budget  # at least the paper's step counts
    assert b.gpgd_steps >= 20 and b.bpda_steps >= 20 and b.apgd_steps >= 20


def test_key_rows_and_which_norms_they_meet():
    pr = C.table_protocol(CIFAR10_CPU, "key", n=256, have=("plain", "adversarial"))
    fam = {d.label: d.kind() for d in pr.defences}
    assert set(fam.values()) == {Family.UNDEFENDED, Family.ADVERSARIAL_TRAINING, Family.PURSAMERE, Family.ERE_DESCENT,
                                 Family.DIFFPURE}
    by = {d.kind(): d for d in pr.defences}
    # ℓ2 0.5 and ℓ1 12 for the best purifier and adversarial training only; ℓ1 gets ℓ1-APGD, not Square (ℓ∞/ℓ2 only)
    for k in (Family.ERE_DESCENT, Family.ADVERSARIAL_TRAINING):
        assert set(by[k].attacks) == {"inf", "2", "1"}
        assert Role.APGD in by[k].attacks["1"] and Role.SQUARE not in by[k].attacks["1"]
    assert set(by[Family.PURSAMERE].attacks) == {"inf"} and by[Family.PURSAMERE].purifier.rho == pytest.approx(6 / 255)
    assert by[Family.ERE_DESCENT].purifier.rho == 0 and by[Family.ERE_DESCENT].checks
    assert not by[Family.DIFFPURE].purifier.fixed_noise and pr.images.n == 256


def test_then_runs_the_longer_suite_on_what_the_first_left_at_linf_only():
    from pursamere.experiments import protocols

    first = C.table_protocol(CIFAR10_CPU, "key", n=256, have=("plain", "adversarial"))
    pr = C.table_protocol(CIFAR10_CPU, "key", n=256, have=("plain", "adversarial"), then=protocols.budget_at(40))
    assert [str(t.norm) for t in pr.threats] == ["inf"]  # the ℓ1 suite runs at 40 already: same names
    linf = [a for a in first.attacks if a.norms is None or "inf" in a.norms]
    names = [a.name for a in pr.attacks]
    assert [a.name for a in linf] == names[:len(linf)]  # the recorded 20-step rows stay reusable, in their order
    longer = pr.attacks[len(linf):]
    assert [a.name for a in longer][:2] == ["gPGD40", "BPDA40"] and all(a.cascade for a in longer)
    assert len(set(names)) == len(names) and pr.plan["then"]["apgd_steps"] == 40 and "at ℓ∞ only" in pr.describe
    assert [d.label for d in pr.defences] == [d.label for d in first.defences]


def test_then_with_several_rungs_runs_each_suite_on_what_all_before_it_left():
    """--then-steps 40,80: the 20-step suite, the 40-step one and the 80-step one, each cascaded after all before it;
    the 40-step table's rows are a prefix (reused by a cifar80-* job started from its cifar40-* folder)."""
    from pursamere.experiments import protocols

    forty = C.table_protocol(CIFAR10_CPU, "key", n=256, have=("plain",), then=protocols.budget_at(40))
    both = C.table_protocol(CIFAR10_CPU, "key", n=256, have=("plain",), then=(protocols.budget_at(40), protocols.budget_at(80)))
    names = [a.name for a in both.attacks]
    assert names[:len(forty.attacks)] == [a.name for a in forty.attacks] and len(set(names)) == len(names)
    rung = both.attacks[len(forty.attacks):]
    assert [a.name for a in rung][:2] == ["gPGD80", "BPDA80"] and rung[-1].name == "exact-APGD-T80-long"
    assert all(a.cascade for a in rung) and [t.norm for t in both.threats] == ["inf"]
    assert [b["apgd_steps"] for b in both.plan["then"]] == [40, 80] and forty.plan["then"]["apgd_steps"] == 40
    assert "80 steps (40 on the exact gradient, Square400) on the images all before it left" in both.describe
    assert protocols.then_budgets(None) == () and protocols.then_budgets(protocols.budget_at(40)) == (protocols.budget_at(40),)


def test_rows_without_their_classifier_are_left_out_and_said():
    pr = C.table_protocol(CIFAR10_CPU, "key", have=("plain",))
    assert all(d.classifier == "plain" for d in pr.defences)
    assert "adversarial training (FGSM-RS)" in pr.plan["left_out"] and "Left out" in pr.describe
    rest = C.table_protocol(CIFAR10_CPU, "rest", have=("plain", "adversarial"))
    labels = [d.label for d in rest.defences]
    assert sum(d.kind() == Family.PURSAMERE for d in rest.defences) == 2  # ε_pur 8 and 16 /255
    assert any(d.classifier == "adversarial" and d.purifier is not None for d in rest.defences)
    assert any("ADP (fixed seed)" in lab for lab in labels)
    with pytest.raises(ValueError, match="part"):
        C.table_protocol(CIFAR10_CPU, "all")


@pytest.mark.skipif(not (ROOT / "weights" / "cifar10" / "score.safetensors").exists(), reason="CIFAR-10 score model not shipped")
def test_cli_runs_the_table_on_the_shipped_models(tmp_path, monkeypatch):
    from pursamere.cli import main

    fake_cifar(tmp_path / "data", {"test": 14})  # 140 images: 128 validation, 12 for the table
    monkeypatch.chdir(tmp_path)  # the decoded-image cache goes to ./runs
    out = tmp_path / "table"
    rc = main(["ensemble", "--preset", "cifar10-cpu", "--data-root", str(tmp_path / "data"), "--n", "3", "--steps", "1",
               "--only", "undefended", "--quiet", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["preset"] == "cifar10-cpu" and res["meta"]["n"] == 3
    assert {r["defence"] for r in res["rows"]} == {"undefended"} and res["meta"]["models"]["score"]
    assert res["worst_case"][0]["complete"]
    # the convergence check resumes the same folder: the first suite's rows reused, the longer one cascaded after them
    first = {r["key"]: r for r in res["rows"]}
    rc = main(["ensemble", "--preset", "cifar10-cpu", "--data-root", str(tmp_path / "data"), "--n", "3", "--steps", "1",
               "--then-steps", "4", "--only", "undefended", "--quiet", "--resume", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert all(first[k] == r for k, r in ((r["key"], r) for r in res["rows"]) if k in first)
    assert {r["attack"] for r in res["rows"]} > {r["attack"] for r in first.values()} and "BPDA4" in {r["attack"] for r in res["rows"]}
    assert res["meta"]["plan"]["then"]["apgd_steps"] == 4 and res["worst_case"][0]["complete"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "argument --steps: expected a whole number >= 1, got 0"),
    (["--restarts", "2"], "--restarts needs --steps"),
    (["--minutes", "0"], "argument --minutes: expected a finite number > 0, got '0'"),
    (["--n", "0"], "argument --n/--n-images: expected a whole number >= 1, got 0"),
    (["--batch-size", "-8"], "argument --batch-size: expected a whole number >= 1, got -8"),
    (["--eps", "abc"], "argument --eps: expected a number > 0, got 'abc'"),
    (["--eps", "0.1,-0.2"], "argument --eps: expected a finite number > 0, got '-0.2'"),
    (["--eps", "nan"], "argument --eps: expected a finite number > 0, got 'nan'"),
    (["--preset", "cifar10-cpu", "--eps", "0.03"], "attacks at ℓ∞"),
    (["--purifier-classifier", "clean"], "applies to --preset cifar10-cpu, not tiny"),
    (["--then-steps", "20", "--steps", "20"], "must exceed the one before it (the first suite's are 20"),
    (["--then-steps", "21", "--steps", "20"], "its attacks exact-APGD-T10, exact10 would repeat an earlier suite's"),
    (["--then-steps", "160", "--strong"], "choose one"),
    (["--then-steps", "40", "--preset", "cifar10-cpu", "--steps", "40"], "the first suite's are 40"),
    (["--then-steps", "80,40", "--steps", "20"], "--then-steps 80,40: each suite's steps must exceed the one before it"),
    (["--then-steps", "40,x"], "argument --then-steps: expected a whole number >= 1, got 'x'"),
    (["--classifier", "mine.py:make"], "--classifier: preset tiny uses its own models"),
    (["--score-checkpoint", "ckpt.pth"], "--score-checkpoint: preset tiny uses its own models"),
    (["--normalization", "cifar10"], "--normalization: preset tiny uses its own models"),
    (["--best", "{rho: 0}"], "--best '{rho: 0}' is not valid JSON"),
])
def test_ensemble_budget_options_refuse_bad_values(args, message, capsys):
    from pursamere.cli import main

    parse_time = "argument --" in message  # argparse refuses these before any run
    with pytest.raises(SystemExit) if parse_time else _no_raise():
        rc = main(["ensemble", "--preset", "tiny", "--out", "/nonexistent/x", *args])
        assert rc != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_pursamere_traceback_shows_what_the_one_line_hides(monkeypatch, capsys):
    from pursamere.cli import main

    argv = ["train-classifier", "--preset", "tiny", "--beta", "3"]
    assert main(argv) == 2 and "needs --trades" in capsys.readouterr().err
    monkeypatch.setenv("PURSAMERE_TRACEBACK", "1")
    with pytest.raises(ValueError, match="needs --trades"):
        main(argv)


def test_a_results_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from pursamere.cli import main
    from pursamere.experiments import engine

    def no_work(*a, **k):
        raise AssertionError("models were prepared for a run that cannot write its results")

    monkeypatch.setattr(engine, "_artifacts", no_work)
    (tmp_path / "a-file").write_text("x")
    assert main(["ensemble", "--preset", "tiny", "--n", "2", "--out", str(tmp_path / "a-file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create the results folder" in err and "a-file is a file" in err


@pytest.mark.parametrize("argv, message", [
    (["train-score", "--preset", "tiny", "--minutes", "3", "--out", "/nonexistent/x"], "train-score does not take --out, --minutes"),
    (["train-score", "--preset", "cifar10-ncsnv2", "--score-checkpoint", "c.pth"], "preset cifar10-ncsnv2 trains nothing"),
    (["train-classifier", "--preset", "tiny", "--beta", "3"], "--beta is TRADES' β: it needs --trades"),
    (["train-classifier", "--preset", "tiny", "--pgd-steps", "3"], "plain training has none"),
    (["demo", "--toy", "--weights", "shipped", "--classifier", "m.py:f"], "demo --toy does not take --weights, --classifier"),
    (["evaluate", "--preset", "tiny", "--strong"], "--strong goes with --purifier"),
    (["evaluate", "--preset", "tiny", "--purifier", "m.py:f", "--minutes", "2", "--attacks", "gpgd20"],
     "evaluate --purifier does not take --minutes, --attacks"),
    (["evaluate", "--preset", "tiny", "--purifier", "m.py:f", "--score-checkpoint", "c.pth"],
     "--score-checkpoint: preset tiny has its own score model, and the purifier you give needs none"),
    (["evaluate", "--preset", "tiny", "--purifier", "m.py:f", "--normalization", "cifar10"],
     "--normalization needs --classifier FILE.py:FN (it describes your classifier)"),
])
def test_commands_refuse_options_they_would_ignore(argv, message, capsys):
    """An option a command would not use is refused in one line before any work, never dropped silently."""
    from pursamere.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_purifier_classifier_eq17_needs_the_shipped_weights(capsys, monkeypatch):
    from pursamere.cli import main
    from pursamere.experiments import cifar10_cpu

    monkeypatch.setattr(cifar10_cpu, "shipped_roles", lambda root=None: ("plain", "adversarial"))
    assert main(["ensemble", "--preset", "cifar10-cpu", "--purifier-classifier", "eq17", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eq.-17 classifier is not shipped" in err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fake_part(folder: Path, defence: str, attacks: list, planned: list, flags: list):
    from pursamere.evaluation.results import worst_case

    rows = [{"key": f"{defence}|{a}|inf", "defence": defence, "family": "ERE descent", "classifier": "plain",
             "purifier": None, "deterministic": True, "attack": a, "role": "bpda", "cascade": False, "norm": "inf",
             "eps": 0.1, "n": len(flags), "clean_acc": 1.0, "robust_acc": sum(flags) / len(flags), "ci95": [0, 1],
             "survived": flags} for a in attacks]
    plan = {(defence, "inf", 0.1): planned}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"meta": {"schema": 2, "n": len(flags), "data_fingerprint": "f"},
                                                     "rows": rows, "worst_case": worst_case(rows, plan)}))
    return folder / "results.json"


def test_merged_tables_keep_unfinished_rows_marked(tmp_path):
    from pursamere.evaluation.results import merge_results

    a = _fake_part(tmp_path / "a", "A", ["x", "y"], ["x", "y"], [True, False])
    b = _fake_part(tmp_path / "b", "B", ["x"], ["x", "y"], [True, True])
    res = merge_results([a, b], tmp_path / "m", order=["B", "A"])
    wc = {w["defence"]: w for w in res["worst_case"]}
    assert wc["A"]["complete"] and not wc["B"]["complete"] and [r["defence"] for r in res["rows"]][0] == "B"
    assert "incomplete: 1 of 2 attacks" in (tmp_path / "m" / "table.md").read_text()
    # a planned group with no finished row is listed, not dropped
    res = merge_results([a, b], tmp_path / "m2", expected=[("A", "inf", 0.1), ("C", "inf", 0.1)])
    assert res["not_run"] == [{"defence": "C", "norm": "inf", "eps": 0.1}]
    assert "Not run yet" in (tmp_path / "m2" / "table.md").read_text()


def test_chapter_frames_on_the_recorded_table():
    from pursamere.book import cifar10 as chapter

    path = ROOT / "book" / "data" / "cifar10-cpu-table" / "results.json"
    res = json.loads(path.read_text())
    n = res["meta"]["n"]
    assert n >= 256 and res["meta"]["preset"] == "cifar10-cpu"
    lines = chapter.findings(res)
    assert f"n = {n}" in lines[0]
    incomplete = [w for w in res["worst_case"] if w["norm"] == "inf" and not w.get("complete", True)]
    assert all(f"only {len(w['attacks'])} of" in lines[0] for w in incomplete)  # never shown as a worst case
    paper = chapter.against_paper(res)
    assert set(paper.index.get_level_values(0)) == {"paper", "ours"}
    assert (paper.loc["ours"].clean <= 100).all()
    pairs = chapter.paired_rows(res)
    worst = {w["defence"]: w for w in res["worst_case"] if w["norm"] == "inf"}
    for (_, fa, _, fb), (_, p) in zip([k for k in chapter.key_pairs if chapter._find(res, **k[1]) and chapter._find(res, **k[3])],
                                      pairs.iterrows()):
        a, b = worst[chapter._find(res, **fa)["defence"]], worst[chapter._find(res, **fb)["defence"]]
        # recomputed here from the per-image flags of the two rows
        assert p["A keeps, B loses"] == sum(x and not y for x, y in zip(a["survived"], b["survived"]))
        assert p["B keeps, A loses"] == sum(y and not x for x, y in zip(a["survived"], b["survived"]))
        assert p["both rows complete"] == (a.get("complete", True) and b.get("complete", True))
    # SAM against SAM off: rows that have not run the same attacks are compared on the attacks both ran, not as they are
    sam, ere = chapter._find(res, family="PurSAMERE"), chapter._find(res, family="ERE descent", classifier="plain")
    common = [a for a, b in itertools.takewhile(lambda ab: ab[0] == ab[1], zip(sam["attacks"], ere["attacks"]))]
    fair = [s for s in lines if s.startswith(f"On the {len(common)} attacks both have run")]
    if set(sam["attacks"]) != set(ere["attacks"]):
        assert "do not compare them" in lines[1] and "SAM is ahead" not in lines[1] and len(fair) == 1
        both = [r for r in res["rows"] if r["norm"] == "inf" and r["attack"] in common]
        kept = [sum(all(r["survived"][i] for r in both if r["defence"] == w["defence"]) for i in range(n)) for w in (sam, ere)]
        assert f"SAM {100 * kept[0] / n:.1f}% vs SAM off {100 * kept[1] / n:.1f}%" in fair[0]
        from pursamere.evaluation.results import paired

        flags = [[all(r["survived"][i] for r in both if r["defence"] == w["defence"]) for i in range(n)] for w in (sam, ere)]
        assert ("level: chance explains" in fair[0]) == (paired(*flags)["p"] >= 0.05)  # no verdict chance explains
    else:
        assert not fair


def test_demo_part_is_the_key_rows_at_linf_without_checks():
    pr = C.table_protocol(CIFAR10_CPU, "demo", have=("plain", "adversarial"))
    assert [t.norm for t in pr.threats] == ["inf"]
    assert pr.check_plan is None and not any(d.checks or d.examples for d in pr.defences)
    assert {d.kind() for d in pr.defences} == {Family.UNDEFENDED, Family.ADVERSARIAL_TRAINING, Family.PURSAMERE,
                                               Family.ERE_DESCENT}
    assert CIFAR10_CPU.demo.n_test <= 16 and CIFAR10_CPU.demo.check_gradients == ()


@pytest.fixture(scope="module")
def rt():
    """scripts/record_tables.py as a module."""
    from script_module import load_script  # tests/script_module.py

    return load_script("record_tables")


def test_recorded_tables_restore_into_their_job_folders_and_merge_back(rt, tmp_path):
    """The committed tables are all that outlives a machine: --restore writes each row back into the job folder
    that made it (so a later session --resumes the unfinished ones), never over results, and recording those
    folders again gives the same tables, machine marks included."""
    import shutil

    from pursamere.evaluation.results import load_done, read_results

    book = tmp_path / "book"
    for t in ("digits-whole-test", "cifar10-cpu-table"):
        shutil.copytree(ROOT / "book" / "data" / t, book / t)
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book), "--restore"]) == 0
    recorded = read_results(book / "digits-whole-test")
    job_of = json.loads((book / "digits-whole-test" / "provenance.json").read_text())["job_of"]
    job = next(iter(sorted(set(job_of.values()))))
    done = load_done(tmp_path / "jobs" / job / "results.json", recorded["meta"]["n"], recorded["meta"]["data_fingerprint"])
    assert sorted(done) == sorted(k for k, j in job_of.items() if j == job)
    one = tmp_path / "jobs" / job / "results.json"
    held = one.read_text()
    # a folder that holds results is left as it is (it may hold newer rows), the others are written
    shutil.rmtree(tmp_path / "jobs" / sorted(set(job_of.values()))[-1])
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book), "--restore"]) == 0
    assert one.read_text() == held and (tmp_path / "jobs" / sorted(set(job_of.values()))[-1] / "results.json").is_file()
    # recording from folders that lack recorded rows (a job re-run from scratch, a folder missing) would drop them
    before_prov = (book / "digits-whole-test" / "provenance.json").read_text()
    short = json.loads(held)
    short["rows"] = short["rows"][:1]
    one.write_text(json.dumps(short))
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book)]) == 2
    shutil.rmtree(tmp_path / "jobs" / job)
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book)]) == 2
    assert (book / "digits-whole-test" / "provenance.json").read_text() == before_prov
    one.parent.mkdir()
    one.write_text(held)
    before = {t: {f: (book / t / f).read_text() for f in ("results.json", "table.md")} for t in ("digits-whole-test", "cifar10-cpu-table")}
    prov = {t: json.loads((book / t / "provenance.json").read_text()) for t in before}
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book)]) == 0
    for t in before:
        again_res, was = read_results(book / t), json.loads(before[t]["results.json"])
        assert again_res["rows"] == was["rows"]
        # the meta too (plan, budget: a restored folder has none of its own), in its order, but for where the parts were
        assert [(k, v) for k, v in again_res["meta"].items() if k != "merged_from"] == \
            [(k, v) for k, v in was["meta"].items() if k != "merged_from"]
        assert [Path(m).parent.name for m in again_res["meta"]["merged_from"]] == \
            [Path(m).parent.name for m in was["meta"]["merged_from"]]
        assert (book / t / "table.md").read_text() == before[t]["table.md"]
        again = json.loads((book / t / "provenance.json").read_text())
        assert {k: again[k] for k in ("jobs", "job_of", "machine")} == {k: prov[t][k] for k in ("jobs", "job_of", "machine")}


def test_recording_keeps_the_rows_in_progress_of_unfinished_jobs_and_restore_brings_them_back(rt, tmp_path):
    """A job stopped inside a row loses nothing with the machine: recording keeps its finished batches (safetensors,
    under book/data/in-progress/<job>), --restore writes them back; a finished job keeps none, and what was kept is
    dropped only when its row has finished, never because a folder lacks it."""
    import shutil

    import torch

    from pursamere.evaluation.results import SCHEMA
    from pursamere.evaluation.runner import RowCheckpoint, _file_name, export_progress
    from pursamere.io import atomic_write_json, load_checkpoint, save_checkpoint

    book, jobs = tmp_path / "book", tmp_path / "jobs"
    shutil.copytree(ROOT / "book" / "data" / "digits-whole-test", book / "digits-whole-test")
    assert rt.main([str(jobs), "--book", str(book), "--restore"]) == 0
    open_job, done_job, new_job = "digits-0.1-pursamere", "digits-0.1-ere", "digits-0.3-new"
    # the open job stopped between attacks (whatever the recorded data says of it today): a group not complete
    res = json.loads((jobs / open_job / "results.json").read_text())
    res["worst_case"][0]["complete"] = False
    (jobs / open_job / "results.json").write_text(json.dumps(res))
    flags, points = torch.tensor([True, False, True, True]), torch.rand(4, 1, 8, 8)
    for job in (open_job, new_job):  # the new job was stopped in its first row: it has no results.json yet
        RowCheckpoint(jobs / job / "rows-in-progress" / _file_name("row"), {"key": "row"}).save(4, flags, points)
    save_checkpoint(jobs / done_job / "end-points" / _file_name("src"),  # a finished job's: serve no row
                    {"identity": "x", "attacked": torch.tensor([True, False]), "points": torch.rand(2, 1, 8, 8)})
    assert rt.main([str(jobs), "--book", str(book)]) == 0
    kept = book / "in-progress"
    assert sorted(p.relative_to(kept).parts[:2] for p in kept.rglob("*.safetensors")) == \
        [(open_job, "rows-in-progress"), (new_job, "rows-in-progress")]
    fresh = tmp_path / "fresh"
    assert rt.main([str(fresh), "--book", str(book), "--restore"]) == 0
    back = load_checkpoint(fresh / open_job / "rows-in-progress" / (_file_name("row")))
    assert back["done"] == 4 and torch.equal(back["flags"], flags) and torch.equal(back["points"], points)
    # a folder that lacks the kept state (never restored, or a GPU's folder without it) does not drop it
    shutil.rmtree(jobs / open_job / "rows-in-progress")
    assert rt.main([str(jobs), "--book", str(book)]) == 0
    assert (kept / open_job / "rows-in-progress").is_dir()
    # once its row is finished it is dropped
    assert export_progress(jobs / open_job, kept / open_job, finished_rows={"row"}) == 0 and not (kept / open_job).exists()
    # a job stopped inside its first row, or with nothing run, is unfinished; a complete one is finished
    atomic_write_json(tmp_path / "empty" / "results.json", {"meta": {"schema": SCHEMA}, "rows": [], "worst_case": []})
    assert not rt._finished(tmp_path / "empty") and not rt._finished(jobs / new_job) and rt._finished(jobs / done_job)
    # the same from the command line the two queues call: 0 finished, 3 not, 2 (one line) for a folder it cannot read
    assert [rt.main([str(p), "--finished"]) for p in (jobs / done_job, jobs / new_job, tmp_path / "empty")] == [0, 3, 3]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{")
    assert rt.main([str(tmp_path / "bad"), "--finished"]) == 2
    assert rt.main([str(jobs / done_job), "--finished", "--restore"]) == 2
    # restoring is all or nothing: one altered state and no folder is written
    (f,) = (kept / new_job).rglob("*.safetensors")
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 1
    f.write_bytes(bytes(blob))
    assert rt.main([str(tmp_path / "fresh2"), "--book", str(book), "--restore"]) == 2
    assert not (tmp_path / "fresh2").exists()
    f.unlink()
    (kept / "somewhere-else").mkdir(parents=True)
    assert rt.main([str(fresh), "--book", str(book), "--restore"]) == 2  # not a job of a recorded table


def test_restore_refuses_a_table_that_does_not_say_which_job_made_a_row(rt, tmp_path, capsys):
    import shutil

    book = tmp_path / "book"
    shutil.copytree(ROOT / "book" / "data" / "cifar10-cpu-table", book / "cifar10-cpu-table")
    prov = book / "cifar10-cpu-table" / "provenance.json"
    prov.write_text(json.dumps({k: v for k, v in json.loads(prov.read_text()).items() if k != "job_of"}))
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book), "--restore"]) == 2
    err = capsys.readouterr().err.strip()
    assert "job_of" in err and len(err.splitlines()) == 1 and not (tmp_path / "jobs").exists()
    # a job name that is not one of the table's folders (here: outside ROOT) is refused before anything is written
    rec = json.loads(prov.read_text())
    keys = [r["key"] for r in json.loads((book / "cifar10-cpu-table" / "results.json").read_text())["rows"]]
    prov.write_text(json.dumps({**rec, "job_of": {k: "cifar-plain" if i else "../x" for i, k in enumerate(keys)}}))
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book), "--restore"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'../x'" in err and len(err.splitlines()) == 1 and not (tmp_path / "jobs").exists()
    prov.write_text("{not json")
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book), "--restore"]) == 2
    assert "provenance.json is not valid JSON" in capsys.readouterr().err


def test_device_queue_runs_each_recorded_row_in_exactly_one_job(rt, tmp_path, monkeypatch):
    """scripts/device_evaluate.sh's jobs, as its dry run prints them and the CLI resolves them: no (table, defence,
    threat) group is run by two jobs of one table (merging them would fail: `--only 'ERE descent'` once also picked
    the PGD-AT + ERE descent row), and every group a recorded table expects is run by some job."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    from pursamere import cli

    env = dict(os.environ, DRY="1", SKIP_SMOKE="1", PY=sys.executable, DEVICE="cpu", LC_ALL="C.UTF-8")
    subprocess.run(["bash", str(ROOT / "scripts" / "device_evaluate.sh"), str(tmp_path / "out"), "100000",
                    str(tmp_path / "data")], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    lines = (tmp_path / "device-work" / "logs" / "status").read_text().splitlines()
    jobs = {}
    for line in lines:
        m = re.match(r"^\[\d+ s\] (\S+): \S+ -m pursamere ensemble (.*)--device cpu +--out \S+$", line)
        if m and not m.group(1).startswith("smoke") and "strong" not in m.group(1):
            jobs[m.group(1)] = shlex.split(m.group(2))
    assert len(jobs) >= 20, lines

    prefixes = sorted(((p, t) for t, (p, _) in rt.TABLES.items()), key=lambda pt: -len(pt[0]))
    seen = {}
    for name, argv in sorted(jobs.items()):
        box = {}
        monkeypatch.setattr(cli, "_engine", lambda args, protocol, kind, **kw: box.update(p=protocol))
        assert cli.main(["ensemble", *argv]) == 0, (name, argv)
        table = next(t for p, t in prefixes if name.startswith(p))
        pr = box["p"]
        for d in pr.defences:
            for t in pr.threats:
                if d.attacks is not None and not d.attacks.get(str(t.norm)):
                    continue
                key = (table, d.label, str(t.norm), round(t.eps, 9))
                assert key not in seen, f"{key} is run by both {seen[key]} and {name}"
                seen[key] = name
    groups = {}
    for table, *group in seen:
        groups.setdefault(table, set()).add(tuple(group))
    for table in rt.TABLES:
        want = {(d, str(n), round(e, 9)) for d, n, e in rt.expected_groups(table)}
        assert want <= groups.get(table, set()), (table, sorted(want - groups.get(table, set())))
        # every recorded row sits in the folder of the job that runs its group (a restored job keeps its rows)
        src = ROOT / "book" / "data" / table
        if (src / "provenance.json").is_file():
            job_of = json.loads((src / "provenance.json").read_text()).get("job_of", {})
            for r in json.loads((src / "results.json").read_text())["rows"]:
                assert seen[(table, r["defence"], str(r["norm"]), round(r["eps"], 9))] == job_of[r["key"]], r["key"]


def test_device_carry_gathers_only_the_folders_the_first_jobs_start_from(tmp_path):
    """CARRY_TO=DIR (scripts/device_evaluate.sh, before a call): copies what each of the queue's first JOBS_FIRST
    jobs would resume from (its own folder, or a 160-step job's 80-step one) into a new folder, runs nothing, writes
    nothing else, and refuses a folder that is not empty."""
    import os
    import subprocess

    lines = (ROOT / "scripts" / "device_evaluate.sh").read_text().split("<<JOBS\n", 1)[1].splitlines()
    first, second = (ln.split()[1] for ln in lines[:2])
    later = next(ln.split()[1] for ln in lines[2:] if ln.split()[1].startswith("digits160-"))
    source = "digits-" + later[len("digits160-"):]  # a 160-step job without a folder starts from its 80-step one
    whole, carry = tmp_path / "whole", tmp_path / "carry"
    for name in (second, source, "digits-0.1-plain"):  # the last: a folder no job among them starts from
        (whole / name).mkdir(parents=True)
        (whole / name / "results.json").write_text("{}")
    env = dict(os.environ, CARRY_TO=str(carry), JOBS_FIRST=str(lines.index(next(ln for ln in lines if later in ln)) + 1),
               RESUME_FROM=str(whole), PY="true", LC_ALL="C.UTF-8")
    cmd = ["bash", str(ROOT / "scripts" / "device_evaluate.sh"), str(tmp_path / "out"), "100000", str(tmp_path / "data")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in carry.iterdir()) == sorted([second, source])
    status = done.stdout  # said, not written: a carry leaves nothing but DIR (no device-work, no packed results)
    assert f"{first}: nothing to carry" in status and "ensemble" not in status and "carried into" in status
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carry", "whole"]
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "not empty" in again.stderr


RUNG_TABLES = (("cifar10-cpu-table-40", 40), ("cifar10-cpu-table-80", 80), ("cifar10-cpu-table-160", 160))


def test_cpu_queue_seeds_a_longer_suite_only_from_a_finished_job(tmp_path):
    """scripts/cpu_queue.sh's job(): a cifar80-*/cifar160-*/digits320-* job starts from a copy of the job one rung shorter only
    once that job has finished (else its unfinished attacks would run in both folders); it says so and stops."""
    import os
    import re
    import subprocess
    import sys

    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    shim = tmp_path / "py"  # the real interpreter, except that the ensemble itself only says it ran
    shim.write_text(f'#!/bin/bash\nif [ "$1" = -m ]; then echo "ran $*"; exit 0; fi\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    whole = tmp_path / "results" / "whole"
    recorded = json.loads((ROOT / "book" / "data" / "cifar10-cpu-table" / "results.json").read_text())
    for name, stopped in (("cifar80-a", False), ("cifar40-b", True), ("digits160-c", False), ("digits160-d", True)):
        res = dict(recorded, worst_case=[w for w in recorded["worst_case"] if w["complete"]],
                   meta=dict(recorded["meta"], **({"stopped": "time budget spent"} if stopped else {})))
        (whole / name).mkdir(parents=True)
        (whole / name / "results.json").write_text(json.dumps(res))
    text = (ROOT / "scripts" / "cpu_queue.sh").read_text()
    fn = re.search(r"^job\(\) \{.*?^\}$", text, re.S | re.M).group(0)
    env = dict(os.environ, ROOT="results/whole", PY=str(shim), LC_ALL="C.UTF-8", OMP_NUM_THREADS="1")

    def job(name):
        return subprocess.run(["bash", "-c", fn + f"\njob {name} --preset cifar10-cpu"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    done = job("cifar160-a")  # cifar80-a: every group finished
    assert done.returncode == 0 and "cifar160-a: start" in done.stdout, done.stdout + done.stderr
    assert "ran -m pursamere ensemble" in (whole / "cifar160-a.cpu.log").read_text()
    assert (whole / "cifar160-a" / "results.json").is_file()
    left = job("cifar80-b")  # cifar40-b: stopped before its end
    assert left.returncode == 1 and "has not finished" in left.stdout and "start" not in left.stdout, left.stdout
    assert not (whole / "cifar80-b").exists() and not (whole / "cifar80-b.cpu.log").exists()
    done = job("digits320-c")  # the digits 320-step rung from its finished 160-step job
    assert done.returncode == 0 and "digits320-c: start" in done.stdout, done.stdout + done.stderr
    assert (whole / "digits320-c" / "results.json").is_file()
    left = job("digits320-d")
    assert left.returncode == 1 and "has not finished" in left.stdout and not (whole / "digits320-d").exists()


# the CIFAR-10 rungs that attack a few images for hours per attack: batches of 2 from 2026-12-04 on (rows in progress
# resume only at the batch size they started with; none of these jobs had one kept when the size changed)
# queued jobs at batch size 2 (cifar80-pursamere and cifar160-ere ran so, both finished)
LONG_RUNGS: dict = {"cifar40-rest-pursamere": "2"}


def test_cpu_queue_continues_every_unfinished_recorded_group_in_its_own_job(rt, tmp_path, monkeypatch):
    """scripts/cpu_queue.sh, as its dry run prints it: every command is one the CLI takes, and every group a recorded
    table has not finished is continued by the job folder that holds its rows (job_of), with the batch size its rows
    in progress were kept at (CIFAR-10 8, its long rungs 2 from 2026-12-04 on, digits 64)."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    from pursamere import cli

    env = dict(os.environ, DRY="1", PY=sys.executable, LC_ALL="C.UTF-8")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "cpu_queue.sh"), "2"], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    jobs = {}
    for line in out.splitlines():
        m = re.match(r"^\S+ -m pursamere ensemble (.*)--quiet --resume --out results/whole/(\S+)$", line)
        if m:
            assert m.group(2) not in jobs, f"{m.group(2)} twice in the queue"
            jobs[m.group(2)] = shlex.split(m.group(1))
    assert len(jobs) >= 5, out
    runs = {}
    for name, argv in jobs.items():
        box = {}
        monkeypatch.setattr(cli, "_engine", lambda args, protocol, kind, **kw: box.update(p=protocol))
        assert cli.main(["ensemble", *argv]) == 0, (name, argv)
        assert argv[argv.index("--batch-size") + 1] == (LONG_RUNGS.get(name, "8") if name.startswith("cifar") else "64")
        runs[name] = {(d.label, str(t.norm), round(t.eps, 9)) for d in box["p"].defences for t in box["p"].threats}
    for table, (prefix, _) in rt.TABLES.items():
        src = ROOT / "book" / "data" / table
        if not (src / "results.json").is_file():
            continue
        res, job_of = json.loads((src / "results.json").read_text()), json.loads((src / "provenance.json").read_text())["job_of"]
        for w in res["worst_case"]:
            if w["complete"]:
                continue
            group = (w["defence"], str(w["norm"]), round(w["eps"], 9))
            (job,) = {job_of[r["key"]] for r in res["rows"] if (r["defence"], str(r["norm"]), round(r["eps"], 9)) == group}
            assert group in runs.get(job, set()), f"{table}: {group} is unfinished and no queued job {job} continues it"
        if table in {t for t, _ in RUNG_TABLES}:
            continue  # a longer suite runs on the rows whose shorter suite has not converged, not on every row
        # a planned group no job has started (a column the plan added) is queued too, by a job of this table
        recorded = {(w["defence"], str(w["norm"]), round(w["eps"], 9)) for w in res["worst_case"]}
        for d, norm, eps in rt.expected_groups(table):
            group = (d, norm, round(eps, 9))
            if group not in recorded:
                assert any(group in runs[j] for j in runs if rt.belongs(j, prefix)), \
                    f"{table}: {group} has not run and no queued job of the table runs it"


def test_recording_refuses_a_folder_run_at_another_budget(rt, tmp_path, capsys):
    """A convergence check run at a doubled budget into a folder named like a table job would be merged into the
    table: recording names the folder and the attack instead."""
    import shutil

    planned = rt.planned_attacks("cifar10-cpu-table")
    assert {("BPDA20", "inf"), ("APGD-T20", "2"), ("Square100", "inf"), ("BPDA40", "1"), ("APGD-CE40×2", "1")} <= planned
    assert not {("BPDA40", "inf"), ("BPDA20", "1"), ("APGD-CE20", "1")} & planned
    rows = json.loads((ROOT / "book" / "data" / "cifar10-cpu-table" / "results.json").read_text())["rows"]
    rt.check_budget("cifar10-cpu-table", {Path("cifar-at"): rows})  # the recorded rows are the table's budget
    row = next(r for r in rows if r["attack"] == "APGD-T20" and r["norm"] == "inf")
    stochastic = {**row, "deterministic": False, "attack_settings": {**row["attack_settings"], "eot": 4}}
    rt.check_budget("cifar10-cpu-table", {Path("cifar-at"): [stochastic]})  # EoT 4, the budget's, counts there only
    for r, change in ((row, {"targets": 9}), (row, {"steps": 40}), (stochastic, {"eot": 8})):  # planned name, other settings
        bad = {**r, "attack_settings": {**r["attack_settings"], **change}}
        with pytest.raises(ValueError, match="APGD-T20"):
            rt.check_budget("cifar10-cpu-table", {Path("cifar-at"): [bad]})
    book = tmp_path / "book"
    shutil.copytree(ROOT / "book" / "data" / "cifar10-cpu-table", book / "cifar10-cpu-table")
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book), "--restore"]) == 0
    src = next(p for p in sorted((tmp_path / "jobs").iterdir()) if p.name == "cifar-at")
    check = json.loads((src / "results.json").read_text())
    check["rows"] = [r for r in check["rows"] if r["norm"] == "inf"]
    for r in check["rows"]:
        r["attack"] = r["attack"].replace("20", "40")
        r["key"] = r["key"].replace("20|", "40|")
    shutil.copytree(src, tmp_path / "jobs" / "cifar-at-x2")
    (tmp_path / "jobs" / "cifar-at-x2" / "results.json").write_text(json.dumps(check))
    before = (book / "cifar10-cpu-table" / "results.json").read_text()
    assert rt.main([str(tmp_path / "jobs"), "--book", str(book)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cifar-at-x2" in err and "40" in err and "strong" in err and len(err.splitlines()) == 1
    assert (book / "cifar10-cpu-table" / "results.json").read_text() == before


def test_groups_recorded_before_the_suite_gained_an_attack_count_as_incomplete(rt):
    """The suite gained APGD on the exact gradient after the whole-test rows were recorded: a group that ran the
    older suite is held to the new one (incomplete until its job resumes), groups without exact gradients are not."""
    plan = rt.replan("digits-whole-test")
    old = ["gPGD80", "BPDA80", "APGD-CE80", "APGD-DLR80", "APGD-T80", "exact40", "APGD-CE80→exact40",
           "partial3-margin80", "Square400"]
    group = ("ERE descent (no SAM) ε_pur=0.3", "inf", 0.2)
    assert plan(group, old) == old + ["APGD-CE80→exact-APGD-CE40", "exact-APGD-T40", "exact-APGD-T80-long"]
    assert plan(group, plan(group, old)) == plan(group, old)  # already held to the new suite: unchanged
    no_exact = ["BPDA80", "APGD-CE80", "APGD-DLR80", "APGD-T80", "Square400"]
    assert plan(("PGD-AT", "inf", 0.2), no_exact) == no_exact  # adversarial training, stochastic purifiers
    cifar = rt.replan("cifar10-cpu-table")
    l1 = ["BPDA40", "APGD-CE40×2", "APGD-DLR40×2", "APGD-T40", "exact20", "APGD-CE40×2→exact20", "partial3-margin40"]
    assert cifar(("ERE descent (no SAM) ε_pur=12/255 (clean classifier)", "1", 12.0), l1)[-3:] == [
        "APGD-CE40×2→exact-APGD-CE20×2", "exact-APGD-T20", "exact-APGD-T40-long"]  # ℓ1 at its own (doubled) budget


def test_the_160_step_table_runs_the_longer_suite_on_the_80_step_survivors(rt):
    """digits-whole-test-160: at ℓ∞ 0.15 and 0.2 (and 0.1 for PurSAMERE alone, where the 80-step suite's own doubled
    check broke more than 1 in 100), the 80-step suite then the whole 160-step suite, every attack of it cascaded;
    its job folders (digits160-*) and the 80-step table's (digits-*) never mix."""
    from pursamere.evaluation.suite import standard_suite
    from pursamere.experiments.protocols import Protocol, budget_at, suite_then

    pr, keep = rt._protocol("digits-whole-test-160")
    assert [t.eps for t in pr.threats] == [0.1, 0.15, 0.2]
    groups = rt.expected_groups("digits-whole-test-160")
    assert {g[2] for g in groups} == {0.1, 0.15, 0.2}
    assert {g[0] for g in groups if g[2] == 0.1} == {"PurSAMERE ρ=ε_pur/2 ε_pur=0.3"}
    assert {g[0] for g in groups if g[2] == 0.15} == {d.label for d in keep} == {g[0] for g in groups if g[2] == 0.2}
    first, then = standard_suite(budget_at(80)), standard_suite(budget_at(160))
    assert [a.name for a in pr.attacks] == [a.name for a in first] + [a.name for a in then]
    assert all(a.cascade for a in pr.attacks[len(first):])
    assert {("BPDA160", "inf"), ("exact-APGD-T160-long", "inf"), ("BPDA80", "inf")} <= rt.planned_attacks("digits-whole-test-160")
    assert ("BPDA160", "inf") not in rt.planned_attacks("digits-whole-test")
    assert rt.belongs("digits160-0.2-ere", "digits160-") and not rt.belongs("digits160-0.2-ere", "digits-")
    assert rt.belongs("digits-0.2-ere", "digits-") and not rt.belongs("digits-0.2-ere", "digits160-")
    # a group whose 80-step rows came from the 80-step job is held to both suites
    plan = rt.replan("digits-whole-test-160")
    eighty = [a.name for a in first]
    assert plan(("ERE descent (no SAM) ε_pur=0.3", "inf", 0.2), eighty) == eighty + [a.name for a in then]
    with pytest.raises(ValueError, match="share a name"):  # the same budget twice: the names would clash
        Protocol("ensemble", "x", (), suite_then(budget_at(80), budget_at(80)), (), None)


def test_the_320_step_table_runs_ere_descent_at_0_2_after_both_shorter_suites(rt):
    """digits-whole-test-320 (2026-12-05): ERE descent alone at ℓ∞ 0.2, where the 160-step suite broke more than 1
    image in 100 of what the 80-step suite left; the three suites in a row, every longer attack cascaded; a group
    recorded by the 160-step job is held to the 320-step suite too; the README's digits table counts it as a rung."""
    from pursamere.evaluation.suite import standard_suite
    from pursamere.experiments.protocols import budget_at

    pr, keep = rt._protocol("digits-whole-test-320")
    assert [t.eps for t in pr.threats] == [0.2] and [d.label for d in keep] == ["ERE descent (no SAM) ε_pur=0.3"]
    assert rt.expected_groups("digits-whole-test-320") == [("ERE descent (no SAM) ε_pur=0.3", "inf", 0.2)]
    suites = [[a.name for a in standard_suite(budget_at(n))] for n in (80, 160, 320)]
    assert [a.name for a in pr.attacks] == suites[0] + suites[1] + suites[2]
    assert all(a.cascade for a in pr.attacks[len(suites[0]):])
    assert rt.belongs("digits320-0.2-ere", "digits320-") and not rt.belongs("digits320-0.2-ere", "digits160-")
    assert not rt.belongs("digits320-0.2-ere", "digits-") and not rt.belongs("digits160-0.2-ere", "digits320-")
    plan = rt.replan("digits-whole-test-320")
    assert plan(("ERE descent (no SAM) ε_pur=0.3", "inf", 0.2), suites[0] + suites[1]) == suites[0] + suites[1] + suites[2]
    assert [t for t, _ in rt.RUNGS["digits-whole-test"]] == ["digits-whole-test-160", "digits-whole-test-320"]


def test_a_row_shared_with_another_table_keeps_its_machine(rt):
    """The 160-step table's jobs start from the 80-step jobs' rows: a row identical to one recorded elsewhere keeps
    the machine recorded there; a re-run row is 'cpu' (no GPU folders given); a table sharing nothing and with no
    machine on record records none (unknown), not 'cpu'."""
    row = {"key": "d|BPDA80|inf|0.2", "seconds": 1.0}
    rerun = {"key": "d|BPDA160|inf|0.2", "seconds": 2.0}
    res = {"rows": [row, rerun]}
    parts = {Path("digits160-0.2-ere"): [row, rerun]}
    prior = ({row["key"]: dict(row)}, {row["key"]: "gpu"})
    prov = rt.provenance(parts, res, {}, {}, set(), False, None, prior=prior)
    assert prov["machine"] == {row["key"]: "gpu", rerun["key"]: "cpu"}
    changed = ({row["key"]: {**row, "seconds": 9.0}}, {row["key"]: "gpu"})  # not the same row: made here
    assert rt.provenance(parts, res, {}, {}, set(), False, None, prior=changed)["machine"] is None
    assert rt.provenance(parts, res, {}, {}, set(), False, None)["machine"] is None


def test_gpu_rows_of_a_table_recorded_without_machines_leave_its_older_rows_unknown(rt):
    """Given the GPU's rows, a table that never recorded machines marks its new rows and leaves the rows recorded
    before as unknown (None), not 'cpu'; a table with machines on record keeps them."""
    old, new, rerun = {"key": "d|A|inf|0.2", "seconds": 1.0}, {"key": "d|B|inf|0.2", "seconds": 2.0}, {"key": "d|C|inf|0.2"}
    res, parts = {"rows": [old, new, rerun]}, {Path("cifar-rest-at"): [old, new, rerun]}
    prov = rt.provenance(parts, res, {}, {old["key"]: dict(old)}, {new["key"]}, True, None)
    assert prov["machine"] == {old["key"]: None, new["key"]: "gpu", rerun["key"]: "cpu"}
    prov = rt.provenance(parts, res, {"machine": {old["key"]: "gpu"}}, {old["key"]: dict(old)}, {new["key"]}, True, None)
    assert prov["machine"] == {old["key"]: "gpu", new["key"]: "gpu", rerun["key"]: "cpu"}


def test_from_device_takes_the_gpu_folders_and_marks_what_they_finished(rt, tmp_path, capsys):
    """record_tables --from-device DIR: a GPU call's folder replaces its namesake when it finished rows that one
    lacks (those rows are the GPU's, marked in the folder so that a recording refused after the take still records
    them as the GPU's), a folder with nothing new is left as it is, a smoke run's folder is skipped, and a ROOT
    folder holding a row the device's lacks is refused in one line before any folder is touched."""
    import shutil

    book = tmp_path / "book"
    shutil.copytree(ROOT / "book" / "data" / "cifar10-cpu-table", book / "cifar10-cpu-table")
    jobs, dev = tmp_path / "jobs", tmp_path / "device"
    assert rt.main([str(jobs), "--book", str(book), "--restore"]) == 0
    before_machine = json.loads((book / "cifar10-cpu-table" / "provenance.json").read_text())["machine"]
    for name in ("cifar-at", "cifar-plain"):
        shutil.copytree(jobs / name, dev / name)
    res = json.loads((jobs / "cifar-at" / "results.json").read_text())
    gone = res["rows"].pop()  # the CPU folder lacks the last row: the GPU finished it
    (jobs / "cifar-at" / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="running"):  # a job still writing the folder would overwrite the device's rows
        rt.take_device(jobs, dev, live={"cifar-at"})
    shutil.copytree(dev / "cifar-plain", dev / "smoke-cifar")  # a smoke run's folder: no table's job, skipped
    (jobs / "cifar-ere").rename(tmp_path / "aside")  # a recorded job's folder missing: recording refuses, after the take
    assert rt.main([str(jobs), "--book", str(book), "--from-device", str(dev)]) == 2
    out, err = capsys.readouterr()
    assert "took 1 job folders (1 rows the GPU finished): cifar-at; left 1 with nothing new; skipped smoke-cifar" in out
    assert "--restore" in err and len(err.strip().splitlines()) == 1
    assert (jobs / "cifar-at" / "results.json").read_text() == (dev / "cifar-at" / "results.json").read_text()
    assert not list(jobs.glob(".*device")) and not (jobs / "smoke-cifar").exists()
    assert set(rt.device_rows(jobs)) == {gone["key"]}  # the GPU's rows are marked in the folder: the refusal loses nothing
    (tmp_path / "aside").rename(jobs / "cifar-ere")
    rec = json.loads((book / "cifar10-cpu-table" / "results.json").read_text())  # make the GPU's row new to the book
    rec["rows"] = [r for r in rec["rows"] if r["key"] != gone["key"]]
    (book / "cifar10-cpu-table" / "results.json").write_text(json.dumps(rec))
    assert rt.main([str(jobs), "--book", str(book)]) == 0  # recorded later, without --from-device: still the GPU's
    prov = json.loads((book / "cifar10-cpu-table" / "provenance.json").read_text())
    assert prov["machine"][gone["key"]] == "gpu"
    assert {k: m for k, m in prov["machine"].items() if k != gone["key"]} == {
        k: m for k, m in before_machine.items() if k != gone["key"]}  # the other rows keep their recorded machines
    capsys.readouterr()
    keys, replaced, same, skipped = rt.take_device(jobs, dev)  # taken already: nothing new
    assert keys == set() and replaced == [] and [p.name for p in same] == ["cifar-at", "cifar-plain"]
    assert skipped == ["smoke-cifar"]
    # the CPU finished a row meanwhile that the device folder lacks: refused, nothing touched
    res = json.loads((dev / "cifar-at" / "results.json").read_text())
    res["rows"].pop()
    (dev / "cifar-at" / "results.json").write_text(json.dumps(res))
    before = (jobs / "cifar-at" / "results.json").read_text()
    assert rt.main([str(jobs), "--book", str(book), "--from-device", str(dev)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cifar-at" in err and gone["key"] in err and len(err.splitlines()) == 1
    assert (jobs / "cifar-at" / "results.json").read_text() == before
    assert rt.main([str(jobs), "--book", str(book), "--from-device", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_the_gpu_marks_only_rows_it_made_and_a_take_never_removes_a_folder_set_aside(rt, tmp_path):
    """A device folder's row identical to one a CPU folder holds (a job the GPU seeded from it) is not the GPU's; a
    mark counts only for a row of the same content (another table's row of the same key may be the CPU's); a
    malformed mark file is one error line; a folder an interrupted take set aside is never removed."""
    root, dev = tmp_path / "whole", tmp_path / "dev"
    row = {"key": "d|BPDA20|inf|0.0313725", "survived": [True, False]}
    made = {"key": "d|BPDA40|inf|0.0313725", "survived": [False, False]}
    for folder, rows in ((root / "cifar-at", [row]), (dev / "cifar40-at", [row, made])):
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"meta": {"schema": 2}, "rows": rows}))
    keys, replaced, same, skipped = rt.take_device(root, dev, live=set())
    assert keys == {made["key"]} and [p.name for p in replaced] == ["cifar40-at"] and not same and not skipped
    marked = rt.device_rows(root)
    assert set(marked) == {made["key"]}
    rerun = {**made, "survived": [True, False]}  # the same key, made elsewhere on the CPU: not the GPU's
    assert rt._row_digest(made) in marked[made["key"]] and rt._row_digest(rerun) not in marked[made["key"]]
    (root / "cifar40-at" / rt.FROM_DEVICE).write_text("5")
    with pytest.raises(ValueError, match="not a map of row keys"):
        rt.device_rows(root)
    (root / "cifar40-at" / rt.FROM_DEVICE).write_text("{}")
    (dev / "cifar40-at" / "results.json").write_text(json.dumps({"meta": {"schema": 2}, "rows": [row, made, rerun | {"key": "e"}]}))
    (root / ".cifar40-at.before-device").mkdir()  # left by a take stopped between its renames
    with pytest.raises(ValueError, match="interrupted take"):
        rt.take_device(root, dev, live=set())
    assert (root / ".cifar40-at.before-device").is_dir() and not list(root.glob(".*from-device"))


def test_the_40_step_cifar_table_checks_the_key_rows_at_linf(rt, tmp_path):
    """cifar10-cpu-table-40: the key rows at ℓ∞ 8/255, the 20-step suite then the 40-step one on what it left; its
    jobs (cifar40-*) start from a copy of their 20-step job with only the ℓ∞ rows kept (--keep-linf)."""
    pr, keep = rt._protocol("cifar10-cpu-table-40")
    assert [str(t.norm) for t in pr.threats] == ["inf"] and {g[1] for g in rt.expected_groups("cifar10-cpu-table-40")} == {"inf"}
    planned = rt.planned_attacks("cifar10-cpu-table-40")
    assert {("BPDA20", "inf"), ("BPDA40", "inf"), ("exact-APGD-T40-long", "inf")} <= planned
    assert ("BPDA40", "inf") not in rt.planned_attacks("cifar10-cpu-table")
    assert rt.belongs("cifar40-ere", "cifar40-") and not rt.belongs("cifar40-ere", "cifar-")
    # the recorded 20-step rows are the 40-step table's budget too (reused, not re-run)
    rows = json.loads((ROOT / "book" / "data" / "cifar10-cpu-table" / "results.json").read_text())["rows"]
    rt.check_budget("cifar10-cpu-table-40", {Path("cifar40-at"): [r for r in rows if r["norm"] == "inf"]})
    with pytest.raises(ValueError, match="runs at ℓ∞ only.*--keep-linf"):  # an ℓ2 row left in a seeded folder: said how to fix
        rt.check_budget("cifar10-cpu-table-40", {Path("cifar40-at"): [r for r in rows if r["norm"] == "2"][:1]})
    job = tmp_path / "cifar40-at"
    job.mkdir()
    (job / "results.json").write_text((ROOT / "book" / "data" / "cifar10-cpu-table" / "results.json").read_text())
    for name in ("checks.json", "table.md", "checks-in-progress/" + "a" * 16 + ".json"):  # the 20-step job's
        (job / name).parent.mkdir(exist_ok=True)
        (job / name).write_text("[]")
    n_linf = sum(r["norm"] == "inf" for r in rows)
    assert rt.main([str(job), "--keep-linf"]) == 0
    assert sorted(p.name for p in job.iterdir()) == ["results.json"]  # its checks and table are not the 40-step job's
    kept = json.loads((job / "results.json").read_text())
    assert len(kept["rows"]) == n_linf < len(rows) and all(r["norm"] == "inf" for r in kept["rows"])
    assert kept["worst_case"] and all(w["norm"] == "inf" for w in kept["worst_case"])


def test_the_80_step_rung_table_starts_from_the_40_step_rows(rt):
    """cifar10-cpu-table-80: the 40-step table's suites, then 80 steps; its jobs (cifar80-*) start from a copy of their
    40-step job, whose rows are all its budget (reused, not re-run)."""
    planned = rt.planned_attacks("cifar10-cpu-table-80")
    assert rt.planned_attacks("cifar10-cpu-table-40") < planned and ("exact-APGD-T80-long", "inf") in planned
    assert rt.belongs("cifar80-ere", "cifar80-") and not rt.belongs("cifar80-ere", "cifar-")
    assert not rt.belongs("cifar80-ere", "cifar40-")
    rows = json.loads((ROOT / "book" / "data" / "cifar10-cpu-table-40" / "results.json").read_text())["rows"]
    rt.check_budget("cifar10-cpu-table-80", {Path("cifar80-ere"): rows})
    assert rt.expected_groups("cifar10-cpu-table-80") == rt.expected_groups("cifar10-cpu-table-40")


def test_the_160_step_rung_table_starts_from_the_80_step_rows(rt):
    """cifar10-cpu-table-160: the 80-step table's suites, then 160 steps; its jobs (cifar160-*) start from a copy of
    their 80-step job, whose rows are all within its budget; the README's table shows the rungs in order."""
    planned = rt.planned_attacks("cifar10-cpu-table-160")
    assert rt.planned_attacks("cifar10-cpu-table-80") < planned and ("exact-APGD-T160-long", "inf") in planned
    assert rt.belongs("cifar160-ere", "cifar160-") and not rt.belongs("cifar160-ere", "cifar-")
    assert not rt.belongs("cifar160-ere", "cifar80-") and not rt.belongs("cifar80-ere", "cifar160-")
    rows = json.loads((ROOT / "book" / "data" / "cifar10-cpu-table-80" / "results.json").read_text())["rows"]
    rt.check_budget("cifar10-cpu-table-160", {Path("cifar160-ere"): rows})
    with pytest.raises(ValueError, match="exact-APGD-T160-long"):  # the 80-step table's budget has none
        rt.check_budget("cifar10-cpu-table-80", {Path("cifar80-ere"): rows + [dict(rows[-1], attack="exact-APGD-T160-long")]})
    assert rt.expected_groups("cifar10-cpu-table-160") == rt.expected_groups("cifar10-cpu-table-80")
    assert [steps for _, steps in rt.RUNGS["cifar10-cpu-table"]] == [40, 80, 160]


def test_longer_suite_frame_counts_what_the_longer_suite_broke_image_by_image():
    """The chapters' table of a --then-steps run against its first suite (chapter 7: 80 then 160; chapter 6: 20 then 40),
    on the recorded digits tables: finished groups give counts, unfinished ones bounds."""
    from pursamere.book import frames
    from pursamere.evaluation.results import norm_label

    def pick(df, defence, eps):  # one row per (defence, threat): a longer suite may run at several ε
        return df[df.threat == norm_label("inf", eps)].loc[defence]

    data = ROOT / "book" / "data"
    first = json.loads((data / "digits-whole-test" / "results.json").read_text())
    longer = json.loads((data / "digits-whole-test-160" / "results.json").read_text())
    df = frames.longer_suite_frame(first, longer, (80, 160))
    assert not df.reset_index().duplicated(["defence", "threat"]).any()
    for w in longer["worst_case"]:
        row = pick(df, w["defence"], w["eps"])
        before = next(b for b in first["worst_case"] if (b["defence"], b["eps"]) == (w["defence"], w["eps"]))
        assert row["robust after 80 steps"] == sum(before["survived"])  # the same rows in both tables here
        if w.get("complete", True):
            assert row["broken by the 160-step suite"] == sum(before["survived"]) - sum(w["survived"]) >= 0
        else:
            assert str(row["after 160 steps too"]).startswith("≤ ") and str(row["broken by the 160-step suite"]).startswith("≥ ")
    # the longer table's job finishing the first suite itself: what those attacks broke is not the longer suite's
    ere = "ERE descent (no SAM) ε_pur=0.3"
    last80 = "exact-APGD-T80-long"
    cut = {**first, "rows": [r for r in first["rows"] if not (r["defence"] == ere and r["attack"] == last80)],
           "worst_case": [{**w, "attacks": [a for a in w["attacks"] if a != last80]} if w["defence"] == ere else w
                          for w in first["worst_case"]]}
    only80 = {**longer, "rows": [r for r in longer["rows"] if r["defence"] != ere or r["attack"] != last80],
              "worst_case": [{**w, "attacks": [a for a in w["attacks"] if a != last80]} if w["defence"] == ere else w
                             for w in longer["worst_case"]]}
    row = pick(frames.longer_suite_frame(cut, only80, (80, 160)), ere, 0.2)
    assert str(row["robust after 80 steps"]).startswith("≤ ") and row["broken by the 160-step suite"] == "–"
    row = pick(frames.longer_suite_frame(cut, longer, (80, 160)), ere, 0.2)  # first suite finished in the longer table only
    assert row["robust after 80 steps"] == sum(next(w for w in first["worst_case"] if w["defence"] == ere
                                                    and w["eps"] == 0.2)["survived"])
    assert frames.longer_suite_frame(json.loads((data / "cifar10-cpu-table" / "results.json").read_text()), longer,
                                     (20, 40)) is None  # nothing in common


def test_keep_linf_refuses_other_modes_in_one_line(rt, tmp_path, capsys):
    assert rt.main([str(tmp_path), "--keep-linf", "--restore"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--keep-linf works on one job folder alone" in err
    assert rt.main([str(tmp_path / "none"), "--keep-linf"]) == 2  # no results file: one line, no traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results file" in err and "Traceback" not in err

def _wc(defence, survived, attacks, planned=None, eps=0.1, deterministic=True):
    """A worst-case entry of a results file, for the longer-suite tests."""
    k, n = sum(survived), len(survived)
    return {"defence": defence, "norm": "inf", "eps": eps, "clean_acc": 0.9, "robust_acc": k / n, "ci95": [0.0, 1.0],
            "survived": list(survived), "attacks": [f"a{i}" for i in range(attacks)],
            "planned": [f"a{i}" for i in range(planned or attacks)], "complete": planned is None or planned == attacks,
            "deterministic": deterministic}


def test_readme_table_shows_each_row_at_its_longest_suite_and_whether_it_converged(rt):
    """A row a longer suite checked shows its worst case over every suite run (the table's own number would overstate
    it) and a last column with what each longer suite broke; the verdict is chapter 7's bar (under 1 image in 100 of
    the table's) from the longest suite that has decided it."""
    from pursamere.evaluation.results import convergence, over_longer_suites

    n, base = 200, [True] * 100 + [False] * 100
    meta = {"data_fingerprint": "x"}
    table = {"meta": meta, "worst_case": [
        _wc("held", base, 4), _wc("broken", base, 4), _wc("slow", base, 2, 4), _wc("alone", base, 4),
        _wc("nothing", [False] * n, 4), _wc("late", base, 4), _wc("noisy", base, 4, deterministic=False),
        _wc("held", base, 4, eps=0.2)]}
    r40 = {"meta": meta, "worst_case": [
        _wc("held", [True] * 99 + [False] * 101, 8),  # broke 1 of 100: under 2 (1 in 100 of 200)
        _wc("broken", [True] * 90 + [False] * 110, 8), _wc("nothing", [False] * n, 8),
        _wc("late", [True] * 100 + [False] * 100, 8), _wc("noisy", [True] * 90 + [False] * 110, 8, deterministic=False),
        _wc("held", [False] * n, 8, eps=0.3)]}  # another ε: never merged into the 0.1 or 0.2 column
    r80 = {"meta": meta, "worst_case": [
        _wc("broken", [True] * 89 + [False] * 111, 10, 12),  # 1 more: under the bar, the 40-step verdict stands
        _wc("late", [True] * 95 + [False] * 105, 9, 12)]}  # still running and already over the bar
    rows = {line.split(" | ")[0][2:] + (" 0.2" if i > 8 else ""): line.split(" | ") for i, line in enumerate(
        rt.markdown_table(table, [(40, r40), (80, r80)]).splitlines()) if line.startswith("| ") and "defence" not in line}
    assert rows["held"][2].startswith("49.5 ") and rows["held"][-1] == "40 steps broke 1 of 100: converged |"
    assert rows["held"][3] == "50.0 [0–100]"  # ε = 0.2: no longer suite holds it
    # the worst case over all three suites, an upper bound while the longest is still running
    assert rows["broken"][2] == "≤ 44.5 (10 of 12 attacks)"
    assert rows["broken"][-1] == ("40 steps broke 10 of 100; 80 steps broke 1 of 90 (2 of its 4 attacks so far): "
                                  "**not converged** by the 40-step suite |")
    assert rows["late"][-1].endswith("**not converged** by the 80-step suite |")  # its count can only grow
    assert rows["slow"][2].startswith("≤ 50.0 (2 of 4") and rows["slow"][-1].startswith("after its own suite")
    assert rows["alone"][-1] == "not run yet |" and rows["nothing"][-1] == "nothing left to break |"
    # a row the longer suites do not run at that threat (ONLY_AT) says nothing there; the rows they run keep theirs
    only = {line.split(" | ")[0][2:]: line.split(" | ")[-1] for line in
            rt.markdown_table(table, [(40, r40), (80, r80)], {0.1: ("held", "broken")}).splitlines()
            if line.startswith("| ") and "defence" not in line}
    assert only["alone"] == "– |" and only["broken"] == rows["broken"][-1] and only["nothing"] == "nothing left to break |"
    assert rows["noisy"][-1].endswith("(stochastic: each attack redraws the noise) |")
    assert rt.markdown_table(table).splitlines()[0] == "| defence | clean | ℓ∞ ε=0.1 | ℓ∞ ε=0.2 |"  # no longer suites: no column

    merged = {(w["defence"], w["eps"]): w for w in over_longer_suites(table, [(40, r40), (80, r80)])["worst_case"]}
    assert [convergence(merged[(d, 0.1)]) for d in ("held", "broken", "slow", "alone", "late")] == \
        [(True, 40), (False, 40), None, None, (False, 80)]
    assert merged[("slow", 0.1)] == table["worst_case"][2]  # its own suite unfinished: left as it is
    assert merged[("broken", 0.1)]["longer_suites"][1] == {"steps": 80, "of": 90, "broke": 1, "attacks": 2, "planned": 4,
                                                           "complete": False}
    assert merged[("held", 0.2)] == table["worst_case"][-1]
    # a longer suite whose flags keep an image a shorter one broke (its job re-ran part of the suite): never back
    odd = {"meta": meta, "worst_case": [_wc("held", [True] * 50 + [False] * 50 + [True] * 100, 8)]}
    w = over_longer_suites(table, [(40, odd)])["worst_case"][0]
    assert sum(w["survived"]) == 50 and w["robust_acc"] == 0.25 and w["longer_suites"][0]["broke"] == 50
    # a suite that lacks the row ends its chain: the next one's counts would be over two suites
    w = over_longer_suites(table, [(40, {"meta": meta, "worst_case": []}), (80, r80)])["worst_case"][1]
    assert "longer_suites" not in w and w == table["worst_case"][1]
    with pytest.raises(ValueError, match="40-step suite ran on other images"):
        rt.markdown_table(table, [(40, {**r40, "meta": {"data_fingerprint": "y"}})])


def test_a_threat_no_row_has_run_is_named_once_under_the_table(rt):
    """"Not run yet" names a column the plan added but no row has run as one phrase, and otherwise each missing
    (defence, threat); the table's columns are what was run."""
    base = [True, False]
    table = {"meta": {}, "worst_case": [_wc("a", base, 2, eps=0.2), _wc("b", base, 2, eps=0.2)],
             "not_run": [{"defence": d, "norm": "inf", "eps": 0.15} for d in ("a", "b")]}
    md = rt.markdown_table(table)
    assert md.splitlines()[0] == "| defence | clean | ℓ∞ ε=0.2 |"
    assert md.splitlines()[-1] == "Not run yet: every row at ℓ∞ ε=0.15."
    table["not_run"] = [{"defence": "b", "norm": "inf", "eps": 0.15}, {"defence": "c", "norm": "2", "eps": 0.5}]
    assert rt.markdown_table(table).splitlines()[-1] == "Not run yet: b at ℓ∞ ε=0.15; c at ℓ2 ε=0.5."


def test_chapter_findings_count_the_longer_suites_of_the_recorded_table():
    """Chapter 6 shows and compares each row at its worst case over every recorded suite (20, 40, 80 steps): the
    paired counts come from the same flags as the headline, so a row the 40-step suite broke further is not compared
    at its 20-step number."""
    from pursamere.book import cifar10 as chapter
    from pursamere.evaluation.results import over_longer_suites, read_results

    data = ROOT / "book" / "data"
    res = read_results(data / "cifar10-cpu-table")
    rungs = chapter.longer_suites(res, [(40, data / "cifar10-cpu-table-40"), (80, data / "cifar10-cpu-table-80"),
                                        (160, data / "no-such-table")])
    assert [s for s, _ in rungs] == [40, 80]  # stops at the first folder without results
    assert chapter.longer_suites(res, [(40, data / "digits-whole-test")]) == []  # other images: nothing to compare
    merged = over_longer_suites(res, rungs)
    lines = chapter.findings(merged)
    ere, at = chapter._find(merged, family="ERE descent", classifier="plain"), chapter._find(merged, family="adversarial training")
    before = chapter._find(res, family="ERE descent", classifier="plain")
    # ERE descent: the 40-step suite broke what the 20-step one left; the recorded table's flags, image by image
    forty = next(x for x in rungs[0][1]["worst_case"] if (x["defence"], x["norm"]) == (ere["defence"], "inf"))
    assert [c["steps"] for c in ere["longer_suites"]] == [40, 80] and sum(ere["survived"]) < sum(before["survived"])
    assert sum(ere["survived"]) <= sum(forty["survived"])
    assert all(b or not a for a, b in zip(ere["survived"], before["survived"]))  # nothing the 20-step suite broke is back
    assert f"{ere['defence']}: " in lines[0] and "40- and 80-step suites too" in lines[0]
    pairs = chapter.paired_rows(merged)
    p = pairs[(pairs.A == "ERE descent (SAM off)") & (pairs.B == "adversarial training")].iloc[0]
    assert p["B keeps, A loses"] == sum(b and not a for a, b in zip(ere["survived"], at["survived"]))
    assert p["A keeps, B loses"] == sum(a and not b for a, b in zip(ere["survived"], at["survived"]))
    assert p["A robust"] == sum(ere["survived"])  # the merged flags, not the 20-step table's
    with pytest.raises(ValueError, match="other images"):
        over_longer_suites(res, [(40, read_results(data / "digits-whole-test"))])


def test_obfuscation_checks_in_progress_are_kept_and_restored(rt, tmp_path):
    """A job's obfuscation checks take hours on a CPU: recording keeps what it finished and the check attacks'
    flags under in-progress/<job>/checks until the job writes its table.md, and --restore writes them back."""
    book, root, fresh = tmp_path / "book", tmp_path / "whole", tmp_path / "fresh"
    job = root / "cifar-pursamere"
    (job / "checks-in-progress").mkdir(parents=True)
    (job / "checks.json").write_text(json.dumps([{"defence": "PurSAMERE", "gradient": "bpda", "checks": []}]))
    (job / "checks-in-progress" / ("ab" * 8 + ".json")).write_text(json.dumps({"attack": "it", "flags": [True]}))
    assert rt.record_checks(book, root) == [("cifar-pursamere", 2)]
    kept = book / rt.IN_PROGRESS / "cifar-pursamere" / rt.CHECKS
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*.json")) == ["checks-in-progress/" + "ab" * 8 + ".json",
                                                                             "checks.json"]
    assert rt.restore_checks(rt.kept_checks(book, fresh)) == 2
    assert rt.restore_checks(rt.kept_checks(book, fresh)) == 0  # never over a file
    assert (fresh / "cifar-pursamere" / "checks.json").read_text() == (job / "checks.json").read_text()
    (kept / "checks-in-progress" / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a kept obfuscation-check file"):
        rt.kept_checks(book, tmp_path / "other")
    assert not (tmp_path / "other").exists()  # every file checked before any is written
    (job / "table.md").write_text("done")  # the job finished its checks: nothing kept
    assert rt.record_checks(book, root) == [] and not (book / rt.IN_PROGRESS / "cifar-pursamere").exists()


def test_restore_gives_a_finished_job_back_the_checks_its_table_holds(rt, tmp_path):
    """A finished job keeps no checks in progress: its checks live in its table's checks.json. --restore writes them
    back into the job that made the defence's rows, so re-running it with --resume reuses them (the engine's exact
    match) instead of redoing hours of checks; entries that ``--checks`` made stay with the table; never over a file."""
    import shutil

    from pursamere.experiments.engine import _recorded_checks

    book, root = tmp_path / "book", tmp_path / "whole"
    shutil.copytree(ROOT / "book" / "data" / "cifar10-cpu-table", book / "cifar10-cpu-table")
    table = json.loads((book / "cifar10-cpu-table" / "checks.json").read_text())
    made = [e for e in table if "defence_fingerprint" in e]
    if len(made) == len(table):  # the jobs' own checks have replaced every --checks entry: add one, to keep testing
        extra = {k: v for k, v in made[0].items() if k != "defence_fingerprint"}  # that such entries stay put
        (book / "cifar10-cpu-table" / "checks.json").write_text(json.dumps(table + [{**extra, "defence": "a --checks entry"}]))
        table = json.loads((book / "cifar10-cpu-table" / "checks.json").read_text())
    assert made and len(made) < len(table)  # the table holds both kinds
    job_of = json.loads((book / "cifar10-cpu-table" / "provenance.json").read_text())["job_of"]
    todo = rt.recorded_checks(book, root)
    assert not root.exists()  # nothing written yet
    for text, target in todo:
        rows = {k.split("|")[0] for k, j in job_of.items() if j == target.parent.name}
        assert all(e["defence"] in rows and "defence_fingerprint" in e for e in json.loads(text))
    assert sorted(e for text, _ in todo for e in map(json.dumps, json.loads(text))) == sorted(map(json.dumps, made))
    assert rt.restore_checks(todo) == len(todo) and rt.restore_checks(rt.recorded_checks(book, root)) == 0
    for _, target in todo:  # what the engine reads back on --resume: every entry whole
        assert _recorded_checks(target.parent) == json.loads(target.read_text())
    todo[0][1].write_text("[]")  # a job's own file (newer) is never overwritten
    assert rt.restore_checks(rt.recorded_checks(book, root)) == 0 and todo[0][1].read_text() == "[]"
    # the restored job has no table.md (the engine's last file): recording keeps no copy of checks its table holds
    target = todo[0][1]
    target.write_text(json.dumps(json.loads(todo[0][0])))
    assert rt.record_checks(book, root) == [] and not (book / rt.IN_PROGRESS).exists()
    target.write_text(json.dumps(json.loads(todo[0][0]) + [{**made[0], "n": 1}]))  # one it does not hold: kept
    assert rt.record_checks(book, root) == [(target.parent.name, 1)]


def test_a_jobs_finished_checks_go_into_its_tables_checks(rt, tmp_path):
    """The book shows a table's checks.json: a job's finished checks replace the table's entry for the same defence
    and gradient, other entries stay; a resumed job's newest entry wins over its stale one; and a bad file, checks
    of a defence the job has no row of, or two jobs with the same checks change no table (every file checked first)."""
    import shutil

    from pursamere.evaluation.results import SCHEMA

    book, root = tmp_path / "book", tmp_path / "whole"

    def job(name, entries, defence="PurSAMERE"):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "results.json").write_text(json.dumps({"meta": {"schema": SCHEMA}, "rows": [{"defence": defence}]}))
        (root / name / "checks.json").write_text(entries if isinstance(entries, str) else json.dumps(entries))

    table, eq17 = book / "cifar10-cpu-table", book / "cifar10-cpu-eq17"
    for t in (table, eq17):
        t.mkdir(parents=True)
    old = [{"defence": "ERE", "gradient": "bpda", "n": 16, "checks": []},
           {"defence": "PurSAMERE", "gradient": "bpda", "n": 16, "checks": []}]
    (table / "checks.json").write_text(json.dumps(old))
    mine = [{"defence": "PurSAMERE", "gradient": "bpda", "n": 32, "checks": [{"name": "x", "passed": True}]},
            {"defence": "PurSAMERE", "gradient": "exact", "n": 32, "checks": []}]
    stale = {**mine[1], "n": 16, "checks": [{"name": "old", "passed": False}]}
    job("cifar-pursamere", mine + [stale])  # a resumed run keeps its stale entry after the new one
    assert rt.merge_checks(book, root, write=False) == [] and json.loads((table / "checks.json").read_text()) == old
    assert rt.merge_checks(book, root) == [("cifar10-cpu-table", [("PurSAMERE", "bpda", 32), ("PurSAMERE", "exact", 32)])]
    assert json.loads((table / "checks.json").read_text()) == [old[0]] + mine
    assert rt.merge_checks(book, root) == []  # nothing new
    job("cifar40-pursamere", mine)  # a longer suite's copy of the 20-step job's checks: its table runs none
    assert rt.merge_checks(book, root) == [] and not (book / "cifar10-cpu-table-40" / "checks.json").exists()

    (eq17 / "checks.json").write_text("[]")
    recorded = {t: (t / "checks.json").read_text() for t in (table, eq17)}
    job("cifar-eq17-ere", [{**mine[0], "defence": "ERE"}], defence="ERE")  # a good job of another table
    for bad, match in ((lambda: job("cifar-ere", [{**mine[0], "defence": "ADP"}], defence="ERE"), "'ADP', which has no row"),
                       (lambda: job("cifar-ere", "[{", defence="ERE"), "checks.json is not valid JSON"),
                       (lambda: job("cifar-ere", [{"defence": ["x"], "gradient": "bpda", "n": 1, "checks": []}]),
                        "is not an obfuscation-check record"),
                       (lambda: job("cifar-pursamere2", mine), "both hold checks of 'PurSAMERE'")):
        bad()
        with pytest.raises(ValueError, match=match):
            rt.merge_checks(book, root)
        assert {t: (t / "checks.json").read_text() for t in (table, eq17)} == recorded
        for name in ("cifar-ere", "cifar-pursamere2"):
            shutil.rmtree(root / name, ignore_errors=True)
    (table / "checks.json").write_text(json.dumps([{"gradient": "bpda"}]))  # the table's own file, malformed
    with pytest.raises(ValueError, match="cifar10-cpu-table/checks.json is not an obfuscation-check record"):
        rt.merge_checks(book, root, write=False)


def test_a_rung_does_not_list_rows_shorter_suites_settled_as_not_run(rt, tmp_path):
    """A CIFAR-10 rung table's "not run yet" leaves out the rows its job will never run: nothing left to break, or a
    finished shorter rung that broke under 1 image in 100; a row still undecided (or still running) stays listed."""
    from pursamere.evaluation.results import SCHEMA

    meta, n = {"data_fingerprint": "x", "schema": SCHEMA}, 200
    half = [True] * 100 + [False] * 100
    tables = {
        "cifar10-cpu-table": [_wc("nothing", [False] * n, 4), _wc("held", half, 4), _wc("broken", half, 4),
                              _wc("running", half, 4), _wc("slow", half, 2, 4)],
        "cifar10-cpu-table-40": [_wc("held", [True] * 99 + [False] * 101, 8),  # broke 1 of 100: converged
                                 _wc("broken", [True] * 90 + [False] * 110, 8),  # broke 10: not converged
                                 _wc("running", [True] * 99 + [False] * 101, 6, 8)],  # under the bar, unfinished
    }
    for t, wc in tables.items():
        (tmp_path / t).mkdir()
        (tmp_path / t / "results.json").write_text(json.dumps({"meta": meta, "rows": [], "worst_case": wc}))
    eps = 0.1
    assert rt.settled_before("cifar10-cpu-table-80", tmp_path) == {("nothing", "inf", eps), ("held", "inf", eps)}
    assert rt.settled_before("cifar10-cpu-table-40", tmp_path) == {("nothing", "inf", eps)}
    assert rt.settled_before("cifar10-cpu-table", tmp_path) == set() and rt.settled_before("digits-whole-test", tmp_path) == set()
    # the recorded book: whatever it holds, a group is only dropped where a shorter suite settled it
    book = ROOT / "book" / "data"
    full = rt.expected_groups("cifar10-cpu-table-160")
    kept = rt.expected_groups("cifar10-cpu-table-160", book)
    assert set(kept) <= set(full) and set(full) - set(kept) == rt.settled_before("cifar10-cpu-table-160", book) & set(full)
    assert "undefended" in {d for d, _, _ in set(full) - set(kept)}  # 0.0 % at 20 steps: nothing left to break


def test_sam_against_sam_off_compares_two_converged_rows_even_when_one_needed_a_longer_suite():
    """ERE descent needed the 160-step suite, PurSAMERE (once its 80-step suite has finished) did not: each row then
    stands at its converged worst case, and chapter 6 compares the two as they are instead of calling them not
    comparable (a row still running, or not converged, keeps the attacks-both-ran comparison)."""
    import copy

    from pursamere.book import cifar10 as chapter
    from pursamere.evaluation.results import convergence, over_longer_suites, paired, read_results

    data = ROOT / "book" / "data"
    res = read_results(data / "cifar10-cpu-table")
    merged = over_longer_suites(res, chapter.longer_suites(res, [(s, data / f"cifar10-cpu-table-{s}") for s in (40, 80, 160)]))
    sam, ere = chapter._find(merged, family="PurSAMERE"), chapter._find(merged, family="ERE descent", classifier="plain")
    assert convergence(ere) == (True, 160)
    if convergence(sam) != (True, 80):  # its 80-step suite still running: shown as if it had finished, flags as they are
        merged = copy.deepcopy(merged)
        sam = chapter._find(merged, family="PurSAMERE")
        sam["complete"] = sam["longer_suites"][-1]["complete"] = True
    lines = chapter.findings(merged)
    line = next(s for s in lines if s.startswith("SAM (the paper's"))
    q = paired(sam["survived"], ere["survived"])
    assert "converged (80 steps with SAM, 160 without)" in line
    assert f"{q['a_keeps_b_loses']} images kept only with SAM, {q['b_keeps_a_loses']} only without" in line
    assert ("SAM is ahead" in line) == (q["p"] < 0.05 and q["a_robust"] > q["b_robust"])
    assert not any(s.startswith("On the ") and "attacks both have run" in s for s in lines)
    # not converged: back to the attacks both ran
    sam["longer_suites"][-1]["broke"] = 3
    lines = chapter.findings(merged)
    assert any("have not run the same attacks" in s for s in lines)


def test_provenance_lists_jobs_in_the_tables_row_order_whatever_order_the_folders_hold(rt):
    """--restore rebuilds a job folder with its rows in another order than the run wrote them; recording it again
    must not rewrite provenance.json (a diff of moved lines with no change)."""
    a, b, c = ({"key": f"d|{n}|inf|0.2"} for n in "ABC")
    res = {"rows": [a, b, c]}
    one = rt.provenance({Path("job-1"): [a, c], Path("job-2"): [b]}, res, {}, {}, set(), False, None)
    two = rt.provenance({Path("job-2"): [b], Path("job-1"): [c, a]}, res, {}, {}, set(), False, None)
    assert list(one["job_of"].items()) == list(two["job_of"].items()) == [
        (a["key"], "job-1"), (b["key"], "job-2"), (c["key"], "job-1")]


def test_the_other_rows_40_step_check_runs_their_pursamere_rows_only(rt, tmp_path):
    """cifar10-cpu-rest-40 (jobs cifar40-rest-*): PurSAMERE at ε_pur 8 and 16/255 of the other rows, the 20-step suite
    then the 40-step one on what it left, at ℓ∞; its job starts from the 20-step job's rows (within its budget). The
    README's table of the other rows gains a longer-suites column: the PurSAMERE rows say what 40 steps broke, the
    rows the check does not run say nothing ("–", not "not run yet")."""
    import shutil

    t = "cifar10-cpu-rest-40"
    pr, keep = rt._protocol(t)
    assert [str(x.norm) for x in pr.threats] == ["inf"]
    labels = {d.label for d in rt._protocol("cifar10-cpu-rest")[1] if d.label.startswith("PurSAMERE")}
    assert len(labels) == 2 and {d.label for d in keep} == {g[0] for g in rt.expected_groups(t)} == labels
    assert {("BPDA40", "inf"), ("exact-APGD-T40-long", "inf"), ("BPDA20", "inf")} <= rt.planned_attacks(t)
    assert rt._job_table("cifar40-rest-pursamere") == t
    assert rt._job_table("cifar40-pursamere") == "cifar10-cpu-table-40" and rt._job_table("cifar-rest-pursamere") == "cifar10-cpu-rest"
    src = ROOT / "book" / "data" / "cifar10-cpu-rest"
    res = json.loads((src / "results.json").read_text())
    mine = [r for r in res["rows"] if r["defence"] in labels]
    rt.check_budget(t, {Path("cifar40-rest-pursamere"): mine})
    shutil.copytree(src, tmp_path / "cifar10-cpu-rest")
    (tmp_path / t).mkdir()
    rung = {**res, "rows": mine, "worst_case": [w for w in res["worst_case"] if w["defence"] in labels]}
    (tmp_path / t / "results.json").write_text(json.dumps(rung))
    lines = {line.split(" | ")[0][2:]: line for line in rt.readme_table(tmp_path, "cifar10-cpu-rest").splitlines()
             if line.startswith("| ") and "defence" not in line}
    assert rt.readme_table(tmp_path, "cifar10-cpu-rest").splitlines()[0].endswith("| longer suites (ℓ∞ ε=0.03137) |")
    for d, line in lines.items():
        if d in labels:
            w = next(w for w in res["worst_case"] if w["defence"] == d)
            want = f"40 steps broke 0 of {sum(w['survived'])}" if w["complete"] else "after its own suite has finished"
            assert line.split(" | ")[-1].startswith(want), line
        else:
            assert line.endswith("| – |"), line


def test_device_queue_starts_the_digits_320_step_rung_from_its_160_step_job_finished_in_the_call(tmp_path):
    """scripts/device_evaluate.sh: once digits160-0.2-ere finishes in a call, digits320-0.2-ere on the same line
    starts from a copy of its folder and resumes it (--resume), at --then-steps 160,320."""
    import os
    import stat
    import subprocess
    import sys

    fake = tmp_path / "py"  # every ensemble job "finishes" at once: it writes a results.json that says nothing stopped it
    fake.write_text('#!/bin/bash\nif [ "$1" = -m ]; then echo "$*" >> "$(dirname "$0")/calls"; while [ $# -gt 0 ]; do '
                    '[ "$1" = --out ] && { mkdir -p "$2"; echo \'{"meta": {}}\' > "$2/results.json"; }; shift; done; exit 0; fi\n'
                    f'exec {sys.executable} "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    jobs = (ROOT / "scripts" / "device_evaluate.sh").read_text().split("<<JOBS\n")[1].split("\nJOBS\n")[0].splitlines()
    line = next(i for i, x in enumerate(jobs, 1) if x.startswith("ens digits160-0.2-ere "))
    env = dict(os.environ, SMOKE="0", PARALLEL="1", JOBS_FIRST=str(line), PY=str(fake), DEVICE="cpu", LC_ALL="C.UTF-8")
    cmd = ["bash", str(ROOT / "scripts" / "device_evaluate.sh"), str(tmp_path / "out"), "100000", str(tmp_path / "data")]
    subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    status = (tmp_path / "device-work" / "logs" / "status").read_text()
    assert "digits160-0.2-ere: exit 0" in status and "digits320-0.2-ere: start" in status and ", resuming" in status, status
    (call,) = [c for c in (tmp_path / "calls").read_text().splitlines() if "digits320-0.2-ere" in c]
    assert "--then-steps 160,320" in call and "--resume" in call and "--steps 80" in call


def test_device_queue_never_starts_a_40_step_job_from_an_unfinished_20_step_folder(tmp_path):
    """scripts/device_evaluate.sh: a cifar40-* job starts from its 20-step job's folder only once that has finished
    (else the 20-step attacks left would run twice, there and in the copy): a recorded folder still running is
    refused, as is starting from scratch when the 20-step job did not finish in the call; digits320-0.2-ere too."""
    import os
    import shutil
    import stat
    import subprocess
    import sys

    whole = tmp_path / "whole"
    (whole / "cifar-rest-pursamere").mkdir(parents=True)
    shutil.copy(ROOT / "book" / "data" / "cifar10-cpu-rest" / "results.json", whole / "cifar-rest-pursamere")
    (whole / "cifar-rest-pursamere" / "rows-in-progress").mkdir()  # a row in progress: the job has not finished
    (whole / "cifar-rest-pursamere" / "rows-in-progress" / ("0" * 16 + ".ckpt")).write_bytes(b"")
    fake = tmp_path / "py"  # the real interpreter for the script's checks; every ensemble job fails at once
    fake.write_text(f'#!/bin/bash\n[ "$1" = -m ] && exit 1\nexec {sys.executable} "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, SMOKE="0", PARALLEL="1", JOBS_FIRST="1", PY=str(fake), DEVICE="cpu", LC_ALL="C.UTF-8")
    cmd = ["bash", str(ROOT / "scripts" / "device_evaluate.sh"), str(tmp_path / "out"), "100000", str(tmp_path / "data")]
    for resume, why in ((str(whole), "has not finished"), ("", "has not finished")):
        done = subprocess.run(cmd, cwd=tmp_path, env={**env, "RESUME_FROM": resume} if resume else env,
                              capture_output=True, text=True, timeout=300)
        status = (tmp_path / "device-work" / "logs" / "status").read_text()
        assert "cifar-rest-pursamere: exit 1" in status, (status, done.stderr)
        assert f"cifar40-rest-pursamere: skipped (cifar-rest-pursamere {why})" in status, status
        assert "cifar40-rest-pursamere: start" not in status
    # the digits 320-step rung likewise: only after its 160-step job finished in the call, never from scratch
    jobs = (ROOT / "scripts" / "device_evaluate.sh").read_text().split("<<JOBS\n")[1].split("\nJOBS\n")[0].splitlines()
    line = next(i for i, x in enumerate(jobs, 1) if x.startswith("ens digits160-0.2-ere "))
    assert "ens digits320-0.2-ere " in jobs[line - 1]  # on the same line, after it
    subprocess.run(cmd, cwd=tmp_path, env={**env, "JOBS_FIRST": str(line)}, capture_output=True, text=True, timeout=300)
    status = (tmp_path / "device-work" / "logs" / "status").read_text()
    assert "digits160-0.2-ere: exit 1" in status, status
    assert "digits320-0.2-ere: skipped (digits160-0.2-ere has not finished)" in status and "digits320-0.2-ere: start" not in status
