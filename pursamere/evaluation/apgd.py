"""APGD (Auto-PGD, Croce & Hein 2020) in ℓ∞, ℓ2 and ℓ1 (Croce & Hein 2021): our own code, per-image seeded,
warm-startable, early-stopping, with the CE, DLR and targeted DLR losses.

Why not torchattacks' APGD: it draws the random start of the whole batch from the global RNG (an
image's run depends on its neighbours), cannot start from given points or stop early, and has no
targeted DLR. The algorithm (Croce & Hein 2020, §3, Algorithm 1):

- step size η⁽⁰⁾ = 2ε per image; each step (the momentum update, α = 0.75; the first step has none)
  ``z = P(x⁽ᵏ⁾ + η ascent(∇f(x⁽ᵏ⁾)))``, ``x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α (z − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))``,
  with ``P`` the exact projection onto the ball ∩ box and the ascent direction of the norm;
- checkpoints ``w_j = ⌈p_j N⌉`` with ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``;
- at a checkpoint an image's step size halves if (condition 1) its loss rose in fewer than
  ``ρ (w_j − w_{j−1})`` of the steps since the last checkpoint, ρ = 0.75, or (condition 2) its step
  size was not halved at the last checkpoint and its best loss has not improved since; a halved
  image restarts from its best-loss point ``x_max`` (with the gradient there);
- losses (§4): cross-entropy; DLR ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)``; targeted DLR
  ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)``, with π ordering the logits from the largest down.

ℓ1-APGD ("Mind the box", Croce & Hein 2021; AutoAttack's ℓ1 setting) changes the step and the schedule:

- the step moves ``sign(g_i)`` on the ``⌈share · d⌉`` coordinates of largest ``|g_i|`` (unit ℓ1 length, times
  η), with no momentum; coordinates the box holds (at 0 with ``g_i < 0``, at 1 with ``g_i > 0``) are never
  chosen (ours: they would waste the step's ℓ1 mass in the projection). ``share`` starts at 0.2;
- η⁽⁰⁾ = ε; every ``max(⌊0.04 N⌋, 1)`` steps the sparsity ``s = ‖x_max − x‖₀`` of the best-loss point sets
  ``share = s / (1.5 d)``; if ``s`` fell by more than 5% since the last check, η returns to ε and the
  run restarts from ``x_max``, else η /= 1.5 (never below ε/10);
- the radius schedule (``large_eps``): 30% of the steps in the 3ε ball, 30% in the 2ε ball, the rest
  in the ε ball, each stage starting from the previous one's best-loss point projected into its ball,
  the first from a standard normal step projected onto the 3ε ball (a sparse start). Only the last
  stage's iterates can count as adversarial. Measured on the 128 CIFAR-10 validation images against
  the shipped adversarially trained classifier at ε = 12 (APGD-CE, 20 steps): this code keeps 31–33
  images over three seeds, the reference's ℓ1 APGD (pyautoattack 0.2.0, ``use_largereps``) 31, SLIDE-PGD20 65.

Where the reference code (fra31/auto-attack) departs from the paper — checkpoint lengths in integer
steps, ``≤`` in condition 1, condition 2 never at the first checkpoint — this follows the paper; for
N = 100 the checkpoints coincide, and robust accuracies agree with torchattacks' copy of the reference
within its seed-to-seed spread (tests/test_apgd.py).

As in :func:`~pursamere.evaluation.attacks.pgd`, each image returns its iterate of largest margin
``max_{j≠y} z_j − z_y`` (a fooling one whenever any iterate fooled the tracked logits).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..method.geometry import _per_item, project
from ..method.purify import InvalidInputError
from .attacks import (Threat, _ascent, _check_attack_args, _check_int, _check_labels, _check_logits, _surface,
                      check_stop_early, margin_loss, top_k_sign_direction)
from .starts import check_seeds, finite_positive, image_seeds, per_image_draw, start_points

__all__ = ["apgd", "dlr_loss", "dlr_targeted_loss", "top_targets", "apgd_checkpoints", "l1_stages"]

_LOSSES = ("ce", "dlr", "dlr-t")
_MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr-t": 4}  # DLR reads z_π3, targeted DLR z_π4
_BOX = (0.0, 1.0)
_TINY = 1e-12  # keeps the DLR denominator away from 0 (all logits equal)


# ------------------------------------------------------------------------------------ losses
def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image DLR loss ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)`` (Croce & Hein 2020, §4); ``(B,)``.

    Invariant to shifting and scaling the logits, so it does not vanish where cross-entropy saturates.
    """
    top = logits.sort(1, descending=True).values
    return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + _TINY)  # margin_loss = max_{i≠y} z_i − z_y


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image targeted DLR ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)`` (§4); ``(B,)``. Ascending it
    pushes the target class ``t`` above the true class ``y``."""
    top = logits.sort(1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


def _loss(logits, y, target, kind):
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "dlr":
        return dlr_loss(logits, y)
    return dlr_targeted_loss(logits, y, target)


def top_targets(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` most likely wrong classes of each image, most likely first: ``(B, k)``.

    AutoAttack's APGD-T runs targeted DLR once per target, over the top classes at the clean point:
    ``for j in range(k): apgd(..., loss="dlr-t", target=T[:, j])``.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InvalidInputError(f"top_targets: logits must be a (B, classes) tensor, got {got}")
    y = _check_labels(logits, y)
    _check_logits(logits, logits, y)
    _check_int("k", k)
    if k > logits.shape[1] - 1:
        raise ValueError(f"top_targets: k={k} but there are only {logits.shape[1] - 1} wrong classes")
    return logits.detach().scatter(1, y[:, None], -math.inf).topk(k, dim=1).indices


def apgd_checkpoints(steps: int) -> list[int]:
    """The checkpoints ``w_1 < w_2 < … ≤ N`` at which APGD may halve its step size (§3).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``, ``w_j = ⌈p_j N⌉``;
    computed in hundredths so that no rounding error moves a checkpoint (0.7·100 is 70.00000000000001).
    """
    _check_int("steps", steps)
    p_prev, p, out = 0, 22, []
    while p <= 100:
        w = -(-p * steps // 100)  # ⌈p N / 100⌉ in integers
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    return out


# --------------------------------------------------------------------------------------- APGD
def apgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    threat: Threat,
    steps: int = 100,
    loss: str = "ce",
    target: Optional[torch.Tensor] = None,
    eot: int = 1,
    seed: int = 0,
    seeds: Optional[torch.Tensor] = None,
    x_init: Optional[torch.Tensor] = None,
    stop_early: bool = False,
    return_success: bool = False,
    rho: float = 0.75,
    momentum: float = 0.75,
    large_eps: bool = True,
):
    """APGD (Croce & Hein 2020) in ℓ∞, ℓ2 or ℓ1 with EoT; see the module docstring for the algorithm.

    Like :func:`~pursamere.evaluation.attacks.pgd`, it attacks ``model.attack_surface()`` when the
    model has one (a :class:`~pursamere.evaluation.defended.Defended`) and tracks success on it.

    Args:
        model: ``x -> logits (B, classes)``; may be stochastic (use ``eot``).
        x: clean images ``(B, ...)`` in ``[0, 1]``.
        y: integer labels ``(B,)``.
        threat: the :class:`~pursamere.evaluation.attacks.Threat` (ℓ∞, ℓ2 or ℓ1).
        steps: iterations N (>= 1); each costs one forward and backward pass per EoT sample (ℓ1 with the
            radius schedule: two passes more, the starts of its 3ε and 2ε stages).
        loss: ``"ce"``, ``"dlr"`` or ``"dlr-t"`` (targeted DLR; needs ``target``).
        target: ``(B,)`` target classes for ``"dlr-t"`` (see :func:`top_targets`), each ≠ its label.
        eot: gradient (and loss) averaged over this many passes of a stochastic model.
        seed: the run's seed; with ``seeds=None`` each image's seed is ``image_seeds(x, seed)``.
        seeds: one integer seed per image for its random start (``(B,)``): the start, and for a
            batch-invariant model the whole run, does not depend on the rest of the batch.
        x_init: start points (a warm start) instead of random ones; in the box and the ball.
        stop_early: drop an image once an iterate fools the tracked logits and return that iterate.
            Only for a deterministic defence attacked as a whole (not the gray-box surface, not a
            stochastic defence): see ``pgd``. Needs ``eot=1``.
        return_success: also return ``(B,)`` bools, True where some iterate fooled the tracked logits.
        rho: ρ of condition 1. momentum: α of the momentum update (ℓ∞ and ℓ2; ℓ1-APGD has none).
        large_eps: ℓ1 only: run the 3ε → 2ε → ε schedule (when ``x_init`` is not given and ``steps`` ≥ 5).

    Returns:
        ``x_adv`` (same shape and dtype as ``x``, in the ball and the box), or ``(x_adv, success)``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 2])
        >>> x_adv = apgd(net, x, y, Threat("inf", 0.1), steps=5)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """
    y = _check_attack_args(x, y, threat, steps, eot, loss, _LOSSES)  # refuse bad data loudly, never repair it
    if loss == "dlr-t":
        if target is None:
            raise ValueError("loss 'dlr-t' needs target: one target class per image (see top_targets)")
        target = _check_labels(x, target)
        if bool((target == y).any()):
            raise InvalidInputError(f"target equals the label for {int((target == y).sum())} images; "
                                    f"a target must be a wrong class")
    elif target is not None:
        raise ValueError(f"target is only used by loss 'dlr-t', not {loss!r}")
    if not 0 < finite_positive("rho", rho) <= 1 or not 0 < finite_positive("momentum", momentum) <= 1:
        raise ValueError(f"rho and momentum must be in (0, 1], got rho={rho}, momentum={momentum}")
    surface = _surface(model)
    if stop_early:
        check_stop_early("apgd", model, surface, eot)

    x0 = x.detach()
    seeds = image_seeds(x0, seed) if seeds is None else check_seeds(seeds, x0)
    stages = l1_stages(steps) if threat.norm == 1 and x_init is None and large_eps else []
    if stages:  # ℓ1: 3ε then 2ε, each stage started where the last one's loss was best; never counted as success
        # a sparse start: a standard normal step (each image's own draw) projected onto the 3ε ball
        start = x0 + per_image_draw(x0, seeds, lambda xi, gen: torch.randn(xi.shape, generator=gen, dtype=xi.dtype)
                                    ).to(x0.device)
        for mult, n_k in stages[:-1]:
            th = Threat(1, mult * threat.eps)
            init = project(start, x0, th.eps, 1, box=_BOX)
            start = _run(surface, x0, y, target, th, n_k, loss, eot, seeds, init, False, rho, momentum)[2]
        x_init, steps = project(start, x0, threat.eps, 1, box=_BOX), stages[-1][1]
    best, best_margin, _ = _run(surface, x0, y, target, threat, steps, loss, eot, seeds, x_init, stop_early, rho,
                                momentum)
    return (best, best_margin > 0) if return_success else best


def l1_stages(steps: int) -> list[tuple[int, int]]:
    """ℓ1-APGD's radius schedule ``[(multiple of ε, steps), …]``: 30% of the steps at 3ε, 30% at 2ε, the
    rest at ε (Croce & Hein 2021, §3.3; AutoAttack's ℓ1 setting), each part rounded up. Empty (one run at
    ε) when fewer than 5 steps leave the last stage nothing."""
    _check_int("steps", steps)
    a = -(-3 * steps // 10)  # ⌈0.3 N⌉
    return [(3, a), (2, a), (1, steps - 2 * a)] if steps - 2 * a >= 1 else []


def _run(surface, x0, y, target, threat, steps, loss, eot, seeds, x_init, stop_early, rho, momentum):
    """One APGD run at ``threat``: ``(best-margin points, their margins, best-loss points)`` for all images."""
    n, l1 = x0.shape[0], threat.norm == 1
    best = start_points(x0, threat, x_init, True, seeds=seeds)
    best_margin = torch.full((n,), -math.inf, dtype=x0.dtype, device=x0.device)
    x_max_all = best.clone()  # each image's best-loss point, kept when it leaves the batch
    checked = False

    def evaluate(z, yw, tw, need_grad=True):
        """Loss, gradient and logits at ``z``, each the mean over ``eot`` passes (EoT)."""
        nonlocal checked
        f, g, logits_sum = 0.0, torch.zeros_like(z), 0.0
        for _ in range(eot):
            zv = z.detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                logits = surface(zv)
                if not checked:  # before the loss indexes with labels and sorted logits
                    _check_logits(logits, x0, y)
                    if logits.shape[1] < _MIN_CLASSES[loss]:
                        raise InvalidInputError(f"loss {loss!r} needs at least {_MIN_CLASSES[loss]} classes, "
                                                f"the model has {logits.shape[1]}")
                    if tw is not None:
                        _check_logits(logits, x0, tw)
                    checked = True
                li = _loss(logits, yw, tw, loss)
                if need_grad:
                    g = g + torch.autograd.grad(li.sum(), zv)[0]  # summed: each image's gradient is its own
            f, logits_sum = f + li.detach(), logits_sum + logits.detach()
        return f / eot, g / eot, logits_sum / eot

    # the working batch (images still attacked) and its per-image state
    idx, xw, yw, tw = torch.arange(n, device=x0.device), x0, y, target
    cur = best.clone()

    def track(point, logits):
        m = margin_loss(logits, yw).to(best_margin.dtype)
        better = m > best_margin[idx]
        best[idx] = torch.where(_per_item(better, point), point, best[idx])
        best_margin[idx] = torch.where(better, m, best_margin[idx])

    f, grad, logits = evaluate(cur, yw, tw)
    track(cur, logits)
    prev, x_max, f_max, g_max = cur, cur, f, grad  # x_max: the best-loss point (restarts go there)
    eta0 = threat.eps if l1 else 2 * threat.eps  # η⁽⁰⁾ = 2ε (ℓ∞, ℓ2); ε for ℓ1 (Croce & Hein 2021)
    eta = torch.full((n,), eta0, dtype=x0.dtype, device=x0.device)
    f_last, n_rises = f, torch.zeros(n, dtype=torch.long, device=x0.device)
    halved_last, f_max_last = torch.zeros(n, dtype=torch.bool, device=x0.device), f_max
    checkpoints, w_prev = apgd_checkpoints(steps), 0
    # ℓ1: the share of coordinates a step moves, adapted to the sparsity ‖x_max − x‖₀ of the best point
    d = x0[0].numel()
    sparsity = lambda z, c: ((z - c).flatten(1) != 0).sum(1).to(x0.dtype)  # noqa: E731
    if x_init is None:
        share, sp_old = torch.full((n,), 0.2, dtype=x0.dtype, device=x0.device), torch.full((n,), float(d), dtype=x0.dtype,
                                                                                           device=x0.device)
    else:
        sp_old = sparsity(cur, x0)
        share = sp_old / (1.5 * d)
    l1_every = max(int(0.04 * steps), 1)

    for k in range(steps):
        if stop_early:  # fooled images leave the batch with the iterate that fooled them
            alive = best_margin[idx] <= 0
            if not bool(alive.all()):
                x_max_all[idx] = x_max
                (idx, xw, yw, cur, prev, grad, x_max, f_max, g_max, eta, f_last, n_rises, halved_last, f_max_last,
                 share, sp_old) = (t[alive] for t in (idx, xw, yw, cur, prev, grad, x_max, f_max, g_max, eta, f_last,
                                                      n_rises, halved_last, f_max_last, share, sp_old))
                tw = None if tw is None else tw[alive]
                if idx.numel() == 0:
                    break
        if l1:  # ℓ1 (no momentum): x⁺ = P(x + η · sign(g) on the ⌈share·d⌉ largest movable |g_i|, unit ℓ1 length)
            k_i = torch.ceil(share * d)
            nxt = project(cur + _per_item(eta, cur) * top_k_sign_direction(grad, cur, k_i, _BOX), xw, threat.eps, 1,
                          box=_BOX)
        else:  # the momentum update (Alg. 1): z = P(x + η ascent), x⁺ = P(x + α(z − x) + (1 − α)(x − x⁻))
            a = 1.0 if k == 0 else momentum
            z = project(cur + _per_item(eta, cur) * _ascent(grad, cur, threat.norm, 1.0, 0.5), xw, threat.eps,
                        threat.norm, box=_BOX)
            nxt = project(cur + a * (z - cur) + (1 - a) * (cur - prev), xw, threat.eps, threat.norm, box=_BOX)
        prev, cur = cur, nxt.detach()
        last = k == steps - 1  # the final iterate needs its logits only
        f, grad, logits = evaluate(cur, yw, tw, need_grad=not last)
        track(cur, logits)
        n_rises = n_rises + (f > f_last).long()
        f_last = f
        up = f > f_max
        x_max = torch.where(_per_item(up, cur), cur, x_max)
        g_max = torch.where(_per_item(up, cur), grad, g_max)
        f_max = torch.where(up, f, f_max)
        if l1 and (k + 1) % l1_every == 0 and not last:
            # every ⌊0.04 N⌋ steps: if the best point got sparser by more than 5%, reset η to ε and restart there;
            # else η /= 1.5 (kept within [ε/10, ε]); the share follows the best point's sparsity / 1.5
            sp = sparsity(x_max, xw)
            reset = sp / sp_old < 0.95
            eta = torch.where(reset, torch.full_like(eta, eta0), eta / 1.5).clamp(eta0 / 10, eta0)
            share, sp_old = sp / (1.5 * d), sp
            cur = torch.where(_per_item(reset, cur), x_max, cur)
            grad = torch.where(_per_item(reset, cur), g_max, grad)
        elif not l1 and k + 1 in checkpoints and not last:
            w = k + 1
            cond1 = n_rises.to(x0.dtype) < rho * (w - w_prev)  # condition 1: too few rises
            cond2 = ~halved_last & (f_max <= f_max_last)  # condition 2: no halving, no progress
            halve = cond1 | cond2
            eta = torch.where(halve, eta / 2, eta)
            cur = torch.where(_per_item(halve, cur), x_max, cur)  # restart from the best point
            grad = torch.where(_per_item(halve, cur), g_max, grad)
            halved_last, f_max_last, n_rises, w_prev = halve, f_max, torch.zeros_like(n_rises), w
    if idx.numel():
        x_max_all[idx] = x_max
    return best, best_margin, x_max_all
