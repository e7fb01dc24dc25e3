"""The expected reconstruction error (ERE) and its fixed Monte-Carlo noise (eq. 8–9, 13, 16)."""
from __future__ import annotations

from typing import Sequence

import torch

from .scores import Score

__all__ = ["NoiseBank", "ere", "dsm_loss_per_sample"]


class NoiseBank:
    """``M`` fixed standard-normal draws with the shape of ONE item, from a seeded generator.

    Every item of a batch sees the same draws, so purifying an image does not depend on the
    batch it is in, and an attacker who knows the seed knows the whole purifier.

    Args:
        shape: shape of one item, e.g. ``(1, 8, 8)`` or ``(2,)``.
        m: number of draws M (eq. 13).
        seed: seed of the generator (CPU, so the draws are the same on every device).
        antithetic: draw M/2 vectors and use each with both signs (``z, −z``). The draws then
            average to exactly zero, which removes a bias of the fixed-draw estimate: with
            i.i.d. draws the minimiser of ``ê_σ`` for a Gaussian of variance s² is shifted
            by ``z̄ s²/σ`` (z̄ the draws' mean), which GROWS as σ → 0. Needs an even M.

    Example:
        >>> bank = NoiseBank((2,), m=4, seed=0)
        >>> bank.z.shape
        torch.Size([4, 2])
    """

    def __init__(self, shape: Sequence[int], m: int, seed: int, antithetic: bool = False):
        shape = tuple(int(s) for s in shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"NoiseBank shape must be a non-empty tuple of positive sizes, got {shape}")
        if int(m) != m or m < 1:
            raise ValueError(f"NoiseBank needs m >= 1 draws, got m={m}")
        if antithetic and m % 2:
            raise ValueError(f"antithetic draws need an even m, got m={m}")
        gen = torch.Generator().manual_seed(int(seed))
        self.shape, self.m, self.seed, self.antithetic = shape, int(m), int(seed), bool(antithetic)
        if antithetic:
            half = torch.randn((self.m // 2, *shape), generator=gen, dtype=torch.float64)
            self.z = torch.cat([half, -half])
        else:
            self.z = torch.randn((self.m, *shape), generator=gen, dtype=torch.float64)

    def to(self, like: torch.Tensor) -> torch.Tensor:
        """The draws as a tensor of ``like``'s dtype and device, shape ``(M, *shape)``."""
        return self.z.to(dtype=like.dtype, device=like.device)


def _residuals(score: Score, x: torch.Tensor, sigma, z: torch.Tensor) -> torch.Tensor:
    """``z_m + σ s(x + σ z_m, σ)`` for all M draws in ONE call of the score, shape (M, B, ...)."""
    m, b = z.shape[0], x.shape[0]
    if z.shape[1:] != x.shape[1:]:
        raise ValueError(f"noise of item shape {tuple(z.shape[1:])} does not match x items {tuple(x.shape[1:])}")
    zz = z.unsqueeze(1)  # (M, 1, ...)
    noisy = (x.unsqueeze(0) + sigma * zz).reshape(m * b, *x.shape[1:])
    s = score(noisy, sigma).reshape(m, b, *x.shape[1:])
    return zz + sigma * s


def ere(score: Score, x: torch.Tensor, sigma: float, noise: NoiseBank | torch.Tensor) -> torch.Tensor:
    """Monte-Carlo ERE ``ê_σ(x) = (1/M) Σ_m ‖z_m + σ s(x + σ z_m, σ)‖²`` (eq. 13/16), one value per item.

    Equals ``E_z ‖x − D_σ(x + σz)‖² / σ²`` with Tweedie's denoiser (eq. 3–4, 8–9).

    Args:
        score: the score model ``(x, sigma) -> tensor like x``.
        x: batch ``(B, ...)``.
        sigma: the noise level (a float).
        noise: a :class:`NoiseBank` or a tensor of draws ``(M, ...)`` of one item's shape.

    Returns:
        ``(B,)`` tensor.
    """
    z = noise.to(x) if isinstance(noise, NoiseBank) else noise.to(dtype=x.dtype, device=x.device)
    r = _residuals(score, x, sigma, z)
    return r.flatten(2).pow(2).sum(-1).mean(0)


def dsm_loss_per_sample(score: Score, x: torch.Tensor, sigma, z: torch.Tensor) -> torch.Tensor:
    """Denoising score matching integrand ``½‖σ s(x + σz, σ) + z‖²`` (eq. 6), one value per item.

    ``z`` has the shape of ``x`` (one draw per item); ``sigma`` a float or ``(B,)``.
    """
    from .scores import _sigma_column

    sig = _sigma_column(sigma, x)
    s = score(x + sig * z, sigma)
    return 0.5 * (sig * s + z).flatten(1).pow(2).sum(-1)
