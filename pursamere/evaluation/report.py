"""``evaluate_purifier``: the honest evaluation of ANY purifier in one call, and its :class:`Report`.

What AutoAttack's ``run_standard_evaluation`` is for classifiers, this is for purifiers::

    report = evaluate_purifier(classifier, my_purifier, x, y, Threat("inf", 8 / 255))
    print(report.table())
    report.save("results/my-purifier")

It picks the attacks that apply to the purifier as given — the exact gradient through
``purifier.unrolled(x, checkpoint=True)`` when it has one, BPDA (straight-through) always,
EoT against a stochastic purifier — runs the standard ensemble as a cascade (an image counts as
robust only if it survives every attack), runs the obfuscation checks, and returns clean
accuracy, per-attack and worst-case robust accuracy with 95% Wilson intervals, the checks' flags
with their documented fixes, and the per-image outcomes.

A stochastic purifier is evaluated twice: as it is (BPDA+EoT, the worst case over fresh draws)
and with its randomness fixed by a known seed (a deterministic white-box attacker, as Liu et al.
2025 attacked DiffPure), when the seed can be fixed.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..io import atomic_write_json, atomic_write_text
from ..method.purify import InvalidInputError, check_images
from .attacks import Threat
from .checks import obfuscation_checks
from .defended import supports_exact_gradient
from .defences import Defence, Family, purifier_family
from .results import render_table
from .runner import evaluate
from .suite import Budget, applies, ensemble_suite, threat_budget

__all__ = ["evaluate_purifier", "Report", "FixedSeed", "is_stochastic"]


class FixedSeed:
    """A stochastic purifier with its randomness fixed: each image is purified alone, from the same seeded
    global RNG, so its noise depends neither on the call nor on the other images of the batch.

    Works for purifiers that draw from PyTorch's global generator (``torch.randn`` without a
    ``generator=``); :func:`evaluate_purifier` checks that the result is deterministic and
    batch-invariant before using it.
    """

    def __init__(self, purifier: Callable, seed: int = 0):
        self.purifier, self.seed = purifier, int(seed)
        if supports_exact_gradient(purifier):
            self.unrolled = self._unrolled

    def _run(self, fn, x):
        devices = [x.device] if x.device.type == "cuda" else []
        out = []
        for i in range(x.shape[0]):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                out.append(fn(x[i:i + 1]))
        return torch.cat(out)

    def __call__(self, x):
        return self._run(self.purifier, x)

    def _unrolled(self, x, checkpoint: bool = True):
        return self._run(lambda v: self.purifier.unrolled(v, checkpoint=checkpoint), x)


def is_stochastic(purifier: Callable, x: torch.Tensor) -> bool:
    """Whether two calls of ``purifier`` on the same images give different outputs."""
    with torch.enable_grad():  # Algorithm-1-style purifiers differentiate inside
        a, b = purifier(x.detach()).detach(), purifier(x.detach()).detach()
    return not torch.equal(a, b)


def _fixed_variant(purifier, seed: int, probe: torch.Tensor):
    """The purifier with its randomness fixed, or ``None`` when that cannot be done from outside."""
    cfg = getattr(purifier, "config", None)
    if cfg is not None and hasattr(cfg, "fixed_noise") and hasattr(cfg, "replace"):
        return type(purifier)(purifier.score, cfg.replace(fixed_noise=True, seed=seed))  # our baselines
    fixed = FixedSeed(purifier, seed)
    if is_stochastic(fixed, probe):
        return None
    with torch.enable_grad():  # batch-invariant too: the last images alone purify as inside the batch
        whole, part = fixed(probe.detach()).detach(), fixed(probe[1:].detach()).detach()
    return fixed if torch.equal(whole[1:], part) else None


def _output_tag(purifier, probe: torch.Tensor) -> str:
    """A hash of the purifier's output on the first images: a different purifier never reuses rows."""
    from ..io import fingerprint

    with torch.enable_grad():
        return fingerprint(purifier(probe.detach()).detach())


@dataclass
class Report:
    """What :func:`evaluate_purifier` found. ``results`` is the engine's results dictionary."""

    results: dict
    threat: Threat
    checks: list = field(default_factory=list)  # {"defence", "gradient", "n", "checks": [CheckResult dicts]}
    notes: list = field(default_factory=list)  # what was (or could not be) evaluated, in words

    @property
    def clean_acc(self) -> dict:
        """Clean accuracy per evaluated defence (the purifier as given, and its fixed-seed variant)."""
        return {w["defence"]: w["clean_acc"] for w in self.results["worst_case"]}

    @property
    def worst_case(self) -> dict:
        """Worst-case robust accuracy and its 95% interval per defence, as ``{name -> (acc, (lo, hi))}``."""
        return {w["defence"]: (w["robust_acc"], tuple(w["ci95"])) for w in self.results["worst_case"]}

    @property
    def per_attack(self) -> dict:
        """Robust accuracy per defence and attack (cascaded attacks cumulative, as AutoAttack prints them)."""
        return {w["defence"]: dict(w["per_attack"]) for w in self.results["worst_case"]}

    @property
    def per_image(self) -> dict:
        """Per defence, 1 for each image that survived every attack and 0 otherwise, in the order of the images."""
        return {w["defence"]: list(w["survived"]) for w in self.results["worst_case"]}

    @property
    def flags(self) -> list:
        """The failed obfuscation checks, each as (defence, check, detail, likely cause, documented fix)."""
        return [(c["defence"], k["name"], k["detail"], k["cause"], k["fix"])
                for c in self.checks for k in c["checks"] if not k["passed"]]

    def table(self) -> str:
        """Markdown: per-attack and worst-case accuracy, then the checks' verdicts and the notes."""
        out = render_table(self.results, f"Robust accuracy, {self.threat}")
        if self.checks:
            n_fail = len(self.flags)
            out += (f"\nObfuscation checks: {sum(len(c['checks']) for c in self.checks) - n_fail} passed, {n_fail} failed.\n")
            out += "".join(f"- **FAILED** [{d}] {name}: {detail}. Likely cause: {cause}. Fix: {fix}.\n"
                           for d, name, detail, cause, fix in self.flags)
        out += "".join(f"\n- {n}" for n in self.notes) + ("\n" if self.notes else "")
        return out

    def save(self, folder) -> Path:
        """Write ``results.json``, ``checks.json`` and ``table.md`` into ``folder`` (atomically)."""
        out = Path(folder)
        atomic_write_json(out / "results.json", self.results)
        atomic_write_json(out / "checks.json", self.checks)
        atomic_write_text(out / "table.md", self.table())
        return out


def evaluate_purifier(classifier: nn.Module, purifier: Optional[Callable], x: torch.Tensor, y: torch.Tensor,
                      threat: Threat, *, budget: Budget = Budget(), strong: bool = False,
                      stochastic: Optional[bool] = None, checks: bool = True, n_check: int = 32, seed: int = 0,
                      batch_size: int = 64, name: str = "purifier", out: Optional[str | Path] = None,
                      resume: bool = False, progress: bool = True) -> Report:
    """Evaluate ``classifier(purifier(x))`` against the standard ensemble at ``threat``; see the module docstring.

    Args:
        classifier: any ``nn.Module`` mapping images in [0, 1] to logits (put in eval mode here).
        purifier: any callable ``x -> x`` of the same shape (``None``: the classifier alone). With
            ``unrolled(x, checkpoint=True)`` it is also attacked with exact gradients.
        x, y: test images ``(N, C, H, W)`` in [0, 1] and integer labels.
        threat: the ℓp budget (:class:`~pursamere.evaluation.attacks.Threat`).
        budget: step counts of the ensemble (at ℓ1 it runs at twice these: :func:`~pursamere.evaluation.suite.threat_budget`).
            The default is the paper's 20 steps, which chapter 7 found not converged against a purifier on
            digits; the presets' chosen budgets are ``get_preset(name).ensemble.budget`` (digits: 80 steps, what
            ``pursamere evaluate --purifier`` runs). ``strong=True`` doubles every count (a convergence check:
            the worst case must not fall much further).
        stochastic: whether the purifier draws fresh randomness per call; ``None``: found by calling it
            twice on the first images.
        checks: run the obfuscation checks (on ``n_check`` images, BPDA and, when available, exact gradients).
        out: also write the report there (``results.json`` after every row); a folder that holds a
            finished report is refused unless ``resume`` (then the rows of the same purifier — same
            outputs on the first images — are reused).

    Returns:
        A :class:`Report`.
    """
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be a torch.nn.Module, got {type(classifier).__name__}")
    if purifier is not None and not callable(purifier):
        raise TypeError(f"purifier must be a callable x -> x, got {type(purifier).__name__}")
    if not isinstance(threat, Threat):
        raise TypeError(f"threat must be a Threat(norm, eps), got {type(threat).__name__}")
    check_images(x, name="x")
    if out is not None and (Path(out) / "table.md").exists() and not resume:
        raise FileExistsError(f"{out} already holds a finished report; choose another folder or pass resume=True")
    classifier.eval()
    probe = x[: min(8, len(x))]
    notes = []
    if purifier is not None:
        try:
            with torch.enable_grad():
                p_out = purifier(probe.detach())
        except Exception as e:  # the user's code: say so in one line
            raise ValueError(f"the purifier raised {type(e).__name__} on the first images: {e}") from e
        if not isinstance(p_out, torch.Tensor) or p_out.shape != probe.shape:
            shape = tuple(p_out.shape) if isinstance(p_out, torch.Tensor) else type(p_out).__name__
            raise InvalidInputError(f"the purifier must map x -> x of the same shape: {tuple(probe.shape)} → {shape}")
        if stochastic is None:
            stochastic = is_stochastic(purifier, probe)
            notes.append(f"the purifier is {'stochastic' if stochastic else 'deterministic'} "
                         "(two calls on the same images gave " + ("different" if stochastic else "identical") + " outputs)")
    family = Family.UNDEFENDED if purifier is None else purifier_family(purifier)
    fixed = _fixed_variant(purifier, seed, probe) if purifier is not None and stochastic else None
    # identity for resuming: the outputs on the first images (for a stochastic purifier, its fixed-seed outputs)
    tag = "" if purifier is None else _output_tag(fixed, probe) if fixed is not None else \
        _output_tag(purifier, probe) if not stochastic else f"unresumable-{time.time_ns()}"
    defences = [Defence(name, classifier, purifier, family=family, classifier_id="user", stochastic=bool(stochastic),
                        tag=tag)]
    if purifier is not None and stochastic:
        if fixed is None:
            notes.append("its randomness could not be fixed from outside (it does not draw from the global RNG, or "
                         "its noise depends on the batch): only the stochastic attack (BPDA+EoT) was run; expose a "
                         "seed to allow the white-box one")
        else:
            defences.append(Defence(f"{name} (fixed seed {seed})", classifier, fixed, family=family,
                                    classifier_id="user", stochastic=False, tag=tag))
    if purifier is not None and not supports_exact_gradient(purifier):
        notes.append("the purifier has no unrolled(x, checkpoint=...): attacked through BPDA and gradient-free "
                     "attacks only; an exact-gradient attack could be stronger")
    if strong:
        budget = budget.doubled()
    results = evaluate(defences, ensemble_suite(budget, [threat]), [threat], x, y, out, seed=seed, batch_size=batch_size,
                       applies=applies, progress=progress, meta={"protocol": "evaluate_purifier", "strong": strong,
                                                                 "budget": dataclasses.asdict(budget),
                                                                 "budget_at_threat": dataclasses.asdict(threat_budget(budget, threat.norm))})
    report = Report(results, threat, notes=notes)
    if checks:
        nc, at = min(n_check, len(x)), threat_budget(budget, threat.norm)
        for d in defences:
            grads = ["bpda"] + (["exact"] if d.has_purifier and d.deterministic and supports_exact_gradient(d.purifier) else [])
            for g in grads:
                cs = obfuscation_checks(d, threat, x[:nc], y[:nc], gradient=g, steps=at.bpda_steps // 2 or 1,
                                        square_queries=at.square_queries, seed=seed, warn=False)
                report.checks.append({"defence": d.name, "gradient": g, "n": nc, "checks": [c.as_dict() for c in cs]})
    if out is not None:
        report.save(out)
    return report
