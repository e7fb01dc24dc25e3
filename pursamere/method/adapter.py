"""Any classifier as the pipeline sees one: images in [0, 1] NCHW in, logits (B, classes) out.

A user's model usually expects its own input: normalised by a mean and std (ImageNet's, or the
data set's), often at another size (224×224 for ImageNet models). :class:`ClassifierAdapter`
puts that in front of the model — resize, then normalise — with differentiable operations, so
attacks get exact input gradients through it; it holds the model in eval mode with its
parameters frozen (purification and attacks never train it).

Example:
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> clf = ClassifierAdapter(net, *NORMALIZATIONS["cifar10"], input_size=8)
    >>> clf(torch.rand(2, 3, 32, 32)).shape  # resized 32 → 8, normalised, classified
    torch.Size([2, 10])
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .purify import InvalidInputError

__all__ = ["ClassifierAdapter", "NORMALIZATIONS"]

#: Common input normalisations ``(mean, std)`` per channel, for images in [0, 1]. Use the values
#: YOUR model was trained with: e.g. many CIFAR-10 repositories use std (0.2023, 0.1994, 0.2010)
#: instead of the data set's true (0.2471, 0.2435, 0.2616); RobustBench models normalise inside
#: the model and take [0, 1] input (``None``: no normalisation here).
NORMALIZATIONS = {
    "none": (None, None),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
}


def _size(value) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    size = (int(value), int(value)) if isinstance(value, (int, float)) else tuple(int(v) for v in value)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be a positive int or (H, W), got {value!r}")
    return size


class ClassifierAdapter(nn.Module):
    """``logits = model((resize(x) − mean) / std)`` for ``x`` in [0, 1], model frozen in eval mode.

    Args:
        model: the user's ``nn.Module`` (returns logits ``(B, classes)``).
        mean, std: per-channel normalisation the model expects (``None``: none; the model takes
            [0, 1] input or normalises itself). Both or neither.
        input_size: ``(H, W)`` (or one int) the model expects; images of another size are
            resized by ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``
            — differentiable, and the same map in the forward and backward pass. ``None``: as given.
        num_classes: when given, every output is checked to be ``(B, num_classes)``.

    The adapter stays in eval mode: ``.train()`` does not reach the model (batch-norm statistics
    and dropout stay fixed). To fine-tune, use ``adapter.model`` directly.
    """

    def __init__(self, model: nn.Module, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 input_size=None, num_classes: Optional[int] = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"ClassifierAdapter wraps a torch.nn.Module, got {type(model).__name__}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (per channel), or neither")
        self.model = model
        self.input_size = _size(input_size)
        self.num_classes = None if num_classes is None else int(num_classes)
        if mean is not None:
            m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
            s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
            if m.shape != s.shape:
                raise ValueError(f"mean has {m.numel()} channels but std has {s.numel()}")
            if not bool(torch.isfinite(m).all() and torch.isfinite(s).all()) or bool((s <= 0).any()):
                raise ValueError(f"std must be finite and > 0 and mean finite, got mean={m.tolist()} std={s.tolist()}")
            self.register_buffer("mean", m.view(1, -1, 1, 1))
            self.register_buffer("std", s.view(1, -1, 1, 1))
        else:
            self.mean = self.std = None
        self.model.eval().requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        """Kept in eval mode whatever ``mode`` is (see the class docstring)."""
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)`` of images ``x`` in [0, 1], shape ``(B, C, H, W)``."""
        if x.ndim != 4:
            raise InvalidInputError(f"classifier expects images (B, C, H, W), got shape {tuple(x.shape)}")
        if self.mean is not None and x.shape[1] != self.mean.shape[1]:
            raise InvalidInputError(f"classifier normalises {self.mean.shape[1]} channels, got images with {x.shape[1]}")
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
        if self.mean is not None:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        logits = self.model(x)
        if not isinstance(logits, torch.Tensor):
            raise InvalidInputError(f"the classifier returned a {type(logits).__name__}, not a logits tensor "
                                    f"(wrap it so that forward returns the logits only)")
        if logits.ndim != 2 or logits.shape[0] != x.shape[0] or (self.num_classes and logits.shape[1] != self.num_classes):
            want = f"({x.shape[0]}, {self.num_classes or 'classes'})"
            raise InvalidInputError(f"the classifier returned shape {tuple(logits.shape)}, expected logits {want}")
        return logits

    def extra_repr(self) -> str:
        norm = "none" if self.mean is None else f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
        return f"normalise: {norm}, input_size={self.input_size}, num_classes={self.num_classes}"
