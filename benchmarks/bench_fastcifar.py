"""Training throughput (images/s) of the fast CIFAR-10 classifier at a few widths, on this CPU.

Times SGD steps (forward + backward + update, fp32, channels_last, the training loop's own
model and loss) on random images after one warm-up step; throughput does not depend on the
pixels. Prints one line per width with the median step time and the load average.
Run: ``python benchmarks/bench_fastcifar.py [--steps 3] [--batch 1024] [--adv]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from pursamere.method.fastcifar import FastCifarConfig, FastCifarNet, _training_attack
from pursamere.method.nets import count_parameters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--widths", default="64,128,128;64,192,192;64,256,256")
    ap.add_argument("--adv", action="store_true", help="FGSM-RS adversarial training steps")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    x, y = torch.rand(a.batch, 3, 32, 32), torch.randint(0, 10, (a.batch,))
    for spec in a.widths.split(";"):
        cfg = FastCifarConfig(widths=tuple(int(v) for v in spec.split(",")), adv_eps=8 / 255 if a.adv else 0.0)
        net = FastCifarNet(cfg).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4, momentum=0.85, nesterov=True)
        times = []
        for i in range(a.steps + 1):
            t0 = time.perf_counter()
            xb = _training_attack(net, x, y, cfg, torch.Generator().manual_seed(i)) if a.adv else x
            loss = F.cross_entropy(net(xb), y, label_smoothing=0.2, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times[1:])
        print(f"widths={cfg.widths} params={count_parameters(net) / 1e6:.2f}M adv={a.adv} batch={a.batch} "
              f"step={med:.2f}s images/s={a.batch / med:.1f} load={os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
