"""NCSNv2: the official checkpoints' keys and shapes, every saved form, the official forward, the Score protocol."""
import json
import warnings
from pathlib import Path

import pytest
import torch

from pursamere import Purifier, PurifyConfig, Score, ere
from pursamere.method.ere import NoiseBank
from pursamere.method.ncsnv2 import NCSNV2_CONFIGS, NCSNv2, load_ncsnv2, ncsnv2_state_from_checkpoint
from pursamere.method.purify import InvalidInputError
from pursamere.method.weights import WeightsMismatchError

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = json.loads((FIXTURES / "ncsnv2_official_keys.json").read_text())["configs"]
NARROW = NCSNV2_CONFIGS["cifar10"].replace(ngf=8)


def official_state(name="cifar10", value=0.0):
    """A state dict with every official key and shape (the values are a constant)."""
    state = {k: torch.full(shape, value) for k, shape in OFFICIAL[name]["state_dict"].items()}
    state["sigmas"] = NCSNV2_CONFIGS[name].sigmas()
    return state


def runner_list(state, ema_value=None):
    """The official runner's save: [model state (DataParallel), optimiser state, epoch, step, EMA shadow]."""
    params = [k for k in state if k != "sigmas"]
    optim = {"state": {0: {"step": 3, "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}},
             "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                               "amsgrad": False, "params": list(range(len(params)))}]}
    saved = [{"module." + k: v for k, v in state.items()}, optim, 17, 300000]
    if ema_value is not None:
        saved.append({k: torch.full_like(state[k], ema_value) for k in params})  # no prefix, parameters only
    return saved


@pytest.mark.parametrize("name", sorted(NCSNV2_CONFIGS))
def test_names_shapes_and_size_match_the_official_code(name):
    with torch.device("meta"):  # shapes only: no memory, no time
        net = NCSNv2(NCSNV2_CONFIGS[name])
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert ours == OFFICIAL[name]["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL[name]["parameters"]


def test_forward_matches_the_official_code_on_the_same_weights():
    # the fixture holds the official forward (ngf = 8, CIFAR-10 layout) on weights given by this rule
    from safetensors.torch import load_file

    ref = load_file(str(FIXTURES / "ncsnv2_ngf8_reference.safetensors"))
    net = NCSNv2(NARROW).eval()
    state = {}
    for i, k in enumerate(sorted(net.state_dict())):
        if k == "sigmas":
            state[k] = net.sigmas
            continue
        w = 0.05 * torch.randn(net.state_dict()[k].shape, generator=torch.Generator().manual_seed(i))
        state[k] = 1 + w if k.endswith((".alpha", ".gamma")) else w
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net.forward_labels(ref["x"], ref["labels"])
    assert torch.allclose(out, ref["score"], rtol=1e-4, atol=1e-4 * float(ref["score"].abs().max()))
    assert float(out.std()) > 1.0  # not a trivial all-zero agreement


def test_every_saved_form_of_the_full_cifar10_checkpoint_loads():
    net = NCSNv2(NCSNV2_CONFIGS["cifar10"])
    raw = official_state(value=0.0)
    forms = {"bare": raw, "module.": {"module." + k: v for k, v in raw.items()}, "runner": runner_list(raw, ema_value=0.5)}
    for form, obj in forms.items():
        state, info = ncsnv2_state_from_checkpoint(obj, net, ema=True)
        net.load_state_dict(state, strict=True)
        want = 0.5 if form == "runner" else 0.0  # the runner's list: the EMA weights win
        assert float(net.end_conv.weight[0, 0, 0, 0].detach()) == want, form
        assert torch.equal(net.sigmas, NCSNV2_CONFIGS["cifar10"].sigmas())
    assert info["format"] == "runner-list" and info["weights"] == "ema" and (info["epoch"], info["step"]) == (17, 300000)
    state, info = ncsnv2_state_from_checkpoint(forms["runner"], net, ema=False)
    assert info["weights"] == "raw" and float(state["end_conv.weight"][0, 0, 0, 0]) == 0.0


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    """The full CIFAR-10 checkpoint as the official runner writes it (raw weights 0, EMA weights 0.25)."""
    path = tmp_path_factory.mktemp("ncsnv2") / "checkpoint_300000.pth"
    torch.save(runner_list(official_state(value=0.0), ema_value=0.25), path)
    return path


def test_load_ncsnv2_reads_the_runner_file_with_weights_only(full_checkpoint, tmp_path):
    # the full CIFAR-10 size (and, narrow, the legacy pre-1.6 file format)
    net, info = load_ncsnv2(full_checkpoint, "cifar10")
    assert isinstance(net, Score) and not net.training
    assert info["parameters"] == OFFICIAL["cifar10"]["parameters"] == 29_694_083
    assert info["weights"] == "ema" and float(net.begin_conv.bias[0]) == 0.25
    assert not any(p.requires_grad for p in net.parameters())
    legacy = tmp_path / "legacy.pth"
    torch.save(runner_list(NCSNv2(NARROW).state_dict(), ema_value=0.5), legacy, _use_new_zipfile_serialization=False)
    small, _ = load_ncsnv2(legacy, NARROW)
    assert float(small.res1[0].conv1.bias[0]) == 0.5


def test_a_wrong_state_dict_fails_naming_the_keys(tmp_path):
    state = official_state()
    del state["refine4.crp.convs.1.weight"]
    state["refine9.extra.weight"] = torch.zeros(3)
    state["begin_conv.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsMismatchError) as err:
        load_ncsnv2(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "missing keys: refine4.crp.convs.1.weight" in msg
    assert "unexpected keys: refine9.extra.weight" in msg
    assert "begin_conv.weight (64, 3, 3, 3) vs (128, 3, 3, 3)" in msg
    assert "\n" not in msg


def test_a_checkpoint_of_another_config_or_a_bad_ema_entry_is_refused(tmp_path):
    net = NCSNv2(NARROW)
    torch.save(NCSNv2(NARROW.replace(sigma_begin=1.0)).state_dict(), tmp_path / "other.pth")  # same shapes, another ladder
    with pytest.raises(WeightsMismatchError, match="σ ladder"):
        load_ncsnv2(tmp_path / "other.pth", NARROW)
    broken = runner_list(net.state_dict(), ema_value=0.0)
    broken[4].pop("end_conv.bias")
    with pytest.raises(WeightsMismatchError, match="EMA entry .* missing \\['end_conv.bias'\\]"):
        ncsnv2_state_from_checkpoint(broken, net)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, info = ncsnv2_state_from_checkpoint(runner_list(net.state_dict()), net)  # trained without EMA
    assert info["weights"] == "raw" and "no EMA entry" in str(seen[0].message)


def test_unreadable_files_get_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_ncsnv2(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        load_ncsnv2(tmp_path / "junk.pth")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pth")  # a whole module: code
    with pytest.raises(ValueError, match="holds a Python object .*will not unpickle"):
        load_ncsnv2(tmp_path / "pickled_module.pth")
    with pytest.raises(ValueError, match="unknown NCSNv2 config"):
        load_ncsnv2(tmp_path / "junk.pth", "imagenet")


def test_the_net_is_a_score_of_continuous_sigma():
    torch.manual_seed(0)
    net = NCSNv2(NARROW).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        s1, s2 = net(x, 0.1), net(x, 0.2)
        per_item = net(x, torch.tensor([0.1, 0.2, 0.3]))
        alone = net(x[1:2], 0.2)
    assert isinstance(net, Score)
    assert torch.allclose(s1, 2 * s2, rtol=1e-5)  # s = f(x)/σ
    assert torch.allclose(per_item[1], s2[1], rtol=1e-5) and torch.allclose(per_item[0], s1[0], rtol=1e-5)
    assert torch.allclose(alone, s2[1:2], rtol=1e-4, atol=1e-5)  # per-image norms: no batch coupling
    with torch.no_grad():
        by_label = net.forward_labels(x, torch.tensor([0, 0, 0]))
    assert torch.allclose(by_label, net(x, 50.0), rtol=1e-5)
    with pytest.raises(InvalidInputError, match="expects images"):
        net(torch.rand(2, 1, 32, 32), 0.1)


def test_smoke_purifies_two_cifar_images_with_a_random_ncsnv2():
    torch.manual_seed(0)
    net = NCSNv2(NARROW).eval().requires_grad_(False)
    x = torch.rand(2, 3, 32, 32)
    cfg = PurifyConfig(eps_pur=12 / 255, m=4, sigma_max=0.25, sigma_min=0.01, n_levels=3, steps_per_level=1, seed=0)
    assert cfg.rho == pytest.approx(6 / 255)  # the paper's ρ = ε_pur/2
    pur = Purifier(net, cfg)
    a, b = pur(x), pur(x.clone())
    assert torch.equal(a, b)  # deterministic
    assert a.shape == x.shape and float((a - x).abs().max()) <= 12 / 255 + 1e-6 and 0 <= float(a.min()) and float(a.max()) <= 1
    assert float((a - x).abs().max()) > 1e-4  # it moved
    e = ere(net, x, 0.1, NoiseBank((3, 32, 32), 4, seed=0))
    assert e.shape == (2,) and bool(torch.isfinite(e).all())
    xa = x.clone().requires_grad_(True)  # exact gradients through the unrolled purifier (second order through the net)
    (g,) = torch.autograd.grad(Purifier(net, cfg.replace(n_levels=1, sigma_max=0.01)).unrolled(xa).sum(), xa)
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


def test_the_paper_preset_holds_the_paper_settings_and_loads_the_users_files(full_checkpoint, tmp_path):
    from pursamere.experiments.artifacts import user_models
    from pursamere.experiments.presets import CIFAR10_NCSNV2
    from pursamere.experiments.user_models import ClassifierSpec

    p = CIFAR10_NCSNV2
    assert p.eps_pur == (8 / 255, 12 / 255, 16 / 255) and p.threats == {"inf": 8 / 255, 2: 0.5, 1: 12.0}
    for eps in p.eps_pur:
        cfg = p.purify.replace(eps_pur=eps).paper_sam()  # the tables' PurSAMERE rows
        assert (cfg.eps_pur, cfg.rho, cfg.m, cfg.norm) == (eps, eps / 2, 4, "inf")
    assert p.purify.rho == p.purify.eps_pur / 2 and p.models == "user" and not p.purify.antithetic
    factory = tmp_path / "clf.py"
    factory.write_text("import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))\n")
    spec = ClassifierSpec(f"{factory}:make", normalization="cifar10")
    with pytest.raises(ValueError, match="official NCSNv2 cifar10 checkpoint"):
        user_models(p, None, spec)
    with pytest.raises(ValueError, match="needs your classifier"):
        user_models(p, full_checkpoint, None)
    net, info, clf = user_models(p, full_checkpoint, spec)
    assert info["weights"] == "ema" and info["config"] == "cifar10"
    assert clf(torch.rand(2, 3, 32, 32)).shape == (2, 10)
