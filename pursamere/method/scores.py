"""Score models: the ``Score`` protocol, exact analytic scores for 2-D toys, sigma ladders.

A score is any callable ``score(x, sigma) -> tensor like x`` that approximates
``∇_x log p_σ(x)`` (eq. 5). ``sigma`` is a Python float or a tensor of shape ``(B,)``
(one level per item, as in denoising score matching).
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence, runtime_checkable

import torch

__all__ = ["Score", "GaussianMixture", "PiecewiseAffinePotential", "AffineScore", "sigma_ladder"]


@runtime_checkable
class Score(Protocol):
    """``(x, sigma) -> tensor like x``: an estimate of ``∇_x log p_σ(x)`` (eq. 5)."""

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor: ...


def _sigma_column(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-item sigma of shape (B,) against ``x`` of shape (B, ...)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        return s
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s.view(-1, *([1] * (x.ndim - 1)))


def sigma_ladder(first: float, last: float, n: int) -> torch.Tensor:
    """Geometric ladder ``first = σ_1 > … > σ_n = last`` (NCSNv2's rule), float64.

    Example:
        >>> sigma_ladder(1.0, 0.01, 3)
        tensor([1.0000, 0.1000, 0.0100], dtype=torch.float64)
    """
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0 or last <= 0:
        raise ValueError(f"sigma_ladder needs positive finite ends, got first={first}, last={last}")
    if n < 1 or int(n) != n:
        raise ValueError(f"sigma_ladder needs a positive integer number of levels, got n={n}")
    if n == 1:
        if first != last:
            raise ValueError("sigma_ladder with n=1 needs first == last")
        return torch.tensor([float(first)], dtype=torch.float64)
    if last >= first:
        raise ValueError(f"sigma_ladder must decrease: first={first} must exceed last={last}")
    return torch.exp(torch.linspace(math.log(first), math.log(last), int(n), dtype=torch.float64))


class GaussianMixture:
    """Isotropic Gaussian mixture in R^d with its EXACT smoothed score ∇ log p_σ for every σ.

    ``p_σ = Σ_k π_k N(μ_k, (s_k² + σ²) I)`` (eq. 2), so the score is a responsibility-weighted
    sum of ``(μ_k − x) / (s_k² + σ²)``.

    Args:
        means: ``(K, d)`` component means.
        stds: ``(K,)`` component standard deviations (> 0).
        weights: ``(K,)`` mixture weights (normalised here); uniform when omitted.
    """

    def __init__(self, means: Sequence, stds: Sequence, weights: Sequence | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(self.means.shape)}")
        k = self.means.shape[0]
        if self.stds.shape != (k,) or not bool((self.stds > 0).all()):
            raise ValueError("stds must be K positive numbers, one per mean")
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or not bool((w > 0).all()):
            raise ValueError("weights must be K positive numbers, one per mean")
        self.weights = w / w.sum()
        self.dim = self.means.shape[1]

    def _parts(self, x: torch.Tensor, sigma):
        mu = self.means.to(x)
        var = self.stds.to(x) ** 2 + torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1) ** 2  # (B|1, K)
        diff = mu.unsqueeze(0) - x.unsqueeze(1)  # (B, K, d)
        logc = torch.log(self.weights.to(x)) - 0.5 * self.dim * torch.log(2 * math.pi * var) - 0.5 * (diff**2).sum(-1) / var
        return diff, var, logc

    def log_density(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``log p_σ(x)`` for ``x`` of shape (B, d)."""
        _, _, logc = self._parts(x, sigma)
        return torch.logsumexp(logc, dim=1)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        diff, var, logc = self._parts(x, sigma)
        resp = torch.softmax(logc, dim=1)  # (B, K)
        return ((resp / var).unsqueeze(-1) * diff).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` points from the unsmoothed mixture (float64)."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[idx] + self.stds[idx, None] * z


class PiecewiseAffinePotential:
    """``ψ(x) = −½λ‖x − x*‖² − Σ_j a_j ReLU(w_jᵀx − b_j)²`` and its score ``∇ψ`` (σ-independent).

    The score is continuous, piecewise affine on a partition fixed by the hyperplanes
    ``w_jᵀx = b_j`` and a gradient field: the setting of Theorem 1. Where every ReLU is off,
    ψ is λ-strongly concave with maximiser ``x*``. Negative ``a_j`` make the potential rise
    again away from ``x*`` (a non-concave region), which is how the notebooks break the
    theorem's assumptions on purpose.
    """

    def __init__(self, x_star: Sequence, lam: float, w: Sequence = (), b: Sequence = (), a: Sequence = ()):
        self.x_star = torch.as_tensor(x_star, dtype=torch.float64).reshape(-1)
        d = self.x_star.numel()
        if lam <= 0:
            raise ValueError(f"lam must be > 0 (strong concavity), got {lam}")
        self.lam = float(lam)
        self.w = torch.as_tensor(w, dtype=torch.float64).reshape(-1, d)
        self.b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
        self.a = torch.as_tensor(a, dtype=torch.float64).reshape(-1)
        if not (self.w.shape[0] == self.b.numel() == self.a.numel()):
            raise ValueError("w, b and a must describe the same number of ReLU pieces")
        self.dim = d

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """ψ(x) for ``x`` of shape (B, d)."""
        q = -0.5 * self.lam * ((x - self.x_star.to(x)) ** 2).sum(-1)
        if self.a.numel():
            q = q - (self.a.to(x) * torch.relu(x @ self.w.to(x).T - self.b.to(x)) ** 2).sum(-1)
        return q

    def hessian_at(self, x: torch.Tensor) -> torch.Tensor:
        """The (constant on each piece) Hessian of ψ at the points ``x`` (B, d) → (B, d, d)."""
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        h = -self.lam * eye.expand(x.shape[0], -1, -1).clone()
        if self.a.numel():
            active = ((x @ self.w.to(x).T - self.b.to(x)) > 0).to(x) * self.a.to(x)  # (B, J)
            outer = torch.einsum("jd,je->jde", self.w.to(x), self.w.to(x))
            h = h - 2 * torch.einsum("bj,jde->bde", active, outer)
        return h

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        s = -self.lam * (x - self.x_star.to(x))
        if self.a.numel():
            r = torch.relu(x @ self.w.to(x).T - self.b.to(x))  # (B, J)
            s = s - 2 * (r * self.a.to(x)) @ self.w.to(x)
        return s


class AffineScore:
    """``s(y) = H (y − x*)`` (σ-independent): the score of a Gaussian when ``H`` is −Σ⁻¹.

    Used to check ERE against its closed form ``‖I + σ²H‖_F² + σ²‖H(x − x*)‖²``.
    """

    def __init__(self, h: Sequence, x_star: Sequence):
        self.h = torch.as_tensor(h, dtype=torch.float64)
        self.x_star = torch.as_tensor(x_star, dtype=torch.float64).reshape(-1)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        return (x - self.x_star.to(x)) @ self.h.to(x).T

    def ere_closed_form(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        eye = torch.eye(self.h.shape[0], dtype=x.dtype, device=x.device)
        h = self.h.to(x)
        const = ((eye + sigma**2 * h) ** 2).sum()
        return const + sigma**2 * (((x - self.x_star.to(x)) @ h.T) ** 2).sum(-1)
