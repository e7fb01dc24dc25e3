"""Data sets: digits (embedded default), CIFAR-10 (official python-pickle format or JPEG folders), image folders.

Images come back as float32 ``NCHW`` tensors in ``[0, 1]`` with int64 labels. Files from
outside are untrusted: pickles go through a restricted unpickler that can build numpy arrays
and nothing else, archives are checked member by member (no links, no escaping names), and
every shape, dtype and range is checked before use. Problems raise :class:`~pursamere.experiments.images.DataError` with a
message that says what to do.

Example::

    split = load_digits_split(test_fraction=0.3, seed=0)
    x, y = load_cifar10("~/data", split="test", limit=1000)
    x, y, classes = load_image_folder("pets.tar.gz", size=32)
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from ..io import atomic_write_bytes
from .images import MAX_IMAGE_BYTES, DataError, decode_image, is_image_name, stack_images

__all__ = ["DataError", "UnsafePickleError", "Split", "load_digits_split", "CIFAR10_CLASSES",
           "OFFICIAL_URL", "OFFICIAL_MD5", "load_cifar10", "download_cifar10", "load_image_folder",
           "load_cifar10_jpeg", "load_split", "table_indices", "validation_indices"]

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
    if split not in _SPLIT_FILES:
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
