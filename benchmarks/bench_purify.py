"""Purifier overhead: wall time of Algorithm 1 against the bare score-net passes it needs.

One run measures both, on the same batch and the same network:
  * purify: ``Purifier(net, cfg)(x)`` — K steps × (1 + SAM) ERE gradients, each ONE batched
    forward+backward of the score over M×B images, plus Adam, SAM and projection;
  * bare: the same number of forward+backward passes of the score net over the same M×B
    batch, and nothing else.
The ratio purify/bare is the purifier's overhead (goal ≤ 1.15 on CPU).

    python benchmarks/bench_purify.py [--batch 32] [--steps 30] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from pursamere.method.nets import SCORE_CIFAR10, SCORE_DIGITS, ScoreNet
from pursamere.method.purify import Purifier, PurifyConfig


def bare_passes(net, x, m, passes):
    noisy = x.repeat(m, 1, 1, 1)
    for _ in range(passes):
        inp = noisy.detach().requires_grad_(True)
        out = net(inp, 0.1)
        torch.autograd.grad((out * out).sum(), inp)


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--levels", type=int, default=10)
    ap.add_argument("--steps-per-level", type=int, default=3)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--net", choices=["digits", "cifar10"], default="digits", help="score-net size (cifar10: ~21M parameters)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg_net = SCORE_DIGITS if args.net == "digits" else SCORE_CIFAR10
    net = ScoreNet(cfg_net).eval().to(args.device)
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, *cfg_net.image_shape, device=args.device)
    print(f"score net: {sum(p.numel() for p in net.parameters()):,} parameters; batch {args.batch}, M = {args.m}, threads {args.threads}")
    for sam in (False, True):
        cfg = PurifyConfig(m=args.m, n_levels=args.levels, steps_per_level=args.steps_per_level, rho=None if sam else 0.0)
        pur = Purifier(net, cfg)
        passes = cfg.steps * (2 if sam else 1)
        pur(x)  # warm-up (allocator, first-call costs)
        bare_passes(net, x, args.m, 2)
        t_pur = best_of(lambda: pur(x), args.repeats)
        t_bare = best_of(lambda: bare_passes(net, x, args.m, passes), args.repeats)
        print(f"SAM {'on ' if sam else 'off'}: {passes} passes of {args.m * args.batch} images | purify {t_pur:.3f} s | "
              f"bare passes {t_bare:.3f} s | ratio {t_pur / t_bare:.3f} | {passes * args.m * args.batch / t_bare:.0f} image-passes/s")


if __name__ == "__main__":
    main()
