"""``Defended``: a purified classifier ``f(P(x))`` with a chosen way for gradients to cross ``P``.

The three gradient rules of the paper's evaluation and ours (see :mod:`pursamere.evaluation.attacks`):
``"none"`` (gray-box: the attacker differentiates the classifier alone), ``"bpda"`` (straight-through:
the backward pass treats ``P`` as the identity) and ``"exact"`` (backpropagation through every step of
the unrolled purifier, checkpointed), plus partial unrolling between the last two.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..method.purify import straight_through

__all__ = ["Defended", "GRADIENTS", "supports_partial_unrolling", "supports_exact_gradient"]

#: How ``Defended`` lets gradients through the purifier.
GRADIENTS = ("exact", "bpda", "none")


def _run_purifier(purifier, x):
    """``P(x)`` detached from the caller's graph.

    Grad mode is switched ON inside: Algorithm 1 differentiates the ERE at every step, so it
    must run even when the caller evaluates under ``torch.no_grad()`` (or inside an autograd
    Function's forward, where grad mode is off).
    """
    with torch.enable_grad():
        out = purifier(x.detach())
    return out.detach()


def supports_exact_gradient(purifier) -> bool:
    """Whether the purifier can be differentiated exactly: it has ``unrolled(x, checkpoint=...)``."""
    return callable(getattr(purifier, "unrolled", None))


def supports_partial_unrolling(purifier) -> bool:
    """Whether ``purifier.unrolled`` takes ``last=k`` (partial unrolling, :class:`Defended`'s ``unroll_last``)."""
    fn = getattr(purifier, "unrolled", None)
    return callable(fn) and "last" in inspect.signature(fn).parameters


class Defended(nn.Module):
    """A purified classifier ``f(P(x))`` with a chosen way for gradients to cross ``P``.

    Args:
        classifier: an ``nn.Module`` ``x -> logits``.
        purifier: any callable ``x -> x`` (a :class:`pursamere.Purifier`, a baseline, …).
            Stochastic purifiers draw fresh noise on every call; attack them with
            ``pgd(..., eot=n)``.
        gradient:
            ``"exact"`` — backpropagate through every step of the purifier via
            ``purifier.unrolled(x, checkpoint=...)`` (white-box, exact);
            ``"bpda"`` — straight-through: the backward pass treats ``P`` as the identity, so
            the gradient is the classifier's input gradient at ``P(x)`` (the paper's BPDA-det);
            ``"none"`` — gray-box: the attacker sees only the classifier
            (:meth:`attack_surface`); the forward is not differentiable in ``x``.
        checkpoint: step-wise gradient checkpointing for ``"exact"`` (memory flat in K, forward value exact).
        unroll_last: with ``"exact"``, differentiate only the purifier's last ``unroll_last``
            steps and cross the rest straight-through (partial unrolling; ``0`` is BPDA,
            ``None`` every step; a value above the purifier's K means all K). Needs
            ``purifier.unrolled(x, checkpoint, last=k)``.

    The forward pass is the true defence ``classifier(purifier(x))`` (for ``"exact"`` as far as the
    purifier's ``unrolled`` is: ours are bit-exact when checkpointed; a user's may be a surrogate): with gradients
    off (evaluation), every mode simply calls ``purifier(x)``.

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> d = Defended(clf, lambda x: x.clamp(0.1, 0.9), gradient="bpda")
        >>> d(torch.rand(2, 1, 2, 2)).shape
        torch.Size([2, 3])
    """

    def __init__(self, classifier: nn.Module, purifier: Callable, gradient: str = "exact", checkpoint: bool = True,
                 unroll_last: Optional[int] = None):
        super().__init__()
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}: use one of {GRADIENTS}")
        if unroll_last is not None:
            if gradient != "exact":
                raise ValueError(f"unroll_last (partial unrolling) needs gradient='exact', got {gradient!r}")
            if isinstance(unroll_last, bool) or not isinstance(unroll_last, int) or unroll_last < 0:
                raise ValueError(f"unroll_last must be an integer >= 0, got {unroll_last!r}")
            if not supports_partial_unrolling(purifier):
                raise TypeError(f"unroll_last needs a purifier whose unrolled() takes last=k "
                                f"({type(purifier).__name__} does not)")
        if not callable(classifier) or not callable(purifier):
            raise TypeError("classifier and purifier must be callable")
        if gradient == "exact" and not supports_exact_gradient(purifier):
            raise TypeError(
                f"gradient='exact' needs a purifier with .unrolled(x, checkpoint=...) "
                f"({type(purifier).__name__} has none); use gradient='bpda' for a non-differentiable purifier"
            )
        self.classifier = classifier
        self.purifier = purifier  # registered as a submodule when it is one
        score = getattr(purifier, "score", None)
        if not isinstance(purifier, nn.Module) and isinstance(score, nn.Module):
            # so .to(), .eval(), .double() on the defence reach the purifier's score network
            self.purifier_score = score
        steps = getattr(getattr(purifier, "config", None), "steps", None)
        if unroll_last is not None and isinstance(steps, int):
            unroll_last = min(unroll_last, steps)  # more steps than the purifier has: all of them (exact)
        self.gradient, self.checkpoint, self.unroll_last = gradient, bool(checkpoint), unroll_last

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """``P(x)`` with this defence's gradient rule (see the class docstring)."""
        if not torch.is_grad_enabled():
            return _run_purifier(self.purifier, x)
        if self.gradient == "exact":
            if self.unroll_last is not None:
                return self.purifier.unrolled(x, checkpoint=self.checkpoint, last=self.unroll_last)
            return self.purifier.unrolled(x, checkpoint=self.checkpoint)
        if self.gradient == "bpda":
            return straight_through(x, _run_purifier(self.purifier, x))  # BPDA: identity backward
        return _run_purifier(self.purifier, x)  # gray-box: nothing flows through the purifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the defence, ``classifier(purifier(x))``."""
        return self.classifier(self.purify(x))

    def attack_surface(self) -> nn.Module:
        """The module an attacker differentiates: the bare classifier for ``"none"``, else the defence."""
        return self.classifier if self.gradient == "none" else self

    def extra_repr(self) -> str:
        extra = "" if self.unroll_last is None else f", unroll_last={self.unroll_last}"
        return f"gradient={self.gradient!r}, checkpoint={self.checkpoint}{extra}"
