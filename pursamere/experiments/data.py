"""Data sets: digits (embedded default), CIFAR-10 (JPEG class folders; the official pickles in
:mod:`pursamere.experiments.cifar10`), image folders, and a preset's train/test split.

Images come back as float32 ``NCHW`` tensors in ``[0, 1]`` with int64 labels. Files from
outside are untrusted: archives are checked member by member (no links, no escaping names),
image sizes are read from the headers before decoding, and every shape, dtype and range is
checked before use. Problems raise :class:`~pursamere.experiments.images.DataError` with a
message that says what to do.

Example::

    split = load_digits_split(test_fraction=0.3, seed=0)
    x, y = load_cifar10("~/data", split="test", limit=1000)
    x, y, classes = load_image_folder("pets.tar.gz", size=32)
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from .cifar10 import (CIFAR10_CLASSES, OFFICIAL_MD5, OFFICIAL_URL, UnsafePickleError, _check_member,  # noqa: F401
                      _file_digest, _restricted_load, download_cifar10, load_cifar10)
from .images import MAX_IMAGE_BYTES, DataError, decode_image, is_image_name, stack_images

__all__ = ["DataError", "UnsafePickleError", "Split", "load_digits_split", "CIFAR10_CLASSES",
           "OFFICIAL_URL", "OFFICIAL_MD5", "load_cifar10", "download_cifar10", "load_image_folder",
           "load_cifar10_jpeg", "load_split", "table_indices", "validation_indices"]

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------- digits

class Split(NamedTuple):
    """A fixed train/test split: images ``(N, C, H, W)`` float32 in [0,1], int64 labels."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's 1,797 8×8 digits scaled to [0,1], split stratified and fixed by ``seed``.

    Returns:
        :class:`Split` with ``x_*`` of shape ``(N, 1, 8, 8)`` and ``classes = ("0", ..., "9")``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    images, labels = load_digits(return_X_y=True)
    x = torch.from_numpy((images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    y = torch.from_numpy(labels.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                           random_state=seed, stratify=labels)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Split(x[train_idx], y[train_idx], x[test_idx], y[test_idx], tuple(str(i) for i in range(10)))


# ---------------------------------------------------------------------------- image folders

def _folder_entries(path: Path) -> dict:
    entries = {}
    for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir() if f.is_file() and is_image_name(f.name))
        if not files:
            raise DataError(f"class folder {d} holds no PNG/JPEG images")
        entries[d.name] = [(f.name, f) for f in files]
    return entries


def _tar_entries(path: Path) -> dict:
    """Read image members of a tar (streaming, never to disk): ``{class: [(name, bytes)]}``."""
    entries, prefix = {}, None
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                _check_member(m, path)
                parts = PurePosixPath(m.name).parts
                if not m.isfile() or not is_image_name(parts[-1]):
                    continue
                if len(parts) < 2 or (prefix is not None and parts[:-2] != prefix):
                    raise DataError(f"{path}: image {m.name!r} is not in a class folder beside the others "
                                    f"(expected [{'/'.join(prefix or ())}/]<class>/<image>)")
                prefix = parts[:-2]
                if m.size > MAX_IMAGE_BYTES:
                    raise DataError(f"{path}: member {m.name!r} has {m.size} bytes, too large for an image")
                entries.setdefault(parts[-2], []).append((m.name, tf.extractfile(m).read()))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path} is not a readable tar archive ({e})") from e
    return {c: sorted(entries[c]) for c in sorted(entries)}


def _size_pair(size) -> Optional[tuple]:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    return pair


def load_image_folder(path: PathLike, size=None, limit_per_class: Optional[int] = None, mode: str = "RGB",
                      classes: Optional[Sequence[str]] = None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Class sub-folders of PNG/JPEG images, as a folder or a ``.tar(.gz)`` of one (read in memory).

    Args:
        path: ``path/<class>/<image>``, or an archive of ``[top/]<class>/<image>``.
        size: resize every image to ``size`` (int or ``(H, W)``); without it all must share a size.
        limit_per_class: keep the first images of each class, by file name.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (grey, 1 channel); every image is converted.
        classes: the label order; the classes found must be exactly these. Default: sorted names.
    Returns:
        ``(x, y, classes)``: float32 ``(N, C, H, W)`` in [0,1], int64 labels, the class names.
    """
    path = Path(path).expanduser()
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if limit_per_class is not None and (int(limit_per_class) != limit_per_class or limit_per_class < 1):
        raise ValueError(f"limit_per_class must be a positive integer or None, got {limit_per_class!r}")
    size = _size_pair(size)
    if path.is_dir():
        entries = _folder_entries(path)
    elif path.is_file():
        entries = _tar_entries(path)
    else:
        raise DataError(f"no image folder or archive at {path}")
    if not entries:
        raise DataError(f"{path} holds no class folders with PNG/JPEG images")
    if classes is None:
        classes = tuple(entries)
    elif set(classes) != set(entries) or len(set(classes)) != len(classes):
        raise DataError(f"{path}: expected classes {sorted(classes)}, found {sorted(entries)}")
    arrays, labels = [], []
    for label, c in enumerate(classes):
        for name, src in entries[c][:limit_per_class]:
            arrays.append((name, decode_image(name, src, mode, size)))
            labels.append(label)
    return stack_images(arrays), torch.tensor(labels, dtype=torch.int64), tuple(classes)


def load_cifar10_jpeg(archive_dir: PathLike, split: str = "test", limit_per_class: Optional[int] = None,
                      verify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 as class folders of JPEGs (``archive_dir/{split}.tar.gz``), in CIFAR-10 label order.

    With ``verify`` and a ``SHA256SUMS`` file beside the archive, the archive is checked first.
    Label it "CIFAR-10 (JPEG)": the pixels are close to, not equal to, the official ones.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    archive_dir = Path(archive_dir).expanduser()
    archive, sums = archive_dir / f"{split}.tar.gz", archive_dir / "SHA256SUMS"
    if not archive.is_file():
        raise DataError(f"no {archive}; expected {split}/<class>/NNNN.jpg packed as {split}.tar.gz")
    if verify and sums.is_file():
        expected = {ln.split()[-1].lstrip("*"): ln.split()[0] for ln in sums.read_text().splitlines() if ln.strip()}
        if archive.name not in expected:
            raise DataError(f"{sums} has no entry for {archive.name}")
        if _file_digest(archive, "sha256") != expected[archive.name]:
            raise DataError(f"{archive} fails its SHA-256 check against {sums}: corrupt or altered")
    x, y, _ = load_image_folder(archive, limit_per_class=limit_per_class, mode="RGB", classes=CIFAR10_CLASSES)
    if tuple(x.shape[1:]) != (3, 32, 32):
        raise DataError(f"{archive}: images are {tuple(x.shape[2:])}, CIFAR-10 images are 32x32")
    return x, y


# ---------------------------------------------------------------------------- a preset's split

def load_split(preset, data_root: Optional[str] = None) -> Split:
    """The preset's train/test split (digits are embedded; CIFAR-10 needs a local folder)."""
    if preset.data == "digits":
        return load_digits_split(seed=preset.data_seed)
    if preset.data == "cifar10":
        root = data_root or "data"
        xtr, ytr = _per_class(*load_cifar10(root, "train"), preset.train_limit_per_class)
        xte, yte = _per_class(*load_cifar10(root, "test"), preset.test_limit_per_class)
    elif preset.data == "cifar10-jpeg":
        root = data_root or "../shared/data/cifar10-jpeg"
        xtr, ytr = load_cifar10_jpeg(root, "train", limit_per_class=preset.train_limit_per_class)
        xte, yte = load_cifar10_jpeg(root, "test", limit_per_class=preset.test_limit_per_class)
    else:
        raise ValueError(f"preset {preset.name!r} names an unknown data set {preset.data!r}")
    return Split(xtr, ytr, xte, yte, CIFAR10_CLASSES)


def _per_class(x, y, limit):
    """The first ``limit`` images of every class, in file order (None: all)."""
    if limit is None:
        return x, y
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique():
        keep[(y == c).nonzero().flatten()[:limit]] = True
    return x[keep], y[keep]


def validation_indices(preset, n_test: int) -> torch.Tensor:
    """Test images set aside for tuning (the schedule sweep): never part of the tables."""
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(preset.data_seed + 1))[: preset.validation_size]


def table_indices(preset, n_test: int) -> torch.Tensor:
    """The tables' fixed order of test images, without the validation images."""
    perm = torch.randperm(n_test, generator=torch.Generator().manual_seed(preset.data_seed))
    held = torch.zeros(n_test, dtype=torch.bool)
    held[validation_indices(preset, n_test)] = True
    return perm[~held[perm]]
