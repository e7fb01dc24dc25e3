"""Attacks: PGD (ℓ∞/ℓ2/ℓ1, EoT, any-iterate success), the Defended wrapper, bad inputs.

References: a hand-written PGD loop, torchattacks' PGD/PGDL2 on the same model, finite
differences of the true defence, and the classifier's own input gradient (BPDA).
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pursamere.evaluation.attacks import Threat, default_step_size, margin_loss, one_step, pgd, robust_accuracy, slide_direction
from pursamere.evaluation.defended import Defended
from pursamere.method.geometry import lp_norm, project
from pursamere.method.nets import SCORE_TINY, ScoreNet
from pursamere.method.purify import InvalidInputError, Purifier, PurifyConfig
from pursamere.method.train import ClassifierTrainConfig, accuracy, train_classifier

torchattacks = pytest.importorskip("torchattacks")

TOL = 1e-5


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 10))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:1700]], y[perm[1400:1700]]


@pytest.fixture(scope="module")
def net(digits):
    xtr, ytr, _, _ = digits
    model = train_classifier(_mlp(), xtr, ytr, ClassifierTrainConfig(epochs=8, batch_size=64, seed=0))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _tiny_purifier(dtype=torch.float32, **cfg):
    torch.manual_seed(1)
    score = ScoreNet(SCORE_TINY).to(dtype).eval()
    for p in score.parameters():
        p.requires_grad_(False)
    base = dict(eps_pur=0.1, m=2, sigma_max=0.2, sigma_min=0.05, n_levels=2, steps_per_level=2, lr_max=0.01, lr_min=0.005)
    base.update(cfg)
    return Purifier(score, PurifyConfig(**base))


# --------------------------------------------------------------------- PGD finds adversarials
@pytest.mark.parametrize("threat", [Threat("inf", 0.2), Threat(2, 1.5), Threat(1, 4.0)], ids=str)
def test_pgd_breaks_undefended_net_within_budget(net, digits, threat):
    _, _, x, y = digits
    x, y = x[:200], y[:200]
    clean = accuracy(net, x, y)
    x_adv = pgd(net, x, y, threat, steps=20)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(lp_norm(x_adv - x, threat.norm).max()) <= threat.eps + TOL
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    robust = robust_accuracy(net, x_adv, y)
    assert clean > 0.85 and robust < 0.15, (clean, robust)


def test_pgd_is_deterministic_and_seeded(net, digits):
    _, _, x, y = digits
    x, y = x[:32], y[:32]
    th = Threat(2, 0.5)
    a, b = pgd(net, x, y, th, steps=3, seed=5), pgd(net, x, y, th, steps=3, seed=5)
    c = pgd(net, x, y, th, steps=3, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_default_step_sizes():
    assert default_step_size(Threat("inf", 8 / 255), 20) == pytest.approx(2 / 255)
    assert default_step_size(Threat("inf", 8 / 255), 200) == pytest.approx(2.5 * 8 / 255 / 200)
    assert default_step_size(Threat(2, 0.5), 20) == pytest.approx(2.5 * 0.5 / 20)
    assert default_step_size(Threat("inf", 0.1), 1) >= 0.1  # FGSM reaches the ball's face


def test_slide_direction_excludes_box_faces_and_keeps_top_quantile():
    g = torch.tensor([[5.0, -4.0, 3.0, -2.0, 1.0, 0.5, -0.1, 0.0]])
    x = torch.tensor([[1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])  # coords 0 and 1 cannot move that way
    e = slide_direction(g, x, q=0.7)  # 6 movable coords with g≠0 → ceil(0.3·6) = 2 move
    assert torch.equal(e, torch.tensor([[0.0, 0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]]))
    assert float(e.abs().sum()) == pytest.approx(1.0)


def test_one_step_is_fgsm(net, digits):
    _, _, x, y = digits
    x, y = x[:16], y[:16]
    xv = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(xv), y), xv)
    ref = (x + 0.1 * g.sign()).clamp(0, 1)
    assert torch.equal(one_step(net, x, y, Threat("inf", 0.1), keep="last"), ref)


# ------------------------------------------------------------------ agreement with torchattacks
@pytest.mark.parametrize("norm,eps", [("inf", 0.1), (2, 0.75)])
def test_pgd_agrees_with_torchattacks(net, digits, norm, eps):
    _, _, x, y = digits  # 300 images
    th, steps = Threat(norm, eps), 20
    alpha = default_step_size(th, steps)
    ours_last = robust_accuracy(net, pgd(net, x, y, th, steps=steps, keep="last"), y)
    ours_best = robust_accuracy(net, pgd(net, x, y, th, steps=steps), y)
    torch.manual_seed(0)
    atk = (torchattacks.PGD(net, eps=eps, alpha=alpha, steps=steps) if norm == "inf"
           else torchattacks.PGDL2(net, eps=eps, alpha=alpha, steps=steps))
    theirs = robust_accuracy(net, atk(x, y), y)
    assert 0.1 < theirs < 0.9  # a budget where the comparison means something
    assert abs(ours_last - theirs) <= 0.02, (ours_last, theirs)
    assert ours_best <= ours_last + 1e-9


# -------------------------------------------------------------------------------------- EoT
def test_eot1_equals_a_plain_pgd_loop(net, digits):
    _, _, x, y = digits
    x, y, eps, alpha = x[:64], y[:64], 0.1, 0.02
    ref = x.clone()
    for _ in range(7):
        xv = ref.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(xv), y), xv)
        ref = torch.min(torch.max(ref + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    ours = pgd(net, x, y, Threat("inf", eps), steps=7, step_size=alpha, random_start=False, eot=1, keep="last")
    assert torch.equal(ours, ref)
    # a deterministic model: averaging identical gradients changes nothing
    ours3 = pgd(net, x, y, Threat("inf", eps), steps=7, step_size=alpha, random_start=False, eot=3, keep="last")
    assert torch.equal(ours3, ref)


class _Alternating(nn.Module):
    """A 'stochastic' model with a known schedule of draws: call i uses weights A or B."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a, self.b = nn.Linear(64, 10), nn.Linear(64, 10)
        for lin in (self.a, self.b):
            lin.weight.data = torch.randn(10, 64, generator=g)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return (self.a if self.calls % 2 else self.b)(x.flatten(1))


def test_eot_averages_gradients_over_draws(digits):
    _, _, x, y = digits
    x, y, eps = x[:8], y[:8], 0.5
    model = _Alternating()
    xa = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(F.cross_entropy(model.a(xa.flatten(1)), y, reduction="sum"), xa)
    (gb,) = torch.autograd.grad(F.cross_entropy(model.b(xa.flatten(1)), y, reduction="sum"), xa)
    g = (ga + gb) / 2
    step = 0.3 * g / lp_norm(g, 2).view(-1, 1, 1, 1)
    ref = project(x + step, x, eps, 2)
    model.calls = 0
    out = pgd(model, x, y, Threat(2, eps), steps=1, step_size=0.3, random_start=False, eot=2, keep="last")
    assert torch.allclose(out, ref, atol=1e-6)
    assert model.calls == 1 * 2 + 2  # steps × eot gradient passes + eot passes on the last iterate
    out1 = pgd(model, x, y, Threat(2, eps), steps=1, step_size=0.3, random_start=False, eot=1, keep="last")
    assert not torch.allclose(out1, ref, atol=1e-3)  # one draw alone gives another direction


# -------------------------------------------------------------------- any-iterate success
class _Band(nn.Module):
    """Class 1 wins only while mean(x) ∈ (0.30, 0.40); the gradient always says 'increase x'.

    PGD walks straight through the band and out the other side, so only an intermediate
    iterate fools the model.
    """

    def forward(self, x):
        s = x.flatten(1).mean(1)
        band = 1.0 - ((s.detach() - 0.35) / 0.05) ** 2
        z1 = band + (s - s.detach())  # value: the band; gradient: +1 on every pixel
        return torch.stack([torch.zeros_like(z1), z1], 1)


def test_any_iterate_success_counts(digits):
    model = _Band()
    x, y = torch.full((3, 1, 2, 2), 0.1), torch.zeros(3, dtype=torch.long)
    kw = dict(steps=10, step_size=0.05, random_start=False)
    last = pgd(model, x, y, Threat("inf", 0.5), keep="last", **kw)
    best, ok = pgd(model, x, y, Threat("inf", 0.5), return_success=True, **kw)
    assert robust_accuracy(model, last, y) == 1.0  # the final iterate is classified correctly
    assert robust_accuracy(model, best, y) == 0.0 and bool(ok.all())
    assert float(best.mean()) == pytest.approx(0.35, abs=1e-6)


def test_margin_loss():
    z = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    assert torch.allclose(margin_loss(z, torch.tensor([0, 0])), torch.tensor([-1.0, 3.0]))


# ------------------------------------------------------------------------- Defended wrapper
def test_defended_runs_in_torchattacks_apgd_and_square(net, digits):
    _, _, x, y = digits
    x, y = x[:6], y[:6]
    pur = _tiny_purifier(n_levels=1, sigma_min=0.2, steps_per_level=1)
    for gradient in ("exact", "bpda"):
        d = Defended(net, pur, gradient=gradient).eval()
        x_a = torchattacks.APGD(d, norm="Linf", eps=0.1, steps=2, n_restarts=1, eot_iter=2, seed=0)(x, y)
        assert float((x_a.detach() - x).abs().max()) <= 0.1 + TOL and x_a.shape == x.shape
    d = Defended(net, pur, gradient="bpda").eval()
    x_s = torchattacks.Square(d, norm="L2", eps=1.0, n_queries=10, seed=0)(x, y)
    assert float(lp_norm(x_s - x, 2).max()) <= 1.0 + TOL
    ref = net(pur(x_s))  # (the Purifier needs grad mode on internally)
    with torch.no_grad():
        assert torch.equal(d(x_s), ref)  # the forward is the true defence


def test_exact_gradient_matches_finite_differences_and_bpda_is_straight_through(digits):
    _, _, x, y = digits
    torch.manual_seed(0)
    x = (0.2 + 0.6 * torch.rand(2, 1, 8, 8)).double()  # interior: ±h stays in the box
    y = y[:2]
    clf = _mlp(1).double().eval()
    pur = _tiny_purifier(torch.float64)

    def loss_at(z):
        return F.cross_entropy(Defended(clf, pur, "exact")(z), y, reduction="sum")

    grads = {}
    for ck in (True, False):
        xv = x.clone().requires_grad_(True)
        (grads[ck],) = torch.autograd.grad(F.cross_entropy(Defended(clf, pur, "exact", checkpoint=ck)(xv), y, reduction="sum"), xv)
    assert torch.allclose(grads[True], grads[False], rtol=1e-9, atol=1e-12)  # checkpointing is exact

    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        fd = (loss_at(x + h * v) - loss_at(x - h * v)) / (2 * h)
    ad = (grads[True] * v).sum()
    assert float(abs(ad - fd)) <= 1e-5 * max(1.0, float(abs(fd))), (float(ad), float(fd))

    # BPDA: exactly the classifier's input gradient at the purified point
    xv = x.clone().requires_grad_(True)
    (g_bpda,) = torch.autograd.grad(F.cross_entropy(Defended(clf, pur, "bpda")(xv), y, reduction="sum"), xv)
    z = pur(x).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(clf(z), y, reduction="sum"), z)
    assert torch.equal(g_bpda, g_ref)
    assert not torch.allclose(g_bpda, grads[True], rtol=1e-3)  # the two rules really differ


def test_gray_box_attacks_the_classifier_only(net, digits):
    _, _, x, y = digits
    x, y = x[:16], y[:16]
    pur = _tiny_purifier(n_levels=1, sigma_min=0.2, steps_per_level=1)
    d = Defended(net, pur, gradient="none")
    assert d.attack_surface() is net
    th = Threat("inf", 0.1)
    assert torch.equal(pgd(d, x, y, th, steps=3), pgd(net, x, y, th, steps=3))
    xv = x.clone().requires_grad_(True)
    assert not d(xv).requires_grad  # nothing flows through the purifier in the gray-box model
    ref = net(pur(x))
    with torch.no_grad():
        assert torch.equal(d(x), ref)


# ------------------------------------------------------------------------------- bad inputs
def test_bad_threats():
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        Threat("inf", 0.0)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        Threat(2, -1.0)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        Threat(1, math.nan)
    with pytest.raises(ValueError, match="unknown norm"):
        Threat("l3", 0.1)


def test_bad_attack_inputs(net, digits):
    _, _, x, y = digits
    x, y = x[:4], y[:4]
    th = Threat("inf", 0.1)
    with pytest.raises(ValueError, match="labels out of range"):
        pgd(net, x, torch.tensor([0, 1, 2, 10]), th, steps=1)
    with pytest.raises(ValueError, match="labels out of range"):
        pgd(net, x, torch.tensor([0, -1, 2, 3]), th, steps=1)
    with pytest.raises(ValueError, match="batch sizes differ"):
        pgd(net, x, y[:3], th, steps=1)
    with pytest.raises(InvalidInputError, match="outside the box"):
        pgd(net, x * 2 - 0.5, y, th, steps=1)
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        pgd(net, bad, y, th, steps=1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        pgd(net, x, y, th, steps=0)
    with pytest.raises(ValueError, match="eot must be an integer >= 1"):
        pgd(net, x, y, th, steps=1, eot=0)
    with pytest.raises(ValueError, match="unknown loss"):
        pgd(net, x, y, th, steps=1, loss="hinge")
    with pytest.raises(ValueError, match="integer tensor"):
        pgd(net, x, y.float(), th, steps=1)
    with pytest.raises(TypeError, match="Threat"):
        pgd(net, x, y, ("inf", 0.1), steps=1)


def test_bad_defended():
    with pytest.raises(ValueError, match="unknown gradient"):
        Defended(_mlp(), lambda x: x, gradient="magic")
    with pytest.raises(TypeError, match="unrolled"):
        Defended(_mlp(), lambda x: x, gradient="exact")
    d = Defended(_mlp(), lambda x: x[:, :, :4], gradient="bpda")
    with pytest.raises(ValueError, match="changed the shape"):
        d(torch.rand(2, 1, 8, 8).requires_grad_(True))


def test_pgd_warm_start_and_partial_unrolling_in_defended(net, digits):
    x, y = digits[0][:6], digits[1][:6]
    threat = Threat("inf", 0.1)
    start = pgd(net, x, y, threat, steps=3)
    # the start replaces the random start (so the seed plays no part) and the result stays in the ball
    warm = pgd(net, x, y, threat, steps=2, x_init=start, seed=123)
    assert torch.equal(warm, pgd(net, x, y, threat, steps=2, x_init=start, seed=7))  # the seed is unused
    assert float((warm - x).abs().max()) <= 0.1 + 1e-6
    with pytest.raises(InvalidInputError, match="outside the threat's ball"):
        pgd(net, x, y, threat, steps=2, x_init=(x + 0.3).clamp(0, 1))
    with pytest.raises(InvalidInputError, match="x_init has shape"):
        pgd(net, x, y, threat, steps=2, x_init=x[:2])
    pur = _tiny_purifier()
    d = Defended(net, pur, gradient="exact", unroll_last=1)
    assert "unroll_last=1" in repr(d)
    xr = x[:2].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(d(xr).sum(), xr)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    assert Defended(net, pur, gradient="exact", unroll_last=99).unroll_last == pur.config.steps  # capped at K
    with pytest.raises(ValueError, match="integer >= 0"):
        Defended(net, pur, gradient="exact", unroll_last=-1)
    with pytest.raises(ValueError, match="needs gradient='exact'"):
        Defended(net, pur, gradient="bpda", unroll_last=1)
    with pytest.raises(TypeError, match="takes last=k"):
        Defended(net, lambda z: z, gradient="exact", unroll_last=1)


# ------------------------------------------------- per-image seeds, batch invariance, early stopping
from attack_models import RowCounter, row_wise  # noqa: E402  (tests/attack_models.py)

from pursamere.evaluation.attacks import image_seeds  # noqa: E402
from pursamere.evaluation.starts import random_starts  # noqa: E402

_NORMS = [Threat("inf", 0.1), Threat(2, 0.75), Threat(1, 3.0)]


def test_image_seeds_follow_the_image_not_the_batch():
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = image_seeds(x, seed=3)
    assert s.dtype == torch.long and s.shape == (6,) and bool((s >= 0).all())
    assert torch.equal(image_seeds(x[[5, 1, 2]], seed=3), s[[5, 1, 2]])  # any subset, any order
    assert len(set(s.tolist())) == 6  # different images, different seeds
    assert not bool((image_seeds(x, seed=4) == s).any())  # the run's seed enters
    assert not bool((image_seeds(x, seed=3, salt=1) == s).any())  # and the salt (restart index)
    y = x.clone()
    y[2, 0, 4, 4] = torch.nextafter(y[2, 0, 4, 4], torch.tensor(2.0))  # one ulp of one pixel
    assert torch.equal(image_seeds(y, seed=3) == s, torch.tensor([True, True, False, True, True, True]))
    with pytest.raises(ValueError, match="seed must be an integer"):
        image_seeds(x, seed=1.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("threat", _NORMS, ids=str)
def test_pgd_with_image_seeds_gives_an_image_the_same_point_in_any_batch(net, digits, threat, dtype):
    # a batch-invariant model (every row computed alone): then the whole run is bit-identical;
    # with nn.Linear under MKL the points can differ in the last bits (tests/attack_models.py)
    model = row_wise(net, dtype)
    _, _, x, y = digits
    x = x.to(dtype)
    runs = []
    for batch in ([7], [3, 7, 11, 20], [150, 60, 2, 99, 41, 7]):  # alone, 2nd of 4, last of 6
        b = torch.tensor(batch)
        xa = pgd(model, x[b], y[b], threat, steps=8, seeds=image_seeds(x[b], seed=1))
        runs.append(xa[batch.index(7)])
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], x[7])
    # without per-image seeds the random start depends on the position in the batch
    assert not torch.equal(random_starts(x[[7]], threat, seed=1)[0], random_starts(x[[3, 7]], threat, seed=1)[1])
    assert torch.equal(random_starts(x[[7]], threat, seeds=image_seeds(x[[7]]))[0],
                       random_starts(x[[3, 7]], threat, seeds=image_seeds(x[[3, 7]]))[1])


@pytest.mark.parametrize("threat", _NORMS, ids=str)
def test_pgd_stop_early_keeps_every_outcome_and_every_robust_end_point(net, digits, threat):
    model = row_wise(net, torch.float64)
    _, _, x, y = digits
    x, y = x[:80].double(), y[:80]
    seeds = image_seeds(x, seed=0)
    full, ok = pgd(model, x, y, threat, steps=10, seeds=seeds, return_success=True)
    counter = RowCounter(model)
    early, ok_early = pgd(counter, x, y, threat, steps=10, seeds=seeds, return_success=True, stop_early=True)
    assert 5 <= int(ok.sum()) <= 75  # some broken, some robust: the comparison means something
    assert torch.equal(ok_early, ok)
    assert torch.equal(early[~ok], full[~ok])  # the still-robust images ran exactly as before
    with torch.no_grad():
        assert bool((margin_loss(model(early[ok]), y[ok]) > 0).all())  # a fooling iterate is returned
    assert float(lp_norm(early - x, threat.norm).max()) <= threat.eps * (1 + 1e-6) + 1e-9
    assert counter.rows < 80 * 11  # fooled images stopped costing forward passes


def test_stop_early_refuses_surfaces_whose_logits_do_not_decide(net, digits):
    x, y = digits[2][:4], digits[3][:4]
    th = Threat("inf", 0.1)
    gray = Defended(net, lambda z: z, gradient="none")
    with pytest.raises(ValueError, match="whole defence"):
        pgd(gray, x, y, th, steps=1, stop_early=True)
    with pytest.raises(ValueError, match="deterministic defences"):
        pgd(net, x, y, th, steps=1, stop_early=True, eot=2)
    with pytest.raises(ValueError, match="keep='best'"):
        pgd(net, x, y, th, steps=1, stop_early=True, keep="last")
    with pytest.raises(InvalidInputError, match=r"seeds must have shape \(4,\)"):
        pgd(net, x, y, th, steps=1, seeds=torch.arange(3))
    with pytest.raises(InvalidInputError, match="integer tensor"):
        pgd(net, x, y, th, steps=1, seeds=torch.zeros(4))
