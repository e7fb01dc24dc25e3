"""Baseline purifiers on the same score model: ADP (Yoon et al. 2021) and DiffPure-style (Nie et al. 2022).

Both are callables ``x -> x`` like :class:`pursamere.method.purify.Purifier`, and both share one
randomness API so the evaluation code never branches on the purifier's type:

- ``config.seed`` and ``config.fixed_noise``. With ``fixed_noise=True`` every call uses the
  same noise, drawn once from ``seed`` with the shape of ONE item and shared by every item of
  the batch: the purifier is a deterministic function known to the attacker (Liu et al.
  2025's setting) and it is batch-invariant. With ``fixed_noise=False`` every call draws
  fresh noise of shape ``(B, ...)`` from an internal generator seeded once by ``seed``; the
  generator advances from call to call, so a whole run is reproducible (:meth:`reset`
  restarts it) but an image's result depends on its position in the batch. This is the
  stochastic setting attacked with BPDA+EoT.
- ``config.n_runs``: how many independent purification runs the evaluation averages the
  classifier's prediction over (ADP's protocol: 10; DiffPure: 1). In fixed-noise mode all
  runs are identical, so one run suffices.
- ``__call__(x)`` purifies without keeping a graph; ``unrolled(x, checkpoint=True)`` is the
  same computation (same noise stream), differentiable w.r.t. ``x``, for exact-gradient
  attacks; ``score_evaluations`` counts score calls per image.

All noise comes from CPU generators (the same draws on every device). Fixed draws are made
in float64 and cast to the input's dtype and device; stochastic draws are made directly in
the input's dtype, so a float32 run and a float64 run see different streams. Items may have any shape: images ``(B, C, H, W)`` in the ``[0,1]``
box, or 2-D toys ``(B, 2)`` with ``box=None``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .ere import NoiseBank
from .purify import check_images
from .scores import Score, sigma_ladder

__all__ = ["ADPConfig", "ADP", "DiffPureConfig", "DiffPure", "vp_equivalent_sigma"]


def vp_equivalent_sigma(t_star: float = 0.1, beta_min: float = 0.1, beta_max: float = 20.0) -> float:
    """The VE noise level σ* (data in [0,1]) equivalent to diffusing a VP model to time ``t*``.

    Nie et al. (2022) diffuse with the VP-SDE of Song et al. (2021), linear
    ``β(t) = β_min + (β_max − β_min) t`` on ``t ∈ [0, 1]``, to ``t* = 0.1``. Its marginal is
    ``x_t = sqrt(ᾱ) x + sqrt(1 − ᾱ) n`` with ``ᾱ = exp(−∫₀^t β) = exp(−(β_min t + ½(β_max − β_min) t²))``.
    Dividing by ``sqrt(ᾱ)`` (an invertible rescaling, so the class information kept is the same)
    gives ``x + sqrt((1 − ᾱ)/ᾱ) n``: a VE diffusion of level ``sqrt((1 − ᾱ)/ᾱ)``. The VP model
    works on data in ``[−1, 1]``; our images are in ``[0, 1]``, half that scale, so the
    noise level halves too:

        σ* = ½ sqrt((1 − ᾱ(t*)) / ᾱ(t*)).

    With the defaults ``ᾱ(0.1) = exp(−0.1095) ≈ 0.8963`` and ``σ* ≈ 0.1701``: diffused images
    have exactly the signal-to-noise ratio of Nie et al.'s, so they keep their class about as
    often (on the same data; on other data sets σ* is a starting point to calibrate).

    Example:
        >>> round(vp_equivalent_sigma(), 4)
        0.1701
    """
    for name, val in (("t_star", t_star), ("beta_min", beta_min), ("beta_max", beta_max)):
        if not isinstance(val, (int, float)) or not math.isfinite(val) or val <= 0:
            raise ValueError(f"vp_equivalent_sigma: {name} must be a finite number > 0, got {val!r}")
    if beta_max < beta_min:
        raise ValueError(f"vp_equivalent_sigma: beta_max ({beta_max}) must be >= beta_min ({beta_min})")
    log_abar = -(beta_min * t_star + 0.5 * (beta_max - beta_min) * t_star**2)
    return 0.5 * math.sqrt(-math.expm1(log_abar) / math.exp(log_abar))


# ------------------------------------------------------------------------------ configs
def _check_common(cfg, bad):
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        bad(f"seed must be an integer >= 0, got {cfg.seed!r}")
    if not isinstance(cfg.fixed_noise, bool):
        bad(f"fixed_noise must be True or False, got {cfg.fixed_noise!r}")
    if isinstance(cfg.n_runs, bool) or not isinstance(cfg.n_runs, int) or cfg.n_runs < 1:
        bad(f"n_runs must be an integer >= 1, got {cfg.n_runs!r}")
    if cfg.box is not None:
        if len(cfg.box) != 2 or not cfg.box[0] < cfg.box[1]:
            bad(f"box must be None or (lo, hi) with lo < hi, got {cfg.box!r}")
        object.__setattr__(cfg, "box", (float(cfg.box[0]), float(cfg.box[1])))


def _positive(cfg, bad, *names, allow_zero=False):
    for name in names:
        val = getattr(cfg, name)
        ok = isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val)
        if not ok or val < 0 or (val == 0 and not allow_zero):
            bad(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {val!r}")


class _Replace:
    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ADPConfig(_Replace):
    """Settings of ADP (Yoon et al. 2021), their CIFAR-10 values (method.md, "Baselines")."""

    sigma_noise: float = 0.25  # σ_n of the noisy start x₀ = clamp(x + σ_n n); 0 → no start noise (tests)
    steps: int = 10  # T, the most score-ascent steps per image
    sigma_fix: float = 0.01  # the one fixed level of s(x, σ_fix): the score net's smallest trained σ (ours; must lie on its ladder)
    delta: float = 1e-3  # δ of the secant probe g' = s(x + δ g)
    lam: float = 0.05  # λ, the fraction of the secant (Newton-along-g) step taken
    alpha_min: float = 1e-5  # lower clamp of the step α_t
    alpha_max: float = 0.1  # upper clamp of the step α_t
    stop_threshold: float = 1e-3  # an image stops for good once its α_t falls below this
    n_runs: int = 10  # purification runs averaged at classification (independent starts)
    seed: int = 0  # seed of the noise (fixed mode) or of the internal generator (stochastic)
    fixed_noise: bool = False  # True: the same start noise every call (deterministic, attacker knows it)
    box: Optional[tuple] = (0.0, 1.0)  # data box, clamped to after every step; None for 2-D toys

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"ADPConfig: {msg}")

        _positive(self, bad, "sigma_fix", "delta", "lam", "alpha_min", "alpha_max")
        _positive(self, bad, "sigma_noise", "stop_threshold", allow_zero=True)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            bad(f"steps must be an integer >= 0, got {self.steps!r}")
        if self.alpha_min > self.alpha_max:
            bad(f"alpha_min ({self.alpha_min}) must not exceed alpha_max ({self.alpha_max})")
        _check_common(self, bad)


@dataclass(frozen=True)
class DiffPureConfig(_Replace):
    """Settings of the DiffPure-style purifier on a VE score model (method.md, "Baselines")."""

    sigma_star: float = vp_equivalent_sigma()  # σ* ≈ 0.1701: same SNR as Nie et al.'s t* = 0.1 (VP), see vp_equivalent_sigma
    sigma_min: float = 0.01  # σ_L, last level of the reverse SDE and of the Tweedie step: the score net's smallest σ
    n_levels: int = 100  # geometric levels σ* → σ_L (Nie et al. used ~100 steps); one score call each
    n_runs: int = 1  # purification runs averaged at classification (Nie et al.: one)
    seed: int = 0  # seed of the noise (fixed mode) or of the internal generator (stochastic)
    fixed_noise: bool = False  # True: all noises fixed across calls (Liu et al. 2025's deterministic setting)
    box: Optional[tuple] = (0.0, 1.0)  # output is clamped to it at the end only; None for 2-D toys

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"DiffPureConfig: {msg}")

        _positive(self, bad, "sigma_star", "sigma_min")
        if isinstance(self.n_levels, bool) or not isinstance(self.n_levels, int) or self.n_levels < 2:
            bad(f"n_levels must be an integer >= 2 (σ* and σ_L), got {self.n_levels!r}")
        if not self.sigma_min < self.sigma_star:
            bad(f"sigma_min ({self.sigma_min}) must be smaller than sigma_star ({self.sigma_star}): the SDE runs down")
        _check_common(self, bad)


# ------------------------------------------------------------------------------ shared machinery
class _NoisyPurifier:
    """Noise streams, input checks, ``__call__``/``unrolled`` shared by the baselines."""

    config_type: type = object

    def __init__(self, score: Score, config):
        if not callable(score):
            raise TypeError("score must be callable as score(x, sigma)")
        if not isinstance(config, self.config_type):
            raise TypeError(f"config must be a {self.config_type.__name__}, got {type(config).__name__}")
        self.score, self.config = score, config
        self._banks: dict = {}
        self.reset()

    # noise ------------------------------------------------------------------
    @property
    def n_draws(self) -> int:
        """Standard-normal tensors one call uses (each of one item's or the batch's shape)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Restart the stochastic stream from ``config.seed`` (a fresh instance does the same)."""
        self._gen = torch.Generator().manual_seed(self.config.seed)

    def fixed_noise(self, item_shape) -> NoiseBank:
        """The fixed draws: a :class:`~pursamere.method.ere.NoiseBank` of ``n_draws`` items of one image's shape."""
        key = tuple(int(s) for s in item_shape)
        if key not in self._banks:
            self._banks[key] = NoiseBank(key, self.n_draws, self.config.seed)
        return self._banks[key]

    def _noises(self, x: torch.Tensor):
        """The ``n_draws`` noise tensors of this call, in order, each broadcastable to ``x``."""
        if self.config.fixed_noise:
            bank = self.fixed_noise(x.shape[1:]).to(x)
            return [bank[i : i + 1] for i in range(self.n_draws)]  # (1, ...): shared by the batch
        return [
            torch.randn(x.shape, generator=self._gen, dtype=x.dtype).to(x.device)
            for _ in range(self.n_draws)
        ]

    def _clamp(self, x):
        box = self.config.box
        return x if box is None else x.clamp(box[0], box[1])

    # public API ------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Purify a batch ``(B, ...)`` (no graph kept)."""
        check_images(x, box=self.config.box, name="x")
        with torch.no_grad():
            return self._forward(x.detach(), checkpoint=False)

    def unrolled(self, x: torch.Tensor, checkpoint: bool = True) -> torch.Tensor:
        """The same purification as ``__call__``, differentiable w.r.t. ``x``.

        Uses (and advances) the same noise stream as ``__call__``: in fixed mode it equals
        ``__call__(x)``; in stochastic mode it is one EoT sample. With ``checkpoint`` each step
        is recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant; the
        step's noise is an input, so the recomputation is exact), so memory holds one step's
        graph, not T of them. Only first-order graphs are needed.
        """
        check_images(x.detach(), box=self.config.box, name="x")
        return self._forward(x, checkpoint=checkpoint)

    def _run_step(self, fn, *args, checkpoint: bool):
        if checkpoint and torch.is_grad_enabled():
            return _checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _forward(self, x, checkpoint: bool):
        raise NotImplementedError


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item inner product ``(B, ...) × (B, ...) -> (B,)``."""
    return (a * b).flatten(1).sum(1)


# ------------------------------------------------------------------------------ ADP
class ADP(_NoisyPurifier):
    """ADP (Yoon et al. 2021): noisy start, then score ascent with a secant step size.

    ``x₀ = clamp(x + σ_n n)``; then up to T steps of ``x ← clamp(x + α_t s(x, σ_fix))`` with
    ``g = s(x)``, ``g' = s(x + δ g)``, ``z = ⟨g, g'⟩/⟨g, g⟩`` and
    ``α_t = clamp(λ δ / (1 − z), α_min, α_max)``. On an affine score ``s = H(x − x*)`` this is
    ``λ`` times the exact line-search step along ``g``, ``−⟨g, g⟩ / ⟨g, Hg⟩``. An image whose
    ``α_t`` falls below ``stop_threshold`` is not moved at that step nor afterwards (a mask;
    the batch runs until every image stops or T steps are done).

    Numerics: ``1 − z`` is computed as ``⟨g, g − g'⟩/⟨g, g⟩`` (no cancellation). Where
    ``1 − z < 0`` (the score grows along g) the formula gives a negative α, clamped to α_min,
    so the image stops; ``1 − z = 0`` gives α_max; ``g = 0`` (a stationary point) gives α_min.

    Gradients (:meth:`unrolled`): backpropagation goes through α_t as computed (through both
    score evaluations), zero where α_t is clamped; the stopping mask and the box clamps are
    piecewise constant and pass no gradient of their own.

    Example:
        >>> from pursamere.method.scores import GaussianMixture
        >>> adp = ADP(GaussianMixture([[0.0, 0.0]], [1.0]), ADPConfig(box=None, fixed_noise=True))
        >>> adp(torch.tensor([[3.0, 0.0]])).norm() < 3.0
        tensor(True)
    """

    config_type = ADPConfig

    def __init__(self, score: Score, config: ADPConfig = ADPConfig()):
        super().__init__(score, config)

    @property
    def n_draws(self) -> int:
        return 1  # the start noise only; the steps are deterministic

    @property
    def score_evaluations(self) -> int:
        """Score calls per image (at most two per step, ``s(x)`` and the secant probe)."""
        return 2 * self.config.steps

    def step_size(self, x: torch.Tensor):
        """``(α_t, g)`` at ``x``: the clamped secant step (B,) and the score ``g = s(x, σ_fix)``."""
        cfg = self.config
        g = self.score(x, cfg.sigma_fix)
        g_probe = self.score(x + cfg.delta * g, cfg.sigma_fix)  # secant probe along g
        gg = _dot(g, g)
        curv = _dot(g, g - g_probe)  # = ⟨g, g⟩ (1 − z)
        pos = curv > 0
        raw = cfg.lam * cfg.delta * gg / torch.where(pos, curv, torch.ones_like(curv))
        edge = torch.where((curv == 0) & (gg > 0), torch.full_like(gg, cfg.alpha_max), torch.full_like(gg, cfg.alpha_min))
        alpha = torch.where(pos, raw, edge).clamp(cfg.alpha_min, cfg.alpha_max)
        return alpha, g

    def _step(self, x, active):
        alpha, g = self.step_size(x)
        active = active & (alpha >= self.config.stop_threshold)  # stopped images stay stopped
        moved = self._clamp(x + alpha.view(-1, *([1] * (x.ndim - 1))) * g)  # score ascent
        return torch.where(active.view(-1, *([1] * (x.ndim - 1))), moved, x), active

    def _forward(self, x, checkpoint: bool):
        (n,) = self._noises(x)
        x = self._clamp(x + self.config.sigma_noise * n)  # noisy start
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.config.steps):
            if not bool(active.any()):
                break  # every image has stopped; further steps would change nothing
            x, active = self._run_step(self._step, x, active, checkpoint=checkpoint)
        return x


# ------------------------------------------------------------------------------ DiffPure
class DiffPure(_NoisyPurifier):
    """DiffPure-style purification on a VE score model (after Nie et al. 2022).

    Diffuse ``x_{σ*} = x + σ* n``; integrate the reverse VE-SDE down the geometric ladder
    ``σ* = σ_0 > … > σ_{L−1} = σ_min`` with Euler–Maruyama,
    ``x ← x + (σ_i² − σ_{i+1}²) s(x, σ_i) + sqrt(σ_i² − σ_{i+1}²) n_i``; finish with Tweedie's
    denoiser ``x + σ_L² s(x, σ_L)`` (eq. 4). The SDE lives in R^d, so the states are not
    clamped; the output is clamped to the box at the end (no-op for ``box=None``).
    One score evaluation per level; ``n_levels`` noise draws per call.

    Example:
        >>> from pursamere.method.scores import GaussianMixture
        >>> dp = DiffPure(GaussianMixture([[0.0, 0.0]], [0.1]), DiffPureConfig(box=None, n_levels=20))
        >>> dp(torch.tensor([[0.5, 0.0]])).norm() < 0.5
        tensor(True)
    """

    config_type = DiffPureConfig

    def __init__(self, score: Score, config: DiffPureConfig = DiffPureConfig()):
        super().__init__(score, config)
        cfg = config
        self.sigmas = [float(s) for s in sigma_ladder(cfg.sigma_star, cfg.sigma_min, cfg.n_levels)]

    @property
    def n_draws(self) -> int:
        return self.config.n_levels  # the diffusion plus one per reverse step

    @property
    def score_evaluations(self) -> int:
        """Score calls per image (L − 1 reverse steps and the final Tweedie step)."""
        return self.config.n_levels

    def _step(self, x, n, i: int):
        s_i, s_next = self.sigmas[i], self.sigmas[i + 1]
        var = s_i**2 - s_next**2
        return x + var * self.score(x, s_i) + math.sqrt(var) * n  # reverse-diffusion (EM) step

    def _forward(self, x, checkpoint: bool):
        noises = self._noises(x)
        x = x + self.sigmas[0] * noises[0]  # diffuse to σ*
        for i in range(len(self.sigmas) - 1):
            x = self._run_step(self._step, x, noises[i + 1], i, checkpoint=checkpoint)
        s_l = self.sigmas[-1]
        x = x + s_l**2 * self.score(x, s_l)  # Tweedie denoise at σ_L
        return self._clamp(x)
