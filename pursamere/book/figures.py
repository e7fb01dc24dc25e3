"""Book helpers: the chapters' figures (Matplotlib + seaborn), drawn from the frames of :mod:`pursamere.book.frames`."""
from __future__ import annotations

__all__ = ["plot_intervals", "plot_eps_curves", "plot_sweep", "plot_ensemble_eps", "plot_attack_study", "plot_sam_study"]


def plot_intervals(df, x="robust", y="defence", hue="gradient", ax=None, title=""):
    """Point plot of accuracies (%) with their 95% Wilson intervals as horizontal bars."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * df[y].nunique() + 1.5))
    levels = list(dict.fromkeys(df[hue]))
    ys = {d: i for i, d in enumerate(dict.fromkeys(df[y]))}
    colors = dict(zip(levels, sns.color_palette("colorblind", len(levels))))
    width = 0.7 / max(len(levels), 1)
    for j, h in enumerate(levels):
        sub = df[df[hue] == h]
        pos = [ys[v] - 0.35 + width * (j + 0.5) for v in sub[y]]
        ax.errorbar(100 * sub[x], pos, xerr=[100 * (sub[x] - sub["lo"]), 100 * (sub["hi"] - sub[x])], fmt="o",
                    color=colors[h], capsize=3, label=h)
    ax.set_yticks(list(ys.values()), list(ys.keys()))
    ax.invert_yaxis()
    ax.set_xlim(-2, 102)
    ax.set_xlabel("robust accuracy (%), 95% Wilson interval")
    ax.set_ylabel("")
    ax.legend(title=hue, fontsize=8, loc="best")
    if title:
        ax.set_title(title)
    return ax


def plot_eps_curves(df, attack_col="attack"):
    """Accuracy (%) against ε per threat, one line per defence, shaded 95% intervals."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    threats = [t for t in ("ℓ∞", "ℓ2", "ℓ1") if t in set(df.threat)]
    fig, axes = plt.subplots(1, len(threats), figsize=(5.5 * len(threats), 4), squeeze=False)
    defs = list(dict.fromkeys(df.defence))
    colors = dict(zip(defs, sns.color_palette("colorblind", len(defs))))
    for ax, t in zip(axes[0], threats):
        sub = df[df.threat == t]
        for d in defs:
            s = sub[sub.defence == d].sort_values("eps")
            if s.empty:
                continue
            ax.plot(s.eps, 100 * s.robust, "o-", color=colors[d], label=d)
            ax.fill_between(s.eps, 100 * s.lo, 100 * s.hi, color=colors[d], alpha=0.15)
        ax.set_xlabel(f"attack budget ε ({t} norm, pixel units in [0, 1])")
        ax.set_ylabel("worst-case robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{t}: worst case over the attacks run")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_sweep(df):
    """Clean against robust accuracy (%) of each schedule candidate (one colour per candidate, named in the legend)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(8, 4.5))
    rob = next(c for c in df.columns if c.startswith("robust"))
    clean = next(c for c in df.columns if c.startswith("clean, eq"))
    data = df.reset_index()
    sns.scatterplot(data=data, x=clean, y=rob, hue="schedule", s=60, ax=ax)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_xlabel("clean accuracy behind the purifier (%)")
    ax.set_ylabel(f"{rob}")
    ax.set_title("purification schedules")
    fig.tight_layout()
    return fig


def plot_ensemble_eps(frame):
    """Worst case over the attack suite against the ℓ∞ budget, one line per defence, with 95% intervals."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    n_def = frame.defence.nunique()
    for i, (d, sub) in enumerate(frame.groupby("defence", sort=False)):
        sub = sub.sort_values("eps")
        jitter = (i - n_def / 2) * 0.0015
        ax.errorbar(sub.eps + jitter, 100 * sub.robust, yerr=[100 * (sub.robust - sub.lo), 100 * (sub.hi - sub.robust)],
                    marker="o", capsize=3, label=d)
    ax.set_xlabel("ℓ∞ budget ε")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Worst case over the attack suite against the budget")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return fig


def plot_attack_study(study: dict):
    """Robust accuracy per attack of the attack study (every attack on every image), with 95% intervals."""
    import matplotlib.pyplot as plt
    import pandas as pd

    af = pd.DataFrame(study["rows"]).sort_values("robust_acc")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(af) + 1))
    ax.barh(af.attack, 100 * af.robust_acc, xerr=[100 * (af.robust_acc - af.ci95.str[0]), 100 * (af.ci95.str[1] - af.robust_acc)],
            color="tab:blue", capsize=2)
    ax.invert_yaxis()
    ax.set_xlabel("robust accuracy (%)")
    ax.set_title(f"{study['defence']}, {study['threat']}, n = {study['n']} validation images (clean {100 * study['clean_acc']:.1f}%)")
    fig.tight_layout()
    return fig, af


def plot_sam_study(sf, title: str):
    """Worst case (bars, 95% intervals) and clean accuracy (ticks) per SAM setting, coloured by kind."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(sf) + 1))
    order = sf.sort_values("worst case", ascending=False)
    kinds = list(dict.fromkeys(["off", "ℓ∞", "ℓ2", "σ-tied ℓ∞", "σ-tied ℓ2", *sf.kind]))
    palette = dict(zip(kinds, sns.color_palette("tab10", len(kinds))))
    ax.barh(order.setting, 100 * order["worst case"], color=[palette[k] for k in order.kind],
            xerr=[100 * (order["worst case"] - order.lo), 100 * (order.hi - order["worst case"])], capsize=2)
    ax.scatter(100 * order.clean, order.setting, marker="|", s=200, color="black", label="clean accuracy")
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%): bars = worst case under attack, ticks = clean")
    ax.set_title(title)
    handles = [Patch(color=palette[k], label=f"SAM {k}" if k != "off" else "SAM off") for k in kinds if k in set(sf.kind)]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
