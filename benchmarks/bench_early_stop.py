"""What early stopping saves: each attack with and without ``stop_early`` on the same images and seeds.

A digits SmallCNN (trained here, 8 epochs) behind a purifier-like slow function (the TINY score net,
untrained, inside Algorithm 1), attacked through BPDA and through the exact gradient, by PGD and
our APGD, and queried by our Square. For every pair the script prints the wall time of both runs,
their ratio, the ratio of images passed through the defence (the work saved, free of the fixed
cost per call that dominates small batches on CPU), and whether the outcome bits and the
still-robust images' end points are the same.
The models are the real float32 ``nn.Linear`` ones, so equality is expected but not guaranteed
bit for bit (tests/attack_models.py says why; the tests check it on a batch-invariant model).

    python benchmarks/bench_early_stop.py [--n 64] [--eps 0.15] [--threads 1] [--only APGD]
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def build(n):
    from sklearn.datasets import load_digits

    from pursamere.method.nets import SCORE_TINY, ScoreNet, SmallCNN
    from pursamere.method.purify import Purifier, PurifyConfig
    from pursamere.method.train import ClassifierTrainConfig, train_classifier

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    clf = train_classifier(SmallCNN(), x[perm[:1400]], y[perm[:1400]], ClassifierTrainConfig(epochs=8, seed=0)).eval()
    torch.manual_seed(1)
    score = ScoreNet(SCORE_TINY).eval()
    for p in list(clf.parameters()) + list(score.parameters()):
        p.requires_grad_(False)
    cfg = PurifyConfig(eps_pur=0.1, m=2, sigma_max=0.2, sigma_min=0.05, n_levels=2, steps_per_level=2,
                       lr_max=0.01, lr_min=0.005)
    pur = Purifier(score, cfg)
    xt, yt = x[perm[1400:]], y[perm[1400:]]
    with torch.no_grad():
        ok = clf(pur(xt)).argmax(1) == yt  # attack clean-correct images only, as the runner does
    i = ok.nonzero().flatten()[:n]
    return clf, pur, xt[i], yt[i]


class Counter(torch.nn.Module):
    """Counts the images a module is called on."""

    def __init__(self, module):
        super().__init__()
        self.module, self.rows = module, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.module(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--eps", type=float, default=0.15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="run only the attacks whose name contains this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pursamere.evaluation.apgd import apgd
    from pursamere.evaluation.attacks import Threat, image_seeds, pgd
    from pursamere.evaluation.defended import Defended
    from pursamere.evaluation.square import square

    clf, pur, x, y = build(args.n)
    clf = Counter(clf)  # the defence calls its classifier once per forward: rows = images through the defence
    seeds = image_seeds(x, seed=0)
    linf, l2 = Threat("inf", args.eps), Threat(2, 1.0)
    bpda, exact = Defended(clf, pur, gradient="bpda"), Defended(clf, pur, gradient="exact")
    runs = {
        "PGD-20 BPDA ℓ∞": lambda **kw: pgd(bpda, x, y, linf, steps=20, seeds=seeds, return_success=True, **kw),
        "PGD-20 BPDA ℓ2": lambda **kw: pgd(bpda, x, y, l2, steps=20, seeds=seeds, return_success=True, **kw),
        "PGD-10 exact ℓ∞": lambda **kw: pgd(exact, x, y, linf, steps=10, seeds=seeds, return_success=True, **kw),
        "APGD-CE-50 BPDA ℓ∞": lambda **kw: apgd(bpda, x, y, linf, steps=50, seeds=seeds, return_success=True, **kw),
        "APGD-DLR-50 BPDA ℓ2": lambda **kw: apgd(bpda, x, y, l2, steps=50, loss="dlr", seeds=seeds,
                                                 return_success=True, **kw),
        "Square-300 ℓ∞": lambda stop_early: square(bpda, x, y, linf, queries=300, seeds=seeds, stop_early=stop_early,
                                                   return_success=True),
    }
    rows = []
    for name, run in runs.items():
        if args.only not in name:
            continue
        clf.rows = 0
        t0 = time.perf_counter()
        full, ok = run(stop_early=False)
        t1, rows_full, clf.rows = time.perf_counter(), clf.rows, 0
        early, ok_early = run(stop_early=True)
        t2, rows_early = time.perf_counter(), clf.rows
        row = {"attack": name, "n": len(x), "broken": int(ok.sum()), "s_full": round(t1 - t0, 2),
               "s_early": round(t2 - t1, 2), "speedup": round((t1 - t0) / (t2 - t1), 2),
               "images_full": rows_full, "images_early": rows_early, "work_ratio": round(rows_full / rows_early, 2),
               "same_outcomes": int((ok == ok_early).sum()),
               "same_robust_points": int((full[~ok] == early[~ok]).flatten(1).all(1).sum()), "robust": int((~ok).sum())}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
