"""Weights files read as data, never code, and state dicts checked key by key against a module.

Two readers, both safe for files from strangers: ``.safetensors`` (a tensor table) and PyTorch
``.pt/.pth/.bin`` files opened with ``torch.load(..., weights_only=True)`` (tensors and plain
containers only; an object that would run code is refused, not unpickled).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

__all__ = ["WeightsMismatchError", "read_weights", "strip_prefix", "check_state_dict", "load_state_strict"]


class WeightsMismatchError(ValueError):
    """A state dict does not fit a module: missing or unexpected keys, or shapes that differ."""


def read_weights(path, map_location="cpu"):
    """Read a weights file without executing anything in it.

    Args:
        path: ``.safetensors`` (read with the safetensors library) or any other name (read with
            ``torch.load(..., weights_only=True)``: a state dict, or a list/dict holding some).
        map_location: device for the tensors (CPU by default, so GPU-saved files load anywhere).

    Returns:
        The contents of the file, a ``{name: tensor}`` dict for safetensors; for PyTorch files the
        saved object (tensors, dicts, lists, numbers, strings).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except SafetensorError as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        numeric = _numpy_data_globals(path)
        if numeric:  # numpy numbers/arrays (e.g. a saved best accuracy): data, allowed by name
            try:
                with torch.serialization.safe_globals(numeric):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError:
                raise ValueError(f"{path} holds numpy object arrays or other objects that pursamere will not unpickle; "
                                 f"if you trust the file, re-save just its state dict once") from None
        # weights_only refused the file. If it names a class or function, the file holds an
        # object that unpickling would construct by running code: we do not do that.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(
                f"{path} holds a Python object ({found.group(1)}), not only tensors and plain containers, "
                f"so pursamere will not unpickle it; if you trust the file, re-save just its state dict once "
                f"(torch.save(model.state_dict(), 'weights.pt')) or convert it to .safetensors"
            ) from None
        raise ValueError(f"{path} is not a readable PyTorch weights file (corrupt, or another format)") from None
    except (RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable PyTorch weights file (truncated or another format): {first[:200]}") from None


def _numpy_data_globals(path) -> list:
    """The numpy data constructors a refused file needs, as an allowlist; [] if it needs anything else.

    Training scripts often save numpy scalars beside the weights (``best_acc``). numpy's scalar,
    array and dtype constructors build numbers and arrays, not code, so they are allowed by
    name — under both spellings of numpy's core module (``numpy.core`` before 2.0, ``numpy._core``).
    """
    try:
        import numpy as np

        wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint, or no numpy: nothing to allow
        return []
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{mod}.scalar"] = core.scalar
        allowed[f"{mod}._reconstruct"] = core._reconstruct
    allowed["numpy.ndarray"], allowed["numpy.dtype"] = np.ndarray, np.dtype
    if not wanted or any(name not in allowed for name in wanted):
        return []
    # a dtype is rebuilt through its class (numpy ≥ 1.25): allow the numeric and string ones
    kinds = [getattr(np.dtypes, k) for k in dir(getattr(np, "dtypes", None)) if k.endswith("DType")
             and k not in ("ObjectDType", "VoidDType")] if hasattr(np, "dtypes") else []
    return [(allowed[name], name) for name in wanted] + kinds


def strip_prefix(state: Mapping, prefix: str = "module.") -> tuple[dict, bool]:
    """Drop ``prefix`` (DataParallel's ``module.``) from every key when ALL keys carry it.

    Returns:
        ``(state, stripped)``.
    """
    keys = list(state)
    if keys and all(isinstance(k, str) and k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state.items()}, True
    return dict(state), False


def _names(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(module: nn.Module, state: Mapping, source: str = "the weights") -> None:
    """Raise :class:`WeightsMismatchError` unless ``state`` has exactly the module's keys and shapes.

    The message names the missing keys, the unexpected keys and the shape mismatches (the
    first few of each, with counts), so a user sees at once whether the file is for another
    architecture, another width, or carries a prefix.
    """
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(f"{source} is a {type(state).__name__}, not a state dict of named tensors")
    bad_values = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad_values:
        raise WeightsMismatchError(f"{source} has entries that are not tensors: {_names(map(str, bad_values))}")
    want = module.state_dict()
    missing = set(want) - set(state)
    unexpected = set(state) - set(want)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in sorted(set(want) & set(state))
              if tuple(state[k].shape) != tuple(want[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches (file vs model): {'; '.join(shapes[:4])}" + (f"; … ({len(shapes)} in all)" if len(shapes) > 4 else ""))
    raise WeightsMismatchError(f"{source} does not fit {type(module).__name__}: " + " | ".join(parts))


def load_state_strict(module: nn.Module, state: Mapping, source: str = "the weights") -> nn.Module:
    """:func:`check_state_dict`, then ``module.load_state_dict(state, strict=True)``; returns the module."""
    check_state_dict(module, state, source)
    module.load_state_dict(state, strict=True)
    return module
