"""Langevin sampling and the ERE-detection AUROC on exact scores."""
import torch

from pursamere.method.analysis import annealed_langevin, auroc, ere_auroc, image_grid
from pursamere.method.scores import GaussianMixture, sigma_ladder


def test_auroc_known_values():
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5


def test_annealed_langevin_samples_a_gaussian_mixture():
    gm = GaussianMixture([[0.3, 0.3], [0.7, 0.7]], [0.05, 0.05])

    def score(x, s):  # works on the (B, 2) toy directly
        return gm(x.double(), s).to(x.dtype)

    x = annealed_langevin(score, (2000, 2), sigma_ladder(1.0, 0.01, 20), steps_per_level=20, eps=2e-5, seed=0)
    near = torch.cdist(x.double(), gm.means).min(1).values
    assert float((near < 0.15).double().mean()) > 0.95
    share = float((torch.cdist(x.double(), gm.means).argmin(1) == 0).double().mean())
    assert 0.4 < share < 0.6  # both modes, in proportion


def test_ere_separates_off_manifold_points_on_an_exact_score():
    gm = GaussianMixture([[0.3, 0.3], [0.7, 0.7]], [0.05, 0.05])
    x = gm.sample(300, torch.Generator().manual_seed(0))
    x_off = x + torch.tensor([0.12, -0.12], dtype=torch.float64)  # pushed off the data
    res = ere_auroc(gm, x, x_off, sigma=0.05)
    assert res["auroc"] > 0.9 and res["ere_adv_mean"] > res["ere_clean_mean"]


def test_image_grid_shape():
    assert image_grid(torch.rand(10, 1, 8, 8), nrow=4).shape == (1, 3 * 9 + 1, 4 * 9 + 1)
