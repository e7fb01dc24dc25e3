"""AutoAttack-sized attacks on the adversarially trained digits classifiers (cheap: no purifier).

A check of the ensemble's numbers for PGD-AT and TRADES: 100-step PGD with 5 restarts (CE and
margin loss), 100-step APGD-CE and APGD-DLR, and Square with 5,000 queries, on the same 64 table
images. Output: ``results/digits/at-strong/`` (the book shows the copy in ``book/data/digits-at-strong``).

    python scripts/attack_adversarial_training.py
"""
import argparse

import torch

from pursamere.evaluation.attacks import Threat
from pursamere.evaluation.defences import Family
from pursamere.evaluation.suite import AttackSpec
from pursamere.experiments import engine
from pursamere.experiments.presets import DIGITS
from pursamere.experiments.protocols import DefenceSpec, Images, Protocol

SPECS = (
    AttackSpec("PGD100×5 restarts", gradient="bpda", steps=100, restarts=5),
    AttackSpec("PGD100 margin ×5", gradient="bpda", steps=100, restarts=5, loss="margin"),
    AttackSpec("APGD-CE100", gradient="bpda", kind="apgd-ce", steps=100),
    AttackSpec("APGD-DLR100", gradient="bpda", kind="apgd-dlr", steps=100),
    AttackSpec("Square5000", gradient="none", kind="square", queries=5000),
)


def protocol(n: int = 64) -> Protocol:
    defs = (DefenceSpec("PGD-AT", "pgd-at", family=Family.ADVERSARIAL_TRAINING),
            DefenceSpec("TRADES", "trades", family=Family.TRADES))
    return Protocol("custom", "digits: AutoAttack-sized attacks on the adversarially trained classifiers", defs, SPECS,
                    tuple(Threat("inf", e) for e in (0.1, 0.15, 0.2)), Images("table", n),
                    describe=f"No purifier; the same {n} table images as the ensemble.")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--out", default="results/digits/at-strong")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = engine.run(DIGITS, protocol(args.n), args.out, engine.Options(workdir=args.workdir, resume=True))
    print(run.table)


if __name__ == "__main__":
    main()
