"""Book helpers: read a finished pipeline run and turn it into the chapters' tables and figures.

A *run* is the folder ``run_pipeline`` writes (``results.json``, ``table.md``, ``checks.json``,
``summary.json``, ``score_diagnostics.json``, ``samples.png``, ``examples.png``,
``robust_accuracy.png``). Nothing here trains or attacks: chapters 4–6 display recorded runs
(or a tiny live one) through these functions, so the notebooks stay a few lines per cell.

Example:
    >>> run = load_run("book/data/digits-demo")            # None when the folder has no run
    >>> table1(run.results)                                 # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = ["Run", "load_run", "find_run", "attack_roles", "rows_frame", "headline", "table1", "table2", "table3",
           "attack_comparison", "eps_curves", "worst_frame", "comparison_sentences", "live_run", "run_banner", "checks_frame", "auroc_frame", "sweep_frame", "paper_tables",
           "cost_model", "pct", "plot_intervals", "plot_eps_curves", "plot_sweep"]

FILES = ("results.json", "table.md", "checks.json", "summary.json", "score_diagnostics.json",
         "samples.png", "examples.png", "robust_accuracy.png")

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


@dataclass
class Run:
    """A finished pipeline run read from disk (``None`` fields: that file is missing)."""

    path: Path
    results: dict
    checks: Optional[list] = None
    summary: Optional[dict] = None
    diagnostics: Optional[dict] = None
    missing: list = field(default_factory=list)

    def image(self, name: str) -> Optional[Path]:
        p = self.path / name
        return p if p.exists() else None

    @property
    def preset(self) -> str:
        return self.results["meta"].get("preset", "?")


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def load_run(path) -> Optional[Run]:
    """The run in ``path``, or ``None`` when it holds no ``results.json``."""
    p = Path(path)
    results = _read(p / "results.json")
    if results is None:
        return None
    return Run(p, results, checks=_read(p / "checks.json"), summary=_read(p / "summary.json"),
               diagnostics=_read(p / "score_diagnostics.json"), missing=[f for f in FILES if not (p / f).exists()])


def find_run(*candidates) -> Optional[Run]:
    """The first of ``candidates`` (folders) that holds a run."""
    for c in candidates:
        if c is not None and (run := load_run(c)) is not None:
            return run
    return None


def live_run(preset: str, out_dir=None, workdir=None, plan: str = "demo", device: str = "cpu") -> Run:
    """Train and evaluate ``preset`` now (``run_pipeline`` with its ``plan``) and read the run back.

    A finished run of the same preset already in ``out_dir`` is reused (the test suite makes one
    and shares it between chapters); a run of ANOTHER preset there is never overwritten: the live
    run then goes to a temporary folder. ``workdir`` holds the checkpoints (temporary by default).
    """
    import tempfile

    import torch

    from ..experiments.pipeline import run_pipeline
    from ..experiments.presets import get_preset

    p = get_preset(preset)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but no CUDA device is visible: pass device='cpu' for a CPU run")
    out = Path(out_dir) if out_dir else None
    old = load_run(out) if out is not None else None
    if old is not None and (out / "table.md").exists():
        if old.preset == p.name:
            print(f"reusing the finished {p.name} run in {out}")
            return old
        out = None
    out = out or Path(tempfile.mkdtemp(prefix=f"pursamere-{p.name}-run-"))
    work = workdir or tempfile.mkdtemp(prefix=f"pursamere-{p.name}-work-")
    run_pipeline(p, getattr(p, plan), work, out, progress=False, device=device)
    return load_run(out)


def _show_path(path) -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def run_banner(run: Optional[Run], wanted, expected: str = "digits") -> str:
    """One Markdown paragraph saying which run the page shows (or that none was found)."""
    if run is None:
        return (f"**No recorded run found in `{_show_path(wanted)}`.** This chapter displays a finished "
                f"`pursamere demo --preset {expected}` run (its output folder: `results.json`, `table.md`, `checks.json`, "
                f"figures). Make one, e.g. `pursamere demo --preset {expected} --out {_show_path(wanted)}`, and rebuild; "
                "or run this notebook with `live_preset=\"tiny\"` to train and evaluate a tiny version on the spot. "
                "The sections below are left empty.")
    meta, s = run.results["meta"], run.summary or {}
    when = f" in {s['seconds_total'] / 60:.0f} min" if "seconds_total" in s else ""
    text = (f"Showing the `{run.preset}` run in `{_show_path(run.path)}` (pursamere {meta.get('version', '?')}{when}): "
            f"n = {meta['n']} test images, {meta.get('subset', 'a fixed subset')}.")
    if run.preset != expected:
        text = (f"**Note: this is a `{run.preset}` run, not the `{expected}` run this chapter is written for.** "
                "Its models are trained for seconds on a handful of images: the numbers below show the mechanics, "
                "not the method. " + text)
    if run.missing:
        text += f" Files missing from the run: {', '.join(run.missing)}."
    return text


# ------------------------------------------------------------------------------------ tables
def pct(acc: float, ci=None) -> str:
    """``acc`` in % with one decimal, and its 95% interval in brackets when given."""
    s = f"{100 * acc:.1f}"
    return s if ci is None else f"{s} [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]"


def attack_roles(results: dict) -> dict:
    """Attack name per role (``gpgd``, ``bpda``, ``bpda_long``, ``exact``), read from the rows.

    Gray-box = ``gradient="none"``, exact = ``"exact"``; of the BPDA attacks the shortest is
    ``bpda`` (Table 2) and the longest ``bpda_long`` (Table 3). Works for runs of
    ``run_pipeline``, ``pursamere evaluate`` and ``pursamere.experiments.distributed`` alike.
    """
    by = {}
    for r in results["rows"]:
        s = r.get("attack_settings", {})
        if s.get("kind", "pgd") == "pgd":
            by.setdefault(s.get("gradient"), {})[r["attack"]] = s.get("steps", 0)
    bpda = sorted(by.get("bpda", {}).items(), key=lambda kv: kv[1])
    first = lambda g: next(iter(by.get(g, {})), None)  # noqa: E731
    return {"gpgd": first("none"), "exact": first("exact"),
            "bpda": bpda[0][0] if bpda else None, "bpda_long": bpda[-1][0] if bpda else None}


def family(defence: str) -> str:
    """``PurSAMERE``, ``ERE descent``, ``ADP``, ``DiffPure-style`` or ``undefended``."""
    for f in ("PurSAMERE", "ERE descent", "ADP", "DiffPure-style"):
        if defence.startswith(f):
            return f
    return defence


def _eps_pur(defence: str) -> Optional[float]:
    return float(defence.split("ε_pur=")[1]) if "ε_pur=" in defence else None


def _threat(norm: str) -> str:
    return f"ℓ{'∞' if str(norm) == 'inf' else norm}"


def rows_frame(results: dict):
    """One line per results row: defence, family, ε_pur, attack, threat, ε, n, clean, robust, CI."""
    import pandas as pd

    return pd.DataFrame([{"defence": r["defence"], "family": family(r["defence"]), "eps_pur": _eps_pur(r["defence"]),
                          "stochastic": r.get("stochastic", False), "attack": r["attack"], "threat": _threat(r["norm"]),
                          "eps": r["eps"], "n": r["n"], "clean": r["clean_acc"], "robust": r["robust_acc"],
                          "lo": r["ci95"][0], "hi": r["ci95"][1]} for r in results["rows"]])


def _worst(results: dict):
    from ..evaluation.runner import worst_case

    return results.get("worst_case") or worst_case(results["rows"])


def headline(results: dict):
    """Worst case per image over every attack run at a threat (the headline), per defence.

    Returns ``(table, numbers)``: a display table (% with 95% Wilson intervals) and
    ``{defence: {"linf" | "l2" | "l1": robust accuracy}}`` as fractions.
    """
    import pandas as pd

    numbers, lines = {}, {}
    for w in _worst(results):
        t = f"{_threat(w['norm'])} ε={w['eps']:.3g}"
        numbers.setdefault(w["defence"], {})[f"l{w['norm']}"] = w["robust_acc"]
        line = lines.setdefault(w["defence"], {"clean": pct(w["clean_acc"])})
        line[f"worst case, {t}"] = pct(w["robust_acc"], w["ci95"])
    return pd.DataFrame.from_dict(lines, orient="index").fillna("–"), numbers


def _cell(df, **where):
    sub = df
    for k, v in where.items():
        sub = sub[sub[k] == v]
    return None if sub.empty else sub.iloc[0]


def _fmt(row) -> str:
    return "–" if row is None else pct(row["robust"], (row["lo"], row["hi"]))


def worst_frame(results: dict):
    """The per-image worst case per defence and threat as a table of fractions (with 95% CI)."""
    import pandas as pd

    return pd.DataFrame([{"defence": w["defence"], "family": family(w["defence"]), "threat": _threat(w["norm"]),
                          "eps": w["eps"], "clean": w["clean_acc"], "robust": w["robust_acc"], "lo": w["ci95"][0],
                          "hi": w["ci95"][1], "attacks": len(w["attacks"])} for w in _worst(results)])


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
    t3, t3n = table3(results)
    purs = [d for d in dict.fromkeys(wf.defence) if family(d) == "PurSAMERE"]
    main = next((d for d in t3n if family(d) == "PurSAMERE"), purs[len(purs) // 2] if purs else None)
    if main is None:
        return ["This run has no PurSAMERE rows."]
    base = [d for d in dict.fromkeys(wf.defence) if family(d) in ("ADP", "DiffPure-style", "undefended", "ERE descent")]
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
        parts = [f"{words[k]}: {', '.join(groups[k])}" for k in ("above", "below", "tied") if k in groups]
        out.append(f"{t} ε={m.iloc[0]['eps']:.3g}, worst case: {main} keeps {pct(m.iloc[0]['robust'])}% "
                   f"[{100 * m.iloc[0]['lo']:.0f}–{100 * m.iloc[0]['hi']:.0f}]. " + "; ".join(parts)[:1].upper() + "; ".join(parts)[1:] + ".")
    und = wf[wf.defence == "undefended"]
    if not und.empty:
        c_p, c_u = float(wf[wf.defence == main].clean.iloc[0]), float(und.clean.iloc[0])
        out.append(f"Clean accuracy: {pct(c_p)}% with PurSAMERE ({main}) vs {pct(c_u)}% for the plain classifier "
                   f"({'a cost' if c_p < c_u else 'no cost'} of {100 * abs(c_u - c_p):.1f} points).")
    lin = wf[(wf.family == "PurSAMERE") & (wf.threat == "ℓ∞")].sort_values("eps")
    if len(lin) > 1:
        lin = lin.assign(eps_pur=[_eps_pur(d) for d in lin.defence]).sort_values("eps_pur")
        accs = ", ".join(f"{pct(r.robust)}% at ε_pur={r.eps_pur:g}" for r in lin.itertuples())
        rising = all(b >= a for a, b in zip(lin.robust, lin.robust[1:]))
        out.append(f"ℓ∞ worst case against ε_pur: {accs} — "
                   + ("it does not fall as the radius grows, as in the paper's Table 2." if rising
                      else "it does not rise monotonically with the radius, unlike the paper's Table 2."))
    pap = PAPER_CIFAR10["table3"]
    p_lead = pap["PurSAMERE (BPDA200-det)"][4] - pap["ADP (BPDA+EoT)"][4]
    adp = next((d for d in t3n if d == "ADP"), None)
    if adp is not None and main in t3n:
        lead = 100 * (t3n[main]["mean"] - t3n[adp]["mean"])
        out.append(f"Table 3 mean over the three norms (single attacks, as in the paper): PurSAMERE "
                   f"{100 * t3n[main]['mean']:.1f}% vs ADP {100 * t3n[adp]['mean']:.1f}% here, a "
                   f"{'lead' if lead >= 0 else 'deficit'} of {abs(lead):.1f} points; the paper reports a lead of "
                   f"{p_lead:.1f} points on CIFAR-10 ({pap['PurSAMERE (BPDA200-det)'][4]:.1f}% vs {pap['ADP (BPDA+EoT)'][4]:.1f}%).")
    return out


def table1(results: dict):
    """Table 1 in miniature: clean and gray-box (gPGD) accuracy per ε_pur, ℓ∞."""
    import pandas as pd

    df, roles = rows_frame(results), attack_roles(results)
    g = df[(df.attack == roles["gpgd"]) & (df.threat == "ℓ∞")]
    return pd.DataFrame([{"defence": r.defence, "clean (%)": pct(r.clean), f"{roles['gpgd']} ℓ∞ (%)": _fmt(r)}
                         for _, r in g.iterrows()]).set_index("defence")


def table2(results: dict):
    """Table 2 in miniature: BPDA-det and the exact gradient per ε_pur, ℓ∞, and the ℓ∞ worst case.

    Also the fixed-seed baselines (Liu et al. 2025's deterministic white-box setting).
    """
    import pandas as pd

    df, roles = rows_frame(results), attack_roles(results)
    wc = {w["defence"]: w for w in _worst(results) if w["norm"] == "inf"}
    lines = []
    for d in dict.fromkeys(df[(df.threat == "ℓ∞") & df.attack.isin([roles["bpda"], roles["exact"]])].defence):
        if family(d) == "undefended" or (family(d) in ("ADP", "DiffPure-style") and "fixed seed" not in d):
            continue
        sub = df[(df.defence == d) & (df.threat == "ℓ∞")]
        lines.append({"defence": d, "clean (%)": pct(sub.clean.iloc[0]),
                      f"{roles['bpda']}-det (%)": _fmt(_cell(sub, attack=roles["bpda"])),
                      f"{roles['exact']} exact gradient (%)": _fmt(_cell(sub, attack=roles["exact"])),
                      "ℓ∞ worst case (%)": pct(wc[d]["robust_acc"], wc[d]["ci95"])})
    return pd.DataFrame(lines).set_index("defence")


def table3(results: dict):
    """Table 3 in miniature: ℓ∞/ℓ2/ℓ1 and their mean; PurSAMERE (BPDA-long-det) beside ADP and
    DiffPure-style under BPDA+EoT (and the undefended classifier).

    Returns ``(table, numbers)``, numbers = ``{defence: {threat: acc, "mean": acc, "clean": acc}}``.
    """
    import pandas as pd

    df, roles = rows_frame(results), attack_roles(results)
    picks = []
    for d in dict.fromkeys(df.defence):
        f = family(d)
        if f == "PurSAMERE" or f == "undefended":
            atk, label = roles["bpda_long"], f"{roles['bpda_long']}-det"
        elif f in ("ADP", "DiffPure-style") and "fixed seed" not in d:
            atk, label = roles["bpda"], f"{roles['bpda']}+EoT"
        else:
            continue
        sub = df[(df.defence == d) & (df.attack == atk)]
        if sub.threat.nunique() < 2:
            continue  # a defence run at ℓ∞ only has no place in the three-norm table
        picks.append((d, label, sub))
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


def attack_comparison(results: dict):
    """ℓ∞ rows of every defence under gray-box, BPDA(-det or +EoT) and exact gradient, with roles."""
    df, roles = rows_frame(results), attack_roles(results)
    kind = {roles["gpgd"]: "gray-box (gPGD)", roles["bpda"]: "BPDA", roles["bpda_long"]: "BPDA (long)",
            roles["exact"]: "exact gradient"}
    sub = df[df.threat == "ℓ∞"].copy()
    sub["gradient"] = sub.attack.map(kind)
    sub.loc[(sub.gradient == "BPDA") & sub.stochastic, "gradient"] = "BPDA+EoT"
    return sub


def eps_curves(results: dict):
    """Rows and per-image worst case against ε, for runs with several ε per threat."""
    import pandas as pd

    df = rows_frame(results)
    wc = pd.DataFrame([{"defence": w["defence"], "family": family(w["defence"]), "attack": "worst case",
                        "threat": _threat(w["norm"]), "eps": w["eps"], "n": w["n"], "clean": w["clean_acc"],
                        "robust": w["robust_acc"], "lo": w["ci95"][0], "hi": w["ci95"][1]} for w in _worst(results)])
    return pd.concat([df, wc], ignore_index=True)


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


# ----------------------------------------------------------------------------------- cost model
def cost_model(preset, plan, throughput: Optional[float] = None):
    """Score evaluations per image for each attack of ``plan`` on ``preset``, and in total.

    One PurSAMERE purification costs ``K·M·(1+SAM)`` score evaluations (forward+backward of the
    score net on one image); BPDA-N costs ``N+1`` purifications (one per step and the final
    prediction); the exact gradient about 4 purifications per step (forward plus checkpointed
    backward, ``scripts/cifar10_paper.sh``); gPGD one. ``throughput`` (score evaluations per
    second, e.g. from ``benchmarks/bench_purify.py``) adds an hours column.
    """
    import pandas as pd

    from ..experiments.pipeline import attack_plan

    cfg = preset.purify
    per_pur = cfg.steps * cfg.m * (2 if cfg.sam else 1)
    atk = attack_plan(plan)
    n = plan.n_test if plan.n_test is not None else (10_000 if preset.data == "cifar10" else None)
    threats = len(preset.threats)
    lines = [
        ("one purification", "K·M·(1+SAM)", 1, per_pur, 1, len(preset.eps_pur)),
        (atk["gpgd"].name, "1 purification (+ classifier steps)", 1, per_pur, 1, len(preset.eps_pur)),
        (f"{atk['bpda'].name}-det", f"{plan.bpda_steps}+1 purifications", plan.bpda_steps + 1,
         (plan.bpda_steps + 1) * per_pur, 1, len(preset.eps_pur)),
        (f"{atk['bpda_long'].name}-det", f"{plan.bpda_long_steps}+1 purifications", plan.bpda_long_steps + 1,
         (plan.bpda_long_steps + 1) * per_pur, threats, 1),
        (f"{atk['exact'].name} (exact gradient)", f"≈ 4×{plan.exact_steps}+1 purifications", 4 * plan.exact_steps + 1,
         (4 * plan.exact_steps + 1) * per_pur, 1, len(preset.eps_pur)),
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


# -------------------------------------------------------------------------------------- figures
def plot_intervals(df, x="robust", y="defence", hue="gradient", ax=None, title=""):
    """Point plot of accuracies (%) with their 95% Wilson intervals as horizontal bars."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * df[y].nunique() + 1.5))
    levels = list(dict.fromkeys(df[hue]))
    ys = {d: i for i, d in enumerate(dict.fromkeys(df[y]))}
    colors = dict(zip(levels, sns.color_palette("colorblind", len(levels))))
    width = 0.7 / max(len(levels), 1)
    for j, h in enumerate(levels):
        sub = df[df[hue] == h]
        pos = [ys[v] - 0.35 + width * (j + 0.5) for v in sub[y]]
        ax.errorbar(100 * sub[x], pos, xerr=[100 * (sub[x] - sub["lo"]), 100 * (sub["hi"] - sub[x])], fmt="o",
                    color=colors[h], capsize=3, label=h)
    ax.set_yticks(list(ys.values()), list(ys.keys()))
    ax.invert_yaxis()
    ax.set_xlim(-2, 102)
    ax.set_xlabel("robust accuracy (%), 95% Wilson interval")
    ax.set_ylabel("")
    ax.legend(title=hue, fontsize=8, loc="best")
    if title:
        ax.set_title(title)
    return ax


def plot_eps_curves(df, attack_col="attack"):
    """Accuracy (%) against ε per threat, one line per defence, shaded 95% intervals."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    threats = [t for t in ("ℓ∞", "ℓ2", "ℓ1") if t in set(df.threat)]
    fig, axes = plt.subplots(1, len(threats), figsize=(5.5 * len(threats), 4), squeeze=False)
    defs = list(dict.fromkeys(df.defence))
    colors = dict(zip(defs, sns.color_palette("colorblind", len(defs))))
    for ax, t in zip(axes[0], threats):
        sub = df[df.threat == t]
        for d in defs:
            s = sub[sub.defence == d].sort_values("eps")
            if s.empty:
                continue
            ax.plot(s.eps, 100 * s.robust, "o-", color=colors[d], label=d)
            ax.fill_between(s.eps, 100 * s.lo, 100 * s.hi, color=colors[d], alpha=0.15)
        ax.set_xlabel(f"attack budget ε ({t} norm, pixel units in [0, 1])")
        ax.set_ylabel("worst-case robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{t}: worst case over the attacks run")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_sweep(df):
    """Clean against robust accuracy (%) of each schedule candidate."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rob = [c for c in df.columns if c.startswith("robust")][0]
    clean = [c for c in df.columns if c.startswith("clean, eq")][0]
    ax.scatter(df[clean], df[rob], s=40)
    for name, r in df.iterrows():
        ax.annotate(name.split(":")[0], (r[clean], r[rob]), textcoords="offset points", xytext=(4, 3), fontsize=9)
    ax.set_xlabel("clean accuracy behind the purifier (%)")
    ax.set_ylabel(f"{rob}")
    ax.set_title("purification schedules (letters: candidates in the table)")
    fig.tight_layout()
    return fig


