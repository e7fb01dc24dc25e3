"""Two studies on the preset's validation images (never part of the tables).

- :func:`sam_study` — what SAM does: SAM off; ℓ∞ and ℓ2 SAM over a grid of ρ; ρ tied to the
  current noise level σ_k; M ∈ {1, 4, 16}. Each setting is scored by clean accuracy and by its
  worst case over a small adaptive suite (BPDA-det on every image, then partial unrolling and
  the exact gradient started from BPDA's end points on the survivors).
- :func:`attack_study` — which attack breaks the most images: BPDA with more steps, restarts,
  the margin loss and other step sizes; the exact gradient cold and warm-started; partial
  unrolling with several k; APGD-CE/DLR; Square. Every attack runs on every image (no
  cascade), so the columns compare attacks one to one.

Both write ``results.json`` through :func:`pursamere.evaluation.runner.evaluate` (resumable) and a
``study.json`` summary that the book reads.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from ..evaluation.attacks import Threat
from ..evaluation.runner import AttackSpec, Defence, evaluate
from ..io import atomic_write_json

__all__ = ["sam_settings", "sam_study_attacks", "sam_study", "attack_study_attacks", "attack_study", "summarise", "sam_frame",
           "robust_flags", "choose_setting"]


def sam_settings(cfg, dim: int) -> dict:
    """The SAM study's grid: name → overrides of the purifier config ``cfg``.

    ℓ2 radii are the ℓ∞ ones times √d (the ℓ2 norm of a vector of d equal entries), so each
    ℓ2 ρ matches an ℓ∞ ρ in size. σ-tied radii: ``ρ_k = c·σ_k`` (ℓ∞) and ``c·√d·σ_k`` (ℓ2, the
    typical length of the noise σ_k z), c ∈ {¼, 1}. M = 1 cannot be antithetic (pairs).
    """
    e, r = cfg.eps_pur, math.sqrt(dim)
    grid = {"SAM off": dict(rho=0.0)}
    for frac, label in ((1 / 8, "ε_pur/8"), (1 / 4, "ε_pur/4"), (1 / 2, "ε_pur/2")):
        grid[f"ℓ∞ ρ={label}"] = dict(rho=e * frac, sam_norm="inf")
    for frac, label in ((1 / 8, "ε_pur/8"), (1 / 4, "ε_pur/4"), (1 / 2, "ε_pur/2")):
        grid[f"ℓ2 ρ=√d·{label}"] = dict(rho=e * frac * r, sam_norm=2)
    for c, label in ((0.25, "σ/4"), (1.0, "σ")):
        grid[f"ℓ∞ ρ={label}"] = dict(rho_sigma=c, sam_norm="inf")
        grid[f"ℓ2 ρ=√d·{label}"] = dict(rho_sigma=c * r, sam_norm=2)
    for m in (1, 16):
        anti = dict(m=m, antithetic=m % 2 == 0 and cfg.antithetic)
        grid[f"SAM off, M={m}"] = dict(rho=0.0, **anti)
        grid[f"ℓ∞ ρ=ε_pur/2, M={m}"] = dict(rho=e / 2, sam_norm="inf", **anti)
    return grid


def sam_study_attacks(bpda_steps: int = 10, exact_steps: int = 5, partial_last: int = 3) -> list[AttackSpec]:
    bpda = f"BPDA{bpda_steps}"
    return [
        AttackSpec(bpda, gradient="bpda", steps=bpda_steps),
        AttackSpec(f"partial{partial_last}-margin{bpda_steps}", gradient="exact", steps=bpda_steps,
                   unroll_last=partial_last, loss="margin", cascade=True),
        AttackSpec(f"{bpda}→exact{exact_steps}", gradient="exact", steps=exact_steps, warm_from=bpda, cascade=True),
    ]


def attack_study_attacks(eps: float, n_steps: int = 12) -> list[AttackSpec]:
    """Attack variants compared one to one (all on every image); ``n_steps``: the purifier's K
    (partial unrolling takes k ∈ {1, 3, 6} capped at K)."""
    ks = sorted({min(k, n_steps) for k in (1, 3, 6)})
    return [
        AttackSpec("BPDA10", gradient="bpda", steps=10),
        AttackSpec("BPDA20", gradient="bpda", steps=20),
        AttackSpec("BPDA50", gradient="bpda", steps=50),
        AttackSpec("BPDA20×3 restarts", gradient="bpda", steps=20, restarts=3),
        AttackSpec("BPDA20 margin", gradient="bpda", steps=20, loss="margin"),
        AttackSpec("BPDA20 α=ε/8", gradient="bpda", steps=20, step_size=eps / 8),
        AttackSpec("BPDA20 α=ε/2", gradient="bpda", steps=20, step_size=eps / 2),
        AttackSpec("exact10", gradient="exact", steps=10),
        AttackSpec("BPDA20→exact10", gradient="exact", steps=10, warm_from="BPDA20"),
        *[AttackSpec(f"partial{k}-margin20", gradient="exact", steps=20, unroll_last=k, loss="margin") for k in ks],
        AttackSpec("APGD-CE20", gradient="bpda", kind="apgd-ce", steps=20),
        AttackSpec("APGD-DLR20", gradient="bpda", kind="apgd-dlr", steps=20),
        AttackSpec("Square100", gradient="none", kind="square", queries=100),
    ]


def _validation(preset, arts, n: Optional[int]):
    from .pipeline import validation_indices

    split = arts["split"]
    idx = validation_indices(preset, len(split.x_test))
    idx = idx if n is None else idx[:n]
    return split.x_test[idx], split.y_test[idx]


def summarise(res: dict) -> list[dict]:
    """One line per defence: clean, per-attack and worst-case accuracy with n and Wilson interval."""
    return [{"setting": w["defence"], "n": w["n"], "clean_acc": w["clean_acc"], "worst_case": w["robust_acc"],
             "ci95": w["ci95"], "per_attack": w["per_attack"]} for w in res["worst_case"]]


def sam_study(preset, arts: dict, out_dir: str | Path, n: Optional[int] = None, only: tuple = (),
              attacks: Optional[list] = None, progress: bool = True) -> dict:
    """Run the SAM grid (:func:`sam_settings`) on the validation images; see the module docstring.

    ``only``: setting names to run (default all). Writes ``results.json`` and ``study.json``.
    """
    from ..method.purify import Purifier

    x, y = _validation(preset, arts, n)
    grid = sam_settings(preset.purify, x[0].numel())
    if only:
        unknown = [o for o in only if o not in grid]
        if unknown:
            raise ValueError(f"unknown SAM-study settings {unknown}: choose from {list(grid)}")
        grid = {k: v for k, v in grid.items() if k in only}
    defs = [Defence(name, arts["eq17"], Purifier(arts["score"], preset.purify.replace(**kw))) for name, kw in grid.items()]
    threat = Threat("inf", preset.threats["inf"])
    specs = attacks or sam_study_attacks(partial_last=min(3, preset.purify.steps))
    res = evaluate(defs, specs, [threat], x, y, out_dir, progress=progress,
                   meta={"study": "sam", "eps_pur": preset.purify.eps_pur, "settings": grid,
                         "images": f"the {len(x)} validation images of preset {preset.name}"})
    summary = {"threat": str(threat), "eps_pur": preset.purify.eps_pur, "m": preset.purify.m, "attacks": [a.name for a in specs],
               "settings": grid, "rows": summarise(res)}
    atomic_write_json(Path(out_dir) / "study.json", summary)
    return summary


def attack_study(preset, arts: dict, out_dir: str | Path, defence: str = "ERE descent", n: Optional[int] = None,
                 attacks: Optional[list] = None, progress: bool = True) -> dict:
    """Compare attack variants (:func:`attack_study_attacks`) one to one on one defence."""
    from ..method.purify import Purifier

    x, y = _validation(preset, arts, n)
    cfgs = {"ERE descent": preset.purify.replace(rho=0.0, rho_sigma=None),
            "PurSAMERE": preset.purify.replace(rho=preset.purify.eps_pur / 2, rho_sigma=None, sam_norm=preset.purify.norm)}
    if defence not in cfgs:
        raise ValueError(f"attack study: unknown defence {defence!r}, choose from {list(cfgs)}")
    d = Defence(f"{defence} ε_pur={preset.purify.eps_pur:.4g}", arts["eq17"], Purifier(arts["score"], cfgs[defence]))
    threat = Threat("inf", preset.threats["inf"])
    specs = attacks or attack_study_attacks(threat.eps, preset.purify.steps)
    res = evaluate([d], specs, [threat], x, y, out_dir, progress=progress,
                   meta={"study": "attacks", "images": f"the {len(x)} validation images of preset {preset.name}"})
    rows = [{"attack": r["attack"], "robust_acc": r["robust_acc"], "ci95": r["ci95"], "seconds": r["seconds"],
             "broken": r["survived"].count("0")} for r in res["rows"]]
    summary = {"defence": d.name, "threat": str(threat), "n": len(x), "clean_acc": res["rows"][0]["clean_acc"],
               "rows": rows, "worst_case": summarise(res)[0]}
    atomic_write_json(Path(out_dir) / "study.json", summary)
    return summary


def sam_frame(summary: dict):
    """The SAM study as a DataFrame: setting, kind (off / ℓ∞ / ℓ2 / σ-tied ℓ∞ / σ-tied ℓ2), ρ label, M, accuracies."""
    import pandas as pd

    rows = []
    for r in summary["rows"]:
        name, kw = r["setting"], summary["settings"][r["setting"]]
        m = kw.get("m", summary.get("m", 4))
        if kw.get("rho_sigma") is not None:
            kind = f"σ-tied {'ℓ∞' if kw.get('sam_norm') == 'inf' else 'ℓ2'}"
        elif kw.get("rho", 0) == 0:
            kind = "off"
        else:
            kind = "ℓ∞" if kw.get("sam_norm") == "inf" else "ℓ2"
        rho = name.split("ρ=")[1].split(",")[0] if "ρ=" in name else "0"
        rows.append({"setting": name, "kind": kind, "ρ": rho, "M": m, "n": r["n"], "clean": r["clean_acc"],
                     "worst case": r["worst_case"], "lo": r["ci95"][0], "hi": r["ci95"][1],
                     **{f"{a}": v for a, v in r["per_attack"].items()}})
    return pd.DataFrame(rows)


def _sign_test(b: int, c: int) -> float:
    """Two-sided exact binomial (sign / McNemar exact) test of b versus c discordant images."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def robust_flags(results: dict, setting: str) -> list[bool]:
    """Per image: robust to every attack run against ``setting`` (the worst case, image by image)."""
    rows = [r for r in results["rows"] if r["defence"] == setting]
    if not rows:
        raise ValueError(f"no rows for setting {setting!r}")
    return [all(r["survived"][i] == "1" for r in rows) for i in range(rows[0]["n"])]


def choose_setting(summary: dict, results: dict, baseline: str = "SAM off", alpha: float = 0.05) -> dict:
    """The rule that sets the preset's defaults from the SAM study (written while it ran, before its M = 16 rows).

    Take the setting with the highest worst-case accuracy (ties: higher clean accuracy). It replaces
    ``baseline`` only if, on the same images, it saves significantly more images than it loses:
    two-sided exact sign test on the discordant images, p < ``alpha``. Otherwise the baseline stays
    (SAM off costs half as much as SAM on; fewer draws cost less). Returns the decision and the counts.
    """
    rows = {r["setting"]: r for r in summary["rows"]}
    if baseline not in rows:
        raise ValueError(f"the study has no {baseline!r} setting")
    best = max(rows.values(), key=lambda r: (r["worst_case"], r["clean_acc"]))
    base, cand = robust_flags(results, baseline), robust_flags(results, best["setting"])
    b = sum(c and not a for a, c in zip(base, cand))
    c = sum(a and not c for a, c in zip(base, cand))
    p = _sign_test(b, c)
    adopt = best["setting"] != baseline and b > c and p < alpha
    chosen = best["setting"] if adopt else baseline
    return {"chosen": chosen, "overrides": summary["settings"][chosen], "best": best["setting"],
            "best_worst_case": best["worst_case"], "baseline_worst_case": rows[baseline]["worst_case"],
            "saves": b, "loses": c, "p_value": p, "alpha": alpha, "n": best["n"]}
