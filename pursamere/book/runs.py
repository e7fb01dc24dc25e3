"""Book helpers: find the recorded run a chapter shows (or make a tiny one live) and say which it is.

A *run* is a results folder of the engine (``results.json``, ``table.md``, ``checks.json``,
``summary.json``, ``score_diagnostics.json``, ``samples.png``, ``examples.png``,
``robust_accuracy.png``, and ``study.json`` for studies). Chapters read them through
:func:`find_run`; with ``live_preset`` set they run the engine now (:func:`live_run`).

Example:
    >>> run = load_run("book/data/digits-demo")            # None when the folder has no run
    >>> run.results["meta"]["n"]                            # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = ["RunFolder", "load_run", "find_run", "live_run", "live_protocol", "run_banner"]

FILES = ("results.json", "table.md", "checks.json", "summary.json", "score_diagnostics.json",
         "samples.png", "examples.png", "robust_accuracy.png")


@dataclass
class RunFolder:
    """A finished run read from disk (``None`` fields: that file is missing)."""

    path: Path
    results: dict
    checks: Optional[list] = None
    summary: Optional[dict] = None
    diagnostics: Optional[dict] = None
    study: Optional[dict] = None
    missing: list = field(default_factory=list)

    def image(self, name: str) -> Optional[Path]:
        p = self.path / name
        return p if p.exists() else None

    @property
    def preset(self) -> str:
        return self.results["meta"].get("preset", "?")


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def load_run(path) -> Optional[RunFolder]:
    """The run in ``path``, or ``None`` when it holds no ``results.json``."""
    from ..evaluation.results import read_results

    p = Path(path)
    if not (p / "results.json").exists():
        return None
    return RunFolder(p, read_results(p), checks=_read(p / "checks.json"), summary=_read(p / "summary.json"),
                     diagnostics=_read(p / "score_diagnostics.json"), study=_read(p / "study.json"),
                     missing=[f for f in FILES if not (p / f).exists()])


def find_run(*candidates) -> Optional[RunFolder]:
    """The first of ``candidates`` (folders) that holds a run."""
    for c in candidates:
        if c is not None and (run := load_run(c)) is not None:
            return run
    return None


def live_protocol(preset, kind: str, **kw):
    """The protocol a chapter's live branch runs: ``"tables"`` (its ``plan``: "demo"/"full"), ``"ensemble"``,
    ``"sam-study"``, ``"attack-study"`` (``n``: validation images) or ``"convergence"`` (``steps``, ``restarts``)."""
    from ..experiments import protocols

    if kind == "tables":
        return protocols.tables(preset, getattr(preset, kw.get("plan", "demo")))
    if kind == "ensemble":
        return protocols.ensemble(preset, preset.ensemble)
    if kind == "sam-study":
        return protocols.sam_study(preset, n=kw.get("n"))
    if kind == "attack-study":
        return protocols.attack_study(preset, n=kw.get("n"))
    if kind == "convergence":
        return protocols.convergence(preset, kw.get("steps", 2), kw.get("restarts", 1), n=kw.get("n"))
    raise ValueError(f"unknown live protocol {kind!r}")


def live_run(preset: str, out_dir=None, workdir=None, plan: str = "demo", device: str = "cpu", kind: str = "tables",
             n: Optional[int] = None, **kw) -> RunFolder:
    """Train and evaluate ``preset`` now with the one engine, and read the run back.

    A finished run in ``out_dir`` of the same preset, protocol and images is shown as it is (the test
    suite makes one and shares it between chapters); a stopped one is resumed, its matching rows reused.
    A run of ANOTHER preset, protocol or set of images there is never overwritten: the live run then goes
    to a temporary folder. ``workdir`` holds the checkpoints (temporary by default).
    """
    import tempfile

    import torch

    from ..experiments.engine import Options, run
    from ..experiments.presets import get_preset

    p = get_preset(preset)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but no CUDA device is visible: pass device='cpu' for a CPU run")
    protocol = live_protocol(p, kind, plan=plan, n=n, **kw)
    out = Path(out_dir) if out_dir else None
    old = load_run(out) if out is not None else None
    same_images = old is not None and (protocol.images.n is None or old.results["meta"]["n"] == protocol.images.n)
    if old is not None and (old.preset != p.name or old.results["meta"].get("protocol") != protocol.kind or not same_images):
        out = None
    elif old is not None and (out / "table.md").exists() and "stopped" not in old.results["meta"]:
        print(f"showing the finished {p.name} {protocol.kind} run in {out}")
        return old
    out = out or Path(tempfile.mkdtemp(prefix=f"pursamere-{p.name}-{kind}-"))
    work = workdir or tempfile.mkdtemp(prefix=f"pursamere-{p.name}-work-")
    run(p, protocol, out, Options(workdir=str(work), device=device, progress=False, resume=True, log=lambda *a: None))
    return load_run(out)


def _show_path(path) -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def run_banner(run: Optional[RunFolder], wanted, expected: str = "digits") -> str:
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
