"""CIFAR-10 on CPU: the decoded-array cache and the preset values."""
import io
import tarfile

import numpy as np
import pytest
import torch

from pursamere.experiments import cifar10_cpu as C
from pursamere.experiments.data import CIFAR10_CLASSES, DataError


def _archive(folder, split="test", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"{split}.tar.gz", "w:gz") as tf:
        for c in CIFAR10_CLASSES:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{split}/{c}/0001.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))


def test_cache_returns_the_decoded_images_and_follows_the_archive(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    _archive(root)
    x, y = C.cifar10_uint8("test", root, cache)
    assert x.dtype == np.uint8 and x.shape == (10, 3, 32, 32) and list(y) == list(range(10))
    assert len(list(cache.glob("test-*.npz"))) == 1
    x2, y2 = C.cifar10_uint8("test", root, cache)  # from the cache
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    xf, _ = C.cifar10_float("test", root, cache)
    assert torch.equal(xf, torch.from_numpy(x).float() / 255)
    _archive(root, seed=1)  # a changed archive is decoded afresh, not served from the old cache
    x3, _ = C.cifar10_uint8("test", root, cache)
    assert not np.array_equal(x, x3) and len(list(cache.glob("test-*.npz"))) == 2
    with pytest.raises(DataError, match="train.tar.gz"):
        C.cifar10_uint8("train", root, cache)


def test_preset_values_are_consistent():
    p = C.CIFAR10_CPU
    assert p.purify.rho == 0 and p.purify.eps_pur in p.eps_pur  # ERE descent at one of the table radii
    assert p.sigma_last <= p.purify.sigma_min and p.purify.sigma_max <= p.sigma_first  # the ladder covers Algorithm 1
    assert p.sigma_last <= p.adp.sigma_fix and p.diffpure.sigma_star <= p.sigma_first
    assert dict(p.threats) == {"inf": 8 / 255, 2: 0.5, 1: 12.0}
    v = C.validation_indices()
    assert len(v) == p.validation_size and len(set(v.tolist())) == len(v)
