"""Score-net sizes for CIFAR-10 on a CPU: training and purification throughput, with and without channels_last.

For each candidate U-Net (``pursamere.method.nets.ScoreNet`` at 32×32) it times
  * train: one DSM step (forward + backward + Adam) on a batch of 128, in images/s;
  * passes: forward + input-gradient of the score over 256 images (purification's M·B call), in images/s.
Run: ``python benchmarks/bench_cifar10_score.py [--repeats 3]``. Prints the load average beside each line:
the CPU is shared, so compare lines measured under similar load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pursamere.method.nets import ScoreNet, ScoreNetConfig, count_parameters
from pursamere.method.train import dsm_loss

CANDIDATES = {
    "32-64-64 x1": ScoreNetConfig((3, 32, 32), (32, 64, 64), 1, 8),
    "32-64-64-64 x1": ScoreNetConfig((3, 32, 32), (32, 64, 64, 64), 1, 8),
    "32-64-64 x2": ScoreNetConfig((3, 32, 32), (32, 64, 64), 2, 8),
    "48-96-96 x1": ScoreNetConfig((3, 32, 32), (48, 96, 96), 1, 8),
}


def _median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated candidate names")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    x128, x256 = torch.rand(128, 3, 32, 32), torch.rand(256, 3, 32, 32)
    z, sig = torch.randn(128, 3, 32, 32), torch.full((128,), 0.1)
    for name, cfg in CANDIDATES.items():
        if a.only and name not in a.only.split(","):
            continue
        for layout in ("contiguous", "channels_last"):
            net = ScoreNet(cfg)
            if layout == "channels_last":
                net = net.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(net.parameters(), lr=1e-4)

            def train_step():
                loss = dsm_loss(net, x128, sig, z)
                opt.zero_grad()
                loss.backward()
                opt.step()

            def passes():
                xg = x256.clone().requires_grad_(True)
                torch.autograd.grad(net(xg, 0.1).pow(2).sum(), xg)

            t_train, t_pass = _median_time(train_step, a.repeats), _median_time(passes, a.repeats)
            print(f"{name:16s} {count_parameters(net) / 1e6:.2f}M {layout:13s} train {128 / t_train:6.1f} img/s   "
                  f"passes {256 / t_pass:6.1f} img/s   load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
