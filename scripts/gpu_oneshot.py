"""One-shot CIFAR-10 on a lent GPU: a fast classifier, a score model, then the ensemble on ≥ 1,000 test
images at ℓ∞ 8/255 with the paper's step counts — inside a fixed time budget.

    python scripts/gpu_oneshot.py --minutes 10 --device cuda --out results/cifar10-gpu --book book/data/cifar10-gpu
    python scripts/gpu_oneshot.py --ncsnv2 checkpoint_300000.pth ...   # the paper's own score model instead
    python scripts/gpu_oneshot.py --tiny --device cpu --minutes 2 --out /tmp/gpu-tiny   # the tests' CPU run

Stages (each checks the clock; the budget is a promise, not a hope):

1. data — CIFAR-10 from ``--data-root`` (the JPEG copy, decoded once and cached);
2. classifier — the airbench-style net of ``pursamere.method.fastcifar`` at its GPU widths (64, 256, 256),
   bf16 autocast, 10 epochs (``--classifier-share`` of the budget at most: fewer epochs if it must);
3. score model — the package's U-Net trained by DSM in bf16 on a σ ladder 0.5 → 0.01 (purification's range)
   for ``--score-share`` of the budget, or the official NCSNv2 checkpoint with ``--ncsnv2``;
4. the ensemble — ``pursamere.experiments.engine.run`` with a ``deadline``: rows run in the order
   undefended, PurSAMERE with the paper's SAM, ERE descent, DiffPure-style; a row that cannot finish in
   time is dropped, every finished row is kept, and the table says the run stopped early.

The purifier rows use the plain classifier (no eq.-17 retraining fits in minutes; said in the table).
Writes ``OUT/`` (the engine's results folder plus ``gpu.json``: times, accuracies and the measured
throughput in score passes per second) and, with ``--book``, a copy for ``book/data/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import torch

from pursamere.evaluation.defences import Family
from pursamere.evaluation.suite import Budget, standard_suite
from pursamere.experiments import cifar10_cpu as C
from pursamere.experiments.artifacts import Artifacts
from pursamere.experiments.data import CIFAR10_CLASSES, Split
from pursamere.experiments.engine import Options, run
from pursamere.experiments.presets import CIFAR10
from pursamere.experiments.protocols import DefenceSpec, Images, Protocol
from pursamere.io import atomic_write_json
from pursamere.method.fastcifar import FastCifarConfig, evaluate_accuracy, train_fastcifar
from pursamere.method.nets import ScoreNet, ScoreNetConfig
from pursamere.method.purify import Purifier
from pursamere.method.scores import sigma_ladder
from pursamere.method.train import ScoreTrainConfig, train_score
from pursamere.evaluation.attacks import Threat

#: the paper's ensemble step counts (gPGD20, BPDA20, 20-step APGD; exact and partial unrolling ours)
PAPER_BUDGET = Budget(gpgd_steps=20, bpda_steps=20, exact_steps=10, partial_last=3, partial_steps=20, apgd_steps=20,
                      square_queries=100, eot=4)
TINY_BUDGET = Budget(gpgd_steps=2, bpda_steps=2, exact_steps=1, partial_last=1, partial_steps=2, apgd_steps=2,
                     square_queries=5, eot=2)


def _log(msg: str, t0: float):
    print(f"[{time.monotonic() - t0:7.1f} s] {msg}", flush=True)


def preset_for(tiny: bool, score_net: ScoreNetConfig):
    """The run's preset: the paper's CIFAR-10 settings (ε_pur 8/12/16 /255, ρ = ε_pur/2, M = 4, K = 30),
    the JPEG data, our score net and σ ladder; tiny: K = 2 for the CPU test."""
    purify = CIFAR10.purify if not tiny else CIFAR10.purify.replace(n_levels=2, steps_per_level=1)
    return CIFAR10.replace(name="cifar10-gpu" if not tiny else "cifar10-gpu-tiny", data="cifar10-jpeg",
                           score_net=score_net, sigma_first=0.5, sigma_last=0.01, n_sigmas=20, purify=purify,
                           eps_pur=(8 / 255, 12 / 255, 16 / 255), validation_size=128 if not tiny else 16)


def protocol_for(preset, n: int, tiny: bool) -> Protocol:
    cfg = preset.purify.replace(eps_pur=8 / 255)
    defs = (DefenceSpec("undefended", "plain", family=Family.UNDEFENDED),
            DefenceSpec("PurSAMERE ε_pur=8/255 (plain classifier)", "plain", cfg.paper_sam()),
            DefenceSpec("ERE descent ε_pur=8/255 (plain classifier)", "plain", cfg.sam_off()),
            DefenceSpec("DiffPure-style (plain classifier)", "plain", preset.diffpure.replace(fixed_noise=False)))
    budget = TINY_BUDGET if tiny else PAPER_BUDGET
    return Protocol("gpu-oneshot", f"{preset.name}: the ensemble in a fixed GPU budget", defs,
                    tuple(standard_suite(budget)), (Threat("inf", 8 / 255),), Images("table", n),
                    batch_size=256 if not tiny else 16,
                    describe="One-shot run: classifier and score model trained in minutes on the GPU; the purifier "
                             "rows sit in front of the plain classifier (no eq.-17 retraining).",
                    plan={"budget": dataclasses.asdict(budget)})


def throughput(score, shape, device, batch: int = 256, seconds: float = 2.0) -> float:
    """Score passes (forward + input gradient) per second at ``batch`` images, measured for ``seconds``."""
    x = torch.rand(batch, *shape, device=device)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n == 0:
        xv = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(score(xv, 0.1).sum(), xv)
        n += batch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="the whole run's time budget")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="results/cifar10-gpu")
    ap.add_argument("--book", default=None, help="also copy the results folder here (e.g. book/data/cifar10-gpu)")
    ap.add_argument("--data-root", default=str(C.DEFAULT_ROOT))
    ap.add_argument("--cache", default=str(C.DEFAULT_CACHE), help="where the decoded images are cached")
    ap.add_argument("--n", type=int, default=1000, help="test images of the ensemble (≥ 1,000 on a GPU)")
    ap.add_argument("--ncsnv2", default=None, help="the official NCSNv2 CIFAR-10 checkpoint (instead of training)")
    ap.add_argument("--classifier-share", type=float, default=0.15)
    ap.add_argument("--score-share", type=float, default=0.30)
    ap.add_argument("--tiny", action="store_true", help="CPU-test sizes: a few hundred images, narrow nets")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    budget_s = 60 * args.minutes
    deadline = t0 + budget_s - min(30.0, 0.1 * budget_s)  # time left to write the files
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_oneshot: --device cuda but no CUDA device is visible (use --device cpu --tiny to test)")
    torch.manual_seed(0)
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "minutes": args.minutes}

    # 1. data
    xtr, ytr = C.cifar10_uint8("train", args.data_root, args.cache)
    xte, yte = C.cifar10_float("test", args.data_root, args.cache)
    if args.tiny:  # the archives are sorted by class: a fixed random subset keeps every class
        tr = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:2048].numpy()
        te = torch.randperm(len(xte), generator=torch.Generator().manual_seed(1))[:256]
        xtr, ytr, xte, yte = xtr[tr], ytr[tr], xte[te], yte[te]
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr).long()
    _log(f"data: {len(xtr)} training and {len(xte)} test images", t0)

    # 2. classifier: at most classifier_share of the budget. One epoch is timed (checkpointed); if the
    # whole schedule fits it resumes from there, else it starts again with as many epochs as fit.
    cfg = FastCifarConfig(widths=(64, 256, 256), epochs=10.0) if not args.tiny else \
        FastCifarConfig(widths=(8, 16, 16), epochs=2.0, batch_size=256, whiten_images=512)
    out = Path(args.out)
    ck = out / "work" / "classifier.ckpt"
    t_clf = time.monotonic()
    log = lambda m: _log(f"classifier: {m}", t0)  # noqa: E731
    train_fastcifar(cfg, xtr_t, ytr_t, device=args.device, log=log, checkpoint=ck, stop_at=len(xtr) // cfg.batch_size)
    per_epoch = time.monotonic() - t_clf
    fit = max(1.0, math.floor(args.classifier_share * budget_s / max(per_epoch, 1e-9)))
    if fit < cfg.epochs:
        cfg = dataclasses.replace(cfg, epochs=fit)
        ck = out / "work" / f"classifier-{fit:g}-epochs.ckpt"
    clf, rec = train_fastcifar(cfg, xtr_t, ytr_t, device=args.device, log=log, checkpoint=ck)
    epochs = cfg.epochs
    clf = clf.eval()
    report["classifier"] = {"epochs": epochs, "seconds": round(time.monotonic() - t_clf, 1),
                            "clean_accuracy": evaluate_accuracy(clf, xte, yte), "n_test": len(xte)}
    _log(f"classifier: {report['classifier']}", t0)

    # 3. score model: the official NCSNv2, or ours trained for score_share of the budget (steps from a probe)
    t_s = time.monotonic()
    net_cfg = ScoreNetConfig((3, 32, 32), (64, 128, 128), 2, 8) if not args.tiny else ScoreNetConfig((3, 32, 32), (8, 16), 1, 8)
    if args.ncsnv2:
        from pursamere.method.ncsnv2 import load_ncsnv2

        score, info = load_ncsnv2(args.ncsnv2)
        score = score.to(dev)
        report["score"] = {"source": f"official NCSNv2 {args.ncsnv2}", **{k: str(v) for k, v in info.items()}}
    else:
        data = torch.from_numpy(xtr).float().div_(255.0)
        sigmas = sigma_ladder(0.5, 0.01, 20)
        probe = ScoreTrainConfig(steps=10, batch_size=128, lr=2e-4 if not args.tiny else 1e-3, ema_rate=0.999)
        torch.manual_seed(0)
        t_probe = time.monotonic()
        probed = train_score(ScoreNet(net_cfg).to(dev), data, sigmas, probe, device=args.device, amp=dev.type == "cuda")
        rate = probe.steps / max(time.monotonic() - t_probe, 1e-9)
        steps = int(rate * (args.score_share * budget_s - (time.monotonic() - t_s)))
        if steps <= probe.steps:  # no time for more (a slow or busy machine): the probe's run is the same training
            steps, (score, losses) = probe.steps, probed
        else:
            torch.manual_seed(0)
            score, losses = train_score(ScoreNet(net_cfg).to(dev), data, sigmas,
                                        ScoreTrainConfig(steps=steps, batch_size=128, lr=probe.lr, ema_rate=0.999,
                                                         checkpoint_every=steps),
                                        device=args.device, amp=dev.type == "cuda")
        report["score"] = {"source": "trained in this run", "steps": steps, "config": dataclasses.asdict(net_cfg),
                           "final_loss": sum(losses[-20:]) / len(losses[-20:])}
    score = score.eval()
    for p in score.parameters():
        p.requires_grad_(False)
    report["score"]["seconds"] = round(time.monotonic() - t_s, 1)
    report["score_passes_per_second"] = round(throughput(score, (3, 32, 32), dev, batch=256 if not args.tiny else 16,
                                                          seconds=2.0 if not args.tiny else 0.2), 1)
    _log(f"score model: {report['score']}; {report['score_passes_per_second']} passes/s", t0)

    # 4. the ensemble, stopped cleanly at the deadline
    preset = preset_for(args.tiny, net_cfg)
    split = Split(torch.from_numpy(xtr).float().div_(255.0), ytr_t, xte, yte, CIFAR10_CLASSES)
    arts = Artifacts(split, score, {"plain": clf}, {}, {"weights": "trained in this run (scripts/gpu_oneshot.py)"})
    pur = Purifier(score, preset.purify.paper_sam())
    report["score_passes_per_purification"] = pur.score_evaluations
    n = min(args.n, len(xte) - preset.validation_size)
    res = run(preset, protocol_for(preset, n, args.tiny), out,
              Options(device=args.device, resume=True, progress=False, deadline=deadline,
                      log=lambda m: _log(f"ensemble: {m}", t0)), artifacts=arts)
    report["ensemble"] = {"rows": len(res.results["rows"]), "stopped": res.results["meta"].get("stopped"),
                          "worst_case": {w["defence"]: w["robust_acc"] for w in res.results["worst_case"]}, "n": n}
    report["seconds_total"] = round(time.monotonic() - t0, 1)
    atomic_write_json(out / "gpu.json", report)
    if args.book:
        shutil.copytree(out, args.book, dirs_exist_ok=True)
    _log(f"done in {report['seconds_total']:.0f} s of {budget_s:.0f}: {json.dumps(report['ensemble'])}", t0)
    return report


if __name__ == "__main__":
    main()
