"""AutoAttack-sized attacks on the adversarially trained digits classifiers (cheap: no purifier).

A check of the ensemble's numbers for PGD-AT and TRADES: 100-step PGD with 5 restarts (CE and
margin loss), 100-step APGD-CE and APGD-DLR, and Square with 5,000 queries, on the same 64 table
images. Output: ``results/digits/at-strong/results.json`` (the book shows the copy in
``book/data/digits-at-strong``).

    python scripts/attack_adversarial_training.py
"""
import torch

from pursamere.evaluation.attacks import Threat
from pursamere.evaluation.runner import AttackSpec, Defence, evaluate
from pursamere.experiments.pipeline import prepare, table_indices
from pursamere.experiments.presets import DIGITS
from pursamere.evaluation.suite import ensemble_frame

SPECS = [
    AttackSpec("PGD100×5 restarts", gradient="bpda", steps=100, restarts=5),
    AttackSpec("PGD100 margin ×5", gradient="bpda", steps=100, restarts=5, loss="margin"),
    AttackSpec("APGD-CE100", gradient="bpda", kind="apgd-ce", steps=100),
    AttackSpec("APGD-DLR100", gradient="bpda", kind="apgd-dlr", steps=100),
    AttackSpec("Square5000", gradient="none", kind="square", queries=5000),
]


def main(workdir="runs", out="results/digits/at-strong", n=64):
    torch.set_num_threads(1)
    arts = prepare(DIGITS, workdir, progress=False, log=lambda *a: None)
    split = arts["split"]
    perm = table_indices(DIGITS, len(split.x_test))[:n]
    x, y = split.x_test[perm], split.y_test[perm]
    defs = [Defence("PGD-AT", arts["adv"]), Defence("TRADES", arts["trades"])]
    res = evaluate(defs, SPECS, [Threat("inf", e) for e in (0.1, 0.15, 0.2)], x, y, out, progress=False,
                   meta={"purpose": "AutoAttack-sized attacks on the adversarially trained classifiers "
                                    f"(no purifier), the same {n} table images as the ensemble"})
    print(ensemble_frame(res)[["defence", "eps", "robust"]])


if __name__ == "__main__":
    main()
