"""Score-net training (eq. 6): resumable bit for bit, checksummed checkpoints, learning."""
import pytest
import torch

from pursamere.io import CorruptCheckpointError, load_checkpoint, save_checkpoint
from pursamere.method.nets import SCORE_TINY, ScoreNet, SmallCNN, WideResNet
from pursamere.method.scores import sigma_ladder
from pursamere.method.train import ClassifierTrainConfig, ScoreTrainConfig, accuracy, dsm_loss, train_classifier, train_score

CFG = ScoreTrainConfig(steps=12, batch_size=8, checkpoint_every=4, lr=2e-3)
SIGMAS = sigma_ladder(1.0, 0.02, 6)


def _fresh_net():
    torch.manual_seed(11)
    return ScoreNet(SCORE_TINY)


def test_resumed_training_equals_uninterrupted(tmp_path):
    data = torch.rand(40, 1, 8, 8)
    ema_a, loss_a = train_score(_fresh_net(), data, SIGMAS, CFG, checkpoint=tmp_path / "a.pt")
    # interrupted after step 6 (between two checkpoints' cadence), then resumed
    train_score(_fresh_net(), data, SIGMAS, CFG, checkpoint=tmp_path / "b.pt", stop_at=6)
    assert load_checkpoint(tmp_path / "b.pt")["step"] == 6
    ema_b, loss_b = train_score(_fresh_net(), data, SIGMAS, CFG, checkpoint=tmp_path / "b.pt", resume=True)
    assert loss_a == loss_b
    for (ka, va), (kb, vb) in zip(ema_a.state_dict().items(), ema_b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_a_run_can_be_ended_early_or_extended(tmp_path):
    from dataclasses import replace

    data = torch.rand(40, 1, 8, 8)
    short = replace(CFG, steps=8)
    ema_a, loss_a = train_score(_fresh_net(), data, SIGMAS, short)
    # a 12-step run interrupted at step 8, then ended there: the same weights as an 8-step run
    train_score(_fresh_net(), data, SIGMAS, CFG, checkpoint=tmp_path / "b.pt", stop_at=8)
    ema_b, loss_b = train_score(_fresh_net(), data, SIGMAS, short, checkpoint=tmp_path / "b.pt", resume=True)
    assert loss_a == loss_b and all(torch.equal(a, b) for a, b in zip(ema_a.state_dict().values(), ema_b.state_dict().values()))
    with pytest.raises(ValueError, match="past this run's end"):
        train_score(_fresh_net(), data, SIGMAS, replace(CFG, steps=6), checkpoint=tmp_path / "b.pt", resume=True)
    with pytest.raises(ValueError, match="other settings"):
        train_score(_fresh_net(), data, SIGMAS, replace(CFG, lr=1e-3), checkpoint=tmp_path / "b.pt", resume=True)


def test_checkpoint_refuses_overwrite_mismatch_and_corruption(tmp_path):
    data = torch.rand(20, 1, 8, 8)
    path = tmp_path / "s.pt"
    train_score(_fresh_net(), data, SIGMAS, CFG, checkpoint=path, stop_at=4)
    with pytest.raises(FileExistsError, match="resume"):
        train_score(_fresh_net(), data, SIGMAS, CFG, checkpoint=path)
    with pytest.raises(ValueError, match="other settings"):
        train_score(_fresh_net(), data + 0.0 * data + (data < 2) * 0.001, SIGMAS, CFG, checkpoint=path, resume=True)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        load_checkpoint(path)
    path.write_bytes(bytes(blob[:100]))
    with pytest.raises(CorruptCheckpointError, match="trailer"):
        load_checkpoint(path)


def test_checkpoint_payload_is_loaded_without_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(Exception):  # torch.save works, weights_only load must refuse the global
        save_checkpoint(tmp_path / "e.pt", {"x": Evil()})
        load_checkpoint(tmp_path / "e.pt")


def test_tensor_state_round_trips_any_dtype_and_refuses_alterations(tmp_path):
    """save_tensor_state: safetensors, no pickle; every dtype and shape back bit for bit, values exact; any altered
    byte, value or a foreign file is refused as corrupt."""
    import json

    from pursamere.io import load_tensor_state, save_tensor_state

    state = {"bf16": torch.randn(3, 2).bfloat16(), "flags": torch.tensor([True, False]), "empty": torch.zeros(0, 3),
             "scalar": torch.tensor(2.5, dtype=torch.float64), "key": "k", "done": 3, "seconds": 0.1 + 0.2}
    path = save_tensor_state(tmp_path / "s.safetensors", state)
    back = load_tensor_state(path)
    assert set(back) == set(state) and all(
        torch.equal(back[k], v) and back[k].dtype == v.dtype if isinstance(v, torch.Tensor) else back[k] == v
        for k, v in state.items())
    blob = path.read_bytes()
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    assert save_tensor_state(tmp_path / "again", state).read_bytes() == blob  # the same state, the same bytes
    meta = json.loads(header["__metadata__"]["pursamere-state"])
    meta["values"] = json.dumps({**json.loads(meta["values"]), "done": 4}, sort_keys=True)  # a value, same length
    header["__metadata__"]["pursamere-state"] = json.dumps(meta, sort_keys=True)
    forged = json.dumps(header, separators=(",", ":")).encode()
    assert len(forged) <= size
    for altered, why in ((blob[:-1] + bytes([blob[-1] ^ 1]), "SHA-256"),  # a tensor byte
                         (blob[:8] + forged.ljust(size) + blob[8 + size:], "SHA-256"),
                         (b"not a safetensors file at all", "not a pursamere tensor state")):
        (tmp_path / "bad").write_bytes(altered)
        with pytest.raises(CorruptCheckpointError, match=why):
            load_tensor_state(tmp_path / "bad")


def test_dsm_training_learns_a_gaussian_score():
    # data ~ N(0.5, 0.1²) per pixel: the true smoothed score is -(x - 0.5)/(0.01 + σ²)
    torch.manual_seed(0)
    data = (0.5 + 0.1 * torch.randn(512, 1, 8, 8)).clamp(0, 1)
    sig = sigma_ladder(0.5, 0.05, 4).float()
    net = _fresh_net()
    z = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    lv = sig[torch.arange(64) % 4]
    before = float(dsm_loss(net, data[:64], lv, z).detach())
    ema, losses = train_score(net, data, sig, ScoreTrainConfig(steps=300, batch_size=64, lr=3e-3, ema_rate=0.9))
    after = float(dsm_loss(ema, data[:64], lv, z))
    # the optimum of eq. 6 here is d/2 × σ_data²/(σ_data² + σ²)-ish; untrained it is ≥ d/2
    assert after < 0.6 * before
    assert after < 0.5 * 64 * 0.9  # below the trivial (zero-score) value d/2 = 32


def test_classifier_training_and_models_run_at_tiny_size():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:600] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target[:600])
    torch.manual_seed(0)
    model = train_classifier(SmallCNN(), x[:500], y[:500], ClassifierTrainConfig(epochs=15))
    assert accuracy(model, x[500:], y[500:]) > 0.8
    wrn = WideResNet(depth=10, widen=1, num_classes=10, in_channels=3).eval()
    assert wrn(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=11)


@pytest.mark.parametrize("method", ["pgd-at", "trades"])
def test_adversarial_training_raises_pgd_accuracy(method):
    from sklearn.datasets import load_digits

    from pursamere.evaluation.attacks import Threat, pgd, robust_accuracy
    from pursamere.method.train import TRADES, PGDAdversary

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    threat = Threat("inf", 0.15)
    cfg = ClassifierTrainConfig(epochs=4, batch_size=64, lr=3e-3)
    kw = {"adversary": PGDAdversary(threat, steps=3)} if method == "pgd-at" else {"trades": TRADES(threat, steps=3)}
    torch.manual_seed(0)
    plain = train_classifier(SmallCNN(width=16), x[:1000], y[:1000], cfg)
    torch.manual_seed(0)
    robust = train_classifier(SmallCNN(width=16), x[:1000], y[:1000], cfg, **kw)
    xt, yt = x[1000:1300], y[1000:1300]
    acc = [robust_accuracy(m, pgd(m, xt, yt, threat, steps=10), yt) for m in (plain, robust)]
    assert acc[1] > acc[0] + 0.1, acc  # measured: PGD-AT 14% → 32%


def test_trades_refuses_bad_settings():
    from pursamere.evaluation.attacks import Threat
    from pursamere.method.train import TRADES

    threat = Threat("inf", 0.15)
    with pytest.raises(ValueError, match="cannot be combined"):
        train_classifier(SmallCNN(width=16), torch.rand(4, 1, 8, 8), torch.arange(4), ClassifierTrainConfig(epochs=1),
                         trades=TRADES(threat), adversary=lambda m, a, b: a)
    with pytest.raises(ValueError, match="ℓ∞ version"):
        TRADES(Threat(2, 1.0))
    with pytest.raises(ValueError, match="beta > 0"):
        TRADES(threat, beta=0.0)


def test_trades_kl_is_kl_of_clean_to_adversarial():
    from pursamere.method.train import TRADES

    clean, adv = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.5]])
    p, q = clean.softmax(1), adv.softmax(1)
    assert float(TRADES.kl(clean, adv)) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    assert float(TRADES.kl(clean, adv)) != pytest.approx(float((q * (q / p).log()).sum()), rel=1e-3)
