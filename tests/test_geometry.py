"""Projections onto ℓp-ball ∩ box and SAM steps, checked against brute force (hypothesis)."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pursamere.method.geometry import canonical_norm, lp_norm, project, sam_step

NORMS = ["inf", 2, 1]
coords = st.floats(-0.5, 1.5, allow_nan=False, width=64)
unit = st.floats(0.0, 1.0, allow_nan=False, width=64)


def _brute_force(v, c, eps, p, n=401):
    g = np.linspace(0, 1, n)
    pts = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    diff = pts - c
    norm = {"inf": np.abs(diff).max(1), 2: np.sqrt((diff**2).sum(1)), 1: np.abs(diff).sum(1)}[p]
    feas = pts[norm <= eps + 1e-12]
    return np.sqrt(((feas - v) ** 2).sum(1)).min()


@settings(max_examples=60, deadline=None)
@given(st.lists(coords, min_size=2, max_size=2), st.lists(unit, min_size=2, max_size=2),
       st.floats(0.02, 0.8), st.sampled_from(NORMS))
def test_projection_is_feasible_idempotent_and_nearest(v, c, eps, p):
    v_t = torch.tensor([v], dtype=torch.float64)
    c_t = torch.tensor([c], dtype=torch.float64)
    y = project(v_t, c_t, eps, p)
    assert float(lp_norm(y - c_t, p)) <= eps + 1e-9
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.allclose(project(y, c_t, eps, p), y, atol=1e-9)
    # no grid point of the feasible set is closer to v (grid spacing 1/400 bounds the slack)
    d_proj = float((y - v_t).norm())
    assert d_proj <= _brute_force(np.array(v), np.array(c), eps, p) + 1e-9


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([2, 1]), st.floats(0.05, 3.0))
def test_projection_high_dim_satisfies_kkt_against_random_feasible_points(seed, p, eps):
    # variational inequality of a Euclidean projection: <v - y, w - y> <= 0 for every feasible w
    gen = torch.Generator().manual_seed(seed)
    c = torch.rand(3, 20, generator=gen, dtype=torch.float64)
    v = c + 0.8 * torch.randn(3, 20, generator=gen, dtype=torch.float64)
    y = project(v, c, eps, p)
    ws = torch.stack([project(c + 0.5 * torch.randn(3, 20, generator=gen, dtype=torch.float64), c, eps, p) for _ in range(64)])
    assert float(((v - y) * (ws - y)).sum(-1).max()) <= 1e-8


def test_projection_is_batched_per_item_and_differentiable():
    c = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    v = (c + 0.3 * torch.randn_like(c)).requires_grad_(True)
    for p in NORMS:
        y = project(v, c, 0.5, p)
        each = torch.cat([project(v[i:i + 1], c[i:i + 1], 0.5, p) for i in range(4)])
        assert torch.allclose(y, each, atol=1e-12)
        u = torch.randn_like(c)
        (g,) = torch.autograd.grad((y * u).sum(), v)
        h = 1e-6
        with torch.no_grad():
            fd = ((project(v + h * u, c, 0.5, p) - project(v - h * u, c, 0.5, p)) * u).sum() / (2 * h)
        assert float((g * u).sum()) == pytest.approx(float(fd), rel=1e-4, abs=1e-6)


def test_projection_without_box_is_a_plain_ball():
    c = torch.zeros(1, 2, dtype=torch.float64)
    v = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert torch.allclose(project(v, c, 1.0, 2, box=None), torch.tensor([[0.6, 0.8]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(project(v, c, 1.0, "inf", box=None), torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(project(v, c, 1.0, 1, box=None), torch.tensor([[0.0, 1.0]], dtype=torch.float64), atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(NORMS), st.floats(0.01, 2.0))
def test_sam_step_has_norm_rho_and_maximises_the_linearisation(seed, q, rho):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    d = sam_step(g, rho, q)
    assert torch.allclose(lp_norm(d, q), torch.full((3,), rho, dtype=torch.float64), rtol=1e-12)
    dual = {"inf": 1, 2: 2, 1: "inf"}[canonical_norm(q)]
    assert torch.allclose((g * d).sum(1), rho * lp_norm(g, dual), rtol=1e-12)  # <g, δ*> = ρ‖g‖_{q*}
    rand = torch.randn(200, 3, 5, generator=gen, dtype=torch.float64)
    rand = rand * (rho / lp_norm(rand.view(600, 5), q).view(200, 3, 1))
    assert float(((rand * g).sum(-1) - (g * d).sum(1)).max()) <= 1e-12


def test_sam_step_edge_cases_and_bad_norms():
    assert torch.equal(sam_step(torch.zeros(2, 3), 0.5, 2), torch.zeros(2, 3))
    assert torch.equal(sam_step(torch.ones(2, 3), 0.0, "inf"), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown norm"):
        sam_step(torch.ones(1, 2), 0.1, 3)
    with pytest.raises(ValueError, match="rho"):
        sam_step(torch.ones(1, 2), -0.1, 2)
    with pytest.raises(ValueError, match="radius"):
        project(torch.zeros(1, 2), torch.zeros(1, 2), 0.0, 2)
    for name, want in itertools.product(["inf", "linf", float("inf")], ["inf"]):
        assert canonical_norm(name) == want


def test_l1_outside_an_linf_ball_is_the_l1_distance_to_its_nearest_point():
    """l1_outside_linf_ball: the ℓ1 distance from the clean image to the ℓ∞ ball around the attacked one, per item,
    against the ball's nearest point (the projection, which for ℓ∞ is nearest in ℓ1 too) and a random search of
    the ball; zero when the perturbation lies inside the ball."""
    from pursamere.method.geometry import l1_outside_linf_ball

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, 4, generator=g, dtype=torch.float64)
    adv = (x + 0.3 * torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)).clamp(0, 1)
    r = 0.1
    got = l1_outside_linf_ball(adv - x, r)
    nearest = project(x, adv, r, "inf")
    assert torch.allclose(got, lp_norm(x - nearest, 1))
    for _ in range(200):  # no point of the ball is nearer
        other = project(adv + r * (2 * torch.rand(adv.shape, generator=g, dtype=torch.float64) - 1), adv, r, "inf")
        assert bool((lp_norm(x - other, 1) >= got - 1e-12).all())
    assert torch.equal(l1_outside_linf_ball(0.5 * r * torch.sign(adv - x), r), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="radius"):
        l1_outside_linf_ball(adv - x, -1.0)
