"""Networks: NCSN-style score nets ``s(x, σ) = f(x)/σ`` and classifiers (small CNN, WideResNet).

Score nets use GroupNorm (per image, so batch composition never changes an output) and SiLU
(smooth, so second-order gradients through the purifier are informative).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scores import _sigma_column

__all__ = ["ScoreNetConfig", "ScoreNet", "SmallCNN", "WideResNet", "count_parameters", "SCORE_DIGITS", "SCORE_CIFAR10", "SCORE_TINY"]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class ScoreNetConfig:
    """Shape of a U-Net score model ``f`` (NCSNv2-like: f never sees σ)."""

    image_shape: tuple = (1, 8, 8)  # (C, H, W) of one image
    channels: tuple = (64, 128)  # width at each resolution; len = number of levels
    blocks: int = 2  # residual blocks per level (down path; the up path has as many)
    groups: int = 8  # GroupNorm groups (each width must divide by it)

    def __post_init__(self):
        c, h, w = self.image_shape
        if min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be positive (C, H, W), got {self.image_shape}")
        if h % 2 ** (len(self.channels) - 1) or w % 2 ** (len(self.channels) - 1):
            raise ValueError(f"{len(self.channels)} levels need H and W divisible by {2 ** (len(self.channels) - 1)}")
        if any(ch % self.groups for ch in self.channels):
            raise ValueError(f"every width in {self.channels} must be divisible by groups={self.groups}")


#: 8×8 grey digits (the digits preset): ~0.31M parameters, about 1–2k input-gradient image-passes a second on 2 cores.
SCORE_DIGITS = ScoreNetConfig((1, 8, 8), (32, 64), 1, 8)
#: CIFAR-10 size: NCSNv2-like capacity (~30M parameters); GPU.
SCORE_CIFAR10 = ScoreNetConfig((3, 32, 32), (128, 256, 256, 256), 2, 32)
#: tests: runs on CPU in milliseconds
SCORE_TINY = ScoreNetConfig((1, 8, 8), (8, 16), 1, 4)


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(min(groups, cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class ScoreNet(nn.Module):
    """``s_θ(x, σ) = f_θ(x) / σ`` (NCSNv2 parameterisation; f is a small U-Net).

    Example:
        >>> net = ScoreNet(SCORE_TINY)
        >>> net(torch.rand(2, 1, 8, 8), 0.1).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, config: ScoreNetConfig = SCORE_DIGITS):
        super().__init__()
        self.config = config
        c, chs, g = config.image_shape[0], config.channels, config.groups
        self.inp = nn.Conv2d(c, chs[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips, cur = [], chs[0]
        for i, ch in enumerate(chs):
            for _ in range(config.blocks):
                self.down.append(_ResBlock(cur, ch, g))
                cur = ch
                skips.append(cur)
            if i < len(chs) - 1:
                self.down.append(nn.AvgPool2d(2))
        self.mid = _ResBlock(cur, cur, g)
        for i, ch in reversed(list(enumerate(chs))):
            for _ in range(config.blocks):
                self.up.append(_ResBlock(cur + skips.pop(), ch, g))
                cur = ch
            if i > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Sequential(nn.GroupNorm(g, cur), nn.SiLU(), nn.Conv2d(cur, c, 3, padding=1))

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """The σ-free network f(x)."""
        h, hs = self.inp(x), []
        for layer in self.down:
            h = layer(h)
            if isinstance(layer, _ResBlock):
                hs.append(h)
        h = self.mid(h)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], 1)) if isinstance(layer, _ResBlock) else layer(h)
        return self.out(h)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The score ``f(x)/σ`` of a batch; ``sigma`` a float or one level per image."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.config.image_shape):
            from .purify import InvalidInputError

            raise InvalidInputError(f"score net expects images (B, {', '.join(map(str, self.config.image_shape))}), got {tuple(x.shape)}")
        return self.f(x) / _sigma_column(sigma, x)  # s = f(x)/σ


class SmallCNN(nn.Module):
    """A small classifier for 8×8 grey images (digits): two conv stages and a linear head."""

    def __init__(self, image_shape=(1, 8, 8), num_classes: int = 10, width: int = 32):
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), 128), nn.SiLU(), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        """Logits of a batch."""
        return self.body(x)


class _WideBlock(nn.Module):
    def __init__(self, cin, cout, stride, dropout=0.0):
        super().__init__()
        self.bn1, self.c1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.c2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(dropout)
        self.skip = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        h = self.c2(self.drop(F.relu(self.bn2(self.c1(o)))))
        return h + (x if self.skip is None else self.skip(o))


class WideResNet(nn.Module):
    """WideResNet-depth-widen (Zagoruyko & Komodakis 2016); WRN-28-10 is the paper's classifier.

    Args:
        depth: 6n+4 (28 → n = 4 blocks per stage).
        widen: width multiplier (10 for WRN-28-10; 1 for CPU tests).
    """

    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.num_classes = num_classes
        layers = [nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)]
        cin = w[0]
        for stage, stride in zip(w[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(_WideBlock(cin, stage, stride if i == 0 else 1, dropout))
                cin = stage
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        """Logits of a batch."""
        return self.fc(self.features(x))
