"""The CIFAR-10 chapter's tables: our recorded rows beside the paper's, and what they say.

Every function takes a results dictionary (``results.json`` of a run or of a merged table) and
returns a pandas frame or plain sentences; the chapter only displays them.
"""
from __future__ import annotations

from itertools import takewhile
from typing import Optional

from ..evaluation.defences import Family
from ..evaluation.results import convergence, paired, read_results, robust_flags
from .frames import PAPER_CIFAR10, headline, longer_suite_frame, paired_frame, pct, rows_frame

__all__ = ["against_paper", "findings", "key_pairs", "attack_frame", "longer_suites", "longer_suite_view",
           "paired_rows", "timing_frame"]

#: The paired comparisons the chapter makes on the same images, each as (name of A, fields of A, name of B,
#: fields of B); the fields select one defence of the table (family, classifier).
key_pairs = (
    ("PurSAMERE (paper's SAM)", dict(family=Family.PURSAMERE.value), "ERE descent (SAM off)", dict(family=Family.ERE_DESCENT.value, classifier="plain")),
    ("ERE descent (SAM off)", dict(family=Family.ERE_DESCENT.value, classifier="plain"), "adversarial training", dict(family=Family.ADVERSARIAL_TRAINING.value)),
    ("PurSAMERE (paper's SAM)", dict(family=Family.PURSAMERE.value), "adversarial training", dict(family=Family.ADVERSARIAL_TRAINING.value)),
    ("ERE descent (SAM off)", dict(family=Family.ERE_DESCENT.value, classifier="plain"), "DiffPure-style", dict(family=Family.DIFFPURE.value, deterministic=False)),
)


def _find(results: dict, **fields) -> Optional[dict]:
    """The ℓ∞ worst-case entry of the one defence whose fields match (``None`` when there is none)."""
    hits = [w for w in results["worst_case"] if w["norm"] == "inf" and all(w.get(k) == v for k, v in fields.items())]
    return hits[0] if len(hits) == 1 else None


def _attack_acc(results: dict, defence: str, role: str) -> Optional[float]:
    return next((r["robust_acc"] for r in results["rows"]
                 if r["defence"] == defence and r["norm"] == "inf" and r["role"] == role), None)


def against_paper(results: dict):
    """Our ℓ∞ rows beside the paper's CIFAR-10 numbers at the middle ε_pur (12/255): clean, the gray-box
    gPGD20 (Table 1), BPDA20 (Table 2; +EoT for stochastic purifiers, Table 3's ℓ∞ column for the
    baselines) and the worst case over the ensemble (the paper reports none)."""
    import pandas as pd

    t1, t2, t3 = PAPER_CIFAR10["table1_gpgd20"][1], PAPER_CIFAR10["table2_bpda20"][1], PAPER_CIFAR10["table3"]
    lines = [{"source": "paper", "defence": "PurSAMERE ε_pur=12/255", "clean": t1[0], "gPGD20": t1[1], "BPDA20": t2[1],
              "worst case over an ensemble": None},
             {"source": "paper", "defence": "DiffPure (Table 3, BPDA+EoT)", "clean": t3["DiffPure (BPDA+EoT)"][0], "gPGD20": None,
              "BPDA20": t3["DiffPure (BPDA+EoT)"][1], "worst case over an ensemble": None},
             {"source": "paper", "defence": "ADP (Table 3, BPDA+EoT)", "clean": t3["ADP (BPDA+EoT)"][0], "gPGD20": None,
              "BPDA20": t3["ADP (BPDA+EoT)"][1], "worst case over an ensemble": None}]
    for w in results["worst_case"]:
        if w["norm"] != "inf":
            continue
        worst = 100 * w["robust_acc"]
        lines.append({"source": "ours", "defence": w["defence"], "clean": 100 * w["clean_acc"],
                      "gPGD20": _pct_or_none(_attack_acc(results, w["defence"], "gray-box")),
                      "BPDA20": _pct_or_none(_attack_acc(results, w["defence"], "bpda")),
                      "worst case over an ensemble": worst if w.get("complete", True) else f"≤ {worst:.1f} (incomplete)"})
    return pd.DataFrame(lines).set_index(["source", "defence"])


def _pct_or_none(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100 * x


def attack_frame(results: dict):
    """Robust accuracy after each attack of the ensemble (rows: defence and threat; columns: attacks in the order
    they ran; cascaded columns are cumulative), in %."""
    df = rows_frame(results)
    df["robust (%)"] = 100 * df.robust
    # the run's order, then any attack it does not list (a merged table's meta comes from its first part)
    order = list(dict.fromkeys([*(results["meta"].get("attack_order") or []), *df.attack]))
    out = df.pivot_table(index=["defence", "threat"], columns="attack", values="robust (%)", sort=False)
    return out[[a for a in order if a in out.columns]].round(1)


def paired_rows(results: dict):
    """The chapter's paired comparisons (:data:`key_pairs`) at ℓ∞ 8/255 on the same images: how many images
    each side keeps that the other loses, and the exact sign test (:func:`~pursamere.book.frames.paired_frame`,
    with the chapter's names for the two sides)."""
    import pandas as pd

    eps_inf = {w["eps"] for w in results["worst_case"] if w["norm"] == "inf"}
    parts = []
    for name_a, fa, name_b, fb in key_pairs:
        try:
            f = paired_frame(results, [(fa, fb)])
        except ValueError:  # a selector matches several defences (a live tiny run): no such comparison here
            continue
        if not f.empty:
            parts.append(f[f["ε"].isin(eps_inf)].drop(columns="ε").assign(A=name_a, B=name_b))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def longer_suites(results: dict, folders) -> list:
    """The recorded longer suites of a table (``ensemble --then-steps``) as ``(steps, results)``, shortest first,
    for :func:`pursamere.evaluation.results.over_longer_suites`. ``folders``: ``(steps, folder)`` pairs in
    order; it stops at the first folder that holds no results or ran on other images than ``results`` (a live
    run's table has none to compare with)."""
    out = []
    for steps, folder in folders:
        try:
            r = read_results(folder)
        except FileNotFoundError:  # not recorded yet (a results file in an old format is an error, said as such)
            break
        if r["meta"].get("data_fingerprint") != results["meta"].get("data_fingerprint"):
            break
        out.append((steps, r))
    return out


def longer_suite_view(before: dict, after: dict, steps: tuple) -> list:
    """What the chapter shows of a longer suite: a sentence, its worst case per row over every suite up to it, and
    image by image what it broke of ``before``'s survivors (strings are Markdown, the rest frames)."""
    n = after["meta"]["n"]
    head, _ = headline(after)
    out = [f"Worst case per image over the suites up to {steps[1]} steps, n = {n} table images at ℓ∞ 8/255 "
           "(% with 95% Wilson intervals):", head]
    more = longer_suite_frame(before, after, steps)
    if more is not None:
        out += [f"Image by image, against the {steps[0]}-step table's row:", more]
    return out


def findings(results: dict) -> list[str]:
    """Plain sentences: the headline per key row, SAM against SAM off, purification against adversarial
    training, and the gap to the paper (each says when a row is incomplete or missing). A row that a longer suite
    checked (``results`` passed through :func:`~pursamere.evaluation.results.over_longer_suites`) is shown and
    compared at its worst case over every suite run, and says so."""
    out = []

    def row(**fields):
        return _find(results, **fields)

    def show(w) -> str:
        s = f"{pct(w['robust_acc'])}% [{100 * w['ci95'][0]:.0f}–{100 * w['ci95'][1]:.0f}] (clean {pct(w['clean_acc'])}%)"
        more = [c["steps"] for c in w.get("longer_suites", ())]
        if more:
            s += f" with the {' and '.join(f'{m}-' for m in more)}step suite{'s' if len(more) > 1 else ''} too"
        return s if w.get("complete", True) else f"at most {s} — only {len(w['attacks'])} of {len(w['planned'])} attacks ran"

    n = results["meta"]["n"]
    parts = [f"{w['defence']}: {show(w)}" for w in results["worst_case"] if w["norm"] == "inf"]
    if parts:
        out.append(f"Worst case per image over the ensemble, ℓ∞ 8/255, n = {n}: " + "; ".join(parts) + ".")
    sam, ere, at = row(family=Family.PURSAMERE.value), row(family=Family.ERE_DESCENT.value, classifier="plain"), \
        row(family=Family.ADVERSARIAL_TRAINING.value)
    pairs = paired_rows(results)

    def pair(a: str, b: str):
        hit = pairs[(pairs.A == a) & (pairs.B == b)] if not pairs.empty else pairs
        return None if hit.empty else hit.iloc[0]

    if sam and ere:
        p = pair("PurSAMERE (paper's SAM)", "ERE descent (SAM off)")
        same = set(sam["attacks"]) == set(ere["attacks"])
        # two rows whose longer suites (``over_longer_suites``) each ended at a converged verdict compare as they are,
        # even where one row needed a longer suite than the other
        verdicts = [convergence(w) for w in (sam, ere)]
        settled = None if same or not all(v and v[0] for v in verdicts) or not (sam.get("complete", True)
                                                                               and ere.get("complete", True)) \
            else tuple(v[1] for v in verdicts)
        # the attacks both ran, as long as both ran them in the same order (cascaded rows' flags count what the
        # earlier attacks broke, so a worst case over a subset of attacks is only right for a shared prefix)
        common = [x for x, _ in takewhile(lambda pair: pair[0] == pair[1], zip(sam["attacks"], ere["attacks"]))]

        def verdict(better: bool, p_value: float) -> str:
            if p_value >= 0.05:  # a paired difference chance explains is not a finding either way
                return "The two are level: chance explains the difference"
            return "On CIFAR-10 SAM is ahead, the opposite of the digits finding" if better else \
                "As on the digits, SAM does not help"

        if same:
            out.append(f"SAM (the paper's ρ = ε_pur/2) against SAM off: {pct(sam['robust_acc'])}% vs "
                       f"{pct(ere['robust_acc'])}%; {p['A keeps, B loses']} images kept only with SAM, {p['B keeps, A loses']} "
                       f"only without (sign test p = {p['sign-test p']:.3g}). " + verdict(sam["robust_acc"] > ere["robust_acc"], p["sign-test p"])
                       + ("" if p["both rows complete"] else " — provisional: a row is incomplete") + ".")
        elif settled:  # each row's longer suites stopped where chapter 7's bar said it had converged: compare those
            out.append(f"SAM (the paper's ρ = ε_pur/2) against SAM off, each at its worst case over the suites up to the "
                       f"one that found it converged ({settled[0]} steps with SAM, {settled[1]} without): {pct(sam['robust_acc'])}% vs "
                       f"{pct(ere['robust_acc'])}%; {p['A keeps, B loses']} images kept only with SAM, {p['B keeps, A loses']} "
                       f"only without (sign test p = {p['sign-test p']:.3g}). "
                       + verdict(sam["robust_acc"] > ere["robust_acc"], p["sign-test p"]) + ".")
        else:
            out.append(f"SAM (the paper's ρ = ε_pur/2) against SAM off: {pct(sam['robust_acc'])}% vs {pct(ere['robust_acc'])}%, "
                       f"but the two rows have not run the same attacks ({len(sam['attacks'])} and {len(ere['attacks'])}), so "
                       "these numbers do not compare them.")
        if not same and not settled and common:  # the fair comparison meanwhile: the worst case over the attacks both have run
            sel = [r for r in results["rows"] if r["norm"] == "inf" and r["attack"] in common]
            fs, fe = robust_flags(sel, sam["defence"], eps=sam["eps"]), robust_flags(sel, ere["defence"], eps=ere["eps"])
            q = paired(fs, fe)
            out.append(f"On the {len(common)} attacks both have run: SAM {pct(q['a_robust'] / q['n'])}% vs SAM off "
                       f"{pct(q['b_robust'] / q['n'])}%; {q['a_keeps_b_loses']} images kept only with SAM, "
                       f"{q['b_keeps_a_loses']} only without (sign test p = {q['p']:.3g}). "
                       + verdict(q["a_robust"] > q["b_robust"], q["p"]) + " on those attacks — provisional until both rows have "
                       "run every attack.")
    if ere and at:
        p = pair("ERE descent (SAM off)", "adversarial training")
        out.append(f"Purification against adversarial training: ERE descent {pct(ere['robust_acc'])}% vs adversarial "
                   f"training {pct(at['robust_acc'])}% (sign test p = {p['sign-test p']:.3g}): "
                   + ("purification does not beat adversarial training here either"
                      if at["robust_acc"] >= ere["robust_acc"] else "here purification is ahead, unlike on the digits")
                   + (f"; adversarial training pays {pct(ere['clean_acc'] - at['clean_acc'])} points of clean accuracy for it."
                      if at["clean_acc"] < ere["clean_acc"] else "."))
        q = pair("PurSAMERE (paper's SAM)", "adversarial training") if sam else None
        if q is not None:
            out.append(f"PurSAMERE against adversarial training on the same images: {q['A keeps, B loses']} images kept "
                       f"only by PurSAMERE, {q['B keeps, A loses']} only by adversarial training (sign test p = "
                       f"{q['sign-test p']:.3g})" + ("" if q["both rows complete"] else " — PurSAMERE's row is incomplete, "
                                                     "so the first count can only fall and the second only rise") + ".")
    elif ere:
        out.append("There is no adversarial-training row in this table (no adversarially trained CIFAR-10 classifier is "
                   "shipped), so purification is not compared with adversarial training here.")
    if sam:
        gap = PAPER_CIFAR10["table2_bpda20"][1][1] - 100 * (_attack_acc(results, sam["defence"], "bpda") or 0.0)
        out.append(f"Against the paper: BPDA20-det alone leaves PurSAMERE at "
                   f"{pct(_attack_acc(results, sam['defence'], 'bpda') or 0.0)}% here vs the paper's "
                   f"{PAPER_CIFAR10['table2_bpda20'][1][1]:.2f}% ({gap:.0f} points lower, with a score model 42× smaller and "
                   "a classifier not trained on purified images); the exact gradient through the unrolled purifier, which "
                   "the paper does not run, takes it much further down.")
    return out


def timing_frame(results: dict, machine: Optional[dict] = None):
    """Seconds per row and per attacked image, with the machine that ran the row (``machine``: row key →
    "gpu" / "cpu", from the table's ``provenance.json``). An independent attack runs on every clean-correct
    image; a cascaded one (†) only on the images every earlier attack of its group left robust."""
    import pandas as pd

    lines, alive = [], {}
    for r in results["rows"]:
        group = (r["defence"], r["norm"], r["eps"])
        earlier = alive.get(group)
        attacked = sum(earlier) if (r.get("cascade") and earlier is not None) else round(r["clean_acc"] * r["n"])
        alive[group] = list(r["survived"]) if earlier is None else [a and b for a, b in zip(earlier, r["survived"])]
        lines.append({"defence": r["defence"], "threat": f"ℓ{'∞' if r['norm'] == 'inf' else r['norm']}", "attack": r["attack"],
                      "machine": (machine or {}).get(r["key"]) or "?", "images attacked": attacked,
                      "seconds": round(r["seconds"], 1),
                      "seconds per image": round(r["seconds"] / attacked, 3) if attacked else None})
    return pd.DataFrame(lines)
