"""Bring your own classifier: a Python factory for the architecture, a weights file read as data.

The architecture comes from CODE THE USER NAMES — ``path/to/file.py:function`` or
``package.module:function`` — which is imported and called like any script the user runs
(so name only your own code, or code you trust). The weights come from a FILE, read as data:
``.safetensors``, or ``.pt/.pth`` with ``torch.load(..., weights_only=True)``; nothing in a
weights file is ever executed. The result is a :class:`~pursamere.method.adapter.ClassifierAdapter`
(images in [0, 1] → logits), checked on a probe batch. The package never downloads anything.

Example (``my_models.py`` defines ``def wrn(): return WideResNet(28, 10)``)::

    clf = load_classifier(ClassifierSpec("my_models.py:wrn", weights="wrn-28-10.pt",
                                         normalization="cifar10"))
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..method.adapter import NORMALIZATIONS, ClassifierAdapter
from ..method.weights import load_state_strict, read_weights, strip_prefix

__all__ = ["ClassifierSpec", "load_factory", "load_classifier", "classifier_state_from_file", "probe_classifier",
           "WRAPPER_KEYS"]

#: Keys under which training scripts commonly nest the state dict (tried in this order when the
#: file is not a bare state dict and no ``state_key`` is given).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "state")


@dataclass(frozen=True)
class ClassifierSpec:
    """Where a user's classifier comes from and what input it expects (a preset can hold one)."""

    factory: str  # "path/to/file.py:function" or "package.module:function" → an nn.Module (user code)
    weights: Optional[str] = None  # .safetensors / .pt / .pth state dict (None: the factory loads its own)
    normalization: Optional[str] = None  # a name in NORMALIZATIONS ("imagenet", "cifar10", "none"), or give mean/std
    mean: Optional[tuple] = None  # per-channel mean the model expects (overrides `normalization`)
    std: Optional[tuple] = None
    input_size: Optional[tuple] = None  # (H, W) the model expects; None: the data's size
    num_classes: int = 10
    state_key: Optional[str] = None  # key of the state dict inside the weights file (None: found automatically)
    factory_kwargs: dict = field(default_factory=dict)  # keyword arguments for the factory

    def mean_std(self):
        """The ``(mean, std)`` to use: explicit values first, else the named normalisation."""
        if self.mean is not None or self.std is not None:
            return self.mean, self.std
        if self.normalization is None:
            return None, None
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}: choose one of {sorted(NORMALIZATIONS)} or give mean and std")
        return NORMALIZATIONS[self.normalization]


def _split(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"classifier factory must look like 'path/to/file.py:function' or 'package.module:function', got {spec!r}")
    target, name = spec.rsplit(":", 1)  # rsplit: a Windows drive letter keeps its colon
    if not target or not name.isidentifier():
        raise ValueError(f"classifier factory {spec!r}: expected '<file.py or module>:<function name>'")
    return target, name


def _import_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no factory file at {path}")
    # a unique module name per file, so two factory files called models.py do not collide
    name = f"pursamere_user_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # as when running the file: it may import its neighbours
    try:
        spec.loader.exec_module(module)  # the user's own code, named explicitly by the user
    except Exception as e:
        sys.modules.pop(name, None)
        raise ValueError(f"importing the factory file {path} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(folder)
    return module


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The function named by ``"path/to/file.py:function"`` or ``"package.module:function"``.

    A file is recognised by its ``.py`` suffix or a path separator; anything else is imported
    as a module (it must be installed or on ``PYTHONPATH``). Importing runs that code: this is
    for the user's own architecture definitions.
    """
    target, name = _split(spec)
    if target.endswith(".py") or "/" in target or "\\" in target:
        module, where = _import_file(Path(target)), f"file {target}"
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise ValueError(f"classifier factory {spec!r}: no module named {e.name!r} (install it or add it to PYTHONPATH)") from None
        where = f"module {target}"
    fn = getattr(module, name, None)
    if fn is None:
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))[:12]
        raise ValueError(f"{where} has no function {name!r} (it defines: {', '.join(defined) or 'nothing callable'})")
    if not callable(fn):
        raise ValueError(f"{where}: {name!r} is a {type(fn).__name__}, not a function")
    return fn


def classifier_state_from_file(path, state_key: Optional[str] = None) -> dict:
    """The state dict in a weights file: bare, or nested under ``state_key`` / a :data:`WRAPPER_KEYS` key.

    DataParallel's ``module.`` prefix is dropped when every key carries it.
    """
    obj = read_weights(path)
    if state_key is not None:
        if not isinstance(obj, dict) or state_key not in obj:
            have = sorted(map(str, obj))[:12] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path} has no entry {state_key!r} (it has: {have})")
        obj = obj[state_key]
    elif isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if not nested:
            raise ValueError(f"{path} is not a state dict and has none of the usual entries {list(WRAPPER_KEYS)} "
                             f"(it has: {sorted(map(str, obj))[:12]}); name the entry with state_key")
        obj = obj[nested[0]]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of named tensors")
    state, _ = strip_prefix(obj)
    return state


def probe_classifier(clf: nn.Module, image_shape, num_classes: int, source: str = "the classifier", device="cpu") -> None:
    """Run a probe batch of 2 images: logits must be ``(2, num_classes)``, finite, with an input gradient."""
    x = torch.rand(2, *image_shape, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    try:
        logits = clf(x)
    except Exception as e:
        raise ValueError(f"{source} fails on a probe batch of shape {tuple(x.shape)}: {type(e).__name__}: {e}") from e
    if tuple(logits.shape) != (2, num_classes):
        raise ValueError(f"{source} returns shape {tuple(logits.shape)} on a probe batch of 2 images, expected (2, {num_classes})")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{source} returns NaN or infinite logits on a probe batch")
    if not logits.requires_grad:
        raise ValueError(f"{source} gives no gradient with respect to its input (torch.no_grad or detach inside "
                         f"forward?): attacks need input gradients")
    (g,) = torch.autograd.grad(logits[:, 0].sum(), x, allow_unused=True)
    if g is None:
        raise ValueError(f"{source}'s logits do not depend on its input")


def load_classifier(spec: ClassifierSpec, image_shape=(3, 32, 32), device="cpu") -> ClassifierAdapter:
    """Build the user's classifier from a :class:`ClassifierSpec`, load its weights, wrap and probe it.

    Args:
        spec: the factory, the weights file and the input the model expects.
        image_shape: ``(C, H, W)`` of the data the pipeline feeds (CIFAR-10: ``(3, 32, 32)``).
        device: where to put it.

    Returns:
        A frozen :class:`~pursamere.method.adapter.ClassifierAdapter` in eval mode: images in [0, 1] → logits.
    """
    fn = load_factory(spec.factory)
    try:
        model = fn(**dict(spec.factory_kwargs))
    except Exception as e:
        raise ValueError(f"classifier factory {spec.factory!r} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"classifier factory {spec.factory!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if spec.weights is not None:
        state = classifier_state_from_file(spec.weights, spec.state_key)
        load_state_strict(model, state, f"weights file {spec.weights}")
    mean, std = spec.mean_std()
    clf = ClassifierAdapter(model, mean, std, input_size=spec.input_size, num_classes=spec.num_classes).to(device)
    probe_classifier(clf, image_shape, spec.num_classes, f"classifier {spec.factory!r}", device=device)
    return clf
