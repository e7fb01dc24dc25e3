"""Shipped models: a preset's trained models as verified safetensors files that any command can use."""
import json

import pytest

from pursamere.experiments.artifacts import load_shipped, prepare, ship
from pursamere.experiments.presets import DIGITS, TINY
from pursamere.experiments.weights import WeightsError, manifest
from pursamere.method.train import accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ship_and_load_round_trip(tmp_path):
    arts = prepare(TINY, tmp_path / "work", progress=False, log=lambda *a: None)
    root = tmp_path / "weights"
    ship(TINY, arts, "python scripts/ship_weights.py --preset tiny", root=root)
    assert set(manifest(root)) == {"tiny/score", "tiny/plain", "tiny/eq17", "tiny/pgd-at", "tiny/trades"}
    back = load_shipped(TINY, root=root, log=lambda *a: None)
    assert back.fingerprints() == arts.fingerprints()  # bit for bit the models that were trained
    # models trained with other settings are refused, with what to do
    with pytest.raises(ValueError, match="other settings"):
        load_shipped(TINY.replace(purify=TINY.purify.replace(eps_pur=0.2)), root=root, log=lambda *a: None)
    # an altered file is refused, naming it
    f = root / "tiny" / "plain.safetensors"
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 1
    f.write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="plain.safetensors"):
        load_shipped(TINY, root=root, log=lambda *a: None)


def test_the_shipped_digits_models_match_the_preset():
    """The models behind book/data: their manifest matches the DIGITS preset as it is now (change the preset
    and this fails until `python scripts/ship_weights.py --preset digits` is run again)."""
    arts = load_shipped(DIGITS, log=lambda *a: None)
    entries = manifest()
    for cid, clf in arts.classifiers.items():
        acc = accuracy(clf, arts.split.x_test, arts.split.y_test)
        assert acc == pytest.approx(entries[f"digits/{cid}"]["meta"]["test_accuracy"], abs=1e-9), cid
        assert acc > 0.85, (cid, acc)
    assert "ship_weights.py" in entries["digits/score"]["meta"]["command"]


def test_cli_runs_on_shipped_weights(tmp_path, capsys):
    from pursamere.cli import main

    out = tmp_path / "out"
    assert main(["evaluate", "--preset", "digits", "--weights", "shipped", "--n", "4", "--attacks", "bpda20-det",
                 "--defences", "undefended", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    shipped = manifest()["digits/plain"]["meta"]
    assert res["rows"][0]["classifier"] == "plain" and res["meta"]["models"]["plain"]
    assert shipped["preset"] == "digits"
