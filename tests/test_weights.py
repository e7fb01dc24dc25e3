"""Shipped weights: safetensors + SHA-256 manifest, verified on load; the shipped CIFAR-10 models."""
import json

import pytest
import torch

from pursamere.experiments.weights import (WeightsError, load_weights, manifest, save_weights, shipped_summary, verify,
                                          weights_root)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_round_trip_keeps_tensors_and_meta(tmp_path):
    net = _net().to(memory_format=torch.channels_last)  # non-standard layout is written contiguous
    entry = save_weights("toy/net", net, {"command": "python train.py", "metrics": {"acc": 0.5}}, root=tmp_path)
    state, meta = load_weights("toy/net", root=tmp_path)
    assert meta == {"command": "python train.py", "metrics": {"acc": 0.5}}
    ref = net.state_dict()
    assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    assert entry["bytes"] == (tmp_path / "toy" / "net.safetensors").stat().st_size
    save_weights("toy/other", {"w": torch.ones(2)}, root=tmp_path)
    assert sorted(manifest(tmp_path)) == ["toy/net", "toy/other"] and verify(tmp_path) == ["toy/net", "toy/other"]


def test_shipped_summary_flattens_the_recorded_metrics(tmp_path):
    entry = save_weights("toy/score", _net(), {"kind": "Net", "command": "python train.py score",
                                       "metrics": {"psnr": {"0.1": {"psnr_denoised": 25.5}}, "seconds": 3}}, root=tmp_path)
    save_weights("other/net", _net(), {"command": "x"}, root=tmp_path)
    (row,) = shipped_summary("toy/", root=tmp_path)
    assert row["model"] == "toy/score" and row["kind"] == "Net" and row["command"] == "python train.py score"
    assert row["psnr.0.1.psnr_denoised"] == 25.5 and row["seconds"] == 3
    assert row["MB"] == round(entry["bytes"] / 2 ** 20, 2)
    assert [r["model"] for r in shipped_summary(root=tmp_path)] == ["other/net", "toy/score"]


def test_tampered_missing_or_unknown_files_fail_loudly(tmp_path):
    save_weights("toy/net", _net(), {"command": "python train.py toy"}, root=tmp_path)
    path = tmp_path / "toy" / "net.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1  # one bit of one weight
    path.write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match=r"net\.safetensors fails its check"):
        load_weights("toy/net", root=tmp_path)
    with pytest.raises(WeightsError, match="net.safetensors"):
        verify(tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="python train.py toy"):
        load_weights("toy/net", root=tmp_path)
    with pytest.raises(WeightsError, match="no model 'toy/nope'"):
        load_weights("toy/nope", root=tmp_path)
    with pytest.raises(ValueError, match="weights name"):
        save_weights("../escape", _net(), root=tmp_path)


def test_a_swapped_file_with_a_forged_checksum_fails_the_tensor_fingerprint(tmp_path):
    import hashlib

    save_weights("toy/a", _net(), root=tmp_path)
    save_weights("toy/b", {"w": torch.zeros(3)}, root=tmp_path)
    doc = json.loads((tmp_path / "MANIFEST.json").read_text())
    other = (tmp_path / "toy" / "b.safetensors").read_bytes()
    (tmp_path / "toy" / "a.safetensors").write_bytes(other)
    doc["models"]["toy/a"].update(sha256=hashlib.sha256(other).hexdigest(), bytes=len(other))
    (tmp_path / "MANIFEST.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="fingerprint"):
        load_weights("toy/a", root=tmp_path)


SHIPPED = manifest(weights_root())


def test_shipped_weights_match_the_manifest():
    if not SHIPPED:
        pytest.skip("no shipped weights in this checkout")
    assert verify() == sorted(SHIPPED)
    total = sum(e["bytes"] for name, e in SHIPPED.items() if name.startswith("cifar10/"))
    assert total <= 40 * 2**20  # the CIFAR-10 models stay under 40 MB together


def _cifar_test(n):
    from pursamere.experiments import cifar10_cpu as C

    if not (C.DEFAULT_ROOT / "test.tar.gz").is_file():
        pytest.skip(f"no CIFAR-10 JPEG data at {C.DEFAULT_ROOT}")
    x, y = C.cifar10_float("test", cache=None) if not C.DEFAULT_CACHE.exists() else C.cifar10_float("test")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(123))[:n]  # the set is sorted by class
    return x[idx], y[idx]


# floors: the measured 10,000-image accuracy minus about three standard errors of a 500-image estimate
@pytest.mark.parametrize("role,floor", [("classifier", 0.86), ("eq17", 0.85), ("adversarial", 0.66)])
def test_shipped_classifiers_are_accurate(role, floor):
    from pursamere.experiments import cifar10_cpu as C
    from pursamere.method.fastcifar import evaluate_accuracy

    if C.CIFAR10_CPU.weights_name(role) not in SHIPPED:
        pytest.skip(f"{role} not shipped")
    x, y = _cifar_test(500)
    assert evaluate_accuracy(C.load_classifier(role), x, y) >= floor


def test_shipped_adversarial_classifier_resists_pgd_where_the_clean_one_does_not():
    """The FGSM-RS model is robust: PGD-10 (ℓ∞ 8/255) leaves it far more than the clean net (the table's
    APGD and Square rows are the check against masked gradients)."""
    from pursamere.evaluation.attacks import Threat, pgd
    from pursamere.experiments import cifar10_cpu as C

    if C.CIFAR10_CPU.weights_name("adversarial") not in SHIPPED:
        pytest.skip("adversarial classifier not shipped")
    x, y = _cifar_test(100)
    acc = {}
    for role in ("classifier", "adversarial"):
        net = C.load_classifier(role)
        xa = pgd(net, x, y, Threat("inf", 8 / 255), steps=10, seed=0)
        with torch.no_grad():
            acc[role] = float((net(xa).argmax(1) == y).float().mean())
    assert acc["classifier"] <= 0.05 and acc["adversarial"] >= 0.25, acc


def test_shipped_score_model_denoises():
    from pursamere.experiments import cifar10_cpu as C

    if C.CIFAR10_CPU.weights_name("score") not in SHIPPED:
        pytest.skip("score model not shipped")
    x, _ = _cifar_test(100)
    score = C.load_score_net()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for sigma in (0.03, 0.1):
            noisy = x + sigma * torch.randn(x.shape, generator=gen)
            den = noisy + sigma ** 2 * score(noisy, sigma)  # Tweedie
            gain = 10 * torch.log10((noisy - x).pow(2).mean() / (den - x).pow(2).mean())
            assert gain > 3.0  # dB better than the noisy input


def test_a_resume_bundle_carries_a_training_run_across_sessions(tmp_path):
    """A checkpoint packed into safetensors (no pickle) and unpacked elsewhere resumes to the same weights."""
    import torch

    from pursamere.experiments.weights import pack_checkpoint, unpack_checkpoint
    from pursamere.method.train import ScoreTrainConfig, train_score

    data = torch.rand(64, 1, 4, 4)
    sig = torch.tensor([0.5, 0.1])
    cfg = ScoreTrainConfig(steps=6, batch_size=8, checkpoint_every=3)
    from pursamere.method.nets import ScoreNet, ScoreNetConfig

    small = ScoreNetConfig((1, 4, 4), (8,), 1, 8)
    torch.manual_seed(0)
    full, _ = train_score(ScoreNet(small), data, sig, cfg)
    torch.manual_seed(0)
    train_score(ScoreNet(small), data, sig, cfg, checkpoint=tmp_path / "a.pt", stop_at=3)
    pack_checkpoint(tmp_path / "a.pt", tmp_path / "bundle.safetensors")
    unpack_checkpoint(tmp_path / "bundle.safetensors", tmp_path / "b.pt")
    torch.manual_seed(0)
    resumed, _ = train_score(ScoreNet(small), data, sig, cfg, checkpoint=tmp_path / "b.pt", resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
