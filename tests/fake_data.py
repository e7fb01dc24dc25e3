"""A fake CIFAR-10 (JPEG) copy for the tests: ``{split}.tar.gz`` of ``split/<class>/NNNN.jpg``, random pictures."""
import io
import tarfile
from pathlib import Path

import numpy as np

from pursamere.experiments.data import CIFAR10_CLASSES


def fake_cifar(root: Path, per_class: dict) -> Path:
    """Write ``{split}.tar.gz`` for each ``split: images per class`` of ``per_class`` into ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in per_class.items():
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tf:
            for c in CIFAR10_CLASSES:
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"{split}/{c}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))
    return root
