"""The attack ensemble: every defence against every attack that applies, counted per image.

AutoAttack's way of counting (Croce & Hein 2020): an image is robust only if it survives EVERY
attack of the suite, and that worst case is the headline number. Which attacks apply depends on
the defence:

================================  ==============================================================
defence                           attacks (in order; † = cascaded, run on the survivors only)
================================  ==============================================================
no purifier (undefended, PGD-AT,  PGD (white-box), APGD-CE †, APGD-DLR †, Square †
TRADES)
deterministic PurSAMERE / ERE     gPGD (gray-box), BPDA-det, exact †, BPDA→exact † (the exact
descent                           gradient started where BPDA stopped), partial unrolling †
                                  (exact through the last k steps, BPDA before; margin loss),
                                  APGD-CE † and APGD-DLR † (BPDA gradient), Square †
fixed-seed ADP / DiffPure-style   as above without partial unrolling
stochastic ADP / DiffPure-style   BPDA+EoT, APGD-CE+EoT †, APGD-DLR+EoT †, Square †
================================  ==============================================================

BPDA-det and gPGD run on every clean-correct image, so their columns are ordinary per-attack
accuracies; the cascaded columns are cumulative (the worst case so far), as AutoAttack prints
them. Cascading never changes the worst case: an image broken earlier is broken whatever
runs after it.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .attacks import Threat, supports_partial_unrolling
from .runner import AttackSpec, Defence, Identity, evaluate, plot_results, render_table
from ..io import atomic_write_json, atomic_write_text

__all__ = ["EnsemblePlan", "PLANS", "ensemble_attacks", "applies", "ensemble_defences", "run_ensemble", "merge_results",
           "ensemble_frame"]


@dataclass(frozen=True)
class EnsemblePlan:
    """Step counts and sizes of the ensemble (defaults: the digits study's budget)."""

    n_test: int = 64
    eps: tuple = (0.1, 0.15, 0.2)  # ℓ∞ budgets: accuracy-versus-ε curves
    gpgd_steps: int = 20
    bpda_steps: int = 20
    exact_steps: int = 10
    partial_last: int = 3  # purifier steps differentiated exactly in the partial-unrolling attack
    partial_steps: int = 20
    apgd_steps: int = 20
    square_queries: int = 100
    eot: int = 4  # EoT samples per step against stochastic purifiers
    batch_size: int = 64


def ensemble_attacks(plan: EnsemblePlan) -> list[AttackSpec]:
    """The suite, in the order it runs (see the module docstring)."""
    bpda = f"BPDA{plan.bpda_steps}"
    return [
        AttackSpec(f"gPGD{plan.gpgd_steps}", gradient="none", steps=plan.gpgd_steps),
        AttackSpec(bpda, gradient="bpda", steps=plan.bpda_steps, eot=plan.eot),
        AttackSpec(f"exact{plan.exact_steps}", gradient="exact", steps=plan.exact_steps, cascade=True),
        AttackSpec(f"{bpda}→exact{plan.exact_steps}", gradient="exact", steps=plan.exact_steps, warm_from=bpda, cascade=True),
        AttackSpec(f"partial{plan.partial_last}-margin{plan.partial_steps}", gradient="exact", steps=plan.partial_steps,
                   unroll_last=plan.partial_last, loss="margin", cascade=True),
        AttackSpec(f"APGD-CE{plan.apgd_steps}", gradient="bpda", kind="apgd-ce", steps=plan.apgd_steps, eot=plan.eot, cascade=True),
        AttackSpec(f"APGD-DLR{plan.apgd_steps}", gradient="bpda", kind="apgd-dlr", steps=plan.apgd_steps, eot=plan.eot, cascade=True),
        AttackSpec(f"Square{plan.square_queries}", gradient="none", kind="square", queries=plan.square_queries, cascade=True),
    ]


def applies(defence: Defence, spec: AttackSpec) -> bool:
    """Whether ``spec`` belongs to ``defence``'s suite (the table of the module docstring)."""
    if isinstance(defence.purifier, Identity):  # no purifier: every gradient rule is the white-box one
        return spec.gradient == "bpda" or spec.kind == "square"
    if defence.stochastic:
        return spec.gradient == "bpda" or spec.kind == "square"
    if spec.unroll_last is not None:
        return supports_partial_unrolling(defence.purifier)
    return True


def ensemble_defences(preset, arts: dict, best: Optional[dict] = None) -> list[Defence]:
    """The defences of the ensemble tables.

    Undefended, PGD-AT, TRADES; PurSAMERE with the paper's SAM (ρ = ε_pur/2, ℓ∞) at the preset's
    ε_pur; ERE descent (SAM off); PurSAMERE with ``best`` (overrides of the preset's purifier
    config chosen by the SAM study; left out when ``None`` or when it equals one of the two);
    the best purifier in front of the PGD-AT classifier; ADP and DiffPure-style, stochastic and
    fixed-seed.
    """
    from ..method.baselines import ADP, DiffPure
    from ..method.purify import Purifier

    score, plain, aug = arts["score"], arts["plain"], arts["eq17"]
    cfg = preset.purify
    e = f"ε_pur={cfg.eps_pur:.4g}"
    defs = [Defence("undefended", plain)]
    if "adv" in arts:
        defs.append(Defence("PGD-AT", arts["adv"]))
    if "trades" in arts:
        defs.append(Defence("TRADES", arts["trades"]))
    paper = cfg.replace(rho=cfg.eps_pur / 2, rho_sigma=None, sam_norm=cfg.norm)  # the paper's SAM
    plain_ere = cfg.replace(rho=0.0, rho_sigma=None)  # SAM off
    defs.append(Defence(f"PurSAMERE ρ=ε_pur/2 {e}", aug, Purifier(score, paper)))
    defs.append(Defence(f"ERE descent (no SAM) {e}", aug, Purifier(score, plain_ere)))
    best_cfg, best_name = plain_ere, "ERE descent (no SAM)"
    if best:
        best_cfg = cfg.replace(**best)
        if best_cfg not in (paper, plain_ere):
            best_name = "PurSAMERE " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items())
            e = f"ε_pur={best_cfg.eps_pur:.4g}"
            defs.append(Defence(f"{best_name} {e}", aug, Purifier(score, best_cfg)))
        elif best_cfg == paper:
            best_name = "PurSAMERE ρ=ε_pur/2"
    if "adv" in arts:
        defs.append(Defence(f"PGD-AT + {best_name} {e}", arts["adv"], Purifier(score, best_cfg)))
    defs.append(Defence("ADP", plain, ADP(score, preset.adp.replace(fixed_noise=False))))
    defs.append(Defence("ADP (fixed seed)", plain, ADP(score, preset.adp.replace(fixed_noise=True))))
    defs.append(Defence("DiffPure-style", plain, DiffPure(score, preset.diffpure.replace(fixed_noise=False))))
    defs.append(Defence("DiffPure-style (fixed seed)", plain, DiffPure(score, preset.diffpure.replace(fixed_noise=True))))
    return defs


def run_ensemble(preset, plan: EnsemblePlan, workdir: str | Path, out_dir: str | Path, best: Optional[dict] = None,
                 only: Sequence[str] = (), progress: bool = True, device: str = "cpu", log=print, data_root=None) -> dict:
    """Train (or reuse) the preset's models, then run the ensemble on the table images.

    ``only``: defence-name prefixes to run (the rest are left out). ``results.json`` holds the rows
    of this call only, so runs split by defence go to separate folders, joined afterwards by
    :func:`merge_results`. Writes ``results.json``, ``table.md`` and
    ``robust_accuracy.png`` (worst case against ε per defence). Resumable.
    """
    from ..experiments.pipeline import prepare, table_indices

    t0 = time.perf_counter()
    arts = prepare(preset, workdir, progress=progress, device=device, log=log, data_root=data_root)
    for k in [k for k in ("score", "plain", "eq17", "adv", "trades") if k in arts]:
        arts[k] = arts[k].to(device)
    split = arts["split"]
    perm = table_indices(preset, split.x_test.shape[0])[: plan.n_test]
    x, y = split.x_test[perm].to(device), split.y_test[perm].to(device)
    defs = ensemble_defences(preset, arts, best)
    if only:
        defs = [d for d in defs if any(d.name.startswith(o) for o in only)]
        if not defs:
            raise ValueError(f"no defence name starts with any of {list(only)}")
    threats = [Threat("inf", e) for e in plan.eps]
    attacks = ensemble_attacks(plan)
    meta = {"preset": preset.name, "plan": dataclasses.asdict(plan), "best": best or {},
            "subset": f"first {len(perm)} of a fixed permutation (seed {preset.data_seed}) of the test set, without "
                      f"the {preset.validation_size} validation images of the sweeps"}
    res = evaluate(defs, attacks, threats, x, y, out_dir, meta=meta, progress=progress, batch_size=plan.batch_size,
                   skip=lambda d, s, t: not applies(d, s))
    out = Path(out_dir)
    atomic_write_text(out / "table.md", render_table(res, f"{preset.name}: the attack ensemble, worst case per image"))
    plot_results(res, out / "robust_accuracy.png")
    log(f"ensemble: {len(res['rows'])} rows in {time.perf_counter() - t0:.0f} s → {out}")
    return res


def merge_results(paths: Sequence[str | Path], out_dir: str | Path, title: str = "", order: Sequence[str] = ()) -> dict:
    """Join several ``results.json`` made on the same images (for example runs split by defence).

    ``order``: defence names in the order the tables should list them (others follow, as found).
    """
    import json

    from .runner import worst_case

    parts = [json.loads(Path(p).read_text()) for p in paths]
    fps = {p["meta"].get("data_fingerprint") for p in parts}
    if len(fps) != 1:
        raise ValueError(f"cannot merge results made on different images (data fingerprints {sorted(map(str, fps))})")
    rows, seen = [], set()
    for p in parts:
        for r in p["rows"]:
            if r["key"] in seen:
                raise ValueError(f"row {r['key']!r} appears in more than one of {list(map(str, paths))}")
            seen.add(r["key"])
            rows.append(r)
    rank = {d: i for i, d in enumerate(order)}
    rows.sort(key=lambda r: rank.get(r["defence"], len(rank)))  # stable: attack order inside a defence is kept
    res = {"meta": dict(parts[0]["meta"], merged_from=[str(p) for p in paths]), "rows": rows, "worst_case": worst_case(rows)}
    out = Path(out_dir)
    atomic_write_json(out / "results.json", res)
    atomic_write_text(out / "table.md", render_table(res, title))
    plot_results(res, out / "robust_accuracy.png")
    return res


#: The ensemble plan of each preset (``digits`` is the recorded study's budget, ``tiny`` the tests' and the live pages').
PLANS = {
    "digits": EnsemblePlan(),
    "tiny": EnsemblePlan(n_test=12, eps=(0.1, 0.2), gpgd_steps=2, bpda_steps=2, exact_steps=1, partial_last=1,
                         partial_steps=2, apgd_steps=2, square_queries=5, eot=2, batch_size=8),
}


def ensemble_frame(results: dict):
    """The worst case per (defence, ε) as a DataFrame: defence, norm, eps, n, clean, robust, lo, hi, weakest attack."""
    import pandas as pd

    from .runner import worst_case

    out = []
    for w in results.get("worst_case") or worst_case(results["rows"]):
        indep = {a: v for a, v in w["per_attack"].items() if a not in w.get("cascaded", [])}
        out.append({"defence": w["defence"], "norm": w["norm"], "eps": w["eps"], "n": w["n"], "clean": w["clean_acc"],
                    "robust": w["robust_acc"], "lo": w["ci95"][0], "hi": w["ci95"][1],
                    "best single attack": min(indep, key=indep.get) if indep else None,
                    "best single": min(indep.values()) if indep else None})
    return pd.DataFrame(out)
