"""THE experiment engine: run a protocol on a preset's images and write a results folder.

Every entry point — ``pursamere demo``, ``reproduce``, ``ensemble``, ``evaluate``, both studies, the
scripts, the notebooks' live branches and ``torchrun`` — builds a
:class:`~pursamere.experiments.protocols.Protocol` and calls :func:`run`::

    from pursamere.experiments import engine, protocols
    from pursamere.experiments.presets import DIGITS

    out = engine.run(DIGITS, protocols.tables(DIGITS, DIGITS.demo), "results/digits/demo")
    print(out.table)

A results folder holds ``results.json`` (rows, written after every row: an interrupted run
resumes), ``table.md``, ``robust_accuracy.png``, ``summary.json`` and, as the protocol asks,
``checks.json``, ``examples.png``, ``samples.png`` + ``score_diagnostics.json`` and ``study.json``.
``table.md`` is written last: a folder that has it holds a finished run (or one stopped by its time
budget, which its table says), never overwritten unless ``resume`` is asked for (then matching rows
are reused, not recomputed).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..evaluation.attacks import Threat
from ..evaluation.checks import CHECKS_REVISION, CheckResult, format_checks, obfuscation_checks, warn_failed
from ..evaluation.results import ATTACK_REVISION, render_table
from ..evaluation.runner import evaluate
from ..evaluation.sharding import DistContext, collective
from ..io import atomic_write_json, atomic_write_text, check_can_create, fingerprint
from .artifacts import Artifacts, prepare
from .data import table_indices, validation_indices
from .protocols import Protocol
from .reporting import example_figure, plot_results, score_diagnostics

__all__ = ["Options", "Run", "run", "results_dir", "select_images"]


@dataclass(frozen=True)
class Options:
    """How to run (never what): where models live, the device, resuming, sharding, progress output."""

    workdir: str = "runs"  # checkpoints and caches of the trained models
    device: str = "cpu"  # "cpu" or "cuda"
    fresh: bool = False  # retrain the models instead of reusing the cached ones
    resume: bool = False  # allow a folder that holds a finished run (its matching rows are reused)
    progress: bool = True  # progress bars
    data_root: Optional[str] = None  # folder of the data set (CIFAR-10 presets)
    weights: str = "train"  # "train" (or reuse the cache in workdir) or "shipped" (the verified models of weights/)
    score_checkpoint: Optional[str] = None  # presets with models="user": the official NCSNv2 checkpoint
    classifier: Optional[object] = None  # presets with models="user": a user_models.ClassifierSpec
    shards: Optional[DistContext] = None  # split the attacks over the ranks of a torchrun process group
    deadline: Optional[float] = None  # time.monotonic() after which the run stops cleanly (finished rows kept)
    log: Callable = print


@dataclass
class Run:
    """What :func:`run` did: the folder, the results and the objects it used."""

    out: Path
    results: dict
    table: str
    protocol: Protocol
    artifacts: Artifacts
    defences: list
    x: torch.Tensor
    y: torch.Tensor
    checks: list
    summary: dict
    study: Optional[dict] = None


def results_dir(preset_name: str, kind: str, out: Optional[str | Path] = None) -> Path:
    """The one results-folder convention: ``out``, or ``results/<preset>/<kind>-<date-time>``."""
    return Path(out) if out else Path("results") / preset_name / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def select_images(preset, split, images) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The protocol's test images: ``(x, y, description)``."""
    n_test = len(split.x_test)
    if images.which == "table":
        idx = table_indices(preset, n_test)
        idx = idx if images.n is None else idx[: images.n]
        what = (f"first {len(idx)} of a fixed permutation (seed {preset.data_seed}) of the test set, without the "
                f"{preset.validation_size} validation images the sweeps use")
    else:
        idx = validation_indices(preset, n_test)
        idx = idx if images.n is None else idx[: images.n]
        what = f"the {len(idx)} validation images of preset {preset.name} (never part of the tables)"
    return split.x_test[idx], split.y_test[idx], what


def _artifacts(preset, o: Options, rank0: bool) -> Artifacts:
    """Train or load the models; under torchrun rank 0 trains first and the other ranks load its caches."""
    def go(log=o.log, progress=o.progress, fresh=o.fresh):
        return prepare(preset, o.workdir, fresh=fresh, progress=progress, device=o.device, log=log, data_root=o.data_root,
                       weights=o.weights, score_checkpoint=o.score_checkpoint, classifier=o.classifier)

    if o.shards is None or not o.shards.active:
        return go()
    box = {}
    collective(o.shards, "training the models on rank 0", lambda: box.update(a=go()) if rank0 else None)
    arts = box["a"] if rank0 else go(log=lambda *a: None, progress=False, fresh=False)  # rank 0's caches, never retrained
    prints = collective(o.shards, "comparing the ranks' models", arts.fingerprints)
    if any(p != prints[0] for p in prints):
        raise RuntimeError("the ranks loaded different models (a cache changed under them?): rerun")
    return arts


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


def _same_check(entry: dict, entries: list) -> bool:
    """Whether ``entries`` holds a check with the identity of ``entry`` (every field but the verdicts)."""
    return any(all(entry.get(k) == e.get(k) for k in e if k != "checks") for e in entries)


def _recorded_checks(out: Path) -> list:
    """The obfuscation checks a previous run wrote to ``out`` (a resumed run reuses exact matches)."""
    path = out / "checks.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # unreadable: the checks run again and the file is rewritten
    fields = {f.name for f in dataclasses.fields(CheckResult)}

    def whole(entry) -> bool:  # an entry a resumed run can rebuild; anything else runs again
        return (isinstance(entry, dict) and isinstance(entry.get("checks"), list) and
                all(isinstance(c, dict) and set(c) == fields for c in entry["checks"]))

    return [c for c in old if whole(c)] if isinstance(old, list) else []


CHECKS_IN_PROGRESS = "checks-in-progress"  # a results folder's kept flags of the obfuscation checks' attacks


def _kept_flags(folder: Path, ident: dict):
    """The ``memo`` of :func:`~pursamere.evaluation.checks.obfuscation_checks`: each attack's survival flags kept in
    ``folder`` as it finishes, under everything they depend on (``ident`` but the gradient rule being checked: the
    gradient-free attacks serve both), so a run stopped inside the checks resumes after the last finished attack."""
    base = {k: v for k, v in ident.items() if k != "gradient"}

    def memo(key: str, run):
        name = hashlib.sha256(json.dumps({**base, "attack": key}, sort_keys=True, default=str).encode()).hexdigest()[:16]
        f = folder / f"{name}.json"
        if f.is_file():
            kept = json.loads(f.read_text())
            if kept.get("attack") == key and kept.get("ident") == json.loads(json.dumps(base, default=str)):
                return torch.tensor(kept["flags"], dtype=torch.bool)
        flags = run()
        atomic_write_json(f, {"ident": base, "attack": key, "flags": [bool(v) for v in flags.tolist()]})
        return flags

    return memo


def _writable_folder(out: Path, create: bool) -> None:
    """Refuse, in one line, a results folder that cannot be written; ``create`` makes it (and its parents)."""
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the results folder {out}: {e.strerror or e}") from None
        return
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"cannot create the results folder {out}: it is a file")
    check_can_create(out / "results.json", "the results folder's files")


def run(preset, protocol: Protocol, out: str | Path, options: Options = Options(),
        artifacts: Optional[Artifacts] = None) -> Run:
    """Run ``protocol`` on ``preset``'s images and write the results folder ``out`` (see the module docstring).

    ``artifacts``: trained models to use (default: :func:`~pursamere.experiments.artifacts.prepare`
    with ``options``).
    """
    o = options
    out = Path(out)
    if (out / "table.md").exists() and not o.resume:
        raise FileExistsError(f"{out} already holds a finished run; choose another output folder or resume it")
    t_start = time.perf_counter()
    rank0 = o.shards is None or o.shards.rank == 0
    # before any training: a path through a file or a read-only folder (every rank learns of rank 0's refusal)
    collective(o.shards, "checking the results folder", lambda: _writable_folder(out, create=False) if rank0 else None)
    device = o.shards.device if o.shards is not None and o.shards.active else torch.device(o.device)
    arts = (artifacts or _artifacts(preset, o, rank0)).to(device)
    x, y, what = select_images(preset, arts.split, protocol.images)
    x, y = x.to(device), y.to(device)
    defences = [arts.defence(s) for s in protocol.defences]
    spec_of = {d.name: s for d, s in zip(defences, protocol.defences)}
    meta = {"preset": preset.name, "protocol": protocol.kind, "title": protocol.title, "subset": what,
            "plan": _json_safe(protocol.plan), "threats": {str(t.norm): t.eps for t in protocol.threats},
            "train_times_s": {k: round(v, 1) for k, v in arts.times.items()}, "models": arts.fingerprints(),
            "weights": arts.source}
    made = rank0 and not out.exists()
    collective(o.shards, "creating the results folder",  # before the first attack, not after its row
               lambda: _writable_folder(out, create=True) if rank0 else None)
    try:
        diag = None
        if protocol.diagnostics and rank0:
            diag = score_diagnostics(preset, arts, out, n=min(200, len(arts.split.x_test)))
            best = max(diag["ere_detection"], key=lambda d: d["auroc"])
            o.log(f"score net check: ERE detects PGD images with AUROC {best['auroc']:.3f} at σ = {best['sigma']:.3g} "
                  f"(mean ERE clean {best['ere_clean_mean']:.2f} vs adversarial {best['ere_adv_mean']:.2f}); samples in samples.png")
        t0 = time.perf_counter()
        results = evaluate(defences, protocol.attacks, protocol.threats, x, y, out, seed=protocol.seed, meta=meta,
                           progress=o.progress, batch_size=protocol.batch_size, applies=protocol.applies(spec_of),
                           shards=o.shards, deadline=o.deadline, log=o.log)
    except BaseException:
        if made and out.is_dir() and not any(out.iterdir()):  # refused before anything was written: leave no trace
            out.rmdir()
        raise
    eval_s = time.perf_counter() - t0
    run_ = Run(out, results, "", protocol, arts, defences, x, y, [], {})
    if not rank0:
        return run_

    stopped = "stopped" in results["meta"]
    plan = None if stopped else protocol.check_plan  # out of time: no checks, no example figure
    for d, s in zip(defences, protocol.defences):
        if s.examples and not stopped:
            example_figure(preset, d, x[:8], y[:8], out / "examples.png", steps=plan.bpda_steps if plan else 10)
    check_md = ""
    if plan is not None:
        lin = Threat("inf", preset.threats["inf"])
        nc = min(plan.n_check, len(x))
        done = _recorded_checks(out) if o.resume else []
        checked = fingerprint(x[:nc].cpu(), y[:nc].cpu())
        for d, s in zip(defences, protocol.defences):
            for grad in (plan.check_gradients if s.checks else ()):
                # everything a check's verdicts depend on: a resumed run reuses only an exact match
                ident = {"defence": d.name, "gradient": grad, "n": nc, "defence_fingerprint": d.fingerprint(),
                         "data_fingerprint": checked, "eps": lin.eps,
                         "steps": plan.check_steps, "square_queries": plan.square_queries, "revision": ATTACK_REVISION,
                         "checks_revision": CHECKS_REVISION}
                old = next((c for c in done if all(c.get(k) == v for k, v in ident.items())), None)
                if old is not None:
                    cs = [CheckResult(**c) for c in old["checks"]]
                    o.log(f"checks: {d.name} ({grad} gradient) reused from {out / 'checks.json'}")
                    warn_failed(d.name, cs)  # a reused failure warns as loudly as a fresh one
                else:
                    cs = obfuscation_checks(d, lin, x[:nc], y[:nc], gradient=grad, steps=plan.check_steps,
                                            square_queries=plan.square_queries,
                                            memo=_kept_flags(out / CHECKS_IN_PROGRESS, ident))
                check_md += format_checks(f"{d.name}, {grad} gradient, ℓ∞ ε={lin.eps:.4g}, n={nc}", cs) + "\n"
                run_.checks.append({**ident, "checks": [c.as_dict() for c in cs]})
                # saved as each finishes (with the earlier run's finished ones not redone here): a run stopped inside the
                # checks — they take an hour on a CPU for a purifier — resumes after the last one it saved
                atomic_write_json(out / "checks.json", run_.checks + [c for c in done if not _same_check(c, run_.checks)])
        atomic_write_json(out / "checks.json", run_.checks)  # an empty list when the plan runs no checks
        shutil.rmtree(out / CHECKS_IN_PROGRESS, ignore_errors=True)  # every check finished: its attacks' flags served

    header = f"# {protocol.title} — what ran\n\n{what} (n = {len(x)}). {protocol.describe}\n"
    if "stopped" in results["meta"]:
        header += f"\n**Stopped early** ({results['meta']['stopped']}): the rows below are the finished ones.\n"
    table = header + "\n" + render_table(results, "Robust accuracy per attack and worst case (headline)")
    if check_md:
        table += "\n## Obfuscation checks\n\n" + check_md
    if protocol.summary is not None:
        run_.study = protocol.summary(results, protocol, run_)
        atomic_write_json(out / "study.json", run_.study)
    if results["rows"]:
        plot_results(results, out / "robust_accuracy.png")
    run_.summary = {"seconds_total": round(time.perf_counter() - t_start, 1), "seconds_eval": round(eval_s, 1),
                    "score_diagnostics": diag, **meta}
    atomic_write_json(out / "summary.json", run_.summary)
    atomic_write_text(out / "table.md", table)  # last: its presence marks a finished run
    run_.table = table
    o.log(f"{protocol.kind}: {len(results['rows'])} rows in {time.perf_counter() - t_start:.0f} s → {out}")
    return run_
