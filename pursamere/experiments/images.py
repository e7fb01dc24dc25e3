"""Image files: decoding with size checks before any pixel is decoded, and the user files of ``pursamere purify``.

Inputs are untrusted: an image's declared size is read from its header and refused when it is
too large (a "decompression bomb") before decoding; ``.npy`` arrays are read with
``allow_pickle=False`` and checked (float, finite, in [0, 1]), never clamped. Every problem raises
:class:`DataError` naming the file.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..io import atomic_write_bytes, check_can_create
from ..method.purify import InvalidInputError, check_images

__all__ = ["DataError", "MAX_IMAGE_PIXELS", "MAX_IMAGE_BYTES", "is_image_name", "decode_image", "stack_images",
           "load_images", "output_targets", "save_images"]

PathLike = Union[str, os.PathLike]
MAX_IMAGE_BYTES = 32 << 20  # a member of an image archive larger than this is not an image we read
MAX_IMAGE_PIXELS = 4096 * 4096  # images declaring more pixels are refused before decoding
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """A data set or file is missing, corrupt, unsafe or not in the expected format; the message says what to do."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES) and not name.startswith(".")


@contextlib.contextmanager
def _header_only_checks():
    """Open images with PIL's own pixel limit lifted: :func:`decode_image` applies a stricter one itself,
    from the header, before anything is decoded (PIL's check would stop a bomb too, but with a message
    that hides the file's declared size)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def decode_image(name: str, src, mode: str, size: Optional[tuple] = None) -> np.ndarray:
    """Decode one PNG/JPEG (a path or bytes) to ``HxW`` or ``HxWxC`` uint8, converted to ``mode``.

    The declared size is checked BEFORE decoding (at most ``MAX_IMAGE_PIXELS`` pixels), so a
    file claiming 60000×60000 pixels is refused without allocating anything.
    """
    from PIL import Image
    try:
        with _header_only_checks():
            im = Image.open(src if isinstance(src, Path) else io.BytesIO(src))  # reads the header, decodes nothing
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"image {name} declares {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS} "
                                "this reader decodes; resize it first")
            im = im.convert(mode)
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"cannot read image {name}: {e}") from e


def stack_images(named_arrays: Sequence[tuple[str, np.ndarray]]) -> torch.Tensor:
    """``[(name, HxW or HxWxC uint8)]`` -> float32 NCHW in [0,1]; all must share a shape."""
    first_name, first = named_arrays[0]
    out = np.empty((len(named_arrays),) + first.shape, dtype=np.uint8)
    for i, (name, a) in enumerate(named_arrays):
        if a.shape != first.shape:
            raise DataError(f"image {name} has size {a.shape[1]}x{a.shape[0]} (WxH) but {first_name} has "
                            f"{first.shape[1]}x{first.shape[0]}; pass size=(H, W) to resize them all")
        out[i] = a
    t = torch.from_numpy(out)
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.contiguous().float().div_(255.0)


def _expand(src) -> list[Path]:
    items = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    paths = []
    for p in map(lambda s: Path(s).expanduser(), items):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and (is_image_name(f.name) or f.suffix.lower() == ".npy"))
            if not found:
                raise DataError(f"{p} holds no .png, .jpg, .jpeg or .npy files")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"no such file or folder: {p}")
    if not paths:
        raise DataError("no input images given")
    return paths


def _checked(x: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return check_images(x, name=name)
    except InvalidInputError as e:
        raise DataError(f"{e} (images must be float in [0, 1], shape (N, C, H, W) or (C, H, W))") from e


def _picture_mode(p: Path) -> str:
    """``"L"`` for a grey picture, else ``"RGB"`` (read from the header only)."""
    from PIL import Image
    try:
        with _header_only_checks(), Image.open(p) as im:
            return "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"cannot read image {p}: {e}") from e


def load_images(src, mode: Optional[str] = None, item_shape: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, list[str]]:
    """Inputs for ``pursamere purify``: a PNG/JPEG, a ``.npy``, a folder of them, or a list.

    ``.npy`` arrays must be float, ``(N, C, H, W)`` or ``(C, H, W)``, finite and in [0,1]
    (checked, never clamped). Pictures are converted to ``mode`` (default: grey if the first
    picture is grey, else RGB). All items must share ``(C, H, W)``; with ``item_shape`` (the
    shape a model expects) each file is checked against it, and the error names the file.

    Returns:
        ``(x, names)``: float32 ``(N, C, H, W)`` and one name per image (for :func:`save_images`).
    """
    want = None if item_shape is None else tuple(int(v) for v in item_shape)
    batches, names = [], []
    for p in _expand(src):
        if p.suffix.lower() == ".npy":
            with open(p, "rb") as fh:
                if fh.read(6) != b"\x93NUMPY":
                    raise DataError(f"{p} is not a .npy file (it does not start with NumPy's header; save arrays "
                                    "with numpy.save)")
            try:
                a = np.load(p, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:  # EOFError: a file cut off inside its data
                raise DataError(f"cannot read {p} as a numpy array ({str(e) or 'the file ends early'})") from e
            if a.dtype.kind != "f" or a.ndim not in (3, 4):
                raise DataError(f"{p}: expected a float array (N, C, H, W) or (C, H, W), got {a.dtype} {a.shape}")
            x = _checked(torch.from_numpy(a.astype(np.float32)).reshape((-1,) + a.shape[-3:]), str(p))
            names += [p.stem] if len(x) == 1 else [f"{p.stem}_{i:04d}" for i in range(len(x))]
        elif is_image_name(p.name):
            if mode is None:
                mode = "L" if want is not None and want[0] == 1 else ("RGB" if want is not None else _picture_mode(p))
            x = stack_images([(str(p), decode_image(str(p), p, mode, None))])
            names.append(p.stem)
        else:
            raise DataError(f"{p}: not a .png, .jpg, .jpeg or .npy file")
        if want is not None and tuple(x.shape[1:]) != want:
            raise DataError(f"{p}: images of shape (C, H, W) = {tuple(x.shape[1:])}, but this model takes {want}")
        if x.shape[1] not in (1, 3):
            raise DataError(f"{p}: images must have 1 or 3 channels, got {x.shape[1]}")
        if batches and x.shape[1:] != batches[0].shape[1:]:
            raise DataError(f"{p}: images have shape {tuple(x.shape[1:])}, earlier ones {tuple(batches[0].shape[1:])}")
        batches.append(x)
    if len(set(names)) != len(names):
        raise DataError(f"input names collide: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return torch.cat(batches), names


_NOT_A_FOLDER = {".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".txt", ".json", ".pt", ".pth", ".npz"}


def output_targets(out: PathLike, n: int, names: Optional[Sequence[str]] = None) -> list[Path]:
    """The files :func:`save_images` writes for ``n`` images at ``out``, or a ``DataError`` saying why it cannot.

    Cheap and writes nothing: ``pursamere purify`` calls it before purifying, so a bad ``--out`` costs no compute.
    """
    out = Path(out).expanduser()
    suffix = out.suffix.lower()
    try:
        check_can_create(out, "the output")  # a parent that is a file, or a folder not writable
    except OSError as e:
        raise DataError(str(e)) from None
    if suffix in _NOT_A_FOLDER:
        raise DataError(f"{out}: write purified images as .npy (exact), .png (one image) or a folder of PNGs, "
                        f"not {suffix} (JPEG would also change the pixels it was given)")
    if suffix in (".npy", ".png"):
        if out.is_dir():
            raise DataError(f"{out} is a folder; give a file name or a folder without {suffix}")
        if suffix == ".png" and n != 1:
            raise DataError(f"{out}: a single .png holds one image, got {n}; give a folder instead")
        return [out]
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder; give a .npy or .png name, or a folder")
    names = [f"{i:05d}" for i in range(n)] if names is None else [Path(str(v)).name for v in names]
    if len(names) != n or len(set(names)) != len(names):
        raise DataError(f"need {n} distinct names, got {len(names)} ({len(set(names))} distinct)")
    return [out / f"{v}.png" for v in names]


def save_images(x: torch.Tensor, out: PathLike, names: Optional[Sequence[str]] = None) -> list[Path]:
    """Write a batch atomically: ``out.npy`` (exact float32), ``out.png`` (one image), or a folder of PNGs.

    PNGs store 8 bits per channel (values rounded to k/255); use ``.npy`` to keep exact values.
    """
    from PIL import Image
    x = _checked(torch.as_tensor(x).detach().cpu().float(), "images to save")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"images to save must be (N, 1|3, H, W), got {tuple(x.shape)}")
    out = Path(out).expanduser()
    targets = output_targets(out, len(x), names)
    if out.suffix.lower() == ".npy":
        buf = io.BytesIO()
        np.save(buf, x.numpy(), allow_pickle=False)
        return [atomic_write_bytes(out, buf.getvalue())]
    pixels = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for target, a in zip(targets, pixels):
        buf = io.BytesIO()
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
    return targets
