"""ℓp balls intersected with the [0,1] box: exact projections, SAM ascent steps, norms.

Norms are named ``"inf"``, ``2`` or ``1`` (``float("inf")`` and the strings ``"linf"``,
``"l2"``, ``"l1"``, ``"2"``, ``"1"`` are accepted). Every function works per item on a batch
``(B, ...)``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["canonical_norm", "lp_norm", "project", "sam_step", "l1_outside_linf_ball", "BISECTION_STEPS"]

#: Bisection steps for the ℓ2/ℓ1 multipliers. 60 halvings of [0, 1] (or of [0, max|v−c|]) reach
#: the float64 resolution; the returned point is always the feasible end of the bracket.
BISECTION_STEPS = 60

_NAMES = {"inf": "inf", "linf": "inf", "l_inf": "inf", "2": 2, "l2": 2, "1": 1, "l1": 1}


def canonical_norm(p) -> str | int:
    """Normalise a norm name to ``"inf"``, ``2`` or ``1``; raise ``ValueError`` otherwise."""
    if isinstance(p, str):
        key = p.strip().lower()
        if key in _NAMES:
            return _NAMES[key]
    elif isinstance(p, (int, float)) and not isinstance(p, bool):
        if p == math.inf:
            return "inf"
        if p in (1, 2):
            return int(p)
    raise ValueError(f"unknown norm {p!r}: use 'inf', 2 or 1")


def lp_norm(x: torch.Tensor, p) -> torch.Tensor:
    """Per-item ℓp norm of a batch ``(B, ...)`` → ``(B,)``."""
    p = canonical_norm(p)
    flat = x.flatten(1)
    if p == "inf":
        return flat.abs().amax(1)
    if p == 2:
        return flat.pow(2).sum(1).sqrt()
    return flat.abs().sum(1)


def _per_item(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1)))


def _bisect(dist, lo, hi, eps, increasing: bool, steps: int = BISECTION_STEPS):
    """Per-item bisection for ``dist(t) = eps``; returns the end of the bracket that is feasible."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        over = dist(mid) > eps
        if increasing:  # distance grows with t: too far → move hi down
            hi = torch.where(over, mid, hi)
            lo = torch.where(over, lo, mid)
        else:  # distance falls with t: too far → move lo up
            lo = torch.where(over, mid, lo)
            hi = torch.where(over, hi, mid)
    return lo if increasing else hi


def _implicit(t0, g, g_t):
    """Keep the value ``t0`` but give it the implicit-function gradient ``dt = −dg / g_t``.

    ``g`` is the constraint residual (≈ 0 at ``t0``) computed with gradients w.r.t. the
    inputs; ``g_t`` its derivative in t, detached. One Newton step's derivative is exact at
    the root, so the projection is differentiable for the exact-gradient attack.
    """
    newton = t0 - g / g_t
    return t0 + (newton - newton.detach())


def _clip(y: torch.Tensor, box):
    return y if box is None else y.clamp(box[0], box[1])


def project(v: torch.Tensor, center: torch.Tensor, eps: float, p, box=(0.0, 1.0)) -> torch.Tensor:
    """Euclidean projection of ``v`` onto ``B_p(center, eps) ∩ [0,1]^d``, per item (exact).

    ``box=None`` drops the box (2-D toys live in R^d); ``box=(lo, hi)`` uses another box.

    ℓ∞ is an elementwise clamp. ℓ2 and ℓ1 solve the one-multiplier KKT system by bisection
    (method.md, "Projections"): ``y(t) = clamp(c + t (v − c))`` for ℓ2 (t = 1/(1+λ)) and
    ``y(λ) = clamp(c + soft(v − c, λ))`` for ℓ1. ``center`` must lie in the box.
    The result is differentiable in ``v`` and ``center`` (implicit gradient of the multiplier).
    """
    p = canonical_norm(p)
    if not eps > 0:
        raise ValueError(f"projection radius must be > 0, got eps={eps}")
    if v.shape != center.shape:
        raise ValueError(f"v {tuple(v.shape)} and center {tuple(center.shape)} differ in shape")
    if p == "inf":
        lo, hi = center - eps, center + eps
        if box is not None:
            lo, hi = lo.clamp_min(box[0]), hi.clamp_max(box[1])
        return torch.minimum(torch.maximum(v, lo), hi)

    d = v - center
    boxed = _clip(v, box)
    inside = lp_norm(boxed - center, p) <= eps
    if bool(inside.all()):
        return boxed
    lo_b, hi_b = (-math.inf, math.inf) if box is None else box

    def free_of(y):  # coordinates not held at a box face
        return ((y > lo_b) & (y < hi_b)).to(v.dtype)

    dd, cc = d.detach().double(), center.detach().double()
    one = torch.ones(v.shape[0], dtype=torch.float64, device=v.device)
    live = torch.is_grad_enabled() and (v.requires_grad or center.requires_grad)
    if p == 2:  # y(t) = clip(c + t (v − c)), t = 1/(1+λ) in [0, 1]; distance grows with t
        t = _bisect(lambda t: lp_norm(_clip(cc + _per_item(t, dd) * dd, box) - cc, 2), 0 * one, one, eps, True)
        t = t.to(v.dtype)
        if live:
            y_live = _clip(center + _per_item(t, v) * d, box)
            dist = lp_norm(y_live - center, 2)
            g_t = (free_of(y_live) * (y_live - center) * d).flatten(1).sum(1) / dist.clamp_min(1e-30)
            t = _implicit(t, dist - eps, g_t.detach().clamp_min(1e-30))
        y = _clip(center + _per_item(t, v) * d, box)
    else:  # y(λ) = clip(c + soft(v − c, λ)), λ in [0, max|v − c|]; distance falls with λ
        def y_of(lam, dv, c):
            return _clip(c + dv.sign() * (dv.abs() - _per_item(lam, dv)).clamp_min(0.0), box)

        lam = _bisect(lambda l: lp_norm(y_of(l, dd, cc) - cc, 1), 0 * one, dd.flatten(1).abs().amax(1), eps, False)
        lam = lam.to(v.dtype)
        if live:
            y_live = y_of(lam, d, center)
            g_t = -(free_of(y_live) * (d.abs() > _per_item(lam, d)).to(v.dtype)).flatten(1).sum(1)
            g_t = torch.where(g_t == 0, -torch.ones_like(g_t), g_t).detach()
            lam = _implicit(lam, lp_norm(y_live - center, 1) - eps, g_t)
        y = y_of(lam, d, center)
    return torch.where(_per_item(inside, v), boxed, y)


def sam_step(g: torch.Tensor, rho: float, q) -> torch.Tensor:
    """SAM ascent perturbation ``δ* = argmax_{‖δ‖_q ≤ ρ} ⟨g, δ⟩`` per item (Foret et al.; eq. 12).

    ``q = ∞``: ``ρ sign(g)``; ``q = 2``: ``ρ g / ‖g‖₂``; ``q = 1``: all of ``ρ`` on the coordinate
    of largest ``|g|``. An item whose gradient is zero gets ``δ = 0``. ``ρ = 0`` gives zeros.
    """
    q = canonical_norm(q)
    if rho < 0 or not math.isfinite(rho):
        raise ValueError(f"SAM radius rho must be finite and >= 0, got {rho}")
    if rho == 0:
        return torch.zeros_like(g)
    if q == "inf":
        return rho * g.sign()
    if q == 2:
        n = lp_norm(g, 2)
        scale = torch.where(n > 0, rho / n.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(n))
        return _per_item(scale, g) * g
    flat = g.flatten(1)
    idx = flat.abs().argmax(1, keepdim=True)
    out = torch.zeros_like(flat).scatter(1, idx, rho * flat.gather(1, idx).sign())
    return out.view_as(g)


def l1_outside_linf_ball(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """Per item, the ℓ1 distance from a clean image to the ℓ∞ ball of ``radius`` around its attacked version,
    ``delta = x_adv − x``: ``Σ_i max(|δ_i| − radius, 0)`` (each coordinate on its own: the nearest point of the ball
    moves every coordinate back by at most ``radius``).

    A purifier that searches the ℓ∞ ball of ε_pur around its input (eq. 12's constraint) returns a point at least
    this far from the clean image in ℓ1, whatever its objective: the part of a perturbation it cannot undo."""
    if not radius >= 0:
        raise ValueError(f"radius must be ≥ 0, got {radius}")
    return (delta.abs() - radius).clamp_min(0).flatten(1).sum(1)
