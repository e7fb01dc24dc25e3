"""Square Attack (Andriushchenko et al. 2020) in ℓ∞ and ℓ2: gradient-free, per-image seeded, early-stopping.

Random search on the margin loss ``L = z_y − max_{j≠y} z_j`` of the full defence (an image is fooled
when ``L < 0``): each query changes one random square window of the current best point and keeps the
change only if ``L`` went down (Andriushchenko et al. 2020, Algorithm 1). The window's side follows
the schedule ``s = √(p·h·w)`` with ``p`` halved at fixed fractions of the budget (the authors' schedule
for 10,000 queries, rescaled to ``queries``).

- ℓ∞ (§3.1): start from vertical stripes ``x + ε·(±1 per channel and column)``; a window moves to the
  corners ``x ± ε`` with one random sign per channel.
- ℓ2 (§3.2): start from a grid of blocks, each holding the pattern η (nested squares weighted
  ``1/(k+1)²``, positive in one half and negative in the other) with a random sign per channel, scaled
  to ‖δ‖₂ = ε; a query moves the mass of a second window into the first, adds a fresh η there, and
  rescales the whole perturbation to ‖δ‖₂ = ε.

Unlike the reference code, which draws one window position per query for the whole batch from the
global RNG, every random choice here comes from the image's own ``torch.Generator``, so an image's
run does not depend on its batch; and window positions are uniform over all ``h − s + 1`` places.
Fooled images stop (the queries are those of the full defence, so for a deterministic defence the
answer is final).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..method.geometry import _per_item, lp_norm
from ..method.purify import InvalidInputError, check_images
from .attacks import Threat, _check_int, _check_labels, _check_logits, margin_loss
from .starts import check_seeds, finite_positive, image_seeds

__all__ = ["square", "p_schedule", "eta_pattern"]

_BOX = (0.0, 1.0)
_CHUNK = 256  # queries of random draws per refill of each image's stream (bounded memory)
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of the 10,000-query schedule


def p_schedule(i: int, queries: int, p_init: float) -> float:
    """Fraction ``p`` of the image that query ``i`` changes: ``p_init`` halved at each of the authors'
    thresholds of a 10,000-query run passed, with ``i`` rescaled to ``queries``."""
    it = int(i / queries * 10000)
    return p_init / 2 ** sum(it > b for b in _HALVINGS)


def eta_pattern(s: int, dtype=torch.float64) -> torch.Tensor:
    """The ℓ2 update η of side ``s`` (§3.2): nested squares around each half's centre weighted
    ``Σ_{k≥d} 1/(k+1)²`` (d = Chebyshev distance to the centre), + in the top half, − in the bottom;
    unit ℓ2 norm."""

    def rectangle(a, b):
        if a == 0:
            return torch.zeros(0, b, dtype=dtype)
        k_max = max(a // 2, b // 2) + 1
        d = torch.maximum((torch.arange(a) - a // 2).abs()[:, None], (torch.arange(b) - b // 2).abs()[None, :])
        tail = torch.tensor([sum(1.0 / (k + 1) ** 2 for k in range(j, k_max)) for j in range(k_max)], dtype=dtype)
        r = tail[d]
        return r / r.norm()

    eta = torch.cat([rectangle(s // 2, s), -rectangle(s - s // 2, s)])
    return eta / eta.norm()


def _place(patterns, rows, cols, h, w):
    """Put ``patterns`` ``(B, s, s)`` into ``(B, h, w)`` zeros with top-left corners ``(rows, cols)``; clipped."""
    b, s = patterns.shape[0], patterns.shape[1]
    ii = torch.arange(h, device=rows.device)[None, :] - rows[:, None]  # (B, h): row inside the window
    jj = torch.arange(w, device=rows.device)[None, :] - cols[:, None]
    inside = ((ii >= 0) & (ii < s))[:, :, None] & ((jj >= 0) & (jj < s))[:, None, :]
    vals = patterns[torch.arange(b, device=rows.device)[:, None, None], ii.clamp(0, s - 1)[:, :, None],
                    jj.clamp(0, s - 1)[:, None, :]]
    return torch.where(inside, vals, torch.zeros((), dtype=patterns.dtype))


def _window(rows, cols, s, h, w, dtype):
    ones = torch.ones(rows.shape[0], s, s, dtype=dtype, device=rows.device)
    return _place(ones, rows, cols, h, w)[:, None]  # (B, 1, h, w)


def _position(u, s, n):
    """A window corner in ``{0, …, n − s}`` from uniforms ``u``."""
    return (u * (n - s + 1)).long().clamp(0, n - s)


def _sign(u):
    return torch.where(u < 0.5, -1.0, 1.0).to(u.dtype)


def _channel_norm(t):  # ‖·‖₂ over (h, w) for each image and channel: (B, c, 1, 1)
    return t.pow(2).sum((2, 3), keepdim=True).sqrt()


def square(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    threat: Threat,
    queries: int = 1000,
    p_init: float = 0.8,
    seed: int = 0,
    seeds: Optional[torch.Tensor] = None,
    stop_early: bool = True,
    return_success: bool = False,
):
    """Square Attack on the full defence ``model`` (queried, never differentiated), ℓ∞ or ℓ2.

    Args:
        model: the whole defence ``x -> logits``, images ``(B, c, h, w)``.
        x: clean images in ``[0, 1]``; y: integer labels ``(B,)``.
        threat: ℓ∞ or ℓ2 :class:`~pursamere.evaluation.attacks.Threat`.
        queries: iterations, one query each per image still attacked (plus one for the start).
        p_init: the first window's fraction of the image (AutoAttack: 0.8).
        seed: the run's seed; with ``seeds=None`` each image's seed is ``image_seeds(x, seed)``.
        seeds: one integer seed per image (``(B,)``): all of its random choices come from its own generator.
        stop_early: stop querying an image once it is fooled (valid for a deterministic defence; a
            stochastic one may have been fooled by one lucky draw, so judge the result afterwards).
        return_success: also return ``(B,)`` bools, True where the returned point fooled the model
            when queried.

    Returns:
        ``x_adv`` (same shape and dtype as ``x``, inside the ball and the box), or ``(x_adv, success)``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
        >>> x_adv = square(net, x, y, Threat(2, 0.5), queries=20)
        >>> bool(((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all())
        True
    """
    if not isinstance(threat, Threat):
        raise TypeError(f"threat must be a Threat(norm, eps), got {type(threat).__name__}")
    if threat.norm not in ("inf", 2):
        raise ValueError(f"square supports the ℓ∞ and ℓ2 threats, not ℓ{threat.norm}")
    check_images(x, box=_BOX, name="x")
    if x.ndim != 4:
        raise InvalidInputError(f"square needs images of shape (B, c, h, w), got {tuple(x.shape)}")
    y = _check_labels(x, y)
    _check_int("queries", queries)
    if not finite_positive("p_init", p_init) <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    x0 = x.detach()
    seeds = image_seeds(x0, seed) if seeds is None else check_seeds(seeds, x0)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]
    n, c, h, w = x0.shape
    eps, dt, dev = threat.eps, x0.dtype, x0.device
    checked = False

    @torch.no_grad()
    def loss_at(z, yw):  # L = z_y − max_{j≠y} z_j, the margin loss Square minimises
        nonlocal checked
        logits = model(z)
        if not checked:
            _check_logits(logits, x0, y)
            checked = True
        return -margin_loss(logits, yw).to(dt)

    # ---- the start: one stream of draws per image
    if threat.norm == "inf":  # vertical stripes x + ε·(±1 per channel and column)
        u = torch.stack([torch.rand(c, w, generator=g, dtype=torch.float64) for g in gens]).to(dev)
        best = (x0 + eps * _sign(u).to(dt)[:, :, None, :]).clamp(*_BOX)
    else:  # a grid of η blocks with a random sign per channel, scaled to ‖δ‖₂ = ε
        s0 = max(h // 5, 1)
        start = (h - 5 * s0) // 2
        corners = [(start + a * s0, start + b * s0) for a in range(h // s0) for b in range(w // s0)]
        u = torch.stack([torch.rand(len(corners), 1 + c, generator=g, dtype=torch.float64) for g in gens]).to(dev)
        eta = eta_pattern(s0, dt).to(dev)
        delta = torch.zeros_like(x0)
        for k, (r0, c0) in enumerate(corners):
            pat = torch.where(_per_item(u[:, k, 0] < 0.5, eta[None]), eta.T[None], eta[None])  # transposed w.p. ½
            block = _place(pat, torch.full((n,), r0, device=dev), torch.full((n,), c0, device=dev), h, w)[:, None]
            delta = delta + block * _sign(u[:, k, 1:]).to(dt)[:, :, None, None]
        best = (x0 + eps * delta / _per_item(lp_norm(delta, 2) + 1e-12, delta)).clamp(*_BOX)
    loss = loss_at(best, y)

    n_draws = 2 + c if threat.norm == "inf" else 5 + c
    idx, stream = torch.arange(n, device=dev), None
    for i in range(queries):
        if stop_early:
            idx = idx[loss[idx] >= 0]
            if idx.numel() == 0:
                break
        if i % _CHUNK == 0:  # refill every attacked image's stream from its own generator
            stream = torch.zeros(n, _CHUNK, n_draws, dtype=torch.float64)
            for j in idx.tolist():
                stream[j] = torch.rand(_CHUNK, n_draws, generator=gens[j], dtype=torch.float64)
        u = stream[idx.cpu(), i % _CHUNK].to(dev)
        xw, cur = x0[idx], best[idx]
        p = p_schedule(i, queries, p_init)
        if threat.norm == "inf":  # §3.1: a window of side s moves to x ± ε (a sign per channel)
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
            win = _window(_position(u[:, 0], s, h), _position(u[:, 1], s, w), s, h, w, dt)
            new = cur + win * 2 * eps * _sign(u[:, 2:]).to(dt)[:, :, None, None]
            new = torch.minimum(torch.maximum(new, xw - eps), xw + eps).clamp(*_BOX)
        else:  # §3.2: move window 2's mass into window 1 with a fresh η, keep ‖δ‖₂ = ε
            s = max(int(round(math.sqrt(p * h * w))), 3)
            s = min(s + 1 if s % 2 == 0 else s, h, w)
            w1 = _window(_position(u[:, 0], s, h), _position(u[:, 1], s, w), s, h, w, dt)
            w2 = _window(_position(u[:, 2], s, h), _position(u[:, 3], s, w), s, h, w, dt)
            delta = cur - xw
            eta = eta_pattern(s, dt).to(dev)
            pat = torch.where(_per_item(u[:, 4] < 0.5, eta[None]), eta.T[None], eta[None])
            eta_full = _place(pat, _position(u[:, 0], s, h), _position(u[:, 1], s, w), h, w)[:, None]
            room = (eps ** 2 - lp_norm(delta, 2).pow(2)).clamp_min(0)  # budget left in the ball
            union = _channel_norm(delta * torch.maximum(w1, w2))  # mass of both windows, per channel
            old = delta * w1 / (_channel_norm(delta * w1) + 1e-12)  # window 1's perturbation, unit norm
            step = eta_full * _sign(u[:, 5:]).to(dt)[:, :, None, None] + old
            step = step / (_channel_norm(step) + 1e-12) * (_per_item(room, step) / c + union.pow(2)).sqrt()
            delta = delta * (1 - w1) * (1 - w2) + step * w1
            new = (xw + eps * delta / _per_item(lp_norm(delta, 2) + 1e-12, delta)).clamp(*_BOX)
        new_loss = loss_at(new, y[idx])
        better = new_loss < loss[idx]  # keep the change only if the margin loss went down
        best[idx] = torch.where(_per_item(better, new), new, cur)
        loss[idx] = torch.where(better, new_loss, loss[idx])
    return (best, loss < 0) if return_success else best
