"""evaluate_purifier: any purifier, deterministic or stochastic, ours or a user's, evaluated in one call."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from pursamere import Purifier, PurifyConfig, Threat, evaluate_purifier
from pursamere.evaluation.report import FixedSeed, is_stochastic
from pursamere.evaluation.suite import Budget
from pursamere.method.nets import SCORE_TINY, ScoreNet, SmallCNN
from pursamere.method.train import ClassifierTrainConfig, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

BUDGET = Budget(gpgd_steps=3, bpda_steps=3, exact_steps=2, partial_last=1, partial_steps=2, apgd_steps=2,
                square_queries=5, eot=2)


@pytest.fixture(scope="module")
def digits():
    from pursamere.experiments.data import load_digits_split

    split = load_digits_split(seed=0)
    torch.manual_seed(0)
    clf = train_classifier(SmallCNN(width=8), split.x_train, split.y_train,
                           ClassifierTrainConfig(epochs=3, batch_size=128, lr=3e-3))
    return clf.eval(), split.x_test[:16], split.y_test[:16]


def median3(x):
    """A reader's purifier in a few lines: a 3×3 median filter (deterministic, no unrolled())."""
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3)  # (B, C·9, H·W)
    b, c, h, w = x.shape
    return patches.view(b, c, 9, h * w).median(dim=2).values.view(b, c, h, w)


def noisy_median(x):
    """A stochastic reader's purifier: Gaussian noise (global RNG), then the median filter."""
    return median3((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


def _consistent(report):
    res = report.results
    for w in res["worst_case"]:
        rows = [r for r in res["rows"] if r["defence"] == w["defence"]]
        assert w["robust_acc"] <= min(r["robust_acc"] for r in rows) + 1e-12 <= w["clean_acc"] + 1e-12
        assert w["survived"] == [int(all(r["survived"][i] for r in rows)) for i in range(w["n"])]
        assert report.per_image[w["defence"]] == w["survived"]


def test_deterministic_user_purifier(digits, tmp_path):
    clf, x, y = digits
    rep = evaluate_purifier(clf, median3, x, y, Threat("inf", 0.2), budget=BUDGET, n_check=8, name="median",
                            progress=False, out=tmp_path)
    _consistent(rep)
    rows = rep.results["rows"]
    assert {r["defence"] for r in rows} == {"median"} and all(r["deterministic"] for r in rows)
    assert all(r["family"] == "custom" and r["classifier"] == "user" for r in rows)
    roles = {r["role"] for r in rows}
    assert {"gray-box", "bpda", "apgd", "square"} <= roles and not roles & {"exact", "bpda→exact", "partial unrolling"}
    assert any("no unrolled" in n for n in rep.notes) and any("deterministic" in n for n in rep.notes)
    assert [c["gradient"] for c in rep.checks] == ["bpda"]
    table = rep.table()
    assert "median" in table and "worst case" in table and "Obfuscation checks" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows and (tmp_path / "table.md").read_text() == table
    acc, (lo, hi) = rep.worst_case["median"]
    assert lo <= acc <= hi and 0 <= acc <= rep.clean_acc["median"]


def test_stochastic_user_purifier_gets_eot_and_a_fixed_seed_variant(digits):
    clf, x, y = digits
    assert is_stochastic(noisy_median, x[:4]) and not is_stochastic(FixedSeed(noisy_median, 3), x[:4])
    rep = evaluate_purifier(clf, noisy_median, x, y, Threat("inf", 0.2), budget=BUDGET, checks=False, name="noisy",
                            progress=False)
    _consistent(rep)
    by = {}
    for r in rep.results["rows"]:
        by.setdefault(r["defence"], []).append(r)
    assert set(by) == {"noisy", "noisy (fixed seed 0)"}
    assert not by["noisy"][0]["deterministic"] and by["noisy (fixed seed 0)"][0]["deterministic"]
    # the stochastic one: BPDA+EoT and gradient-free attacks only; EoT really used
    assert {r["role"] for r in by["noisy"]} == {"bpda", "apgd", "square"}
    assert all(r["attack_settings"]["eot"] == BUDGET.eot for r in by["noisy"] if r["role"] != "square")
    # the fixed-seed one is a white-box deterministic target (gray-box and BPDA-det too)
    assert {"gray-box", "bpda"} <= {r["role"] for r in by["noisy (fixed seed 0)"]}
    assert all(r["attack_settings"]["eot"] == 1 for r in by["noisy (fixed seed 0)"])


def test_our_purifier_is_attacked_with_exact_gradients(digits):
    clf, x, y = digits
    torch.manual_seed(1)
    score = ScoreNet(SCORE_TINY).eval()
    pur = Purifier(score, PurifyConfig(eps_pur=0.1, m=2, n_levels=2, steps_per_level=1, sigma_max=0.2, sigma_min=0.1,
                                       antithetic=True))
    rep = evaluate_purifier(clf, pur, x[:8], y[:8], Threat("inf", 0.2), budget=BUDGET, n_check=4, progress=False)
    _consistent(rep)
    rows = rep.results["rows"]
    assert {"exact", "bpda→exact", "partial unrolling"} <= {r["role"] for r in rows}
    assert all(r["family"] == "PurSAMERE" and r["purifier"]["eps_pur"] == 0.1 for r in rows)
    assert [c["gradient"] for c in rep.checks] == ["bpda", "exact"]


def test_bad_inputs_are_refused(digits):
    clf, x, y = digits
    with pytest.raises(TypeError, match="nn.Module"):
        evaluate_purifier(lambda v: v, median3, x, y, Threat("inf", 0.1))
    with pytest.raises(ValueError, match="same shape"):
        evaluate_purifier(clf, lambda v: v[:, :, :4], x, y, Threat("inf", 0.1), progress=False)
    with pytest.raises(TypeError, match="Threat"):
        evaluate_purifier(clf, median3, x, y, 0.1)


def test_cli_evaluates_a_purifier_from_a_python_file(tmp_path, capsys):
    from pursamere.cli import main

    (tmp_path / "mine.py").write_text("import torch\n\n\ndef make():\n    return lambda x: x.clamp(0.05, 0.95)\n\n\n"
                                      "def broken():\n    return 3\n")
    out = tmp_path / "out"
    argv = ["evaluate", "--preset", "tiny", "--workdir", str(tmp_path / "work"), "--n", "6", "--threats", "inf:0.15",
            "--quiet", "--purifier"]
    assert main(argv + [f"{tmp_path / 'mine.py'}:make", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["family"] for r in res["rows"]} == {"custom"} and res["rows"][0]["n"] == 6
    assert (out / "table.md").exists() and "worst case" in capsys.readouterr().out
    assert main(argv + [f"{tmp_path / 'mine.py'}:broken", "--out", str(tmp_path / "x")]) == 2
    assert "not a callable" in capsys.readouterr().err
    assert main(argv + [f"{tmp_path / 'mine.py'}:nothing", "--out", str(tmp_path / "y")]) == 2
    assert "has no function 'nothing'" in capsys.readouterr().err


def test_fixed_seed_is_batch_invariant_and_reports_never_reuse_another_purifiers_rows(digits, tmp_path):
    clf, x, y = digits
    fixed = FixedSeed(noisy_median, 0)
    assert torch.equal(fixed(x[3:4]), fixed(x)[3:4])  # the image's noise does not depend on its batch
    a = evaluate_purifier(clf, lambda v: v.clamp(0.1, 0.9), x, y, Threat("inf", 0.2), budget=BUDGET, checks=False,
                          progress=False, out=tmp_path / "r")
    with pytest.raises(FileExistsError, match="finished report"):
        evaluate_purifier(clf, median3, x, y, Threat("inf", 0.2), budget=BUDGET, checks=False, progress=False,
                          out=tmp_path / "r")
    b = evaluate_purifier(clf, median3, x, y, Threat("inf", 0.2), budget=BUDGET, checks=False, progress=False,
                          out=tmp_path / "r", resume=True)
    fresh = evaluate_purifier(clf, median3, x, y, Threat("inf", 0.2), budget=BUDGET, checks=False, progress=False)
    assert b.per_image == fresh.per_image and b.clean_acc == fresh.clean_acc
    assert a.results["rows"][0]["defence_fingerprint"] != b.results["rows"][0]["defence_fingerprint"]


def test_l1_evaluation_runs_the_doubled_budget(digits):
    """At ℓ1 the user's purifier meets the ensemble at twice the given counts (its 20-step suite had not
    converged at ℓ1 on CIFAR-10), and the report says which budget ran."""
    clf, x, y = digits
    rep = evaluate_purifier(clf, median3, x[:8], y[:8], Threat(1, 2.0), budget=BUDGET, checks=False, progress=False)
    names = [r["attack"] for r in rep.results["rows"]]
    assert names[:3] == ["gPGD6", "BPDA6", "APGD-CE4×2"] and not any(n.startswith("Square") for n in names)
    assert rep.results["meta"]["budget_at_threat"] == dataclasses.asdict(BUDGET.doubled())
