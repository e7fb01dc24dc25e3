"""The one-shot GPU script, end to end on the CPU at tiny sizes: it trains, evaluates and keeps its time budget."""
import json
import time

import pytest

from fake_data import fake_cifar  # tests/fake_data.py
from script_module import load_script  # tests/script_module.py


@pytest.fixture(scope="module")
def script():
    return load_script("gpu_oneshot")


def test_runs_end_to_end_and_keeps_its_time_budget(script, tmp_path):
    fake_cifar(tmp_path / "data", {"train": 30, "test": 6})
    out = tmp_path / "out"
    t = time.monotonic()
    minutes = 0.75
    report = script.main(["--tiny", "--device", "cpu", "--minutes", str(minutes), "--out", str(out), "--n", "40",
                          "--data-root", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"),
                          "--book", str(tmp_path / "book")])
    elapsed = time.monotonic() - t
    assert elapsed <= 60 * minutes + 15, elapsed  # the budget, plus interpreter and file-writing slack
    saved = json.loads((out / "gpu.json").read_text())
    assert saved["classifier"]["n_test"] == 60 and 0 <= saved["classifier"]["clean_accuracy"] <= 1
    assert saved["score_passes_per_second"] > 0 and saved["score_passes_per_purification"] == 2 * 4 * 2
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["n"] == 40 and len(res["rows"]) == report["ensemble"]["rows"] >= 1
    assert (out / "table.md").exists() and (tmp_path / "book" / "results.json").exists()
    # either it finished every row or it says where it stopped; finished rows are whole
    # 5 rows for each of the two classifiers without a purifier, 12 for each of the two deterministic purifiers
    assert report["ensemble"]["stopped"] or len(res["rows"]) == 34
    assert all(len(r["survived"]) == 40 for r in res["rows"])


def test_the_paper_models_preset_runs_the_engine_on_an_ncsnv2_checkpoint_and_a_user_classifier(tmp_path, capsys):
    """`--preset cifar10-ncsnv2` wiring: the official architecture (narrow here, for speed) from a checkpoint file,
    the user's classifier from a factory file, the engine's tables on them; and clear errors without them."""
    import torch

    from pursamere.cli import main
    from pursamere.experiments import engine, protocols
    from pursamere.experiments.presets import CIFAR10_NCSNV2
    from pursamere.experiments.protocols import Plan
    from pursamere.experiments.user_models import ClassifierSpec
    from pursamere.method.ncsnv2 import NCSNV2_CONFIGS, NCSNv2

    fake_cifar(tmp_path / "data", {"train": 2, "test": 3})
    narrow = NCSNV2_CONFIGS["cifar10"].replace(ngf=8)
    torch.manual_seed(0)
    torch.save(NCSNv2(narrow).state_dict(), tmp_path / "ncsnv2.pth")
    (tmp_path / "mine.py").write_text("import torch\n\n\ndef make():\n    torch.manual_seed(0)\n"
                                      "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))\n")
    preset = CIFAR10_NCSNV2.replace(data="cifar10-jpeg", ncsnv2_config=narrow, validation_size=4, eps_pur=(8 / 255,),
                                    purify=CIFAR10_NCSNV2.purify.replace(eps_pur=8 / 255, rho=4 / 255, n_levels=2,
                                                                         steps_per_level=1, m=2),
                                    diffpure=CIFAR10_NCSNV2.diffpure.replace(n_levels=2),
                                    adp=CIFAR10_NCSNV2.adp.replace(steps=1, n_runs=1),
                                    threats={"inf": 8 / 255})
    plan = Plan(n_test=6, gpgd_steps=1, bpda_steps=1, bpda_long_steps=2, exact_steps=1, eot=1, check_gradients=())
    opts = engine.Options(data_root=str(tmp_path / "data"), progress=False, log=lambda *a: None,
                          score_checkpoint=str(tmp_path / "ncsnv2.pth"), classifier=ClassifierSpec(f"{tmp_path}/mine.py:make"))
    proto = protocols.tables(preset, plan)
    run = engine.run(preset, dataclasses_replace(proto, diagnostics=False), tmp_path / "out", opts)
    fams = {r["family"] for r in run.results["rows"]}
    assert {"undefended", "PurSAMERE", "ERE descent", "ADP", "DiffPure-style"} <= fams
    assert run.results["meta"]["weights"]["weights"] == "user" and run.results["rows"][0]["n"] == 6
    # without the checkpoint: one clear line, no traceback
    assert main(["demo", "--preset", "cifar10-ncsnv2", "--out", str(tmp_path / "x")]) == 2
    assert "--score-checkpoint" in capsys.readouterr().err


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)
