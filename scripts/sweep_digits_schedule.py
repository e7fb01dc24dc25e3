"""The small, documented sweep that chose the digits preset's purification schedule.

For each candidate schedule (σ range, number of steps, learning rates) it measures, on a fixed
subset of the digits test set, the clean accuracy of the eq.-17 classifier behind the purifier
and its robust accuracy under BPDA-det (ℓ∞, the preset's budget), with ε_pur at the middle value
and SAM at the preset's ρ = ε_pur/2. Output: a JSON and a Markdown table (read by the book).

    python scripts/sweep_digits_schedule.py --workdir runs --out results/digits/schedule-sweep --n 64

Caveat: the eq.-17 classifier was trained on images purified with the preset's schedule, which
favours that schedule slightly; the plain classifier's clean accuracy behind each purifier is
reported beside it for that reason.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pursamere.evaluation.attacks import Threat
from pursamere.evaluation.runner import AttackSpec, Defence, attack_flags, predict
from pursamere.io import atomic_write_json, atomic_write_text
from pursamere.experiments.pipeline import prepare, validation_indices
from pursamere.experiments.presets import DIGITS
from pursamere.method.purify import Purifier

# the candidates vary the schedule under the paper's SAM (ρ = ε_pur/2, ℓ∞), whatever the preset's default ρ
PAPER_SAM = DIGITS.purify.replace(rho=DIGITS.purify.eps_pur / 2, rho_sigma=None, sam_norm="inf")

CANDIDATES = {
    "A: σ 0.3→0.02, K=6, lr 0.04→0.005": dict(sigma_max=0.3, sigma_min=0.02, n_levels=6, steps_per_level=1, lr_max=0.04, lr_min=0.005),
    "B: σ 0.6→0.02, K=6, lr 0.04→0.005": dict(sigma_max=0.6, sigma_min=0.02, n_levels=6, steps_per_level=1, lr_max=0.04, lr_min=0.005),
    "C: σ 0.3→0.05, K=6, lr 0.04→0.005": dict(sigma_max=0.3, sigma_min=0.05, n_levels=6, steps_per_level=1, lr_max=0.04, lr_min=0.005),
    "D: σ 0.15→0.02, K=6, lr 0.04→0.005": dict(sigma_max=0.15, sigma_min=0.02, n_levels=6, steps_per_level=1, lr_max=0.04, lr_min=0.005),
    "E: σ 0.3→0.02, K=6, lr 0.08→0.01": dict(sigma_max=0.3, sigma_min=0.02, n_levels=6, steps_per_level=1, lr_max=0.08, lr_min=0.01),
    "F: σ 0.3→0.02, K=12, lr 0.02→0.0025": dict(sigma_max=0.3, sigma_min=0.02, n_levels=12, steps_per_level=1, lr_max=0.02, lr_min=0.0025),
    # second round, after A–F showed that the total step length limits recovery
    "G: σ 0.6→0.05, K=6, lr 0.1→0.02": dict(sigma_max=0.6, sigma_min=0.05, n_levels=6, steps_per_level=1, lr_max=0.1, lr_min=0.02),
    "H: σ 0.3→0.02, K=12, lr 0.08→0.01": dict(sigma_max=0.3, sigma_min=0.02, n_levels=12, steps_per_level=1, lr_max=0.08, lr_min=0.01),
    "I: σ 0.6→0.05, K=12, lr 0.1→0.02": dict(sigma_max=0.6, sigma_min=0.05, n_levels=12, steps_per_level=1, lr_max=0.1, lr_min=0.02),
    "J: as H, SAM off (ρ = 0)": dict(sigma_max=0.3, sigma_min=0.02, n_levels=12, steps_per_level=1, lr_max=0.08, lr_min=0.01, rho=0.0),
    "K: as I, SAM off (ρ = 0)": dict(sigma_max=0.6, sigma_min=0.05, n_levels=12, steps_per_level=1, lr_max=0.1, lr_min=0.02, rho=0.0),
}


def _save(out: Path, rows: list, spec_name: str, threat_eps: float) -> list:
    """Merge ``rows`` into ``out/sweep.json`` by schedule name (earlier runs' candidates are kept)."""
    import json

    merged = rows
    if (out / "sweep.json").exists():
        new = {r["schedule"] for r in rows}
        old = [r for r in json.loads((out / "sweep.json").read_text())["rows"] if r["schedule"] not in new]
        merged = sorted(old + rows, key=lambda r: r["schedule"])
    atomic_write_json(out / "sweep.json", {"attack": f"{spec_name}-det ℓ∞ ε={threat_eps}", "eps_pur": DIGITS.purify.eps_pur, "rows": merged})
    return merged


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--out", default="results/digits/schedule-sweep")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="BPDA-det steps")
    ap.add_argument("--only", default="", help="comma-separated candidate letters (default: all)")
    args = ap.parse_args()
    arts = prepare(DIGITS, args.workdir)
    split = arts["split"]
    # the preset's validation images (pipeline.validation_indices): the tables never use them
    perm = validation_indices(DIGITS, len(split.x_test))[: args.n]
    x, y = split.x_test[perm], split.y_test[perm]
    threat = Threat("inf", DIGITS.threats["inf"])
    spec = AttackSpec(f"BPDA{args.steps}", gradient="bpda", steps=args.steps)
    rows = []
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    for name, kw in CANDIDATES.items():
        if only and name.split(":")[0] not in only:
            continue
        t0 = time.perf_counter()
        pur = Purifier(arts["score"], PAPER_SAM.replace(**kw))
        d = Defence(name, arts["eq17"], pur)
        clean = predict(d, x) == y
        plain_clean = float((predict(Defence(name, arts["plain"], pur), x) == y).double().mean())
        robust = attack_flags(d, spec, threat, x, y, alive=clean)
        rows.append({"schedule": name, **{"rho": PAPER_SAM.rho, **kw}, "clean_acc": float(clean.double().mean()), "plain_clf_clean_acc": plain_clean,
                     "robust_acc": float(robust.double().mean()), "n": args.n, "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
        _save(Path(args.out), rows, spec.name, threat.eps)  # after every candidate: an interrupted sweep keeps its rows
    out = Path(args.out)
    rows = _save(out, rows, spec.name, threat.eps)
    lines = [f"Schedule sweep on digits: n = {args.n}, ε_pur = {DIGITS.purify.eps_pur}, {spec.name}-det ℓ∞ ε = {threat.eps}", "",
             "| schedule | clean (eq.-17 clf) | clean (plain clf) | robust (BPDA-det) | s |", "|---|---|---|---|---|"]
    lines += [f"| {r['schedule']} | {100 * r['clean_acc']:.1f} | {100 * r['plain_clf_clean_acc']:.1f} | {100 * r['robust_acc']:.1f} | {r['seconds']} |" for r in rows]
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
