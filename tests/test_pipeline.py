"""The TINY end-to-end run: trains, purifies, attacks, writes results/table/plots; the CLI."""
import json

import pytest

from pursamere.cli import main
from pursamere.experiments.presets import DIGITS, TINY, get_preset, ncsnv2_gamma, ncsnv2_ladder


def test_tiny_end_to_end_through_the_cli(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    rc = main(["demo", "--preset", "tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    names = {r["defence"] for r in res["rows"]}
    for want in ("undefended", "PurSAMERE ε_pur=0.15", "PurSAMERE ε_pur=0.3", "ADP", "ADP (fixed seed)",
                 "DiffPure-style", "DiffPure-style (fixed seed)"):
        assert want in names
    for r in res["rows"]:
        assert r["n"] == TINY.demo.n_test and 0 <= r["robust_acc"] <= r["clean_acc"] + 1e-12
        assert r["ci95"][0] <= r["robust_acc"] <= r["ci95"][1] and len(r["survived"]) == r["n"]
    assert {w["norm"] for w in res["worst_case"]} == {"inf", "2", "1"}
    table = (out / "table.md").read_text()
    assert "worst case" in table and "Obfuscation checks" in table
    assert (out / "robust_accuracy.png").stat().st_size > 1000 and (out / "examples.png").stat().st_size > 1000
    assert len(json.loads((out / "checks.json").read_text())) == 2 and not (out / "checks-in-progress").exists()
    diag = json.loads((out / "score_diagnostics.json").read_text())
    assert all(0 <= d["auroc"] <= 1 for d in diag["ere_detection"]) and (out / "samples.png").exists()
    # `pursamere purify` on a user's PNGs with the trained tiny score net
    from pursamere.experiments.data import load_digits_split
    from pursamere.experiments.images import load_images, save_images

    save_images(load_digits_split().x_test[:2], tmp_path / "in")
    assert main(["purify", str(tmp_path / "in"), "--out", str(tmp_path / "pur"), "--preset", "tiny",
                 "--workdir", str(tmp_path / "work")]) == 0
    purified, _ = load_images(tmp_path / "pur")
    original, _ = load_images(tmp_path / "in")
    assert purified.shape == original.shape and (purified - original).abs().max() <= TINY.purify.eps_pur + 1 / 255
    assert main(["purify", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--preset", "tiny"]) == 2
    # hostile inputs: one error line naming the file and the problem, no traceback, nothing written
    capsys.readouterr()
    bomb = tmp_path / "bomb.png"
    _png_declaring(bomb, 60000, 60000)
    import numpy as np

    np.save(tmp_path / "rgb.npy", np.random.rand(2, 3, 32, 32).astype(np.float32))
    for bad, why in ((bomb, "60000x60000"), (tmp_path / "rgb.npy", "(3, 32, 32), but this model takes (1, 8, 8)")):
        assert main(["purify", str(bad), "--out", str(tmp_path / "bad-out"), "--preset", "tiny",
                     "--workdir", str(tmp_path / "work")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pursamere: error: ") and str(bad) in err and why in err, err
        assert not (tmp_path / "bad-out").exists()
    (tmp_path / "empty.npy").write_bytes(b"")
    from pursamere.experiments import artifacts

    def no_purifying(*a, **k):
        raise AssertionError("the score net was loaded for a purification whose --out is refused")

    with monkeypatch.context() as mp:
        mp.setattr(artifacts, "load_trained_score", no_purifying)  # the refusals come before any purifying
        for src, out_name, why in ((tmp_path / "empty.npy", "bad-out", "not a .npy file"), (tmp_path / "in", "bad-out.jpg", "not .jpg"),
                                   (tmp_path / "in", "empty.npy/x", "empty.npy is a file")):
            assert main(["purify", str(src), "--out", str(tmp_path / out_name), "--preset", "tiny",
                         "--workdir", str(tmp_path / "work")]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("pursamere: error: ") and why in err, err
            assert not (tmp_path / out_name).exists()
    # a finished run is never overwritten silently
    assert main(["demo", "--preset", "tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
    # --resume reuses the finished rows and the recorded obfuscation checks (never runs them again) ...
    from pursamere.experiments import engine

    checks = json.loads((out / "checks.json").read_text())
    assert all(c["defence_fingerprint"] and c["data_fingerprint"] and c["steps"] >= 1 for c in checks)

    def no_recompute(*a, **k):
        raise AssertionError("a recorded obfuscation check was run again")

    monkeypatch.setattr(engine, "obfuscation_checks", no_recompute)
    again = ["demo", "--preset", "tiny", "--workdir", str(tmp_path / "work"), "--out", str(out), "--resume"]
    assert main(again) == 0
    assert json.loads((out / "checks.json").read_text()) == checks and "Obfuscation checks" in (out / "table.md").read_text()
    # a reused failure warns as a fresh one does
    from pursamere.evaluation.checks import ObfuscationWarning

    failed = [dict(c, checks=[dict(k, passed=False) if j == 0 else k for j, k in enumerate(c["checks"])]) for c in checks]
    (out / "checks.json").write_text(json.dumps(failed))
    with pytest.warns(ObfuscationWarning, match="obfuscation check FAILED"):
        assert main(again) == 0
    # ... but a check recorded with other settings (its step count) or unreadable is run again
    for bad in ([dict(c, steps=c["steps"] + 1) for c in checks], [dict(c, checks=[{"name": "x"}]) for c in checks]):
        (out / "checks.json").write_text(json.dumps(bad))
        with pytest.raises(AssertionError, match="run again"):
            main(again)
    # a run stopped inside the checks keeps the ones it finished, and its resumption runs only the rest
    assert len(checks) == 2
    from pursamere.evaluation import checks as checks_module

    calls = []

    class Stop(Exception):
        pass

    def first_then_stop(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise Stop
        return checks_module.obfuscation_checks(*a, **k)

    (out / "checks.json").unlink()
    monkeypatch.setattr(engine, "obfuscation_checks", first_then_stop)
    with pytest.raises(Stop):
        main(again)
    assert json.loads((out / "checks.json").read_text()) == checks[:1]
    calls.clear()
    monkeypatch.setattr(engine, "obfuscation_checks", lambda *a, **k: (calls.append(1), checks_module.obfuscation_checks(*a, **k))[1])
    assert main(again) == 0 and len(calls) == 1
    assert json.loads((out / "checks.json").read_text()) == checks


def _png_declaring(path, width, height):
    """A tiny PNG whose header declares ``width × height`` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))


def test_presets_follow_ncsnv2_rules_and_paper_settings():
    from pursamere.experiments.data import load_digits_split

    first, last, n = ncsnv2_ladder(load_digits_split().x_train, 0.01)
    assert DIGITS.sigma_first == pytest.approx(first, abs=0.01) and DIGITS.n_sigmas == n
    assert ncsnv2_gamma(3072) == pytest.approx(1.04, abs=0.003)  # NCSNv2's CIFAR-10 ratio ≈ 1.0376
    c = get_preset("cifar10")
    assert c.threats == {"inf": 8 / 255, 2: 0.5, 1: 12.0} and c.n_sigmas == 232 and c.sigma_first == 50.0
    assert c.purify.m == 4 and c.purify.rho == pytest.approx(c.purify.eps_pur / 2) and c.classifier == "wrn-28-10"
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("mnist")


def test_cli_adversarial_training_on_tiny(tmp_path, capsys):
    assert main(["train-classifier", "--preset", "tiny", "--workdir", str(tmp_path), "--adversarial",
                 "--pgd-steps", "2", "--n", "50"]) == 0
    out = capsys.readouterr().out
    assert "adversarial (PGD-2" in out and (tmp_path / "tiny" / "classifier_adv_cli.pt").exists()
    assert main(["train-classifier", "--preset", "tiny", "--workdir", str(tmp_path), "--trades", "--pgd-steps", "2",
                 "--n", "50"]) == 0
    assert "TRADES (β = 6" in capsys.readouterr().out and (tmp_path / "tiny" / "classifier_trades_cli.pt").exists()
    assert main(["train-classifier", "--preset", "tiny", "--workdir", str(tmp_path), "--trades", "--adversarial"]) == 2
