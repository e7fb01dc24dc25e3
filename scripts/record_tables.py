"""Join the results folders of split evaluation jobs into the book's recorded tables.

    python scripts/record_tables.py results/whole            # → book/data/cifar10-cpu-table(-40, -80, -160), cifar10-cpu-rest(-40),
                                                             #   digits-whole-test(-160, -320), …
    python scripts/record_tables.py results/whole --restore  # the reverse: the recorded rows back into their job folders
                                                             # (recording refuses a root that lacks recorded rows)
    python scripts/record_tables.py --readme README.md       # the README's marked tables rewritten from book/data
                                                             # (also after a recording: ... results/whole --readme README.md)
    python scripts/record_tables.py results/whole/JOB --finished  # exit 0 if that job has finished, 3 if not
    python scripts/record_tables.py results/whole --from-device DIR  # first take in a GPU call's folders (its
                                                             # results.tar.gz unpacked into DIR), their new rows marked 'gpu'

The jobs of ``scripts/device_evaluate.sh`` (and their CPU continuations with ``--resume``) each wrote one
results folder per defence group (and per ε on digits), all on the same images. This script merges
them with :func:`pursamere.evaluation.results.merge_results` (refused when the images differ, or when
a row appears twice) in the tables' defence order, and writes where each row was computed
(``provenance.json``: the GPU logs' device line, each job's folder and which job made each row).

Results folders live on the machine that ran them; the book's tables are what is committed. ``--restore``
writes each recorded row back into its job's folder under ROOT (``job_of`` in ``provenance.json``), so a
later session, on a fresh machine, continues an unfinished job with the same command and ``--resume``:
finished rows are reused, only the missing attacks run. It never overwrites a folder that holds results.

Rows in progress are not lost either: recording also keeps, for every job with an unfinished group, its rows'
finished batches and the end points its later rows start from, as safetensors files (no pickle) under
``book/data/in-progress/<job>/``; ``--restore`` writes them back (never over a file the job folder holds), so the
resumed job goes on after the last batch the earlier machine saved.
The obfuscation checks likewise: a job still inside them keeps what it finished under
``book/data/in-progress/<job>/checks``, a finished job's are in its table's ``checks.json``, and ``--restore`` writes
both back into the job folder, so a resumed run reuses them instead of running them again.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pursamere.evaluation.results import merge_results, norm_label, read_results
from pursamere.io import atomic_write_json, atomic_write_text

TABLES = {
    "cifar10-cpu-table": ("cifar-", "CIFAR-10 (cifar10-cpu, shipped CPU-trained models): the key rows, worst case per image"),
    "cifar10-cpu-rest": ("cifar-rest-", "CIFAR-10 (cifar10-cpu): the other rows, on the first 128 of the same images"),
    "cifar10-cpu-eq17": ("cifar-eq17-", "CIFAR-10 (cifar10-cpu): the purifiers in front of the eq.-17 classifier, on the same images"),
    "cifar10-cpu-table-40": ("cifar40-", "CIFAR-10 (cifar10-cpu) at ℓ∞ 8/255: the key rows' suite at 20 steps, then at 40 "
                                         "steps on the images it left (--then-steps 40)"),
    "cifar10-cpu-table-80": ("cifar80-", "CIFAR-10 (cifar10-cpu) at ℓ∞ 8/255: the key rows' suite at 20 steps, then at 40 "
                                         "steps on the images it left, then at 80 on what both left (--then-steps 40,80)"),
    "cifar10-cpu-table-160": ("cifar160-", "CIFAR-10 (cifar10-cpu) at ℓ∞ 8/255: the key rows' suite at 20 steps, then at 40, "
                                           "80 and 160 steps, each on what all before it left (--then-steps 40,80,160)"),
    "cifar10-cpu-rest-40": ("cifar40-rest-", "CIFAR-10 (cifar10-cpu) at ℓ∞ 8/255: PurSAMERE at ε_pur 8 and 16/255 (the other "
                                              "rows), the suite at 20 steps, then at 40 steps on the images it left "
                                              "(--then-steps 40)"),
    "digits-whole-test": ("digits-", "digits, every table image (n = 476), the ensemble at 80 steps × 1 restart"),
    "digits-whole-test-160": ("digits160-", "digits, every table image (n = 476) at ℓ∞ 0.15 and 0.2, and PurSAMERE at 0.1: "
                                            "the ensemble at 80 steps, then at 160 steps on the images it left (--then-steps 160)"),
    "digits-whole-test-320": ("digits320-", "digits, every table image (n = 476), ERE descent at ℓ∞ 0.2: the ensemble at 80 "
                                            "steps, then at 160 and at 320 steps, each on what all before it left "
                                            "(--then-steps 160,320)"),
}

# the CIFAR-10 key rows' longer suites: each table's --then-steps (its jobs start from a copy of the rung before's)
CIFAR_RUNGS = {"cifar10-cpu-table-40": (40,), "cifar10-cpu-table-80": (40, 80), "cifar10-cpu-table-160": (40, 80, 160)}


def _protocol(table: str) -> tuple:
    """The protocol a table was recorded with and the defences it keeps."""
    from pursamere.experiments import cifar10_cpu, protocols
    from pursamere.experiments.presets import CIFAR10_CPU, DIGITS

    if table in ("digits-whole-test", "digits-whole-test-160"):
        # chapter 7: 80 steps is not flat against the purifier; 160 after it, at 0.2 and at 0.15 (where the 80-step
        # suite's last attack still broke 9 of ERE descent's 256 survivors); at 0.1 only for PurSAMERE (:data:`ONLY_AT`)
        longer = table.endswith("-160")
        plan = protocols.EnsemblePlan(n_test=476, eps=(0.1, 0.15, 0.2),
                                      budget=protocols.budget_at(80, 1), then=protocols.budget_at(160, 1) if longer else None)
        pr = protocols.ensemble(DIGITS, plan)
        return pr, pr.defences
    if table == "digits-whole-test-320":
        # ERE descent at ℓ∞ 0.2 alone (2026-12-05): its 160-step suite broke 10 of the 126 images the 80-step suite
        # left, over the 1-in-100 bar (4.76 of 476), so it gets the next doubling, on what both suites left
        plan = protocols.EnsemblePlan(n_test=476, eps=(0.2,), budget=protocols.budget_at(80, 1),
                                      then=(protocols.budget_at(160, 1), protocols.budget_at(320, 1)))
        pr = protocols.ensemble(DIGITS, plan)
        return pr, [d for d in pr.defences if d.label.startswith("ERE descent")]
    part = "rest" if table == "cifar10-cpu-rest" else "key"
    if table == "cifar10-cpu-rest-40":  # the other rows' PurSAMERE at ε_pur 8 and 16/255: 20 steps, then 40 on what is left
        pr = cifar10_cpu.table_protocol(CIFAR10_CPU, "rest", have=("plain", "adversarial"), then=protocols.budget_at(40, 1))
        return pr, [d for d in pr.defences if d.label.startswith(ONLY_AT[table][CIFAR_LINF])]
    if table in CIFAR_RUNGS:  # the key rows' convergence checks: 20 steps, then 40 on what is left, then 80 on what
        rungs = CIFAR_RUNGS[table]  # both left, then 160 on what all three left (each table one rung longer)
        then = tuple(protocols.budget_at(r, 1) for r in rungs)
        pr = cifar10_cpu.table_protocol(CIFAR10_CPU, "key", have=("plain", "adversarial"),
                                        then=then[0] if len(then) == 1 else then)
        return pr, pr.defences
    if table == "cifar10-cpu-eq17":  # the paper's pairing: the key table's two Algorithm-1 rows, eq.-17 classifier
        pr = cifar10_cpu.table_protocol(CIFAR10_CPU, "key", have=("plain", "adversarial", "eq17"))
        keep = [d for d in pr.defences if d.classifier == "eq17" and d.label.startswith(("PurSAMERE", "ERE descent"))]
    else:  # the tables as recorded: purifiers in front of the clean classifier (before the eq.-17 one shipped)
        pr = cifar10_cpu.table_protocol(CIFAR10_CPU, part, have=("plain", "adversarial"))
        keep = pr.defences
    return pr, keep


# a table's threats that only some of its defences meet (table → eps → the labels' beginnings). At digits ℓ∞ 0.1 the
# 80-step suite's last attack (targeted APGD on the exact gradient at 80 steps, the doubled check) broke 1 of ERE
# descent's 357 survivors and 1 of the stack's 362, under the 1-in-100 bar (4.76 of 476), but 7 of PurSAMERE's 226
# (2026-12-04): so only PurSAMERE runs the 160-step suite there.
# The other CIFAR-10 rows' 40-step check runs the two PurSAMERE rows only (2026-12-04): at 20 steps ε_pur = 16/255 kept
# the most of any purifier (18 of 128), and the 20-step suite alone had not settled the 12/255 row (its 40-step
# check broke 3 of the 13 images left); 8/255 beside it on 5 images. The baselines there (ADP, fixed-seed, the
# stack) are not re-checked.
CIFAR_LINF = 8 / 255
ONLY_AT = {"digits-whole-test-160": {0.1: ("PurSAMERE",)},
           "cifar10-cpu-rest-40": {CIFAR_LINF: ("PurSAMERE",)}}


def expected_groups(table: str, book: Path | None = None) -> list:
    """The (defence, norm, eps) groups a table is meant to hold: its protocol's defences × the threats each meets
    (:data:`ONLY_AT`: a threat only some defences meet), less, with ``book``, a CIFAR-10 rung's groups that a
    shorter suite recorded there has settled (:func:`settled_before`)."""
    pr, keep = _protocol(table)
    only = ONLY_AT.get(table, {})
    done = settled_before(table, book) if book is not None else set()
    return [(d.label, str(t.norm), t.eps) for d in keep for t in pr.threats
            if (d.attacks is None or d.attacks.get(str(t.norm)))
            and (t.eps not in only or d.label.startswith(only[t.eps]))
            and (d.label, str(t.norm), float(t.eps)) not in done]


def settled_before(table: str, book: Path) -> set:
    """The groups ``(defence, norm, eps)`` a CIFAR-10 rung table (:data:`CIFAR_RUNGS`) will never hold, as recorded
    under ``book``: the 20-step table's rows that the shorter rungs have settled — nothing left to break, or a
    finished longer suite that broke under 1 image in 100 (chapter 7's bar, :func:`convergence`). Their jobs do not
    run them, so the table does not list them as "not run yet". Empty for any other table, and while a row's
    shorter suites are still deciding."""
    from pursamere.evaluation.results import convergence, over_longer_suites

    if table not in CIFAR_RUNGS or not (book / "cifar10-cpu-table" / "results.json").is_file():
        return set()
    rungs = []
    for t, steps in sorted(CIFAR_RUNGS.items(), key=lambda kv: len(kv[1])):
        if len(steps) >= len(CIFAR_RUNGS[table]) or not (book / t / "results.json").is_file():
            break
        rungs.append((steps[-1], read_results(book / t)))
    out = set()
    for w in over_longer_suites(read_results(book / "cifar10-cpu-table"), rungs)["worst_case"]:
        verdict = convergence(w)
        if w.get("complete", True) and (not any(w["survived"]) or (verdict is not None and verdict[0])):
            out.add((w["defence"], str(w["norm"]), float(w["eps"])))
    return out


def planned_attacks(table: str) -> set:
    """The (attack, norm) pairs of a table's budget (the names carry the step, restart and query counts; ℓ1
    has its own, :func:`pursamere.evaluation.suite.threat_budget`)."""
    pr = _protocol(table)[0]
    return {(a.name, str(t.norm)) for a in pr.attacks for t in pr.threats if _runs_at(a, t.norm)}


def _runs_at(a, norm) -> bool:
    """Whether the suite's attack ``a`` runs at threat norm ``norm`` (its budget's norms; no Square at ℓ1)."""
    return (a.norms is None or str(norm) in a.norms) and not (a.kind == "square" and str(norm) == "1")


def replan(table: str):
    """``(group, recorded plan) -> plan``: each group held to the attacks the table's suite has now.

    A job records the plan of the suite it ran. When the suite later gains an attack (APGD on the exact
    gradient was added after the 80-step ladder of chapter 7), a group recorded before it must not count as
    complete: its plan gains every attack of the table's suite at that norm of a kind the group already ran —
    the same gradient rule (gray-box, BPDA, exact, partial unrolling) or gradient-free Square — within the
    roles the table gives that defence. What applies to a defence is thereby read off what ran against it,
    without rebuilding its models."""
    pr, keep = _protocol(table)
    roles = {d.label: d.attacks for d in keep}

    def kind(a) -> tuple:
        return a.gradient, a.unroll_last is not None, a.kind == "square"

    def plan(group, recorded):
        defence, norm, _ = group
        at_norm = [a for a in pr.attacks if _runs_at(a, norm)]
        ran = {kind(a) for a in at_norm if a.name in recorded}
        allowed = roles.get(defence)
        return list(recorded) + [a.name for a in at_norm if a.name not in recorded and kind(a) in ran
                                 and (allowed is None or a.role in allowed.get(str(norm), ()))]

    return plan


def check_budget(table: str, part_rows: dict) -> None:
    """Refuse a job folder holding a row that the table's budget does not plan — its attack at that norm, with
    those settings (EoT only against stochastic defences): a convergence check run at another budget
    (``--strong``, ``--steps``, ``--restarts``) would otherwise be merged into the table."""
    from pursamere.evaluation.attacks import Threat

    pr = _protocol(table)[0]
    planned = planned_attacks(table)
    specs = {(a.name, str(t.norm)): a for a in pr.attacks for t in pr.threats if (a.name, str(t.norm)) in planned}
    for folder, rows in part_rows.items():
        for r in rows:
            spec = specs.get((r["attack"], str(r["norm"])))
            if spec is not None:
                want = spec.settings(Threat(r["norm"], r["eps"]))
                got = r.get("attack_settings", {})
                if all(got.get(k) == v for k, v in want.items() if k != "eot" or r.get("deterministic") is False):
                    continue
            if str(r["norm"]) not in {str(t.norm) for t in pr.threats}:
                raise ValueError(f"{folder} holds a row at {norm_label(r['norm'], r['eps'])}, but {table} runs at "
                                 f"{', '.join(sorted(norm_label(t.norm) for t in pr.threats))} only: a job seeded from "
                                 f"another job's folder? `python scripts/record_tables.py {folder} --keep-linf` drops the "
                                 "other rows (and the copy's checks and finished-run files)")
            names = sorted(a for a, n in planned if n == str(r["norm"]))
            raise ValueError(f"{folder} holds a row of attack {r['attack']!r} at {norm_label(r['norm'], r['eps'])} that "
                             f"{table}'s budget does not plan there ({', '.join(names) or 'no attack'}; or other settings "
                             "under that name): a check at another budget? put 'strong' in its folder's name to keep it "
                             "out of the table")


ORDER = ("undefended", "adversarial training (FGSM-RS)", "PGD-AT", "TRADES")


def belongs(name: str, prefix: str) -> bool:
    """Whether a job folder named ``name`` is one of the table's (smoke runs, the convergence checks and other
    tables' jobs, whose prefixes are longer, excluded)."""
    longer = [q for q, _ in TABLES.values() if q != prefix and q.startswith(prefix)]
    return (name.startswith(prefix) and "strong" not in name and not any(name.startswith(q) for q in longer)
            and Path(name).name == name and name not in (".", ".."))


def folders(root: Path, prefix: str) -> list[Path]:
    """Finished job folders of one table."""
    return sorted(p for p in root.glob(f"{prefix}*") if (p / "results.json").is_file() and belongs(p.name, prefix))


def read_provenance(table_dir: Path) -> dict:
    """A recorded table's ``provenance.json`` (empty when there is none); one clear error when unreadable."""
    path = Path(table_dir) / "provenance.json"
    if not path.is_file():
        return {}
    try:
        prov = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(prov, dict):
        raise ValueError(f"{path} is not a provenance record (not a JSON object)")
    return prov


def cifar_examples(path: Path, n: int = 8) -> Path:
    """Clean, BPDA20-det adversarial and purified images of the first ``n`` table images through ERE descent
    (the table's best purifier), drawn with the engine's own figure."""
    import torch

    from pursamere.experiments import cifar10_cpu
    from pursamere.experiments.engine import select_images
    from pursamere.experiments.presets import CIFAR10_CPU
    from pursamere.experiments.protocols import Images
    from pursamere.experiments.reporting import example_figure

    torch.manual_seed(0)
    arts = cifar10_cpu.load_artifacts()
    spec = next(d for d in cifar10_cpu.table_protocol(CIFAR10_CPU, "key").defences if d.examples)
    x, y, _ = select_images(CIFAR10_CPU, arts.split, Images("table", n))
    return example_figure(CIFAR10_CPU, arts.defence(spec), x, y, path, steps=20)


def cifar_checks(path: Path, n: int, families: tuple = ("ERE descent", "PurSAMERE"), steps: int = 10,
                 square_queries: int = 100) -> Path:
    """The obfuscation checks (:func:`pursamere.evaluation.checks.obfuscation_checks`, BPDA gradient) of the
    table's purifier rows of ``families`` on the first ``n`` table images, as the engine records them
    (``checks.json``; entries for other rows already in the file are kept). On a CPU the exact-gradient
    checks cost about five times more, so only BPDA runs here."""
    import json

    from pursamere.evaluation.attacks import Threat
    from pursamere.evaluation.checks import obfuscation_checks
    from pursamere.experiments import cifar10_cpu
    from pursamere.experiments.engine import select_images
    from pursamere.experiments.presets import CIFAR10_CPU
    from pursamere.experiments.protocols import Images

    arts = cifar10_cpu.load_artifacts()
    x, y, _ = select_images(CIFAR10_CPU, arts.split, Images("table", n))
    entries = json.loads(path.read_text()) if path.exists() else []
    for spec in cifar10_cpu.table_protocol(CIFAR10_CPU, "key").defences:
        if not spec.checks or spec.kind().value not in families:
            continue
        d = arts.defence(spec)
        cs = obfuscation_checks(d, Threat("inf", CIFAR10_CPU.threats["inf"]), x, y, gradient="bpda", steps=steps,
                                square_queries=square_queries)
        entries = [e for e in entries if not (e["defence"] == d.name and e["gradient"] == "bpda")]
        entries.append({"defence": d.name, "gradient": "bpda", "n": n, "checks": [c.as_dict() for c in cs]})
        atomic_write_json(path, entries)
    return path


def restore(book: Path, root: Path) -> tuple:
    """Write every recorded table's rows back into ``root/<job>/results.json`` (the job that made each row,
    from ``provenance.json``'s ``job_of``) with the groups' worst cases (an unfinished group keeps its plan,
    so it stays marked incomplete). A folder that already holds results is left as it is (it may hold newer
    rows; recording checks that no recorded row is lost). Checks every table before writing anything.
    Returns ``(folders written, folders kept)``."""
    from pursamere.io import atomic_write_json

    todo = {}
    for table, (prefix, _) in TABLES.items():
        src = Path(book) / table
        if not (src / "results.json").is_file():
            continue
        job_of = read_provenance(src).get("job_of")
        res = read_results(src)
        if not isinstance(job_of, dict) or any(r["key"] not in job_of for r in res["rows"]):
            raise ValueError(f"{src / 'provenance.json'} does not say which job made each row ('job_of'): "
                             f"cannot restore {table}")
        bad = sorted({j for j in job_of.values() if not isinstance(j, str) or not belongs(j, prefix)}, key=str)
        if bad:
            raise ValueError(f"{src / 'provenance.json'}: {bad[0]!r} is not a job folder name of {table} "
                             f"(a plain name starting with {prefix!r})")
        # the table's meta, less what belongs to one job (its plan, threats, stop) or to the merge: the resumed
        # run writes its own
        meta = {k: v for k, v in res["meta"].items() if k not in ("merged_from", "plan", "threats", "stopped")}
        by_job = {}
        for r in res["rows"]:
            by_job.setdefault(job_of[r["key"]], []).append(r)
        for job, rows in sorted(by_job.items()):
            groups = {(r["defence"], r["norm"], r["eps"]) for r in rows}
            worst = [w for w in res["worst_case"] if (w["defence"], w["norm"], w["eps"]) in groups]
            todo[Path(root) / job] = {"meta": {**meta, "restored_from": str(src)}, "rows": rows, "worst_case": worst}
    written, kept = [], []
    for folder, res in todo.items():
        if (folder / "results.json").exists():
            kept.append(folder)
            continue
        atomic_write_json(folder / "results.json", res)
        written.append(folder)
    return written, kept


IN_PROGRESS = "in-progress"  # under --book: the rows in progress of unfinished jobs (pursamere.evaluation.runner.export_progress)


def _job_table(name: str):
    return next((t for t, (prefix, _) in TABLES.items() if belongs(name, prefix)), None)


def _job_folders(root: Path) -> list:
    """The folders under ``root`` that are some table's jobs (finished or not), sorted; none when ``root`` is absent."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and _job_table(p.name)) if Path(root).is_dir() else []


def _finished(folder: Path) -> bool:
    """A job with nothing left to resume: every group it ran is complete, it was not stopped, no row is in progress.
    (A group it has not started has no end points to keep; its first row in progress makes the job unfinished.)"""
    from pursamere.evaluation.runner import PROGRESS

    if not (folder / "results.json").is_file():
        return False
    res = read_results(folder)
    worst = res.get("worst_case") or []
    sub = folder / PROGRESS[0]  # rows-in-progress
    return (bool(worst) and all(w.get("complete", True) for w in worst) and "stopped" not in res["meta"]
            and not (sub.is_dir() and any(sub.iterdir())))


def record_progress(book: Path, root: Path) -> list:
    """Keep the rows in progress and end points of every unfinished job folder of a table under ``root`` (one that a
    run left before writing any results.json included) under ``book/in-progress/<job>``, merged with what was kept
    there before (:func:`pursamere.evaluation.runner.export_progress`: nothing is dropped but rows that finished); a
    finished job keeps none (its end points serve no row). Jobs with no folder under ``root`` keep what was kept for
    them. Returns ``[(job, states kept)]`` for the jobs that keep some."""
    import shutil

    from pursamere.evaluation.runner import export_progress

    kept = []
    jobs = _job_folders(root)
    for folder in jobs:
        dest = Path(book) / IN_PROGRESS / folder.name
        if _finished(folder):
            shutil.rmtree(dest, ignore_errors=True)
            continue
        rows = read_results(folder)["rows"] if (folder / "results.json").is_file() else []
        n = export_progress(folder, dest, finished_rows={r["key"] for r in rows})
        if n:
            kept.append((folder.name, n))
    return kept


CHECKS = "checks"  # under in-progress/<job>: the job's obfuscation checks so far (checks.json, checks-in-progress/)


def record_checks(book: Path, root: Path) -> list:
    """Keep, for every job folder under ``root`` that has not written its ``table.md`` (the engine writes it last,
    after the obfuscation checks), the checks it finished (``checks.json``, unless :func:`recorded_checks` gives every
    one of them back to this folder from its table's ``checks.json``) and the check attacks' kept flags
    (``checks-in-progress/``) under ``book/in-progress/<job>/checks`` (JSON only), so that a later session on a fresh
    machine resumes inside the checks too: they take hours on a CPU. A job that wrote its table.md keeps none.
    Call after :func:`record_progress` (which replaces a job's kept folder). Returns ``[(job, files kept)]``."""
    import shutil

    from pursamere.experiments.engine import CHECKS_IN_PROGRESS

    kept = []
    jobs = _job_folders(root)
    # what --restore gives each job folder back from its table's checks.json (merge_checks put them there)
    restorable = {target: json.loads(text) for text, target in recorded_checks(book, root)}
    for folder in jobs:
        dest = Path(book) / IN_PROGRESS / folder.name / CHECKS
        in_checks = not (folder / "table.md").is_file() and (folder / "checks.json").is_file()
        files = [folder / "checks.json"] if in_checks else []
        mine = _read_json(files[0]) if files else None
        if isinstance(mine, list) and mine and all(e in restorable.get(folder / "checks.json", []) for e in mine):
            files = []  # every finished check comes back from the table: no second copy
        files += sorted((folder / CHECKS_IN_PROGRESS).glob("*.json")) if (folder / CHECKS_IN_PROGRESS).is_dir() else []
        shutil.rmtree(dest, ignore_errors=True)
        if (folder / "table.md").is_file() or not files:
            if dest.parent.is_dir() and not any(dest.parent.iterdir()):
                dest.parent.rmdir()
            continue
        for f in files:
            text = f.read_text()
            json.loads(text)  # JSON, or recording stops here naming it
            atomic_write_text(dest / f.relative_to(folder), text)
        kept.append((folder.name, len(files)))
    return kept


def _check_entries(path: Path, entries, job: bool) -> list:
    """``entries`` (read from ``path``) as a list of obfuscation-check entries, or one clear error naming the file."""
    need = {"defence", "gradient", "n", "checks"} if job else {"defence", "gradient"}
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and need <= e.keys() and isinstance(e["defence"], str) and isinstance(e["gradient"], str)
            for e in entries):
        raise ValueError(f"{path} is not an obfuscation-check record (a list of entries, each with "
                         f"{', '.join(sorted(need))}; defence and gradient as text)")
    return entries


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def merge_checks(book: Path, root: Path, write: bool = True) -> list:
    """Copy every table job's finished obfuscation checks (its ``checks.json``: one entry per defence and gradient,
    written only when all of that gradient's checks are done) into the recorded table's ``checks.json``, which the
    book shows. A job's entry replaces the table's entry for the same defence and gradient (also one that
    ``--checks`` made); the table's other entries stay. A job file holding two entries for one defence and gradient
    (a resumed run at new settings keeps the old ones after its new ones until it has redone them) gives its first,
    the newest. Refused, naming the files: checks of a defence the job has no row of, two job folders of one table
    with checks of the same defence and gradient, and any malformed file. Tables whose protocol runs no checks (the
    longer suites' jobs start from a copy of a 20-step job) take none. Every file is read and checked before any is
    written; ``write=False`` only checks (call it so before the tables are written, and again with ``write=True``
    after). Returns ``[(table, [(defence, gradient, n), ...] merged)]`` for the tables that changed."""
    jobs = _job_folders(root)
    plans, source = {}, {}
    for folder in jobs:
        f = folder / "checks.json"
        table = _job_table(folder.name)
        if not f.is_file() or _protocol(table)[0].check_plan is None:
            continue
        entries = _check_entries(f, _read_json(f), job=True)
        if not entries:
            continue
        if not (folder / "results.json").is_file():
            raise ValueError(f"{f}: its job folder has no results.json (checks of a job that recorded no row)")
        rows = {r["defence"] for r in read_results(folder)["rows"]}
        for e in entries:
            if e["defence"] not in rows:
                raise ValueError(f"{f}: checks of {e['defence']!r}, which has no row in {folder / 'results.json'}")
        first = {}
        for e in entries:
            first.setdefault((e["defence"], e["gradient"]), e)  # the engine writes a resumed run's new entries first
        for key, e in first.items():
            other = source.get((table, key))
            if other is not None:
                raise ValueError(f"{other} and {f} both hold checks of {key[0]!r} ({key[1]} gradient) for {table}: "
                                 "keep one of the two job folders")
            source[(table, key)] = f
            plans.setdefault(Path(book) / table, []).append(e)
    recorded = {}
    for table in plans:
        path = table / "checks.json"
        recorded[table] = _check_entries(path, _read_json(path), job=False) if path.is_file() else []
    if not write:
        return []
    merged = []
    for table, new in plans.items():
        out, changed = list(recorded[table]), []
        for e in new:
            key = (e["defence"], e["gradient"])
            same = [i for i, o in enumerate(out) if (o["defence"], o["gradient"]) == key]
            if len(same) == 1 and out[same[0]] == e:
                continue
            at = same[0] if same else len(out)
            out = [o for i, o in enumerate(out) if i not in same]
            out.insert(min(at, len(out)), e)
            changed.append((e["defence"], e["gradient"], e["n"]))
        if changed:
            merged.append((table, out, changed))
    for table, out, _ in merged:
        atomic_write_json(table / "checks.json", out)
    return [(table.name, changed) for table, _, changed in merged]


def kept_checks(book: Path, root: Path) -> list:
    """:func:`record_checks`' files, each checked (name, plain file, JSON), with where :func:`restore_checks` writes it
    under ``root``: ``[(text, target)]``. Nothing is written."""
    from pursamere.experiments.engine import CHECKS_IN_PROGRESS

    src = Path(book) / IN_PROGRESS
    todo = []
    for folder in sorted(src.glob(f"*/{CHECKS}")):
        for f in sorted(folder.rglob("*")):
            if f.is_dir():
                continue
            rel = f.relative_to(folder)
            ok = rel == Path("checks.json") or (rel.parent == Path(CHECKS_IN_PROGRESS) and re.fullmatch(r"[0-9a-f]{16}\.json", rel.name))
            if f.is_symlink() or not ok:
                raise ValueError(f"{f} is not a kept obfuscation-check file (checks.json or {CHECKS_IN_PROGRESS}/<16 hex>.json)")
            text = f.read_text()
            json.loads(text)
            todo.append((text, Path(root) / folder.parent.name / rel))
    return todo


def recorded_checks(book: Path, root: Path) -> list:
    """The finished obfuscation checks in the recorded tables' ``checks.json`` (:func:`merge_checks` put them there),
    each with the ``checks.json`` of the job folder under ``root`` that made its defence's rows (``job_of`` in
    ``provenance.json``): ``[(text, target)]`` for :func:`restore_checks`, so that a restored job re-run with
    ``--resume`` reuses them instead of redoing hours of checks. Only entries a job wrote (they carry the engine's
    identity of a check: fingerprints, steps, revisions) and whose defence one job alone made; ``--checks`` entries
    stay with the table. Nothing is written."""
    todo = []
    for table, (prefix, _) in TABLES.items():
        src = Path(book) / table
        if not (src / "checks.json").is_file() or not (src / "results.json").is_file():
            continue
        job_of = read_provenance(src).get("job_of") or {}
        jobs = {}
        for r in read_results(src)["rows"]:
            if isinstance(job_of.get(r["key"]), str) and belongs(job_of[r["key"]], prefix):
                jobs.setdefault(r["defence"], set()).add(job_of[r["key"]])
        by_job = {}
        for e in _check_entries(src / "checks.json", _read_json(src / "checks.json"), job=False):
            made = jobs.get(e["defence"], set())
            if "defence_fingerprint" in e and isinstance(e.get("checks"), list) and len(made) == 1:
                by_job.setdefault(next(iter(made)), []).append(e)
        todo += [(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", Path(root) / job / "checks.json") for job, entries in sorted(by_job.items())]
    return todo


def restore_checks(todo: list) -> int:
    """Write :func:`kept_checks`' or :func:`recorded_checks`' files back into their job folders (never over a file
    there). Returns how many."""
    written = 0
    for text, target in todo:
        if not target.exists():
            atomic_write_text(target, text)
            written += 1
    return written


def kept_progress(book: Path) -> dict:
    """Every job's kept rows in progress under ``book/in-progress``, read and checked (nothing written yet):
    ``{job: states}`` for :func:`restore_progress`."""
    from pursamere.evaluation.runner import read_progress

    src = Path(book) / IN_PROGRESS
    jobs = sorted(p for p in src.iterdir() if not p.name.startswith(".")) if src.is_dir() else []
    for job in jobs:
        if job.is_symlink() or not job.is_dir() or _job_table(job.name) is None:
            raise ValueError(f"{job} is not the kept progress of a job of a recorded table")
    return {job.name: read_progress(job) for job in jobs}


def restore_progress(root: Path, kept: dict) -> tuple:
    """Write :func:`kept_progress`'s states back into their job folders under ``root`` (never over a file there).
    Returns ``(files written, files kept as they were)``."""
    from pursamere.evaluation.runner import write_progress

    written = held = 0
    for job, states in kept.items():
        w, k = write_progress(states, Path(root) / job)
        written, held = written + w, held + k
    return written, held


def keep_linf(folder: Path) -> int:
    """Drop every row and worst case but the ℓ∞ ones from a job folder's ``results.json`` (atomic); returns how many
    rows were dropped. A cifar40-* job starts from a copy of its 20-step job, which may hold ℓ2 and ℓ1 rows that the
    40-step table (ℓ∞ only) does not plan. The copy's obfuscation checks and finished-run files (``checks.json``,
    the kept check attacks, ``table.md``, ``summary.json``) are the 20-step job's, and the longer suites run no
    checks: they are removed, so that no table takes those checks for its own job's."""
    import shutil

    from pursamere.experiments.engine import CHECKS_IN_PROGRESS
    from pursamere.io import atomic_write_json

    path = Path(folder) / "results.json"
    res = read_results(path)
    rows = [r for r in res["rows"] if str(r["norm"]) == "inf"]
    atomic_write_json(path, {**res, "rows": rows,
                             "worst_case": [w for w in res.get("worst_case") or [] if str(w["norm"]) == "inf"]})
    for name in ("checks.json", "table.md", "summary.json"):
        (Path(folder) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(folder) / CHECKS_IN_PROGRESS, ignore_errors=True)
    return len(res["rows"]) - len(rows)


FROM_DEVICE = "from-device.json"  # in a job folder taken from a GPU call: {row key: digest} of the rows the GPU finished


def _row_digest(row: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()


def _read_marks(f: Path) -> dict:
    """A ``from-device.json``: ``{row key: digest}``, checked (one clear error line if it is not one)."""
    try:
        marks = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: not a readable list of the GPU's rows ({e})") from None
    if not isinstance(marks, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in marks.items()):
        raise ValueError(f"{f}: not a map of row keys to digests")
    return marks


def device_rows(root: Path) -> dict:
    """The rows that :func:`take_device` marked as the GPU's in ``root``'s job folders (``from-device.json``) and
    that the folder still holds as the GPU wrote them: ``{row key: {digests}}``. A row elsewhere counts as the GPU's
    only if its content is the same (:func:`_row_digest`): another table's row of the same key may be the CPU's. The
    marks stay with the folder, so a recording refused after the take (or one that takes no device folder) still
    records those rows' machine."""
    marked = {}
    for folder in _job_folders(root):
        f = folder / FROM_DEVICE
        if not f.is_file() or not (folder / "results.json").is_file():
            continue
        rows = {r["key"]: r for r in read_results(folder)["rows"]}
        for k, d in _read_marks(f).items():
            if k in rows and _row_digest(rows[k]) == d:
                marked.setdefault(k, set()).add(d)
    return marked


def take_device(root: Path, device: Path, live: set | None = None) -> tuple[set, list, list, list]:
    """Bring the job folders a lent GPU returned (``device``: its ``results.tar.gz`` unpacked) into ``root``.

    A device folder replaces the folder of the same name under ``root`` when it holds rows that one lacks. Of those,
    the rows no folder under ``root`` holds as they are (a job the GPU seeded from a CPU-made folder copies that
    folder's rows) are the GPU's: their keys are returned for the provenance and written into the taken folder
    (``from-device.json``, read back by :func:`device_rows`), so the marks outlive a recording refused later.
    Returns ``(the GPU's row keys, folders replaced, folders left as they were (nothing new), device folders skipped
    (no table's job: the smoke runs))``.

    Every folder is checked before any is touched: a root folder with a row the device folder lacks or holds
    otherwise (the CPU finished it while the GPU ran) is refused, since replacing it would lose that row; so is a
    folder a running ``pursamere ensemble`` writes (``live``: those folders' names, read from ``/proc`` when not
    given), which would write its own rows over the device's. Each folder is copied beside under a hidden name
    first; only when every copy has succeeded are they swapped in (the old folder renamed aside, then removed)."""
    import shutil

    if not device.is_dir():
        raise ValueError(f"{device}: no such folder (unpack the GPU call's results.tar.gz into it)")
    found = sorted(p for p in device.iterdir() if (p / "results.json").is_file())
    skipped = [p.name for p in found if _job_table(p.name) is None]
    known = {_row_digest(r) for p in _job_folders(root) if (p / "results.json").is_file() for r in read_results(p)["rows"]}
    plan, gpu, same, lost = [], set(), [], []
    for dev in (p for p in found if _job_table(p.name) is not None):
        dev_rows = {r["key"]: r for r in read_results(dev)["rows"]}
        mine = root / dev.name
        own = {r["key"]: r for r in read_results(mine)["rows"]} if (mine / "results.json").is_file() else {}
        differ = [k for k, r in own.items() if dev_rows.get(k) != r]
        if differ:
            lost.append((dev, mine, differ[0]))
            continue
        if dev_rows.keys() == own.keys():
            same.append(mine)
            continue
        new = {k for k, r in dev_rows.items() if k not in own and _row_digest(r) not in known}
        marks = {}
        for f in (dev / FROM_DEVICE, mine / FROM_DEVICE):  # earlier leases' marks the folder carried
            if f.is_file():
                marks.update(_read_marks(f))
        marks = {k: d for k, d in marks.items() if k in dev_rows and _row_digest(dev_rows[k]) == d}
        marks.update({k: _row_digest(dev_rows[k]) for k in new})
        plan.append((dev, mine, marks))
        gpu |= new
    if not plan and not same and not lost:
        raise ValueError(f"{device}: no job folders of a recorded table with a results.json in it"
                         + (f" (skipped {', '.join(skipped)})" if skipped else ""))
    if live is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from run_status import live_jobs  # scripts/run_status.py: the job folders running ensembles write

        live = live_jobs(root) or set()
    busy = [m.name for _, m, *_ in plan + lost if m.name in live]
    if busy:
        raise ValueError(f"{root / busy[0]} is being written by a running `pursamere ensemble`: stop its job (and the "
                         "queue that would restart it) before taking the device's folder")
    aside = [m.with_name(f".{m.name}.before-device") for _, m, _ in plan]
    aside = [a for a in aside if a.exists()]
    if aside:  # an earlier take stopped between its two renames: this may be the CPU's only copy of the folder
        raise ValueError(f"{aside[0]} was set aside by an interrupted take: rename it back to "
                         f"{aside[0].name[1:-len('.before-device')]} (or remove it, if the folder of that name is whole)")
    if lost:
        dev, mine, key = lost[0]
        raise ValueError(f"{mine} holds a row the device's {dev.name} lacks or holds otherwise ({key}), finished on the "
                         f"CPU while the GPU ran (stop the CPU queue during a GPU call): to keep the CPU's folder, remove "
                         f"{dev}; to take the device's, move {mine} out of {root} first")
    tmps = []
    try:
        for dev, mine, marks in plan:  # copied beside under a hidden name no table's glob matches
            tmp = mine.with_name(f".{mine.name}.from-device")
            shutil.rmtree(tmp, ignore_errors=True)
            tmps.append(tmp)
            shutil.copytree(dev, tmp)
            atomic_write_json(tmp / FROM_DEVICE, marks)
    except BaseException:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for (dev, mine, _), tmp in zip(plan, tmps):  # then swapped in: at no point is a folder half-deleted
        old = mine.with_name(f".{mine.name}.before-device")  # (checked above: none is left from an earlier take)
        if mine.exists():
            mine.rename(old)
        tmp.rename(mine)
        shutil.rmtree(old, ignore_errors=True)
    return gpu, [m for _, m, _ in plan], same, skipped


def lost_rows(book: Path, root: Path) -> list:
    """Recorded rows that no job folder of their table under ``root`` holds (``"table: key (job)"``):
    re-recording without them would drop them from the table."""
    lost = []
    for table, (prefix, _) in TABLES.items():
        src = Path(book) / table
        if not (src / "results.json").is_file():
            continue
        job_of = read_provenance(src).get("job_of") or {}
        have = {r["key"] for p in folders(Path(root), prefix) for r in read_results(p)["rows"]}
        lost += [f"{table}: {r['key']} ({job_of.get(r['key'], 'job not recorded')})"
                 for r in read_results(src)["rows"] if r["key"] not in have]
    return lost


def provenance(part_rows: dict, res: dict, old: dict, old_rows: dict, gpu: set, gpu_roots: bool, device_log,
               prior: tuple = ({}, {})) -> dict:
    """Where each row of a merged table came from: its job folder (``part_rows``: folder → its rows) and its
    machine. A row unchanged since the last recording keeps its recorded machine (the folders a lent GPU
    returned do not outlive the session), and so does a row identical to one another table recorded with its
    machine (``prior``: rows and machines by key; the 160-step table's jobs start from the 80-step jobs' rows);
    a new or re-run row is 'gpu' when found in ``gpu`` (rows of the GPU's folders), else 'cpu'. A table with
    no machine on record, no shared row and no ``gpu_roots`` records none (unknown); given ``gpu_roots``, its
    rows recorded before stay unknown (None) and only its new rows get a machine."""
    prior_rows, prior_machine = prior
    folder_of = {r["key"]: p.name for p, rows in part_rows.items() for r in rows}
    # in the merged table's row order, so a folder rebuilt by --restore (its rows in another order) changes nothing
    job_of = {r["key"]: folder_of[r["key"]] for r in res["rows"] if r["key"] in folder_of}
    job_of.update({k: v for k, v in folder_of.items() if k not in job_of})
    shared = {r["key"] for r in res["rows"] if r["key"] in prior_machine and prior_rows.get(r["key"]) == r}
    machine = None
    if gpu_roots or old.get("machine") or shared:
        before = old.get("machine") or {}
        machine = {r["key"]: (before[r["key"]] if r["key"] in before and old_rows.get(r["key"]) == r
                              else prior_machine[r["key"]] if r["key"] in shared
                              else "gpu" if r["key"] in gpu
                              else None if not before and old_rows.get(r["key"]) == r  # recorded with no machine
                              else "cpu") for r in res["rows"]}
    return {"jobs": [p.name for p in part_rows], "rows": len(res["rows"]), "job_of": job_of, "machine": machine,
            "device": Path(device_log).read_text().strip() if device_log else old.get("device"),
            "note": "rows computed on the lent GPU by scripts/device_evaluate.sh and, where a job ran out of time, "
                    "continued on the CPU with the same command and --resume (finished rows reused); 'machine' "
                    "says which ran where, 'job_of' which job folder (scripts/record_tables.py --restore)"}


# a table's longer suites (--then-steps), each merged from its own jobs: the README shows them as the table's checks
RUNGS = {"cifar10-cpu-table": tuple((t, r[-1]) for t, r in CIFAR_RUNGS.items()),
         "cifar10-cpu-rest": (("cifar10-cpu-rest-40", 40),),
         "digits-whole-test": (("digits-whole-test-160", 160), ("digits-whole-test-320", 320))}


def rung_check(w: dict) -> str:
    """The README's last column for a row of :func:`~pursamere.evaluation.results.over_longer_suites`: what each
    longer suite broke of what the suites before it left, and chapter 7's verdict on a doubling of the steps (and
    at which suite); a stochastic defence's count includes fresh draws of its randomness, which it says."""
    from pursamere.evaluation.results import convergence

    checks = w.get("longer_suites") or []
    if not checks:
        return "not run yet" if w.get("complete", True) else "after its own suite has finished"
    if not checks[0]["of"]:
        return "nothing left to break"
    parts = [f"{c['steps']} steps broke {c['broke']} of {c['of']}"
             + ("" if c["complete"] else f" ({c['attacks']} of its {c['planned']} attacks so far)") for c in checks]
    line = "; ".join(parts)
    verdict = convergence(w)
    if verdict is not None:
        ok, steps = verdict
        line += ": " + ("converged" if ok else "**not converged**") + ("" if len(checks) == 1 else f" by the {steps}-step suite")
    if not w.get("deterministic", True):
        line += " (stochastic: each attack redraws the noise)"
    return line


def markdown_table(results: dict, rungs: list = (), only: dict | None = None) -> str:
    """The README's compact table of a merged results file: defence × threat, worst case with its 95% interval;
    a group that did not run every planned attack shows "≤" and how many ran (an upper bound).

    ``rungs``: the table's longer suites as (steps, results), shortest first, on the same images. A row they
    checked shows its worst case over every suite run, and a last column says what each longer suite broke and
    whether the row has converged (the first suite's number alone would overstate a row a longer suite broke).
    ``only``: the longer suites' :data:`ONLY_AT` (ε → the defences they run there); a row they do not run at a
    threat says nothing there rather than "not run yet"."""
    only = only or {}
    from pursamere.evaluation.results import norm_label, over_longer_suites

    results = over_longer_suites(results, rungs)
    rank = {"inf": 0, "2": 1, "1": 2}
    keys = sorted({(rank.get(str(w["norm"]), 3), w["eps"], norm_label(w["norm"], w["eps"])) for w in results["worst_case"]})
    cols = [k[2] for k in keys]
    checked = [c for c in cols if any(w.get("longer_suites") and norm_label(w["norm"], w["eps"]) == c
                                      for w in results["worst_case"])]
    cells, clean, checks = {}, {}, {}
    for w in results["worst_case"]:
        label = norm_label(w["norm"], w["eps"])
        v = f"{100 * w['robust_acc']:.1f} [{100 * w['ci95'][0]:.0f}–{100 * w['ci95'][1]:.0f}]"
        if not w.get("complete", True):
            v = f"≤ {100 * w['robust_acc']:.1f} ({len(w['attacks'])} of {len(w['planned'])} attacks)"
        cells.setdefault(w["defence"], {})[label] = v
        clean[w["defence"]] = f"{100 * w['clean_acc']:.1f}"
        if label in checked and (w.get("longer_suites") or not any(
                eps == w["eps"] and not w["defence"].startswith(ds) for eps, ds in only.items())):
            line = rung_check(w)
            checks.setdefault(w["defence"], []).append(line if len(checked) == 1 else f"{label}: {line}")
    head = cols + ([f"longer suites ({checked[0]})" if len(checked) == 1 else "longer suites"] if checked else [])
    lines = ["| defence | clean | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    lines += [f"| {d} | {clean[d]} | " + " | ".join([row.get(c, "–") for c in cols]
                                                    + (["; ".join(checks.get(d, ["–"]))] if checked else [])) + " |"
              for d, row in cells.items()]
    missing = results.get("not_run") or []
    if missing:
        # a threat no row has run yet (a column the plan added) in one phrase, not once per defence
        planned = {m["defence"] for m in missing} | set(cells)
        at = {}
        for m in missing:
            at.setdefault(norm_label(m["norm"], m["eps"]), []).append(m["defence"])
        said = [f"every row at {t}" if set(ds) >= planned else "; ".join(f"{d} at {t}" for d in ds) for t, ds in at.items()]
        lines += ["", "Not run yet: " + "; ".join(said) + "."]
    return "\n".join(lines)


def readme_table(book: Path, table: str) -> str:
    """:func:`markdown_table` of a recorded table with its recorded longer suites (:data:`RUNGS`), up to the first
    one not recorded yet (a later suite's counts would be over two suites)."""
    rungs, only = [], {}
    for t, steps in RUNGS.get(table, ()):
        if not (book / t / "results.json").is_file():
            break
        rungs.append((steps, read_results(book / t)))
        only.update(ONLY_AT.get(t, {}))
    return markdown_table(read_results(book / table), rungs, only)


README_BLOCK = re.compile(r"<!-- recorded table: (?P<table>[\w.-]+)[^\n]*-->\n(?P<body>.*?)\n<!-- end of recorded table -->", re.S)


def readme_blocks(text: str) -> dict:
    """The README's recorded tables: table name → the text between its two markers."""
    found = {}
    for m in README_BLOCK.finditer(text):
        if m.group("table") in found:
            raise ValueError(f"the README holds the recorded table {m.group('table')} twice")
        found[m.group("table")] = m.group("body")
    opened = text.count("<!-- recorded table: ")
    if opened != len(found) or text.count("<!-- end of recorded table -->") != opened:
        raise ValueError("the README's recorded-table markers do not pair up (each '<!-- recorded table: NAME … -->' "
                         "needs its '<!-- end of recorded table -->')")
    return found


def update_readme(path: Path, book: Path) -> list:
    """Rewrite every recorded table of the README at ``path`` (between its markers) from ``book``; returns the
    tables whose text changed. Nothing is written when one is unknown or not recorded."""
    text = path.read_text(encoding="utf-8")
    blocks = readme_blocks(text)
    unknown = sorted(set(blocks) - set(TABLES))
    if unknown:
        raise ValueError(f"{path}: no such recorded table: {', '.join(unknown)}")
    new = {t: readme_table(book, t) for t in blocks}  # every table read before anything is written
    out = README_BLOCK.sub(lambda m: text[m.start():m.start("body")] + new[m.group("table")] + text[m.end("body"):m.end()],
                           text)
    if out != text:
        atomic_write_text(path, out)
    return [t for t in blocks if blocks[t] != new[t]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", help="the folder holding the jobs' results folders (none with --readme alone)")
    ap.add_argument("--book", default="book/data", help="where the merged tables go")
    ap.add_argument("--device-log", default=None, help="the GPU call's logs/device.txt, recorded as provenance")
    ap.add_argument("--gpu-root", action="append", default=[],
                    help="the results folders as they came back from the GPU: rows found there are marked 'gpu', the "
                         "others 'cpu' (the machine behind each row's seconds)")
    ap.add_argument("--from-device", action="append", default=[], metavar="DIR",
                    help="first take the job folders a GPU call returned (its results.tar.gz unpacked into DIR) into ROOT: "
                         "each replaces its namesake when it holds finished rows that one lacks, and those rows are "
                         "marked 'gpu' (refused, nothing copied, when a ROOT folder holds a row the device's lacks)")
    ap.add_argument("--checks", type=int, default=0, metavar="N",
                    help="also run the obfuscation checks (BPDA gradient) of the CIFAR-10 table's purifier rows on N images "
                         "(a job's own checks of the same purifier and gradient replace them when recorded)")
    ap.add_argument("--checks-rows", default="ERE descent,PurSAMERE", help="which purifier rows' checks (families)")
    ap.add_argument("--examples", action="store_true",
                    help="also draw the CIFAR-10 table's example images (clean, BPDA20, purified) on the CPU")
    ap.add_argument("--restore", action="store_true",
                    help="the reverse: write the recorded rows back into their job folders under ROOT (to --resume them)")
    ap.add_argument("--keep-linf", action="store_true",
                    help="ROOT is one job folder: keep only its ℓ∞ rows, and drop the copied checks.json, checks-in-progress/, "
                         "table.md and summary.json (a cifar40-* job seeded from its 20-step job)")
    ap.add_argument("--finished", action="store_true",
                    help="ROOT is one job folder: exit 0 when it has finished (every group complete, not stopped, no row "
                         "in progress), 3 when not (the queues seed a longer suite only from a finished job)")
    ap.add_argument("--readme", metavar="README", default=None,
                    help="then rewrite the recorded tables of this README (between its '<!-- recorded table: NAME -->' "
                         "markers) from --book; alone (no ROOT), only that")
    ap.add_argument("--allow-dropped", action="store_true",
                    help="record even when recorded rows are in no job folder under ROOT (they leave the table)")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except (ValueError, OSError) as e:  # one line, no traceback: a bad file or folder is named in the message
        print(f"record_tables: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    if args.from_device and (args.restore or args.keep_linf):
        raise ValueError("--from-device takes a GPU call's folders into ROOT before recording: not with --restore or --keep-linf")
    if args.finished and (args.root is None or args.restore or args.keep_linf or args.examples or args.checks
                          or args.from_device or args.readme):
        raise ValueError("--finished reads one job folder: give it (ROOT) and nothing else")
    if args.root is None:
        if not args.readme or args.restore or args.keep_linf or args.examples or args.checks or args.from_device:
            raise ValueError("give the folder holding the jobs' results folders (ROOT); only --readme works without it")
        changed = update_readme(Path(args.readme), Path(args.book))
        print(f"{args.readme}: " + (f"rewrote {', '.join(changed)}" if changed else "its recorded tables are current"))
        return 0
    if args.finished:
        done = _finished(Path(args.root))
        print(f"{args.root}: " + ("finished" if done else "not finished (or no results.json)"))
        return 0 if done else 3
    if args.keep_linf:
        if args.restore or args.examples or args.checks:
            raise ValueError("--keep-linf works on one job folder alone: give it without --restore, --examples or --checks")
        print(f"{args.root}: dropped {keep_linf(Path(args.root))} rows that are not ℓ∞")
        return 0
    if args.restore:
        progress = kept_progress(Path(args.book))  # every kept state checked before anything is written
        kept_check_files = kept_checks(Path(args.book), Path(args.root))
        # a finished job's checks, from its table (after the kept files of jobs still inside their checks: newer)
        table_check_files = recorded_checks(Path(args.book), Path(args.root))
        written, kept = restore(Path(args.book), Path(args.root))
        states, held = restore_progress(Path(args.root), progress)
        checks = restore_checks(kept_check_files)
        finished_checks = restore_checks(table_check_files)
        print(f"restored {len(written)} job folders under {args.root}"
              + (f": {', '.join(p.name for p in written)}" if written else "")
              + (f"; left {len(kept)} that already hold results as they are: {', '.join(p.name for p in kept)}"
                 if kept else "")
              + (f"; restored {states} kept rows in progress and end points" if states else "")
              + (f" (left {held} that the folders already hold or have finished)" if held else "")
              + (f"; restored {checks} files of obfuscation checks in progress" if checks else "")
              + (f"; restored the finished obfuscation checks of {finished_checks} job{'s' * (finished_checks != 1)} from their tables"
                 if finished_checks else ""))
        return 0
    if args.examples:
        cifar_examples(Path(args.book) / "cifar10-cpu-table" / "examples.png")
    if args.checks:
        cifar_checks(Path(args.book) / "cifar10-cpu-table" / "checks.json", args.checks,
                     tuple(f.strip() for f in args.checks_rows.split(",")))
    root = Path(args.root)
    for d in args.from_device:
        keys, replaced, same, skipped = take_device(root, Path(d))
        print(f"{d}: took {len(replaced)} job folders ({len(keys)} rows the GPU finished)"
              + (f": {', '.join(p.name for p in replaced)}" if replaced else "")
              + (f"; left {len(same)} with nothing new" if same else "")
              + (f"; skipped {', '.join(skipped)} (no recorded table's jobs)" if skipped else ""))
    marked = device_rows(root)  # the GPU's rows, marked in the folders taken (now or by a refused recording)
    lost = lost_rows(Path(args.book), root)
    if lost and not args.allow_dropped:
        raise ValueError(f"{len(lost)} recorded rows are in no job folder under {root} (first: {lost[0]}): recording "
                         f"would drop them; run `python scripts/record_tables.py {root} --restore` first, or pass "
                         "--allow-dropped to drop them on purpose")
    found = {table: {p: read_results(p)["rows"] for p in folders(root, prefix)} for table, (prefix, _) in TABLES.items()}
    for table, part_rows in found.items():  # every table checked before any is written
        check_budget(table, part_rows)
    merge_checks(Path(args.book), root, write=False)  # the jobs' obfuscation checks too
    # every table's recorded rows and machines: a row one table shares with another (the 160-step table's jobs start
    # from the 80-step jobs' rows) keeps the machine it was recorded on there
    prior_rows, prior_machine = {}, {}
    for table in TABLES:
        out = Path(args.book) / table
        if (out / "results.json").is_file():
            machine = read_provenance(out).get("machine") or {}
            for r in read_results(out)["rows"]:
                prior_rows[r["key"]] = r
                if r["key"] in machine:
                    prior_machine[r["key"]] = machine[r["key"]]
    written = []
    for table, (prefix, title) in TABLES.items():
        part_rows = found[table]
        parts = list(part_rows)
        if not parts:
            print(f"{table}: no job folders {prefix}* in {root}", file=sys.stderr)
            continue
        order = list(ORDER) + sorted({r["defence"] for rows in part_rows.values() for r in rows} - set(ORDER))
        out = Path(args.book) / table
        old = read_provenance(out)
        recorded = read_results(out) if (out / "results.json").is_file() else {"meta": {}, "rows": []}
        old_rows = {r["key"]: r for r in recorded["rows"]}
        # the merged meta (plan, attack order) is the first part's: in a table of two suites one that ran both, else
        # the part that was first when the table was last recorded (a restored folder has no plan of its own)
        then = json.loads(json.dumps((_protocol(table)[0].plan or {}).get("then")))  # as a results file holds it
        before = [Path(m).parent.name for m in recorded["meta"].get("merged_from") or []]
        # (a folder seeded from a shorter check holds that check's plan until it has run: not one that ran them all)
        parts.sort(key=lambda p: (then is not None and (read_results(p)["meta"].get("plan") or {}).get("then") != then,
                                  before.index(p.name) if p.name in before else len(before)))
        res = merge_results([p / "results.json" for p in parts], out, title=title, order=order,
                            expected=expected_groups(table, Path(args.book)), replan=replan(table))
        if "restored_from" in res["meta"] or ("plan" not in res["meta"] and "plan" in recorded["meta"]):
            # the first part was restored and has not run since: the table keeps the plan it was recorded with
            meta = {k: v for k, v in res["meta"].items() if k != "restored_from"}
            old_meta = recorded["meta"]
            keep = {k: old_meta[k] for k in ("plan", "threats") if k in old_meta and k not in meta}
            res["meta"] = {k: meta.get(k, keep.get(k)) for k in old_meta if k in meta or k in keep}  # recorded order
            res["meta"].update({k: v for k, v in meta.items() if k not in res["meta"]})
            atomic_write_json(out / "results.json", res)
        gpu = {r["key"] for rows in part_rows.values() for r in rows if _row_digest(r) in marked.get(r["key"], ())}
        marks_given = bool(gpu)  # this table has rows a take marked as the GPU's
        if args.gpu_root:
            gpu |= {r["key"] for g in args.gpu_root for p in folders(Path(g), prefix) for r in read_results(p)["rows"]}
        prov = provenance(part_rows, res, old, old_rows, gpu, bool(args.gpu_root or marks_given), args.device_log,
                          prior=(prior_rows, prior_machine))
        atomic_write_json(out / "provenance.json", prov)
        print(f"{table}: {len(res['rows'])} rows from {len(parts)} jobs → {out}")
        written.append(table)
    # the README's tables, once every table is written (a table's longer suites are recorded after it)
    for table in TABLES:
        shown = table in written or any(t in written for t, _ in RUNGS.get(table, ()))
        if shown and (Path(args.book) / table / "results.json").is_file():
            print(f"\n{table}" + (" with its longer suites" if RUNGS.get(table) else "") + f":\n{readme_table(Path(args.book), table)}")
    if args.readme:
        changed = update_readme(Path(args.readme), Path(args.book))
        print(f"{args.readme}: " + (f"rewrote {', '.join(changed)}" if changed else "its recorded tables are current"))
    for table, entries in merge_checks(Path(args.book), root):
        print(f"{table}/checks.json: " + "; ".join(f"{d} ({g} gradient, n = {n})" for d, g, n in entries))
    kept = record_progress(Path(args.book), root)
    if kept:
        print(f"kept the rows in progress of {len(kept)} unfinished jobs under {Path(args.book) / IN_PROGRESS}: "
              + ", ".join(f"{job} ({n} files)" for job, n in kept))
    checks = record_checks(Path(args.book), root)
    if checks:
        print(f"kept the obfuscation checks so far of {len(checks)} jobs: " + ", ".join(f"{job} ({n} files)" for job, n in checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
