"""Training: denoising score matching (eq. 6) and classifiers (plain and eq. 17), resumable.

Both loops draw every random number from one CPU ``torch.Generator`` whose state goes into
the checkpoint, so an interrupted run resumed with ``resume=True`` reproduces the weights of
an uninterrupted run bit for bit (on CPU).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io import fingerprint, load_checkpoint, save_checkpoint
from .ere import dsm_loss_per_sample

__all__ = ["ScoreTrainConfig", "train_score", "load_score_net", "ClassifierTrainConfig", "train_classifier", "accuracy",
           "PGDAdversary", "TRADES", "dsm_loss"]


def _progress(total, initial, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def dsm_loss(score, x: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 6 with weight σ²: the batch mean of :func:`pursamere.method.ere.dsm_loss_per_sample`."""
    return dsm_loss_per_sample(score, x, sigma, z).mean()


@dataclass(frozen=True)
class ScoreTrainConfig:
    """Denoising score matching settings (NCSNv2's recipe, scaled down by presets)."""

    steps: int = 4000  # optimiser steps
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    ema_rate: float = 0.999  # NCSNv2's EMA of weights
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    grad_clip: float = 1.0  # clip the gradient norm (stabilises the σ ≈ 0.01 end of the ladder)

    def __post_init__(self):
        for k in ("steps", "batch_size", "checkpoint_every"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"ScoreTrainConfig: {k} must be >= 1, got {getattr(self, k)}")
        if not (0 <= self.ema_rate < 1) or self.lr <= 0:
            raise ValueError("ScoreTrainConfig: need 0 <= ema_rate < 1 and lr > 0")


def _ema_update(ema: nn.Module, net: nn.Module, rate: float):
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.mul_(rate).add_(p, alpha=1 - rate)


def _without_steps(meta: dict) -> dict:
    return {**meta, "config": {k: v for k, v in meta.get("config", {}).items() if k != "steps"}}


def _check_resume(ckpt: dict, meta: dict, path):
    # The number of steps may change between sessions: the learning rate is constant, so a run of
    # n steps is exactly the first n steps of a longer one (extend it, or end it where it stands).
    if _without_steps(ckpt.get("meta", {})) != _without_steps(meta):
        diff = {k: (ckpt.get("meta", {}).get(k), v) for k, v in meta.items() if ckpt.get("meta", {}).get(k) != v}
        raise ValueError(f"cannot resume {path}: it was made with other settings {diff}; use a new path or fresh=True")


def train_score(
    net: nn.Module,
    data: torch.Tensor,
    sigmas: torch.Tensor,
    config: ScoreTrainConfig = ScoreTrainConfig(),
    checkpoint: Optional[str | Path] = None,
    resume: bool = False,
    stop_at: Optional[int] = None,
    device: str = "cpu",
    amp: bool = False,
    progress: bool = False,
    on_step: Optional[Callable[[int, float], None]] = None,
):
    """Train ``net`` (a score model ``(x, σ)``) by denoising score matching over ``sigmas`` (eq. 6).

    Args:
        net: the score network (modified in place).
        data: training images ``(N, C, H, W)`` in [0,1].
        sigmas: the noise ladder σ_1 > … > σ_L; each item draws a level uniformly.
        config: :class:`ScoreTrainConfig`.
        checkpoint: file to write every ``checkpoint_every`` steps (atomic, checksummed).
        resume: continue from ``checkpoint`` if it exists (settings must match).
        stop_at: stop after this step (simulates an interruption; tests use it).
        amp: bfloat16 autocast on CUDA.

    Returns:
        ``(ema_net, losses)``: the EMA copy (used for purification) and per-step losses.
    """
    if data.ndim != 4 or data.shape[0] == 0:
        raise ValueError(f"data must be a non-empty batch (N, C, H, W), got {tuple(data.shape)}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    meta = {"config": asdict(config), "sigmas": [float(s) for s in sigmas], "data": fingerprint(data),
            "n_params": sum(p.numel() for p in net.parameters())}
    net.to(device).train()
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    step, losses = 0, []
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.exists():
        if not resume:
            raise FileExistsError(f"{path} exists: pass resume=True (CLI --resume) to continue it, or delete it / use --fresh")
        ck = load_checkpoint(path, map_location=device)
        _check_resume(ck, meta, path)
        if int(ck["step"]) > config.steps:
            raise ValueError(f"cannot resume {path}: it is at step {ck['step']}, past this run's end ({config.steps} steps)")
        net.load_state_dict(ck["net"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        step, losses = int(ck["step"]), list(ck["losses"])

    def save():
        if path is not None:
            save_checkpoint(path, {"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                                   "gen": gen.get_state(), "step": step, "losses": losses, "meta": meta})

    end = config.steps if stop_at is None else min(stop_at, config.steps)
    bar = _progress(config.steps, step, "score net (DSM)", progress)
    while step < end:
        idx = torch.randint(data.shape[0], (config.batch_size,), generator=gen)
        lvl = torch.randint(len(sigmas), (config.batch_size,), generator=gen)
        z = torch.randn((config.batch_size, *data.shape[1:]), generator=gen)
        x, sig, z = data[idx].to(device), sigmas[lvl].to(device), z.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp and device.startswith("cuda")):
            loss = dsm_loss(net, x, sig, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        _ema_update(ema, net, config.ema_rate)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step:
            on_step(step, losses[-1])
        if step % config.checkpoint_every == 0 or step == end:
            save()
    bar.close()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema, losses


def load_score_net(net: nn.Module, checkpoint, ema: bool = True) -> nn.Module:
    """Load trained weights (the EMA copy by default) into ``net``; returns it in eval mode."""
    ck = load_checkpoint(checkpoint)
    net.load_state_dict(ck["ema" if ema else "net"])
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Classifier training (Adam, cosine-free constant rate: small data sets)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("ClassifierTrainConfig: epochs and batch_size must be >= 1 and lr > 0")


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: ClassifierTrainConfig = ClassifierTrainConfig(),
    x_purified: Optional[torch.Tensor] = None,
    adversary: Optional[Callable] = None,
    device: str = "cpu",
    amp: bool = False,
    progress: bool = False,
    trades: Optional["TRADES"] = None,
) -> nn.Module:
    """Train a classifier with cross-entropy.

    With ``x_purified`` (same order as ``x``) the loss is eq. 17:
    ``CE(f(x), y) + CE(f(P(x)), y)``. With ``adversary(model, xb, yb) -> x_adv`` each batch is
    replaced by its adversarial version (Madry et al. adversarial training). With ``trades`` the
    loss is TRADES' ``CE(f(x), y) + β·KL(f(x) ‖ f(x'))`` (Zhang et al. 2019), x' from :class:`TRADES`.
    Returns the model in eval mode.
    """
    if trades is not None and (adversary is not None or x_purified is not None):
        raise ValueError("trades cannot be combined with adversary or x_purified")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x ({x.shape[0]}) and y ({y.shape[0]}) must be non-empty and the same length")
    if x_purified is not None and x_purified.shape != x.shape:
        raise ValueError(f"x_purified {tuple(x_purified.shape)} must match x {tuple(x.shape)}")
    torch.manual_seed(config.seed)  # dropout / init-free layers; the batch order below has its own generator
    gen = torch.Generator().manual_seed(config.seed)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = x.shape[0]
    bar = _progress(config.epochs, 0, "classifier", progress)
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, config.batch_size):
            idx = perm[i:i + config.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if adversary is not None:
                model.eval()
                xb = adversary(model, xb, yb).detach()
            x_tr = None
            if trades is not None:
                model.eval()
                x_tr = trades.perturb(model, xb).detach()
            model.train()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp and device.startswith("cuda")):
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if x_tr is not None:
                    loss = loss + trades.beta * trades.kl(logits, model(x_tr))
                if x_purified is not None:
                    loss = loss + F.cross_entropy(model(x_purified[idx].to(device)), yb)  # eq. 17
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        bar.update(1)
    bar.close()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / x.shape[0]


class PGDAdversary:
    """Madry et al. (2018) adversarial training's inner maximisation: PGD on each batch.

    A callable ``(model, x, y) -> x_adv`` for :func:`train_classifier`'s ``adversary``; each
    call uses a new seed for the random start (a counter), so the run stays reproducible.
    """

    def __init__(self, threat, steps: int = 7, step_size: Optional[float] = None, seed: int = 0):
        self.threat, self.steps, self.step_size, self.calls, self.seed = threat, steps, step_size, 0, seed

    def __call__(self, model, x, y):
        from ..evaluation.attacks import pgd

        self.calls += 1
        return pgd(model, x, y, self.threat, steps=self.steps, step_size=self.step_size, keep="last",
                   seed=self.seed * 1_000_003 + self.calls)


class TRADES:
    """TRADES (Zhang et al. 2019): the inner maximisation of ``KL(f(x) ‖ f(x'))`` over the ℓ∞ ball.

    ``perturb(model, x)`` starts at ``x + 0.001·N(0, I)`` and takes ``steps`` signed-gradient steps
    of size ``step_size`` on the KL divergence, projecting onto the ball and the box; ``beta``
    weighs the KL term in :func:`train_classifier`. Random draws come from a seeded generator
    (a counter per call), so training is reproducible.
    """

    def __init__(self, threat, steps: int = 7, step_size: Optional[float] = None, beta: float = 6.0, seed: int = 0):
        if threat.norm != "inf":
            raise ValueError(f"TRADES here is the ℓ∞ version; got {threat}")
        if beta <= 0 or steps < 1:
            raise ValueError(f"TRADES needs beta > 0 and steps >= 1, got beta={beta}, steps={steps}")
        self.threat, self.steps, self.beta, self.seed, self.calls = threat, int(steps), float(beta), int(seed), 0
        self.step_size = threat.eps / 4 if step_size is None else float(step_size)

    @staticmethod
    def kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``KL(softmax(clean) ‖ softmax(adv))``."""
        return F.kl_div(F.log_softmax(logits_adv, 1), F.log_softmax(logits_clean, 1), reduction="batchmean", log_target=True)

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        eps = self.threat.eps
        with torch.no_grad():
            target = model(x)
        xa = (x + 0.001 * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)
        for _ in range(self.steps):
            xa = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(self.kl(target, model(xa)), xa)
            xa = torch.min(torch.max(xa.detach() + self.step_size * g.sign(), x - eps), x + eps).clamp(0, 1)
        return xa.detach()
