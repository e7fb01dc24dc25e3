"""The book's slider figures (chapters 1–3): views precomputed over a grid of settings.

Each figure is a :class:`~pursamere.book.slider_figure.SliderFigure` whose frames are computed,
when the notebook runs, by the same package functions the live ipywidgets sliders call
(:func:`pursamere.book.toys.slider_view`, :func:`pursamere.book.toys.ere_grid`, ...), so the
rendered book's sliders move without a kernel.
"""
from __future__ import annotations

import numpy as np
import torch

from . import theorem1, toys
from .slider_figure import Part, Slider, SliderFigure, decode

__all__ = ["sam_figure", "landscape_figure", "prop1_figure", "theorem1_figure", "live_sam_view",
           "Slider", "Part", "SliderFigure", "decode"]


# ------------------------------------------------------------------------------ shared pieces
_LANDSCAPE = dict(type="contour", colorscale="Viridis", ncontours=30, line=dict(width=0),
                  contours=dict(coloring="fill"), hoverinfo="skip")


def _axes(extent, title_x="x₁ (data units)", title_y="x₂ (data units)", suffix="", domain=None):
    x = dict(range=list(extent[:2]), title=dict(text=title_x), constrain="domain")
    y = dict(range=list(extent[2:]), title=dict(text=title_y), scaleanchor="x" + suffix, scaleratio=1,
             constrain="domain")
    if domain is not None:
        x["domain"] = list(domain)
        y["anchor"] = "x" + suffix
    return {f"xaxis{suffix}": x, f"yaxis{suffix}": y}


def _layout(height, **axes):
    return dict(height=height, margin=dict(l=60, r=20, t=40, b=40), hovermode="closest",
                legend=dict(orientation="h", x=0, y=-0.18), plot_bgcolor="white", **axes)


def _panel_title(text, suffix=""):
    """A title over one subplot, left-aligned to its own plotting area (fits narrow pages)."""
    return dict(text=text, xref=f"x{suffix} domain", yref=f"y{suffix} domain", x=0.0, y=1.0, xanchor="left",
                yanchor="bottom", showarrow=False, font=dict(size=12))


def _clipped(z, lo_pct=1, hi_pct=95):
    """The colour range the matplotlib view uses: outliers near the planted bump clipped."""
    return np.clip(z, np.percentile(z, lo_pct), np.percentile(z, hi_pct))


def _lines(paths, every=1):
    """Several (K+1, 2) paths as one trace's x and y, NaN between them (Plotly breaks lines there)."""
    xs, ys = [], []
    for p in paths:
        p = p[::every] if (len(p) - 1) % every == 0 else np.concatenate([p[::every], p[-1:]])  # keep the end
        xs += [p[:, 0], [np.nan]]
        ys += [p[:, 1], [np.nan]]
    return np.concatenate(xs[:-1]), np.concatenate(ys[:-1])


# ----------------------------------------------------------------- chapter 3: SAM against descent
def sam_figure(sigmas=(0.03, 0.045, 0.06, 0.09, 0.12, 0.18), rhos=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
               eps_purs=(0.1, 0.25, 0.5, 0.75, 1.0, 2.0), *, m: int = 16, lr: float = 0.1,
               start=(0.85, 0.32), grid: int = 41, steps: int = 80, extent=(-0.7, 1.3, -0.6, 0.9),
               every: int = 2, seed: int = 0) -> SliderFigure:
    """Chapter 3's view: ``ê_σ`` of the planted setting and Algorithm 1's paths, sliders σ, ρ, ε_pur.

    Every frame is :func:`pursamere.book.toys.slider_view` (the function the live sliders call)
    with the landscape computed once per σ and the plain path once per (σ, ε_pur). Paths keep
    every ``every``-th iterate (and the last) to keep the page light.
    """
    kw = dict(m=m, lr=lr, start_x=start[0], start_y=start[1], grid=grid, steps=steps, extent=extent, seed=seed)
    sliders = [Slider("sigma", "σ", sigmas, start=list(sigmas).index(0.06) if 0.06 in sigmas else 0),
               Slider("rho", "SAM ρ", rhos, start=list(rhos).index(0.3) if 0.3 in rhos else 0),
               Slider("eps_pur", "ε_pur", eps_purs, start=len(eps_purs) - 1)]
    t = np.linspace(0, 2 * np.pi, 73)

    def landscape(sigma):
        v = toys.slider_view(sigma=sigma, parts=("ere",), **kw)
        return [dict(z=_clipped(v.ere))]

    def ball(eps_pur):
        return [dict(x=start[0] + eps_pur * np.cos(t), y=start[1] + eps_pur * np.sin(t))]

    free = {}  # (path, σ, ρ) → the path inside the largest ball

    def run(name, sigma, rho, eps_pur):
        key = (name, sigma, rho)
        if key not in free:
            v = toys.slider_view(sigma=sigma, rho=rho, eps_pur=max(eps_purs), parts=(name,), **kw)
            free[key] = v.path_sam if name == "sam" else v.path_plain
        p = free[key]
        # A ball the path never reaches projects nothing: Algorithm 1's path is the same, so it
        # is not run again (this halves the precomputation; the test checks one such frame).
        if np.linalg.norm(p - np.asarray(start), axis=1).max() < eps_pur:
            return p
        v = toys.slider_view(sigma=sigma, rho=rho, eps_pur=eps_pur, parts=(name,), **kw)
        return v.path_sam if name == "sam" else v.path_plain

    def path(name):
        def compute(sigma, eps_pur, rho=0.0):
            p = run(name, sigma, rho, eps_pur)
            x, y = _lines([p], every)
            return [dict(x=x, y=y), dict(x=p[-1:, 0], y=p[-1:, 1])]
        return compute

    xs = np.linspace(extent[0], extent[1], grid)
    ys = np.linspace(extent[2], extent[3], grid)
    data = [
        dict(_LANDSCAPE, x=xs, y=ys, z=None, colorbar=dict(title=dict(text="ê_σ"), thickness=12)),
        dict(type="scatter", mode="lines", name="purification ball", line=dict(color="lightgrey", dash="dot", width=1.5)),
        dict(type="scatter", mode="lines", name="plain descent (ρ = 0)", line=dict(color="#d62728", width=2)),
        dict(type="scatter", mode="markers", showlegend=False, marker=dict(symbol="x", size=10, color="#d62728")),
        dict(type="scatter", mode="lines", name="SAM", line=dict(color="#ff7f0e", width=2)),
        dict(type="scatter", mode="markers", showlegend=False, marker=dict(symbol="x", size=10, color="#ff7f0e")),
        dict(type="scatter", mode="markers", name="start", x=[start[0]], y=[start[1]],
             marker=dict(color="white", size=9, line=dict(color="black", width=1))),
        dict(type="scatter", mode="markers", name="true mode", x=[0.0], y=[0.0],
             marker=dict(symbol="star", color="cyan", size=14, line=dict(color="black", width=1))),
    ]
    parts = [Part((0,), ("sigma",), landscape), Part((1,), ("eps_pur",), ball),
             Part((2, 3), ("sigma", "eps_pur"), path("plain")),
             Part((4, 5), ("sigma", "rho", "eps_pur"), path("sam"))]
    layout = _layout(520, **_axes(extent))
    layout["title"] = dict(text=f"ê_σ of the planted setting (M = {m}), Algorithm 1 from one start", x=0.01, xanchor="left", font=dict(size=13))
    note = (f"{steps} Adam steps at one noise level, learning rate {lr:g} → {lr / 5:g}; × marks where each run ends; "
            f"ρ = 0 is plain descent.")
    return SliderFigure(dict(data=data, layout=layout), sliders, parts, note=note, height=520)


def live_sam_view(grid: int = 41, steps: int = 80):
    """Chapter 3's live sliders for a Jupyter kernel: :func:`~pursamere.book.toys.slider_view` on every change.

    Returns:
        an ``ipywidgets.interactive`` panel (display it).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(sigma, rho, eps_pur, m, lr, start_x, start_y):
        fig, ax = plt.subplots(figsize=(6.5, 5))
        toys.draw_slider_view(ax, toys.slider_view(sigma, rho, eps_pur, m, lr, start_x, start_y, grid=grid, steps=steps))
        plt.show()

    s = dict(continuous_update=False)
    return widgets.interactive(
        show,
        sigma=widgets.FloatLogSlider(value=0.06, base=10, min=-2, max=-0.5, description="σ", **s),
        rho=widgets.FloatSlider(value=0.3, min=0.0, max=0.6, step=0.05, description="ρ", **s),
        eps_pur=widgets.FloatSlider(value=2.0, min=0.1, max=2.0, step=0.1, description="ε_pur", **s),
        m=widgets.IntSlider(value=16, min=2, max=64, step=2, description="M", **s),
        lr=widgets.FloatLogSlider(value=0.1, base=10, min=-2.5, max=-0.5, description="lr", **s),
        start_x=widgets.FloatSlider(value=0.85, min=-0.6, max=1.2, step=0.05, description="start x₁", **s),
        start_y=widgets.FloatSlider(value=0.32, min=-0.5, max=0.8, step=0.05, description="start x₂", **s),
    )


# ------------------------------------------------------------------- chapter 1: the ERE landscape
def landscape_figure(score, xs, ys, sigmas=(1.0, 0.5, 0.3, 0.2, 0.1, 0.05), ms=(2, 4, 8, 16, 32, 64), *,
                     marks=None, seed: int = 0) -> SliderFigure:
    """``ê_σ`` (eq. 16) of a 2-D score on a grid (:func:`~pursamere.book.toys.ere_grid`), sliders σ and M.

    Args:
        marks: optional ``(n, 2)`` points drawn as white crosses (component means).
    """
    sliders = [Slider("sigma", "σ", sigmas, start=min(2, len(sigmas) - 1)),
               Slider("m", "M draws", ms, start=min(3, len(ms) - 1))]

    def compute(sigma, m):
        return [dict(z=toys.ere_grid(score, xs, ys, sigma, int(m), seed))]

    data = [dict(_LANDSCAPE, x=np.asarray(xs), y=np.asarray(ys), z=None,
                 colorbar=dict(title=dict(text="ê_σ"), thickness=12))]
    if marks is not None:
        marks = np.asarray(marks, float)
        data.append(dict(type="scatter", mode="markers", name="component means", x=marks[:, 0], y=marks[:, 1],
                         marker=dict(symbol="cross-thin", size=14, line=dict(color="white", width=3))))
    extent = (float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1]))
    layout = _layout(480, **_axes(extent))
    layout["title"] = dict(text="ê_σ, M fixed antithetic draws (dark = low: where the purifier goes)",
                           x=0.01, xanchor="left", font=dict(size=13))
    return SliderFigure(dict(data=data, layout=layout), sliders, [Part((0,), ("sigma", "m"), compute)],
                        note="Each view is computed with the same fixed draws (seed 0) as the panels above.")


def prop1_figure(score, xs, ys, sigmas=(0.5, 0.35, 0.25, 0.15, 0.08, 0.03), *, n_nodes: int = 24) -> SliderFigure:
    """Proposition 1 as a picture: ``(e_σ − d)/σ²`` beside its σ → 0 limit ``‖s‖² + 2 tr ∇s``, slider σ.

    ``e_σ`` is exact (Gauss–Hermite, :func:`~pursamere.book.toys.ere_exact_2d`); ``score`` must not depend on σ
    (a :class:`~pursamere.book.toys.FrozenSigma`). Both panels share one colour scale, so the left one visibly
    turns into the right one as σ shrinks. (24 nodes per axis reproduce 60 nodes' gaps to 1e-3
    relative at σ = 0.35 and to 1e-12 from σ = 0.15 down on the book's score.)
    """
    gx, gy = np.meshgrid(np.asarray(xs, float), np.asarray(ys, float))
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float64)
    hyv = toys._hyvarinen(score, pts).detach().numpy().reshape(gx.shape)
    lo, hi = np.percentile(hyv, [1, 99])
    levels = dict(coloring="fill", start=float(lo), end=float(hi), size=float(hi - lo) / 24)

    def compute(sigma):
        e = toys.ere_exact_2d(score, pts, sigma, n_nodes, minus_d=True).numpy().reshape(gx.shape) / sigma**2
        gap = float(np.abs(e - hyv).max())
        return [dict(z=np.clip(e, lo, hi)), dict(text=[f"largest gap to the limit: {gap:.3g}"])]

    extent = (float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1]))
    base = dict(_LANDSCAPE, x=np.asarray(xs), y=np.asarray(ys), autocontour=False, contours=levels, zmin=lo, zmax=hi)
    data = [dict(base, z=None, showscale=False),
            dict(base, z=np.clip(hyv, lo, hi), xaxis="x2", yaxis="y2",
                 colorbar=dict(title=dict(text="(data units)⁻²"), thickness=12, tickformat=".3g")),
            dict(type="scatter", mode="text", x=[extent[0] + 0.05 * (extent[1] - extent[0])],
                 y=[extent[3] - 0.06 * (extent[3] - extent[2])], textposition="middle right",
                 textfont=dict(color="white", size=12), showlegend=False, hoverinfo="skip")]
    layout = _layout(420, **_axes(extent, domain=(0.0, 0.44)), **_axes(extent, suffix="2", domain=(0.5, 0.94)))
    layout["yaxis2"]["title"] = dict(text="")
    layout["annotations"] = [_panel_title("(e_σ − d) / σ², exact"), _panel_title("σ → 0: ‖s‖² + 2 tr ∇s", "2")]
    return SliderFigure(dict(data=data, layout=layout), [Slider("sigma", "σ", sigmas)], [Part((0, 2), ("sigma",), compute)],
                        note="Proposition 1 (eq. 14): the left panel becomes the right one as σ → 0. Both share one "
                             "colour scale (values outside it are clipped).", height=420)


# -------------------------------------------------------------------------- chapter 2: Theorem 1
def theorem1_figure(pot, starts, sigmas=(0.6, 0.45, 0.33, 0.25, 0.18, 0.12, 0.08), *, m: int = 4,
                    extent=(-2.0, 1.5, -1.3, 1.0), grid: int = 41, every: int = 4, **purifier) -> SliderFigure:
    """Theorem 1's recovery picture, slider σ: exact ``e_σ`` with antithetic runs, ``ê_σ`` with plain draws.

    Left: the exact ERE (closed form, :func:`~pursamere.book.theorem1.ere_exact_piecewise`), its exact minimiser
    ``x̂_σ`` and Algorithm 1 with ``m`` antithetic draws (:func:`~pursamere.book.theorem1.theorem1_purifier_paths`).
    Right: the fixed-draw ``ê_σ`` with ``m`` plain draws and Algorithm 1 on it. Keywords in
    ``purifier`` go to :func:`~pursamere.book.theorem1.theorem1_purifier_paths`.
    """
    xs = np.linspace(extent[0], extent[1], grid)
    ys = np.linspace(extent[2], extent[3], grid)
    gx, gy = np.meshgrid(xs, ys)
    x_star = pot.x_star.numpy()
    delta = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1) - x_star, dtype=torch.float64)
    starts = np.asarray(starts, float)

    def compute(sigma):
        exact = theorem1.ere_exact_piecewise(pot, delta, sigma).numpy().reshape(gx.shape)
        d_hat = theorem1.ere_minimiser_exact(pot, sigma)  # x̂_σ − x*, exact to float64 even when tiny
        x_hat = x_star + d_hat.numpy()
        plain = toys.ere_grid(pot, xs, ys, sigma, m, antithetic=False)
        runs = {}
        for anti in (True, False):
            p = theorem1.theorem1_purifier_paths(pot, starts, sigma, m=m, antithetic=anti, **purifier)
            runs[anti] = (p, np.linalg.norm(p[-1] - x_star, axis=-1).max())
        out = [dict(z=exact), dict(z=plain)]
        for anti in (True, False):
            p, err = runs[anti]
            x, y = _lines([p[:, j] for j in range(p.shape[1])], every)
            out += [dict(x=x, y=y), dict(x=p[-1, :, 0], y=p[-1, :, 1])]
        err_hat = float(d_hat.norm())
        out += [dict(x=x_hat[:1], y=x_hat[1:]),
                dict(text=[f"‖x̂_σ − x*‖ = {err_hat:.1e}; runs end ≤ {runs[True][1]:.3f} from x*"]),
                dict(text=[f"runs end up to {runs[False][1]:.2f} from x*"])]
        return out

    tx, ty = extent[0] + 0.04 * (extent[1] - extent[0]), extent[3] - 0.07 * (extent[3] - extent[2])
    text = dict(type="scatter", mode="text", x=[tx], y=[ty], textposition="middle right",
                textfont=dict(color="white", size=11), showlegend=False, hoverinfo="skip")
    star = dict(type="scatter", mode="markers", x=[x_star[0]], y=[x_star[1]], hoverinfo="skip",
                marker=dict(symbol="star", color="cyan", size=14, line=dict(color="black", width=1)))
    data = [
        dict(_LANDSCAPE, x=xs, y=ys, z=None, showscale=False),                                  # 0 exact e_σ
        dict(_LANDSCAPE, x=xs, y=ys, z=None, showscale=False, xaxis="x2", yaxis="y2"),          # 1 plain ê_σ
        dict(type="scatter", mode="lines", name=f"Algorithm 1, {m} antithetic draws", line=dict(color="#ff7f0e", width=1.5)),
        dict(type="scatter", mode="markers", showlegend=False, marker=dict(symbol="x", size=9, color="#ff7f0e")),
        dict(type="scatter", mode="lines", name=f"Algorithm 1, {m} plain draws", line=dict(color="#d62728", width=1.5),
             xaxis="x2", yaxis="y2"),
        dict(type="scatter", mode="markers", showlegend=False, marker=dict(symbol="x", size=9, color="#d62728"),
             xaxis="x2", yaxis="y2"),
        dict(type="scatter", mode="markers", name="exact minimiser x̂_σ",
             marker=dict(symbol="circle-open", size=14, color="magenta", line=dict(width=2))),
        dict(text, xaxis="x", yaxis="y"),                                                       # 7
        dict(text, xaxis="x2", yaxis="y2"),                                                     # 8
        dict(star, name="maximiser x*"),
        dict(star, showlegend=False, xaxis="x2", yaxis="y2"),
        dict(type="scatter", mode="markers", name="starts", x=starts[:, 0], y=starts[:, 1],
             marker=dict(color="white", size=7, line=dict(color="black", width=1))),
        dict(type="scatter", mode="markers", showlegend=False, x=starts[:, 0], y=starts[:, 1], xaxis="x2", yaxis="y2",
             marker=dict(color="white", size=7, line=dict(color="black", width=1))),
    ]
    layout = _layout(440, **_axes(extent, domain=(0.0, 0.47)), **_axes(extent, suffix="2", domain=(0.53, 1.0)))
    layout["yaxis2"]["title"] = dict(text="")
    layout["annotations"] = [_panel_title("exact e_σ (Theorem 1)"), _panel_title(f"ê_σ, M = {m} plain draws", "2")]
    return SliderFigure(dict(data=data, layout=layout), [Slider("sigma", "final σ", sigmas)],
                        [Part((0, 1, 2, 3, 4, 5, 6, 7, 8), ("sigma",), compute)],
                        note="Algorithm 1 anneals from σ = 0.8 down to the final σ (SAM off, ℓ2 ball of radius 2). "
                             "Dark = low ERE.", height=440)
