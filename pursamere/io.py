"""Safe files: atomic writes, checksummed checkpoints read with ``weights_only=True``, fingerprints, figures."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "save_checkpoint", "load_checkpoint",
           "save_tensor_state", "load_tensor_state", "CorruptCheckpointError", "fingerprint", "config_hash", "save_figure",
           "check_can_create"]

_TRAILER = b"\nPURSAMERE-SHA256:"


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated, altered or not a pursamere checkpoint."""


def check_can_create(path, what: str = "the output") -> None:
    """Refuse, in one line and writing nothing, a ``path`` that could not be created: one whose nearest existing
    ancestor is a file or a folder this process cannot write into. (It cannot foresee every failure, e.g. a
    special file system that refuses its root; writers still report those.)"""
    path = Path(path).expanduser()
    parent = path.absolute().parent if path.exists() else path.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot create {what} {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create {what} {path}: {parent} is not writable")


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path, state: dict) -> Path:
    """``torch.save`` the state, append its SHA-256, write atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    return atomic_write_bytes(path, payload + _TRAILER + digest)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; verify its checksum first.

    The payload is then read with ``torch.load(..., weights_only=True)``: tensors and plain
    containers only, never code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    blob = path.read_bytes()
    cut = blob.rfind(_TRAILER)
    if cut < 0 or len(blob) - cut - len(_TRAILER) != 64:
        raise CorruptCheckpointError(f"{path} has no pursamere checksum trailer (truncated, or not written by pursamere)")
    payload, digest = blob[:cut], blob[cut + len(_TRAILER):]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptCheckpointError(f"{path} fails its SHA-256 check: the file is corrupt; delete it and retrain (or use --fresh)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


def _state_digest(tensors: dict, values: str) -> str:
    h = hashlib.sha256(values.encode())
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"\0{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes of any dtype (bfloat16 too)
    return h.hexdigest()


_STATE_KEY = "pursamere-state"


def save_tensor_state(path, state: dict) -> Path:
    """A flat state (string keys; tensors, and JSON values beside them) as a ``safetensors`` file, written atomically.

    Unlike :func:`save_checkpoint` it holds no pickle, so it can be committed and read on any machine. Its metadata
    holds the JSON values and a SHA-256 over names, dtypes, shapes, bytes and values, checked by
    :func:`load_tensor_state`.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    values = json.dumps({k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}, sort_keys=True)
    # one metadata entry: safetensors writes several in no fixed order, and the same state must give the same bytes
    meta = json.dumps({"values": values, "sha256": _state_digest(tensors, values)}, sort_keys=True)
    return atomic_write_bytes(path, save(tensors, metadata={_STATE_KEY: meta}))


def load_tensor_state(path) -> dict:
    """Read a state written by :func:`save_tensor_state` (no code runs: ``safetensors``); verify its SHA-256."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    blob = path.read_bytes()
    try:
        tensors = load(blob)
        size = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8:8 + size]).get("__metadata__") or {}
        if _STATE_KEY in meta:
            meta = json.loads(meta[_STATE_KEY])
        values = meta["values"]  # (files of 2026-12-02 held "values" and "sha256" as two entries)
        state = json.loads(values)
    except (SafetensorError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"{path} is not a pursamere tensor state ({type(e).__name__})") from None
    if not isinstance(state, dict) or meta.get("sha256") != _state_digest(tensors, values):
        raise CorruptCheckpointError(f"{path} fails its SHA-256 check: the file is corrupt")
    if set(state) & set(tensors):
        raise CorruptCheckpointError(f"{path} names an entry twice")
    return {**state, **tensors}


def fingerprint(*tensors: torch.Tensor) -> str:
    """A short SHA-256 of tensors' bytes: ties a checkpoint or a results row to the data and weights it used."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def config_hash(obj) -> str:
    """A short SHA-256 of a JSON-able settings object (dataclass dicts, lists, numbers)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a Matplotlib figure as PNG atomically and close it (the package's one PNG writer)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: release it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
