"""Automatic checks that an evaluation is not fooled by obfuscated gradients.

After Athalye et al. (2018) and Carlini et al. (2019, "On evaluating adversarial robustness"),
AutoAttack-style: each check compares attacks that SHOULD be ordered, on a small fixed subset,
and a failure is printed loudly with the likely cause and the fix. A check passes when the
ordering holds up to a statistical tolerance (two standard errors of the difference, at least
one image).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch

from .attacks import Threat
from .evaluate import AttackSpec, Defence, attack_flags

__all__ = ["CheckResult", "obfuscation_checks", "format_checks", "ObfuscationWarning"]


class ObfuscationWarning(UserWarning):
    """An obfuscation check failed: the evaluation's numbers are probably too optimistic."""


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    cause: str = ""
    fix: str = ""

    def as_dict(self):
        return dataclasses.asdict(self)


def _tol(a: float, b: float, n: int) -> float:
    p = max(min((a + b) / 2, 1 - 1 / n), 1 / n)
    return max(2 * math.sqrt(2 * p * (1 - p) / n), 1.0 / n)


def _acc(defence, spec, threat, x, y, seed):
    return float(attack_flags(defence, spec, threat, x, y, seed=seed).double().mean())


def obfuscation_checks(defence: Defence, threat: Threat, x: torch.Tensor, y: torch.Tensor, gradient: str = "bpda",
                       steps: int = 10, square_queries: int = 300, seed: int = 0, warn: bool = True) -> list[CheckResult]:
    """Run the seven checks for one defence on a (small) subset ``x, y``.

    Args:
        gradient: the white-box gradient rule to test (``"bpda"`` or ``"exact"``).
        steps: PGD steps of the base iterative attack (the "more steps" check doubles it... ×4).
    """
    eot = 4 if defence.stochastic else 1
    it = AttackSpec("it", gradient=gradient, steps=steps, eot=eot)
    n = x.shape[0]
    res = []
    a_it = _acc(defence, it, threat, x, y, seed)

    a_one = _acc(defence, AttackSpec("one", gradient=gradient, steps=1, eot=eot), threat, x, y, seed)
    res.append(CheckResult("iterative ≥ one-step", a_it <= a_one + _tol(a_it, a_one, n),
                           f"{steps}-step {100 * a_it:.1f}% vs one-step {100 * a_one:.1f}%",
                           "the loss surface seen by the gradient is noisy or shattered",
                           "use EoT for randomness, BPDA or exact gradients through the purifier, more restarts"))

    a_gray = _acc(defence, AttackSpec("gray", gradient="none", steps=steps), threat, x, y, seed)
    res.append(CheckResult("white-box ≥ gray-box", a_it <= a_gray + _tol(a_it, a_gray, n),
                           f"white-box ({gradient}) {100 * a_it:.1f}% vs gray-box/transfer {100 * a_gray:.1f}%",
                           "the white-box gradient is less informative than a transfer gradient: masking",
                           "attack with BPDA, or the exact gradient started from the transfer point; check the backward pass"))

    big = Threat("inf", 1.0)
    a_big = _acc(defence, AttackSpec("big", gradient=gradient, steps=steps, eot=eot), big, x, y, seed)
    res.append(CheckResult("ε = 1 (ℓ∞) breaks it", a_big <= 0.05 + 1.0 / n,
                           f"ℓ∞ ε=1 accuracy {100 * a_big:.1f}% (must be ≤ 5%)",
                           "an unbounded attacker cannot win: the gradient is zero, NaN or points nowhere",
                           "check gradients of the defended model, use BPDA, raise steps"))

    accs = []
    for f in (0.5, 1.0, 2.0):
        t = Threat(threat.norm, threat.eps * f)
        accs.append(a_it if f == 1.0 else _acc(defence, it, t, x, y, seed))
    mono = all(accs[i + 1] <= accs[i] + _tol(accs[i], accs[i + 1], n) for i in range(2))
    res.append(CheckResult("accuracy falls with ε", mono,
                           "ε×{0.5,1,2}: " + ", ".join(f"{100 * a:.1f}%" for a in accs),
                           "a larger budget that helps the defence means the attack is not optimising well",
                           "raise steps, tune the step size, add restarts"))

    a_more = _acc(defence, dataclasses.replace(it, steps=4 * steps), threat, x, y, seed)
    res.append(CheckResult("more steps do not help the defence", a_more <= a_it + _tol(a_it, a_more, n),
                           f"{4 * steps} steps {100 * a_more:.1f}% vs {steps} steps {100 * a_it:.1f}%",
                           "the attack has not converged or its gradient is unreliable",
                           "use more steps and a decaying step size (APGD), check the gradient"))

    model = defence.model(gradient)
    xg = x[: min(8, n)].clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(model(xg), y[: xg.shape[0]], reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    finite = bool(torch.isfinite(g).all())
    zero_frac = float((g.flatten(1).abs().sum(1) == 0).double().mean())
    res.append(CheckResult("gradients finite and non-zero", finite and zero_frac == 0.0,
                           f"finite={finite}, images with an all-zero gradient: {100 * zero_frac:.0f}%",
                           "a non-differentiable step (rounding, quantisation, argmax) or a saturated softmax",
                           "use BPDA through that step, the margin loss instead of cross-entropy, or float64"))

    if threat.norm in ("inf", 2):
        a_sq = _acc(defence, AttackSpec("square", gradient="none", kind="square", queries=square_queries), threat, x, y, seed)
        best_grad = min(a_it, a_more)
        res.append(CheckResult("black-box does not beat gradients", a_sq >= best_grad - _tol(a_sq, best_grad, n),
                               f"Square ({square_queries} queries) {100 * a_sq:.1f}% vs best gradient attack {100 * best_grad:.1f}%",
                               "a gradient-free attack beating gradient attacks means the gradients are lying",
                               "the gradient attack is masked: use BPDA/exact gradients, EoT, the margin loss"))
    if warn:
        for r in res:
            if not r.passed:
                warnings.warn(f"[{defence.name}] obfuscation check FAILED: {r.name} ({r.detail}). "
                              f"Likely cause: {r.cause}. Fix: {r.fix}.", ObfuscationWarning, stacklevel=2)
    return res


def format_checks(name: str, checks: list[CheckResult]) -> str:
    """Markdown list of verdicts for one defence."""
    lines = [f"**{name}**", ""]
    for c in checks:
        mark = "PASS" if c.passed else "**FAIL**"
        extra = "" if c.passed else f" — likely cause: {c.cause}; fix: {c.fix}"
        lines.append(f"- {mark} {c.name}: {c.detail}{extra}")
    return "\n".join(lines) + "\n"
