"""Evaluation: Wilson intervals, rows and worst case, resume, tables/plots, obfuscation checks."""
import json

import pytest
import torch

from pursamere.evaluation.attacks import Threat
from pursamere.evaluation.checks import ObfuscationWarning, obfuscation_checks
from pursamere.evaluation.defences import Defence
from pursamere.evaluation.results import render_table, wilson
from pursamere.evaluation.runner import evaluate
from pursamere.evaluation.suite import AttackSpec
from pursamere.experiments.protocols import NAMED_ATTACKS as ATTACKS
from pursamere.experiments.reporting import plot_results
from pursamere.method.nets import SmallCNN
from pursamere.method.train import ClassifierTrainConfig, train_classifier


@pytest.fixture(scope="module")
def digits_clf():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    clf = train_classifier(SmallCNN(width=16), x[:1200], y[:1200], ClassifierTrainConfig(epochs=6, batch_size=128, lr=3e-3))
    return clf, x[1200:1260], y[1200:1260]


def test_wilson_interval_known_values():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-3)


class Rounding:
    """A planted broken purifier: it rounds pixels, so its exact gradient is zero everywhere."""

    def __call__(self, x):
        return torch.round(x * 4) / 4

    def unrolled(self, x, checkpoint=True):
        return torch.round(x * 4) / 4


def test_evaluate_rows_worst_case_resume_and_outputs(tmp_path, digits_clf):
    clf, x, y = digits_clf
    defs = [Defence("undefended", clf), Defence("rounding", clf, Rounding())]
    attacks = [ATTACKS["gpgd20"], AttackSpec("bpda5", gradient="bpda", steps=5), AttackSpec("fgsm", gradient="bpda", steps=1)]
    threat = Threat("inf", 0.15)
    res = evaluate(defs, attacks, [threat], x, y, tmp_path, progress=False)
    assert len(res["rows"]) == 6
    for w in res["worst_case"]:
        assert w["robust_acc"] <= min(w["per_attack"].values()) + 1e-12
        rows = [r for r in res["rows"] if r["defence"] == w["defence"]]
        # an image counted robust survived every attack
        for i in range(w["n"]):
            robust_here = all(r["survived"][i] == 1 for r in rows)
            assert robust_here == (i in [j for j in range(w["n"]) if all(r["survived"][j] == 1 for r in rows)])
        assert w["robust_acc"] == pytest.approx(sum(all(r["survived"][i] == 1 for r in rows) for i in range(w["n"])) / w["n"])
    und = {r["attack"]: r for r in res["rows"] if r["defence"] == "undefended"}
    assert und["bpda5"]["robust_acc"] < 0.5 * und["bpda5"]["clean_acc"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["key"] for r in saved["rows"]] == [r["key"] for r in res["rows"]]
    # resume: nothing is recomputed (seconds are copied, not re-measured)
    res2 = evaluate(defs, attacks, [threat], x, y, tmp_path, progress=False)
    assert [r["seconds"] for r in res2["rows"]] == [r["seconds"] for r in res["rows"]]
    table = render_table(res2, "tiny")
    assert "worst case" in table and "undefended" in table and "rounding" in table
    # a BPDA column over a row without a purifier says that there it is plain PGD; purifier rows alone do not
    assert "For rows without a purifier, bpda5" in table and "plain PGD" in table
    only_purifier = dict(res2, rows=[r for r in res2["rows"] if r["defence"] == "rounding"],
                         worst_case=[w for w in res2["worst_case"] if w["defence"] == "rounding"])
    assert "plain PGD" not in render_table(only_purifier)
    assert plot_results(res2, tmp_path / "acc.png").stat().st_size > 1000


def test_obfuscation_checks_flag_a_broken_defence_and_pass_a_sound_one(digits_clf):
    clf, x, y = digits_clf
    threat = Threat("inf", 0.15)
    with pytest.warns(ObfuscationWarning):
        broken = obfuscation_checks(Defence("rounding", clf, Rounding()), threat, x[:40], y[:40], gradient="exact",
                                    steps=5, square_queries=100)
    verdict = {c.name: c.passed for c in broken}
    assert not verdict["gradients finite and non-zero"]
    assert not verdict["ε = 1 (ℓ∞) breaks it"]
    assert not verdict["black-box does not beat gradients"]
    sound = obfuscation_checks(Defence("undefended", clf), threat, x[:40], y[:40], gradient="bpda", steps=5,
                               square_queries=100, warn=False)
    assert all(c.passed for c in sound), [c for c in sound if not c.passed]


def test_checks_stopped_half_way_resume_after_the_last_finished_attack(digits_clf, tmp_path):
    """The engine keeps each check attack's flags as it finishes (an hour or more per gradient on a CPU): a run
    stopped inside the checks runs only what it had not finished, with the verdicts of an uninterrupted run, and
    the gradient-free attacks (gray-box, Square) run once for both gradients."""
    from pursamere.experiments.engine import _kept_flags

    clf, x, y = digits_clf
    threat, d = Threat("inf", 0.15), Defence("undefended", clf)
    kw = dict(steps=3, square_queries=30, warn=False)
    want = obfuscation_checks(d, threat, x[:16], y[:16], gradient="bpda", **kw)
    ident = {"defence": d.name, "n": 16, "steps": 3, "gradient": "bpda"}
    kept = _kept_flags(tmp_path, ident)
    ran = []

    class Stop(Exception):
        pass

    def stop_after(k):
        def memo(key, run):
            def counted():
                ran.append(json.loads(key)["attack"]["name"])
                if len(ran) > k:
                    raise Stop
                return run()
            return kept(key, counted)
        return memo

    with pytest.raises(Stop):
        obfuscation_checks(d, threat, x[:16], y[:16], gradient="bpda", memo=stop_after(3), **kw)
    assert len(list(tmp_path.glob("*.json"))) == 3
    ran.clear()
    again = obfuscation_checks(d, threat, x[:16], y[:16], gradient="bpda", memo=stop_after(99), **kw)
    assert [c.as_dict() for c in again] == [c.as_dict() for c in want]
    assert len(ran) == 5 and len(list(tmp_path.glob("*.json"))) == 8  # 8 attacks, 3 kept from the stopped run
    ran.clear()  # the exact gradient's checks: gray-box and Square are the bpda checks' own, kept
    kept = _kept_flags(tmp_path, {**ident, "gradient": "exact"})
    obfuscation_checks(d, threat, x[:16], y[:16], gradient="exact", memo=stop_after(99), **kw)
    assert "gray" not in ran and "square" not in ran and len(ran) == 6
    # a kept file of other settings is not served
    kept = _kept_flags(tmp_path, {**ident, "steps": 4})
    ran.clear()
    obfuscation_checks(d, threat, x[:16], y[:16], gradient="bpda", memo=stop_after(99), **kw)
    assert len(ran) == 8
