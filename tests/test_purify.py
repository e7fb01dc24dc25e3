"""Algorithm 1: Adam, determinism, batch invariance, exact gradients, configs and bad inputs."""
import math

import pytest
import torch

from pursamere.method.ere import ere
from pursamere.method.geometry import lp_norm
from pursamere.method.nets import SCORE_TINY, ScoreNet
from pursamere.method.purify import InvalidInputError, Purifier, PurifyConfig, adam_step
from pursamere.method.scores import GaussianMixture

SMALL = dict(n_levels=3, steps_per_level=2, sigma_max=0.3, sigma_min=0.02)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(1)
    return ScoreNet(SCORE_TINY).eval()


def test_adam_step_matches_torch_optim_adam():
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64)
    p = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    m, v, xs = torch.zeros_like(x), torch.zeros_like(x), x.clone()
    for t in range(1, 13):
        g = torch.sin(3 * xs) + xs**2  # any smooth gradient field
        g[0, 0] = 0.0  # an exactly zero coordinate exercises the sqrt at 0
        p.grad = g.clone()
        opt.step()
        xs, m, v = adam_step(xs, g, m, v, t, 0.05, (0.8, 0.99), 1e-6)
        assert torch.allclose(xs, p.detach(), rtol=0, atol=1e-14)


def test_purifier_is_deterministic_bit_for_bit(net):
    x = torch.rand(3, 1, 8, 8)
    cfg = PurifyConfig(seed=7, **SMALL)
    a = Purifier(net, cfg)(x)
    b = Purifier(net, cfg)(x.clone())
    assert torch.equal(a, b)
    c = Purifier(net, cfg.replace(seed=8))(x)
    assert not torch.equal(a, c)


def test_batch_invariance(net):
    torch.manual_seed(3)
    batch = torch.rand(9, 1, 8, 8)
    pur = Purifier(net, PurifyConfig(**SMALL))
    alone = pur(batch[4:5])
    for perm in (torch.randperm(9), torch.arange(9)):
        inside = pur(batch[perm])
        pos = int((perm == 4).nonzero())
        assert torch.allclose(inside[pos:pos + 1], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_output_is_in_the_ball_and_box_and_trace_is_complete(net, norm):
    x = torch.rand(2, 1, 8, 8)
    eps = {"inf": 0.05, 2: 0.5, 1: 3.0}[norm]
    pur = Purifier(net, PurifyConfig(eps_pur=eps, norm=norm, **SMALL))
    y, tr = pur.run(x, trace=True, keep_path=True)
    assert float(lp_norm(y - x, norm).max()) <= eps * (1 + 1e-5)
    assert 0 <= float(y.min()) and float(y.max()) <= 1
    k = pur.config.steps
    assert tr.sigma.shape == (k,) and tr.lr.shape == (k,) and tr.ere.shape == (k, 2) and tr.distance.shape == (k, 2)
    assert tr.path.shape == (k + 1, 2, 1, 8, 8) and torch.equal(tr.path[-1], y)
    assert float(tr.sigma[0]) == pytest.approx(0.3) and float(tr.sigma[-1]) == pytest.approx(0.02)
    assert float(tr.lr[0]) == pytest.approx(pur.config.lr_max) and float(tr.lr[-1]) == pytest.approx(pur.config.lr_min)
    assert bool((tr.sigma[1:] <= tr.sigma[:-1]).all()) and bool((tr.lr[1:] <= tr.lr[:-1]).all())


def test_plain_descent_lowers_ere_on_an_exact_score():
    gm = GaussianMixture([[0.0, 0.0], [3.0, 0.0]], [0.4, 0.4])
    x = torch.tensor([[0.9, 0.5], [2.2, -0.6]], dtype=torch.float64)
    cfg = PurifyConfig(eps_pur=2.0, rho=0.0, box=None, sigma_max=0.3, sigma_min=0.3, n_levels=1,
                       steps_per_level=60, lr_max=0.05, lr_min=0.01, m=64)
    pur = Purifier(gm, cfg)
    y = pur(x)
    bank = pur.noise((2,))
    assert bool((ere(gm, y, 0.3, bank) < ere(gm, x, 0.3, bank)).all())
    # and it moved toward the nearest mode
    assert float((y - torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)).norm(dim=1).max()) < 0.35


def test_sam_is_used_when_rho_positive_and_off_when_zero(net):
    x = torch.rand(2, 1, 8, 8)
    base = PurifyConfig(**SMALL)
    assert base.rho == pytest.approx(base.eps_pur / 2)
    assert Purifier(net, base).score_evaluations == 2 * Purifier(net, base.replace(rho=0.0)).score_evaluations
    assert not torch.equal(Purifier(net, base)(x), Purifier(net, base.replace(rho=0.0))(x))
    # replace() changes exactly what it is given: ρ is NOT re-tied to a new ε_pur; paper_sam() ties it
    assert base.replace(eps_pur=0.1).rho == pytest.approx(base.rho) and base.replace(eps_pur=0.1).eps_pur == 0.1
    assert base.replace(eps_pur=0.1).paper_sam().rho == pytest.approx(0.05)
    assert base.replace(eps_pur=0.1).paper_sam().sam_norm == base.norm and not base.sam_off().sam
    with pytest.raises(ValueError, match="no field"):
        base.replace(eps=0.1)


def test_exact_gradient_same_with_and_without_checkpointing(net):
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.8 + 0.1
    dnet = ScoreNet(SCORE_TINY).double().eval()
    dnet.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    pur = Purifier(dnet, PurifyConfig(**SMALL))
    u = torch.randn_like(x)
    grads = []
    for ck in (True, False):
        xr = x.clone().requires_grad_(True)
        y = pur.unrolled(xr, checkpoint=ck)
        assert torch.allclose(y, pur(x), atol=1e-12)
        (g,) = torch.autograd.grad((y * u).sum(), xr)
        grads.append(g)
    assert torch.allclose(grads[0], grads[1], atol=1e-12, rtol=1e-9)
    assert float(grads[0].abs().sum()) > 0


BAD_CONFIGS = [
    (dict(eps_pur=0.0), "eps_pur"), (dict(eps_pur=math.nan), "eps_pur"), (dict(rho=-1.0), "rho"),
    (dict(norm="l3"), "unknown norm"), (dict(m=0), "m must"), (dict(steps_per_level=0), "steps_per_level"),
    (dict(sigma_min=1.0, sigma_max=0.5), "sigma_min"), (dict(lr_min=0.1, lr_max=0.01), "lr_min"),
    (dict(betas=(0.9, 1.0)), "betas"), (dict(box=(1.0, 0.0)), "box"), (dict(m=2.5), "m must"),
]


@pytest.mark.parametrize("kwargs,msg", BAD_CONFIGS)
def test_bad_configs_raise_clear_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        PurifyConfig(**kwargs)


BAD_INPUTS = [
    (lambda: torch.full((1, 1, 8, 8), float("nan")), "NaN"),
    (lambda: torch.full((1, 1, 8, 8), float("inf")), "NaN or infinite"),
    (lambda: torch.rand(8), "rank"),
    (lambda: torch.rand(8, 8), "score net expects"),
    (lambda: torch.rand(0, 1, 8, 8), "empty"),
    (lambda: torch.rand(1, 1, 8, 8) + 1.0, "outside the box"),
    (lambda: -torch.rand(1, 1, 8, 8) - 0.1, "outside the box"),
    (lambda: torch.ones(1, 1, 8, 8, dtype=torch.int64), "floating"),
    (lambda: torch.rand(1, 1, 7, 7), "score net expects"),
    (lambda: [[0.5]], "torch.Tensor"),
]


@pytest.mark.parametrize("make,msg", BAD_INPUTS)
def test_bad_inputs_raise_and_never_clamp(net, make, msg):
    pur = Purifier(net, PurifyConfig(**SMALL))
    with pytest.raises(InvalidInputError, match=msg):
        pur(make())


def test_antithetic_draws_remove_the_fixed_noise_bias():
    # One Gaussian N(0, s²I): with i.i.d. fixed draws the minimiser of ê_σ is shifted by z̄ s²/σ;
    # ± pairs average to zero, so the purifier lands on the mode.
    gm = GaussianMixture([[0.0, 0.0]], [0.3])
    x = torch.tensor([[0.4, -0.3]], dtype=torch.float64)
    base = dict(eps_pur=5.0, rho=0.0, box=None, m=4, sigma_max=0.3, sigma_min=0.02, n_levels=6,
                steps_per_level=40, lr_max=0.05, lr_min=0.002, seed=3)
    iid = Purifier(gm, PurifyConfig(**base))(x).norm()
    anti = Purifier(gm, PurifyConfig(antithetic=True, **base))(x).norm()
    assert float(anti) < 0.01
    assert float(iid) > 5 * float(anti)
    with pytest.raises(ValueError, match="even m"):
        PurifyConfig(antithetic=True, m=3)


def test_purifier_runs_under_no_grad(net):
    x = torch.rand(2, 1, 8, 8)
    pur = Purifier(net, PurifyConfig(**SMALL))
    with torch.no_grad():
        y = pur(x)
    assert torch.equal(y, pur(x))


def test_partial_unrolling_interpolates_bpda_and_the_exact_gradient(net):
    """k = 0 is BPDA (the identity Jacobian); k = K is the exact gradient; the value never changes."""
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.8 + 0.1
    dnet = ScoreNet(SCORE_TINY).double().eval()
    dnet.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    pur = Purifier(dnet, PurifyConfig(**SMALL))
    k_all = pur.config.steps
    u = torch.randn_like(x)

    def grad(**kw):
        xr = x.clone().requires_grad_(True)
        y = pur.unrolled(xr, **kw)
        # the forward value is Algorithm 1's output (bit for bit when checkpointed; the double-backward
        # graph of checkpoint=False may reassociate sums)
        if kw.get("checkpoint", True):
            assert torch.equal(y.detach(), pur(x))
        assert torch.allclose(y.detach(), pur(x), atol=1e-12)
        return torch.autograd.grad((y * u).sum(), xr)[0]

    exact = grad(checkpoint=False)
    assert torch.equal(grad(last=0), u)  # BPDA: the upstream gradient passes unchanged
    assert torch.allclose(grad(last=k_all), exact, atol=1e-12, rtol=1e-10)
    assert torch.allclose(grad(last=k_all, checkpoint=False), exact, atol=1e-12, rtol=1e-10)
    mid = grad(last=2)
    assert not torch.allclose(mid, u) and not torch.allclose(mid, exact)
    for bad in (-1, k_all + 1, 1.5, True):
        with pytest.raises(ValueError, match="last must be"):
            pur.unrolled(x, last=bad)


def test_rho_tied_to_sigma(net):
    cfg = PurifyConfig(rho_sigma=0.5, **SMALL)
    assert cfg.rho == 0.0 and cfg.sam
    pur = Purifier(net, cfg)
    assert pur.rhos == pytest.approx([0.5 * s for s in pur.sigmas]) and pur.score_evaluations == cfg.steps * cfg.m * 2
    x = torch.rand(2, 1, 8, 8)
    assert not torch.equal(pur(x), Purifier(net, PurifyConfig(rho=0.0, **SMALL))(x))  # SAM does something
    # a fixed ρ equal to the σ-tied one at every step gives the same result
    one = dict(SMALL, n_levels=1, sigma_min=0.2, sigma_max=0.2)
    assert torch.equal(Purifier(net, PurifyConfig(rho_sigma=0.5, **one))(x), Purifier(net, PurifyConfig(rho=0.1, **one))(x))
    # replace() switches between the two forms only when told both fields; a half-said switch is an error
    assert cfg.replace(rho=0.05, rho_sigma=None).rho_sigma is None and cfg.replace(rho=0.05, rho_sigma=None).rho == 0.05
    assert PurifyConfig(**SMALL).replace(rho=0.0, rho_sigma=1.0).rho == 0.0
    with pytest.raises(ValueError, match="not both"):
        cfg.replace(rho=0.05)  # the σ-tie is still there: say rho_sigma=None
    with pytest.raises(ValueError, match="not both"):
        PurifyConfig(**SMALL).replace(rho_sigma=1.0)  # ρ = ε_pur/2 is still there: say rho=0.0
    assert not PurifyConfig(rho=0.0, **SMALL).sam
    assert not cfg.sam_off().sam and cfg.sam_off().rho_sigma is None  # SAM off removes the σ-tie too
    back = cfg.replace(rho_sigma=None, rho=None)  # the default ρ = ε_pur/2 again
    assert back.rho == pytest.approx(back.eps_pur / 2) and back.rho_sigma is None
    assert cfg.paper_sam().rho == pytest.approx(cfg.eps_pur / 2) and cfg.paper_sam().rho_sigma is None
    with pytest.raises(ValueError, match="not both"):
        PurifyConfig(rho=0.1, rho_sigma=0.5, **SMALL)
    with pytest.raises(ValueError, match="rho_sigma must be"):
        PurifyConfig(rho_sigma=-1.0, **SMALL)
