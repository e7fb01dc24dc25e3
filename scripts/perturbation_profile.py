"""What a purifier's ℓ∞ ball cannot undo of an attack's end points: CIFAR-10 (cifar10-cpu) job folders.

    python scripts/perturbation_profile.py results/whole/cifar-eq17-ere "ERE descent (no SAM) ε_pur=12/255|APGD-CE40×2|1|12" \\
        --radius 12/255 --out book/data/cifar10-cpu-eq17/l1-profile.json

A finished row whose end points a later row starts from keeps them in its job folder (``end-points/``, named by
the row's key; they are not recorded in ``book/data``: 3 MB per row). For the images the row attacked this writes,
per image and as medians: how many coordinates the attack moved, how many by more than ``--radius`` (the
purifier's ε_pur), the share of the perturbation's ℓ1 mass on those, its largest coordinate change, its ℓ1 and ℓ∞
norms, and :func:`pursamere.method.geometry.l1_outside_linf_ball`: the ℓ1 distance from the clean image to the
ℓ∞ ball of that radius around the attacked one, which every output of a purifier searching that ball keeps.
The images are the table's (the preset's fixed selection, checked against the folder's data fingerprint).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from fractions import Fraction
from pathlib import Path

from pursamere.io import atomic_write_json


def _radius(text: str) -> float:
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"--radius {text!r}: give a number or a fraction such as 12/255") from None


def profile(x, points, attacked, radius: float) -> dict:
    """The profile of the attacked images' perturbations ``points − x`` (see the module's docstring)."""
    from pursamere.method.geometry import l1_outside_linf_ball

    delta = (points - x)[attacked].flatten(1)
    moved, big = delta.abs() > 1e-6, delta.abs() > radius
    per = {"moved": moved.sum(1).tolist(), "moved_beyond_radius": big.sum(1).tolist(),
           "l1": delta.abs().sum(1).tolist(), "linf": delta.abs().amax(1).tolist(),
           "share_beyond_radius": ((delta.abs() * big).sum(1) / delta.abs().sum(1).clamp_min(1e-12)).tolist(),
           "l1_outside_ball": l1_outside_linf_ball(delta, radius).tolist()}
    return {"images": int(attacked.sum()), "coordinates": int(delta.shape[1]) if delta.numel() else 0,
            "radius": radius, "median": {k: statistics.median(v) for k, v in per.items() if v},
            "min": {k: min(v) for k, v in per.items() if v}, "max": {k: max(v) for k, v in per.items() if v},
            "per_image": per}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", help="a cifar10-cpu job's results folder")
    ap.add_argument("row", help="the row's key, as in its results.json: 'DEFENCE|ATTACK|NORM|EPS'")
    ap.add_argument("--radius", type=_radius, required=True, help="the purifier's ε_pur (ℓ∞), e.g. 12/255")
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--data-root", default=None, help="the CIFAR-10 images (default: the preset's)")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except (ValueError, OSError) as e:  # one line, no traceback
        print(f"perturbation_profile: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    import torch

    from pursamere.evaluation.results import read_results
    from pursamere.evaluation.runner import _file_name
    from pursamere.experiments import cifar10_cpu
    from pursamere.experiments.engine import select_images
    from pursamere.experiments.presets import CIFAR10_CPU
    from pursamere.experiments.protocols import Images
    from pursamere.io import fingerprint

    job = Path(args.job)
    res = read_results(job)
    if not any(r["key"] == args.row for r in res["rows"]):
        raise ValueError(f"{job} has no finished row {args.row!r}")
    path = job / "end-points" / _file_name(args.row)
    if not path.is_file():
        raise ValueError(f"{path} is missing: only a row a later row starts from keeps its end points, in the folder "
                         "that ran it")
    state = torch.load(path, weights_only=True, map_location="cpu")
    arts = cifar10_cpu.load_artifacts(data_root=args.data_root, log=lambda *a: None)
    x, y, _ = select_images(CIFAR10_CPU, arts.split, Images("table", int(res["meta"]["n"])))
    if fingerprint(x, y) != res["meta"]["data_fingerprint"]:
        raise ValueError(f"{job} ran on other images than the cifar10-cpu table's first {res['meta']['n']}")
    points, attacked = state["points"], state["attacked"].bool()
    if tuple(points.shape) != tuple(x.shape) or tuple(attacked.shape) != (len(x),):
        raise ValueError(f"{path}: its end points do not match the {len(x)} table images")
    out = {"job": job.name, "row": args.row, "data_fingerprint": res["meta"]["data_fingerprint"],
           **profile(x, points, attacked, args.radius)}
    atomic_write_json(Path(args.out), out)
    m = out["median"]
    print(f"{out['images']} images: median {m['moved']:.0f} of {out['coordinates']} coordinates moved, "
          f"{m['moved_beyond_radius']:.0f} by more than {args.radius:.4g}, carrying {100 * m['share_beyond_radius']:.0f}% "
          f"of the ℓ1 mass; ℓ1 outside the ball {m['l1_outside_ball']:.2f} of {m['l1']:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
