"""Checks that a score model learned something real: annealed Langevin samples and ERE-based detection.

- :func:`annealed_langevin`: NCSNv2's sampler (Song & Ermon 2020, Alg. 1 with their step rule
  ``α_i = ε σ_i² / σ_L²``), ending with a Tweedie denoising step.
- :func:`ere_auroc`: the paper's motivating observation, measured: the ERE (eq. 13/16) of clean
  images is lower than that of adversarial ones. Returns the AUROC of ERE as a detector
  (1.0 = ERE separates them perfectly, 0.5 = chance).
"""
from __future__ import annotations

import math

import torch

from .ere import NoiseBank, ere

__all__ = ["annealed_langevin", "ere_auroc", "auroc", "image_grid"]


@torch.no_grad()
def annealed_langevin(score, shape, sigmas, steps_per_level: int = 5, eps: float = 2e-5, seed: int = 0,
                      denoise: bool = True, device: str | torch.device = "cpu") -> torch.Tensor:
    """Draw ``shape[0]`` samples by annealed Langevin dynamics down ``sigmas`` (decreasing).

    Step at level i: ``x ← x + α_i s(x, σ_i) + sqrt(2 α_i) z`` with ``α_i = eps σ_i²/σ_L²``.
    """
    gen = torch.Generator().manual_seed(seed)
    sig = [float(s) for s in sigmas]
    x = torch.rand(shape, generator=gen).to(device)
    for s in sig:
        alpha = eps * s * s / (sig[-1] ** 2)
        for _ in range(steps_per_level):
            z = torch.randn(shape, generator=gen).to(device)
            x = x + alpha * score(x, s) + math.sqrt(2 * alpha) * z
    if denoise:
        x = x + sig[-1] ** 2 * score(x, sig[-1])  # Tweedie (eq. 4)
    return x.clamp(0, 1)


def auroc(neg: torch.Tensor, pos: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be larger on ``pos`` (ties count ½)."""
    neg, pos = neg.double().flatten(), pos.double().flatten()
    gt = (pos[:, None] > neg[None, :]).double().mean()
    eq = (pos[:, None] == neg[None, :]).double().mean()
    return float(gt + 0.5 * eq)


def ere_auroc(score, x_clean: torch.Tensor, x_adv: torch.Tensor, sigma: float, m: int = 16, seed: int = 0) -> dict:
    """AUROC of ê_σ as a detector of adversarial images (clean = negatives), with the ERE means."""
    bank = NoiseBank(tuple(x_clean.shape[1:]), m, seed, antithetic=m % 2 == 0)
    with torch.no_grad():
        e_clean = torch.cat([ere(score, x_clean[i:i + 128], sigma, bank) for i in range(0, len(x_clean), 128)])
        e_adv = torch.cat([ere(score, x_adv[i:i + 128], sigma, bank) for i in range(0, len(x_adv), 128)])
    return {"sigma": sigma, "auroc": auroc(e_clean, e_adv), "ere_clean_mean": float(e_clean.mean()),
            "ere_adv_mean": float(e_adv.mean()), "n": int(len(x_clean))}


def image_grid(x: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Tile a batch (B, C, H, W) into one (C, H', W') image with 1-pixel gaps (for plots)."""
    b, c, h, w = x.shape
    rows = math.ceil(b / nrow)
    grid = torch.ones(c, rows * (h + 1) + 1, nrow * (w + 1) + 1)
    for i in range(b):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    return grid
