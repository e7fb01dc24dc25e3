"""Train a preset's models from scratch and ship them as verified safetensors files (weights/ + MANIFEST.json).

The recorded runs of the book use these models (``--weights shipped``), so any row can be re-run exactly
on any machine; ``make demo`` still trains its own from scratch.

    python scripts/ship_weights.py --preset digits          # ≈ 5 min on one core; writes weights/digits/*
"""
import argparse
import tempfile

import torch

from pursamere.experiments.artifacts import prepare, ship
from pursamere.experiments.presets import get_preset


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while training (part of the bits)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    with tempfile.TemporaryDirectory(prefix="pursamere-ship-") as work:
        arts = prepare(preset, work, fresh=True)
    command = f"python scripts/ship_weights.py --preset {preset.name} --threads {args.threads}"
    for e in ship(preset, arts, command):
        print(f"{e['file']}: {e['bytes']} bytes, sha256 {e['sha256'][:12]}…")


if __name__ == "__main__":
    main()
