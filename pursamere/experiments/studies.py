"""Study summaries (``study.json``) and the rule that turns the SAM study into a preset default.

The studies themselves are protocols (:func:`pursamere.experiments.protocols.sam_study`,
:func:`~pursamere.experiments.protocols.attack_study`, :func:`~pursamere.experiments.protocols.schedule_sweep`)
run by the one engine; the functions here read their results.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..evaluation.results import paired, robust_flags

__all__ = ["summarise", "summarise_sam", "summarise_attacks", "summarise_sweep", "choose_setting", "convergence_curve",
           "flat_budget", "ladder_union", "seed_union", "ladder_point", "run_convergence"]


def summarise(results: dict) -> list[dict]:
    """One line per defence: clean, per-attack and worst-case accuracy with n and Wilson interval."""
    return [{"setting": w["defence"], "family": w["family"], "purifier": w["purifier"], "n": w["n"],
             "clean_acc": w["clean_acc"], "worst_case": w["robust_acc"], "ci95": w["ci95"], "per_attack": w["per_attack"]}
            for w in results["worst_case"]]


def summarise_sam(results: dict, protocol, run=None) -> dict:
    """The SAM study: settings, attacks and one line per setting."""
    (threat,) = protocol.threats
    return {"threat": str(threat), "eps_pur": protocol.plan["eps_pur"], "m": protocol.plan["m"],
            "attacks": [a.name for a in protocol.attacks], "settings": protocol.plan["settings"],
            "rows": summarise(results)}


def summarise_attacks(results: dict, protocol, run=None) -> dict:
    """The attack study: one line per attack (every attack ran on every image) and the worst case."""
    (threat,) = protocol.threats
    rows = [{"attack": r["attack"], "robust_acc": r["robust_acc"], "ci95": r["ci95"], "seconds": r["seconds"],
             "broken": r["survived"].count(0)} for r in results["rows"]]
    return {"defence": protocol.defences[0].label, "threat": str(threat), "n": results["meta"]["n"],
            "clean_acc": results["rows"][0]["clean_acc"] if rows else None, "rows": rows,
            "worst_case": summarise(results)[0] if rows else None}


def summarise_sweep(results: dict, protocol, run=None) -> dict:
    """The schedule sweep: per candidate, clean accuracy behind the eq.-17 and the plain classifier, and
    robust accuracy under the sweep's BPDA-det (``run``: the engine's run, for the plain classifier)."""
    from ..evaluation.runner import predict

    (attack,), (threat,) = protocol.attacks, protocol.threats
    by_name = {r["defence"]: r for r in results["rows"]}
    rows = []
    for spec, d in zip(protocol.defences, run.defences if run is not None else [None] * len(protocol.defences)):
        r = by_name[spec.label]
        line = {"schedule": spec.label, "rho": spec.purifier.rho, **protocol.plan["candidates"][spec.label],
                "clean_acc": r["clean_acc"], "robust_acc": r["robust_acc"], "n": r["n"], "seconds": r["seconds"]}
        if d is not None:  # the same purifier in front of the plain classifier (the eq.-17 one saw these purifications)
            plain = run.artifacts.defence(dataclasses.replace(spec, classifier="plain"))
            line["plain_clf_clean_acc"] = float((predict(plain, run.x) == run.y).double().mean())
        rows.append(line)
    return {"attack": f"{attack.name}-det ℓ∞ ε={threat.eps}", "eps_pur": protocol.plan["eps_pur"], "rows": rows}


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
    cmp = paired(robust_flags(results["rows"], best["setting"]), robust_flags(results["rows"], baseline))
    b, c, p = cmp["a_keeps_b_loses"], cmp["b_keeps_a_loses"], cmp["p"]
    adopt = best["setting"] != baseline and b > c and p < alpha
    chosen = best["setting"] if adopt else baseline
    return {"chosen": chosen, "overrides": summary["settings"][chosen], "best": best["setting"],
            "best_worst_case": best["worst_case"], "baseline_worst_case": rows[baseline]["worst_case"],
            "saves": b, "loses": c, "p_value": p, "alpha": alpha, "n": best["n"]}


def convergence_curve(folders) -> list[dict]:
    """Per budget folder of the convergence study and per defence: steps, restarts, the run's seed, worst case,
    images robust and the per-image outcomes (so two budgets can be compared image by image)."""
    from ..evaluation.results import read_results

    out = []
    for folder in folders:
        res = read_results(folder)
        plan = res["meta"]["plan"]
        for w in res["worst_case"]:
            out.append({"defence": w["defence"], "family": w["family"], "classifier": w["classifier"],
                        "steps": plan["steps"], "restarts": plan["restarts"], "seed": res["meta"].get("seed", 0),
                        "n": w["n"], "robust": sum(w["survived"]),
                        "worst_case": w["robust_acc"], "ci95": w["ci95"], "survived": w["survived"],
                        "seconds": round(sum(r["seconds"] for r in res["rows"] if r["defence"] == w["defence"]), 1)})
    return out


def flat_budget(curve: list[dict], defence: str, tolerance: float = 0.01) -> dict:
    """The smallest budget whose doubling in steps AND in restarts (both measured) moves ``defence``'s worst
    case by less than ``tolerance`` of the images — the budget the suite should run (issue: < 1 image in 100).
    A budget with only one of its doublings on the ladder is never called flat. Points of other seeds
    (:func:`seed_union`) are not doublings and are left out."""
    pts = {(c["steps"], c["restarts"]): c for c in curve if c["defence"] == defence and c.get("seed", 0) == 0}
    for (steps, restarts), c in sorted(pts.items(), key=lambda kv: (kv[0][0] * kv[0][1], kv[0][0])):
        keys = ((2 * steps, restarts), (steps, 2 * restarts))
        if not all(k in pts for k in keys):
            continue
        doubled = [pts[k] for k in keys]
        # images robust at this budget that a doubled one breaks (counted image by image, not as totals)
        drop = max(sum(a and not b for a, b in zip(c["survived"], d["survived"])) for d in doubled)
        if drop < tolerance * c["n"]:
            return {"steps": steps, "restarts": restarts, "worst_case": c["worst_case"], "checked_against":
                    [(d["steps"], d["restarts"]) for d in doubled], "drop_images": drop, "n": c["n"]}
    return {}


def ladder_union(curve: list[dict], defence: str) -> dict:
    """Every budget of the ladder together: an image counts as robust only if no attack at any budget broke it.

    Each budget's attacks start from their own random points, so two budgets break partly different
    images; this is the lowest worst case the ladder found (``{}`` when ``defence`` has no point). Runs of
    other seeds count too (``budgets`` lists them as ``(steps, restarts, seed)``)."""
    pts = sorted((c for c in curve if c["defence"] == defence),
                 key=lambda c: (c["steps"] * c["restarts"], c["steps"], c.get("seed", 0)))
    if not pts:
        return {}
    n = pts[0]["n"]
    if any(c["n"] != n for c in pts):
        raise ValueError(f"{defence}: the ladder's budgets ran on different numbers of images")
    survived = [all(c["survived"][i] for c in pts) for i in range(n)]
    return {"robust": sum(survived), "n": n, "worst_case": sum(survived) / n, "survived": survived,
            "budgets": [ladder_point(c) for c in pts]}


def ladder_point(c: dict) -> tuple:
    """A curve point's budget: ``(steps, restarts)``, or ``(steps, restarts, seed)`` for a run of another seed."""
    return (c["steps"], c["restarts"]) + ((c["seed"],) if c.get("seed", 0) else ())


def seed_union(curve: list[dict], defence: str, steps: int, restarts: int = 1) -> list[dict]:
    """One budget run with seeds 0, 1, 2, …: after each seed, the images every run so far left robust.

    A new seed changes only where each image's attacks start. If the union keeps falling as seeds are
    added, the attacks' outcome depends on their starting points (a rugged loss surface), and a longer
    run at one seed is partly just another draw. Seeds are taken in increasing order; ``[]`` if seed 0
    is missing."""
    pts = sorted((c for c in curve if c["defence"] == defence and c["steps"] == steps and c["restarts"] == restarts),
                 key=lambda c: c.get("seed", 0))
    if not pts or pts[0].get("seed", 0) != 0:
        return []
    out, alive = [], [True] * pts[0]["n"]
    for c in pts:
        if c["n"] != len(alive):
            raise ValueError(f"{defence}: the seeds of {steps}×{restarts} ran on different numbers of images")
        # the images this seed breaks that every earlier seed left robust (none to compare the first one with)
        newly = sum(a and not s for a, s in zip(alive, c["survived"])) if out else None
        alive = [a and bool(s) for a, s in zip(alive, c["survived"])]
        out.append({"seed": c.get("seed", 0), "robust": c["robust"], "union": sum(alive), "newly_broken": newly,
                    "n": c["n"], "seconds": c.get("seconds")})
    return out


def run_convergence(preset, out, options, ladder=None, n=None) -> dict:
    """Run the convergence ladder (one engine run per budget, each resumable) and write ``convergence.json``.

    ``ladder``: ``(steps, restarts)`` or ``(steps, restarts, seed)`` points (folder ``STEPSxRESTARTS`` or
    ``STEPSxRESTARTS-seedS``); the summary covers every budget folder already in ``out``, so points run
    one at a time add up."""
    from ..io import atomic_write_json
    from . import protocols
    from .engine import run

    out = Path(out)
    for point in ladder or protocols.CONVERGENCE_LADDER:
        steps, restarts, seed = (tuple(point) + (0,))[:3]
        folder = out / (f"{steps}x{restarts}" + (f"-seed{seed}" if seed else ""))
        run(preset, protocols.convergence(preset, steps, restarts, n=n, seed=seed), folder,
            dataclasses.replace(options, resume=True))
    folders = sorted(f for f in out.glob("*x*") if (f / "results.json").is_file())
    curve = convergence_curve(folders)
    names = dict.fromkeys(c["defence"] for c in curve)
    seeded = sorted({(c["steps"], c["restarts"]) for c in curve if c.get("seed", 0)})
    summary = {"curve": curve, "flat": {d: flat_budget(curve, d) for d in names},
               "union": {d: ladder_union(curve, d) for d in names},
               "seeds": {d: {f"{s}x{r}": seed_union(curve, d, s, r) for s, r in seeded} for d in names}}
    atomic_write_json(out / "convergence.json", summary)
    return summary
