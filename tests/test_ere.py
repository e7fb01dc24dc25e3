"""ERE identities: eq. 13/16 against DSM (eq. 6) and the closed form for an affine score."""
import math

import pytest
import torch

from pursamere.method.ere import NoiseBank, dsm_loss_per_sample, ere
from pursamere.method.nets import SCORE_TINY, ScoreNet
from pursamere.method.scores import AffineScore, GaussianMixture, sigma_ladder


def test_ere_is_twice_the_per_sample_dsm_loss():
    net = ScoreNet(SCORE_TINY).double().eval()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    bank = NoiseBank((1, 8, 8), m=1, seed=3)
    for sigma in (0.02, 0.3):
        z = bank.z.expand(5, -1, -1, -1)
        assert torch.allclose(ere(net, x, sigma, bank), 2 * dsm_loss_per_sample(net, x, sigma, z), rtol=1e-12)


def test_ere_averages_draws_and_uses_one_batched_call():
    calls = []

    class Counting(AffineScore):
        def __call__(self, x, sigma=0.0):
            calls.append(x.shape[0])
            return super().__call__(x, sigma)

    s = Counting([[-1.0, 0.2], [0.2, -2.0]], [0.1, 0.4])
    bank = NoiseBank((2,), m=7, seed=1)
    x = torch.randn(3, 2, dtype=torch.float64)
    e = ere(s, x, 0.5, bank)
    assert calls == [21]  # M × B items in ONE call
    by_hand = torch.stack([((z + 0.5 * s(x + 0.5 * z)) ** 2).sum(-1) for z in bank.z]).mean(0)
    assert torch.allclose(e, by_hand)


def test_affine_score_closed_form_and_monte_carlo_convergence():
    h = torch.tensor([[-1.5, 0.3], [0.3, -0.7]], dtype=torch.float64)
    s = AffineScore(h, [0.2, -0.1])
    x = torch.tensor([[0.5, 0.4], [-1.0, 2.0]], dtype=torch.float64)
    sigma = 0.6
    exact = s.ere_closed_form(x, sigma)
    errs = []
    for m in (16, 256, 4096, 65536):
        errs.append(float((ere(s, x, sigma, NoiseBank((2,), m, seed=m)) - exact).abs().max()))
    assert errs[-1] < 0.02 * float(exact.min())
    # Monte-Carlo error ~ 1/sqrt(M): the largest M is far better than the smallest
    assert errs[-1] < errs[0] / 8


def test_gaussian_mixture_score_matches_autograd_of_log_density():
    gm = GaussianMixture([[0.0, 0.0], [2.0, 1.0]], [0.5, 0.3], [0.3, 0.7])
    x = torch.randn(10, 2, dtype=torch.float64, requires_grad=True)
    for sigma in (0.0, 0.1, 1.0):
        (g,) = torch.autograd.grad(gm.log_density(x, sigma).sum(), x)
        assert torch.allclose(gm(x, sigma), g, atol=1e-10)


def test_noise_bank_is_seeded_and_validated():
    assert torch.equal(NoiseBank((1, 8, 8), 4, 0).z, NoiseBank((1, 8, 8), 4, 0).z)
    assert not torch.equal(NoiseBank((1, 8, 8), 4, 0).z, NoiseBank((1, 8, 8), 4, 1).z)
    with pytest.raises(ValueError, match="m >= 1"):
        NoiseBank((2,), 0, 0)
    with pytest.raises(ValueError, match="positive sizes"):
        NoiseBank((0, 3), 2, 0)
    with pytest.raises(ValueError, match="does not match"):
        ere(AffineScore(-torch.eye(2), [0, 0]), torch.zeros(1, 3), 0.1, NoiseBank((2,), 2, 0))


def test_sigma_ladder():
    lad = sigma_ladder(50.0, 0.01, 232)
    assert lad[0] == pytest.approx(50) and lad[-1] == pytest.approx(0.01) and len(lad) == 232
    ratios = lad[:-1] / lad[1:]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios)) and float(ratios[0]) == pytest.approx(1.0375, abs=1e-3)
    for bad in [(0.0, 0.01, 3), (1.0, 2.0, 3), (1.0, 0.1, 0), (math.nan, 0.1, 3)]:
        with pytest.raises(ValueError):
            sigma_ladder(*bad)
