"""2-D toy experiments behind the book's first chapters: ERE landscapes, Proposition 1, SAM
against plain descent, and the data of the interactive slider views (Theorem 1: :mod:`pursamere.book.theorem1`).

Everything here is float64 and deterministic (fixed seeds); the notebooks only call these
functions and plot what they return.

Two facts the chapters rely on (both checked in ``tests/test_toys.py``):

* With ``M`` fixed draws, ``ê_σ`` of an affine score ``s(y) = H(y − x*)`` is minimised at
  ``x* − (σH)⁻¹(I + σ²H) z̄`` with ``z̄`` the mean draw: an offset of order ``|z̄|/σ`` that
  GROWS as ``σ → 0``. Antithetic draws (``z`` and ``−z``, ``NoiseBank(..., antithetic=True)``)
  make ``z̄ = 0`` exactly, which is why the toys use them.
* Proposition 1's remainder is ``O(σ⁴)`` for a σ-independent smooth score (odd Gaussian
  moments vanish), so its measured log–log slope is 4.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..method.ere import NoiseBank, ere
from ..method.purify import Purifier, PurifyConfig
from ..method.scores import GaussianMixture, Score

__all__ = [
    "toy_purifier", "FrozenSigma", "PlantedSpuriousScore",
    "ere_grid", "ere_exact_2d", "prop1_remainder", "fit_loglog_slope", "prop1_default_score",
    "planted_score", "planted_configs", "sam_vs_descent", "ring_starts", "square_starts", "SliderView", "slider_view", "draw_slider_view",
]

_F64 = torch.float64


# --------------------------------------------------------------------------- noise and purifier
def toy_purifier(score: Score, config: PurifyConfig, antithetic: bool = True) -> Purifier:
    """The package's Algorithm 1 with ``config.antithetic`` set as asked (toys default: on)."""
    return Purifier(score, config.replace(antithetic=antithetic))


class FrozenSigma:
    """A score evaluated at one fixed level ``sigma0`` whatever σ is asked: σ-independent.

    Proposition 1 as tested here is about a score ``s(·)`` that does not change with σ.
    """

    def __init__(self, score: Score, sigma0: float):
        self.score, self.sigma0 = score, float(sigma0)

    def __call__(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        return self.score(x, self.sigma0)


def _as_points(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=_F64)
    return x.reshape(1, -1) if x.ndim == 1 else x


# ------------------------------------------------------------------------------ ERE landscapes
def ere_grid(score: Score, xs, ys, sigma: float, m: int, seed: int = 0, antithetic: bool = True) -> np.ndarray:
    """Monte-Carlo ERE ``ê_σ`` (eq. 16) on the grid ``xs × ys`` with M fixed draws.

    Returns:
        array ``(len(ys), len(xs))``: row ``i`` is ``y = ys[i]`` (``contourf(xs, ys, Z)`` order).
    """
    bank = NoiseBank((2,), m, seed, antithetic=antithetic)
    gx, gy = np.meshgrid(np.asarray(xs, float), np.asarray(ys, float))
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=_F64)
    with torch.no_grad():
        e = ere(score, pts, sigma, bank)
    return e.numpy().reshape(gx.shape)


def _hermite_nodes(n: int):
    """Tensor-product Gauss–Hermite rule for E_z f(z), z ~ N(0, I_2): nodes (n², 2), weights (n²,)."""
    t, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / math.sqrt(2 * math.pi)
    zz = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    ww = np.outer(w, w).ravel()
    return torch.as_tensor(zz, dtype=_F64), torch.as_tensor(ww, dtype=_F64)


def ere_exact_2d(score: Score, x, sigma: float, n_nodes: int = 40, minus_d: bool = False) -> torch.Tensor:
    """The expectation ``e_σ(x) = E_z‖z + σ s(x + σz, σ)‖²`` (eq. 9) by Gauss–Hermite quadrature.

    Exact to float64 for scores that are smooth on the scale σ (a polynomial of degree
    < 2·n_nodes in z is integrated exactly). The identity ``E‖z‖² = d`` is used analytically:
    ``e_σ − d = 2σ E[zᵀ s] + σ² E‖s‖²``, so ``minus_d=True`` returns ``e_σ − d`` without the
    cancellation that subtracting ``d`` afterwards would cost.

    Args:
        x: points ``(B, 2)``.
    Returns:
        ``(B,)`` float64.
    """
    x = _as_points(x)
    z, w = _hermite_nodes(n_nodes)
    b, q = x.shape[0], z.shape[0]
    y = (x.unsqueeze(1) + sigma * z.unsqueeze(0)).reshape(b * q, 2)
    with torch.no_grad():
        s = score(y, sigma).reshape(b, q, 2)
    lin = 2 * sigma * ((z.unsqueeze(0) * s).sum(-1) * w).sum(-1)
    quad = sigma**2 * ((s**2).sum(-1) * w).sum(-1)
    return lin + quad + (0.0 if minus_d else float(x.shape[1]))


# ------------------------------------------------------------------------------- Proposition 1
def prop1_default_score() -> FrozenSigma:
    """A smooth, non-Gaussian, σ-independent score: a 3-component mixture frozen at σ0 = 0.3."""
    gm = GaussianMixture([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2]], [0.5, 0.4, 0.6], [0.5, 0.3, 0.2])
    return FrozenSigma(gm, 0.3)


def _hyvarinen(score: Score, x: torch.Tensor) -> torch.Tensor:
    """``‖s(x)‖² + 2 tr ∇s(x)`` per point, the trace by autograd (torch.func.jacrev)."""
    def one(p):
        return score(p.unsqueeze(0), 0.0)[0]

    jac = torch.vmap(torch.func.jacrev(one))(x)  # (B, 2, 2)
    s = score(x, 0.0)
    return (s**2).sum(-1) + 2 * jac.diagonal(dim1=1, dim2=2).sum(-1)


def prop1_remainder(score: Score, x, sigmas: Sequence[float], n_nodes: int = 40) -> np.ndarray:
    """Proposition 1's remainder ``e_σ(x) − d − σ²(‖s(x)‖² + 2 tr ∇s(x))`` (eq. 14), exactly.

    ``e_σ`` comes from Gauss–Hermite quadrature (:func:`ere_exact_2d`), not Monte Carlo, so the
    remainder is measured to float64 precision. ``score`` must not depend on σ
    (wrap a σ-dependent one in :class:`FrozenSigma`).

    Returns:
        array ``(len(sigmas), B)``.
    """
    x = _as_points(x)
    hyv = _hyvarinen(score, x)
    rows = [ere_exact_2d(score, x, float(s), n_nodes, minus_d=True) - float(s) ** 2 * hyv for s in sigmas]
    return torch.stack(rows).detach().numpy()


def fit_loglog_slope(sigmas, values):
    """Least-squares line through ``(log σ, log|value|)``.

    Returns:
        ``(slope, intercept, r2)``.
    """
    lx, ly = np.log(np.asarray(sigmas, float)), np.log(np.abs(np.asarray(values, float)))
    return _linfit(lx, ly)


def _linfit(u, v):
    slope, intercept = np.polyfit(u, v, 1)
    resid = v - (slope * u + intercept)
    ss = float(((v - v.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else 0.0
    return float(slope), float(intercept), r2


# ----------------------------------------------------------------------- SAM vs plain descent
class PlantedSpuriousScore:
    """A Gaussian-mixture score plus a narrow, steep bump: a planted sharp spurious ERE minimum.

    ``s(x, σ) = ∇log p_σ(x) + ∇[A exp(−‖x − c‖² / (2ℓ²))]``. The bump is σ-independent (it plays
    a score model's approximation error); its ``tr ∇s ≈ −2A/ℓ²`` makes ``e_σ`` very low, in a
    basin only ~ℓ wide, around ``c`` (Proposition 1's reading).

    Args:
        mixture: the smooth part (exact smoothed score at every σ).
        center: ``c``; amplitude: ``A`` (log-density units); width: ``ℓ``.
    """

    def __init__(self, mixture: GaussianMixture, center, amplitude: float, width: float):
        self.mixture = mixture
        self.center = torch.as_tensor(center, dtype=_F64).reshape(-1)
        self.amplitude, self.width = float(amplitude), float(width)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        diff = x - self.center.to(x)
        bump = self.amplitude * torch.exp(-0.5 * (diff**2).sum(-1, keepdim=True) / self.width**2)
        return self.mixture(x, sigma) - bump * diff / self.width**2


def planted_score() -> PlantedSpuriousScore:
    """The chapter's planted setting: one mode at the origin (std 0.3), a sharp bump at (0.8, 0.3)."""
    gm = GaussianMixture([[0.0, 0.0]], [0.3])
    return PlantedSpuriousScore(gm, center=(0.8, 0.3), amplitude=1.0, width=0.05)


def ring_starts(center, radius: float, n: int) -> torch.Tensor:
    """``n`` starting points evenly spaced on a circle (float64, ``(n, 2)``)."""
    t = torch.arange(n, dtype=_F64) * (2 * math.pi / n)
    return torch.as_tensor(center, dtype=_F64) + radius * torch.stack([t.cos(), t.sin()], 1)


def square_starts(center, half_width: float, n: int, seed: int = 1) -> torch.Tensor:
    """``n`` starting points uniform in a square around ``center`` (seeded, float64)."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n, 2, generator=g, dtype=_F64) * 2 - 1
    return torch.as_tensor(center, dtype=_F64) + half_width * u


def sam_vs_descent(score: Score, starts, config_sam: PurifyConfig, config_plain: PurifyConfig,
                   true_mode, tol: float, antithetic: bool = True) -> dict:
    """Fraction of starts that end within ``tol`` (ℓ2) of ``true_mode``, with and without SAM.

    Returns:
        dict with ``sam_rate``, ``plain_rate`` and the final points ``sam_end``, ``plain_end``
        (numpy ``(n, 2)``).
    """
    x0 = _as_points(starts)
    mode = torch.as_tensor(true_mode, dtype=_F64)
    res = {}
    for name, cfg in (("sam", config_sam), ("plain", config_plain)):
        x = toy_purifier(score, cfg, antithetic=antithetic)(x0)
        hit = (x - mode).norm(dim=-1) <= tol
        res[f"{name}_rate"] = float(hit.to(_F64).mean())
        res[f"{name}_end"] = x.numpy()
    return res


def planted_configs(rho: float = 0.3, eps_pur: float = 2.0, m: int = 16, sigma: float = 0.06,
                    steps: int = 80, lr_max: float = 0.1, lr_min: float = 0.02, seed: int = 0):
    """(SAM config, plain config) for the planted setting; they differ only in ρ.

    One noise level σ (no annealing), so the comparison isolates SAM. Found by the sweep in
    notebook 03: SAM escapes the planted well when ρ is a few times the well's width AND the
    Adam step is large enough to jump the well's "shadow" (see the chapter).
    """
    sam = PurifyConfig(eps_pur=eps_pur, norm=2, rho=rho, box=None, m=m, sigma_max=sigma, sigma_min=sigma,
                       n_levels=1, steps_per_level=steps, lr_max=lr_max, lr_min=lr_min, seed=seed)
    return sam, sam.replace(rho=0.0)


# ------------------------------------------------------------------------------------- sliders
@dataclass
class SliderView:
    """Data of one slider view: the ``ê_σ`` landscape and the two trajectories (``None`` where not asked)."""

    xs: np.ndarray
    ys: np.ndarray
    ere: np.ndarray | None  # (len(ys), len(xs))
    path_plain: np.ndarray | None  # (K+1, 2)
    path_sam: np.ndarray | None  # (K+1, 2)
    start: np.ndarray  # (2,)
    params: dict


VIEW_PARTS = ("ere", "plain", "sam")


def slider_view(sigma: float = 0.06, rho: float = 0.3, eps_pur: float = 2.0, m: int = 16, lr: float = 0.1,
                start_x: float = 0.85, start_y: float = 0.32, *, score: Score | None = None, steps: int = 80,
                grid: int = 61, extent=(-0.7, 1.3, -0.6, 0.9), seed: int = 0, parts=VIEW_PARTS) -> SliderView:
    """One view for the sliders: ``ê_σ`` on a grid and Algorithm 1's path with and without SAM.

    σ is held fixed (one level, ``steps`` Adam steps, rate falling from ``lr`` to ``lr/5``) so
    that every slider changes exactly one thing. The purification ball is ℓ2 (radius
    ``eps_pur``), no box. Defaults are the planted setting of :func:`planted_configs`. The live
    ipywidgets sliders and the book's precomputed frames (``pursamere.book.sliders``) both call it.

    Args:
        parts: which of ``"ere"`` (the landscape), ``"plain"`` and ``"sam"`` (the two paths) to
            compute; the others are ``None``. The landscape does not depend on ρ, ε_pur or the
            start, so a grid of views computes it once per (σ, M).
    """
    unknown = set(parts) - set(VIEW_PARTS)
    if unknown:
        raise ValueError(f"slider_view: unknown parts {sorted(unknown)}; choose from {VIEW_PARTS}")
    score = planted_score() if score is None else score
    xs = np.linspace(extent[0], extent[1], grid)
    ys = np.linspace(extent[2], extent[3], grid)
    z = ere_grid(score, xs, ys, sigma, m, seed) if "ere" in parts else None
    cfg = PurifyConfig(eps_pur=eps_pur, norm=2, rho=rho, box=None, m=m, sigma_max=sigma, sigma_min=sigma,
                       n_levels=1, steps_per_level=steps, lr_max=lr, lr_min=lr / 5, seed=seed)
    x0 = torch.tensor([[start_x, start_y]], dtype=_F64)
    paths = {"sam": None, "plain": None}
    for name, c in (("sam", cfg), ("plain", cfg.replace(rho=0.0))):
        if name in parts:
            _, tr = toy_purifier(score, c).run(x0, trace=True, keep_path=True)
            paths[name] = tr.path[:, 0].numpy()
    params = dict(sigma=sigma, rho=rho, eps_pur=eps_pur, m=m, lr=lr, start_x=start_x, start_y=start_y)
    return SliderView(xs, ys, z, paths["plain"], paths["sam"], x0[0].numpy(), params)


def draw_slider_view(ax, view: SliderView, colorbar: bool = True, legend: bool = True):
    """Draw a :class:`SliderView` on a matplotlib axis: landscape, ball, both paths."""
    import matplotlib.pyplot as plt

    lo = np.percentile(view.ere, 1)
    hi = np.percentile(view.ere, 95)
    cs = ax.contourf(view.xs, view.ys, np.clip(view.ere, lo, hi), levels=30, cmap="viridis")
    if colorbar:
        plt.colorbar(cs, ax=ax, label=r"$\hat e_\sigma(x)$ (dimensionless)")
    circ = plt.Circle(tuple(view.start), view.params["eps_pur"], fill=False, ls=":", color="white", lw=1)
    ax.add_patch(circ)
    ax.plot(*view.path_plain.T, "-", color="tab:red", lw=1.5, label="plain descent (ρ = 0)")
    ax.plot(*view.path_sam.T, "-", color="tab:orange", lw=1.5, label=f"SAM (ρ = {view.params['rho']:g})")
    ax.plot(*view.start, "o", color="white", ms=5, mec="k", label="start")
    ax.plot(*view.path_plain[-1], "x", color="tab:red", ms=8, mew=2)
    ax.plot(*view.path_sam[-1], "x", color="tab:orange", ms=8, mew=2)
    ax.set_xlim(view.xs[0], view.xs[-1])
    ax.set_ylim(view.ys[0], view.ys[-1])
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$ (data units)")
    ax.set_ylabel("$x_2$ (data units)")
    p = view.params
    ax.set_title(f"σ={p['sigma']:g}, ρ={p['rho']:g}, ε_pur={p['eps_pur']:g}, M={p['m']}", fontsize=9)
    if legend:
        ax.legend(loc="lower left", fontsize=7, framealpha=0.8)
    return ax
