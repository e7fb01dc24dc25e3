"""Baselines: ADP and DiffPure-style purifiers against exact scores, closed forms and autograd."""
import math

import pytest
import torch

from pursamere.method.baselines import ADP, ADPConfig, DiffPure, DiffPureConfig, vp_equivalent_sigma
from pursamere.method.nets import SCORE_TINY, ScoreNet
from pursamere.method.purify import InvalidInputError
from pursamere.method.scores import AffineScore, GaussianMixture

TOY_ADP = dict(box=None, sigma_noise=0.3)
TOY_DP = dict(box=None, sigma_star=0.5, sigma_min=0.01, n_levels=40)


def mixture():
    return GaussianMixture([[2.0, 0.0], [-2.0, 0.5]], [0.3, 0.5], [0.6, 0.4])


def toy_points(n=6, seed=1):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def both(fixed, score=None, adp=(), dp=(), **kw):
    """(ADP, DiffPure) on a 2-D toy score (the mixture by default) with the given noise mode."""
    score = score or mixture()
    return (ADP(score, ADPConfig(fixed_noise=fixed, **{**TOY_ADP, **dict(adp), **kw})),
            DiffPure(score, DiffPureConfig(fixed_noise=fixed, **{**TOY_DP, **dict(dp), **kw})))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return ScoreNet(SCORE_TINY).eval()


# ---------------------------------------------------------------------------- σ* for DiffPure
def test_vp_equivalent_sigma_matches_integrated_vp_schedule():
    t = torch.linspace(0, 0.1, 100001, dtype=torch.float64)
    integral = torch.trapezoid(0.1 + (20.0 - 0.1) * t, t)  # ∫₀^t* β, numerically
    abar = torch.exp(-integral)
    sigma_m11 = torch.sqrt((1 - abar) / abar)  # VE level of the rescaled VP state on [−1, 1]
    assert vp_equivalent_sigma() == pytest.approx(float(sigma_m11) / 2, rel=1e-8)
    assert vp_equivalent_sigma() == pytest.approx(0.17009, abs=1e-5)
    assert DiffPureConfig().sigma_star == vp_equivalent_sigma()
    assert vp_equivalent_sigma(t_star=0.2) > vp_equivalent_sigma()  # more diffusion, more noise


def test_vp_rescaling_is_a_ve_diffusion_in_unit_box():
    # VP state of an image y = 2x − 1 ∈ [−1, 1], mapped back to [0, 1] and rescaled, is x + σ* n
    x, n = torch.rand(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    abar = math.exp(-(0.1 * 0.1 + 0.5 * 19.9 * 0.01))
    y_t = math.sqrt(abar) * (2 * x - 1) + math.sqrt(1 - abar) * n
    back = (y_t / math.sqrt(abar) + 1) / 2
    torch.testing.assert_close(back, x + vp_equivalent_sigma() * n)


# ---------------------------------------------------------------------------- randomness API
@pytest.mark.parametrize("which", [0, 1], ids=["adp", "diffpure"])
def test_fixed_noise_is_deterministic_and_batch_invariant(which):
    pur = both(True)[which]
    x = toy_points(8)
    a, b = pur(x), pur(x)
    assert torch.equal(a, b)
    assert torch.equal(a, both(True)[which](x))  # a fresh instance: same function
    torch.testing.assert_close(pur(x[3:4]), a[3:4], rtol=0, atol=1e-12)  # alone vs in a batch
    torch.testing.assert_close(pur(x.flip(0)), a.flip(0), rtol=0, atol=1e-12)
    assert not torch.equal(a, both(True, seed=1)[which](x))  # the seed matters


@pytest.mark.parametrize("which", [0, 1], ids=["adp", "diffpure"])
def test_fixed_noise_batch_invariant_on_images(which, tiny_net):
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cls, cfg = [(ADP, ADPConfig(fixed_noise=True, steps=3)),
                (DiffPure, DiffPureConfig(fixed_noise=True, n_levels=5))][which]
    pur = cls(tiny_net, cfg)
    out = pur(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, pur(x))
    torch.testing.assert_close(pur(x[1:2]), out[1:2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", [0, 1], ids=["adp", "diffpure"])
def test_stochastic_mode_fresh_noise_but_reproducible_sequence(which):
    x = toy_points(4)
    pur = both(False)[which]
    first, second = pur(x), pur(x)
    assert not torch.allclose(first, second)  # fresh noise each call
    again = both(False)[which]  # same seed → same sequence
    assert torch.equal(again(x), first) and torch.equal(again(x), second)
    pur.reset()
    assert torch.equal(pur(x), first)
    pur.reset()
    assert torch.equal(pur.unrolled(x), first)  # unrolled shares the stream


# ---------------------------------------------------------------------------- DiffPure vs exact scores
def test_diffpure_samples_a_gaussian_with_the_right_mean_and_std():
    mu, s = torch.tensor([0.5, -0.3], dtype=torch.float64), 0.3
    g = GaussianMixture([mu.tolist()], [s])
    x = mu + s * torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cfg = DiffPureConfig(box=None, sigma_star=0.6, sigma_min=0.01, n_levels=100, seed=4)
    out = DiffPure(g, cfg)(x)
    # reverse SDE: x_{σ_L} ~ N(μ, s² + σ_L²); Tweedie shrinks it to std s² / sqrt(s² + σ_L²)
    std = s**2 / math.sqrt(s**2 + 0.01**2)
    assert (out.mean(0) - mu).abs().max() < 4 * std / math.sqrt(2000)
    torch.testing.assert_close(out.std(0), torch.full((2,), std, dtype=torch.float64), rtol=0.06, atol=0)


def test_diffpure_from_a_fixed_point_matches_the_gaussian_posterior():
    # the exact reverse SDE from x_{σ*} = x + σ* n samples the posterior p(x₀ | x_{σ*}); for
    # N(μ, s²) that is N(μ + k (x_{σ*} − μ), k σ*²), k = s²/(s² + σ*²). Averaged over
    # x_{σ*} ~ N(x, σ*²): mean μ + k (x − μ), variance k² σ*² + k σ*²
    mu, s, sig = torch.tensor([2.0, 0.0], dtype=torch.float64), 0.3, 0.5
    k = s**2 / (s**2 + sig**2)
    x = torch.tensor([[1.6, 0.3]], dtype=torch.float64).expand(2000, 2).contiguous()
    out = DiffPure(GaussianMixture([mu.tolist()], [s]), DiffPureConfig(box=None, sigma_star=sig, n_levels=100, seed=5))(x)
    assert (out.mean(0) - (mu + k * (x[0] - mu))).abs().max() < 0.02
    var_pred = k**2 * sig**2 + k * sig**2  # Var E[x₀ | x_σ] + E Var[x₀ | x_σ]
    torch.testing.assert_close(out.var(0), torch.full((2,), var_pred, dtype=torch.float64), rtol=0.1, atol=0)


def test_diffpure_near_a_mode_of_a_mixture_stays_with_that_mode():
    mu, s, sig = torch.tensor([2.0, 0.0], dtype=torch.float64), 0.3, 0.4
    x = torch.tensor([[1.6, 0.3]], dtype=torch.float64).expand(2000, 2).contiguous()
    out = DiffPure(mixture(), DiffPureConfig(box=None, sigma_star=sig, n_levels=60, seed=6))(x)
    k = s**2 / (s**2 + sig**2)  # the other mode is far: the answer of the lone component
    assert (out.mean(0) - (mu + k * (x[0] - mu))).abs().max() < 0.03
    assert (out.mean(0) - mu).norm() < 0.5 * (x[0] - mu).norm()  # pulled toward the mode
    assert (out[:, 0] > 0).float().mean() > 0.99  # and rarely, if ever, to the other one


def test_noise_amplitudes_with_a_zero_score():
    # s ≡ 0: DiffPure adds σ* n₀ and Σ_i sqrt(σ_i² − σ_{i+1}²) n_i, total variance 2σ*² − σ_L²;
    # ADP adds σ_n n and then stops at once (g = 0 → α = α_min)
    zero = lambda x, sigma: torch.zeros_like(x)  # noqa: E731
    x = torch.zeros(4000, 2, dtype=torch.float64)
    dp = DiffPure(zero, DiffPureConfig(box=None, sigma_star=0.5, sigma_min=0.01, n_levels=30, seed=9))(x)
    torch.testing.assert_close(dp.var(0), torch.full((2,), 2 * 0.25 - 1e-4, dtype=torch.float64), rtol=0.06, atol=0)
    adp = ADP(zero, ADPConfig(box=None, sigma_noise=0.25, seed=9))(x)
    torch.testing.assert_close(adp.var(0), torch.full((2,), 0.0625, dtype=torch.float64), rtol=0.06, atol=0)


# ---------------------------------------------------------------------------- ADP vs closed forms
def test_adp_step_size_matches_hand_computation_on_affine_score():
    h = torch.tensor([[-1.0, 0.3], [0.3, -4.0]], dtype=torch.float64)
    score = AffineScore(h, [0.2, -0.1])
    cfg = ADPConfig(box=None, sigma_noise=0.0, steps=1, lam=0.5, fixed_noise=True)
    x = torch.tensor([[1.0, 0.5], [-0.7, 0.9], [0.25, -0.05]], dtype=torch.float64)
    g = (x - score.x_star) @ h.T
    alpha = (-0.5 * (g * g).sum(1) / ((g @ h.T) * g).sum(1)).clamp(1e-5, 0.1)  # λ × exact line search
    adp = ADP(score, cfg)
    got_alpha, _ = adp.step_size(x)
    torch.testing.assert_close(got_alpha, alpha, rtol=1e-7, atol=0)
    assert bool((alpha > 1e-3).all())
    torch.testing.assert_close(adp(x), x + alpha[:, None] * g, rtol=1e-12, atol=1e-12)
    # gentle curvature: the secant step is huge and is clamped to α_max
    flat = AffineScore(-0.01 * torch.eye(2, dtype=torch.float64), [0.0, 0.0])
    a_flat, _ = ADP(flat, cfg).step_size(x)
    torch.testing.assert_close(a_flat, torch.full((3,), 0.1, dtype=torch.float64))
    # positive curvature (a minimum of the density): α → α_min < threshold, the image stops
    up = AffineScore(torch.eye(2, dtype=torch.float64), [0.0, 0.0])
    assert torch.equal(ADP(up, cfg)(x), x)


def test_adp_isotropic_gaussian_contracts_by_one_minus_lambda_per_step():
    # s = −(x − μ)/v: α = λ v exactly, so each step maps x − μ to (1 − λ)(x − μ)
    v, mu = 0.5, torch.tensor([0.3, -0.2], dtype=torch.float64)
    score = AffineScore(-torch.eye(2, dtype=torch.float64) / v, mu)
    x = toy_points(5)
    out = ADP(score, ADPConfig(box=None, sigma_noise=0.0, steps=10, fixed_noise=True))(x)
    torch.testing.assert_close(out - mu, (1 - 0.05) ** 10 * (x - mu), rtol=1e-9, atol=1e-12)


def test_adp_moves_noisy_points_toward_the_mode_and_stops_per_image():
    g = GaussianMixture([[0.0, 0.0]], [0.2])
    x = torch.full((500, 2), 0.4, dtype=torch.float64)
    cfg = ADPConfig(box=None, sigma_noise=0.25, steps=10, lam=0.5, seed=7)
    adp = ADP(g, cfg)
    start = ADP(g, cfg.replace(steps=0))(x)  # the same noisy starts (same seed, fresh instance)
    out = adp(x)
    assert bool((out.norm(dim=1) < start.norm(dim=1)).all())  # score ascent never moves away
    assert out.norm(dim=1).mean() < 0.5 * start.norm(dim=1).mean()
    # a per-image stop: one point where curvature is positive never moves while the other does
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], [0.3, 0.3])
    pts = torch.tensor([[0.1, 0.0], [0.8, 0.1]], dtype=torch.float64)  # in the dip between modes vs near one
    res = ADP(mix, ADPConfig(box=None, sigma_noise=0.0, steps=3, fixed_noise=True))(pts)
    assert torch.equal(res[0], pts[0]) and not torch.equal(res[1], pts[1])


def test_adp_box_clamp_on_images(tiny_net):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    out = ADP(tiny_net, ADPConfig(fixed_noise=True, steps=2, sigma_noise=0.5))(x)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


class Counting:
    def __init__(self, score):
        self.score, self.items = score, 0

    def __call__(self, x, sigma):
        self.items += x.shape[0]
        return self.score(x, sigma)


def test_score_evaluations_counts_calls():
    x = toy_points(3)
    for which in (0, 1):
        pur = both(True, score=Counting(AffineScore(-torch.eye(2, dtype=torch.float64), [0.0, 0.0])))[which]
        pur(x)
        assert pur.score.items == 3 * pur.score_evaluations
    assert both(True)[0].score_evaluations == 2 * 10 and both(True)[1].score_evaluations == 40


# ---------------------------------------------------------------------------- differentiability
@pytest.mark.parametrize("which", [0, 1], ids=["adp", "diffpure"])
def test_unrolled_equals_call_and_gradient_matches_finite_differences(which):
    pur = both(True, adp=dict(steps=4), dp=dict(n_levels=8))[which]
    x = toy_points(3, seed=11)
    out = pur.unrolled(x)
    assert torch.equal(out, pur(x))
    w = torch.randn(3, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((pur.unrolled(xg) * w).sum(), xg)
    assert grad.abs().sum() > 0
    eps = 1e-6
    for i in range(3):
        for j in range(2):
            e = torch.zeros_like(x)
            e[i, j] = eps
            fd = ((pur(x + e) - pur(x - e)) * w).sum() / (2 * eps)
            assert float(fd) == pytest.approx(float(grad[i, j]), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("which", [0, 1], ids=["adp", "diffpure"])
def test_checkpointed_gradient_equals_plain_gradient(which, tiny_net):
    net = ScoreNet(SCORE_TINY).double().eval()
    net.load_state_dict(tiny_net.state_dict())
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(13), dtype=torch.float64) * 0.8 + 0.1
    cls, cfg = [(ADP, ADPConfig(fixed_noise=True, steps=3, sigma_noise=0.05)),
                (DiffPure, DiffPureConfig(fixed_noise=True, n_levels=4))][which]
    pur = cls(net, cfg)
    grads = []
    for ckpt in (True, False):
        xg = x.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(pur.unrolled(xg, checkpoint=ckpt).pow(2).sum(), xg)
        grads.append(gr)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("cls, kw, msg", [
    (ADPConfig, dict(sigma_noise=-0.1), "sigma_noise"),
    (ADPConfig, dict(sigma_fix=0.0), "sigma_fix"),
    (ADPConfig, dict(steps=2.5), "steps"),
    (ADPConfig, dict(alpha_min=0.5), "alpha_min"),
    (ADPConfig, dict(delta=float("nan")), "delta"),
    (ADPConfig, dict(n_runs=0), "n_runs"),
    (ADPConfig, dict(fixed_noise="yes"), "fixed_noise"),
    (ADPConfig, dict(box=(1.0, 0.0)), "box"),
    (DiffPureConfig, dict(sigma_star=-1.0), "sigma_star"),
    (DiffPureConfig, dict(sigma_min=0.5, sigma_star=0.2), "sigma_min"),
    (DiffPureConfig, dict(n_levels=1), "n_levels"),
    (DiffPureConfig, dict(seed=-3), "seed"),
])
def test_bad_configs_raise_with_clear_messages(cls, kw, msg):
    with pytest.raises(ValueError, match=msg):
        cls(**kw)


def test_bad_inputs_and_arguments_raise():
    adp, dp = ADP(mixture(), ADPConfig()), DiffPure(mixture(), DiffPureConfig())
    for pur in (adp, dp):
        with pytest.raises(InvalidInputError, match="outside the box"):
            pur(torch.full((2, 2), 1.5))
        with pytest.raises(InvalidInputError, match="NaN"):
            pur(torch.tensor([[0.5, float("nan")]]))
        with pytest.raises(ValueError, match="rank"):
            pur.unrolled(torch.rand(3))
    with pytest.raises(TypeError, match="DiffPureConfig"):
        DiffPure(mixture(), ADPConfig())
    with pytest.raises(TypeError, match="callable"):
        ADP(3.0, ADPConfig())
    with pytest.raises(ValueError, match="t_star"):
        vp_equivalent_sigma(t_star=0.0)
    assert ADPConfig().replace(seed=3).seed == 3
    with pytest.raises(ValueError, match="steps"):
        ADPConfig().replace(steps=-1)
