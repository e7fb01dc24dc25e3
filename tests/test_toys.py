"""Fast checks of the 2-D toy experiments (pursamere.book.toys) against exact references."""
import math

import numpy as np
import pytest
import torch

from pursamere.book import theorem1
from pursamere.book import toys as T
from pursamere.method.ere import NoiseBank, ere
from pursamere.method.scores import AffineScore, GaussianMixture

F64 = torch.float64


def test_gauss_hermite_ere_matches_affine_closed_form():
    s = AffineScore([[-2.0, 0.3], [0.3, -1.0]], [0.1, -0.2])
    x = torch.tensor([[0.4, 0.5], [-1.0, 0.2]], dtype=F64)
    for sigma in (0.05, 0.3):
        got = T.ere_exact_2d(s, x, sigma, n_nodes=10)
        assert torch.allclose(got, s.ere_closed_form(x, sigma), rtol=0, atol=1e-12)


def test_prop1_remainder_is_fourth_order():
    sigmas = np.geomspace(0.01, 0.1, 6)
    rem = T.prop1_remainder(T.prop1_default_score(), [[0.2, 0.3], [0.8, 0.9]], sigmas)
    for j in range(rem.shape[1]):
        slope, _, r2 = T.fit_loglog_slope(sigmas, rem[:, j])
        assert abs(slope - 4.0) < 0.3 and r2 > 0.99


def test_prop1_detects_a_wrong_hyvarinen_term():
    # dropping the trace term leaves an O(σ²) remainder: the measurement can fail
    sc = T.prop1_default_score()
    x = torch.tensor([[0.2, 0.3]], dtype=F64)
    sigmas = np.geomspace(0.01, 0.1, 6)
    s = sc(x, 0.0)
    rem = [float(T.ere_exact_2d(sc, x, float(sg), minus_d=True)[0] - sg**2 * (s**2).sum()) for sg in sigmas]
    slope, _, _ = T.fit_loglog_slope(sigmas, rem)
    assert abs(slope - 2.0) < 0.3


def test_antithetic_bank_has_zero_mean_and_removes_affine_bias():
    bank = NoiseBank((2,), 8, seed=0, antithetic=True)
    assert bank.z.shape == (8, 2) and torch.allclose(bank.z.mean(0), torch.zeros(2, dtype=F64), atol=1e-15)
    h = [[-4.0, 0.0], [0.0, -2.0]]
    assert np.abs(theorem1.mc_offset_affine(h, 0.05, bank)).max() < 1e-14
    plain = NoiseBank((2,), 4, seed=0)
    off = theorem1.mc_offset_affine(h, 0.05, plain)
    # the offset predicted for plain draws is what ê's gradient says: ∇ê(x* + offset) = 0
    s = AffineScore(h, [0.0, 0.0])
    x = torch.tensor(off, dtype=F64).reshape(1, 2).requires_grad_(True)
    (g,) = torch.autograd.grad(ere(s, x, 0.05, plain).sum(), x)
    assert g.abs().max() < 1e-10 and np.linalg.norm(off) > 0.5
    with pytest.raises(ValueError):
        NoiseBank((2,), 3, seed=0, antithetic=True)


def test_piecewise_closed_form_matches_fine_quadrature():
    pot = theorem1.theorem1_potential()
    sigma = 0.3
    n = 1201
    t = torch.linspace(-9, 9, n, dtype=F64)
    w = torch.exp(-t**2 / 2) / math.sqrt(2 * math.pi) * (t[1] - t[0])
    z = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    ww = (w[:, None] * w[None, :]).reshape(-1)
    deltas = torch.tensor([[0.1, -0.2], [0.5, 0.3], [1.2, 1.5]], dtype=F64)
    got = theorem1.ere_exact_piecewise(pot, deltas, sigma)
    for d, g in zip(deltas, got):
        r = z + sigma * pot(pot.x_star + d + sigma * z)
        ref = ((r**2).sum(-1) * ww).sum() - (1 - sigma**2) ** 2 * 2
        assert abs(float(g - ref)) < 1e-6


def test_theorem1_errors_fall_exponentially():
    sigmas = np.geomspace(0.3, 0.12, 6)
    err = theorem1.theorem1_errors(theorem1.theorem1_potential(), sigmas)
    assert np.all(np.diff(err) < 0) and err[-1] < 1e-10
    slope, _, r2 = theorem1.fit_exponential(sigmas, err)
    assert r2 >= 0.95 and slope < 0


def test_theorem1_broken_case_is_not_exponential():
    sigmas = np.geomspace(0.2, 0.02, 5)
    err = theorem1.theorem1_errors(theorem1.theorem1_broken_potential(), sigmas)
    assert err.min() > 1e-2  # a maximiser on a kink: x̂_σ stays a few σ away
    _, _, r2 = theorem1.fit_exponential(sigmas, err)
    assert r2 < 0.95


def test_purifier_reaches_x_star_only_with_antithetic_draws():
    pot = theorem1.theorem1_potential()
    start = [[0.6, 0.0]]
    kw = dict(m=4, n_levels=3, steps_per_level=30, sigma_max=0.3)
    anti = theorem1.theorem1_purifier_errors(pot, start, [0.1], antithetic=True, **kw)
    plain = theorem1.theorem1_purifier_errors(pot, start, [0.1], antithetic=False, **kw)
    assert anti.max() < 0.02 and plain.min() > 0.3


def test_sam_beats_plain_descent_in_planted_setting():
    starts = T.square_starts((0.8, 0.3), 0.08, 8)
    cs, cp = T.planted_configs(steps=50)
    r = T.sam_vs_descent(T.planted_score(), starts, cs, cp, (0.0, 0.0), tol=0.15)
    assert r["sam_rate"] > r["plain_rate"]
    assert r["sam_end"].shape == (8, 2)


def test_planted_score_is_mixture_plus_bump():
    sc = T.planted_score()
    far = torch.tensor([[-1.0, -1.0]], dtype=F64)
    assert torch.allclose(sc(far, 0.1), sc.mixture(far, 0.1), atol=1e-12)
    at_c = sc.center.reshape(1, 2)
    assert torch.allclose(sc(at_c, 0.1), sc.mixture(at_c, 0.1))  # the bump's score vanishes at c


def test_slider_view_shapes_and_finiteness():
    v = T.slider_view(grid=21, steps=10)
    assert v.ere.shape == (21, 21) and np.isfinite(v.ere).all()
    assert v.path_plain.shape == (11, 2) and v.path_sam.shape == (11, 2)
    assert np.isfinite(v.path_plain).all() and np.isfinite(v.path_sam).all()
    assert np.allclose(v.path_sam[0], [0.85, 0.32])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    T.draw_slider_view(ax, v)
    plt.close(fig)


def test_ere_grid_orientation():
    gm = GaussianMixture([[1.0, 0.0]], [0.3])
    xs, ys = np.linspace(-1, 2, 7), np.linspace(-1, 1, 5)
    z = T.ere_grid(gm, xs, ys, 0.1, m=4)
    assert z.shape == (5, 7)
    i, j = np.unravel_index(np.argmin(z), z.shape)
    assert abs(xs[j] - 1.0) < 0.6 and abs(ys[i]) < 0.6
