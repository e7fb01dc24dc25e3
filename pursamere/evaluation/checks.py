"""Automatic checks that an evaluation is not fooled by obfuscated gradients.

After Athalye et al. (2018) and Carlini et al. (2019, "On evaluating adversarial robustness"),
AutoAttack-style: each check compares attacks that SHOULD be ordered, on a small fixed subset,
and a failure is printed loudly with the likely cause and the fix.

Orderings are tested PER IMAGE (the same images face both attacks), McNemar-style: of the
discordant images, ``b`` survived the attack that should be stronger but fell to the weaker one,
``c`` the reverse. The check fails when ``b − c > 1.645 √(b + c)`` (one-sided 5%) and ``b ≥ 2``;
a paired test is far sharper than comparing two accuracies on a dozen images.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass

import torch

from .attacks import Threat
from .defences import Defence
from .runner import attack_flags
from .suite import AttackSpec

__all__ = ["CheckResult", "obfuscation_checks", "format_checks", "warn_failed", "ObfuscationWarning", "CHECKS_REVISION"]

#: Revision of the checks themselves (their tests and thresholds): a resumed run reuses only verdicts of this one.
CHECKS_REVISION = 1


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


def _stronger(strong: torch.Tensor, weak: torch.Tensor) -> tuple[bool, str]:
    """Per-image test that the attack giving ``strong`` (survival flags) is at least as strong."""
    b = int((strong & ~weak).sum())  # survived the stronger attack, fell to the weaker one
    c = int((~strong & weak).sum())
    ok = not (b >= 2 and b - c > 1.645 * math.sqrt(b + c))
    return ok, f"discordant images {b} vs {c}"


def _flags(defence, spec, threat, x, y, seed, memo=None):
    run = lambda: attack_flags(defence, spec, threat, x, y, seed=seed)  # noqa: E731
    if memo is None:
        return run()
    key = json.dumps({"attack": dataclasses.asdict(spec), "norm": str(threat.norm), "eps": threat.eps, "seed": seed},
                     sort_keys=True, default=str)
    return memo(key, run).to(x.device)  # kept flags come back on the CPU


def _pct(f: torch.Tensor) -> str:
    return f"{100 * float(f.double().mean()):.1f}%"


def obfuscation_checks(defence: Defence, threat: Threat, x: torch.Tensor, y: torch.Tensor, gradient: str = "bpda",
                       steps: int = 10, square_queries: int = 300, seed: int = 0, warn: bool = True,
                       memo=None) -> list[CheckResult]:
    """Run the seven checks for one defence on a (small) subset ``x, y``.

    Args:
        gradient: the white-box gradient rule to test (``"bpda"`` or ``"exact"``).
        steps: PGD steps of the base iterative attack (the "more steps" check doubles it... ×4).
        memo: ``memo(key, run)`` returns the survival flags of the attack ``key`` names (its settings, threat and
            seed, as JSON), calling ``run()`` only when it has none kept. The engine keeps them on disk, so checks
            stopped half-way (an hour or more per gradient on a CPU) resume after the last attack that finished,
            and the gradient-free attacks (gray-box, Square) run once for both gradients. ``None``: run them all.
    """
    eot = 4 if defence.stochastic else 1
    it = AttackSpec("it", gradient=gradient, steps=steps, eot=eot)
    n = x.shape[0]
    res = []
    f_it = _flags(defence, it, threat, x, y, seed, memo)

    f_one = _flags(defence, AttackSpec("one", gradient=gradient, steps=1, eot=eot), threat, x, y, seed, memo)
    ok, why = _stronger(f_it, f_one)
    res.append(CheckResult("iterative ≥ one-step", ok, f"{steps}-step {_pct(f_it)} vs one-step {_pct(f_one)} ({why})",
                           "the loss surface seen by the gradient is noisy or shattered",
                           "use EoT for randomness, BPDA or exact gradients through the purifier, more restarts"))

    f_gray = _flags(defence, AttackSpec("gray", gradient="none", steps=steps), threat, x, y, seed, memo)
    ok, why = _stronger(f_it, f_gray)
    res.append(CheckResult("white-box ≥ gray-box", ok,
                           f"white-box ({gradient}) {_pct(f_it)} vs gray-box/transfer {_pct(f_gray)} ({why})",
                           "the white-box gradient is less informative than a transfer gradient: masking",
                           "attack with BPDA, or the exact gradient started from the transfer point; check the backward pass"))

    big = Threat("inf", 1.0)
    f_big = _flags(defence, AttackSpec("big", gradient=gradient, steps=steps, eot=eot), big, x, y, seed, memo)
    a_big = float(f_big.double().mean())
    res.append(CheckResult("ε = 1 (ℓ∞) breaks it", a_big <= 0.05 + 1.0 / n,
                           f"ℓ∞ ε=1 accuracy {100 * a_big:.1f}% (must be ≤ 5%)",
                           "an unbounded attacker cannot win: the gradient is zero, NaN or points nowhere",
                           "check gradients of the defended model, use BPDA, raise steps"))

    fs = [_flags(defence, it, Threat(threat.norm, threat.eps * 0.5), x, y, seed, memo), f_it,
          _flags(defence, it, Threat(threat.norm, threat.eps * 2.0), x, y, seed, memo)]
    tests = [_stronger(fs[i + 1], fs[i]) for i in range(2)]
    res.append(CheckResult("accuracy falls with ε", all(t[0] for t in tests),
                           "ε×{0.5,1,2}: " + ", ".join(_pct(f) for f in fs) + f" ({'; '.join(t[1] for t in tests)})",
                           "a larger budget that helps the defence means the attack is not optimising well",
                           "raise steps, tune the step size, add restarts"))

    f_more = _flags(defence, dataclasses.replace(it, steps=4 * steps), threat, x, y, seed, memo)
    ok, why = _stronger(f_more, f_it)
    res.append(CheckResult("more steps do not help the defence", ok,
                           f"{4 * steps} steps {_pct(f_more)} vs {steps} steps {_pct(f_it)} ({why})",
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
        f_sq = _flags(defence, AttackSpec("square", gradient="none", kind="square", queries=square_queries), threat, x, y, seed, memo)
        f_grad = f_it & f_more  # robust to both gradient attacks
        ok, why = _stronger(f_grad, f_sq)
        res.append(CheckResult("black-box does not beat gradients", ok,
                               f"Square ({square_queries} queries) {_pct(f_sq)} vs gradient attacks {_pct(f_grad)} ({why})",
                               "a gradient-free attack beating gradient attacks means the gradients are lying",
                               "the gradient attack is masked: use BPDA/exact gradients, EoT, the margin loss"))
    if warn:
        warn_failed(defence.name, res, stacklevel=3)
    return res


def warn_failed(name: str, checks: list[CheckResult], stacklevel: int = 2) -> None:
    """An :class:`ObfuscationWarning` for each failed check of the defence ``name`` (computed now or reused)."""
    for r in checks:
        if not r.passed:
            warnings.warn(f"[{name}] obfuscation check FAILED: {r.name} ({r.detail}). "
                          f"Likely cause: {r.cause}. Fix: {r.fix}.", ObfuscationWarning, stacklevel=stacklevel)


def format_checks(name: str, checks: list[CheckResult]) -> str:
    """Markdown list of verdicts for one defence."""
    lines = [f"**{name}**", ""]
    for c in checks:
        mark = "PASS" if c.passed else "**FAIL**"
        extra = "" if c.passed else f" — likely cause: {c.cause}; fix: {c.fix}"
        lines.append(f"- {mark} {c.name}: {c.detail}{extra}")
    return "\n".join(lines) + "\n"
