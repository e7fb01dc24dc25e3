"""The attack ensemble (worst case per image), cascades, warm starts, the studies, TRADES, the CLI."""
import json

import pytest
import torch

from pursamere.cli import main
from pursamere.evaluation.attacks import Threat
from pursamere.evaluation.defences import Defence, Family
from pursamere.evaluation.results import merge_results
from pursamere.evaluation.runner import evaluate
from pursamere.evaluation.suite import AttackSpec, Budget, applies, standard_suite
from pursamere.experiments import engine, protocols
from pursamere.experiments.presets import TINY

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest

PLAN = TINY.ensemble


def _linear_case(n: int):
    """A seeded 3-class linear classifier on n random 4×4 images, labelled by its own predictions."""
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x = torch.rand(n, 1, 4, 4)
    return clf, x, clf(x).argmax(1)


def run_ensemble(out, work, only=(), resume=False):
    opts = engine.Options(workdir=str(work / "runs"), progress=False, resume=resume, log=lambda *a: None)
    return engine.run(TINY, protocols.ensemble(TINY, PLAN, only=only), out, opts).results


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("ens")
    return run_ensemble(work / "out", work), work


def _flags(row):
    return [bool(c) for c in row["survived"]]


def test_ensemble_worst_case_is_per_image_and_never_above_any_attack(tiny_run):
    res, work = tiny_run
    assert len(res["worst_case"]) == 2 * len({r["defence"] for r in res["rows"]})
    for w in res["worst_case"]:
        rows = [r for r in res["rows"] if (r["defence"], r["norm"], r["eps"]) == (w["defence"], w["norm"], w["eps"])]
        assert w["robust_acc"] <= min(r["robust_acc"] for r in rows) + 1e-12
        robust = [all(_flags(r)[i] for r in rows) for i in range(w["n"])]
        assert w["robust_acc"] == pytest.approx(sum(robust) / w["n"])
        # a cascaded row is cumulative: it never claims an image that an earlier row of the suite broke
        for j, r in enumerate(rows):
            if r["cascade"]:
                before = [all(_flags(q)[i] for q in rows[:j]) for i in range(w["n"])]
                assert all(b or not f for b, f in zip(before, _flags(r)))
    # each defence got the attacks that apply to it (decided on its structured fields)
    got = {(r["defence"], r["attack"]) for r in res["rows"]}
    fields = {r["defence"]: (r["family"], r["classifier"], r["deterministic"]) for r in res["rows"]}
    assert ("undefended", "exact1") not in got and ("undefended", "APGD-DLR2") in got
    assert ("ADP", "BPDA2") in got and ("ADP", "exact1") not in got
    assert ("ADP (fixed seed)", "APGD-CE2→exact1") in got and ("ADP (fixed seed)", "partial1-margin2") not in got
    assert ("undefended", "APGD-T2") in got and ("ADP", "APGD-T2") in got
    assert fields["ADP"] == ("ADP", "plain", False) and fields["ADP (fixed seed)"] == ("ADP", "plain", True)
    ere = [d for d, f in fields.items() if f[:2] == ("ERE descent", "eq17")]
    assert len(ere) == 1 and (ere[0], "partial1-margin2") in got
    stacked = [d for d, f in fields.items() if f[:2] == ("ERE descent", "pgd-at")]
    assert len(stacked) == 1 and ("TRADES", "Square5") in got and fields["TRADES"][0] == "TRADES"
    assert {r["role"] for r in res["rows"]} == {"gray-box", "bpda", "exact", "bpda→exact", "partial unrolling", "apgd", "square"}
    table = (work / "out" / "table.md").read_text()
    assert "†" in table and table.index("| gPGD2") < table.index("APGD-CE2 †") < table.index("| exact1 †") < table.index("Square5 †")


def test_ensemble_resumes_without_recomputing(tiny_run):
    res, work = tiny_run
    with pytest.raises(FileExistsError, match="finished run"):  # a finished run is never overwritten silently
        run_ensemble(work / "out", work)
    again = run_ensemble(work / "out", work, resume=True)
    assert [r["seconds"] for r in again["rows"]] == [r["seconds"] for r in res["rows"]]
    assert again["worst_case"] == res["worst_case"]


def test_merge_results_joins_split_runs(tiny_run, tmp_path):
    res, work = tiny_run
    a = run_ensemble(tmp_path / "a", work, only=("undefended",))
    b = run_ensemble(tmp_path / "b", work, only=("TRADES",))
    m = merge_results([tmp_path / "a" / "results.json", tmp_path / "b" / "results.json"], tmp_path / "m",
                      order=["TRADES", "undefended"])
    assert len(m["rows"]) == len(a["rows"]) + len(b["rows"]) and (tmp_path / "m" / "table.md").exists()
    assert m["rows"][0]["defence"] == "TRADES" and m["rows"][-1]["defence"] == "undefended"
    with pytest.raises(ValueError, match="more than one"):
        merge_results([tmp_path / "a" / "results.json", tmp_path / "a" / "results.json"], tmp_path / "m2")
    with pytest.raises(ValueError, match="no defence matches"):
        run_ensemble(tmp_path / "c", work, only=("nothing",))


def test_cascade_and_warm_start_in_evaluate(tmp_path):
    """Planted classifier: a cascaded attack sees only the survivors; a warm start gets the earlier end points."""
    import pursamere.evaluation.runner as ev

    clf, x, y = _linear_case(16)  # clean accuracy 100%
    d = Defence("net", clf)
    threat = Threat("inf", 0.1)
    specs = [AttackSpec("fgsm", steps=1), AttackSpec("pgd3", steps=3, cascade=True),
             AttackSpec("warm", steps=2, cascade=True, warm_from="fgsm")]
    seen, real = [], ev.attack_images

    def which(xs):  # the images attacked, as a mask over x
        return torch.tensor([any(torch.equal(xi, s) for s in xs) for xi in x])

    def spy(defence, spec, threat, xs, ys, **kw):
        seen.append((spec.name, which(xs), kw.get("x_init")))
        return real(defence, spec, threat, xs, ys, **kw)

    ev.attack_images = spy
    try:
        res = evaluate([d], specs, [threat], x, y, tmp_path, progress=False)
        fgsm, casc, warm = res["rows"]
        flags = {r["attack"]: torch.tensor(_flags(r)) for r in res["rows"]}
        assert 0 < int(flags["fgsm"].sum()) < 16  # the planted budget breaks some images, not all
        assert torch.equal(seen[0][1], torch.ones(16, dtype=torch.bool)) and seen[0][2] is None
        assert torch.equal(seen[1][1], flags["fgsm"])  # the cascade attacked exactly fgsm's survivors
        assert torch.equal(seen[2][1], flags["pgd3"])
        fgsm_points = ev.attack_flags(d, specs[0], threat, x, y, return_points=True)[1]
        assert torch.equal(seen[2][2], fgsm_points[flags["pgd3"]])  # the warm start got fgsm's end points
        assert not bool((flags["pgd3"] & ~flags["fgsm"]).any()) and not bool((flags["warm"] & ~flags["pgd3"]).any())
        assert casc["attack_settings"]["after"] == ["fgsm"] and warm["attack_settings"]["after"] == ["fgsm", "pgd3"]
        assert warm["attack_settings"]["warm_settings"]["steps"] == 1
        assert res["worst_case"][0]["robust_acc"] == warm["robust_acc"] and res["worst_case"][0]["cascaded"] == ["pgd3", "warm"]

        # resume: nothing recomputed; after a change of the first attack everything after it is recomputed,
        # and the warm start's source is recomputed from disk-reused rows only where needed
        seen.clear()
        evaluate([d], specs, [threat], x, y, tmp_path, progress=False)
        assert seen == []
        specs2 = [AttackSpec("fgsm", steps=1, step_size=0.05), *specs[1:]]
        evaluate([d], specs2, [threat], x, y, tmp_path, progress=False)
        assert [n for n, _, _ in seen] == ["fgsm", "pgd3", "warm"]
        seen.clear()
        # a reordered suite: the cascaded row's "after" differs, so it is not reused
        specs3 = [specs2[0], AttackSpec("other", steps=1, step_size=0.02), *specs2[1:]]
        import shutil

        shutil.copytree(tmp_path, tmp_path / "lost", ignore=shutil.ignore_patterns("end-points"))
        evaluate([d], specs3, [threat], x, y, tmp_path, progress=False)
        # fgsm's row is reused from disk and its end points were kept: the warm start reads them
        assert [n for n, _, _ in seen] == ["other", "pgd3", "warm"]
        fgsm2_points = ev.attack_flags(d, specs2[0], threat, x, y, return_points=True)[1]
        assert torch.equal(seen[2][2], fgsm2_points[seen[2][1]])
        seen.clear()
        # without them (a folder copied without end-points/), they are recomputed, on the images the warm start
        # attacks only
        evaluate([d], specs3, [threat], x, y, tmp_path / "lost", progress=False)
        assert [n for n, _, _ in seen] == ["other", "pgd3", "fgsm", "warm"]
        assert torch.equal(seen[2][1], seen[3][1])
        # recomputed end points are kept like any others: a later run whose warm start changed reads them
        seen.clear()
        specs5 = [*specs3[:-1], AttackSpec("warm", steps=3, cascade=True, warm_from="fgsm")]
        evaluate([d], specs5, [threat], x, y, tmp_path / "lost", progress=False)
        assert [n for n, _, _ in seen] == ["warm"]
    finally:
        ev.attack_images = real
    with pytest.raises(ValueError, match="earlier attack"):
        evaluate([d], specs[::-1], [threat], x, y, tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="never attacked"):  # a full-set attack cannot start from a cascaded one's points
        evaluate([d], [specs[0], specs[1], AttackSpec("w2", steps=2, warm_from="pgd3")], [threat], x, y, tmp_path / "c",
                 progress=False)


@pytest.mark.parametrize("kw,msg", [
    (dict(gradient="exact", unroll_last=1, kind="square"), "unroll_last needs"),
    (dict(gradient="bpda", unroll_last=1), "unroll_last needs"),
    (dict(kind="fgsm"), "unknown kind"), (dict(gradient="white"), "unknown gradient"),
    (dict(steps=0), "steps must"), (dict(kind="square", gradient="none", warm_from="x"), "warm_from needs"),
    (dict(queries=50), "queries applies to kind='square' only"), (dict(kind="apgd-ce", targets=5), "targets applies"),
    (dict(kind="apgd-dlr", loss="margin"), "loss applies"), (dict(kind="square", gradient="none", step_size=0.1), "step_size"),
    (dict(kind="square"), "gradient-free"), (dict(kind="apgd-t", restarts=2), "restarts must be 1"),
    (dict(warm_from="a"), "its own"),
])
def test_bad_attack_specs(kw, msg):
    with pytest.raises(ValueError, match=msg):
        AttackSpec("a", **kw)


def test_applies_follows_the_suite_table():
    from pursamere.method.baselines import ADP, ADPConfig
    from pursamere.method.nets import SCORE_TINY, ScoreNet
    from pursamere.method.purify import Purifier, PurifyConfig

    clf, score = torch.nn.Linear(2, 2), ScoreNet(SCORE_TINY).eval()
    atk = standard_suite(Budget())

    def names(d):
        return [a.name for a in atk if applies(d, a)]

    assert names(Defence("u", clf)) == ["BPDA20", "APGD-CE20", "APGD-DLR20", "APGD-T20", "Square100"]
    assert names(Defence("t", clf, family=Family.TRADES)) == names(Defence("u", clf))
    assert names(Defence("c", clf, lambda x: x.clamp(0.1, 0.9))) == ["gPGD20", "BPDA20", "APGD-CE20", "APGD-DLR20",
                                                                   "APGD-T20", "Square100"]
    assert names(Defence("p", clf, Purifier(score, PurifyConfig()))) == [a.name for a in atk]
    assert names(Defence("a", clf, ADP(score, ADPConfig(fixed_noise=False)))) == ["BPDA20", "APGD-CE20", "APGD-DLR20",
                                                                                  "APGD-T20", "Square100"]
    fixed = names(Defence("f", clf, ADP(score, ADPConfig(fixed_noise=True))))
    assert "partial3-margin20" not in fixed and "APGD-CE20→exact10" in fixed and "exact10" in fixed
    # APGD on the exact gradient: for deterministic purifiers with exact gradients only, last in the suite
    exact_apgd = ["APGD-CE20→exact-APGD-CE10", "exact-APGD-T10", "exact-APGD-T20-long"]
    assert fixed[-3:] == exact_apgd and [a.name for a in atk][-3:] == exact_apgd
    assert not set(exact_apgd) & set(names(Defence("c", clf, lambda x: x.clamp(0.1, 0.9))))
    warm, targeted, long = atk[-3:]
    assert (warm.kind, warm.gradient, warm.warm_from, warm.cascade) == ("apgd-ce", "exact", "APGD-CE20", True)
    assert (targeted.kind, targeted.gradient, targeted.targets, targeted.cascade) == ("apgd-t", "exact", 3, True)
    # the targeted attack again at APGD's step count, not at the exact gradient's
    assert (long.kind, long.gradient, long.steps, long.targets, long.cascade) == ("apgd-t", "exact", 20, 3, True)
    doubled = [a.name for a in standard_suite(Budget().doubled())][-3:]
    assert doubled == ["APGD-CE40×2→exact-APGD-CE20×2", "exact-APGD-T20", "exact-APGD-T40-long"]
    # where the exact-gradient budget already has APGD's step count there is no second, identical run
    same = [a.name for a in standard_suite(Budget(exact_steps=20))]
    assert same[-1] == "exact-APGD-T20" and len(same) == len(set(same)) == len(atk) - 1


def test_tiny_adversarial_training_beats_the_plain_model_under_pgd(tiny_run):
    """The TINY preset's PGD-AT classifier is more robust than its plain one on the same data."""
    from pursamere.evaluation.attacks import pgd, robust_accuracy
    from pursamere.experiments.artifacts import prepare

    _, work = tiny_run
    arts = prepare(TINY, work / "runs", progress=False, log=lambda *a: None)
    split = arts.split
    x, y = split.x_test[:200], split.y_test[:200]
    threat = Threat("inf", TINY.threats["inf"])
    clf = {k: arts.classifier(k) for k in ("plain", "pgd-at", "trades")}
    acc = {k: robust_accuracy(c, pgd(c, x, y, threat, steps=10), y) for k, c in clf.items()}
    assert acc["pgd-at"] > acc["plain"] + 0.05 and acc["trades"] > acc["plain"] + 0.05, acc


def test_ensemble_seed_moves_the_starts_and_the_stochastic_noise_only(tiny_run, capsys):
    """ensemble --seed S: the run's seed and the stochastic purifiers' noise streams move by S; a fixed-seed
    purifier's noise (part of that defence) and every other defence stay as they are; seed 0 is the recorded run."""
    from pursamere.cli import _reseeded

    pr = protocols.ensemble(TINY, PLAN)
    assert _reseeded(pr, 0) is pr
    q = _reseeded(pr, 2)
    assert q.seed == 2 and q.plan["seed"] == 2 and "seed 2" in q.title and "seed" not in pr.plan
    moved = {a.label for a, b in zip(pr.defences, q.defences) if a != b}
    assert moved == {"ADP", "DiffPure-style"}
    for a, b in zip(pr.defences, q.defences):
        if a.label in moved:
            assert b.purifier.seed == a.purifier.seed + 2 and b.purifier.replace(seed=a.purifier.seed) == a.purifier
    _, work = tiny_run
    args = ["ensemble", "--preset", "tiny", "--workdir", str(work / "runs"), "--n", "3", "--steps", "1", "--eps", "0.15",
            "--square-queries", "2", "--only", "ADP", "--quiet"]
    fps = {}
    for seed in (0, 1):
        out = work / f"seed{seed}"
        assert main([*args, "--seed", str(seed), "--out", str(out)]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["meta"]["seed"] == seed and {r["seed"] for r in res["rows"]} == {seed}
        fps[seed] = {r["defence"]: r["defence_fingerprint"] for r in res["rows"]}
    assert set(fps[0]) == set(fps[1]) == {"ADP", "ADP (fixed seed)"}  # the family: both rows
    assert fps[0]["ADP"] != fps[1]["ADP"]  # another noise stream: the rows of two seeds never mix
    assert fps[0]["ADP (fixed seed)"] == fps[1]["ADP (fixed seed)"]  # the same defence, attacked from other starts
    with pytest.raises(SystemExit):
        main([*args, "--seed", "-1", "--out", str(work / "bad")])
    assert "argument --seed: expected a whole number >= 0, got -1" in capsys.readouterr().err


def test_cli_ensemble_and_studies_on_tiny(tiny_run, capsys):
    _, work = tiny_run
    runs = str(work / "runs")
    out = work / "cli-ens"
    assert main(["ensemble", "--preset", "tiny", "--workdir", runs, "--n", "6", "--eps", "0.15", "--square-queries", "3",
                 "--only", "undefended,TRADES", "--out", str(out)]) == 0
    assert "worst case" in capsys.readouterr().out and (out / "results.json").exists()
    assert main(["ensemble", "--preset", "tiny", "--workdir", runs, "--best", "[1]", "--out", str(work / "x")]) == 2
    assert "--best must be a JSON object" in capsys.readouterr().err
    sam = work / "sam"
    assert main(["study", "sam", "--preset", "tiny", "--workdir", runs, "--n", "6", "--only", "SAM off;ℓ∞ ρ=σ/4",
                 "--out", str(sam)]) == 0
    summary = json.loads((sam / "study.json").read_text())
    assert [r["setting"] for r in summary["rows"]] == ["SAM off", "ℓ∞ ρ=σ/4"]
    assert all(r["worst_case"] <= min(r["per_attack"].values()) + 1e-12 for r in summary["rows"])
    assert main(["study", "sam", "--preset", "tiny", "--workdir", runs, "--only", "nonsense", "--out", str(sam)]) == 2
    assert "unknown SAM-study settings" in capsys.readouterr().err
    atk = work / "atk"
    assert main(["study", "attacks", "--preset", "tiny", "--workdir", runs, "--n", "4", "--out", str(atk)]) == 0
    rows = json.loads((atk / "study.json").read_text())["rows"]
    assert {"BPDA20→exact10", "partial1-margin20", "partial2-margin20", "Square100"} <= {r["attack"] for r in rows}
    conv = work / "conv"
    for only in ("1x1,2x1", "1x1-seed1"):  # points run one at a time add up in convergence.json
        assert main(["study", "convergence", "--preset", "tiny", "--workdir", runs, "--n", "3", "--only", only,
                     "--out", str(conv)]) == 0
    summary = json.loads((conv / "convergence.json").read_text())
    assert sorted({(c["steps"], c["seed"]) for c in summary["curve"]}) == [(1, 0), (1, 1), (2, 0)]
    assert [r["seed"] for r in next(iter(summary["seeds"].values()))["1x1"]] == [0, 1]
    assert main(["study", "convergence", "--preset", "tiny", "--workdir", runs, "--only", "1x1-s2", "--out", str(conv)]) == 2
    assert "STEPSxRESTARTS-seedS" in capsys.readouterr().err


def test_sam_grid_covers_the_study():
    from pursamere.experiments.protocols import sam_settings

    g = sam_settings(TINY.purify, 64)
    assert "SAM off" in g and g["ℓ2 ρ=√d·ε_pur/2"]["rho"] == pytest.approx(TINY.purify.eps_pur / 2 * 8)
    assert g["ℓ∞ ρ=σ"] == {"rho": 0.0, "rho_sigma": 1.0, "sam_norm": "inf"} and g["SAM off, M=1"]["antithetic"] is False
    assert {k for k in g if "M=" in k} == {"SAM off, M=1", "SAM off, M=16", "ℓ∞ ρ=ε_pur/2, M=1", "ℓ∞ ρ=ε_pur/2, M=16"}
    for kw in g.values():  # every setting is a valid config
        TINY.purify.replace(**kw)


def test_choose_setting_needs_a_significant_paired_gain():
    from pursamere.evaluation.results import sign_test
    from pursamere.experiments.studies import choose_setting

    assert sign_test(0, 0) == 1.0 and sign_test(9, 0) == pytest.approx(2 / 2 ** 9)
    assert sign_test(6, 4) == pytest.approx(sign_test(4, 6)) and sign_test(6, 4) > 0.5

    def make(bits):
        rows = [{"defence": s, "n": len(b), "survived": [int(c) for c in b], "norm": "inf", "eps": 0.2}
                for s, b in bits.items()]
        summary = {"settings": {s: {"rho": float(i)} for i, s in enumerate(bits)},
                   "rows": [{"setting": s, "worst_case": b.count("1") / len(b), "clean_acc": 1.0, "n": len(b)}
                            for s, b in bits.items()]}
        return summary, {"rows": rows}

    base = "1" * 20 + "0" * 20
    big = "1" * 20 + "1" * 10 + "0" * 10   # saves 10, loses 0
    small = "0" * 2 + "1" * 18 + "1" * 4 + "0" * 16  # saves 4, loses 2
    d = choose_setting(*make({"SAM off": base, "big": big}))
    assert d["chosen"] == "big" and d["saves"] == 10 and d["loses"] == 0 and d["p_value"] < 0.01
    d = choose_setting(*make({"SAM off": base, "small": small}))
    assert d["best"] == "small" and d["chosen"] == "SAM off" and (d["saves"], d["loses"]) == (4, 2)
    with pytest.raises(ValueError, match="no 'SAM off'"):
        choose_setting(*make({"x": base}))


def test_a_spent_time_budget_stops_cleanly_and_keeps_finished_rows(tmp_path):
    import time

    clf, x, y = _linear_case(12)
    specs = [AttackSpec("a", steps=2), AttackSpec("b", steps=2, cascade=True)]
    full = evaluate([Defence("net", clf)], specs, [Threat("inf", 0.1)], x, y, tmp_path / "full", progress=False)
    assert "stopped" not in full["meta"] and len(full["rows"]) == 2
    cut = evaluate([Defence("net", clf)], specs, [Threat("inf", 0.1)], x, y, tmp_path / "cut", progress=False,
                   deadline=time.monotonic() - 1)
    assert cut["rows"] == [] and "time budget" in cut["meta"]["stopped"]
    saved = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert saved["rows"] == [] and saved["meta"]["stopped"]
    # resuming with time left finishes the run and gives the uninterrupted rows
    again = evaluate([Defence("net", clf)], specs, [Threat("inf", 0.1)], x, y, tmp_path / "cut", progress=False)
    assert [r["survived"] for r in again["rows"]] == [r["survived"] for r in full["rows"]]


def test_early_stopping_changes_the_work_not_the_outcomes(tiny_run, tmp_path):
    """The whole tiny ensemble with images leaving broken attacks and without: the same rows, bit for bit."""
    from pursamere.experiments.artifacts import prepare

    _, work = tiny_run
    arts = prepare(TINY, work / "runs", progress=False, log=lambda *a: None)
    proto = protocols.ensemble(TINY, PLAN)
    defs = [arts.defence(s) for s in proto.defences]
    from pursamere.experiments.engine import select_images

    x, y, _ = select_images(TINY, arts.split, proto.images)
    spec_of = {d.name: s for d, s in zip(defs, proto.defences)}
    kw = dict(seed=0, progress=False, batch_size=PLAN.batch_size, applies=proto.applies(spec_of))
    on = evaluate(defs, proto.attacks, proto.threats, x, y, tmp_path / "on", **kw)
    fresh = [arts.defence(s) for s in proto.defences]  # stochastic purifiers restart their noise streams
    off = evaluate(fresh, proto.attacks, proto.threats, x, y, tmp_path / "off", stop_early=False, **kw)
    assert [(r["key"], r["survived"]) for r in on["rows"]] == [(r["key"], r["survived"]) for r in off["rows"]]
    broke = [r for r in on["rows"] if 0 < sum(r["survived"]) < r["n"] * r["clean_acc"]]
    assert broke  # the attacks broke images (the comparison has teeth)


def test_an_images_outcome_does_not_depend_on_its_batch(tmp_path):
    """Per-image seeds: the same images evaluated in batches of 3 and of 16 get the same outcomes."""
    torch.manual_seed(0)
    # convolutions only: batch-invariant bit for bit in float64 (MKL's nn.Linear rounds partial blocks differently)
    clf = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Tanh(), torch.nn.Conv2d(8, 5, 4), torch.nn.Flatten()).double().eval()
    x = torch.rand(16, 1, 6, 6, dtype=torch.float64)
    y = clf(x).argmax(1)
    specs = [AttackSpec("pgd", steps=3), AttackSpec("apgd", kind="apgd-ce", steps=4, cascade=True),
             AttackSpec("apgd-t", kind="apgd-t", steps=3, targets=2, cascade=True),
             AttackSpec("sq", kind="square", gradient="none", queries=10, cascade=True)]
    a = evaluate([Defence("n", clf)], specs, [Threat("inf", 0.05)], x, y, tmp_path / "a", progress=False, batch_size=3)
    b = evaluate([Defence("n", clf)], specs, [Threat("inf", 0.05)], x, y, tmp_path / "b", progress=False, batch_size=16)
    assert [r["survived"] for r in a["rows"]] == [r["survived"] for r in b["rows"]]
    assert 0 < sum(a["rows"][0]["survived"]) < 16


def _conv_case():
    """Sixteen 6×6 float64 images and a small conv net (batch-invariant bit for bit), labelled by itself."""
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Tanh(), torch.nn.Conv2d(8, 5, 4), torch.nn.Flatten()).double().eval()
    x = torch.rand(16, 1, 6, 6, dtype=torch.float64)
    return clf, x, clf(x).argmax(1)


def _warm_case(tmp_path):
    """Three rows on :func:`_conv_case` (the last warm-started from the second's end points), batches of 4: the
    uninterrupted results (in ``tmp_path/full``) and ``run(folder, **more)``, the same evaluation into another folder."""
    clf, x, y = _conv_case()
    specs = [AttackSpec("weak", steps=1, step_size=0.002), AttackSpec("apgd", kind="apgd-ce", steps=4, cascade=True),
             AttackSpec("warm", steps=3, cascade=True, warm_from="apgd")]

    def run(folder, **more):
        return evaluate([Defence("n", clf)], specs, [Threat("inf", 0.05)], x, y, folder, progress=False, batch_size=4,
                        **more)

    return run(tmp_path / "full"), run


def _power_cut(monkeypatch, ev, run, attack: str, nth: int) -> None:
    """``run()`` killed in the ``nth`` batch of ``attack``'s row (a power cut), as a stopped job is."""
    real, calls = ev._pgd_like, []

    def cut_power(*a, **k):
        calls.append(a[1].name)
        if a[1].name == attack and calls.count(attack) == nth:
            raise RuntimeError("power cut")
        return real(*a, **k)

    monkeypatch.setattr(ev, "_pgd_like", cut_power)
    with pytest.raises(RuntimeError, match="power cut"):
        run()
    monkeypatch.setattr(ev, "_pgd_like", real)


def _count_attacks(monkeypatch, ev) -> list:
    """The attack name of every batch ``_pgd_like`` runs from now on."""
    real, calls = ev._pgd_like, []
    monkeypatch.setattr(ev, "_pgd_like", lambda *a, **k: (calls.append(a[1].name), real(*a, **k))[1])
    return calls


def test_a_row_stopped_inside_resumes_after_its_finished_batches(tmp_path, monkeypatch):
    """A run killed in the middle of a row keeps that row's finished batches; the resumed run attacks only the
    rest, and every row (a later warm start from its end points included) equals the uninterrupted run's."""
    import pursamere.evaluation.runner as ev

    full, run = _warm_case(tmp_path)
    assert not (tmp_path / "full" / "rows-in-progress").exists()  # cleared as each row finished

    _power_cut(monkeypatch, ev, lambda: run(tmp_path / "cut"),
               "apgd", 2)  # die in the second batch of the second row
    (held,) = (tmp_path / "cut" / "rows-in-progress").iterdir()
    assert [r["attack"] for r in json.loads((tmp_path / "cut" / "results.json").read_text())["rows"]] == ["weak"]

    calls = _count_attacks(monkeypatch, ev)
    said = []
    again = run(tmp_path / "cut", log=said.append)
    n_apgd = int(torch.tensor(full["rows"][0]["survived"]).sum())
    assert calls.count("apgd") == -(-n_apgd // 4) - 1  # its first batch was not attacked again
    assert any("resumed after 4 of" in line for line in said)
    assert [(r["key"], r["survived"]) for r in again["rows"]] == [(r["key"], r["survived"]) for r in full["rows"]]
    assert 0 < sum(full["rows"][1]["survived"]) < sum(full["rows"][0]["survived"])  # the resumed row broke images
    assert not held.exists() and not held.parent.exists()


def test_a_resumed_warm_start_reads_the_end_points_it_starts_from(tmp_path, monkeypatch):
    """Stopped inside the warm-started row: the resumed run reads the kept end points of the row it starts from
    (no attack runs twice) and finishes with the uninterrupted rows; leftovers of finished rows are removed."""
    import pursamere.evaluation.runner as ev

    full, run = _warm_case(tmp_path)
    _power_cut(monkeypatch, ev, lambda: run(tmp_path / "cut"),
               "warm", 1)
    assert len(list((tmp_path / "cut" / "end-points").iterdir())) == 1  # apgd's: "warm" starts from it
    import shutil

    shutil.copytree(tmp_path / "cut", tmp_path / "cut-other")
    stale = tmp_path / "cut" / "rows-in-progress" / ev._file_name(full["rows"][0]["key"])
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"left behind by a crash after its row was written")
    calls = _count_attacks(monkeypatch, ev)
    again = run(tmp_path / "cut")
    assert set(calls) == {"warm"}  # apgd was not run again to find warm's start points
    assert [(r["key"], r["survived"]) for r in again["rows"]] == [(r["key"], r["survived"]) for r in full["rows"]]
    assert not (tmp_path / "cut" / "rows-in-progress").exists()
    # kept end points are used only by the settings that made them (here: images leave a broken attack or not)
    calls.clear()
    other = run(tmp_path / "cut-other", stop_early=False)
    assert "apgd" in calls and [r["survived"] for r in other["rows"]] == [r["survived"] for r in full["rows"]]


def test_rows_in_progress_travel_to_another_machine_as_safetensors(tmp_path, monkeypatch):
    """A run stopped inside a warm-started row: its kept batches and end points, exported as safetensors (what is
    committed) and imported into a fresh folder holding only results.json, resume it exactly where it stopped."""
    import shutil

    import pursamere.evaluation.runner as ev

    full, run = _warm_case(tmp_path)
    _power_cut(monkeypatch, ev, lambda: run(tmp_path / "cut"),
               "warm", 2)  # die in the second batch of the warm-started row
    assert ev.export_progress(tmp_path / "cut", tmp_path / "kept") == 2  # warm's first batch, apgd's end points
    kept = sorted((tmp_path / "kept").rglob("*.safetensors"))
    assert [f.parent.name for f in kept] == ["end-points", "rows-in-progress"]
    assert all(b"PURSAMERE-SHA256" not in f.read_bytes() and f.read_bytes()[8:9] == b"{" for f in kept)  # no pickle
    (tmp_path / "fresh").mkdir()
    shutil.copy(tmp_path / "cut" / "results.json", tmp_path / "fresh")
    assert ev.import_progress(tmp_path / "kept", tmp_path / "fresh") == (2, 0)
    assert ev.import_progress(tmp_path / "kept", tmp_path / "fresh") == (0, 2)  # never over a file the folder holds
    calls = _count_attacks(monkeypatch, ev)
    said = []
    again = run(tmp_path / "fresh", log=said.append)
    n_warm = int(torch.tensor(full["rows"][1]["survived"]).sum())
    assert set(calls) == {"warm"} and len(calls) == -(-n_warm // 4) - 1  # apgd not rerun, warm's first batch kept
    assert any("resumed after 4 of" in line for line in said)
    assert [(r["key"], r["survived"]) for r in again["rows"]] == [(r["key"], r["survived"]) for r in full["rows"]]
    # a copy kept before its row finished is stale: importing it into a folder that has finished the row writes only
    # the end points (a restored stale row in progress once hid the row really running from run_status)
    (tmp_path / "late").mkdir()
    shutil.copy(tmp_path / "fresh" / "results.json", tmp_path / "late")
    assert ev.import_progress(tmp_path / "kept", tmp_path / "late") == (1, 1)
    assert not (tmp_path / "late" / "rows-in-progress").exists()
    # a finished folder keeps nothing but its end points; an altered file is refused before anything is written
    assert ev.export_progress(tmp_path / "fresh", tmp_path / "kept") == 2  # merged: what was kept before stays
    assert ev.export_progress(tmp_path / "fresh", tmp_path / "kept", finished_rows={r["key"] for r in again["rows"]}) == 1
    # nor is a stale copy the folder itself holds (a stopped run leaves its finished rows' files)
    shutil.copytree(tmp_path / "cut" / "rows-in-progress", tmp_path / "fresh" / "rows-in-progress")
    assert ev.export_progress(tmp_path / "fresh", tmp_path / "kept2", finished_rows={r["key"] for r in again["rows"]}) == 1
    assert not (tmp_path / "kept2" / "rows-in-progress").exists()
    (f,) = (tmp_path / "kept").rglob("*.safetensors")
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 1
    f.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="SHA-256"):
        ev.import_progress(tmp_path / "kept", tmp_path / "other")
    assert not (tmp_path / "other").exists()
    from pursamere.io import save_tensor_state

    save_tensor_state(f, {"identity": "x", "attacked": torch.ones(3, dtype=torch.bool), "points": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="do not match its attacked images"):  # checksummed, but inconsistent
        ev.import_progress(tmp_path / "kept", tmp_path / "other")
    save_tensor_state(f, {"identity": "x", "attacked": torch.ones(3, dtype=torch.bool), "points": torch.tensor(0.0)})
    with pytest.raises(ValueError, match="wrong type or shape"):
        ev.import_progress(tmp_path / "kept", tmp_path / "other")
    (tmp_path / "kept" / "end-points" / "notes.txt").write_text("not a state")
    with pytest.raises(ValueError, match="not a kept state"):
        ev.export_progress(tmp_path / "kept", tmp_path / "again")  # names are checked too (here: the wrong suffix)


def test_a_row_in_progress_is_used_only_by_its_own_settings_and_a_corrupt_one_is_refused(tmp_path):
    from pursamere.evaluation.runner import RowCheckpoint

    clf, x, y = _conv_case()
    flags, points = torch.zeros(16, dtype=torch.bool), x.clone()
    mine = RowCheckpoint(tmp_path / "r.ckpt", {"key": "k", "seed": 0})
    flags[:4] = True
    points[:4] += 0.01
    mine.save(4, flags, points)
    other_f, other_p = torch.zeros(16, dtype=torch.bool), x.clone()
    assert RowCheckpoint(tmp_path / "r.ckpt", {"key": "k", "seed": 1}).restore(other_f, other_p, 4) == 0
    assert not other_f.any() and torch.equal(other_p, x)  # another seed's progress is not used
    assert RowCheckpoint(tmp_path / "r.ckpt", {"key": "k", "seed": 0}).restore(other_f, other_p, 4) == 4
    assert torch.equal(other_f, flags) and torch.equal(other_p, points)
    with pytest.raises(ValueError, match="does not fit its row"):  # a batch cut that does not match
        RowCheckpoint(tmp_path / "r.ckpt", {"key": "k", "seed": 0}).restore(other_f, other_p, 3)
    lean = RowCheckpoint(tmp_path / "lean.ckpt", {"key": "k", "seed": 0}, keep_points=False)
    lean.save(4, flags, points)  # outcomes only: no later row starts from this one's points
    f2, p2 = torch.zeros(16, dtype=torch.bool), x.clone()
    assert RowCheckpoint(tmp_path / "lean.ckpt", {"key": "k", "seed": 0}, keep_points=False).restore(f2, p2, 4) == 4
    assert torch.equal(f2, flags) and torch.equal(p2, x)
    assert RowCheckpoint(tmp_path / "lean.ckpt", {"key": "k", "seed": 0}).restore(f2, p2, 4) == 0  # not for a row that needs them
    (tmp_path / "r.ckpt").write_bytes(b"half a file")
    with pytest.raises(ValueError, match="corrupt: delete it to restart the row"):
        RowCheckpoint(tmp_path / "r.ckpt", {"key": "k", "seed": 0}).restore(other_f, other_p, 4)


def _small_case(k: int):
    """Ten 4×4 images, ``k`` random linear nets (labels from the first), two PGD attacks (the second cascaded)."""
    torch.manual_seed(0)
    x = torch.rand(10, 1, 4, 4)
    nets = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval() for _ in range(k)]
    return x, nets[0](x).argmax(1), nets, [AttackSpec("a", steps=2), AttackSpec("b", steps=2, cascade=True)], [Threat("inf", 0.1)]


def test_a_stopped_resume_never_loses_a_finished_row(tmp_path):
    """Two defences finished; the first is retrained and the rerun stops at once: both old rows stay on disk;
    a rerun with time recomputes the first only and marks nothing incomplete."""
    import time

    x, y, nets, specs, threat = _small_case(2)
    first = evaluate([Defence("d1", nets[0]), Defence("d2", nets[1])], specs, threat, x, y, tmp_path, progress=False)
    retrained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    cut = evaluate([Defence("d1", retrained), Defence("d2", nets[1])], specs, threat, x, y, tmp_path, progress=False,
                   deadline=time.monotonic() - 1)
    assert cut["meta"]["stopped"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["key"] for r in on_disk["rows"]) == sorted(r["key"] for r in first["rows"])
    again = evaluate([Defence("d1", retrained), Defence("d2", nets[1])], specs, threat, x, y, tmp_path, progress=False)
    d2 = [r for r in again["rows"] if r["defence"] == "d2"]
    assert [r["seconds"] for r in d2] == [r["seconds"] for r in first["rows"] if r["defence"] == "d2"]  # reused
    assert all(w["complete"] for w in again["worst_case"])


def test_a_time_budget_marks_partial_suites_incomplete(tmp_path):
    from pursamere.evaluation.results import render_table

    clf, x, y = _linear_case(8)
    specs = [AttackSpec("a", steps=1), AttackSpec("slow", steps=3, cascade=True)]
    class Clock:  # the deadline passes once the first row is on disk
        def __call__(self):
            return 10.0 if (tmp_path / "results.json").exists() else 0.0

    import pursamere.evaluation.runner as ev

    real = ev.time.monotonic
    ev.time.monotonic = Clock()
    try:
        res = evaluate([Defence("d", clf)], specs, [Threat("inf", 0.1)], x, y, tmp_path, progress=False, deadline=5.0)
    finally:
        ev.time.monotonic = real
    (w,) = res["worst_case"]
    assert [r["attack"] for r in res["rows"]] == ["a"] and not w["complete"] and w["planned"] == ["a", "slow"]
    assert "incomplete: 1 of 2 attacks" in render_table(res)


def test_flat_budget_counts_images_not_totals():
    from pursamere.experiments.studies import flat_budget

    def point(steps, restarts, survived):
        return {"defence": "d", "steps": steps, "restarts": restarts, "n": len(survived), "robust": sum(survived),
                "worst_case": sum(survived) / len(survived), "survived": survived}

    base = [1, 1, 0, 0] + [1] * 96
    swapped = [0, 0, 1, 1] + [1] * 96  # same total, two images newly broken
    curve = [point(10, 1, base), point(20, 1, swapped), point(10, 2, base)]
    assert flat_budget(curve, "d") == {}  # two of 100 images lost to the doubled steps: not flat
    curve = [point(10, 1, base), point(20, 1, base), point(10, 2, base)]
    assert flat_budget(curve, "d")["steps"] == 10
    assert flat_budget(curve[:2], "d") == {}  # the restarts doubling was never measured: not called flat


def test_ladder_union_counts_an_image_broken_at_any_budget():
    from pursamere.experiments.studies import ladder_union

    def point(steps, survived):
        return {"defence": "d", "steps": steps, "restarts": 1, "n": len(survived), "survived": survived}

    u = ladder_union([point(20, [1, 1, 0, 1]), point(10, [1, 0, 1, 1]), {**point(10, [0, 0, 0, 0]), "defence": "e"}], "d")
    assert u["survived"] == [True, False, False, True] and u["robust"] == 2 and u["budgets"] == [(10, 1), (20, 1)]
    assert ladder_union([], "d") == {}
    with pytest.raises(ValueError, match="different numbers"):
        ladder_union([point(10, [1, 1]), point(20, [1, 1, 1])], "d")


def test_seed_union_and_seeded_points_stay_out_of_the_doublings():
    from pursamere.experiments.studies import flat_budget, ladder_union, seed_union

    def point(steps, restarts, survived, seed=0):
        return {"defence": "d", "steps": steps, "restarts": restarts, "seed": seed, "n": len(survived),
                "robust": sum(survived), "worst_case": sum(survived) / len(survived), "survived": survived}

    base = [1] * 100
    other = [0, 0] + [1] * 98  # another seed of the same budget breaks two images
    curve = [point(10, 1, base), point(20, 1, base), point(10, 2, base), point(10, 1, other, seed=1)]
    assert flat_budget(curve, "d")["steps"] == 10  # a seed is not a doubling: the flat budget ignores it
    assert ladder_union(curve, "d")["robust"] == 98 and (10, 1, 1) in ladder_union(curve, "d")["budgets"]
    runs = seed_union(curve + [point(10, 1, [1, 0] + [1] * 98, seed=2)], "d", 10, 1)
    assert [(r["seed"], r["robust"], r["union"], r["newly_broken"]) for r in runs] == [(0, 100, 100, None),
                                                                                     (1, 98, 98, 2), (2, 99, 98, 0)]
    assert seed_union(curve, "d", 40, 1) == [] and seed_union([point(10, 1, base, seed=1)], "d", 10, 1) == []


def test_convergence_points_take_a_seed():
    from pursamere.experiments import protocols
    from pursamere.experiments.presets import TINY

    pr = protocols.convergence(TINY, 2, 1, n=2, seed=3)
    assert pr.seed == 3 and pr.plan["seed"] == 3 and "seed 3" in pr.title
    assert "seed" not in protocols.convergence(TINY, 2, 1, n=2).plan  # seed 0: the plan recorded before seeds existed
    with pytest.raises(ValueError, match="seed"):
        protocols.convergence(TINY, 2, 1, seed=-1)


def test_a_stopped_run_keeps_the_plans_of_the_unfinished_groups_it_did_not_reach(tmp_path):
    """A results folder with an unfinished group (restored from a recorded table, say) resumed by a run that stops
    before reaching it, or does not plan it at all: the file keeps that group incomplete, so a merged table never
    shows it as a worst case."""
    import time

    from pursamere.evaluation.results import merge_results

    x, y, nets, specs, threat = _small_case(3)
    evaluate([Defence("d1", nets[0]), Defence("d2", nets[1])], specs, threat, x, y, tmp_path, progress=False)
    path = tmp_path / "results.json"
    res = json.loads(path.read_text())  # d2 as if its job had stopped after attack "a"
    res["rows"] = [r for r in res["rows"] if r["key"] != "d2|b|inf|0.1"]
    for w in res["worst_case"]:
        if w["defence"] == "d2":
            w["attacks"], w["complete"] = ["a"], False
    path.write_text(json.dumps(res))
    for defences in ([Defence("d1", nets[2]), Defence("d2", nets[1])], [Defence("d1", nets[2])]):
        cut = evaluate(defences, specs, threat, x, y, tmp_path, progress=False, deadline=time.monotonic() - 1)
        assert cut["meta"]["stopped"]
        on_disk = json.loads(path.read_text())
        (w,) = [w for w in on_disk["worst_case"] if w["defence"] == "d2"]
        assert w["planned"] == ["a", "b"] and not w["complete"]
        merged = merge_results([path], tmp_path / "m")
        assert not next(w for w in merged["worst_case"] if w["defence"] == "d2")["complete"]
    # a part whose group has rows but no recorded plan cannot be merged as if it were complete
    on_disk["worst_case"] = [w for w in on_disk["worst_case"] if w["defence"] != "d2"]
    path.write_text(json.dumps(on_disk))
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({**on_disk, "rows": [], "worst_case": [
        {**on_disk["worst_case"][0], "defence": "d9"}]}))
    with pytest.raises(ValueError, match="cannot tell whether d2"):
        merge_results([path, other / "results.json"], tmp_path / "m2")


def test_l1_runs_its_own_doubled_budget_and_leaves_the_other_norms_rows_as_they_were():
    """ensemble_suite: ℓ∞ / ℓ2 keep standard_suite's attacks (same names, same settings, so recorded rows stay
    reusable); ℓ1 gets the doubled counts, and each attack runs only at its own norms."""
    from pursamere.evaluation.results import effective_settings
    from pursamere.evaluation.suite import ensemble_suite, threat_budget

    b, clf = Budget(), torch.nn.Linear(2, 2)
    linf, l2, l1 = Threat("inf", 0.1), Threat(2, 0.5), Threat(1, 12.0)
    assert ensemble_suite(b, [linf, l2]) == standard_suite(b)
    assert threat_budget(b, "inf") == threat_budget(b, 2) == b and threat_budget(b, 1) == b.doubled()
    mixed = ensemble_suite(b, [linf, l2, l1])
    d = Defence("u", clf)
    at = {t: [a.name for a in mixed if applies(d, a, t)] for t in (linf, l2, l1)}
    assert at[linf] == at[l2] == ["BPDA20", "APGD-CE20", "APGD-DLR20", "APGD-T20", "Square100"]
    assert at[l1] == ["BPDA40", "APGD-CE40×2", "APGD-DLR40×2", "APGD-T40"]  # no Square at ℓ1
    old = {a.name: a for a in standard_suite(b)}
    for a in mixed:
        if a.name in old:
            assert a.norms == ("2", "inf") and effective_settings(a, linf, d) == effective_settings(old[a.name], linf, d)
        else:
            assert a.norms == ("1",)
    assert [a.name for a in ensemble_suite(b, [l1])] == [a.name for a in standard_suite(b.doubled())]
    with pytest.raises(ValueError, match="norms must be"):
        AttackSpec("a", norms=("linf",))
