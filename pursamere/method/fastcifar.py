"""A fast CIFAR-10 classifier for CPUs: an airbench-style net and its training loop, in one file.

The recipe follows Keller Jordan's airbench94 (arXiv:2404.00498), re-implemented here: a frozen
patch-whitening first layer, three conv groups (conv, max-pool, BatchNorm, GELU, conv, BatchNorm,
GELU) with identity (Dirac) initialisation, BatchNorm with a fixed scale and a fast-learning bias,
Nesterov SGD with decoupled hyperparameters and a triangular learning rate, label smoothing,
alternating flips and 2-pixel translations, a Lookahead/EMA of the weights, and a mirrored
test-time view. What differs: fp32 on CPU in ``channels_last``, widths and epochs chosen by
measurement on 2 cores, normalisation inside the module (it takes images in [0, 1]), the
mirrored view inside the eval ``forward`` (so attacks differentiate through the deployed
model), and optional FGSM adversarial training with a random start (Wong et al. 2020).

Every random number of a run comes from the seed: the initial weights from ``torch.manual_seed``,
the epoch's order and shifts from a ``torch.Generator`` whose state at the start of the epoch is
checkpointed, the adversarial starts from a generator seeded per step. A run resumed from any
checkpoint therefore ends with the same weights, bit for bit on CPU, as an uninterrupted one.
"""
from __future__ import annotations

import contextlib

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io import load_checkpoint, save_checkpoint

__all__ = ["FastCifarConfig", "FastCifarNet", "train_fastcifar", "evaluate_accuracy", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class FastCifarConfig:
    """Architecture and training settings (airbench94's values unless a comment says otherwise)."""

    # ---- architecture
    widths: tuple = (64, 256, 256)  # the three conv groups (airbench94: 64, 256, 256 ≈ 2.0M parameters)
    whiten_kernel: int = 2  # the whitening layer's patch size: 2·3·k² output channels
    whiten_eps: float = 5e-4  # added to the patch covariance's eigenvalues
    whiten_images: int = 5000  # training images whose 2×2 patches estimate the covariance
    bn_momentum: float = 0.4  # PyTorch convention (airbench's 0.6 "momentum" is 1 − this)
    scaling: float = 1 / 9  # logits are scaled down (airbench)
    tta_flip: bool = True  # eval forward averages the logits of the image and its mirror
    # ---- optimisation (decoupled: lr and weight decay are per 1,024 examples)
    epochs: float = 10.0
    batch_size: int = 1024
    lr: float = 11.5
    momentum: float = 0.85  # Nesterov
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0  # BatchNorm biases learn 64× faster (no extra weight decay)
    label_smoothing: float = 0.2
    lr_start: float = 0.2  # triangular schedule: start, peak (1.0) at lr_peak of the run, end
    lr_peak: float = 0.23
    lr_end: float = 0.07
    whiten_bias_epochs: int = 3  # the whitening layer's bias trains this long, then freezes
    ema_start_epochs: int = 3  # Lookahead: from this epoch, every ema_every steps, pull weights to an EMA
    ema_every: int = 5
    ema_decay_base: float = 0.95  # per step; the decay ramps up as (progress)^ema_decay_pow
    ema_decay_pow: float = 3.0
    # ---- augmentation
    flip: bool = True  # alternating flips: a random flip drawn once, then every other epoch mirrored
    translate: int = 2  # random shifts of up to this many pixels (reflect padding)
    # ---- single-step adversarial training; adv_eps = 0: clean training
    adv_eps: float = 0.0  # ℓ∞ radius (8/255 for the baseline)
    adv_step: float = 1.25  # the FGSM step as a multiple of adv_eps (FGSM-RS, Wong et al.: 1.25; N-FGSM: 1.0)
    adv_method: str = "fgsm-rs"  # "fgsm-rs" (uniform start in the ε-ball, step, clip to the ball) or
    # "n-fgsm" (de Jorge et al. 2022: noise from [-adv_noise·ε, adv_noise·ε], step, no clipping to the ball)
    adv_noise: float = 2.0  # N-FGSM's noise radius as a multiple of adv_eps (their k = 2)
    # "pgd" (Madry et al. 2018): uniform start in the ε-ball, adv_steps signed steps of adv_step·ε, each
    # clipped to the ball; adv_steps + 1 passes per training step instead of fgsm's 2
    adv_steps: int = 1
    seed: int = 0

    def __post_init__(self):
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"FastCifarConfig: widths must be three positive ints, got {self.widths}")
        if self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("FastCifarConfig: epochs and batch_size must be positive")
        if not 0 <= self.adv_eps < 1:
            raise ValueError(f"FastCifarConfig: adv_eps must be in [0, 1), got {self.adv_eps}")
        if self.adv_method not in ("fgsm-rs", "n-fgsm", "pgd"):
            raise ValueError(f"FastCifarConfig: adv_method must be 'fgsm-rs', 'n-fgsm' or 'pgd', got {self.adv_method!r}")
        if self.adv_steps < 1 or (self.adv_steps > 1 and self.adv_method != "pgd"):
            raise ValueError(f"FastCifarConfig: adv_steps must be 1, or more with adv_method='pgd', got {self.adv_steps}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "FastCifarConfig":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


# ------------------------------------------------------------------------------------------- net

class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm with its scale fixed at 1 (only the bias learns), as airbench."""

    def __init__(self, channels: int, momentum: float):
        super().__init__(channels, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:cin])  # identity on the first cin filters: an implicit residual
    return conv


class _ConvGroup(nn.Sequential):
    def __init__(self, cin: int, cout: int, momentum: float):
        super().__init__(_conv(cin, cout), nn.MaxPool2d(2), _BatchNorm(cout, momentum), nn.GELU(),
                         _conv(cout, cout), _BatchNorm(cout, momentum), nn.GELU())


class FastCifarNet(nn.Module):
    """Images in [0, 1] ``(B, 3, 32, 32)`` → logits ``(B, 10)``; normalisation inside.

    In eval mode with ``config.tta_flip`` the logits are the mean over the image and its mirror
    (differentiable, so an attack sees the deployed classifier).

    Example:
        >>> net = FastCifarNet(FastCifarConfig(widths=(8, 16, 16))).eval()
        >>> net(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: FastCifarConfig = FastCifarConfig(), num_classes: int = 10):
        super().__init__()
        self.config = config
        w0 = 2 * 3 * config.whiten_kernel ** 2  # the whitening filters and their negatives
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        self.whiten = nn.Conv2d(3, w0, config.whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set once from data by init_whitening
        nn.init.zeros_(self.whiten.bias)
        a, b, c = config.widths
        self.groups = nn.Sequential(_ConvGroup(w0, a, config.bn_momentum), _ConvGroup(a, b, config.bn_momentum),
                                    _ConvGroup(b, c, config.bn_momentum))
        self.head = nn.Linear(c, num_classes, bias=False)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the first layer to whiten k×k patches of ``images`` (in [0, 1]): filters ±v/√(λ+ε)."""
        k = self.config.whiten_kernel
        z = (images.float() - self.mean) / self.std
        patches = z.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k).double()
        cov = patches.T @ patches / patches.shape[0]
        lam, vec = torch.linalg.eigh(cov)  # ascending
        lam, vec = lam.flip(0), vec.flip(1)  # largest first
        filters = (vec.T / torch.sqrt(lam + self.config.whiten_eps)[:, None]).reshape(-1, 3, k, k).float()
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of one view (no test-time mirror)."""
        h = F.gelu(self.whiten((x - self.mean) / self.std))
        h = self.groups(h)
        h = F.max_pool2d(h, h.shape[-1]).flatten(1)  # 3×3 → 1×1 (airbench's final MaxPool2d(3))
        return self.head(h) * self.config.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; in eval mode the mean over the image and its mirror when ``tta_flip``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(f"FastCifarNet expects images (B, 3, 32, 32) in [0, 1], got {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)
        if self.training or not self.config.tta_flip:
            return self.logits(x)
        return 0.5 * (self.logits(x) + self.logits(x.flip(-1)))


# -------------------------------------------------------------------------------------- training

def _triangle(step: int, total: int, c: FastCifarConfig) -> float:
    """The learning-rate multiplier: linear from lr_start up to 1 at lr_peak·total, then down to lr_end."""
    peak = int(c.lr_peak * total)
    if step < peak:
        return c.lr_start + (1 - c.lr_start) * step / peak
    return 1 + (c.lr_end - 1) * (step - peak) / max(1, total - peak)


def _crop(padded: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop 32×32 windows out of ``padded`` images at per-image offsets ``shifts`` in [0, 2·pad]."""
    out = torch.empty(padded.shape[0], padded.shape[1], 32, 32, dtype=padded.dtype)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if sel.any():
                out[sel] = padded[sel, :, dy:dy + 32, dx:dx + 32]
    return out


class _Lookahead:
    """An EMA of the weights that the net is pulled back onto (airbench's LookaheadState)."""

    def __init__(self, net: nn.Module):
        self.ema = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module, decay: float) -> None:
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                self.ema[k].lerp_(v, 1 - decay)
                v.copy_(self.ema[k])


def _training_attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, c: FastCifarConfig, gen: torch.Generator) -> torch.Tensor:
    """The training attack from a random start: ``adv_steps`` signed steps of adv_step·ε.

    ``fgsm-rs`` (Wong et al. 2020): start uniform in the ε-ball, one step, clip back into the ball.
    ``n-fgsm`` (de Jorge et al. 2022): start uniform in the (adv_noise·ε)-ball, one step, no clipping
    to the ε-ball; the larger noise and the missing clip are what keep it from catastrophic overfitting.
    ``pgd`` (Madry et al. 2018): start uniform in the ε-ball, ``adv_steps`` steps, each clipped.
    """
    eps = c.adv_eps
    radius = eps * (c.adv_noise if c.adv_method == "n-fgsm" else 1.0)
    delta = ((torch.rand(x.shape, generator=gen) * 2 - 1) * radius).to(x.device)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(c.adv_steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(net(x + delta), y, label_smoothing=c.label_smoothing, reduction="sum")
        (g,) = torch.autograd.grad(loss, delta)
        delta = delta.detach() + c.adv_step * eps * g.sign()
        if c.adv_method != "n-fgsm":
            delta = delta.clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).clamp(0, 1)


@torch.no_grad()
def evaluate_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``net`` in eval mode on images ``x`` (float in [0, 1] or uint8)."""
    was = net.training
    net.eval()
    correct = 0
    dev = next(net.parameters()).device
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        xb = xb.float().div(255.0) if xb.dtype == torch.uint8 else xb
        correct += int((net(xb).argmax(1).cpu() == y[i:i + batch_size].cpu()).sum())
    net.train(was)
    return correct / len(x)


def _checkpoint_meta(c: FastCifarConfig, images: torch.Tensor, labels: torch.Tensor) -> dict:
    import hashlib

    h = hashlib.sha256(images.numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return {"config": c.to_dict(), "data": h.hexdigest()[:16], "n": int(len(images))}


def train_fastcifar(
    config: FastCifarConfig,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    checkpoint: Optional[str | Path] = None,
    checkpoint_every: int = 10,
    resume: bool = True,
    stop_at: Optional[int] = None,
    on_epoch: Optional[Callable[[nn.Module, dict], None]] = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> tuple[FastCifarNet, dict]:
    """Train a :class:`FastCifarNet` on uint8 images ``(N, 3, 32, 32)``; resumable, deterministic.

    Args:
        config: :class:`FastCifarConfig` (its ``seed`` fixes every random number).
        images: uint8 training images; labels: int64 classes.
        checkpoint: file for atomic checkpoints (model, optimiser, Lookahead, RNG, step).
        checkpoint_every: steps between checkpoints (and one at every epoch's end).
        resume: continue from ``checkpoint`` when it exists (its settings and data must match).
        stop_at: stop after this global step (an interruption, for tests).
        on_epoch: ``callback(net, record)`` after each epoch (e.g. a test-set accuracy in eval mode).
        device: ``"cpu"`` (fp32, the shipped models) or ``"cuda"`` (bf16 autocast: the one-shot GPU run).
    Returns:
        ``(net, record)``: the net in eval mode and ``{"steps", "train_seconds", "images_per_second",
        "epochs": [...]}`` (train_seconds sums the time of every session of the run).
    """
    c = config
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels).long()
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise ValueError(f"images must be uint8 (N, 3, 32, 32), got {images.dtype} {tuple(images.shape)}")
    n = len(images)
    meta = _checkpoint_meta(c, images, labels)
    steps_per_epoch = n // c.batch_size  # drop the last partial batch (BatchNorm statistics)
    total = math.ceil(steps_per_epoch * c.epochs)
    kilostep = 1024 * (1 + 1 / (1 - c.momentum))  # decoupled hyperparameters → PyTorch's SGD values
    lr = c.lr / kilostep
    wd = c.weight_decay * c.batch_size / kilostep
    lr_bias = lr * c.bias_scaler

    torch.manual_seed(c.seed)
    net = FastCifarNet(c).to(device, memory_format=torch.channels_last)
    amp = str(device).startswith("cuda")
    gen = torch.Generator().manual_seed(c.seed)
    flip0 = torch.rand(n, generator=torch.Generator().manual_seed(c.seed + 1)) < 0.5  # alternating flips
    pad = c.translate
    padded = torch.from_numpy(np.pad(images.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect"))
    net.init_whitening(images[torch.randperm(n, generator=gen)[: c.whiten_images]].float().to(device) / 255.0)

    bn_bias = [p for name, p in net.named_parameters() if p.requires_grad and name.endswith("bias") and ".groups." in f".{name}"]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not q for q in bn_bias)]
    opt = torch.optim.SGD([dict(params=bn_bias, lr=lr_bias, weight_decay=wd / lr_bias),
                           dict(params=others, lr=lr, weight_decay=wd / lr)], momentum=c.momentum, nesterov=True)
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    lookahead: Optional[_Lookahead] = None
    step, record = 0, {"epochs": [], "train_seconds": 0.0, "train_cpu_seconds": 0.0}
    epoch_state = gen.get_state()

    if checkpoint is not None and resume and Path(checkpoint).exists():
        ck = load_checkpoint(checkpoint)
        if ck["meta"] != meta:
            raise ValueError(f"cannot resume {checkpoint}: it was written for other settings or data; delete it or choose another path")
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        if ck["lookahead"] is not None:
            lookahead = _Lookahead(net)
            lookahead.ema = ck["lookahead"]
        step, record, epoch_state = ck["step"], ck["record"], ck["epoch_state"]
        log(f"resumed {checkpoint} at step {step}/{total}")

    def save(epoch_state):
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"meta": meta, "net": net.state_dict(), "opt": opt.state_dict(),
                                         "lookahead": None if lookahead is None else lookahead.ema,
                                         "step": step, "record": record, "epoch_state": epoch_state})

    net.train()
    session_start, cpu_start = time.perf_counter(), time.process_time()

    def clock():  # add the time since the last call to the run's totals (wall and this process's CPU)
        nonlocal session_start, cpu_start
        record["train_seconds"] += time.perf_counter() - session_start
        record["train_cpu_seconds"] += time.process_time() - cpu_start
        session_start, cpu_start = time.perf_counter(), time.process_time()

    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        gen.set_state(epoch_state)  # the epoch's order and shifts, re-drawn identically after a resume
        order = torch.randperm(n, generator=gen)
        shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
        next_state = gen.get_state()
        net.whiten.bias.requires_grad_(epoch < c.whiten_bias_epochs)
        flip = flip0 ^ bool(epoch % 2) if c.flip else torch.zeros(n, dtype=torch.bool)
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for i in range(first, steps_per_epoch):
            idx = order[i * c.batch_size:(i + 1) * c.batch_size]
            xb = _crop(padded[idx], shifts[idx], pad).float().div_(255.0)
            xb = torch.where(flip[idx].view(-1, 1, 1, 1), xb.flip(-1), xb).to(device).contiguous(memory_format=torch.channels_last)
            yb = labels[idx].to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
                if c.adv_eps > 0:
                    xb = _training_attack(net, xb, yb, c, torch.Generator().manual_seed(c.seed * 1_000_003 + step))
                out = net(xb)
                loss = F.cross_entropy(out.float(), yb, label_smoothing=c.label_smoothing, reduction="sum")
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * _triangle(step, total, c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(idx)
            loss_sum += float(loss.detach())
            correct += int((out.argmax(1) == yb).sum())
            if epoch >= c.ema_start_epochs and step % c.ema_every == 0:
                if lookahead is None:
                    lookahead = _Lookahead(net)
                else:  # the decay ramps up over the run: move fast early, average hard at the end
                    lookahead.update(net, c.ema_decay_base ** c.ema_every * (step / total) ** c.ema_decay_pow)
            if step >= total or (stop_at is not None and step >= stop_at):
                break
            if step % checkpoint_every == 0:
                clock()
                save(epoch_state)
        epoch_done = step >= total or (step % steps_per_epoch == 0)
        if lookahead is not None and epoch_done:
            lookahead.update(net, 1.0)  # end of epoch: the net takes the averaged weights
        clock()
        if stop_at is not None and step >= stop_at and not epoch_done:
            save(epoch_state)
            break
        dt = time.perf_counter() - t0
        rec = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "seconds": dt, "images_per_second": seen / dt}
        epoch_state = next_state
        if on_epoch is not None:
            on_epoch(net, rec)
            net.train()
            session_start, cpu_start = time.perf_counter(), time.process_time()  # evaluation is not training time
        record["epochs"].append(rec)
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        save(epoch_state)
        if stop_at is not None and step >= stop_at:
            break
    record["steps"] = step
    record["images_per_second"] = step * c.batch_size / max(record["train_seconds"], 1e-9)  # training images, not passes
    net.eval()
    return net, record
