#!/usr/bin/env bash
# The paper's CIFAR-10 recipe, end to end, on one or several GPUs.
# Needs the official data set: `pursamere data cifar10 --download --root data` (or put
# cifar-10-batches-py/ under data/ by hand). Every stage is cached/resumable in runs/cifar10/.
#
# Cost (score evaluations = forward+backward passes of the ~21M-parameter score net on one image):
#   one purification     K × M × (1 + SAM) = 30 × 4 × 2          =    240
#   gPGD20               20 classifier steps + 1 purification      ≈    240
#   BPDA20-det           21 purifications                          ≈  5,000
#   BPDA200-det          201 purifications                         ≈ 48,000   (per threat model)
#   exact PGD20          20 × (forward + checkpointed backward ≈ 4 purifications) ≈ 20,000
# Table 3 alone (1,000 images × 3 threats × BPDA200) is ≈ 1.5e8 evaluations; at the throughput
# `python benchmarks/bench_purify.py --image-size 32` reports for your GPU (passes/s), divide.
# See book/reproducibility.md for the measured numbers and the estimate in GPU-hours.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
NGPU=${NGPU:-1}
pursamere train-score --preset cifar10 --device "$DEVICE" --data-root data     # score net (300k steps) + WRN-28-10 ×2
if [ "$NGPU" -gt 1 ]; then
  torchrun --nproc_per_node "$NGPU" -m pursamere reproduce --preset cifar10 --device "$DEVICE" --data-root data --out results/cifar10/full
else
  pursamere reproduce --preset cifar10 --device "$DEVICE" --data-root data --out results/cifar10/full
fi
