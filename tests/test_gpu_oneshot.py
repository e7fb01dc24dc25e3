"""The one-shot GPU script, end to end on the CPU at tiny sizes: it trains, evaluates and keeps its time budget."""
import importlib.util
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pursamere.experiments.data import CIFAR10_CLASSES

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_oneshot.py"


def _fake_cifar(root: Path, per_class: dict):
    """``{split}.tar.gz`` of ``split/<class>/NNNN.jpg`` like the shared CIFAR-10 (JPEG) copy, random pictures."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, n in per_class.items():
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tf:
            for c in CIFAR10_CLASSES:
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"{split}/{c}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_oneshot", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runs_end_to_end_and_keeps_its_time_budget(script, tmp_path):
    _fake_cifar(tmp_path / "data", {"train": 30, "test": 6})
    out = tmp_path / "out"
    t = time.monotonic()
    minutes = 0.75
    report = script.main(["--tiny", "--device", "cpu", "--minutes", str(minutes), "--out", str(out), "--n", "40",
                          "--data-root", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"),
                          "--book", str(tmp_path / "book")])
    elapsed = time.monotonic() - t
    assert elapsed <= 60 * minutes + 15, elapsed  # the budget, plus interpreter and file-writing slack
    saved = json.loads((out / "gpu.json").read_text())
    assert saved["classifier"]["n_test"] == 60 and 0 <= saved["classifier"]["clean_accuracy"] <= 1
    assert saved["score_passes_per_second"] > 0 and saved["score_passes_per_purification"] == 2 * 4 * 2
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["n"] == 40 and len(res["rows"]) == report["ensemble"]["rows"] >= 1
    assert (out / "table.md").exists() and (tmp_path / "book" / "results.json").exists()
    # either it finished every row or it says where it stopped; finished rows are whole
    assert report["ensemble"]["stopped"] or len(res["rows"]) == 28
    assert all(len(r["survived"]) == 40 for r in res["rows"])
