"""Which extra attack breaks the images a recorded ladder point left robust? (book chapter 7)

Each candidate attack is appended, cascaded, to the standard suite of one recorded point of the
convergence ladder (``pursamere study convergence``) and run against ERE descent in a copy of that
point's folder: the recorded rows are reused, so the candidate runs only on the point's survivors,
and each candidate starts from the same survivors (one folder each). The summary lists the images
each candidate broke.

    python scripts/probe_survivors.py --point book/data/digits-convergence/80x1 --out results/digits/probe-80x1

This is how the suite's last attack (targeted APGD on the exact gradient at APGD's step count) was
chosen: on the 17 images the 80-step suite left, it broke 2, the same 2 at 160 steps, while the
same attack over 9 target classes at 40 steps broke 1 and APGD-CE / APGD-DLR on the exact gradient
from APGD-CE's end points broke none (``book/data/digits-convergence/probe-80x1.json``, run when that
point held the eleven attacks it recorded then; the folder now holds the twelfth, so a re-run probes
its 15 survivors).

The candidate "the exact tail" asks whether a cheap tail of longer exact-gradient attacks can stand in for the
doubled point: targeted APGD on the exact gradient at twice the point's steps, from its own random starts ("-tail"
salts them), and APGD-CE on the exact gradient at the point's steps from the point's APGD-CE end points (warm, so
it draws no start: the same attack as "warm exact APGD-CE, full steps"). The 160-step suite broke images 7 and 42
of the 80-step point's survivors first with targeted APGD at 160 steps and with APGD-CE on the exact gradient from
its 160-step APGD-CE's end points; the tail broke neither, nor any other of the 15
(``book/data/digits-convergence/probe-80x1-tail.json``, 1,233 CPU-s).

The candidate "the suite doubled" is the whole standard suite at twice the point's steps and restarts
(``Budget.doubled``, the ``--strong`` check), every attack cascaded after the point's suite: what a reader's
longer run of the same attacks would still break among the images the point calls robust. On a point whose
doubling breaks none of its survivors, that budget has converged by chapter 7's rule.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from pursamere.evaluation.suite import AttackSpec, standard_suite
from pursamere.experiments import protocols
from pursamere.experiments.engine import Options, run
from pursamere.experiments.presets import get_preset
from pursamere.io import atomic_write_json


def candidates(steps: int, restarts: int = 1) -> dict:
    """The attacks tried on the survivors of the ``steps`` × ``restarts`` point, each a tuple of attacks run in
    turn (names salt their random starts)."""
    half = max(1, steps // 2)
    warm = f"APGD-CE{steps}" + (f"×{restarts}" if restarts > 1 else "")  # the suite's APGD-CE at that point
    doubled = protocols.budget_at(steps, restarts).doubled()
    single = {
        "warm exact APGD-CE, full steps": AttackSpec(f"{warm}→exact-APGD-CE{steps}", gradient="exact", kind="apgd-ce",
                                                     steps=steps, warm_from=warm, cascade=True),
        "warm exact APGD-DLR": AttackSpec(f"{warm}→exact-APGD-DLR{half}", gradient="exact", kind="apgd-dlr",
                                          steps=half, warm_from=warm, cascade=True),
        "exact APGD-T, full steps": AttackSpec(f"exact-APGD-T{steps}", gradient="exact", kind="apgd-t", steps=steps,
                                               cascade=True),
        "exact APGD-T, 9 targets": AttackSpec(f"exact-APGD-T{half}-9cls", gradient="exact", kind="apgd-t", steps=half,
                                              targets=9, cascade=True),
        "exact APGD-T, twice the steps": AttackSpec(f"exact-APGD-T{2 * steps}", gradient="exact", kind="apgd-t",
                                                    steps=2 * steps, cascade=True),
        # Square at AutoAttack's standard query count (the suite's 5N queries compress its schedule of window sizes)
        "Square, 5000 queries": AttackSpec("Square5000", gradient="none", kind="square", queries=5000, cascade=True),
        "Square, 10000 queries": AttackSpec("Square10000", gradient="none", kind="square", queries=10000, cascade=True),
    }
    out = {name: (spec,) for name, spec in single.items()}
    # every attack cascaded, also the two that run on every image in the suite: only the point's survivors matter
    out["the suite doubled"] = tuple(dataclasses.replace(a, cascade=True) for a in standard_suite(doubled))
    # the doubled point's longer exact-gradient attacks, appended cheaply: targeted APGD at twice the steps from its
    # own starts ("-tail" salts them), APGD-CE on the exact gradient from this point's APGD-CE (warm: no start)
    out["the exact tail"] = (
        AttackSpec(f"{warm}→exact-APGD-CE{steps}" + (f"×{restarts}" if restarts > 1 else "") + "-tail", gradient="exact",
                   kind="apgd-ce", steps=steps, restarts=restarts, warm_from=warm, cascade=True),
        AttackSpec(f"exact-APGD-T{2 * steps}-tail", gradient="exact", kind="apgd-t", steps=2 * steps, cascade=True))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--point", required=True, help="a recorded ladder point's folder, e.g. book/data/digits-convergence/80x1")
    ap.add_argument("--out", required=True, help="where the candidates' folders and probe.json go")
    ap.add_argument("--only", default="", help="semicolon-separated candidate names (default: all)")
    args = ap.parse_args(argv)
    point, out = Path(args.point), Path(args.out)
    try:
        recorded = json.loads((point / "results.json").read_text())
        meta = recorded["meta"]
        steps, restarts = meta["plan"]["steps"], meta["plan"]["restarts"]
        seed, n, eps, order = meta["plan"].get("seed", 0), meta["n"], meta["threats"]["inf"], meta["attack_order"]
        kept = next(w["survived"] for w in recorded["worst_case"] if w["defence"].startswith("ERE descent"))
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps {steps!r}: the probe needs a point of at least 2 steps")
        preset = get_preset(meta["preset"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        print(f"probe_survivors: {point} is not a recorded convergence point ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    cands = candidates(steps, restarts)
    chosen = [c.strip() for c in args.only.split(";") if c.strip()] or list(cands)
    unknown = [c for c in chosen if c not in cands]
    if unknown:
        print(f"probe_survivors: unknown candidate(s) {unknown}; choose from {list(cands)}", file=sys.stderr)
        return 2
    base = protocols.convergence(preset, steps, restarts, n=n, eps=eps, seed=seed)
    # the suite as the point recorded it (the standard suite may have grown since): only the candidate runs
    base = dataclasses.replace(base, attacks=tuple(a for a in base.attacks if a.name in order))
    ere = tuple(d for d in base.defences if d.label.startswith("ERE"))
    report = {"point": str(point), "steps": steps, "restarts": restarts, "seed": seed, "candidates": {}}
    try:  # candidates probed earlier into the same --out on the same point are kept beside the new ones
        earlier = json.loads((out / "probe.json").read_text())
        if all(earlier.get(k) == report[k] for k in ("point", "steps", "restarts", "seed")):
            report["candidates"] = earlier["candidates"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    for name in chosen:  # refused before any candidate runs: its recorded row would be taken for the candidate's
        clash = sorted({a.name for a in cands[name]} & set(order))
        if clash:
            print(f"probe_survivors: {name}: attack names {clash} are already the point's", file=sys.stderr)
            return 2
    for name in chosen:
        specs = cands[name]
        folder = out / name.replace(" ", "-").replace(",", "")
        try:
            if not folder.exists():
                shutil.copytree(point, folder)
                (folder / "table.md").unlink(missing_ok=True)
            label = specs[0].name if len(specs) == 1 else f"{name} ({specs[0].name} … {specs[-1].name})"
            protocol = dataclasses.replace(base, defences=ere, attacks=base.attacks + specs,
                                           title=f"{base.title}, probed with {label}")
            t = time.perf_counter()
            res = run(preset, protocol, folder, Options(weights="shipped", resume=True, progress=False))
        except (OSError, ValueError) as e:
            print(f"probe_survivors: {name}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        rows = {r["attack"]: r for r in res.results["rows"] if r["defence"] == ere[0].label}
        before = [all(rows[a.name]["survived"][i] for a in base.attacks) for i in range(n)]
        if before != list(kept):  # the point's rows were recomputed, not reused: other models or images
            print(f"probe_survivors: {name}: the recorded rows of {point} were not reused (the suite left "
                  f"{sum(before)} images here, {sum(kept)} there): were they made with other weights?", file=sys.stderr)
            return 1
        after = [all(rows[a.name]["survived"][i] for a in specs) for i in range(n)]
        entry = {"attack": specs[0].name if len(specs) == 1 else [a.name for a in specs],
                 "survivors_before": sum(before), "broke": [i for i in range(n) if before[i] and not after[i]],
                 "seconds": round(sum(rows[a.name]["seconds"] for a in specs), 1),
                 "wall_s": round(time.perf_counter() - t, 1)}
        if len(specs) > 1:  # which attack of the group broke each image first
            entry["broke_by"] = {str(i): next(a.name for a in specs if not rows[a.name]["survived"][i])
                                 for i in entry["broke"]}
        report["candidates"][name] = entry
        print(name, report["candidates"][name], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "probe.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
