"""Book helpers: the chapters' tables, read from results rows by their structured fields.

Every selection here is made on a row's fields — ``family``, ``classifier``, ``purifier`` settings,
``deterministic``, the attack's ``role`` — never on a display name. Nothing here trains or attacks.
"""
from __future__ import annotations

from typing import Optional

from ..evaluation.defences import Family
from ..evaluation.results import norm_label, paired, robust_flags, worst_case

__all__ = ["pct", "rows_frame", "worst_frame", "headline", "table1", "table2", "table3", "paper_tables",
           "comparison_sentences", "attack_comparison", "baselines_frame", "eps_curves", "checks_frame", "auroc_frame",
           "sweep_frame", "cost_model", "ensemble_frame", "sam_frame", "find_defence", "paired_frame", "role_attack",
           "longer_suite_frame",
           "PAPER_CIFAR10"]

#: The paper's CIFAR-10 numbers (method.md, "The paper's CIFAR-10 numbers"), in %.
PAPER_CIFAR10 = {
    "table1_gpgd20": [(91.18, 87.88), (88.45, 86.73), (85.68, 84.17)],  # (clean, robust) per ε_pur 8/12/16
    "table2_bpda20": [(91.18, 48.17), (88.45, 63.35), (85.68, 69.08)],
    "table3": {  # clean | ℓ∞, ℓ2, ℓ1 | mean
        "PurSAMERE (BPDA200-det)": (84.6, 67.9, 66.9, 63.9, 66.23),
        "ADP (BPDA+EoT)": (87.93, 37.65, 36.87, 57.81, 44.11),
        "DiffPure (BPDA+EoT)": (92.5, 42.2, 44.3, 60.8, 49.1),
    },
}
_ALGORITHM_1 = (Family.PURSAMERE.value, Family.ERE_DESCENT.value)
_BASELINES = (Family.ADP.value, Family.DIFFPURE.value)


def pct(acc: float, ci=None) -> str:
    """``acc`` in % with one decimal, and its 95% interval in brackets when given."""
    s = f"{100 * acc:.1f}"
    return s if ci is None else f"{s} [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]"


def _fmt(row) -> str:
    return "–" if row is None else pct(row["robust"], (row["lo"], row["hi"]))


def _cell(df, **where):
    sub = df
    for k, v in where.items():
        sub = sub[sub[k] == v]
    return None if sub.empty else sub.iloc[0]


def _eps_pur(r: dict) -> Optional[float]:
    return r["purifier"].get("eps_pur") if r["family"] in _ALGORITHM_1 else None


def rows_frame(results: dict):
    """One line per results row: defence, family, classifier, ε_pur, deterministic, attack, role, threat, ε, n,
    clean, robust, CI."""
    import pandas as pd

    return pd.DataFrame([{"defence": r["defence"], "family": r["family"], "classifier": r["classifier"],
                          "eps_pur": _eps_pur(r), "deterministic": r["deterministic"], "attack": r["attack"],
                          "role": r["role"], "threat": norm_label(r["norm"]), "eps": r["eps"], "n": r["n"],
                          "clean": r["clean_acc"], "robust": r["robust_acc"], "lo": r["ci95"][0], "hi": r["ci95"][1]}
                         for r in results["rows"]])


def _worst(results: dict):
    return results.get("worst_case") or worst_case(results["rows"])


def worst_frame(results: dict):
    """The per-image worst case per defence and threat as a table of fractions (with 95% CI)."""
    import pandas as pd

    return pd.DataFrame([{"defence": w["defence"], "family": w["family"], "classifier": w["classifier"],
                          "deterministic": w["deterministic"], "eps_pur": _eps_pur(w), "threat": norm_label(w["norm"]),
                          "eps": w["eps"], "clean": w["clean_acc"], "robust": w["robust_acc"], "lo": w["ci95"][0],
                          "hi": w["ci95"][1], "attacks": len(w["attacks"]),
                          "complete": w.get("complete", True)} for w in _worst(results)])


def headline(results: dict):
    """Worst case per image over every attack run at a threat (the headline), per defence.

    Returns ``(table, numbers)``: a display table (% with 95% Wilson intervals) and
    ``{defence: {"linf" | "l2" | "l1": robust accuracy}}`` as fractions.
    """
    import pandas as pd

    numbers, lines = {}, {}
    for w in _worst(results):
        numbers.setdefault(w["defence"], {})[f"l{w['norm']}"] = w["robust_acc"]
        line = lines.setdefault(w["defence"], {"clean": pct(w["clean_acc"])})
        cell = pct(w["robust_acc"], w["ci95"])
        if w.get("complete") is False:  # a run stopped by its time budget: an upper bound, not the worst case
            cell = f"≤ {cell} (only {len(w['attacks'])} of {len(w['planned'])} attacks ran)"
        line[f"worst case, {norm_label(w['norm'], w['eps'])}"] = cell
    for m in results.get("not_run") or []:  # planned groups where no attack finished (merged tables)
        lines.setdefault(m["defence"], {"clean": "–"})[f"worst case, {norm_label(m['norm'], m['eps'])}"] = "not run yet"
    return pd.DataFrame.from_dict(lines, orient="index").fillna("–"), numbers


def longer_suite_frame(first: dict, longer: dict, steps: tuple):
    """Image by image, what a longer suite run on a first suite's survivors (``ensemble --then-steps``) broke
    beyond it: one row per group of ``longer`` that ``first`` also holds, with the robust images after the first
    suite, after both, how many the longer suite broke and how many of its attacks have run. ``first`` only says
    which attacks make the first suite; every count comes from ``longer``'s own rows (its job may have finished
    the first suite itself). While a suite is unfinished its counts are bounds ("≤", "≥"). ``steps``: the two
    suites' step counts, for the column names, e.g. ``(80, 160)``. Returns ``None`` when the two share no group."""
    import pandas as pd

    a, b = steps
    before_of = {(w["defence"], str(w["norm"]), w["eps"]): w for w in _worst(first)}
    rows = []
    for w in _worst(longer):
        before = before_of.get((w["defence"], str(w["norm"]), w["eps"]))
        if before is None:
            continue
        suite = set(before.get("planned", before["attacks"]))  # the first suite's attacks
        # both counts from the longer table's own rows: its job may have finished the first suite itself
        own = [r for r in longer["rows"] if (r["defence"], str(r["norm"]), r["eps"]) == (w["defence"], str(w["norm"]), w["eps"])]
        first_rows = [r for r in own if r["attack"] in suite]
        first_done = {r["attack"] for r in first_rows} >= suite
        kept_a = sum(robust_flags(first_rows, w["defence"])) if first_rows else None
        ran = [x for x in w["attacks"] if x not in suite]
        planned = [x for x in w.get("planned", w["attacks"]) if x not in suite]
        kept, done = sum(w["survived"]), w.get("complete", True)
        rows.append({"defence": w["defence"], "threat": norm_label(w["norm"], w["eps"]),
                     f"robust after {a} steps": kept_a if first_done else
                     (f"≤ {kept_a} (the {a}-step suite unfinished)" if kept_a is not None else "–"),
                     f"after {b} steps too": kept if done else f"≤ {kept}",
                     f"broken by the {b}-step suite": (kept_a - kept if done else f"≥ {kept_a - kept}") if first_done
                     else "–", f"{b}-step attacks run": f"{len(ran)} of {len(planned)}"})
    return pd.DataFrame(rows).set_index("defence") if rows else None


def role_attack(results: dict, role: str) -> Optional[str]:
    """The name of the attack that has ``role`` in this run (the first one found)."""
    return next((r["attack"] for r in results["rows"] if r["role"] == role), None)


def table1(results: dict):
    """Table 1 in miniature: clean and gray-box (gPGD) accuracy per defence, ℓ∞."""
    import pandas as pd

    df = rows_frame(results)
    g = df[(df.role == "gray-box") & (df.threat == "ℓ∞")]
    return pd.DataFrame([{"defence": r.defence, "clean (%)": pct(r.clean), f"{r.attack} ℓ∞ (%)": _fmt(r)}
                         for _, r in g.iterrows()]).set_index("defence")


def table2(results: dict):
    """Table 2 in miniature: BPDA-det and the exact gradient per defence, ℓ∞, and the ℓ∞ worst case.

    Deterministic defences only (the fixed-seed baselines are Liu et al. 2025's white-box setting);
    the undefended classifier and the stochastic baselines have their own tables.
    """
    import pandas as pd

    df = rows_frame(results)
    bpda, exact = role_attack(results, "bpda"), role_attack(results, "exact")
    wc = {w["defence"]: w for w in _worst(results) if w["norm"] == "inf"}
    lines = []
    keep = df[(df.threat == "ℓ∞") & df.role.isin(["bpda", "exact"]) & df.deterministic & (df.family != Family.UNDEFENDED.value)]
    for d in dict.fromkeys(keep.defence):
        sub = df[(df.defence == d) & (df.threat == "ℓ∞")]
        lines.append({"defence": d, "clean (%)": pct(sub.clean.iloc[0]),
                      f"{bpda}-det (%)": _fmt(_cell(sub, role="bpda")),
                      f"{exact} exact gradient (%)": _fmt(_cell(sub, role="exact")),
                      "ℓ∞ worst case (%)": pct(wc[d]["robust_acc"], wc[d]["ci95"])})
    return pd.DataFrame(lines).set_index("defence")


def table3(results: dict):
    """Table 3 in miniature: ℓ∞/ℓ2/ℓ1 and their mean; PurSAMERE and the undefended classifier under the long
    BPDA-det, ADP and DiffPure-style under BPDA+EoT.

    Returns ``(table, numbers)``, numbers = ``{defence: {threat: acc, "mean": acc, "clean": acc}}``.
    """
    import pandas as pd

    df = rows_frame(results)
    picks = []
    for d in dict.fromkeys(df.defence):
        first = df[df.defence == d].iloc[0]
        if first.family in (Family.PURSAMERE.value, Family.UNDEFENDED.value):
            role = "bpda-long"
        elif first.family in _BASELINES and not first.deterministic:
            role = "bpda"
        else:
            continue
        sub = df[(df.defence == d) & (df.role == role)]
        if sub.threat.nunique() < 2:
            continue  # a defence run at ℓ∞ only has no place in the three-norm table
        picks.append((d, f"{sub.attack.iloc[0]}-det" if role == "bpda-long" else f"{sub.attack.iloc[0]}+EoT", sub))
    lines, numbers = [], {}
    for d, label, sub in picks:
        line = {"defence": d, "attack": label, "clean (%)": pct(sub.clean.iloc[0])}
        nums = {"clean": float(sub.clean.iloc[0])}
        for t in ("ℓ∞", "ℓ2", "ℓ1"):
            r = _cell(sub, threat=t)
            line[f"{t} (%)"] = _fmt(r)
            if r is not None:
                nums[t] = float(r["robust"])
        accs = [nums[t] for t in ("ℓ∞", "ℓ2", "ℓ1") if t in nums]
        nums["mean"] = sum(accs) / len(accs)
        line["mean (%)"] = pct(nums["mean"])
        lines.append(line)
        numbers[d] = nums
    return pd.DataFrame(lines).set_index("defence"), numbers


def paper_tables():
    """The paper's CIFAR-10 Tables 1–3 (%), for side-by-side display (method.md)."""
    import pandas as pd

    eps = ["8/255", "12/255", "16/255"]
    t12 = pd.DataFrame({"ε_pur (read from the paper)": eps,
                        "clean": [c for c, _ in PAPER_CIFAR10["table1_gpgd20"]],
                        "gPGD20": [r for _, r in PAPER_CIFAR10["table1_gpgd20"]],
                        "BPDA20-det": [r for _, r in PAPER_CIFAR10["table2_bpda20"]]}).set_index("ε_pur (read from the paper)")
    t3 = pd.DataFrame.from_dict(PAPER_CIFAR10["table3"], orient="index", columns=["clean", "ℓ∞", "ℓ2", "ℓ1", "mean"])
    return t12, t3


def _order(ra, rb) -> str:
    """Where worst-case row ``ra`` stands against ``rb``: above, below or within the noise (95% CIs)."""
    if ra["lo"] > rb["hi"]:
        return "above"
    if ra["hi"] < rb["lo"]:
        return "below"
    return "tied"


def comparison_sentences(results: dict) -> list:
    """Plain statements comparing PurSAMERE's worst case with each baseline, and with the paper."""
    wf = worst_frame(results)
    if wf.empty:
        return []
    out = []
    _, t3n = table3(results)
    purs = list(dict.fromkeys(wf[wf.family == Family.PURSAMERE.value].defence))
    main = next((d for d in t3n if d in purs), purs[len(purs) // 2] if purs else None)
    if main is None:
        return ["This run has no PurSAMERE rows."]
    base = list(dict.fromkeys(wf[wf.family.isin([*_BASELINES, Family.UNDEFENDED.value, Family.ERE_DESCENT.value])].defence))
    words = {"above": "Higher than", "below": "**lower than** (it does not beat these)",
             "tied": "indistinguishable at this sample size (overlapping 95% intervals) from"}
    for t in ("ℓ∞", "ℓ2", "ℓ1"):
        m = wf[(wf.defence == main) & (wf.threat == t)]
        if m.empty:
            continue
        groups = {}
        for b in base:
            rb = wf[(wf.defence == b) & (wf.threat == t)]
            if not rb.empty:
                groups.setdefault(_order(m.iloc[0], rb.iloc[0]), []).append(f"{b} {pct(rb.iloc[0]['robust'])}%")
        parts = "; ".join(f"{words[k]}: {', '.join(groups[k])}" for k in ("above", "below", "tied") if k in groups)
        out.append(f"{t} ε={m.iloc[0]['eps']:.3g}, worst case: {main} keeps {pct(m.iloc[0]['robust'])}% "
                   f"[{100 * m.iloc[0]['lo']:.0f}–{100 * m.iloc[0]['hi']:.0f}]. " + parts[:1].upper() + parts[1:] + ".")
    und = wf[wf.family == Family.UNDEFENDED.value]
    if not und.empty:
        c_p, c_u = float(wf[wf.defence == main].clean.iloc[0]), float(und.clean.iloc[0])
        out.append(f"Clean accuracy: {pct(c_p)}% with PurSAMERE ({main}) vs {pct(c_u)}% for the plain classifier "
                   f"({'a cost' if c_p < c_u else 'no cost'} of {100 * abs(c_u - c_p):.1f} points).")
    lin = wf[(wf.family == Family.PURSAMERE.value) & (wf.threat == "ℓ∞")].sort_values("eps_pur")
    if len(lin) > 1:
        accs = ", ".join(f"{pct(r.robust)}% at ε_pur={r.eps_pur:g}" for r in lin.itertuples())
        rising = all(b >= a for a, b in zip(lin.robust, lin.robust[1:]))
        out.append(f"ℓ∞ worst case against ε_pur: {accs} — "
                   + ("it does not fall as the radius grows, as in the paper's Table 2." if rising
                      else "it does not rise monotonically with the radius, unlike the paper's Table 2."))
    pap = PAPER_CIFAR10["table3"]
    p_lead = pap["PurSAMERE (BPDA200-det)"][4] - pap["ADP (BPDA+EoT)"][4]
    adp = next((d for d in t3n if d in set(wf[(wf.family == Family.ADP.value) & ~wf.deterministic].defence)), None)
    if adp is not None and main in t3n:
        lead = 100 * (t3n[main]["mean"] - t3n[adp]["mean"])
        out.append(f"Table 3 mean over the three norms (single attacks, as in the paper): PurSAMERE "
                   f"{100 * t3n[main]['mean']:.1f}% vs ADP {100 * t3n[adp]['mean']:.1f}% here, a "
                   f"{'lead' if lead >= 0 else 'deficit'} of {abs(lead):.1f} points; the paper reports a lead of "
                   f"{p_lead:.1f} points on CIFAR-10 ({pap['PurSAMERE (BPDA200-det)'][4]:.1f}% vs {pap['ADP (BPDA+EoT)'][4]:.1f}%).")
    return out


_GRADIENT_LABEL = {"gray-box": "gray-box (gPGD)", "bpda": "BPDA", "bpda-long": "BPDA (long)", "exact": "exact gradient"}


def attack_comparison(results: dict):
    """ℓ∞ rows of every defence under gray-box, BPDA(-det or +EoT) and exact gradient, labelled by role."""
    df = rows_frame(results)
    sub = df[(df.threat == "ℓ∞") & df.role.isin(list(_GRADIENT_LABEL))].copy()
    sub["gradient"] = sub.role.map(_GRADIENT_LABEL)
    sub.loc[(sub.gradient == "BPDA") & ~sub.deterministic, "gradient"] = "BPDA+EoT"
    return sub


def baselines_frame(results: dict):
    """The worst case of the purifier baselines and PurSAMERE, with how each was attacked: ``setting`` is
    "fixed seed (deterministic white-box)", "deterministic (PurSAMERE)" or "stochastic (BPDA+EoT)"."""
    wf = worst_frame(results)
    base = wf[wf.family.isin([*_BASELINES, Family.PURSAMERE.value])].copy()
    base["setting"] = ["deterministic (PurSAMERE)" if f == Family.PURSAMERE.value else
                       ("fixed seed (deterministic white-box)" if det else "stochastic (BPDA+EoT)")
                       for f, det in zip(base.family, base.deterministic)]
    base["purifier"] = [d if f == Family.PURSAMERE.value else f for d, f in zip(base.defence, base.family)]
    return base


def eps_curves(results: dict):
    """Rows and per-image worst case against ε, for runs with several ε per threat."""
    import pandas as pd

    df = rows_frame(results)
    wc = worst_frame(results).assign(attack="worst case", role="worst case")
    return pd.concat([df, wc[[c for c in wc.columns if c in df.columns]]], ignore_index=True)


def checks_frame(checks: list):
    """The obfuscation checklist as a table: defence, gradient, check, verdict, detail."""
    import pandas as pd

    return pd.DataFrame([{"defence": c["defence"], "gradient": c["gradient"], "n": c["n"], "check": k["name"],
                          "verdict": "PASS" if k["passed"] else "FAIL", "detail": k["detail"],
                          "likely cause / fix": "" if k["passed"] else f"{k['cause']}; fix: {k['fix']}"}
                         for c in checks for k in c["checks"]])


def auroc_frame(diag: dict):
    """ERE as a detector of PGD images: AUROC and mean ERE (clean vs adversarial) per σ."""
    import pandas as pd

    return pd.DataFrame([{"σ": d["sigma"], "AUROC": round(d["auroc"], 3), "mean ERE, clean": round(d["ere_clean_mean"], 2),
                          "mean ERE, adversarial": round(d["ere_adv_mean"], 2), "n per class": d["n"]}
                         for d in diag["ere_detection"]]).set_index("σ")


def sweep_frame(sweep: dict):
    """The schedule sweep (``scripts/sweep_digits_schedule.py``) as a table, in %."""
    import pandas as pd

    df = pd.DataFrame(sweep["rows"])
    keep = ["schedule", "clean_acc", "plain_clf_clean_acc", "robust_acc", "n", "seconds"]
    df = df[[c for c in keep if c in df.columns]].set_index("schedule")
    for c in ("clean_acc", "plain_clf_clean_acc", "robust_acc"):
        if c in df:
            df[c] = (100 * df[c]).round(1)
    return df.rename(columns={"clean_acc": "clean, eq.-17 clf (%)", "plain_clf_clean_acc": "clean, plain clf (%)",
                              "robust_acc": f"robust, {sweep.get('attack', 'BPDA')} (%)", "seconds": "wall (s)"})


def cost_model(preset, plan, throughput: Optional[float] = None):
    """Score evaluations per image for each attack of ``plan`` on ``preset``, and in total.

    One PurSAMERE purification costs ``K·M·(1+SAM)`` score evaluations (forward+backward of the
    score net on one image); BPDA-N costs ``N+1`` purifications (one per step and the final
    prediction); the exact gradient about 4 purifications per step (forward plus checkpointed
    backward); gPGD one. ``throughput`` (score evaluations per second, e.g. from
    ``benchmarks/bench_purify.py``) adds an hours column.
    """
    import pandas as pd

    cfg = preset.purify.paper_sam()
    per_pur = cfg.steps * cfg.m * (2 if cfg.sam else 1)
    steps = {"gpgd": plan.gpgd_steps, "bpda": plan.bpda_steps, "long": plan.bpda_long_steps, "exact": plan.exact_steps}
    n = plan.n_test if plan.n_test is not None else (10_000 if preset.data == "cifar10" else None)
    threats, radii = len(preset.threats), len(preset.eps_pur)
    lines = [
        ("one purification", "K·M·(1+SAM)", 1, per_pur, 1, radii),
        (f"gPGD{steps['gpgd']}", "1 purification (+ classifier steps)", 1, per_pur, 1, radii),
        (f"BPDA{steps['bpda']}-det", f"{steps['bpda']}+1 purifications", steps["bpda"] + 1, (steps["bpda"] + 1) * per_pur, 1, radii),
        (f"BPDA{steps['long']}-det", f"{steps['long']}+1 purifications", steps["long"] + 1, (steps["long"] + 1) * per_pur, threats, 1),
        (f"exact{steps['exact']} (exact gradient)", f"≈ 4×{steps['exact']}+1 purifications", 4 * steps["exact"] + 1,
         (4 * steps["exact"] + 1) * per_pur, 1, radii),
    ]
    df = pd.DataFrame([{"attack": a, "rule": r, "purifications / image": p, "score evaluations / image": s,
                        "threats": t, "ε_pur rows": e} for a, r, p, s, t, e in lines]).set_index("attack")
    if n is not None:
        df["images"] = n
        df["score evaluations, table"] = df["score evaluations / image"] * n * df["threats"] * df["ε_pur rows"]
        df.loc["one purification", "score evaluations, table"] = 0
        if throughput:
            df["hours at throughput"] = (df["score evaluations, table"] / throughput / 3600).round(1)
    return df, per_pur


# -------------------------------------------------------------------------------- ensembles and studies
def ensemble_frame(results: dict):
    """The worst case per (defence, ε): defence, family, classifier, deterministic, norm, eps, n, clean, robust,
    lo, hi, and the strongest single independent (non-cascaded) attack."""
    import pandas as pd

    out = []
    for w in _worst(results):
        indep = {a: v for a, v in w["per_attack"].items() if a not in w.get("cascaded", [])}
        out.append({"defence": w["defence"], "family": w["family"], "classifier": w["classifier"],
                    "deterministic": w["deterministic"], "norm": w["norm"], "eps": w["eps"], "n": w["n"],
                    "clean": w["clean_acc"], "robust": w["robust_acc"], "lo": w["ci95"][0], "hi": w["ci95"][1],
                    "best single attack": min(indep, key=indep.get) if indep else None,
                    "best single": min(indep.values()) if indep else None})
    return pd.DataFrame(out)


def find_defence(results: dict, **fields) -> Optional[str]:
    """The label of the one defence whose row fields match ``fields`` (e.g. ``family="ERE descent",
    classifier="eq17"``); ``None`` when there is none. Two matches are an error: add a field."""
    found = list(dict.fromkeys(r["defence"] for r in results["rows"] if all(r.get(k) == v for k, v in fields.items())))
    if len(found) > 1:
        raise ValueError(f"{fields} matches several defences {found}: add a field to tell them apart")
    return found[0] if found else None


def paired_frame(results: dict, pairs) -> "object":
    """Paired comparisons on the same images, per ε: for each ``(fields_a, fields_b)`` of ``pairs`` (selectors
    for :func:`find_defence`), how many images A keeps that B loses and the reverse, and the exact sign test."""
    import pandas as pd

    lines = []
    complete = {(w["defence"], w["eps"]): w.get("complete", True) for w in _worst(results)}
    for fa, fb in pairs:
        a, b = find_defence(results, **fa), find_defence(results, **fb)
        if a is None or b is None:
            continue
        for e in sorted({r["eps"] for r in results["rows"] if r["defence"] in (a, b)}):
            try:
                cmp = paired(robust_flags(results["rows"], a, eps=e), robust_flags(results["rows"], b, eps=e))
            except ValueError:  # one of the two was not run at this ε
                continue
            lines.append({"A": a, "B": b, "ε": e, "n": cmp["n"], "A robust": cmp["a_robust"], "B robust": cmp["b_robust"],
                          "A keeps, B loses": cmp["a_keeps_b_loses"], "B keeps, A loses": cmp["b_keeps_a_loses"],
                          "sign-test p": float(f"{cmp['p']:.3g}"),
                          "both rows complete": complete.get((a, e), True) and complete.get((b, e), True)})
    return pd.DataFrame(lines)


def _sam_kind(s: dict) -> str:
    if s.get("rho_sigma") is not None:
        return f"σ-tied {norm_label(s['sam_norm'])}"
    if not s.get("rho"):
        return "off"
    return norm_label(s["sam_norm"])


def _rho_label(s: dict, dim: int) -> str:
    """ρ as a fraction of ε_pur (or of σ when tied), with √d for ℓ2 radii: read from the settings."""
    import math

    scale = math.sqrt(dim) if str(s.get("sam_norm")) == "2" else 1.0
    root = "√d·" if scale != 1.0 else ""
    if s.get("rho_sigma") is not None:
        c = s["rho_sigma"] / scale
        return f"{root}σ" if abs(c - 1) < 1e-9 else f"{root}σ/{1 / c:g}"
    if not s.get("rho"):
        return "0"
    return f"{root}ε_pur/{s['eps_pur'] * scale / s['rho']:.3g}"


def sam_frame(summary: dict, results: dict, dim: int):
    """The SAM study as a DataFrame: setting, kind (off / ℓ∞ / ℓ2 / σ-tied ℓ∞ / σ-tied ℓ2), ρ, M, accuracies —
    kind, ρ and M read from each setting's purifier settings (``dim``: pixels per image, for ℓ2 radii)."""
    import pandas as pd

    settings = {r["defence"]: r["purifier"] for r in results["rows"]}
    rows = []
    for r in summary["rows"]:
        s = settings[r["setting"]]
        rows.append({"setting": r["setting"], "kind": _sam_kind(s), "ρ": _rho_label(s, dim), "M": s["m"], "n": r["n"],
                     "clean": r["clean_acc"], "worst case": r["worst_case"], "lo": r["ci95"][0], "hi": r["ci95"][1],
                     **dict(r["per_attack"].items())})
    return pd.DataFrame(rows)
