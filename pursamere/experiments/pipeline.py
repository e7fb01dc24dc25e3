"""The digits (and CIFAR-10) pipeline: train, purify, attack, tabulate — one function per stage.

``run_pipeline(preset, plan, workdir, out_dir)`` is what ``pursamere demo`` (the budgeted
``Plan`` of the preset) and ``pursamere reproduce`` (the full ``Plan``) run. Every stage caches
its output in ``workdir`` (checksummed, tied to the preset's settings and the data), so a second
run reuses them; ``fresh=True`` retrains.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..evaluation.attacks import Threat
from ..method.baselines import ADP, DiffPure
from ..evaluation.runner import AttackSpec, Defence, evaluate, plot_results, render_table
from ..io import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from ..method.nets import ScoreNet, SmallCNN, WideResNet
from .presets import Plan, Preset
from ..method.purify import Purifier
from ..method.train import TRADES, PGDAdversary, accuracy, config_hash, fingerprint, train_classifier, train_score

__all__ = ["load_split", "build_classifier", "prepare", "build_defences", "run_pipeline", "purify_batched", "load_trained_score"]


def load_split(preset: Preset, data_root: str | None = None):
    """The preset's train/test split (digits are embedded; CIFAR-10 needs a local folder)."""
    from . import data

    if preset.data == "digits":
        return data.load_digits_split(seed=preset.data_seed)
    if preset.data == "cifar10":
        root = data_root or "data"
        xtr, ytr = _per_class(*data.load_cifar10(root, "train"), preset.train_limit_per_class)
        xte, yte = _per_class(*data.load_cifar10(root, "test"), preset.test_limit_per_class)
    elif preset.data == "cifar10-jpeg":
        root = data_root or "../shared/data/cifar10-jpeg"
        xtr, ytr = data.load_cifar10_jpeg(root, "train", limit_per_class=preset.train_limit_per_class)
        xte, yte = data.load_cifar10_jpeg(root, "test", limit_per_class=preset.test_limit_per_class)
    else:
        raise ValueError(f"preset {preset.name!r} names an unknown data set {preset.data!r}")
    return data.Split(xtr, ytr, xte, yte, data.CIFAR10_CLASSES)


def _per_class(x, y, limit):
    """The first ``limit`` images of every class, in file order (None: all)."""
    if limit is None:
        return x, y
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique():
        keep[(y == c).nonzero().flatten()[:limit]] = True
    return x[keep], y[keep]


def validation_indices(preset: Preset, n_test: int) -> torch.Tensor:
    """Test images set aside for tuning (the schedule sweep): never part of the tables."""
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(preset.data_seed + 1))[: preset.validation_size]


def table_indices(preset: Preset, n_test: int) -> torch.Tensor:
    """The tables' fixed order of test images, without the validation images."""
    perm = torch.randperm(n_test, generator=torch.Generator().manual_seed(preset.data_seed))
    held = torch.zeros(n_test, dtype=torch.bool)
    held[validation_indices(preset, n_test)] = True
    return perm[~held[perm]]


def build_classifier(preset: Preset, image_shape, num_classes: int = 10) -> torch.nn.Module:
    if preset.classifier == "smallcnn":
        return SmallCNN(image_shape, num_classes)
    if preset.classifier.startswith("wrn-"):
        _, depth, widen = preset.classifier.split("-")
        return WideResNet(int(depth), int(widen), num_classes, in_channels=image_shape[0])
    raise ValueError(f"unknown classifier {preset.classifier!r}")


def purify_batched(purifier, x: torch.Tensor, batch_size: int = 128, desc: str = "purify", progress: bool = True):
    """Purify a large set in batches (results do not depend on the batching: batch invariance)."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, x.shape[0], batch_size), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        out.append(purifier(x[i:i + batch_size]))
    return torch.cat(out)


def _cached_model(path: Path, meta: dict, build, fresh: bool):
    """Load a cached module whose meta matches, or build (train) it and cache it."""
    if path.exists() and not fresh:
        ck = load_checkpoint(path)
        if ck.get("meta") == meta:
            module = build(train=False)
            module.load_state_dict(ck["state"])
            return module.eval(), True
    module = build(train=True)
    save_checkpoint(path, {"state": module.state_dict(), "meta": meta})
    return module.eval(), False


def load_trained_score(preset: Preset, workdir: Path) -> ScoreNet:
    """The preset's trained score net (EMA weights) from ``workdir``; clear error when missing."""
    from ..method.train import load_score_net

    path = Path(workdir) / preset.name / "score.pt"
    if not path.exists():
        raise FileNotFoundError(f"no trained score net at {path}: run `pursamere demo --preset {preset.name}` "
                                f"or `pursamere train-score --preset {preset.name}` first")
    return load_score_net(ScoreNet(preset.score_net), path)


def prepare(preset: Preset, workdir: str | Path, fresh: bool = False, progress: bool = True, device: str = "cpu",
            log=print, data_root: str | None = None) -> dict:
    """Train (or reuse) the score net, the plain classifier and the eq.-17 classifier."""
    work = Path(workdir) / preset.name
    work.mkdir(parents=True, exist_ok=True)
    split = load_split(preset, data_root)
    times = {}

    # 1. score net: denoising score matching (eq. 6), resumable
    t0 = time.perf_counter()
    score_path = work / "score.pt"
    if fresh and score_path.exists():
        score_path.unlink()
    torch.manual_seed(preset.score_train.seed)
    net = ScoreNet(preset.score_net)
    done = False
    if score_path.exists():
        ck = load_checkpoint(score_path)
        want = {"config": dataclasses.asdict(preset.score_train), "sigmas": [float(s) for s in preset.sigmas().float()],
                "data": fingerprint(split.x_train), "n_params": sum(p.numel() for p in net.parameters())}
        if ck["meta"] != want:  # other settings: start again rather than reuse or resume a different net
            log(f"score net: {score_path} was trained with other settings; retraining")
            score_path.unlink()
        else:
            done = ck["step"] >= preset.score_train.steps
    if done:
        from ..method.train import load_score_net

        score = load_score_net(net, score_path)
        log(f"score net: reused {score_path}")
    else:
        score, losses = train_score(net, split.x_train, preset.sigmas(), preset.score_train, checkpoint=score_path,
                                    resume=True, progress=progress, device=device)
        log(f"score net: {preset.score_train.steps} DSM steps, final loss {sum(losses[-50:]) / len(losses[-50:]):.3f}")
    score = score.to(device).eval()
    times["score_net"] = time.perf_counter() - t0

    shape, data_fp = tuple(split.x_train.shape[1:]), fingerprint(split.x_train, split.y_train)

    def make_classifier(x_pur=None):
        def build(train):
            torch.manual_seed(preset.classifier_train.seed)
            clf = build_classifier(preset, shape)
            if train:
                clf = train_classifier(clf, split.x_train, split.y_train, preset.classifier_train, x_purified=x_pur,
                                       device=device, progress=progress)
            return clf.to("cpu")
        return build

    # 2. plain classifier (the undefended row)
    t0 = time.perf_counter()
    meta = {"preset": config_hash(dataclasses.asdict(preset.classifier_train)), "arch": preset.classifier, "data": data_fp}
    plain, reused = _cached_model(work / "classifier_plain.pt", meta, make_classifier(), fresh)
    log(f"plain classifier: {'reused' if reused else 'trained'}; test accuracy {accuracy(plain, split.x_test, split.y_test):.3f}")
    times["classifier_plain"] = time.perf_counter() - t0

    # 3. purified training set (Algorithm 1 with SAM OFF, eq. 17), cached
    t0 = time.perf_counter()
    pur_cfg = preset.purify.replace(rho=0.0, rho_sigma=None)
    n_pur = max(1, int(round(preset.train_fraction_purified * len(split.x_train))))
    pur_meta = {"config": config_hash(dataclasses.asdict(pur_cfg)), "score": fingerprint(*score.state_dict().values()), "data": data_fp, "n": n_pur}
    pur_path = work / "purified_train.pt"
    x_pur = None
    if pur_path.exists() and not fresh:
        ck = load_checkpoint(pur_path)
        if ck.get("meta") == pur_meta:
            x_pur = ck["x"]
    if x_pur is None:
        x_pur = split.x_train.clone()
        x_pur[:n_pur] = purify_batched(Purifier(score, pur_cfg), split.x_train[:n_pur], desc="purify train set (eq. 17)",
                                       progress=progress)
        save_checkpoint(pur_path, {"x": x_pur, "meta": pur_meta})
    times["purify_train"] = time.perf_counter() - t0

    # 4. classifier trained on clean + purified images (eq. 17)
    t0 = time.perf_counter()
    meta_aug = dict(meta, purified=pur_meta)
    aug, reused = _cached_model(work / "classifier_eq17.pt", meta_aug, make_classifier(x_pur), fresh)
    log(f"eq.-17 classifier: {'reused' if reused else 'trained'}; test accuracy {accuracy(aug, split.x_test, split.y_test):.3f}")
    times["classifier_eq17"] = time.perf_counter() - t0

    # 5. adversarially trained classifiers, the competition: PGD (Madry et al. 2018) and TRADES
    arts = {"split": split, "score": score.to("cpu"), "plain": plain, "eq17": aug, "times": times}
    threat = Threat("inf", preset.threats["inf"])
    kinds = (("adv", "PGD adversarial training"), ("trades", "TRADES")) if preset.adv_train_steps >= 1 else ()
    for key, label in kinds:
        t0 = time.perf_counter()
        settings = {"steps": preset.adv_train_steps, "eps": threat.eps, **({"beta": preset.trades_beta} if key == "trades" else {})}

        def build(train, key=key):
            torch.manual_seed(preset.classifier_train.seed)
            clf = build_classifier(preset, shape)
            if train:
                kw = ({"adversary": PGDAdversary(threat, steps=preset.adv_train_steps)} if key == "adv"
                      else {"trades": TRADES(threat, steps=preset.adv_train_steps, beta=preset.trades_beta)})
                clf = train_classifier(clf, split.x_train, split.y_train, preset.classifier_train, device=device,
                                       progress=progress, **kw)
            return clf.to("cpu")

        arts[key], reused = _cached_model(work / f"classifier_{key}.pt", dict(meta, **{key: settings}), build, fresh)
        log(f"{label} classifier: {'reused' if reused else 'trained'}; test accuracy {accuracy(arts[key], split.x_test, split.y_test):.3f}")
        times[f"classifier_{key}"] = time.perf_counter() - t0
    return arts


def _eps_label(e: float) -> str:
    return f"{e:.4g}"


def build_defences(preset: Preset, arts: dict) -> list[Defence]:
    """Undefended, PGD-AT, TRADES; PurSAMERE at every ε_pur; ERE descent (SAM off); ADP and DiffPure-style,
    stochastic and fixed-seed."""
    score, plain, aug = arts["score"], arts["plain"], arts["eq17"]
    mid = preset.purify.eps_pur
    defs = [Defence("undefended", plain)]
    # the competition: adversarially trained classifiers, no purifier (PGD-AT, Madry et al.; TRADES)
    defs += [Defence(name, arts[k]) for k, name in (("adv", "PGD-AT"), ("trades", "TRADES")) if k in arts]
    for e in preset.eps_pur:  # the paper's method: SAM with ρ = ε_pur/2 in the ball's norm, whatever the preset's default
        cfg = preset.purify.replace(eps_pur=e, rho=e / 2, rho_sigma=None, sam_norm=preset.purify.norm)
        defs.append(Defence(f"PurSAMERE ε_pur={_eps_label(e)}", aug, Purifier(score, cfg)))
    defs.append(Defence(f"ERE descent (no SAM) ε_pur={_eps_label(mid)}", aug,
                        Purifier(score, preset.purify.replace(rho=0.0, rho_sigma=None))))
    defs.append(Defence("ADP", plain, ADP(score, preset.adp.replace(fixed_noise=False))))
    defs.append(Defence("ADP (fixed seed)", plain, ADP(score, preset.adp.replace(fixed_noise=True))))
    defs.append(Defence("DiffPure-style", plain, DiffPure(score, preset.diffpure.replace(fixed_noise=False))))
    defs.append(Defence("DiffPure-style (fixed seed)", plain, DiffPure(score, preset.diffpure.replace(fixed_noise=True))))
    return defs


def attack_plan(plan: Plan) -> dict:
    """The named attacks of the tables, with the plan's step counts."""
    return {
        "gpgd": AttackSpec(f"gPGD{plan.gpgd_steps}", gradient="none", steps=plan.gpgd_steps),
        "bpda": AttackSpec(f"BPDA{plan.bpda_steps}", gradient="bpda", steps=plan.bpda_steps, eot=plan.eot),
        "bpda_long": AttackSpec(f"BPDA{plan.bpda_long_steps}", gradient="bpda", steps=plan.bpda_long_steps, eot=plan.eot),
        "exact": AttackSpec(f"exact{plan.exact_steps}", gradient="exact", steps=plan.exact_steps),
    }


def _applies(preset: Preset, atk: dict):
    """Which (defence, attack, threat) rows the tables need."""
    mid = f"PurSAMERE ε_pur={_eps_label(preset.purify.eps_pur)}"
    if len({a.name for a in atk.values()}) < len(atk):
        raise ValueError(f"two attacks of the plan share a name {[a.name for a in atk.values()]}: give them different step counts")

    def keep(d: Defence, spec: AttackSpec, threat: Threat) -> bool:
        linf = threat.norm == "inf"
        name = d.name
        if name in ("undefended", "PGD-AT", "TRADES"):
            return spec.name in (atk["bpda"].name, atk["bpda_long"].name) and (linf or spec.name == atk["bpda_long"].name)
        if name.startswith("PurSAMERE"):
            if name == mid and spec.name in (atk["bpda_long"].name, atk["exact"].name):
                return True  # Table 3 (and the exact attack) at the middle radius, all three norms
            return linf and spec.name != atk["bpda_long"].name  # Tables 1–2 and exact: ℓ∞, every radius
        if name.startswith("ERE descent"):
            return linf and spec.name in (atk["gpgd"].name, atk["bpda"].name, atk["exact"].name)
        if "fixed seed" in name:  # deterministic white-box (Liu et al. 2025)
            return linf and spec.name in (atk["bpda"].name, atk["exact"].name)
        return spec.name in (atk["bpda"].name,)  # stochastic baselines: BPDA+EoT, all norms
    return keep


def score_diagnostics(preset: Preset, arts: dict, out_dir: str | Path, n: int = 200, progress: bool = False) -> dict:
    """Did the score net learn the data? Langevin samples (figure) and the ERE detection AUROC.

    The AUROC compares the ERE of clean test images with that of PGD-20 (ℓ∞, the preset's
    budget) adversarial images made against the plain classifier, at several σ.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..method.analysis import annealed_langevin, ere_auroc, image_grid
    from ..evaluation.attacks import pgd
    from ..io import atomic_write_bytes

    out = Path(out_dir)
    split, score = arts["split"], arts["score"]
    shape = tuple(split.x_train.shape[1:])
    dev = next(arts["plain"].parameters()).device
    samples = annealed_langevin(score, (64, *shape), preset.sigmas(), steps_per_level=5, seed=0, device=dev).cpu()
    x, y = split.x_test[:n].to(dev), split.y_test[:n].to(dev)
    x_adv = pgd(arts["plain"], x, y, Threat("inf", preset.threats["inf"]), steps=20)
    sig_grid = sorted({preset.purify.sigma_min, 0.05, 0.1, preset.purify.sigma_max})
    det = [ere_auroc(score, x, x_adv, s) for s in sig_grid]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, imgs, title in ((axes[0], split.x_test[:64], "test images"), (axes[1], samples, "annealed Langevin samples")):
        g = image_grid(imgs)
        ax.imshow(g.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if g.shape[0] == 1 else None, vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out / "samples.png", buf.getvalue())
    diag = {"ere_detection": det, "n": int(n), "attack": f"PGD-20 ℓ∞ ε={preset.threats['inf']} on the plain classifier"}
    atomic_write_json(out / "score_diagnostics.json", diag)
    return diag


def example_figure(preset: Preset, defence: Defence, x: torch.Tensor, y: torch.Tensor, path: str | Path, steps: int = 10) -> Path:
    """Clean, BPDA-det adversarial and purified images with the defence's predictions."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation.attacks import pgd
    from ..io import atomic_write_bytes

    threat = Threat("inf", preset.threats["inf"])
    x_adv = pgd(defence.model("bpda"), x, y, threat, steps=steps)
    rows = [("clean", x), (f"BPDA{steps}-det, ℓ∞ ε={threat.eps:.3g}", x_adv),
            ("clean, purified", defence.purifier(x)), ("adversarial, purified", defence.purifier(x_adv))]
    with torch.no_grad():
        preds = [defence.classifier(img).argmax(1) for _, img in rows]
    fig, axes = plt.subplots(len(rows), x.shape[0], figsize=(1.3 * x.shape[0], 1.5 * len(rows)), squeeze=False)
    for r, ((title, imgs), pred) in enumerate(zip(rows, preds)):
        for c in range(x.shape[0]):
            ax = axes[r][c]
            img = imgs[c].detach().cpu()
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ok = int(pred[c]) == int(y[c])
            ax.set_title(f"→ {int(pred[c])}", fontsize=8, color="tab:green" if ok else "tab:red")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"{defence.name}: classifier output on each image (green = right, red = wrong)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def run_pipeline(preset: Preset, plan: Plan, workdir: str | Path, out_dir: str | Path, fresh: bool = False,
                 progress: bool = True, device: str = "cpu", log=print, checks: bool = True, data_root=None) -> dict:
    """Train (or reuse), then run the tables of the plan; write results, table.md, plots, checks."""
    from ..evaluation.checks import format_checks, obfuscation_checks

    t_start = time.perf_counter()
    out = Path(out_dir)
    arts = prepare(preset, workdir, fresh=fresh, progress=progress, device=device, log=log, data_root=data_root)
    for k in [k for k in ("score", "plain", "eq17", "adv", "trades") if k in arts]:
        arts[k] = arts[k].to(device)
    split = arts["split"]
    perm = table_indices(preset, split.x_test.shape[0])
    n = len(perm) if plan.n_test is None else min(plan.n_test, len(perm))
    perm = perm[:n]
    x, y = split.x_test[perm].to(device), split.y_test[perm].to(device)
    diag = score_diagnostics(preset, arts, out, n=min(200, len(split.x_test)))
    best = max(diag["ere_detection"], key=lambda d: d["auroc"])
    log(f"score net check: ERE detects PGD images with AUROC {best['auroc']:.3f} at σ = {best['sigma']:.3g} "
        f"(mean ERE clean {best['ere_clean_mean']:.2f} vs adversarial {best['ere_adv_mean']:.2f}); samples in samples.png")
    defs = build_defences(preset, arts)
    atk = attack_plan(plan)
    threats = [Threat(k, v) for k, v in preset.threats.items()]
    meta = {"preset": preset.name, "plan": dataclasses.asdict(plan),
            "subset": f"first {n} of a fixed permutation (seed {preset.data_seed}) of the test set, without the "
                      f"{preset.validation_size} validation images the schedule sweep used",
            "threats": {str(k): v for k, v in preset.threats.items()}, "train_times_s": {k: round(v, 1) for k, v in arts["times"].items()}}
    t0 = time.perf_counter()
    res = evaluate(defs, list(atk.values()), threats, x, y, out, seed=0, meta=meta, progress=progress,
                   batch_size=plan.batch_size, skip=lambda d, s, t: not _applies(preset, atk)(d, s, t))
    eval_s = time.perf_counter() - t0

    pur_mid = next(d for d in defs if d.name.startswith("PurSAMERE") and f"ε_pur={_eps_label(preset.purify.eps_pur)}" in d.name)
    example_figure(preset, pur_mid, x[:8], y[:8], out / "examples.png", steps=plan.bpda_steps)
    check_md, check_json = "", []
    if checks and plan.check_gradients:
        pur = pur_mid
        lin = Threat("inf", preset.threats["inf"])
        nc = min(plan.n_check, n)
        for grad in plan.check_gradients:
            cs = obfuscation_checks(pur, lin, x[:nc], y[:nc], gradient=grad, steps=plan.check_steps, square_queries=plan.square_queries)
            check_md += format_checks(f"{pur.name}, {grad} gradient, ℓ∞ ε={lin.eps:.4g}, n={nc}", cs) + "\n"
            check_json.append({"defence": pur.name, "gradient": grad, "n": nc, "checks": [c.as_dict() for c in cs]})
    atomic_write_json(out / "checks.json", check_json)  # an empty list when the plan runs no checks

    header = (f"# {preset.name}: PurSAMERE and baselines — what ran\n\n"
              f"{meta['subset']} (n = {n}); attacks: gPGD{plan.gpgd_steps}, BPDA{plan.bpda_steps}-det, "
              f"BPDA{plan.bpda_long_steps}-det, exact-gradient PGD{plan.exact_steps} through the unrolled purifier, "
              f"BPDA{plan.bpda_steps}+EoT({plan.eot}) for stochastic purifiers. Budgets: "
              + ", ".join(f"ℓ{'∞' if k == 'inf' else k} {v:.4g}" for k, v in preset.threats.items())
              + f". Purifier: K = {preset.purify.steps} steps, M = {preset.purify.m}; PurSAMERE rows use the paper's SAM (ρ = ε_pur/2), "
              + f"ERE descent has SAM off (the preset's default ρ = {preset.purify.rho:g}).\n")
    table = header + "\n" + render_table(res, "Robust accuracy per attack and worst case (headline)")
    if check_md:
        table += "\n## Obfuscation checks\n\n" + check_md
    atomic_write_text(out / "table.md", table)
    plot_results(res, out / "robust_accuracy.png")
    total = time.perf_counter() - t_start
    summary = {"seconds_total": round(total, 1), "seconds_eval": round(eval_s, 1), "score_diagnostics": diag, **meta}
    atomic_write_json(out / "summary.json", summary)
    return {"results": res, "table": table, "checks": check_json, "summary": summary}


def run_demo(args) -> int:
    """``pursamere demo``: the preset's budgeted plan (digits by default)."""
    from .presets import get_preset

    preset = get_preset(args.preset)
    out = Path(args.out or f"results/{preset.name}/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / "table.md").exists():
        raise FileExistsError(f"{out} already holds a finished run; choose another --out")
    res = run_pipeline(preset, preset.demo, args.workdir, out, fresh=args.fresh, device=getattr(args, "device", "cpu"),
                       data_root=getattr(args, "data_root", None))
    print(res["table"])
    print(f"wrote {out}/ (results.json, table.md, robust_accuracy.png, checks.json) in {res['summary']['seconds_total']:.0f} s")
    return 0


def evaluation_setup(name: str, n: int | None = None, seed: int = 0, workdir: str | Path = "runs", plan: str = "full"):
    """``(defences, attacks, threats, x, y, skip)`` of a trained preset, for :mod:`pursamere.experiments.distributed`.

    Train first (``pursamere train-score --preset NAME``): every rank calls this, and it only
    reuses the cached models (it trains when they are missing, which several ranks must not do
    at once).
    """
    from .presets import get_preset

    preset = get_preset(name)
    p = getattr(preset, plan)
    arts = prepare(preset, workdir, progress=False, log=lambda *a: None)
    split = arts["split"]
    m = len(split.x_test) if n is None else n
    perm = table_indices(preset, len(split.x_test))[:m]
    defs = build_defences(preset, arts)
    atk = attack_plan(p)
    threats = [Threat(k, v) for k, v in preset.threats.items()]
    keep = _applies(preset, atk)
    return defs, list(atk.values()), threats, split.x_test[perm], split.y_test[perm], lambda d, s, t: not keep(d, s, t)
