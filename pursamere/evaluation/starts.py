"""Where an attack starts, per image: seeds from the image's bytes, random and warm starts.

An attack's result for an image must not depend on which other images share its batch (a cascade
hands each attack a different subset; a shard hands each rank a different slice). Two things
decide it: the attack's own random draws, and the arithmetic of the model. This module fixes the
first: :func:`image_seeds` derives one seed per image from a hash of its bytes, and
:func:`random_starts` draws each image's start from its own ``torch.Generator``. The second is the
model's: on CPU, MKL's matrix product rounds rows that fall in a partial block of the batch
differently in the last bit (``nn.Linear`` on batches of 1-3 rows, or a row count not divisible
by 4 in float64), so a float model's iterates can differ in the last ulp from batch to batch;
convolutions and elementwise layers are batch-invariant bit for bit.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import torch

from ..method.geometry import lp_norm
from ..method.purify import InvalidInputError, check_images

__all__ = ["image_seeds", "random_starts", "per_image_draw", "check_seeds", "start_points"]

_BOX = (0.0, 1.0)
_SEED_MASK = (1 << 63) - 1  # non-negative int64


def image_seeds(x: torch.Tensor, seed: int = 0, salt: int = 0) -> torch.Tensor:
    """One seed per image: SHA-256 of the image's bytes (dtype and shape included), ``seed`` and ``salt``.

    The same image gets the same seed in any batch, subset or cascade; a different ``salt`` (for
    example the restart index) gives an independent seed. The bytes are those of the tensor as
    given: a float32 and a float64 copy of one image get different seeds.

    Args:
        x: a batch ``(B, ...)``.
        seed: the run's seed.
        salt: a second integer mixed in (restart index, attack index, ...).

    Returns:
        ``(B,)`` int64 tensor of non-negative seeds (on CPU).

    Example:
        >>> x = torch.rand(3, 1, 2, 2)
        >>> bool((image_seeds(x)[1:] == image_seeds(x[1:])).all())
        True
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise InvalidInputError(f"image_seeds needs a batch tensor (B, ...), got {type(x).__name__}")
    for name, v in (("seed", seed), ("salt", salt)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"image_seeds: {name} must be an integer, got {v!r}")
    head = f"pursamere-image-seed|{seed}|{salt}|{x.dtype}|{tuple(x.shape[1:])}|".encode()
    flat = x.detach().to("cpu").contiguous()
    out = []
    for item in flat:
        h = hashlib.sha256(head)
        h.update(item.reshape(-1).view(torch.uint8).numpy().tobytes())  # the raw bytes, any dtype
        out.append(int.from_bytes(h.digest()[:8], "little") & _SEED_MASK)
    return torch.tensor(out, dtype=torch.long)


def check_seeds(seeds, x: torch.Tensor) -> torch.Tensor:
    """Validate per-image seeds: an integer tensor of shape ``(B,)`` matching ``x``; returned on CPU."""
    if not isinstance(seeds, torch.Tensor):
        raise InvalidInputError(f"seeds must be an int64 tensor of shape (B,), got {type(seeds).__name__}")
    if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool:
        raise InvalidInputError(f"seeds must be an integer tensor, got dtype {seeds.dtype}")
    if seeds.shape != (x.shape[0],):
        raise InvalidInputError(f"seeds must have shape ({x.shape[0]},), one per image, got {tuple(seeds.shape)}")
    return seeds.to("cpu", torch.long)


def _uniform_ball(x, threat, gen):
    """A point drawn uniformly from the ℓp ball around ``x``, clipped to the box (stays in the ball)."""
    b, d = x.shape[0], x[0].numel()
    eps = threat.eps
    if threat.norm == "inf":
        delta = (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype) - 1) * eps
    elif threat.norm == 2:  # uniform direction, radius ε U^{1/d}
        u = torch.randn(b, d, generator=gen, dtype=x.dtype)
        r = torch.rand(b, 1, generator=gen, dtype=x.dtype) ** (1.0 / d)
        delta = (eps * r * u / u.norm(dim=1, keepdim=True)).view_as(x)
    else:  # uniform in the ℓ1 ball: first d of a flat Dirichlet(1,…,1) over d+1, random signs
        w = -torch.rand(b, d + 1, generator=gen, dtype=x.dtype).clamp_min(1e-12).log()
        s = torch.randint(0, 2, (b, d), generator=gen).to(x.dtype) * 2 - 1
        delta = (eps * s * w[:, :d] / w.sum(1, keepdim=True)).view_as(x)
    # clipping to the box only shrinks |δ_i| (x is in the box), so the point stays in the ball
    return (x + delta.to(x.device)).clamp(*_BOX)


def random_starts(x: torch.Tensor, threat, seed: int = 0, seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Uniform random points of the threat's ball around each image, clipped to the box.

    ``seeds=None``: one ``torch.Generator(seed)`` draws the whole batch (an image's start depends on
    its position in the batch). ``seeds``: image ``i`` draws from ``torch.Generator(seeds[i])``
    alone, so its start is the same in any batch.
    """
    if seeds is None:
        return _uniform_ball(x, threat, torch.Generator().manual_seed(int(seed)))
    return per_image_draw(x, check_seeds(seeds, x), lambda xi, gen: _uniform_ball(xi, threat, gen))


def per_image_draw(x: torch.Tensor, seeds: torch.Tensor, draw) -> torch.Tensor:
    """``draw(x[i:i+1], generator)`` for each image with ``torch.Generator(seeds[i])``, concatenated: each
    image's random draw is its own, whatever else is in the batch."""
    return torch.cat([draw(x[i:i + 1], torch.Generator().manual_seed(int(s))) for i, s in enumerate(seeds.tolist())])


def start_points(x0: torch.Tensor, threat, x_init: Optional[torch.Tensor], random_start: bool = True,
                 seed: int = 0, seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The attack's first iterate: ``x_init`` (a warm start, checked), a random start, or ``x0``."""
    if x_init is None:
        return random_starts(x0, threat, seed, seeds) if random_start else x0.clone()
    check_images(x_init, box=_BOX, name="x_init")
    if x_init.shape != x0.shape:
        raise InvalidInputError(f"x_init has shape {tuple(x_init.shape)}, x has {tuple(x0.shape)}")
    dist = lp_norm((x_init.detach() - x0).to(x0.dtype), threat.norm)
    if bool((dist > threat.eps * (1 + 1e-5) + 1e-6).any()):
        raise InvalidInputError(f"x_init lies outside the threat's ball ({threat}): "
                                f"largest distance {float(dist.max()):.4g}")
    return x_init.detach().to(x0.dtype).clone()


def finite_positive(name: str, v) -> float:
    """``v`` as a float after checking it is a finite number > 0 (one clear error otherwise)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)
