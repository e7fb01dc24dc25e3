"""What attacking the purifier costs: time of one PGD step, and memory of exact gradients.

One run measures, on the same batch, score net and classifier:
  * time of one purification ``P(x)`` (Algorithm 1, K steps);
  * time of one BPDA PGD step (forward through P, identity backward), of one
    exact-gradient PGD step (forward + backward through all K unrolled, checkpointed steps,
    second order through the score) and of partial-unrolling steps (exact through the last j
    steps only), all as ratios to one purification;
  * peak resident memory (``VmHWM``, else ``ru_maxrss``) of one exact-gradient step with K and with 4K
    purification steps, each in a FRESH subprocess (a high-water mark cannot be reset inside
    one process). With step-wise checkpointing the peak should barely move with K (goal:
    4K/K within 1.3x); ``--compare-plain`` also runs the un-checkpointed unroll for contrast.

A "PGD step" here is exactly what ``pgd`` does per iteration: one forward of the defence, the
loss, and the input gradient (the ascent step and projection are negligible).

    python benchmarks/bench_attacks.py [--batch 32] [--levels 5 --steps-per-level 1] [--m 4]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def build(args, steps_per_level):
    from pursamere.evaluation.defended import Defended  # noqa: F401  (import cost outside the timings)
    from pursamere.method.nets import SCORE_DIGITS, ScoreNet, SmallCNN
    from pursamere.method.purify import Purifier, PurifyConfig

    torch.manual_seed(0)
    net = ScoreNet(SCORE_DIGITS).eval()  # untrained is fine: the cost does not depend on the weights
    clf = SmallCNN().eval()
    for p in list(net.parameters()) + list(clf.parameters()):
        p.requires_grad_(False)
    cfg = PurifyConfig(m=args.m, n_levels=args.levels, steps_per_level=steps_per_level, antithetic=args.m % 2 == 0,
                       rho=0.0 if args.no_sam else None)
    x = torch.rand(args.batch, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(2))
    return clf, Purifier(net, cfg), x, y


def attack_step(model, x, y):
    """One PGD iteration's gradient work (as in ``pursamere.evaluation.attacks.pgd``)."""
    xv = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xv), y, reduction="sum"), xv)
    return g


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_kib() -> int:
    """This process's peak resident set, KiB.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at exec. ``ru_maxrss`` does not:
    it keeps the high-water mark of the parent that forked the child, so it is only the
    fallback (other systems).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # macOS reports bytes


def child(args):
    """Run one exact-gradient step in this (fresh) process; print the memory it took."""
    from pursamere.evaluation.defended import Defended

    clf, pur, x, y = build(args, args.child_steps_per_level)
    pur(x)  # warm-up and baseline: set-up plus one plain purification of the batch
    base = peak_rss_kib()
    attack_step(Defended(clf, pur, "exact", checkpoint=not args.child_plain), x, y)
    peak = peak_rss_kib()
    print(json.dumps({"K": pur.config.steps, "base_kib": base, "peak_kib": peak}))


def measure_memory(args, steps_per_level, plain):
    cmd = [sys.executable, __file__, "--child-steps-per-level", str(steps_per_level), "--batch", str(args.batch),
           "--levels", str(args.levels), "--m", str(args.m), "--threads", str(args.threads)]
    if plain:
        cmd.append("--child-plain")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--levels", type=int, default=5, help="noise levels of the purifier")
    ap.add_argument("--steps-per-level", type=int, default=1, help="K = levels x steps-per-level")
    ap.add_argument("--m", type=int, default=4, help="Monte-Carlo draws M")
    ap.add_argument("--repeats", type=int, default=3, help="timings are the median of this many runs")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steady on a shared box)")
    ap.add_argument("--no-sam", action="store_true", help="ERE descent (ρ = 0) instead of the paper's SAM")
    ap.add_argument("--skip-memory", action="store_true", help="timings only")
    ap.add_argument("--compare-plain", action="store_true", help="also measure memory without checkpointing (grows with K: GiB at the defaults)")
    ap.add_argument("--child-steps-per-level", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-plain", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_steps_per_level is not None:
        return child(args)

    from pursamere.evaluation.defended import Defended

    clf, pur, x, y = build(args, args.steps_per_level)
    k = pur.config.steps
    print(f"batch {args.batch}, K = {k} purification steps, M = {args.m}, SAM {'off' if args.no_sam else 'on'}, "
          f"threads {args.threads}")
    bpda, exact = Defended(clf, pur, "bpda"), Defended(clf, pur, "exact", checkpoint=True)
    plain = Defended(clf, pur, "exact", checkpoint=False)

    attack_step(exact, x, y)  # warm-up
    t_pur = timed(lambda: pur(x), args.repeats)
    t_bpda = timed(lambda: attack_step(bpda, x, y), args.repeats)
    t_exact = timed(lambda: attack_step(exact, x, y), args.repeats)
    t_plain = timed(lambda: attack_step(plain, x, y), args.repeats)
    print(f"one purification        {t_pur * 1e3:9.1f} ms   1.00x")
    print(f"one BPDA PGD step       {t_bpda * 1e3:9.1f} ms   {t_bpda / t_pur:.2f}x purification")
    print(f"one exact PGD step      {t_exact * 1e3:9.1f} ms   {t_exact / t_pur:.2f}x purification (checkpointed)")
    print(f"one exact PGD step      {t_plain * 1e3:9.1f} ms   {t_plain / t_pur:.2f}x purification (graph kept, no recompute)")
    # partial unrolling (exact through the last j steps, BPDA before): cost should grow about
    # linearly from BPDA's (j = 0) to the exact step's (j = K)
    for j in sorted({1, max(1, k // 4), max(1, k // 2)}):
        t_j = timed(lambda j=j: attack_step(Defended(clf, pur, "exact", unroll_last=j), x, y), args.repeats)
        lin = (t_bpda + j / k * (t_exact - t_bpda)) / t_pur
        print(f"one partial-{j} PGD step  {t_j * 1e3:9.1f} ms   {t_j / t_pur:.2f}x purification (linear model {lin:.2f}x)")

    modes = [] if args.skip_memory else ([False, True] if args.compare_plain else [False])
    for plain in modes:
        r1 = measure_memory(args, args.steps_per_level, plain)
        r4 = measure_memory(args, 4 * args.steps_per_level, plain)
        tag = "plain unroll " if plain else "checkpointed "
        for r in (r1, r4):
            print(f"{tag} K = {r['K']:4d}: peak RSS {r['peak_kib'] / 1024:8.1f} MiB "
                  f"(+{(r['peak_kib'] - r['base_kib']) / 1024:7.1f} MiB over set-up + one purification)")
        ratio = r4["peak_kib"] / r1["peak_kib"]
        extra = (r4["peak_kib"] - r4["base_kib"]) / max(r1["peak_kib"] - r1["base_kib"], 1)
        verdict = "" if plain else ("  [goal <= 1.3x: met]" if ratio <= 1.3 else "  [goal <= 1.3x: MISSED]")
        print(f"{tag} peak 4K / K = {ratio:.2f}x (extra memory {extra:.2f}x){verdict}")


if __name__ == "__main__":
    main()
