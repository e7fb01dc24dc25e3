"""What a run writes besides its rows: score-net diagnostics, example images, the robust-accuracy figure.

Every figure goes through :func:`pursamere.io.save_figure` (atomic PNG).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..evaluation.attacks import Threat, pgd
from ..evaluation.results import norm_label, worst_case
from ..io import atomic_write_json, save_figure

__all__ = ["score_diagnostics", "example_figure", "plot_results"]


def _figure(**kw):
    """A Matplotlib figure outside pyplot: no backend switch, so a notebook's inline figures are untouched."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def score_diagnostics(preset, arts, out_dir: str | Path, n: int = 200) -> dict:
    """Did the score net learn the data? Langevin samples (figure) and the ERE detection AUROC.

    The AUROC compares the ERE of clean test images with that of PGD-20 (ℓ∞, the preset's
    budget) adversarial images made against the plain classifier, at several σ.
    """
    from ..method.analysis import annealed_langevin, ere_auroc, image_grid

    out = Path(out_dir)
    split, score, plain = arts.split, arts.score, arts.classifier("plain")
    shape = tuple(split.x_train.shape[1:])
    dev = next(plain.parameters()).device
    samples = annealed_langevin(score, (64, *shape), preset.sigmas(), steps_per_level=5, seed=0, device=dev).cpu()
    x, y = split.x_test[:n].to(dev), split.y_test[:n].to(dev)
    x_adv = pgd(plain, x, y, Threat("inf", preset.threats["inf"]), steps=20)
    sig_grid = sorted({preset.purify.sigma_min, 0.05, 0.1, preset.purify.sigma_max})
    det = [ere_auroc(score, x, x_adv, s) for s in sig_grid]
    fig = _figure(figsize=(10, 5))
    axes = fig.subplots(1, 2)
    for ax, imgs, title in ((axes[0], split.x_test[:64], "test images"), (axes[1], samples, "annealed Langevin samples")):
        g = image_grid(imgs)
        ax.imshow(g.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if g.shape[0] == 1 else None, vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out / "samples.png")
    diag = {"ere_detection": det, "n": int(n), "attack": f"PGD-20 ℓ∞ ε={preset.threats['inf']} on the plain classifier"}
    atomic_write_json(out / "score_diagnostics.json", diag)
    return diag


def example_figure(preset, defence, x: torch.Tensor, y: torch.Tensor, path: str | Path, steps: int = 10) -> Path:
    """Clean, BPDA-det adversarial and purified images with the defence's predictions."""
    threat = Threat("inf", preset.threats["inf"])
    x_adv = pgd(defence.model("bpda"), x, y, threat, steps=steps)
    rows = [("clean", x), (f"BPDA{steps}-det, ℓ∞ ε={threat.eps:.3g}", x_adv),
            ("clean, purified", defence.purifier(x)), ("adversarial, purified", defence.purifier(x_adv))]
    with torch.no_grad():
        preds = [defence.classifier(img).argmax(1) for _, img in rows]
    fig = _figure(figsize=(1.3 * x.shape[0], 1.5 * len(rows)))
    axes = fig.subplots(len(rows), x.shape[0], squeeze=False)
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
    return save_figure(fig, path)


def plot_results(results: dict, path: str | Path) -> Path:
    """Seaborn figure: worst-case robust accuracy per defence (against ε where several were run)."""
    import pandas as pd
    import seaborn as sns

    wc = results.get("worst_case") or worst_case(results["rows"])
    df = pd.DataFrame([{"defence": w["defence"], "threat": norm_label(w["norm"]), "ε": w["eps"],
                        "robust accuracy (%)": 100 * w["robust_acc"], "clean accuracy (%)": 100 * w["clean_acc"]} for w in wc])
    threats = sorted(df["threat"].unique())
    fig = _figure(figsize=(5.5 * len(threats), 4))
    axes = fig.subplots(1, len(threats), squeeze=False)
    for ax, t in zip(axes[0], threats):
        sub = df[df["threat"] == t]
        if sub["ε"].nunique() > 1:
            sns.lineplot(data=sub, x="ε", y="robust accuracy (%)", hue="defence", marker="o", ax=ax)
        else:
            sns.barplot(data=sub, y="defence", x="robust accuracy (%)", ax=ax, color="tab:blue")
            ax.set_xlim(0, 100)
        ax.set_title(f"worst-case robust accuracy, {t}" + (f", ε = {sub['ε'].iloc[0]:.3g}" if sub["ε"].nunique() == 1 else ""))
    fig.tight_layout()
    return save_figure(fig, path)
