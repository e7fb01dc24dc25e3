"""Throughput of the full CIFAR-10 NCSNv2 (ngf 128, 29.7M parameters): forward + input-gradient passes.

One "pass" is one image through ``s(x, σ)`` forward and back to ``∇_x`` — the unit the
purifier's cost is counted in (``Purifier.score_evaluations`` per image). Weights are random:
the time does not depend on their values.

    python benchmarks/bench_ncsnv2.py [--batch 8] [--iters 5] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import torch

from pursamere.method.ncsnv2 import NCSNV2_CONFIGS, NCSNv2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="cifar10", choices=sorted(NCSNV2_CONFIGS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = NCSNV2_CONFIGS[args.config]
    torch.manual_seed(0)
    net = NCSNv2(cfg).to(args.device).eval().requires_grad_(False)
    x = torch.rand(args.batch, cfg.channels, cfg.image_size, cfg.image_size, device=args.device)

    def one():
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(net(xi, 0.1).pow(2).sum(), xi)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    one()  # warm-up (allocator, kernels)
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    best, median = min(times), sorted(times)[len(times) // 2]
    print(f"NCSNv2 {cfg.name}: {sum(p.numel() for p in net.parameters()):,} parameters, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {args.iters} iterations")
    print(f"  best {best:.3f} s/iter → {args.batch / best:.2f} passes/s; median {median:.3f} s → {args.batch / median:.2f} passes/s")


if __name__ == "__main__":
    main()
