"""Train the CIFAR-10 (JPEG) models that pursamere ships, on a CPU; resumable and deterministic.

Subcommands (one per shipped model; each resumes from its checkpoint in ``--runs``)::

    python scripts/train_cifar10.py classifier      # fast clean classifier  → weights/cifar10/classifier
    python scripts/train_cifar10.py adversarial     # FGSM-RS at ℓ∞ 8/255    → weights/cifar10/adversarial
    python scripts/train_cifar10.py score           # DSM score model        → weights/cifar10/score
    python scripts/train_cifar10.py purify-train    # ERE-descent purified training images (eq. 17), in shards
    python scripts/train_cifar10.py eq17            # classifier on clean + purified images → weights/cifar10/eq17

Each subcommand trains from the fixed seed of its config in
``pursamere.experiments.cifar10_cpu``, evaluates the model on the 10,000 test images, and
writes it with ``save_weights`` (SHA-256 manifest in ``weights/MANIFEST.json``). Interrupt it
at any time; the same command continues where it stopped and ends with the same weights.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pursamere.experiments import cifar10_cpu as C
from pursamere.experiments.weights import save_weights
from pursamere.io import atomic_write_json
from pursamere.method.fastcifar import FastCifarConfig, evaluate_accuracy, train_fastcifar
from pursamere.method.nets import ScoreNet, count_parameters

MONITOR = 2000  # test images scored after each epoch (a fixed random subset; nothing is selected on it)


def _log_to(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str):
        line = f"{time.strftime('%H:%M:%S')} load={os.getloadavg()[0]:.2f} {msg}"
        print(line, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")

    return log


def _command(argv) -> str:
    return "python scripts/train_cifar10.py " + " ".join(argv)


def train_classifier_model(name: str, config: FastCifarConfig, args, argv, extra_images=None, extra_labels=None,
                           extra_meta=None, more_metrics=None) -> dict:
    """Train one FastCifarNet, score it on the test set, ship it as ``cifar10/<name>``.

    ``more_metrics(net, log) -> dict``: further measurements of the trained net, added to its metrics.
    """
    runs = Path(args.runs)
    log = _log_to(runs / f"{name}.log")
    x, y = C.cifar10_uint8("train", args.data, args.cache)
    if extra_images is not None:
        x, y = np.concatenate([x, extra_images]), np.concatenate([y, extra_labels])
    xt, yt = C.cifar10_uint8("test", args.data, args.cache)
    xt, yt = torch.from_numpy(xt), torch.from_numpy(yt).long()
    mon = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))[:MONITOR]
    ckpt = runs / f"{name}.ckpt"
    if args.fresh and ckpt.exists():
        ckpt.unlink()
    log(f"train {name}: {len(x)} images, config {config.to_dict()}")

    def on_epoch(net, rec):
        rec["monitor_acc"] = evaluate_accuracy(net, xt[mon], yt[mon])
        rec["load"] = os.getloadavg()[0]
        if config.adv_eps > 0:  # watch for catastrophic overfitting (FGSM accuracy up, PGD accuracy to 0)
            from pursamere.evaluation.attacks import Threat, pgd

            net.eval()
            xm, ym = xt[mon[:200]].float() / 255.0, yt[mon[:200]]
            xa = pgd(net, xm, ym, Threat("inf", config.adv_eps), steps=10, seed=0)
            with torch.no_grad():
                rec["monitor_pgd10_acc"] = float((net(xa).argmax(1) == ym).float().mean())

    net, record = train_fastcifar(config, x, y, checkpoint=ckpt, on_epoch=on_epoch, log=log,
                                  stop_at=args.stop_at)
    if record["steps"] < math_total(config, len(x)):
        log(f"stopped at step {record['steps']}; run the same command again to continue")
        return record
    t0 = time.perf_counter()
    acc = evaluate_accuracy(net, xt, yt)
    metrics = {"clean_accuracy": acc, "n_test": len(xt), "eval_seconds": round(time.perf_counter() - t0, 1),
               "train_seconds": round(record["train_seconds"], 1), "train_cpu_seconds": round(record["train_cpu_seconds"], 1),
               "images_per_second": round(record["images_per_second"], 1), "epochs": config.epochs,
               "n_train": len(x), "parameters": count_parameters(net),
               "mean_load_during_training": round(float(np.mean([e.get("load", 0) for e in record["epochs"]])), 2)}
    if config.adv_eps > 0:
        metrics.update(adversarial_metrics(net, xt, yt, config.adv_eps, log))
    if more_metrics is not None:
        metrics.update(more_metrics(net, log))
    log(f"{name}: " + json.dumps(metrics))
    atomic_write_json(runs / f"{name}.json", {"metrics": metrics, "record": record})
    if not args.no_ship:
        meta = {"kind": "FastCifarNet", "architecture": config.to_dict(), "command": _command(argv),
                "data": "CIFAR-10 (JPEG), ../shared/data/cifar10-jpeg, all 50,000 training images",
                "metrics": metrics, "torch": torch.__version__, "threads": torch.get_num_threads(), **(extra_meta or {})}
        entry = save_weights(f"cifar10/{name}", net, meta)
        log(f"shipped weights/{entry['file']} ({entry['bytes']} bytes, sha256 {entry['sha256'][:12]}…)")
    return metrics


def math_total(config: FastCifarConfig, n: int) -> int:
    import math

    return math.ceil((n // config.batch_size) * config.epochs)


def adversarial_metrics(net, xt, yt, eps: float, log, n: int = 1000, steps: int = 20) -> dict:
    """PGD-``steps`` at ℓ∞ ``eps`` on ``n`` fixed test images: CE and margin losses, worst case per image.

    The attack is ``pursamere.evaluation.attacks.pgd`` (random start, step ε/4, best iterate kept).
    """
    from pursamere.evaluation.attacks import Threat, pgd

    idx = torch.randperm(len(xt), generator=torch.Generator().manual_seed(1))[:n]
    x, y = xt[idx].float() / 255.0, yt[idx]
    t0 = time.perf_counter()
    net.eval()
    robust = torch.ones(n, dtype=torch.bool)
    out = {}
    for loss in ("ce", "margin"):
        ok = []
        for i in range(0, n, 250):
            xa = pgd(net, x[i:i + 250], y[i:i + 250], Threat("inf", eps), steps=steps, loss=loss, seed=0)
            with torch.no_grad():
                ok.append(net(xa).argmax(1) == y[i:i + 250])
        ok = torch.cat(ok)
        out[f"pgd{steps}_{loss}_accuracy"] = float(ok.float().mean())
        robust &= ok
    out.update({f"pgd{steps}_accuracy": float(robust.float().mean()), "pgd_n": n,
                "pgd_clean_accuracy_same_images": evaluate_accuracy(net, x, y),
                "pgd_seconds": round(time.perf_counter() - t0, 1)})
    log(f"PGD-{steps} ℓ∞ {eps:.5f} on {n} images: " + json.dumps(out))
    return out


# ------------------------------------------------------------------------------------ score model

def score_passes_per_second(score, batch: int = 256, repeats: int = 4) -> float:
    """Forward + input-gradient passes of the score net per second at purification's call shape (M·B images)."""
    import statistics

    x = torch.rand(batch, 3, 32, 32)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(score(xg, 0.1).pow(2).sum(), xg)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times[1:])


@torch.no_grad()
def denoising_psnr(score, x: torch.Tensor, sigmas=(0.01, 0.03, 0.1, 0.3), seed: int = 0) -> dict:
    """Mean per-image PSNR (dB, peak 1) of Tweedie's denoiser x̃ + σ² s(x̃, σ) and of the noisy x̃ itself."""
    out = {}
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(seed)
        den, noisy = [], []
        for i in range(0, len(x), 250):
            xb = x[i:i + 250]
            xn = xb + sigma * torch.randn(xb.shape, generator=gen)
            xd = xn + sigma ** 2 * score(xn, sigma)  # Tweedie: E[x | x̃] = x̃ + σ² ∇log p_σ(x̃)
            for a, lst in ((xd, den), (xn, noisy)):
                lst.append(-10 * torch.log10((a - xb).pow(2).flatten(1).mean(1)))
        out[f"{sigma:g}"] = {"psnr_denoised": round(float(torch.cat(den).mean()), 2), "psnr_noisy": round(float(torch.cat(noisy).mean()), 2)}
    return out


def ere_detection(score, classifier, xt, yt, n: int = 500, sigmas=(0.01, 0.03, 0.1)) -> dict:
    """AUROC of the ERE as a detector of PGD-20 ℓ∞ 8/255 images (of ``classifier``) against clean ones."""
    from pursamere.evaluation.attacks import Threat, pgd
    from pursamere.method.analysis import ere_auroc

    idx = torch.randperm(len(xt), generator=torch.Generator().manual_seed(2))[:n]
    x, y = xt[idx], yt[idx]
    x_adv = torch.cat([pgd(classifier, x[i:i + 250], y[i:i + 250], Threat("inf", 8 / 255), steps=20, seed=0)
                       for i in range(0, n, 250)])
    return {f"{s:g}": round(ere_auroc(score, x, x_adv, s, m=16)["auroc"], 4) for s in sigmas} | {"n": n}


def cmd_score(args, argv):
    from pursamere.method.scores import sigma_ladder
    from pursamere.method.train import train_score

    runs = Path(args.runs)
    log = _log_to(runs / "score.log")
    cfg = C.SCORE_TRAIN if args.steps is None else C.SCORE_TRAIN.__class__(**{**C.SCORE_TRAIN.__dict__, "steps": args.steps})
    x, _ = C.cifar10_float("train", args.data, args.cache)
    sigmas = sigma_ladder(*C.SCORE_SIGMAS)
    torch.manual_seed(cfg.seed)
    net = ScoreNet(C.SCORE_NET).to(memory_format=torch.channels_last)
    ckpt, clock_path = runs / "score.ckpt", runs / "score.clock.json"
    if args.fresh:
        for p in (ckpt, clock_path):
            p.unlink(missing_ok=True)
    # wall and CPU time over all sessions, saved beside each checkpoint (a crash loses at most one interval)
    clock = json.loads(clock_path.read_text()) if clock_path.exists() and ckpt.exists() else {"seconds": 0.0, "cpu_seconds": 0.0, "step": 0}
    mark = {"wall": time.perf_counter(), "cpu": time.process_time(), "step": None}
    log(f"train score {count_parameters(net)} parameters, {C.SCORE_NET}, ladder {C.SCORE_SIGMAS}, {cfg}; resumed clock {clock}")

    def on_step(step, loss):
        if mark["step"] is None:
            mark["step"] = step - 1
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            now, cpu = time.perf_counter(), time.process_time()
            rate = cfg.batch_size * (step - mark["step"]) / (now - mark["wall"])
            clock.update(seconds=clock["seconds"] + now - mark["wall"], cpu_seconds=clock["cpu_seconds"] + cpu - mark["cpu"], step=step)
            mark.update(wall=now, cpu=cpu, step=step)
            atomic_write_json(clock_path, clock)
            log(f"step {step}/{cfg.steps} loss {loss:.4f} images/s {rate:.1f} elapsed {clock['seconds'] / 60:.1f} min")

    ema, losses = train_score(net, x, sigmas, cfg, checkpoint=ckpt, resume=True, stop_at=args.stop_at, on_step=on_step)
    if clock["step"] < cfg.steps:
        log(f"stopped at step {clock['step']}; run the same command again to continue")
        return
    ema = ema.to(memory_format=torch.channels_last).eval()
    del x
    xt, yt = C.cifar10_float("test", args.data, args.cache)
    held = torch.zeros(len(xt), dtype=torch.bool)
    held[C.validation_indices(len(xt))] = True
    xe, ye = xt[~held], yt[~held]
    metrics = {"train_seconds": round(clock["seconds"], 1), "train_cpu_seconds": round(clock["cpu_seconds"], 1),
               "train_images_per_second": round(cfg.steps * cfg.batch_size / clock["seconds"], 1),
               "final_loss_mean_last_500": round(float(np.mean(losses[-500:])), 4), "parameters": count_parameters(ema),
               "passes_per_second": round(score_passes_per_second(ema), 1),
               "psnr": denoising_psnr(ema, xe[:1000])}
    log("score metrics so far: " + json.dumps(metrics))
    try:
        metrics["ere_auroc_pgd"] = ere_detection(ema, C.load_classifier("classifier"), xe, ye)
    except (FileNotFoundError, ValueError) as e:  # the classifier is not shipped yet
        log(f"no ERE detection AUROC: {e}")
    log("score metrics: " + json.dumps(metrics))
    atomic_write_json(runs / "score.json", {"metrics": metrics, "losses_every_100": losses[::100]})
    if not args.no_ship:
        meta = {"kind": "ScoreNet", "architecture": {"image_shape": list(C.SCORE_NET.image_shape), "channels": list(C.SCORE_NET.channels),
                                                     "blocks": C.SCORE_NET.blocks, "groups": C.SCORE_NET.groups},
                "sigma_ladder": {"first": C.SCORE_SIGMAS[0], "last": C.SCORE_SIGMAS[1], "n": C.SCORE_SIGMAS[2]},
                "train": dict(cfg.__dict__), "command": _command(argv), "weights": "EMA",
                "data": "CIFAR-10 (JPEG), all 50,000 training images", "metrics": metrics, "torch": torch.__version__}
        entry = save_weights("cifar10/score", ema, meta)
        log(f"shipped weights/{entry['file']} ({entry['bytes']} bytes)")


# ------------------------------------------------------------------------- purification schedule

# Candidates of the schedule sweep: ERE descent (SAM off), M = 4 antithetic draws, ε_pur = 12/255
# (the paper's middle radius); they vary the σ range, the number of steps K and the learning rates.
SWEEP = {
    "A": dict(sigma_max=0.25, sigma_min=0.01, n_levels=12, steps_per_level=1, lr_max=0.01, lr_min=0.002),
    "B": dict(sigma_max=0.25, sigma_min=0.01, n_levels=12, steps_per_level=1, lr_max=0.02, lr_min=0.004),
    "C": dict(sigma_max=0.25, sigma_min=0.01, n_levels=12, steps_per_level=1, lr_max=0.005, lr_min=0.001),
    "D": dict(sigma_max=0.1, sigma_min=0.01, n_levels=12, steps_per_level=1, lr_max=0.01, lr_min=0.002),
    "E": dict(sigma_max=0.25, sigma_min=0.03, n_levels=12, steps_per_level=1, lr_max=0.01, lr_min=0.002),
    "F": dict(sigma_max=0.25, sigma_min=0.01, n_levels=6, steps_per_level=1, lr_max=0.02, lr_min=0.004),
}


def cmd_sweep(args, argv):
    """Clean and BPDA-det accuracy (ℓ∞ 8/255) of the plain classifier behind each candidate, on validation images."""
    from pursamere.evaluation.attacks import Threat, pgd
    from pursamere.evaluation.defended import Defended
    from pursamere.evaluation.starts import image_seeds
    from pursamere.io import atomic_write_text
    from pursamere.method.purify import Purifier

    out = Path(args.out)
    log = _log_to(Path(args.runs) / "sweep.log")
    xt, yt = C.cifar10_float("test", args.data, args.cache)
    idx = C.validation_indices(len(xt))[: args.n]
    x, y = xt[idx], yt[idx]
    clf, score = C.load_classifier("classifier"), C.load_score_net()
    threat = Threat("inf", 8 / 255)
    path = out / "sweep.json"
    rows = {r["candidate"]: r for r in json.loads(path.read_text())["rows"]} if path.exists() else {}
    for name, kw in SWEEP.items():
        if (args.only and name not in args.only.split(",")) or (name in rows and rows[name]["bpda_steps"] == args.steps and rows[name]["n"] == args.n):
            continue
        cfg = C.PURIFY.replace(**kw)
        pur = Purifier(score, cfg)
        t0 = time.perf_counter()
        with torch.no_grad():
            clean = clf(pur(x)).argmax(1) == y
        t_pur = time.perf_counter() - t0
        d = Defended(clf, pur, gradient="bpda")
        x_adv = torch.cat([pgd(d, x[i:i + 32], y[i:i + 32], threat, steps=args.steps,
                               seeds=image_seeds(x[i:i + 32])) for i in range(0, len(x), 32)])
        with torch.no_grad():
            robust = d(x_adv).argmax(1) == y
        rows[name] = {"candidate": name, **kw, "K": cfg.steps, "m": cfg.m, "eps_pur": cfg.eps_pur, "rho": cfg.rho,
                      "n": len(x), "clean_acc": float(clean.float().mean()), "bpda_steps": args.steps,
                      "bpda_acc": float(robust.float().mean()), "seconds": round(time.perf_counter() - t0, 1),
                      "purify_seconds_per_image": round(t_pur / len(x), 3)}
        log(json.dumps(rows[name]))
        atomic_write_json(path, {"what": "purification schedule sweep, CIFAR-10 (JPEG) validation images", "rows": list(rows.values())})
    lines = ["Schedule sweep, CIFAR-10 (JPEG): validation images (cifar10_cpu.validation_indices), plain classifier behind the "
             "purifier, ERE descent (ρ = 0), M = 4 antithetic, ε_pur = 12/255; attack BPDA-det ℓ∞ 8/255 (PGD, step 2/255).", "",
             "| cand. | σ_max → σ_min | K | lr_max → lr_min | n | clean % | BPDA steps | robust % | s/image (purify) | s (row) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows.values(), key=lambda r: r["candidate"]):
        lines.append(f"| {r['candidate']} | {r['sigma_max']} → {r['sigma_min']} | {r['K']} | {r['lr_max']} → {r['lr_min']} | {r['n']} | "
                     f"{100 * r['clean_acc']:.1f} | {r['bpda_steps']} | {100 * r['bpda_acc']:.1f} | {r['purify_seconds_per_image']} | {r['seconds']} |")
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------------------------ eq. 17

def _purify_config() -> str:
    """The purification schedule as recorded beside purified images (``cifar10_cpu.PURIFY``)."""
    return json.dumps(C.PURIFY.__dict__, default=str)


def _score_fingerprint(score=None) -> str:
    """The fingerprint of the (shipped) score model's weights: purified images are valid for this model only."""
    from pursamere.io import fingerprint

    return fingerprint(*(score or C.load_score_net()).state_dict().values())


def _purify_and_save(path: Path, score, images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """ERE-descent purification (``cifar10_cpu.PURIFY``) of uint8 ``images`` in batches of 50, saved atomically to
    ``path`` with their indices, the schedule and the score model's fingerprint; returns the uint8 result."""
    from pursamere.io import atomic_write_bytes
    from pursamere.method.purify import Purifier

    pur = Purifier(score, C.PURIFY)
    xb = torch.from_numpy(images).float() / 255.0
    xp = torch.cat([pur(xb[i:i + 50]) for i in range(0, len(xb), 50)])
    out = torch.round(xp * 255).clamp(0, 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    np.savez(buf, index=index, images=out, config=np.array(_purify_config()), score=np.array(_score_fingerprint(score)))
    atomic_write_bytes(path, buf.getvalue())
    return out


def _matches(z, score_fp: str) -> bool:
    """A saved purification made with today's schedule and score model."""
    return (json.loads(str(z["config"])) == json.loads(_purify_config()) and "score" in z.files
            and str(z["score"]) == score_fp)


def cmd_purify_train(args, argv):
    """Purify training images (clean, by ERE descent with the preset's schedule) in shards of 500; resumable."""
    log = _log_to(Path(args.runs) / "purify-train.log")
    shards = Path(args.runs) / "purified"
    x, _ = C.cifar10_uint8("train", args.data, args.cache)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(C.CIFAR10_CPU.data_seed + 2)).numpy()
    score = C.load_score_net()
    for start in range(0, args.limit, 500):
        path = shards / f"shard-{start:05d}.npz"
        if path.exists():
            continue
        idx = order[start:min(start + 500, args.limit)]
        t0 = time.perf_counter()
        img = _purify_and_save(path, score, x[idx], idx)
        dt = time.perf_counter() - t0
        delta = np.abs(img.astype(np.int16) - x[idx].astype(np.int16)).max()
        log(f"purified {start + len(idx)}/{args.limit} ({len(idx) / dt:.2f} images/s, max |Δ| {delta}/255)")


def load_purified(runs: Path):
    """All purified shards: ``(train indices, uint8 images)``."""
    files = sorted((runs / "purified").glob("shard-*.npz"))
    if not files:
        raise FileNotFoundError(f"no purified shards in {runs / 'purified'}: run the purify-train subcommand first")
    idx, img = [], []
    score = _score_fingerprint()
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            if not _matches(z, score):
                raise ValueError(f"{f} was purified with another schedule than cifar10_cpu.PURIFY or another score model "
                                 "than weights/cifar10/score; delete the shards and re-run purify-train")
            idx.append(z["index"])
            img.append(z["images"])
    return np.concatenate(idx), np.concatenate(img)


PURIFIED_TEST = 1000  # test images purified once to compare the classifiers on what a purifier hands them


def purified_test_images(runs: Path, args, log, n: int = PURIFIED_TEST):
    """``n`` fixed test images (seed 1 permutation), their ERE-descent purification with ``cifar10_cpu.PURIFY``
    (from the clean image: what the classifier sees behind the purifier without an attack), and labels.
    Cached in ``runs`` (about 7 minutes on one core for 1,000 images)."""
    xt, yt = C.cifar10_uint8("test", args.data, args.cache)
    idx = torch.randperm(len(xt), generator=torch.Generator().manual_seed(1))[:n].numpy()
    path = runs / f"purified-test-{n}.npz"
    score = C.load_score_net()
    img = None
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if _matches(z, _score_fingerprint(score)) and np.array_equal(z["index"], idx):
                img = z["images"]
    if img is None:
        t0 = time.perf_counter()
        img = _purify_and_save(path, score, xt[idx], idx)
        log(f"purified {n} test images in {time.perf_counter() - t0:.0f} s")
    return torch.from_numpy(xt[idx]), torch.from_numpy(img), torch.from_numpy(yt[idx]).long()


def cmd_eq17(args, argv):
    runs = Path(args.runs)
    idx, img = load_purified(runs)
    _, y = C.cifar10_uint8("train", args.data, args.cache)
    share = len(idx) / len(y)

    def on_purified(net, log):
        """Eq. 17's purpose: accuracy on purified images. Both classifiers on the same purified test images."""
        xc, xp, yp = purified_test_images(runs, args, log)
        out = {"purified_training_images": int(len(idx)), "purified_share": round(share, 4), "purified_test_n": len(yp)}
        for name, model in (("eq17", net), ("classifier", C.load_classifier("classifier"))):
            out[f"{name}_clean_accuracy_same_images"] = evaluate_accuracy(model, xc, yp)
            out[f"{name}_purified_accuracy"] = evaluate_accuracy(model, xp, yp)
        return out

    return train_classifier_model("eq17", C.EQ17, args, argv, extra_images=img, extra_labels=y[idx],
                                  extra_meta={"purified_training_images": int(len(idx)), "purified_share": share,
                                              "purify": {k: (list(v) if isinstance(v, tuple) else v) for k, v in C.PURIFY.__dict__.items()}},
                                  more_metrics=on_purified)


def cmd_classifier(args, argv):
    return train_classifier_model("classifier", C.CLASSIFIER, args, argv)


def cmd_adversarial(args, argv):
    return train_classifier_model("adversarial", C.ADVERSARIAL, args, argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(C.DEFAULT_ROOT), help="folder with {train,test}.tar.gz of CIFAR-10 JPEGs")
    ap.add_argument("--cache", default=str(C.DEFAULT_CACHE), help="decoded-array cache (outside git)")
    ap.add_argument("--runs", default="runs/cifar10", help="checkpoints and logs (outside git)")
    ap.add_argument("--fresh", action="store_true", help="delete this model's checkpoint first")
    ap.add_argument("--no-ship", action="store_true", help="do not write weights/ (trial runs)")
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this step (resume later)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("classifier", help="the fast clean classifier")
    sub.add_parser("adversarial", help="FGSM-RS adversarial training at ℓ∞ 8/255")
    sw = sub.add_parser("sweep", help="the purification schedule sweep on validation images")
    sw.add_argument("--n", type=int, default=64)
    sw.add_argument("--steps", type=int, default=20, help="BPDA-det steps")
    sw.add_argument("--only", default="", help="comma-separated candidate letters")
    sw.add_argument("--out", default="book/data/cifar10-cpu-schedule-sweep")
    pt = sub.add_parser("purify-train", help="purify training images for eq. 17 (shards of 500, resumable)")
    pt.add_argument("--limit", type=int, default=10_000, help="how many training images to purify")
    sub.add_parser("eq17", help="the eq.-17 classifier on clean + purified images")
    sp = sub.add_parser("score", help="the DSM score model")
    sp.add_argument("--steps", type=int, default=None, help="override the config's steps (trial runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("PURSAMERE_THREADS", torch.get_num_threads())))
    {"classifier": cmd_classifier, "adversarial": cmd_adversarial, "score": cmd_score, "sweep": cmd_sweep,
     "purify-train": cmd_purify_train, "eq17": cmd_eq17}[args.cmd](args, argv)


if __name__ == "__main__":
    main()
