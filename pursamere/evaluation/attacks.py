"""Attacks on (purified) classifiers: the threat model and PGD in ℓ∞ / ℓ2 / ℓ1 with EoT.

The paper's evaluation (method.md, "Attacks used in the paper's evaluation") uses three
threat models, all built from this PGD and the ``Defended`` wrapper (:mod:`.defended`):

- gPGD (gray-box): PGD on the classifier alone, purifier applied afterwards —
  ``Defended(clf, pur, gradient="none")``.
- BPDA-det: PGD on ``f(P(x))`` with a straight-through (identity) backward pass for ``P``
  (Athalye et al. 2018 §4.1.1) — ``gradient="bpda"``.
- Exact white-box: backpropagation through every step of Algorithm 1 (checkpointed) —
  ``gradient="exact"``. Not run in the paper; the strongest attack on a deterministic purifier.
- BPDA+EoT for stochastic purifiers: ``pgd(..., eot=n)`` averages the gradient over ``n``
  forward/backward passes (Athalye et al. §4.2).

Evaluation code never branches on the threat model::

    defense = Defended(classifier, purifier, gradient="bpda")
    x_adv = pgd(defense, x, y, Threat("inf", 8 / 255), steps=20)   # attacks defense.attack_surface()
    acc = robust_accuracy(defense, x_adv, y)                        # always the full defence

Attacks share the signature ``(model, x, y, ...) -> x_adv``; models are any callable
``x -> logits`` (``nn.Module`` for torchattacks). Images are batches in ``[0, 1]``. Our APGD and
Square (:mod:`.apgd`, :mod:`.square`) follow the same conventions: ``seeds=image_seeds(x, seed)``
gives every image its own random start, so its run does not depend on its batch (:mod:`.starts`),
and ``stop_early=True`` drops an image once it is fooled (deterministic defences attacked whole).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..method.geometry import _per_item, canonical_norm, lp_norm, project
from ..method.purify import InvalidInputError, check_images
from .starts import finite_positive, image_seeds, start_points  # noqa: F401  (image_seeds: re-exported)

__all__ = ["Threat", "pgd", "one_step", "default_step_size", "margin_loss", "robust_accuracy", "slide_direction",
           "top_k_sign_direction", "image_seeds", "check_stop_early"]

_LOSSES = ("ce", "margin")
_BOX = (0.0, 1.0)


# ---------------------------------------------------------------------------------- threat model
@dataclass(frozen=True)
class Threat:
    """An ℓp threat model ``‖x_adv − x‖_p ≤ ε`` inside the ``[0, 1]`` box.

    Args:
        norm: ``"inf"``, ``2`` or ``1`` (aliases such as ``"linf"``, ``"l2"`` accepted).
        eps: the budget ε (> 0, finite). The paper's CIFAR-10 budgets: ℓ∞ 8/255, ℓ2 0.5, ℓ1 12.

    Example:
        >>> Threat("Linf", 8 / 255).norm
        'inf'
    """

    norm: str | int
    eps: float

    def __post_init__(self):
        try:
            object.__setattr__(self, "norm", canonical_norm(self.norm))
        except ValueError as err:
            raise ValueError(f"Threat: {err}") from None
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"Threat: eps must be a finite number > 0, got {eps!r}")
        object.__setattr__(self, "eps", float(eps))

    def __str__(self) -> str:
        return f"l{'∞' if self.norm == 'inf' else self.norm} eps={self.eps:.4g}"


def default_step_size(threat: Threat, steps: int) -> float:
    """PGD step size α (an ℓp length) when none is given.

    - ℓ∞ with ``steps <= 20``: ``max(ε/4, 2.5 ε/steps)``. ε/4 is the usual fixed step of
      short attacks (2/255 at ε = 8/255, the common choice the paper's lost value most
      likely was); the max keeps very short attacks able to reach the boundary of the ball
      (``steps = 1`` gives a full FGSM step, ``steps = 10`` gives ε/4 either way).
    - otherwise Madry et al.'s rule ``α = 2.5 ε / steps`` (the paper's 200-step attacks).
    """
    if threat.norm == "inf" and steps <= 20:
        return max(threat.eps / 4, 2.5 * threat.eps / steps)
    return 2.5 * threat.eps / steps


# ------------------------------------------------------------------------------------ losses
def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-item margin ``max_{j≠y} z_j − z_y`` (Carlini–Wagner); ``> 0`` iff misclassified.

    Returns:
        ``(B,)`` tensor.
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -math.inf)
    return others.amax(1) - z_y


def _loss(logits, y, kind):
    if kind == "ce":  # summed, so each image's gradient does not depend on the batch size
        return F.cross_entropy(logits, y, reduction="sum")
    return margin_loss(logits, y).sum()


# ------------------------------------------------------------------------------ ascent steps
def slide_direction(g: torch.Tensor, x: torch.Tensor, q: float = 0.95, box=_BOX) -> torch.Tensor:
    """SLIDE's ℓ1 ascent direction (Tramèr & Boneh 2019), unit ℓ1 length per item.

    Coordinates already at a box face in the direction of ``sign(g)`` cannot move, so they are
    dropped first; of the rest, those whose ``|g|`` is in the top ``q``-quantile (at least one)
    get ``sign(g_i)``, and the direction is scaled to ℓ1 norm 1. Plain ℓ1 steepest ascent
    moves one coordinate per step and stalls (method.md, "ℓ1 attacks"). An item with no
    movable coordinate of non-zero gradient gets zeros.

    Args:
        g: gradient ``(B, ...)``.
        x: current iterate (to find the box faces).
        q: sparsity, the quantile of ``|g|`` above which coordinates move (0 < q < 1).
    """
    flat_g = g.flatten(1)
    a = _movable_magnitude(flat_g, x.flatten(1), box)
    # k_i = number of coordinates above the q-quantile of the movable ones (>= 1)
    k = torch.ceil((1 - q) * (a > 0).sum(1).to(g.dtype)).long()
    return _top_k_sign(flat_g, a, k).view_as(g)


def _movable_magnitude(flat_g, flat_x, box):
    """``|g|`` with 0 where the box stops the coordinate from moving along ``sign(g)``."""
    blocked = ((flat_x <= box[0]) & (flat_g < 0)) | ((flat_x >= box[1]) & (flat_g > 0))
    return torch.where(blocked, torch.zeros_like(flat_g), flat_g.abs())


def top_k_sign_direction(g: torch.Tensor, x: torch.Tensor, k: torch.Tensor, box=_BOX) -> torch.Tensor:
    """The sparse ℓ1 ascent direction: ``sign(g_i)`` on the ``k`` movable coordinates of largest ``|g|``
    (ties at the k-th value all move), scaled to unit ℓ1 length; ``k`` is ``(B,)``, at least 1 is used.

    Coordinates at a box face in the direction of ``sign(g)`` cannot move and are never chosen; an item
    with no movable coordinate of non-zero gradient gets zeros. SLIDE (:func:`slide_direction`) and
    ℓ1-APGD (:func:`pursamere.evaluation.apgd.apgd`) differ only in how they choose ``k``.
    """
    flat_g = g.flatten(1)
    return _top_k_sign(flat_g, _movable_magnitude(flat_g, x.flatten(1), box), k).view_as(g)


def _top_k_sign(flat_g, a, k):
    """``sign(g)`` where ``a`` (the movable ``|g|``) is among its row's ``k`` largest and non-zero, unit ℓ1 rows."""
    k = k.to(torch.long).clamp(1, a.shape[1])
    top = a.sort(1, descending=True).values.gather(1, (k - 1)[:, None])
    e = torch.where((a >= top) & (a > 0), flat_g.sign(), torch.zeros_like(flat_g))
    return e / e.abs().sum(1, keepdim=True).clamp_min(1)


def _ascent(g, x, norm, alpha, q):
    """Steepest-ascent step of ℓp length α: sign (ℓ∞), normalised gradient (ℓ2), SLIDE (ℓ1)."""
    if norm == "inf":
        return alpha * g.sign()
    if norm == 2:
        n = lp_norm(g, 2)
        return _per_item(alpha / n.clamp_min(torch.finfo(g.dtype).tiny) * (n > 0), g) * g
    return alpha * slide_direction(g, x, q)


# ------------------------------------------------------------------------------------- checks
def _check_int(name, val, lo=1):
    if isinstance(val, bool) or not isinstance(val, int) or val < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")


def _check_attack_args(x, y, threat, steps, eot, loss, losses):
    """The checks every gradient attack makes first (threat, images, labels, counts, loss); returns the labels
    as ``long`` on the images' device."""
    if not isinstance(threat, Threat):
        raise TypeError(f"threat must be a Threat(norm, eps), got {type(threat).__name__}")
    check_images(x, box=_BOX, name="x")
    y = _check_labels(x, y)
    _check_int("steps", steps)
    _check_int("eot", eot)
    if loss not in losses:
        raise ValueError(f"unknown loss {loss!r}: use one of {losses}")
    return y


def _check_labels(x, y):
    if not isinstance(y, torch.Tensor):
        raise InvalidInputError(f"labels y must be a torch.Tensor, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InvalidInputError(f"labels y must be an integer tensor, got dtype {y.dtype}")
    if y.ndim != 1:
        raise InvalidInputError(f"labels y must have shape (B,), got {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise InvalidInputError(f"batch sizes differ: x has {x.shape[0]} images but y has {y.shape[0]} labels")
    return y.long().to(x.device)


def _check_logits(logits, x, y):
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InvalidInputError(f"model must return logits of shape (B={x.shape[0]}, classes), got {shape}")
    c = logits.shape[1]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= c:
        raise InvalidInputError(f"labels out of range: y has values in [{lo}, {hi}] but the model has {c} classes")


def _surface(model):
    """The module an attacker differentiates (``Defended.attack_surface``), else the model itself."""
    fn = getattr(model, "attack_surface", None)
    return fn() if callable(fn) else model


def check_stop_early(name: str, model, surface, eot: int) -> None:
    """Refuse early stopping where the tracked logits are not the defence's decision.

    The gray-box surface (the bare classifier) can be fooled while the defence is not, and a
    stochastic defence (attacked with ``eot > 1``) can be fooled by one lucky draw. A stochastic
    defence attacked with ``eot=1`` cannot be told apart here: the caller must not pass it.
    """
    if surface is not model:
        raise ValueError(f"{name}: stop_early needs the attacked surface to be the whole defence; this model's "
                         f"attack_surface() is another module (the gray-box classifier?), whose logits do not decide")
    if eot != 1:
        raise ValueError(f"{name}: stop_early is for deterministic defences, but eot={eot} "
                         f"(EoT is for stochastic ones)")


# ----------------------------------------------------------------------------------------- PGD
def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    threat: Threat,
    steps: int = 20,
    step_size: Optional[float] = None,
    loss: str = "ce",
    random_start: bool = True,
    eot: int = 1,
    seed: int = 0,
    l1_sparsity: float = 0.95,
    keep: str = "best",
    return_success: bool = False,
    x_init: Optional[torch.Tensor] = None,
    seeds: Optional[torch.Tensor] = None,
    stop_early: bool = False,
):
    """Projected gradient ascent (Madry et al. 2018) in ℓ∞, ℓ2 or ℓ1, with EoT.

    Each step: ``x ← Π_{B_p(x₀, ε) ∩ [0,1]^d}(x + α · ascent(∇ loss))`` with the ascent
    direction of the norm (sign for ℓ∞, ``g/‖g‖₂`` for ℓ2, SLIDE for ℓ1, see
    :func:`slide_direction`) and the exact projection of :func:`pursamere.method.geometry.project`.

    The forward pass of every step already gives the model's logits at the current iterate,
    so success is tracked for free: with ``keep="best"`` each image returns the iterate of
    largest margin ``max_{j≠y} z_j − z_y`` — a misclassified one whenever ANY iterate
    (including the final one) fooled the model, otherwise the one closest to the boundary.
    ``keep="last"`` returns the final iterate (plain PGD, as torchattacks does).

    If ``model`` has ``attack_surface()`` (a :class:`~pursamere.evaluation.defended.Defended`), that module is attacked and
    tracked: the defence itself for ``"exact"``/``"bpda"``, the bare classifier for the
    gray-box ``"none"``. Evaluate the result on the full defence (:func:`robust_accuracy`).

    The model is used as it is (its train/eval mode is not changed) and its parameters get
    no gradient.

    Args:
        model: ``x -> logits (B, classes)``; may be stochastic.
        x: clean images ``(B, ...)`` in ``[0, 1]``.
        y: integer labels ``(B,)``.
        threat: the :class:`Threat` (norm and ε).
        steps: number of gradient steps N (>= 1).
        step_size: α as an ℓp length; ``None`` → :func:`default_step_size`.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (:func:`margin_loss`).
        random_start: start from a uniform point of the ball (seeded, deterministic).
        eot: Expectation over Transformation: average the gradient over this many
            forward/backward passes (each pass of a stochastic model draws fresh noise);
            tracking uses the mean logits of those passes.
        seed: seed of the random start's ``torch.Generator`` (when ``seeds`` is None).
        l1_sparsity: SLIDE's quantile q (ℓ1 only); Tramèr & Boneh use q ≈ 0.8–0.99.
        keep: ``"best"`` (any-iterate success, above) or ``"last"``.
        return_success: also return a ``(B,)`` bool tensor, True where the kept iterate fooled
            the model during the attack.
        x_init: start from these points instead (for example another attack's end point: a warm
            start); they must lie in the box and in the threat's ball around ``x``. Overrides
            ``random_start``.
        seeds: one integer seed per image (``(B,)``, see
            :func:`~pursamere.evaluation.starts.image_seeds`): image i's random start comes from its
            own generator, so its start — and, for a batch-invariant model, its whole run — does not
            depend on the other images of the batch. ``None``: one generator for the batch (``seed``).
        stop_early: drop an image from the working batch as soon as an iterate fools the tracked
            logits, and return that iterate for it. Only valid when the tracked logits ARE the
            defence's decision: a deterministic model attacked as a whole (not the gray-box
            surface, whose classifier-only logits do not decide; not a stochastic defence, whose
            one noisy draw does not either). Needs ``keep="best"`` and ``eot=1``. The still-robust
            images run exactly as without it, so the success flags are the same (for a model whose
            per-image arithmetic does not depend on the batch, see :mod:`~pursamere.evaluation.starts`).

    Returns:
        ``x_adv`` (same shape and dtype as ``x``, inside the ball and the box), or
        ``(x_adv, success)``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 2])
        >>> x_adv = pgd(net, x, y, Threat("inf", 0.1), steps=5)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """
    y = _check_attack_args(x, y, threat, steps, eot, loss, _LOSSES)  # refuse bad data loudly, never repair it
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    if not 0 < l1_sparsity < 1:
        raise ValueError(f"l1_sparsity (SLIDE's quantile q) must be in (0, 1), got {l1_sparsity}")
    alpha = default_step_size(threat, steps) if step_size is None else finite_positive("step_size", step_size)
    surface = _surface(model)
    if stop_early:
        check_stop_early("pgd", model, surface, eot)
        if keep != "best":
            raise ValueError("pgd: stop_early returns the first fooling iterate, so it needs keep='best'")

    x0 = x.detach()
    cur = start_points(x0, threat, x_init, random_start, seed, seeds)
    n = x0.shape[0]
    best, best_margin = cur.clone(), torch.full((n,), -math.inf, dtype=x0.dtype, device=x0.device)
    # the working batch: images still attacked (all of them unless stop_early drops fooled ones)
    idx, xw, yw = torch.arange(n, device=x0.device), x0, y
    checked = False

    def track(point, logits):
        nonlocal checked
        if not checked:
            _check_logits(logits, x0, y)
            checked = True
        m = margin_loss(logits.detach(), yw).to(best_margin.dtype)
        better = m > best_margin[idx]
        best[idx] = torch.where(_per_item(better, point), point, best[idx])
        best_margin[idx] = torch.where(better, m, best_margin[idx])

    for _ in range(steps):
        grad = torch.zeros_like(cur)
        logits_sum = 0.0
        for _ in range(eot):  # EoT: mean gradient over fresh draws of a stochastic model
            xv = cur.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = surface(xv)
                if not checked:  # check labels before the loss indexes with them
                    _check_logits(logits, x0, y)
                (g,) = torch.autograd.grad(_loss(logits, yw, loss), xv)
            grad += g
            logits_sum = logits_sum + logits.detach()
        track(cur, logits_sum / eot)
        if stop_early:  # fooled images leave the batch with the iterate that fooled them
            alive = best_margin[idx] <= 0
            if not bool(alive.all()):
                idx, xw, yw, cur, grad = idx[alive], xw[alive], yw[alive], cur[alive], grad[alive]
                if idx.numel() == 0:
                    break
        step = _ascent(grad / eot, cur, threat.norm, alpha, l1_sparsity)
        cur = project(cur + step, xw, threat.eps, threat.norm, box=_BOX).detach()

    if idx.numel() > 0:
        with torch.no_grad():  # the final iterate has not been looked at yet
            track(cur, sum(surface(cur) for _ in range(eot)) / eot)
    if keep == "best":
        return (best, best_margin > 0) if return_success else best
    if not return_success:
        return cur
    with torch.no_grad():
        return cur, margin_loss(sum(surface(cur) for _ in range(eot)) / eot, y) > 0


def one_step(model, x, y, threat: Threat, loss: str = "ce", **kwargs):
    """FGSM / FGM: one full-length step from the clean point (``pgd`` with ``steps=1``).

    Used by the obfuscation checks: an iterative attack must do at least as well as this.
    """
    kwargs.setdefault("random_start", False)
    kwargs.setdefault("step_size", threat.eps)
    return pgd(model, x, y, threat, steps=1, loss=loss, **kwargs)


@torch.no_grad()
def robust_accuracy(model, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (the full defence) on ``x_adv``: the robust accuracy.

    Batched so large sets fit in memory; one forward per image (a stochastic defence is
    judged on one draw, as in the paper's tables).
    """
    check_images(x_adv, box=_BOX, name="x_adv")
    y = _check_labels(x_adv, y)
    correct = 0
    for i in range(0, x_adv.shape[0], batch_size):
        logits = model(x_adv[i:i + batch_size])
        _check_logits(logits, x_adv[i:i + batch_size], y[i:i + batch_size])
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    return correct / x_adv.shape[0]
