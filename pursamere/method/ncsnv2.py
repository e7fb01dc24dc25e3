"""NCSNv2 (Song & Ermon 2020), weight-compatible with the released checkpoints, as a ``Score``.

The architecture of ``ermongroup/ncsnv2`` (``models/ncsnv2.py``), written anew: a RefineNet
with InstanceNorm++ and ELU whose parameter and buffer names and shapes match the official
ones, so the released ``checkpoint_*.pth`` loads with ``strict=True``. The official net is
called with an integer noise label ``y`` and returns ``f(2x − 1) / σ_y``; its ``f`` never
sees σ (unconditional normalisation), so the same weights give a score for ANY σ:
``s(x, σ) = f(2x − 1) / σ`` (eq. 5 with NCSNv2's parameterisation), which is the package's
``Score`` protocol. Images are in [0, 1], as in the official training (``rescaled: false``).

Example:
    >>> net = NCSNv2(NCSNV2_CONFIGS["cifar10"].replace(ngf=8))
    >>> net(torch.rand(2, 3, 32, 32), 0.1).shape
    torch.Size([2, 3, 32, 32])
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scores import _sigma_column, sigma_ladder
from .weights import WeightsMismatchError, check_state_dict, read_weights, strip_prefix

__all__ = ["NCSNv2Config", "NCSNV2_CONFIGS", "NCSNv2", "load_ncsnv2", "ncsnv2_state_from_checkpoint"]


@dataclass(frozen=True)
class NCSNv2Config:
    """One ``configs/*.yml`` of the official repository (the fields that shape the weights)."""

    name: str
    image_size: int  # H = W of the training images
    sigma_begin: float  # σ_1, the largest noise level
    num_classes: int  # L, the number of noise levels (the length of the `sigmas` buffer)
    depth: str = "ncsnv2"  # "ncsnv2" (CIFAR-10, CelebA) | "deeper" (LSUN) | "deepest" (FFHQ)
    sigma_end: float = 0.01  # σ_L
    channels: int = 3
    ngf: int = 128  # base width
    ema_rate: float = 0.999  # of the EMA weights saved beside the raw ones

    def replace(self, **changes) -> "NCSNv2Config":
        return replace(self, **changes)

    def sigmas(self) -> torch.Tensor:
        """The training ladder as the official code stores it: geometric, float32."""
        return sigma_ladder(self.sigma_begin, self.sigma_end, self.num_classes).float()


#: The official configs (all InstanceNorm++, ELU, geometric ladder to 0.01, EMA 0.999).
NCSNV2_CONFIGS = {
    "cifar10": NCSNv2Config("cifar10", 32, 50.0, 232),
    "celeba": NCSNv2Config("celeba", 64, 90.0, 500),
    "church": NCSNv2Config("church", 64, 140.0, 788, "deeper"),
    "tower": NCSNv2Config("tower", 128, 190.0, 1086, "deeper"),
    "bedroom": NCSNv2Config("bedroom", 128, 190.0, 1086, "deeper"),
    "ffhq": NCSNv2Config("ffhq", 256, 348.0, 2311, "deepest"),
}

# Encoder stages (name, input width, output width in units of ngf, dilation) and the names of
# the RefineNet blocks from the deepest stage up, per depth. A stage's first block downsamples,
# except the first stage's; a dilated "down" block keeps the resolution (as in the original).
_LAYOUTS = {
    "ncsnv2": ([("res1", 1, 1, None), ("res2", 1, 2, None), ("res3", 2, 2, 2), ("res4", 2, 2, 4)],
               ["refine1", "refine2", "refine3", "refine4"]),
    "deeper": ([("res1", 1, 1, None), ("res2", 1, 2, None), ("res3", 2, 2, None), ("res4", 2, 4, 2), ("res5", 4, 4, 4)],
               ["refine1", "refine2", "refine3", "refine4", "refine5"]),
    "deepest": ([("res1", 1, 1, None), ("res2", 1, 2, None), ("res3", 2, 2, None), ("res31", 2, 2, None),
                 ("res4", 2, 4, 2), ("res5", 4, 4, 4)],
                ["refine1", "refine2", "refine31", "refine3", "refine4", "refine5"]),
}


class InstanceNormPlus(nn.Module):
    """InstanceNorm++: instance norm that keeps each channel's mean, relative to the others, as a feature.

    ``out = γ (IN(x) + α · μ̃) + β`` with ``μ̃`` the per-channel spatial means standardised
    across channels (unbiased variance, ε = 1e-5 as the original). Per image, so batch
    composition never changes an output.
    """

    def __init__(self, features: int):
        super().__init__()
        self.alpha = nn.Parameter(1 + 0.02 * torch.randn(features))
        self.gamma = nn.Parameter(1 + 0.02 * torch.randn(features))
        self.beta = nn.Parameter(torch.zeros(features))

    def forward(self, x):
        means = x.mean(dim=(2, 3))
        means = (means - means.mean(-1, keepdim=True)) / torch.sqrt(means.var(-1, keepdim=True) + 1e-5)
        h = F.instance_norm(x, eps=1e-5) + means[..., None, None] * self.alpha[:, None, None]
        return self.gamma[:, None, None] * h + self.beta[:, None, None]


def _conv(cin, cout, k=3, dilation=1, bias=True):
    return nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=bias)


class _ConvMeanPool(nn.Module):
    """Convolution, then 2×2 mean pooling (the `conv` attribute carries the weights' names)."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = _conv(cin, cout, k)

    def forward(self, x):
        return F.avg_pool2d(self.conv(x), 2)


class _ResBlock(nn.Module):
    """Pre-activation residual block: norm, ELU, conv, norm, ELU, conv, plus a shortcut."""

    def __init__(self, cin, cout, down: bool, dilation=None):
        super().__init__()
        d = dilation or 1
        mid = cin if down else cout  # a "down" block widens in its second conv, a plain one in its first
        self.normalize1 = InstanceNormPlus(cin)
        self.conv1 = _conv(cin, mid, dilation=d)
        self.normalize2 = InstanceNormPlus(mid)
        if down and dilation is None:
            self.conv2 = _ConvMeanPool(mid, cout, 3)
            self.shortcut = _ConvMeanPool(cin, cout, 1)
        else:
            self.conv2 = _conv(mid, cout, dilation=d)
            if down or cin != cout:
                # the original's dilated shortcut is a 3×3 conv; the plain one a 1×1
                self.shortcut = _conv(cin, cout, 3 if dilation else 1, dilation=d)
        self.has_shortcut = down or cin != cout

    def forward(self, x):
        h = self.conv1(F.elu(self.normalize1(x)))
        h = self.conv2(F.elu(self.normalize2(h)))
        return (self.shortcut(x) if self.has_shortcut else x) + h


class _RCU(nn.Module):
    """Residual conv units: ``n_blocks`` × (ELU, conv, ELU, conv) with an identity skip each."""

    def __init__(self, features, n_blocks, n_stages=2):
        super().__init__()
        self.shape = (n_blocks, n_stages)
        for i in range(n_blocks):
            for j in range(n_stages):
                self.add_module(f"{i + 1}_{j + 1}_conv", _conv(features, features, bias=False))

    def forward(self, x):
        for i in range(self.shape[0]):
            h = x
            for j in range(self.shape[1]):
                h = getattr(self, f"{i + 1}_{j + 1}_conv")(F.elu(h))
            x = x + h
        return x


class _CRP(nn.Module):
    """Chained residual pooling: ELU, then a chain of (5×5 max-pool, conv) summed into the input."""

    def __init__(self, features, n_stages=2):
        super().__init__()
        self.convs = nn.ModuleList(_conv(features, features, bias=False) for _ in range(n_stages))

    def forward(self, x):
        x = F.elu(x)
        path = x
        for conv in self.convs:
            path = conv(F.max_pool2d(path, 5, stride=1, padding=2))
            x = x + path
        return x


class _MSF(nn.Module):
    """Multi-resolution fusion: a conv per input, bilinear resize to a common size, sum."""

    def __init__(self, in_planes, features):
        super().__init__()
        self.convs = nn.ModuleList(_conv(c, features) for c in in_planes)

    def forward(self, xs, size):
        out = 0
        for conv, x in zip(self.convs, xs):
            h = conv(x)
            if tuple(h.shape[2:]) != tuple(size):
                h = F.interpolate(h, size=size, mode="bilinear", align_corners=True)
            out = out + h
        return out


class _Refine(nn.Module):
    """RefineNet block: RCUs on each input, fusion (when there are two), CRP, output RCUs."""

    def __init__(self, in_planes, features, start=False, end=False):
        super().__init__()
        self.adapt_convs = nn.ModuleList(_RCU(c, 2) for c in in_planes)
        self.output_convs = _RCU(features, 3 if end else 1)
        if not start:
            self.msf = _MSF(in_planes, features)
        self.crp = _CRP(features)

    def forward(self, xs, size):
        hs = [rcu(x) for rcu, x in zip(self.adapt_convs, xs)]
        h = self.msf(hs, size) if len(hs) > 1 else hs[0]
        return self.output_convs(self.crp(h))


class NCSNv2(nn.Module):
    """The NCSNv2 score network ``s(x, σ) = f(2x − 1) / σ`` for images in [0, 1].

    Args:
        config: an :class:`NCSNv2Config` (``NCSNV2_CONFIGS["cifar10"]`` for the paper's model).

    ``forward(x, sigma)`` takes a float or one σ per image (the ``Score`` protocol);
    :meth:`forward_labels` is the official interface (integer labels into ``sigmas``).
    """

    def __init__(self, config: NCSNv2Config = NCSNV2_CONFIGS["cifar10"]):
        super().__init__()
        if config.depth not in _LAYOUTS:
            raise ValueError(f"NCSNv2 depth must be one of {sorted(_LAYOUTS)}, got {config.depth!r}")
        self.config = config
        ngf, c = config.ngf, config.channels
        stages, refines = _LAYOUTS[config.depth]
        self.register_buffer("sigmas", config.sigmas())  # the training ladder (used by forward_labels)
        self.begin_conv = _conv(c, ngf)
        self.normalizer = InstanceNormPlus(ngf)
        self.end_conv = _conv(ngf, c)
        self._stages = [name for name, *_ in stages]
        for i, (name, cin, cout, dilation) in enumerate(stages):
            self.add_module(name, nn.ModuleList([
                _ResBlock(cin * ngf, cout * ngf, down=i > 0, dilation=dilation),
                _ResBlock(cout * ngf, cout * ngf, down=False, dilation=dilation),
            ]))
        # RefineNet from the deepest stage up: each block fuses a stage with the block below and
        # outputs the width of the next shallower stage (ngf for the last one)
        widths = [cout * ngf for *_, cout, _ in stages]
        self._refines = list(refines)
        for k, name in enumerate(refines):
            s = len(stages) - 1 - k
            out = widths[s - 1] if s > 0 else ngf
            self.add_module(name, _Refine([widths[s]] if k == 0 else [widths[s]] * 2, out, start=k == 0, end=s == 0))

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """The σ-free network ``f``: images in [0, 1] → ``σ × score``."""
        h = self.begin_conv(2 * x - 1)  # the official input map for `rescaled: false`
        feats = []
        for name in self._stages:
            for block in getattr(self, name):
                h = block(h)
            feats.append(h)
        out = None
        for k, name in enumerate(self._refines):
            skip = feats[len(feats) - 1 - k]
            out = getattr(self, name)([skip] if out is None else [skip, out], skip.shape[2:])
        return self.end_conv(F.elu(self.normalizer(out)))

    def _check(self, x):
        c, s = self.config.channels, self.config.image_size
        # the net is convolutional: any size its mean-pooling stages divide evenly works
        step = 2 ** sum(1 for _, _, _, dil in _LAYOUTS[self.config.depth][0][1:] if dil is None)
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] % step or x.shape[3] % step:
            from .purify import InvalidInputError

            raise InvalidInputError(f"NCSNv2 ({self.config.name}) expects images (B, {c}, H, W) with H, W "
                                    f"multiples of {step} (trained at {s}×{s}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The score ``f(2x − 1)/σ``; ``sigma`` a float or one level per image (shape (B,))."""
        self._check(x)
        return self.f(x) / _sigma_column(sigma, x)  # s = f(x)/σ (NCSNv2's parameterisation)

    def forward_labels(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The official call ``net(x, y)``: the score at ``σ = sigmas[y]`` for integer labels."""
        return self.forward(x, self.sigmas[labels.long()].to(x.dtype))


def ncsnv2_state_from_checkpoint(obj, net: NCSNv2, ema: bool = True, source: str = "the checkpoint"):
    """The state dict for ``net`` out of any saved form of an NCSNv2 checkpoint.

    Forms: a bare state dict; the same with DataParallel's ``module.`` prefix; the official
    runner's list ``[model state, optimiser state, epoch, step, EMA shadow]`` (the EMA entry
    only when training used EMA). The EMA shadow holds the trainable parameters only, without
    the prefix; buffers (the ``sigmas`` ladder) come from the model state, as the official
    sampler does (load the model state, then copy the shadow over the parameters).

    Returns:
        ``(state, info)`` with ``info`` saying which form and which weights were used.
    """
    info = {"format": None, "weights": None, "epoch": None, "step": None, "prefix_stripped": False}
    shadow = None
    if isinstance(obj, (list, tuple)):
        if not obj or not isinstance(obj[0], dict):
            raise ValueError(f"{source} is a list whose first entry is not a state dict: not an NCSNv2 runner checkpoint")
        info["format"] = "runner-list"
        model_state = obj[0]
        if len(obj) >= 4:
            info["epoch"], info["step"] = obj[2], obj[3]
        if len(obj) >= 5 and isinstance(obj[-1], dict):
            shadow = obj[-1]
    elif isinstance(obj, dict):
        info["format"] = "state-dict"
        model_state = obj
    else:
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict or the NCSNv2 runner's list")
    state, info["prefix_stripped"] = strip_prefix(model_state)
    if ema and shadow is not None:
        shadow, _ = strip_prefix(shadow)
        params = {name for name, _ in net.named_parameters()}
        missing, extra = params - set(shadow), set(shadow) - params
        if missing or extra:
            raise WeightsMismatchError(
                f"the EMA entry of {source} does not fit NCSNv2 ({net.config.name}): "
                f"missing {sorted(missing)[:6]} ({len(missing)}), unexpected {sorted(extra)[:6]} ({len(extra)}); "
                f"pass ema=False to use the raw weights")
        state.update({k: shadow[k] for k in params})
        info["weights"] = "ema"
    elif info["format"] == "runner-list":
        info["weights"] = "raw"
        if ema:
            warnings.warn(f"{source} has no EMA entry; using the raw (non-EMA) weights", stacklevel=3)
    else:
        info["weights"] = "as saved (a bare state dict: EMA or raw, the file does not say)"
    return state, info


def load_ncsnv2(path, config: str | NCSNv2Config = "cifar10", ema: bool = True, map_location="cpu"):
    """Load a released NCSNv2 checkpoint as a frozen score network (eval mode, no parameter gradients).

    The file is read with ``torch.load(..., weights_only=True)`` (or safetensors): tensors and
    plain containers only, never code. The official runner saves exactly such a list.

    Args:
        path: ``checkpoint_300000.pth`` of the official CIFAR-10 run (or a bare state dict,
            ``.pt/.pth/.safetensors``).
        config: a name in :data:`NCSNV2_CONFIGS` or an :class:`NCSNv2Config`.
        ema: use the EMA weights when the file has them (the official samples do).

    Returns:
        ``(net, info)``: the :class:`NCSNv2` (a ``Score``) and a dict (file, format, weights,
        epoch, step, number of parameters).

    Example:
        >>> net, info = load_ncsnv2("exp/logs/cifar10/checkpoint_300000.pth")  # doctest: +SKIP
        >>> purifier = Purifier(net, PurifyConfig(eps_pur=12 / 255))  # doctest: +SKIP
    """
    if isinstance(config, str):
        if config not in NCSNV2_CONFIGS:
            raise ValueError(f"unknown NCSNv2 config {config!r}: choose one of {sorted(NCSNV2_CONFIGS)}")
        config = NCSNV2_CONFIGS[config]
    path = Path(path)
    obj = read_weights(path, map_location=map_location)
    net = NCSNv2(config)
    state, info = ncsnv2_state_from_checkpoint(obj, net, ema=ema, source=str(path))
    check_state_dict(net, state, f"{path} (NCSNv2 {config.name})")
    want = config.sigmas()
    got = state["sigmas"].float()
    if not torch.allclose(got, want, rtol=1e-4, atol=0):
        raise WeightsMismatchError(
            f"{path}: its σ ladder ({float(got[0]):.4g} → {float(got[-1]):.4g}, {got.numel()} levels) is not "
            f"config {config.name}'s ({config.sigma_begin} → {config.sigma_end}, {config.num_classes}); pick the matching config")
    net.load_state_dict(state, strict=True)
    net.eval().requires_grad_(False)
    info.update(file=str(path), config=config.name, parameters=sum(p.numel() for p in net.parameters()))
    return net, info
