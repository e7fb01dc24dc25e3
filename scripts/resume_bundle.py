"""Carry an unfinished training run to a later session: pack its checkpoint into a safetensors bundle
(tensors + a JSON skeleton, no pickle) that can be committed, and unpack it to resume.

    python scripts/resume_bundle.py pack runs/cifar10/score.ckpt resume/cifar10-score.safetensors
    python scripts/resume_bundle.py unpack resume/cifar10-score.safetensors runs/cifar10/score.ckpt
"""
import argparse
import sys

from pursamere.experiments.weights import pack_checkpoint, unpack_checkpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("pack", "unpack"))
    ap.add_argument("source")
    ap.add_argument("target")
    args = ap.parse_args(argv)
    try:
        out = (pack_checkpoint if args.action == "pack" else unpack_checkpoint)(args.source, args.target)
    except (ValueError, FileNotFoundError) as e:
        print(f"resume_bundle: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
