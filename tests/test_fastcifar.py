"""The fast CIFAR-10 classifier: its net, its resumable training loop, FGSM-RS, the whitening layer."""
import numpy as np
import pytest
import torch

from pursamere.method.fastcifar import FastCifarConfig, FastCifarNet, _training_attack, train_fastcifar

TINY = FastCifarConfig(widths=(8, 16, 16), batch_size=32, epochs=2.5, ema_start_epochs=1, whiten_images=64,
                       whiten_bias_epochs=1)


def _data(n=160, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    # a learnable signal: the class sets the mean brightness of one channel
    x = rng.integers(0, 120, (n, 3, 32, 32)).astype(np.uint8)
    x[np.arange(n), y % 3] += (12 * y).astype(np.uint8)[:, None, None]
    return x, y


def test_resumed_training_equals_uninterrupted(tmp_path):
    x, y = _data()
    quiet = dict(log=lambda s: None)
    full, rec = train_fastcifar(TINY, x, y, **quiet)
    ck = tmp_path / "c.ckpt"
    # interrupted mid-epoch (step 7 of 5 per epoch → epoch 2), then again at an epoch boundary
    train_fastcifar(TINY, x, y, checkpoint=ck, checkpoint_every=3, stop_at=7, **quiet)
    train_fastcifar(TINY, x, y, checkpoint=ck, checkpoint_every=3, stop_at=10, **quiet)
    resumed, rec2 = train_fastcifar(TINY, x, y, checkpoint=ck, checkpoint_every=3, **quiet)
    assert rec["steps"] == rec2["steps"] == 13
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings_or_data(tmp_path):
    x, y = _data()
    ck = tmp_path / "c.ckpt"
    train_fastcifar(TINY, x, y, checkpoint=ck, stop_at=2, log=lambda s: None)
    with pytest.raises(ValueError, match="cannot resume"):
        train_fastcifar(TINY.__class__(**{**TINY.__dict__, "lr": 5.0}), x, y, checkpoint=ck, log=lambda s: None)
    x2 = x.copy()
    x2[0, 0, 0, 0] ^= 1
    with pytest.raises(ValueError, match="cannot resume"):
        train_fastcifar(TINY, x2, y, checkpoint=ck, log=lambda s: None)


def test_eval_forward_averages_the_mirror_and_is_differentiable():
    net = FastCifarNet(FastCifarConfig(widths=(8, 16, 16))).eval()
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    out = net(x)
    ref = 0.5 * (net.logits(x) + net.logits(x.flip(-1)))
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert g.abs().sum() > 0
    # a mirrored image gets the same eval logits (the mirror view is part of the model)
    torch.testing.assert_close(net(x.flip(-1)), out, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects images"):
        net(torch.rand(2, 1, 32, 32))


def test_whitening_layer_whitens_patches():
    torch.manual_seed(0)
    imgs = torch.rand(64, 3, 32, 32) * torch.linspace(0.2, 1.0, 3).view(1, 3, 1, 1)
    cfg = FastCifarConfig(widths=(8, 16, 16), whiten_eps=1e-9)
    net = FastCifarNet(cfg)
    net.init_whitening(imgs)
    h = torch.nn.functional.conv2d((imgs - net.mean) / net.std, net.whiten.weight[:12].double().float())
    flat = h.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = flat.T @ flat / flat.shape[0]
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)


def test_fgsm_random_start_stays_in_the_ball_and_the_box():
    net = FastCifarNet(FastCifarConfig(widths=(8, 16, 16))).train()
    x = torch.rand(8, 3, 32, 32)
    x[0] = 0.0
    eps = 8 / 255
    xa = _training_attack(net, x, torch.arange(8) % 10, FastCifarConfig(widths=(8, 16, 16), adv_eps=eps), torch.Generator().manual_seed(0))
    assert float((xa - x).abs().max()) <= eps + 1e-6
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    assert float((xa - x).abs().mean()) > eps / 4  # it moved


def test_training_learns_a_simple_signal():
    x, y = _data(n=320)
    # 2k example-passes instead of airbench's 500k: a larger learning rate makes up for it
    cfg = TINY.__class__(**{**TINY.__dict__, "epochs": 6.0, "lr": 50.0})
    net, rec = train_fastcifar(cfg, x, y, log=lambda s: None)
    from pursamere.method.fastcifar import evaluate_accuracy

    xt, yt = _data(n=200, seed=1)
    assert evaluate_accuracy(net, torch.from_numpy(xt), torch.from_numpy(yt)) > 0.35  # chance is 0.1; 0.56 when written


def test_n_fgsm_is_not_clipped_to_the_ball_and_fgsm_rs_is():
    """N-FGSM (de Jorge et al. 2022): noise from the 2ε-ball plus a step of ε, no clipping; FGSM-RS clips."""
    torch.manual_seed(0)
    net = FastCifarNet(FastCifarConfig(widths=(8, 16, 16))).eval()
    x, y, eps = torch.rand(16, 3, 32, 32) * 0.5 + 0.25, torch.arange(16) % 10, 8 / 255
    nf = FastCifarConfig(widths=(8, 16, 16), adv_eps=eps, adv_step=1.0, adv_method="n-fgsm", adv_noise=2.0)
    xa = _training_attack(net, x, y, nf, torch.Generator().manual_seed(0))
    d = (xa - x).abs().max()
    assert eps * 1.5 < float(d) <= 3 * eps + 1e-6  # beyond the ε-ball, within noise + step
    rs = FastCifarConfig(widths=(8, 16, 16), adv_eps=eps, adv_method="fgsm-rs")
    assert float((_training_attack(net, x, y, rs, torch.Generator().manual_seed(0)) - x).abs().max()) <= eps + 1e-6
    with pytest.raises(ValueError, match="adv_method"):
        FastCifarConfig(adv_method="pgd-2")
    with pytest.raises(ValueError, match="adv_steps"):
        FastCifarConfig(adv_method="fgsm-rs", adv_steps=2)


def test_pgd_training_attack_stays_in_the_ball_and_raises_the_loss_more_than_its_start():
    """PGD-AT's attack (Madry et al.): clipped to the ε-ball and the box; two steps beat the random start."""
    torch.manual_seed(0)
    net = FastCifarNet(FastCifarConfig(widths=(8, 16, 16))).eval()
    x, y, eps = torch.rand(16, 3, 32, 32), torch.arange(16) % 10, 8 / 255
    c = FastCifarConfig(widths=(8, 16, 16), adv_eps=eps, adv_method="pgd", adv_steps=2, adv_step=0.5)
    xa = _training_attack(net, x, y, c, torch.Generator().manual_seed(0))
    assert float((xa - x).abs().max()) <= eps + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
    start = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * eps).clamp(0, 1)
    with torch.no_grad():
        loss = lambda z: float(torch.nn.functional.cross_entropy(net(z), y))  # noqa: E731
        assert loss(xa) > loss(start) > 0
