"""Shipped model weights: safetensors files under ``weights/`` with a SHA-256 manifest, verified on load.

Each model has a name like ``"cifar10/classifier"`` or ``"digits/score"``; its tensors live in
``weights/<name>.safetensors`` (no pickle: the format holds tensors only) and its entry in
``weights/MANIFEST.json`` records the file's SHA-256 and size, a fingerprint of the tensors
themselves (names, dtypes, shapes and bytes), and the caller's metadata (architecture config,
the command that re-trains it, measured accuracy and time). :func:`load_weights` checks all
three before returning anything, so a truncated, altered or swapped file fails with an error
naming it.

Example::

    save_weights("cifar10/classifier", net, {"architecture": {...}, "command": "python scripts/..."})
    state, meta = load_weights("cifar10/classifier")
    net.load_state_dict(state)
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..io import atomic_write_bytes, atomic_write_json

__all__ = ["WeightsError", "weights_root", "save_weights", "load_weights", "verify", "tensor_fingerprint", "manifest",
           "shipped_summary", "pack_checkpoint", "unpack_checkpoint"]

MANIFEST = "MANIFEST.json"
_FORMAT = 1


class WeightsError(ValueError):
    """A shipped weights file is missing from the manifest, altered, or does not match its entry."""


def weights_root(root=None) -> Path:
    """The weights folder: ``root``, else ``$PURSAMERE_WEIGHTS``, else ``weights/`` beside the package."""
    if root is not None:
        return Path(root)
    env = os.environ.get("PURSAMERE_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "weights"


def _check_name(name: str) -> str:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or not all(ch.isalnum() or ch in "-_." for ch in p) for p in parts):
        raise ValueError(f"weights name must be like 'cifar10/classifier' (letters, digits, - _ . and /), got {name!r}")
    return name


def tensor_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and raw bytes of each."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def manifest(root=None) -> dict:
    """The manifest's ``{name: entry}`` (empty when there is none yet)."""
    path = weights_root(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("models"), dict):
        raise WeightsError(f"{path} is not a pursamere weights manifest (format {_FORMAT})")
    return doc["models"]


def save_weights(name: str, module_or_state_dict, meta: Optional[dict] = None, root=None) -> dict:
    """Write ``<root>/<name>.safetensors`` and its manifest entry (both atomically); returns the entry.

    Args:
        name: ``"<data set>/<role>"``, e.g. ``"cifar10/score"``.
        module_or_state_dict: an ``nn.Module`` (its ``state_dict()``) or a ``{name: tensor}`` mapping.
        meta: JSON-able facts kept in the manifest (architecture, command, metrics, ...).
    """
    from safetensors.torch import save as st_save

    _check_name(name)
    state = module_or_state_dict.state_dict() if isinstance(module_or_state_dict, torch.nn.Module) else module_or_state_dict
    # safetensors wants dense, unshared, standard-layout tensors; channels_last weights become contiguous
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    blob = st_save(state, metadata={"name": name})
    root = weights_root(root)
    rel = f"{name}.safetensors"
    atomic_write_bytes(root / rel, blob)
    entry = {"file": rel, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
             "fingerprint": tensor_fingerprint(state), "meta": json.loads(json.dumps(meta or {}))}
    models = manifest(root)
    models[name] = entry
    atomic_write_json(root / MANIFEST, {"format": _FORMAT, "models": dict(sorted(models.items()))})
    return entry


def _entry(name: str, root: Path) -> dict:
    models = manifest(root)
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise WeightsError(f"no model {name!r} in {root / MANIFEST} (shipped: {known})")
    return models[name]


def load_weights(name: str, root=None) -> tuple[dict, dict]:
    """Read a shipped model after checking its size, SHA-256 and tensor fingerprint.

    Returns:
        ``(state_dict, meta)``: CPU tensors and the manifest's metadata for ``name``.
    Raises:
        WeightsError: the name is not in the manifest, or the file does not match its entry.
        FileNotFoundError: the manifest lists the file but it is absent.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    root = weights_root(root)
    entry = _entry(_check_name(name), root)
    path = root / entry["file"]
    if not path.is_file():
        cmd = entry.get("meta", {}).get("command")
        raise FileNotFoundError(f"weights file {path} is missing" + (f"; re-train it with: {cmd}" if cmd else ""))
    blob = path.read_bytes()
    if len(blob) != entry["bytes"] or hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise WeightsError(f"{path} fails its check against {root / MANIFEST} ({len(blob)} bytes, expected "
                           f"{entry['bytes']}; SHA-256 differs): the file is corrupt or altered")
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e})") from e
    if tensor_fingerprint(state) != entry["fingerprint"]:
        raise WeightsError(f"{path}: its tensors do not match the manifest's fingerprint")
    return state, entry.get("meta", {})


def verify(root=None, names=None) -> list[str]:
    """Check every shipped file (or ``names``) against the manifest; returns the names checked.

    Raises the first :class:`WeightsError` / ``FileNotFoundError`` met, naming the file.
    """
    root = weights_root(root)
    names = sorted(manifest(root)) if names is None else list(names)
    for name in names:
        load_weights(name, root)
    return names


def _dotted(node: dict, head: str = ""):
    """Nested metrics (PSNR per σ, AUROC per σ) as ``("psnr.0.1.psnr_denoised", value)`` pairs, in order."""
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _dotted(v, f"{head}{k}.")
        else:
            yield f"{head}{k}", v


def shipped_summary(prefix: str = "", root=None) -> list[dict]:
    """One row per shipped model whose name starts with ``prefix``: size, parameters, what its training
    measured (the metrics its training script recorded in the manifest, flattened) and the command
    that re-trains it. The manifest is read as it is; files are not verified here (:func:`verify` does)."""
    rows = []
    for name, entry in sorted(manifest(root).items()):
        if not name.startswith(prefix):
            continue
        meta = entry.get("meta", {})
        row = {"model": name, "kind": meta.get("kind"), "MB": round(entry["bytes"] / 2 ** 20, 2)}
        row.update(_dotted(meta.get("metrics") or {}))
        row["command"] = meta.get("command")
        rows.append(row)
    return rows


# ------------------------------------------------------------------ resume bundles for runs that span sessions
def _flatten(obj, prefix: str, tensors: dict):
    """The skeleton of ``obj`` (JSON-able) with every tensor replaced by a reference into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, prefix, tensors), _flatten(v, prefix, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [_flatten(v, prefix, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise WeightsError(f"cannot bundle a {type(obj).__name__}: a resume bundle holds tensors and plain values only")


def _unflatten(node, tensors: dict):
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            return [_unflatten(v, tensors) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
    return node


def pack_checkpoint(checkpoint, bundle) -> Path:
    """A training checkpoint (``pursamere.io.save_checkpoint``: model, optimiser, RNG state, step) as a
    safetensors file with its structure in the metadata: something a run can commit and resume from in a
    later session, without pickle."""
    from safetensors.torch import save as st_save

    from ..io import load_checkpoint

    tensors: dict = {}
    skeleton = _flatten(load_checkpoint(checkpoint), "", tensors)
    blob = st_save(tensors, metadata={"pursamere-resume-bundle": json.dumps(skeleton)})
    return atomic_write_bytes(bundle, blob)


def unpack_checkpoint(bundle, checkpoint) -> Path:
    """The training checkpoint a :func:`pack_checkpoint` bundle holds, written back for ``resume=True``."""
    from safetensors import safe_open
    from safetensors.torch import load as st_load

    from ..io import save_checkpoint

    path = Path(bundle)
    if not path.is_file():
        raise FileNotFoundError(f"no resume bundle at {path}")
    blob = path.read_bytes()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "pursamere-resume-bundle" not in meta:
        raise WeightsError(f"{path} is not a pursamere resume bundle")
    return save_checkpoint(checkpoint, _unflatten(json.loads(meta["pursamere-resume-bundle"]), st_load(blob)))
