"""PurSAMERE: annealed, sharpness-aware ERE descent with Adam (Algorithm 1; eq. 12, 15).

``Purifier(score, PurifyConfig(...))`` maps a batch ``x_adv`` to ``x_pur``. It is a
deterministic function of its input (fixed Monte-Carlo noise, eq. 16), it treats every image
on its own (batch invariance), and it can be unrolled with exact, checkpointed gradients for
white-box attacks (:meth:`Purifier.unrolled`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch

from .ere import NoiseBank, ere
from .geometry import canonical_norm, lp_norm, project, sam_step
from .scores import Score, sigma_ladder

__all__ = ["PurifyConfig", "Purifier", "Trace", "InvalidInputError", "check_images", "adam_step", "straight_through"]


class InvalidInputError(ValueError):
    """A batch handed to a purifier, attack or model is unusable (NaN, shape, range, empty)."""


def check_images(x, *, box=(0.0, 1.0), item_shape=None, name: str = "x") -> torch.Tensor:
    """Validate a batch ``(B, ...)``; raise :class:`InvalidInputError` naming the problem.

    Never clamps or repairs: bad data is refused, not silently changed.
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidInputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 2:
        raise InvalidInputError(f"{name} must be a batch of shape (B, ...) with rank >= 2, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InvalidInputError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if item_shape is not None and tuple(x.shape[1:]) != tuple(item_shape):
        raise InvalidInputError(f"{name} items have shape {tuple(x.shape[1:])}, expected {tuple(item_shape)}")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise InvalidInputError(f"{name} contains {int(bad.sum())} NaN or infinite values")
    if box is not None:
        lo, hi = float(x.min()), float(x.max())
        if lo < box[0] or hi > box[1]:
            raise InvalidInputError(f"{name} has values in [{lo:.4g}, {hi:.4g}], outside the box [{box[0]}, {box[1]}]")
    return x


@dataclass(frozen=True)
class PurifyConfig:
    """Settings of Algorithm 1. Values the paper lost are OUR defaults (see method.md).

    The defaults suit images in [0,1] and a score net trained down to σ ≈ 0.01; presets
    (``pursamere.experiments.presets``) override them per data set after a documented sweep.
    """

    eps_pur: float = 8 / 255  # radius of the purification ball B_p(x_adv, ε_pur) (eq. 12)
    norm: str | int = "inf"  # p of the purification ball; the paper uses ℓ∞
    rho: Optional[float] = None  # SAM radius ρ; None → ε_pur/2 (ours: "smaller than, same order as ε_pur"); 0 → SAM off
    rho_sigma: Optional[float] = None  # ρ tied to the noise level: ρ_k = rho_sigma · σ_k (then rho must be 0 or None). Ours
    sam_norm: Optional[str | int] = None  # q of the SAM ball; None → same as `norm`
    m: int = 4  # Monte-Carlo draws M of eq. 16 (paper's value lost; ours)
    antithetic: bool = False  # use draws in ± pairs (removes the fixed-draw bias z̄ s²/σ; see NoiseBank). Paper: i.i.d.
    sigma_max: float = 0.25  # first (largest) purification noise level (ours)
    sigma_min: float = 0.01  # last (smallest) level; the score net's smallest σ
    n_levels: int = 10  # geometric levels from sigma_max to sigma_min
    steps_per_level: int = 3  # Adam steps at each level; K = n_levels × steps_per_level
    lr_max: float = 0.01  # Adam learning rate at the largest σ, falling linearly to lr_min (ours)
    lr_min: float = 0.001
    betas: tuple = (0.9, 0.999)  # Adam's moment decays (Kingma & Ba defaults)
    adam_eps: float = 1e-8
    seed: int = 0  # seed of the fixed noise bank (known to a deterministic white-box attacker)
    box: Optional[tuple] = (0.0, 1.0)  # data box; None for 2-D toys in R^d

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"PurifyConfig: {msg}")

        object.__setattr__(self, "norm", canonical_norm(self.norm))
        object.__setattr__(self, "sam_norm", canonical_norm(self.norm if self.sam_norm is None else self.sam_norm))
        if self.rho_sigma is not None:
            rs = self.rho_sigma
            if isinstance(rs, bool) or not isinstance(rs, (int, float)) or not math.isfinite(rs) or rs <= 0:
                bad(f"rho_sigma must be a finite number > 0 (ρ_k = rho_sigma·σ_k), got {rs!r}")
            if self.rho not in (None, 0, 0.0):
                bad(f"give either rho (a fixed SAM radius) or rho_sigma (ρ tied to σ), not both (rho={self.rho!r})")
            object.__setattr__(self, "rho", 0.0)
        elif self.rho is None:
            object.__setattr__(self, "rho", self.eps_pur / 2)
        for name in ("eps_pur", "sigma_max", "sigma_min", "lr_max", "lr_min", "adam_eps"):
            val = getattr(self, name)
            if not isinstance(val, (int, float)) or not math.isfinite(val) or val <= 0:
                bad(f"{name} must be a finite number > 0, got {val!r}")
        if not isinstance(self.rho, (int, float)) or not math.isfinite(self.rho) or self.rho < 0:
            bad(f"rho must be a finite number >= 0 (0 turns SAM off), got {self.rho!r}")
        if self.sigma_min > self.sigma_max:
            bad(f"sigma_min ({self.sigma_min}) must not exceed sigma_max ({self.sigma_max}): the schedule decreases")
        if self.n_levels == 1 and self.sigma_min != self.sigma_max:
            bad("n_levels=1 needs sigma_min == sigma_max")
        if self.lr_min > self.lr_max:
            bad(f"lr_min ({self.lr_min}) must not exceed lr_max ({self.lr_max}): the rate falls with σ")
        for name in ("m", "n_levels", "steps_per_level"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                bad(f"{name} must be an integer >= 1, got {val!r}")
        if self.antithetic and self.m % 2:
            bad(f"antithetic draws need an even m, got m={self.m}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.box is not None:
            if len(self.box) != 2 or not self.box[0] < self.box[1]:
                bad(f"box must be None or (lo, hi) with lo < hi, got {self.box!r}")
            object.__setattr__(self, "box", (float(self.box[0]), float(self.box[1])))

    @property
    def steps(self) -> int:
        """Total number of Adam steps K."""
        return self.n_levels * self.steps_per_level

    @property
    def sam(self) -> bool:
        """Whether the SAM ascent step is on (a fixed ρ > 0 or a σ-tied ρ)."""
        return self.rho > 0 or self.rho_sigma is not None

    def replace(self, **changes) -> "PurifyConfig":
        """A copy with exactly the given fields changed (validated again); nothing else moves.

        ρ is NOT re-tied to a new ε_pur, and giving ``rho`` together with a σ-tie left in place is
        an error, not a silent override: say what you want (``paper_sam()``, ``sam_off()``, or both
        ``rho`` and ``rho_sigma``).
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"PurifyConfig has no field(s) {unknown}")
        return PurifyConfig(**{**asdict(self), **changes})

    def paper_sam(self) -> "PurifyConfig":
        """The paper's SAM at this ε_pur: ρ = ε_pur/2 in the ball's norm (our reading of the lost value)."""
        return self.replace(rho=self.eps_pur / 2, rho_sigma=None, sam_norm=self.norm)

    def sam_off(self) -> "PurifyConfig":
        """Plain ERE descent: ρ = 0 and no σ-tie (eq. 17's purified training images use it)."""
        return self.replace(rho=0.0, rho_sigma=None)


def adam_step(x, grad, m, v, t: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
    """One elementwise Adam step written out, so autograd can differentiate through it.

    Same arithmetic as ``torch.optim.Adam`` (Kingma & Ba 2015, bias-corrected moments).
    ``t`` counts from 1. Returns ``(x_new, m_new, v_new)``.
    """
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    # sqrt with a zero-safe derivative: an exactly zero second moment gets gradient 0, not inf
    denom = v.clamp_min(1e-38).sqrt() * (1.0 / math.sqrt(bc2)) + eps
    return x - (lr / bc1) * m / denom, m, v


@dataclass
class Trace:
    """Per-step record of one purification: tensors of shape (K,) or (K, B)."""

    sigma: torch.Tensor
    lr: torch.Tensor
    ere: torch.Tensor  # ê_σ(x_k) before the step, per item
    distance: torch.Tensor  # ‖x_{k+1} − x_adv‖_p after the step, per item
    path: torch.Tensor | None = field(default=None, repr=False)  # (K+1, B, ...) iterates when asked


class _StraightThrough(torch.autograd.Function):
    """Forward: ``value`` bit for bit; backward: the identity in ``x``."""

    @staticmethod
    def forward(ctx, x, value):
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the identity's gradient in ``x`` in the backward pass.

    BPDA (Athalye et al. 2018 §4.1.1) is ``straight_through(x, P(x))``; partial unrolling uses it to
    cross the purifier's first steps. The one straight-through function of the package.
    """
    if value.shape != x.shape:
        raise InvalidInputError(f"the purifier changed the shape {tuple(x.shape)} → {tuple(value.shape)}: "
                                "straight-through (BPDA) needs x → x")
    return _StraightThrough.apply(x, value)


class _CheckpointedStep(torch.autograd.Function):
    """One Algorithm 1 step whose backward recomputes the step (gradient checkpointing).

    Only the step's inputs are kept between forward and backward, so the memory of an
    unrolled purification grows by a few images per step, not by a score-net graph per step.
    The backward differentiates through the ERE gradient itself (second order).
    """

    @staticmethod
    def forward(ctx, purifier, k, x, m, v, x0):
        ctx.purifier, ctx.k = purifier, k
        ctx.save_for_backward(x, m, v, x0)
        with torch.enable_grad():
            out = purifier._step(x.detach(), m.detach(), v.detach(), x0.detach(), k, create_graph=False)
        return tuple(o.detach() for o in out[:3])

    @staticmethod
    def backward(ctx, gx, gm, gv):
        inputs = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
        with torch.enable_grad():
            out = ctx.purifier._step(*inputs, ctx.k, create_graph=True)[:3]
            pairs = [(o, g) for o, g in zip(out, (gx, gm, gv)) if g is not None]
            grads = torch.autograd.grad(
                [o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True
            )
        return (None, None, *grads)


class Purifier:
    """Algorithm 1 of the paper: ``x_pur = argmin_{x' ∈ B_p(x_adv, ε_pur) ∩ box} max_{‖δ‖_q ≤ ρ} ê_σ(x' + δ)``.

    Args:
        score: a score model ``(x, sigma) -> tensor like x`` (a network in eval mode or an
            analytic toy score).
        config: a :class:`PurifyConfig`.

    Example:
        >>> from pursamere.method.scores import GaussianMixture
        >>> gm = GaussianMixture([[0.0, 0.0]], [0.5])
        >>> pur = Purifier(gm, PurifyConfig(eps_pur=1.0, box=None, sigma_max=0.5, sigma_min=0.05))
        >>> pur(torch.tensor([[0.6, 0.0]])).abs().max() < 0.6
        tensor(True)
    """

    def __init__(self, score: Score, config: PurifyConfig = PurifyConfig()):
        if not callable(score):
            raise TypeError("score must be callable as score(x, sigma)")
        if not isinstance(config, PurifyConfig):
            raise TypeError(f"config must be a PurifyConfig, got {type(config).__name__}")
        self.score, self.config = score, config
        self._banks: dict = {}
        k = config.steps
        levels = sigma_ladder(config.sigma_max, config.sigma_min, config.n_levels) if config.n_levels > 1 else torch.tensor([config.sigma_max], dtype=torch.float64)
        self.sigmas = [float(s) for s in levels.repeat_interleave(config.steps_per_level)]
        # learning rate falls linearly from lr_max (first step, largest σ) to lr_min (last step)
        frac = [i / (k - 1) if k > 1 else 0.0 for i in range(k)]
        self.lrs = [config.lr_max + f * (config.lr_min - config.lr_max) for f in frac]
        # SAM radius per step: fixed, or tied to the current noise level (ρ_k = rho_sigma · σ_k)
        self.rhos = [config.rho if config.rho_sigma is None else config.rho_sigma * s for s in self.sigmas]

    def noise(self, item_shape) -> NoiseBank:
        """The fixed noise bank for items of this shape (drawn once from ``config.seed``)."""
        key = tuple(item_shape)
        if key not in self._banks:
            self._banks[key] = NoiseBank(key, self.config.m, self.config.seed, self.config.antithetic)
        return self._banks[key]

    # ----------------------------------------------------------------- one step of Algorithm 1
    def _grad_ere(self, x, sigma, bank, create_graph):
        with torch.enable_grad():  # Algorithm 1 differentiates the ERE even when called under no_grad
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            e = ere(self.score, x, sigma, bank)
            (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
        return g, e.detach()

    def _step(self, x, m, v, x0, k: int, create_graph: bool):
        """x_{k+1} = Π( Adam(x_k, ∇ê_σ(x_k + δ_k)) ) with δ_k the SAM ascent step (eq. 15)."""
        cfg, sigma, lr = self.config, self.sigmas[k], self.lrs[k]
        bank = self.noise(x.shape[1:])
        g, e = self._grad_ere(x, sigma, bank, create_graph)  # ascent direction at x_k
        if cfg.sam:
            delta = sam_step(g, self.rhos[k], cfg.sam_norm)  # SAM ascent: worst point in the ρ-ball (eq. 12)
            h, _ = self._grad_ere(x + delta, sigma, bank, create_graph)  # descent at the perturbed point
        else:
            h = g  # ρ = 0: plain ERE descent
        x_new, m, v = adam_step(x, h, m, v, k + 1, lr, cfg.betas, cfg.adam_eps)
        x_new = project(x_new, x0, cfg.eps_pur, cfg.norm, box=cfg.box)  # project onto B_p(x_adv, ε_pur) ∩ box
        return x_new, m, v, e

    def _steps(self, x0: torch.Tensor, start: int, stop: int, record: bool = False, keep_path: bool = False):
        """Steps ``start..stop-1`` of Algorithm 1 from ``x0`` without a graph: ``(x, m, v, record)``."""
        x, m, v = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0)
        rec = {"ere": [], "distance": [], "path": []}
        for k in range(start, stop):
            x, m, v, e = self._step(x, m, v, x0, k, create_graph=False)
            x, m, v = x.detach(), m.detach(), v.detach()
            if record:
                rec["ere"].append(e)
                rec["distance"].append(lp_norm(x - x0, self.config.norm))
                if keep_path:
                    rec["path"].append(x.clone())
        return x, m, v, rec

    # ---------------------------------------------------------------------------- public API
    def _check(self, x):
        return check_images(x, box=self.config.box, name="x_adv")

    def __call__(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Purify a batch (no gradient is kept). Same input and seed → bit-identical output."""
        return self.run(x_adv)

    def run(self, x_adv: torch.Tensor, trace: bool = False, keep_path: bool = False):
        """Run Algorithm 1 on a batch.

        Args:
            x_adv: ``(B, ...)`` batch inside the config's box.
            trace: also return a :class:`Trace` (per-step σ, lr, ERE and distance to input).
            keep_path: with ``trace``, also keep every iterate (for trajectory plots).

        Returns:
            ``x_pur``, or ``(x_pur, trace)`` when ``trace`` is true.
        """
        self._check(x_adv)
        x0 = x_adv.detach()
        x, _, _, rec = self._steps(x0, 0, self.config.steps, record=trace, keep_path=keep_path)
        if not trace:
            return x
        eres, dists, path = rec["ere"], rec["distance"], ([x0.clone()] + rec["path"]) if keep_path else None
        return x, Trace(
            sigma=torch.tensor(self.sigmas), lr=torch.tensor(self.lrs),
            ere=torch.stack(eres), distance=torch.stack(dists),
            path=torch.stack(path) if keep_path else None,
        )

    def unrolled(self, x_adv: torch.Tensor, checkpoint: bool = True, last: Optional[int] = None) -> torch.Tensor:
        """Algorithm 1 as a differentiable function of ``x_adv`` (exact white-box gradients).

        Backpropagates through every Adam step, SAM step and projection, including the
        second-order terms through the score. With ``checkpoint`` (the default) each step is
        recomputed in the backward pass, so memory does not grow with the number of steps, and the
        forward value is Algorithm 1's output bit for bit. Without it every step's graph is kept:
        the backward pass is a third cheaper (3.2 instead of 4.8 purifications per exact step on
        digits, ``benchmarks/bench_attacks.py``), memory grows with K, and the forward value differs
        from Algorithm 1's in the last bits (the differentiable gradient reassociates sums), so an
        attack's tracking of which iterate fooled the defence is no longer exact. Gradients flow to
        ``x_adv`` only (not to the score's parameters).

        Args:
            checkpoint: recompute each step in the backward pass (exact forward value, flat memory).
            last: partial unrolling (an adaptive attack in the spirit of Croce et al. 2022):
                the first ``K − last`` steps run without a graph and are crossed by a
                straight-through (BPDA) identity; only the last ``last`` steps are
                differentiated exactly (their projection centre ``x_adv`` too). ``None`` or
                ``K``: the exact gradient; ``0``: exactly BPDA (the Jacobian is the identity).
                The forward value is always Algorithm 1's output.
        """
        self._check(x_adv.detach())
        n_steps = self.config.steps
        last = n_steps if last is None else last
        if isinstance(last, bool) or not isinstance(last, int) or not 0 <= last <= n_steps:
            raise ValueError(f"last must be an integer in [0, K={n_steps}] (steps unrolled exactly), got {last!r}")
        x0 = x_adv
        x, m, v = x0, torch.zeros_like(x0), torch.zeros_like(x0)
        head = n_steps - last
        if head:
            with torch.no_grad():
                xh, mh, vh, _ = self._steps(x0.detach(), 0, head)
            x = straight_through(x0, xh)  # BPDA across the head: value exactly xh, Jacobian identity
            m, v = mh, vh
        for k in range(head, n_steps):
            if checkpoint:
                x, m, v = _CheckpointedStep.apply(self, k, x, m, v, x0)
            else:
                x, m, v, _ = self._step(x, m, v, x0, k, create_graph=True)
        return x

    @property
    def score_evaluations(self) -> int:
        """Forward+backward passes of the score per image (M draws, once or twice per step with SAM)."""
        return self.config.steps * self.config.m * (2 if self.config.sam else 1)
