"""Theorem 1 on an exact toy: a piecewise-affine score whose ERE has a closed form.

``ere_exact_piecewise`` writes e_σ exactly (a Gaussian integral of ReLUs), ``ere_minimiser_exact``
minimises it by Newton's method, and ``theorem1_purifier_paths`` runs Algorithm 1 (SAM off) on the
same score, so the chapter compares the exact minimiser's error ``‖x̂_σ − x*‖`` (Theorem 1: it falls
like exp(−c r²/σ²)) with what the purifier does with M fixed draws. Everything is float64.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..method.ere import NoiseBank
from ..method.purify import PurifyConfig
from ..method.scores import PiecewiseAffinePotential
from .toys import _F64, _as_points, _linfit, toy_purifier

__all__ = ["theorem1_potential", "theorem1_broken_potential", "ere_exact_piecewise", "ere_minimiser_exact",
           "theorem1_errors", "theorem1_purifier_paths", "theorem1_purifier_errors", "fit_exponential", "mc_offset_affine"]


def theorem1_potential() -> PiecewiseAffinePotential:
    """ψ = −½‖x − x*‖² with two softer pieces: concave everywhere, Ω's nearest edge at r = 1.

    ``x* = (0.3, −0.2)``; kinks at ``x₁ = x*₁ + 1`` (a = −0.3, curvature −0.4 beyond) and
    ``x₂ = x*₂ + 1.4`` (a = −0.2, curvature −0.6 beyond). The pieces sit on one side only, so
    nothing forces ``x̂_σ = x*`` by symmetry; being less concave than Ω they also make ``x*``
    the global ERE minimiser (Proposition 1 prefers MORE concave places, so a stiffer piece
    would pull a purifier with a large ball away from ``x*``).
    """
    xs = (0.3, -0.2)
    return PiecewiseAffinePotential(xs, 1.0, w=[[1.0, 0.0], [0.0, 1.0]], b=[xs[0] + 1.0, xs[1] + 1.4], a=[-0.3, -0.2])


def theorem1_broken_potential() -> PiecewiseAffinePotential:
    """Assumption (3) broken: the maximiser sits ON a kink (r = 0); ψ stays concave.

    Right of ``x*`` the curvature is −5 (a = 2), left of it −1: the ERE prefers the more
    concave side, and ``x̂_σ`` sits a few σ inside it.
    """
    xs = (0.3, -0.2)
    return PiecewiseAffinePotential(xs, 1.0, w=[[1.0, 0.0]], b=[xs[0]], a=[2.0])


def _check_orthogonal(pot: PiecewiseAffinePotential):
    w = pot.w
    if w.shape[0] > 1:
        g = w @ w.T
        off = g - torch.diag(torch.diag(g))
        if float(off.abs().max()) > 1e-12:
            raise ValueError("ere_exact_piecewise needs pairwise orthogonal ReLU normals w_j")


def _norm_pdf(a):
    return torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)


def ere_exact_piecewise(pot: PiecewiseAffinePotential, delta: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact ``e_σ(x* + Δ) − (1 − λσ²)² d`` for a :class:`PiecewiseAffinePotential`, closed form.

    With ``s(y) = −λ(y − x*) − 2Σ_j a_j ReLU(w_jᵀy − b_j) w_j`` every term of
    ``E‖z + σ s(x + σz)‖²`` is a one-dimensional Gaussian integral of a ReLU, written with the
    scaled complementary error function so tails down to ``exp(−700)`` keep their relative
    precision. The argument is the displacement ``Δ = x − x*`` so that tiny ``‖x̂ − x*‖``
    are not rounded away. Needs pairwise orthogonal ``w_j`` (then cross terms vanish).

    Args:
        delta: ``(B, d)`` displacements from ``x*``.
    Returns:
        ``(B,)`` (the constant ``(1 − λσ²)² d`` is dropped; it does not move the minimiser).
    """
    _check_orthogonal(pot)
    lam = pot.lam
    out = (sigma * lam) ** 2 * (delta**2).sum(-1)
    for wj, bj, aj in zip(pot.w, pot.b, pot.a):
        om = float(wj.norm())
        tau = sigma * om
        mj = (pot.x_star @ wj - bj) + delta @ wj  # w_jᵀx − b_j, x = x* + Δ
        al = mj / tau
        # Gaussian integrals of ReLU(t), t ~ N(m, τ²), α = m/τ. For α < 0 write Φ(α) = φ(α)·M(α)
        # with M(α) = √(π/2)·erfcx(−α/√2): tails down to exp(−700) keep their relative precision.
        neg = al < 0
        an, ap = al.clamp(max=0.0), al.clamp(min=0.0)  # each branch sees only its safe inputs
        phin, phip = _norm_pdf(an), _norm_pdf(ap)
        mills = math.sqrt(math.pi / 2) * torch.special.erfcx(-an / math.sqrt(2))
        cdfp = torch.special.ndtr(ap)
        e_r = tau * torch.where(neg, phin * (1 + an * mills), ap * cdfp + phip)  # E ReLU(t)
        e_r2 = tau**2 * torch.where(neg, phin * ((an**2 + 1) * mills + an), (ap**2 + 1) * cdfp + ap * phip)  # E ReLU(t)²
        e_ru = sigma * om**2 * torch.where(neg, phin * mills, cdfp)  # E[ReLU(t) · w_jᵀz]
        aj = float(aj)
        out = out + 4 * sigma**2 * aj**2 * om**2 * e_r2
        out = out - 4 * sigma * (1 - sigma**2 * lam) * aj * e_ru
        out = out + 4 * sigma**2 * lam * aj * (delta @ wj) * e_r
    return out


def _grad_hess(f, d: torch.Tensor):
    """Gradient and Hessian of a scalar function of a small vector (plain autograd: fast here)."""
    d = d.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(d), d, create_graph=True)
    h = torch.stack([torch.autograd.grad(g[i], d, retain_graph=True)[0] for i in range(d.numel())])
    return g.detach(), h.detach()


def ere_minimiser_exact(pot: PiecewiseAffinePotential, sigma: float, iters: int = 60) -> torch.Tensor:
    """The minimiser ``Δ̂ = x̂_σ − x*`` of the exact ERE, by Newton steps (trust radius 0.1) from ``Δ = 0`` (float64)."""
    d = torch.zeros(pot.dim, dtype=_F64)
    f = lambda v: ere_exact_piecewise(pot, v.unsqueeze(0), sigma)[0]  # noqa: E731
    for _ in range(iters):
        g, h = _grad_hess(f, d)
        ev = torch.linalg.eigvalsh(h)
        # Newton where the ERE is locally convex, else a gradient step scaled by the curvature
        step = torch.linalg.solve(h, g) if bool((ev > 0).all()) else g / float(ev.abs().max())
        n = float(step.norm())
        if n > 0.1:  # trust radius: the ERE is smooth but only locally quadratic
            step, n = step * (0.1 / n), 0.1
        f0 = f(d)
        while n > 1e-300 and bool(f(d - step) > f0 + 1e-13 * abs(float(f0))):  # f must not rise
            step, n = step / 2, n / 2
        d = d - step
        if n <= 1e-12 * float(d.norm()) or n == 0.0:
            break
    return d


def theorem1_errors(pot: PiecewiseAffinePotential, sigmas: Sequence[float]) -> np.ndarray:
    """``‖x̂_σ − x*‖`` for each σ, ``x̂_σ`` the exact minimiser of the exact ERE (Theorem 1)."""
    return np.array([float(ere_minimiser_exact(pot, float(s)).norm()) for s in sigmas])


def theorem1_purifier_paths(pot: PiecewiseAffinePotential, x_start, sigma_final: float, *,
                            m: int = 64, antithetic: bool = True, sigma_max: float = 0.8,
                            n_levels: int = 8, steps_per_level: int = 40, lr_max: float = 0.05,
                            lr_min: float = 0.002, eps_pur: float = 2.0, seed: int = 0) -> np.ndarray:
    """Algorithm 1 with SAM off (ρ = 0, no box), annealed from ``sigma_max`` down to ``sigma_final``.

    Returns:
        every iterate, array ``(K+1, B, 2)`` (``[-1]`` is the purified point).
    """
    cfg = PurifyConfig(eps_pur=eps_pur, norm=2, rho=0.0, box=None, m=m, sigma_max=max(sigma_max, sigma_final),
                       sigma_min=sigma_final, n_levels=n_levels if sigma_max > sigma_final else 1,
                       steps_per_level=steps_per_level, lr_max=lr_max, lr_min=lr_min, seed=seed)
    _, tr = toy_purifier(pot, cfg, antithetic=antithetic).run(_as_points(x_start), trace=True, keep_path=True)
    return tr.path.numpy()


def theorem1_purifier_errors(pot: PiecewiseAffinePotential, x_start, sigmas_final: Sequence[float],
                             **kw) -> np.ndarray:
    """``‖x_K − x*‖`` of :func:`theorem1_purifier_paths` (same keywords) for each final σ.

    This is what the purifier actually does with M fixed draws, to compare with the exact
    minimiser of :func:`theorem1_errors`.

    Returns:
        array ``(len(sigmas_final), B)``.
    """
    x_star = pot.x_star.numpy()
    return np.array([np.linalg.norm(theorem1_purifier_paths(pot, x_start, float(sf), **kw)[-1] - x_star, axis=-1)
                     for sf in sigmas_final])


def mc_offset_affine(h, sigma: float, bank: NoiseBank) -> np.ndarray:
    """Minimiser offset ``x̂ − x* = −(σH)⁻¹(I + σ²H) z̄`` of ``ê_σ`` for an affine score ``H(y − x*)``."""
    h = torch.as_tensor(h, dtype=_F64)
    zbar = bank.z.reshape(bank.z.shape[0], -1).mean(0)
    eye = torch.eye(h.shape[0], dtype=_F64)
    return (-torch.linalg.solve(sigma * h, (eye + sigma**2 * h) @ zbar)).numpy()


def fit_exponential(sigmas, errors):
    """Fit ``log error = slope · (1/σ²) + intercept`` (Theorem 1's shape).

    Returns:
        ``(slope, intercept, r2)``; Theorem 1 predicts ``slope ≈ −c r²`` (here ``−r²/2``).
    """
    u = 1.0 / np.asarray(sigmas, float) ** 2
    return _linfit(u, np.log(np.asarray(errors, float)))
