"""The book's precomputed slider figures (pursamere.book.sliders) and its offline Sphinx extension."""
import json
import re

import numpy as np
import pytest

import pursamere as ps
from pursamere.book import offline, sliders as S, theorem1, toys
from pursamere.book.slider_figure import _encode


def _spec(fig):
    html = fig.html()
    data = re.search(r'<script type="application/json" class="ps-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(data.replace("<\\/", "</"))


def _frame(spec, part, key):
    return [{k: S.decode(v) if isinstance(v, dict) and "q" in v else v for k, v in props.items()}
            for props in spec["parts"][part]["frames"][key]]


def _quantum(a):
    return (np.nanmax(a) - np.nanmin(a)) / 65534 + 1e-15


def test_encoding_round_trip_keeps_nan_and_shape():
    a = np.array([[0.0, 1.5, np.nan], [-2.0, 3.25, 1e-3]])
    enc = _encode(a)
    back = S.decode(enc)
    assert back.shape == a.shape and np.isnan(back[0, 2])
    ok = ~np.isnan(a)
    assert np.abs(back[ok] - a[ok]).max() <= _quantum(a[ok]) / 2 + 1e-12
    assert S.decode(_encode(np.full(4, 2.5))).tolist() == [2.5] * 4  # a constant array
    assert _encode("text") == "text" and _encode([1, 2]) == [1, 2]


def test_landscape_frames_are_ere_grid(one_thread):
    """The book's frames are the package function's output (to 16-bit precision), per slider value."""
    mix = ps.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.6, 0.3], [0.6, 0.4])
    xs, ys = np.linspace(-2, 2, 7), np.linspace(-1, 1.5, 5)
    fig = S.landscape_figure(mix, xs, ys, sigmas=(0.5, 0.1), ms=(2, 8), marks=mix.means)
    spec = _spec(fig)
    assert fig.n_views == 4 and [s["text"] for s in spec["sliders"]] == [["0.5", "0.1"], ["2", "8"]]
    for i, sigma in enumerate((0.5, 0.1)):
        for j, m in enumerate((2, 8)):
            z = _frame(spec, 0, f"{i},{j}")[0]["z"]
            ref = toys.ere_grid(mix, xs, ys, sigma, m)
            assert z.shape == (5, 7) and np.abs(z - ref).max() <= _quantum(ref)
    assert not np.allclose(_frame(spec, 0, "0,0")[0]["z"], _frame(spec, 0, "1,0")[0]["z"])


def test_sam_frames_equal_direct_runs_and_respect_the_ball(one_thread):
    """Every frame of chapter 3's figure is toys.slider_view at that setting (paths reused only where
    the ball never binds); ρ = 0 is plain descent; the paths stay in their ball."""
    sig, rhos, eps = (0.06, 0.12), (0.0, 0.3), (0.05, 2.0)
    kw = dict(grid=9, steps=12, every=1)
    spec = _spec(S.sam_figure(sig, rhos, eps, **kw))
    start = np.array([0.85, 0.32])
    names = [p["depends"] for p in spec["parts"]]
    assert names == [["sigma"], ["eps_pur"], ["sigma", "eps_pur"], ["sigma", "rho", "eps_pur"]]
    for i, s in enumerate(sig):
        for k, e in enumerate(eps):
            plain = _frame(spec, 2, f"{i},{k}")[0]
            direct = toys.slider_view(sigma=s, eps_pur=e, grid=9, steps=12, parts=("plain",)).path_plain
            assert np.abs(plain["x"] - direct[:, 0]).max() <= _quantum(direct[:, 0])
            for j, r in enumerate(rhos):
                sam = _frame(spec, 3, f"{i},{j},{k}")[0]
                direct = toys.slider_view(sigma=s, rho=r, eps_pur=e, grid=9, steps=12, parts=("sam",)).path_sam
                assert np.abs(sam["x"] - direct[:, 0]).max() <= _quantum(direct[:, 0])
                assert np.abs(sam["y"] - direct[:, 1]).max() <= _quantum(direct[:, 1])
                dist = np.hypot(sam["x"] - start[0], sam["y"] - start[1])
                assert dist.max() <= e + 1e-4
                if r == 0.0:  # SAM off is plain descent
                    assert np.allclose(sam["x"], plain["x"], atol=2 * _quantum(plain["x"]))
    # the small ball binds somewhere (so both branches of the reuse were exercised)
    assert any(np.hypot(_frame(spec, 3, f"{i},1,0")[0]["x"][-1] - start[0],
                        _frame(spec, 3, f"{i},1,0")[0]["y"][-1] - start[1]) > 0.04 for i in range(2))


def test_theorem1_and_prop1_figures(one_thread):
    pot = theorem1.theorem1_potential()
    spec = _spec(S.theorem1_figure(pot, [[0.8, 0.3], [-0.2, -0.6]], sigmas=(0.3, 0.15), grid=9,
                                   steps_per_level=10, n_levels=3))
    small = _frame(spec, 0, "1")
    err = float(re.search(r"= ([0-9.e+-]+);", small[7]["text"][0]).group(1))
    assert err == pytest.approx(float(theorem1.ere_minimiser_exact(pot, 0.15).norm()), rel=0.05)
    assert err < 1e-5  # the exact minimiser of e_σ sits (all but) on x*
    spec = _spec(S.prop1_figure(toys.prop1_default_score(), np.linspace(-1, 1, 7), np.linspace(-1, 1, 7),
                                sigmas=(0.3, 0.1)))
    gaps = [float(_frame(spec, 0, k)[1]["text"][0].split(": ")[1]) for k in ("0", "1")]
    assert gaps[1] < gaps[0] / 4  # (e_σ − d)/σ² approaches the Hyvärinen term as σ falls


def test_html_is_self_contained_and_deterministic(one_thread):
    mix = ps.GaussianMixture([[0.0, 0.0]], [0.5])
    make = lambda: S.landscape_figure(mix, np.linspace(-1, 1, 5), np.linspace(-1, 1, 5), (0.5, 0.2), (2, 4))  # noqa: E731
    a, b = make(), make()
    html = a.html()
    assert html == b.html() and repr(a) == repr(b) == "<SliderFigure: σ (2) × M draws (2) = 4 views>"
    assert not re.search(r"https?://", html)  # loads nothing; plotly.js comes from the page
    assert html.count('type="range"') == 2 and "data-pursamere-slider" in html
    assert "</script>" not in html.split('class="ps-data">')[1].split("</script>")[0]


def test_bad_figure_specs_are_refused():
    fig = dict(data=[dict(type="scatter")], layout={})
    one = S.Slider("a", "a", (1, 2))
    with pytest.raises(ValueError, match="at least 2 values"):
        S.Slider("a", "a", (1,))
    with pytest.raises(ValueError, match="unknown sliders"):
        S.SliderFigure(fig, [one], [S.Part((0,), ("b",), lambda b: [{}])])
    with pytest.raises(ValueError, match="returned 2 dicts"):
        S.SliderFigure(fig, [one], [S.Part((0,), ("a",), lambda a: [{}, {}])])
    with pytest.raises(ValueError, match="the figure has 1"):
        S.SliderFigure(fig, [one], [S.Part((3,), ("a",), lambda a: [{}])])
    with pytest.raises(ValueError, match="unknown parts"):
        toys.slider_view(parts=("landscape",))


def test_offline_extension_recognises_other_hosts():
    for url in ("https://cdn.jsdelivr.net/x.js", "http://a/b.css", "//fonts.googleapis.com/css"):
        assert offline.is_external(url)
    for url in ("_static/mathjax/tex-chtml.js", "../_static/plotly.min.js", "file:///tmp/x.js", "", None):
        assert not offline.is_external(url)
    assert offline.plotly_js().stat().st_size > 1_000_000
