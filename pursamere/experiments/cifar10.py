"""CIFAR-10 in the official python-pickle format: a restricted unpickler, the loader, and a checked download.

The official batches are pickles, so they are untrusted: they go through an unpickler that can
build numpy arrays and nothing else. The archive is downloaded only when asked
(``pursamere data cifar10 --download``), checked against its MD5, and its members are checked
one by one (no links, no names escaping the folder) and extracted with ``filter="data"``.
Problems raise :class:`~pursamere.experiments.images.DataError` with a message that says what to do.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import numpy as np
import torch

from .images import DataError

__all__ = ["CIFAR10_CLASSES", "OFFICIAL_URL", "OFFICIAL_MD5", "UnsafePickleError", "load_cifar10", "download_cifar10"]

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_DIRNAME = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SPLIT_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_MAX_BATCH_BYTES = 64 << 20      # an official batch is ~31 MB; anything far larger is not one
_MAX_DOWNLOAD_BYTES = 1 << 30    # the official archive is ~163 MiB

PathLike = Union[str, os.PathLike]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the numpy-array allow-list."""


# ---------------------------------------------------------------------------- restricted pickles

def _latin1_encode(text, encoding="latin1"):
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1"); allow only that.
    if not isinstance(text, str) or encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode is allowed only as (str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict:
    # Take the functions from numpy itself, so they are right for whichever numpy is installed.
    reconstruct = np.zeros(1).__reduce__()[0]       # _reconstruct: arrays at protocols 2-4
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]    # _frombuffer: arrays at protocol 5
    return {("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy.core.numeric", "_frombuffer"): frombuffer,
            ("numpy._core.numeric", "_frombuffer"): frombuffer,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load global '{module}.{name}': only numpy arrays and plain "
                                    "containers are allowed in a data file") from None


def _restricted_load(f):
    return _RestrictedUnpickler(f, encoding="bytes").load()


# ---------------------------------------------------------------------------- CIFAR-10 (pickles)

def _cifar_dir(root: PathLike) -> Path:
    root = Path(root).expanduser()
    if root.name == CIFAR_DIRNAME or (root / "test_batch").is_file() or (root / "data_batch_1").is_file():
        return root
    return root / CIFAR_DIRNAME


def _cifar_help(root: PathLike, problem: str) -> str:
    where = _cifar_dir(root)
    return (f"{problem}.\nCIFAR-10 is not bundled with pursamere. Either run "
            f"`pursamere data cifar10 --download --root {where.parent}`, or download {OFFICIAL_URL} "
            f"(MD5 {OFFICIAL_MD5}) yourself and unpack it with `tar -xzf {ARCHIVE_NAME} -C {where.parent}`, "
            f"so that {where}/ holds data_batch_1 ... data_batch_5, test_batch and batches.meta.")


def _read_pickle(path: Path, root: PathLike):
    size = path.stat().st_size
    if not 0 < size <= _MAX_BATCH_BYTES:
        raise DataError(_cifar_help(root, f"{path} has {size} bytes, not the size of a CIFAR-10 batch file (corrupt)"))
    try:
        with open(path, "rb") as f:
            obj = _restricted_load(f)
    except UnsafePickleError as e:
        raise DataError(f"{path} is not a plain CIFAR-10 data file and was NOT loaded: {e}. "
                        + _cifar_help(root, "Replace it with the official file")) from e
    except Exception as e:   # truncated or garbled pickles fail in many ways; all mean "corrupt"
        raise DataError(_cifar_help(root, f"{path} is corrupt ({type(e).__name__}: {e})")) from e
    if not isinstance(obj, dict):
        raise DataError(_cifar_help(root, f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict"))
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_batch(path: Path, root: PathLike) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path, root)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(_cifar_help(root, f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {got}"))
    try:
        labels = np.asarray(labels)
    except Exception as e:
        raise DataError(_cifar_help(root, f"{path}: 'labels' is not a list of integers ({e})")) from e
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataError(_cifar_help(root, f"{path}: 'labels' must be {len(data)} integers (one per image), "
                                          f"got {labels.dtype} array of shape {labels.shape}"))
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(_cifar_help(root, f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}"))
    return data, labels.astype(np.int64)


def load_cifar10(root: PathLike, split: str = "train", limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from the official python version (``root/cifar-10-batches-py/``), in file order.

    Args:
        root: the folder holding ``cifar-10-batches-py/`` (or that folder itself).
        split: ``"train"`` (data_batch_1..5, 50,000 images) or ``"test"`` (test_batch, 10,000).
        limit: keep only the first ``limit`` images (later batch files are then not read).
    Returns:
        ``(x, y)``: float32 ``(N, 3, 32, 32)`` in [0,1] and int64 labels in 0..9.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    where = _cifar_dir(root)
    if not where.is_dir():
        raise DataError(_cifar_help(root, f"no CIFAR-10 folder at {where}"))
    missing = [n for n in _SPLIT_FILES[split] if not (where / n).is_file()]
    if missing:
        raise DataError(_cifar_help(root, f"{where} lacks {', '.join(missing)} (incomplete download?)"))
    if (where / "batches.meta").is_file():
        names = _read_pickle(where / "batches.meta", root).get("label_names")
        names = tuple(n.decode() if isinstance(n, bytes) else n for n in (names or ()))
        if names != CIFAR10_CLASSES:
            raise DataError(_cifar_help(root, f"{where / 'batches.meta'} lists classes {names}, not CIFAR-10's"))
    xs, ys, n = [], [], 0
    for name in _SPLIT_FILES[split]:
        data, labels = _read_batch(where / name, root)
        xs.append(data), ys.append(labels)
        n += len(data)
        if limit is not None and n >= limit:
            break
    x = np.concatenate(xs)[:limit].reshape(-1, 3, 32, 32)
    y = np.concatenate(ys)[:limit]
    return torch.from_numpy(x).float().div_(255.0), torch.from_numpy(y)


def _check_member(m: tarfile.TarInfo, archive: PathLike) -> None:
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts or "\\" in m.name:
        raise DataError(f"{archive}: member {m.name!r} escapes the destination folder; the archive is refused")
    if m.issym() or m.islnk():
        raise DataError(f"{archive}: member {m.name!r} is a link; the archive is refused")


def download_cifar10(root: PathLike, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5,
                     timeout: float = 60.0, force: bool = False, progress: bool = False) -> Path:
    """Fetch, verify (MD5) and unpack CIFAR-10 so that ``root/cifar-10-batches-py/`` exists.

    The archive streams to a temporary file that is renamed to ``root/cifar-10-python.tar.gz``
    only once its MD5 matches; an archive already there with the right MD5 is reused. Members
    are checked (no links, nothing outside ``cifar-10-batches-py/``) and extracted with
    ``filter="data"`` into a temporary folder that is renamed into place at the end, so a
    failure leaves nothing half-made behind.

    Args:
        root: folder to hold the archive and ``cifar-10-batches-py/`` (created if needed).
        url, md5: where to fetch from and the archive's MD5 (the official ones by default).
        timeout: seconds a stalled connection may wait.
        force: replace an existing ``cifar-10-batches-py/``; without it a complete one is kept.
        progress: show a progress bar (tqdm) while downloading.
    Returns:
        The path of ``cifar-10-batches-py``.
    """
    root = Path(root).expanduser()
    dest, archive = root / CIFAR_DIRNAME, root / ARCHIVE_NAME
    if dest.exists() and not force:
        if all((dest / n).is_file() for files in _SPLIT_FILES.values() for n in files):
            return dest
        raise DataError(f"{dest} exists but is incomplete; remove it or pass force=True")
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    part, unpack = None, None
    try:
        if not (archive.is_file() and _file_digest(archive, "md5") == md5):
            fd, part = tempfile.mkstemp(dir=root, prefix=f".{ARCHIVE_NAME}.", suffix=".part")
            digest = _fetch(url, fd, timeout, root, progress)
            if digest != md5:
                raise DataError(f"{url} gave a file with MD5 {digest}, expected {md5}: corrupt or tampered "
                                "download, deleted. Try again, or " + _manual(root))
            os.replace(part, archive)
            part = None
        unpack = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-unpack-"))
        try:
            with tarfile.open(archive, "r:gz") as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(m, archive)
                    if PurePosixPath(m.name).parts[:1] != (CIFAR_DIRNAME,) or not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive}: unexpected member {m.name!r} (not a file under {CIFAR_DIRNAME}/)")
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(unpack, members=members, **kwargs)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{archive} cannot be unpacked ({e}); delete it and " + _manual(root)) from e
        missing = [n for files in _SPLIT_FILES.values() for n in files if not (unpack / CIFAR_DIRNAME / n).is_file()]
        if missing:
            raise DataError(f"{archive} lacks {', '.join(missing)}; not the CIFAR-10 python archive")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(unpack / CIFAR_DIRNAME, dest)
        return dest
    finally:
        if part is not None and os.path.exists(part):
            os.unlink(part)
        if unpack is not None and unpack.exists():
            shutil.rmtree(unpack)
        if made_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()


def _manual(root: Path) -> str:
    return (f"download {OFFICIAL_URL} (MD5 {OFFICIAL_MD5}) by hand and run "
            f"`tar -xzf {ARCHIVE_NAME} -C {root}` so that {root / CIFAR_DIRNAME}/ exists.")


def _fetch(url: str, fd: int, timeout: float, root: Path, progress: bool) -> str:
    """Stream ``url`` into the open file ``fd``; return the MD5 of what was written."""
    from tqdm.auto import tqdm
    h, n = hashlib.md5(), 0
    with os.fdopen(fd, "wb") as f:
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "pursamere"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, \
                    tqdm(total=int(resp.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                         desc=ARCHIVE_NAME, disable=not progress) as bar:
                while chunk := resp.read(1 << 20):
                    n += len(chunk)
                    if n > _MAX_DOWNLOAD_BYTES:
                        raise DataError(f"{url} sent more than {_MAX_DOWNLOAD_BYTES} bytes; not the CIFAR-10 archive")
                    h.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
        except DataError:
            raise
        except urllib.error.HTTPError as e:
            raise DataError(f"could not download {url}: the server answered HTTP {e.code} {e.reason}. "
                            + _manual(root)) from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(f"could not download {url}: network unavailable or unreachable ({reason}). "
                            "On a machine without internet access, " + _manual(root)) from e
    return h.hexdigest()


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
