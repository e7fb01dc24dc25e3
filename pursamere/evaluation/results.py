"""Results: rows, resume rules, the worst case per image, paired comparisons and Markdown tables.

One row per (defence, attack, threat). A row records the defence's structured identity (family,
classifier, purifier settings, deterministic) and the fingerprints of the models behind it, the
attack's name, role and settings, n, clean accuracy, robust accuracy with a 95% Wilson interval,
and the per-image outcome ``survived`` (a list of 0/1, one per image, in the order of the images).
The headline of a defence is its WORST CASE per image over every attack run at a threat.

Nothing here runs an attack (that is :mod:`pursamere.evaluation.runner`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from .attacks import Threat
from .defences import Family

__all__ = ["SCHEMA", "wilson", "row_key", "make_row", "effective_settings", "suite_context", "read_results",
           "load_done", "load_plans", "reusable", "pending", "cumulative", "worst_case", "robust_flags", "sign_test", "paired",
           "render_table", "norm_label", "merge_results", "redraw_control"]

#: Version of the results format (2: structured identities, per-image outcomes as lists).
SCHEMA = 2
#: Revision of the attack algorithms (3: our APGD and Square, per-image seeds salted by attack name).
#: Part of every row's settings, so a resumed run never reuses a row an older algorithm made.
ATTACK_REVISION = 3
#: Revision of ℓ1-APGD (1: sparse steps, the 3ε → 2ε → ε schedule, a projected Gaussian start), recorded in
#: the ℓ1 rows of APGD and of every cascaded attack (they run on what APGD left), so that adding it reused
#: no ℓ∞ / ℓ2 row less than before.
L1_APGD_REVISION = 1


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def row_key(defence: str, attack: str, threat: Threat) -> str:
    return f"{defence}|{attack}|{threat.norm}|{threat.eps:.6g}"


def effective_settings(spec, threat: Threat, defence, context: Optional[dict] = None) -> dict:
    """The attack's settings as run against this defence (EoT only against stochastic ones).

    ``context`` (from :func:`suite_context`) adds what a cascaded or warm-started row depends on:
    the attacks before it in its suite, and the settings of the attack whose end points it starts from.
    """
    d = json.loads(json.dumps(spec.settings(threat)))
    d["revision"] = ATTACK_REVISION
    if threat.norm == 1 and (spec.kind.startswith("apgd") or spec.cascade):  # APGD, and rows cascaded after it
        d["l1_revision"] = L1_APGD_REVISION
    if not defence.stochastic:
        d["eot"] = 1
    if context:
        d.update(json.loads(json.dumps(context)))
    return d


def suite_context(defence, threat: Threat, attacks: Sequence, applies: Optional[Callable]) -> dict:
    """Per attack name, what its row depends on besides its own settings (see :func:`effective_settings`):
    ``after`` = the attacks run before a cascaded one at this (defence, threat), in order;
    ``warm_settings`` = the full settings of a warm start's source."""
    applicable = [a for a in attacks if applies is None or applies(defence, a, threat)]
    ctx: dict = {}
    for i, a in enumerate(applicable):
        c = {}
        if a.cascade:
            c["after"] = [b.name for b in applicable[:i]]
        if a.warm_from is not None:
            src = next((b for b in applicable[:i] if b.name == a.warm_from), None)
            if src is None:
                raise ValueError(f"attack {a.name!r} starts from {a.warm_from!r}, which must be an earlier attack of the "
                                 f"suite that runs against {defence.name} at {threat}")
            c["warm_settings"] = effective_settings(src, threat, defence, ctx[src.name])
        ctx[a.name] = c
    return ctx


def make_row(defence, spec, threat: Threat, clean: torch.Tensor, flags: torch.Tensor, seconds: float, seed: int,
             context: Optional[dict] = None) -> dict:
    """One ``results.json`` row.

    Args:
        clean: ``(n,)`` bool, the defence's clean prediction was right.
        flags: ``(n,)`` bool, the image survived this attack (and, for a cascaded one, every earlier one).
    """
    from .. import __version__

    k, n = int(flags.sum()), int(flags.shape[0])
    lo, hi = wilson(k, n)
    return {
        "key": row_key(defence.name, spec.name, threat), "defence": defence.name, **defence.identity(),
        "attack": spec.name, "role": spec.role.value, "cascade": bool(spec.cascade),
        "norm": str(threat.norm), "eps": threat.eps, "n": n, "clean_acc": float(clean.double().mean()),
        "robust_acc": k / n, "ci95": [lo, hi], "attack_settings": effective_settings(spec, threat, defence, context),
        "models": defence.model_fingerprints(), "defence_fingerprint": defence.fingerprint(),
        "seed": seed, "version": __version__, "seconds": round(seconds, 2),
        "survived": [int(f) for f in flags.tolist()],
    }


def read_results(path) -> dict:
    """A ``results.json`` in the current format; a clear error for anything else."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise FileNotFoundError(f"no results file at {p}")
    try:
        res = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(res, dict) or "rows" not in res or "meta" not in res:
        raise ValueError(f"{p} is not a pursamere results file (no 'meta' and 'rows')")
    if res["meta"].get("schema") != SCHEMA:
        raise ValueError(f"{p} uses results format {res['meta'].get('schema', 1)}, this pursamere reads {SCHEMA}: "
                         "run `python scripts/migrate_results.py FOLDER` once")
    return res


def load_done(path: Path, n: int, data: Optional[str] = None) -> dict:
    """Rows of a previous (possibly interrupted) run at ``path`` on the same images, by key.

    A file made on other images (``data``: the fingerprint of the images and labels) or in
    another results format is refused with an error: resuming into it would overwrite it.
    """
    if not Path(path).exists():
        return {}
    old = read_results(path)
    if data is not None and old["meta"].get("data_fingerprint") != data:
        raise ValueError(f"{path} holds results on other images (another preset, subset or n): "
                         "choose another output folder")
    return {r["key"]: r for r in old.get("rows", []) if r.get("n") == n}


def load_plans(path: Path) -> dict:
    """The attack plans ``{(defence, norm, eps): [attack names]}`` recorded in a previous run's worst cases at
    ``path`` (none when there is no file)."""
    if not Path(path).exists():
        return {}
    return {(w["defence"], w["norm"], w["eps"]): w["planned"] for w in read_results(path).get("worst_case", [])
            if "planned" in w}


def reusable(done: dict, key: str, spec, threat: Threat, defence, seed: int, context: Optional[dict] = None) -> bool:
    """A finished row can be reused only if the attack (with its ``context``), the defence (weights and
    settings) and seed match."""
    r = done.get(key)
    return (r is not None and r["attack_settings"] == effective_settings(spec, threat, defence, context)
            and r.get("defence_fingerprint") == defence.fingerprint() and r.get("seed") == seed)


def pending(defences, attacks, threats, applies: Optional[Callable], done: dict, seed: int, rows: list):
    """Yield ``(defence, threat, attack, context)`` still to run, in table order; finished rows that can be
    reused (:func:`reusable`) are appended to ``rows`` instead.

    A cascaded row depends on every row before it in its (defence, threat) group, so it is
    reused only when all of those were reused too.
    """
    for d in defences:
        for threat in threats:
            group_reused = True
            ctx = suite_context(d, threat, attacks, applies)
            for spec in attacks:
                if applies is not None and not applies(d, spec, threat):
                    continue
                key = row_key(d.name, spec.name, threat)
                if reusable(done, key, spec, threat, d, seed, ctx[spec.name]) and (group_reused or not spec.cascade):
                    rows.append(done[key])
                    continue
                group_reused = False
                yield d, threat, spec, ctx[spec.name]


def _same_threat(r: dict, norm, eps) -> bool:
    return r["norm"] == str(norm) and r["eps"] == eps


def cumulative(rows: Iterable[dict], defence: str, threat: Threat, clean: torch.Tensor) -> torch.Tensor:
    """Images that survived every row of this (defence, threat) so far (the running worst case)."""
    alive = clean.clone()
    for r in rows:
        if r["defence"] == defence and _same_threat(r, threat.norm, threat.eps):
            alive &= torch.tensor(r["survived"], dtype=torch.bool, device=clean.device)
    return alive


def robust_flags(rows: Iterable[dict], defence: str, norm=None, eps=None) -> list[bool]:
    """Per image: robust to EVERY attack run against ``defence`` (at the given threat, when given)."""
    sel = [r for r in rows if r["defence"] == defence and (norm is None or r["norm"] == str(norm))
           and (eps is None or r["eps"] == eps)]
    if not sel:
        raise ValueError(f"no rows for defence {defence!r}" + (f" at ℓ{norm} ε={eps}" if norm is not None else ""))
    return [all(r["survived"][i] for r in sel) for i in range(sel[0]["n"])]


def worst_case(rows: Sequence[dict], planned: Optional[dict] = None) -> list[dict]:
    """Per (defence, threat): an image is robust only if it survived EVERY attack run there.

    ``planned``: ``{(defence, norm, eps): [attack names]}`` — a group that ran fewer attacks than
    planned (a run stopped by its time budget) is marked ``complete: False``: its number is not a
    worst case over the suite and tables do not present it as one.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["defence"], r["norm"], r["eps"]), []).append(r)
    out = []
    for (d, norm, eps), rs in groups.items():
        flags = [int(all(r["survived"][i] for r in rs)) for i in range(rs[0]["n"])]
        k, n = sum(flags), len(flags)
        first = rs[0]
        out.append({"defence": d, "family": first["family"], "classifier": first["classifier"],
                    "purifier": first["purifier"], "deterministic": first["deterministic"],
                    "norm": norm, "eps": eps, "n": n, "clean_acc": first["clean_acc"],
                    "robust_acc": k / n, "ci95": list(wilson(k, n)), "survived": flags,
                    "attacks": [r["attack"] for r in rs], "roles": {r["attack"]: r["role"] for r in rs},
                    "per_attack": {r["attack"]: r["robust_acc"] for r in rs},
                    "cascaded": [r["attack"] for r in rs if r.get("cascade")]})
        if planned is not None:
            want = planned.get((d, norm, eps), [])
            out[-1]["planned"] = want
            out[-1]["complete"] = set(want) <= {r["attack"] for r in rs}
    return out


def sign_test(b: int, c: int) -> float:
    """Two-sided exact binomial (sign / exact McNemar) test of b versus c discordant images."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Compare two defences image by image on the same images: how many each keeps that the other
    loses, and the exact sign test on those discordant images."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same images: {len(a)} versus {len(b)} outcomes")
    keeps = sum(bool(x) and not bool(y) for x, y in zip(a, b))
    loses = sum(bool(y) and not bool(x) for x, y in zip(a, b))
    return {"n": len(a), "a_robust": int(sum(map(bool, a))), "b_robust": int(sum(map(bool, b))),
            "a_keeps_b_loses": keeps, "b_keeps_a_loses": loses, "p": sign_test(keeps, loses)}


def over_longer_suites(results: dict, rungs: Sequence[tuple]) -> dict:
    """``results`` with each row a longer suite checked shown at its worst case over every suite run.

    ``rungs``: the table's longer suites (``--then-steps``) as ``(steps, results)``, shortest first, on the same
    images; each one's rows hold every attack of the suites before it. A row whose own suite has finished gets, per
    image, robust only where every suite up to the longest that holds it kept it (the flags are combined, so no
    image a shorter suite broke comes back), the longest suite's attacks and ``complete`` (so a row whose longest
    suite is still running is an upper bound), and ``longer_suites``: per suite, the images the suites before it
    left (``of``), how many it broke, and how many of its own attacks have run. The chain stops at the first suite
    that lacks the row (a later one's counts would mix two suites). A row whose own suite has not finished is left
    as it is (its longer suites start after it). The longer suites' rows of the checked rows join ``rows``, so
    what is computed from the rows (paired comparisons) agrees. Refused when a suite ran on other images."""
    fp = results["meta"].get("data_fingerprint")
    for steps, r in rungs:
        if r["meta"].get("data_fingerprint") != fp:
            raise ValueError(f"the {steps}-step suite ran on other images than the table")
    out, rows = [], list(results.get("rows", []))
    seen = {r["key"] for r in rows}
    for w in results["worst_case"]:
        group = (w["defence"], str(w["norm"]), w["eps"])
        flags, last, checks = list(w["survived"]), w, []
        for steps, r in (rungs if w.get("complete", True) else ()):
            hit = next((x for x in r["worst_case"] if (x["defence"], str(x["norm"]), x["eps"]) == group), None)
            if hit is None:
                break
            if len(hit["survived"]) != len(flags):
                raise ValueError(f"{w['defence']}: its {steps}-step suite ran on {len(hit['survived'])} images, the table "
                                 f"on {len(flags)}")
            now = [a and b for a, b in zip(flags, hit["survived"])]
            checks.append({"steps": steps, "of": sum(flags), "broke": sum(flags) - sum(now),
                           "attacks": len(hit["attacks"]) - len(last["attacks"]),
                           "planned": len(hit.get("planned", hit["attacks"])) - len(last.get("planned", last["attacks"])),
                           "complete": hit.get("complete", True)})
            flags, last = now, hit
            for row in r.get("rows", []):  # the longer suite's own attacks on this row, for comparisons made from the rows
                if row["key"] not in seen and (row["defence"], str(row["norm"]), row["eps"]) == group:
                    rows.append(row)
                    seen.add(row["key"])
        if not checks:
            out.append(dict(w))
            continue
        k, n = sum(flags), len(flags)
        keep = {key: last[key] for key in ("attacks", "roles", "per_attack", "cascaded", "planned", "complete") if key in last}
        out.append({**w, **keep, "survived": flags, "robust_acc": k / n, "ci95": list(wilson(k, n)), "longer_suites": checks})
    return {**results, "worst_case": out, "rows": rows} if "rows" in results else {**results, "worst_case": out}


def convergence(w: dict) -> Optional[tuple]:
    """Chapter 7's bar, on a doubling of the steps, for a row of :func:`over_longer_suites`: ``(verdict, steps)``
    from the longest suite that has decided it — one that broke 1 image in 100 of the table's or more (not
    converged, ``False``; a suite still running counts too: its count can only grow) or a finished one that broke
    fewer (``True``). None while no suite has decided."""
    n, verdict = len(w["survived"]), None
    for c in w.get("longer_suites") or []:
        if 100 * c["broke"] >= n:
            verdict = (False, c["steps"])
        elif c["complete"]:
            verdict = (True, c["steps"])
    return verdict


def redraw_control(first: dict, again: dict, longer: Optional[tuple] = None) -> list[dict]:
    """For each group of ``again`` — the same suite as ``first``'s, run from another seed (``ensemble --seed``) on the
    same images — how much of what a longer suite breaks a second draw of the same suite breaks as well.

    Against a stochastic purifier every attack draws fresh noise, so a longer suite (``longer``: ``(steps,
    results)``, a ``--then-steps`` rung of ``first``) breaks images by its strength and by its new draws together;
    the same suite again from another seed has only the new draws (and new random starts). Per group, on the images
    ``first`` left (``of``): how many the second draw broke (``again_broke``), how many the longer suite broke
    (``longer_broke``; None without it or while it is unfinished), the images only one of the two broke and the
    exact sign test on them, and both runs' worst cases on all images with the worst case over the two. Only
    groups both runs finished are compared; a group ``first`` lacks is refused."""
    if first["meta"].get("data_fingerprint") != again["meta"].get("data_fingerprint"):
        raise ValueError("the second run was made on other images than the first")
    if first["meta"].get("models") != again["meta"].get("models"):
        raise ValueError("the second run used other models than the first (their fingerprints differ)")
    for res, which in ((first, "first"), (again, "second")):  # a merged or resumed file could hold rows of two seeds
        seeds = {r.get("seed", 0) for r in res.get("rows", [])} | {res["meta"].get("seed", 0)}
        if len(seeds) > 1:
            raise ValueError(f"the {which} run holds rows of several seeds {sorted(seeds)}: compare runs of one seed each")
    if first["meta"].get("seed", 0) == again["meta"].get("seed", 0):
        raise ValueError(f"both runs have seed {again['meta'].get('seed', 0)}: run the second with ensemble --seed")
    checked = over_longer_suites(first, [longer]) if longer else first
    own = {(w["defence"], str(w["norm"]), w["eps"]): w for w in first["worst_case"]}
    over = {(w["defence"], str(w["norm"]), w["eps"]): w for w in checked["worst_case"]}
    out = []
    for w in again["worst_case"]:
        group = (w["defence"], str(w["norm"]), w["eps"])
        if group not in own:
            raise ValueError(f"{w['defence']} at {norm_label(w['norm'], w['eps'])}: the first run has no such row")
        a = own[group]
        if not (w.get("complete", True) and a.get("complete", True)):
            continue
        if list(a.get("attacks", [])) != list(w.get("attacks", [])):
            raise ValueError(f"{w['defence']}: the two runs ran other suites ({a.get('attacks')} vs {w.get('attacks')})")
        left, kept = [bool(v) for v in a["survived"]], [bool(v) for v in w["survived"]]
        n = len(left)
        entry = {"defence": w["defence"], "norm": w["norm"], "eps": w["eps"], "n": n,
                 "seeds": [first["meta"].get("seed", 0), again["meta"].get("seed", 0)],
                 "first_robust": sum(left), "again_robust": sum(kept),
                 "both_robust": sum(x and y for x, y in zip(left, kept)), "of": sum(left),
                 "again_broke": sum(x and not y for x, y in zip(left, kept)), "longer_steps": None, "longer_broke": None}
        suites = over[group].get("longer_suites") or []
        if longer and suites and suites[0]["complete"]:
            after = over[group]["survived"]
            # on the images the first run left: the second draw keeps what the longer suite broke, and the reverse
            cmp = paired([k for k, x in zip(kept, left) if x], [bool(z) for z, x in zip(after, left) if x])
            entry.update(longer_steps=suites[0]["steps"], longer_broke=suites[0]["broke"],
                         only_longer=cmp["a_keeps_b_loses"], only_again=cmp["b_keeps_a_loses"], p=cmp["p"])
        out.append(entry)
    return out


def norm_label(norm, eps: Optional[float] = None) -> str:
    """``ℓ∞``, ``ℓ2`` … (with ``ε=…`` when given)."""
    t = f"ℓ{'∞' if str(norm) == 'inf' else norm}"
    return t if eps is None else f"{t} ε={eps:.4g}"


def render_table(results: dict, title: str = "") -> str:
    """Markdown: one line per defence and threat; clean, each attack, and the worst case (bold)."""
    rows, wc = results["rows"], results.get("worst_case") or worst_case(results["rows"])
    order = results["meta"].get("attack_order") or []
    seen = list(dict.fromkeys(r["attack"] for r in rows))
    attacks = [a for a in order if a in seen] + [a for a in seen if a not in order]
    cascaded = {r["attack"] for r in rows if r.get("cascade")}
    note = (" † = run only on the images that survived every attack before it (the columns to its left, "
            "AutoAttack's cascade): its number is the cumulative accuracy after it." if cascaded else "")
    no_purifier = {f.value for f in Family if not f.purifies}
    plain = [a for a in attacks if any(r["attack"] == a and r.get("role") in ("bpda", "bpda-long")
                                       and r.get("family") in no_purifier for r in rows)]
    if plain:  # BPDA through the identity is the classifier's own gradient
        note += (f" For rows without a purifier, {', '.join(plain)} {'is' if len(plain) == 1 else 'are'} plain PGD "
                 "(BPDA's identity backward pass through no purifier is the classifier's own gradient).")
    lines = [f"## {title}" if title else "", "",
             f"n = {results['meta']['n']} images; robust accuracy in % (95% Wilson interval in the JSON); "
             "worst case = robust to every attack in the row." + note, "",
             "| defence | threat | clean | " + " | ".join(a + (" †" if a in cascaded else "") for a in attacks)
             + " | **worst case** |",
             "|---|---|---|" + "---|" * len(attacks) + "---|"]
    for w in wc:
        cells = [f"{100 * w['per_attack'][a]:.1f}" if a in w["per_attack"] else "–" for a in attacks]
        worst = (f"**{100 * w['robust_acc']:.1f}** [{100 * w['ci95'][0]:.0f}–{100 * w['ci95'][1]:.0f}]"
                 if w.get("complete", True) else
                 f"incomplete: {len(w['attacks'])} of {len(w['planned'])} attacks ({100 * w['robust_acc']:.1f})")
        lines.append(f"| {w['defence']} | {norm_label(w['norm'], w['eps'])} | {100 * w['clean_acc']:.1f} | "
                     + " | ".join(cells) + f" | {worst} |")
    missing = results.get("not_run") or []
    if missing:
        lines += ["", "**Not run yet** (planned, no attack finished): "
                  + "; ".join(f"{m['defence']} at {norm_label(m['norm'], m['eps'])}" for m in missing) + "."]
    return "\n".join(lines).lstrip() + "\n"


def merge_results(paths: Sequence, out_dir, title: str = "", order: Sequence[str] = (),
                  expected: Sequence = (), replan: Optional[Callable] = None) -> dict:
    """Join several ``results.json`` made on the same images (for example runs split by defence).

    ``order``: defence names in the order the tables should list them (others follow, as found).
    ``expected``: the table's intended groups ``(defence, norm, eps)``; those without any finished row
    are listed under ``"not_run"`` (and in ``table.md``), so a table never loses a row silently.
    ``replan(group, recorded_plan) -> plan``: the plan the table holds each group to (default: the one its part
    recorded), so a group recorded before its suite gained an attack counts as incomplete.
    Writes ``results.json`` and ``table.md`` into ``out_dir``.
    """
    from ..io import atomic_write_json, atomic_write_text

    parts = [read_results(p) for p in paths]
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
    # the parts' plans travel: a group one part left unfinished stays marked incomplete in the merged table
    planned = {(w["defence"], w["norm"], w["eps"]): w["planned"] for p in parts for w in p.get("worst_case", [])
               if "planned" in w}
    unplanned = sorted({(r["defence"], r["norm"], r["eps"]) for r in rows} - set(planned), key=str) if planned else []
    if unplanned:  # without its plan a group would count as complete, whatever ran
        d, nm, e = unplanned[0]
        raise ValueError(f"cannot tell whether {d} at {norm_label(nm, e)} ran its whole suite: no part records its plan "
                         f"({len(unplanned)} such groups); re-run its job with --resume")
    if replan is not None:
        planned = {g: list(replan(g, want)) for g, want in planned.items()}
    res = {"meta": dict(parts[0]["meta"], merged_from=[str(p) for p in paths]), "rows": rows,
           "worst_case": worst_case(rows, planned or None)}
    have = {(r["defence"], str(r["norm"]), float(r["eps"])) for r in rows}
    res["not_run"] = [{"defence": d, "norm": str(nm), "eps": float(e)} for d, nm, e in expected
                      if (d, str(nm), float(e)) not in have]
    out = Path(out_dir)
    atomic_write_json(out / "results.json", res)
    atomic_write_text(out / "table.md", render_table(res, title))
    return res
