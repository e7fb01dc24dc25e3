"""Run every toy notebook through papermill with small parameters and check the numbers it saves."""
import dataclasses
import json
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

TINY = {
    "01_ere_on_toys": dict(grid=21, landscape_sigmas=[0.3], prop1_n=5, n_nodes=30, slider_grid=9,
                           slider_sigmas=[0.5, 0.2], slider_ms=[4, 8], prop1_slider_sigmas=[0.3, 0.1]),
    "02_theorem1": dict(n_sigmas=6, purifier_sigmas=[0.2, 0.1], purifier_steps=20, slider_sigmas=[0.3, 0.15],
                        slider_grid=9),
    "03_sam_and_sliders": dict(n_starts=8, seeds=[0], steps=50, rhos=[0.3], lrs=[0.1],
                               view_grid=15, view_steps=10, slider_sigmas=[0.06, 0.12], slider_rhos=[0.0, 0.3],
                               slider_eps=[0.5, 2.0]),
}


def run(name, tmp_path):
    out_json = tmp_path / f"{name}.json"
    out_nb = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(out_nb), kernel_name="python3",
        parameters={**TINY[name], "results_json": str(out_json)}, cwd=str(NOTEBOOKS), progress_bar=False,
    )
    nb = nbformat.read(out_nb, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return json.loads(out_json.read_text())


def _checked_notebook(name):
    """A valid notebook on the python3 kernel, and its cells tagged ``parameters``."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    return nb, [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


def test_every_notebook_has_a_parameters_cell_and_the_python3_kernel():
    for name in TINY:
        nb, tagged = _checked_notebook(name)
        assert len(tagged) == 1 and "results_json" in tagged[0].source
        assert not any("sys.path" in c.source for c in nb.cells)


ALL_CHAPTERS = ("01_ere_on_toys", "02_theorem1", "03_sam_and_sliders", "04_digits", "05_attacks_and_baselines",
                "06_cifar10_gpu", "07_worst_case", "08_your_purifier")


def test_chapters_open_with_their_idea_and_hide_plumbing():
    """The tag convention of the rendered book (book/reproducibility.md): a markdown introduction
    first; the parameters cell collapsed (``hide-cell``, still tagged ``parameters`` for papermill);
    imports, ``%matplotlib inline`` and thread settings in one collapsed setup cell; the cell that
    writes ``results_json`` removed from the page (``remove-cell``)."""
    for name in ALL_CHAPTERS:
        nb, tagged = _checked_notebook(name)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), name
        assert "hide-cell" in tagged[0].metadata.tags, name
        code = [c for c in nb.cells if c.cell_type == "code"]
        for c in code:
            tags = c.metadata.get("tags", [])
            plumbing = "%matplotlib" in c.source or "set_num_threads" in c.source or "import " in c.source
            if plumbing:
                assert {"hide-cell"} & set(tags) or {"remove-cell"} & set(tags), (name, c.source[:60])
            if "results_json" in c.source and "parameters" not in tags:
                assert "remove-cell" in tags, (name, c.source[:60])
        # the toy chapters' teaching code stays on the page: at least one interactive slider figure, visible
        if name in TINY:
            assert any("sliders." in c.source and not c.metadata.get("tags") for c in code), name


def test_01_prop1_slope(tmp_path):
    res = run("01_ere_on_toys", tmp_path)
    assert abs(res["prop1_slope"] - 4.0) < 0.3
    assert all(abs(s - 4.0) < 0.3 for s in res["prop1_slopes"])


def test_02_theorem1(tmp_path):
    res = run("02_theorem1", tmp_path)
    err = res["theorem1_errors"]
    assert res["theorem1_r2"] >= 0.95 and res["theorem1_slope"] < 0
    assert all(b < a for a, b in zip(err, err[1:]))
    assert res["broken_r2"] < 0.95  # the broken case does not follow the exponential law
    assert max(max(r) for r in res["purifier_errors_antithetic"]) < 0.05
    assert min(min(r) for r in res["purifier_errors_plain"]) > 0.3


def test_03_sam_beats_plain(tmp_path):
    res = run("03_sam_and_sliders", tmp_path)
    assert res["sam_rate"] > res["plain_rate"]


# ---------------------------------------------------------------- chapters 4–6: the digits pipeline
# One TINY pipeline run (trained and evaluated once, ~a minute on 2 cores) is shared by the three
# chapters: each is run with live_preset="tiny" and finds the finished run in run_dir.
PIPELINE_NOTEBOOKS = ("04_digits", "05_attacks_and_baselines", "06_cifar10_gpu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pursamere.experiments import engine, protocols
    from pursamere.experiments.presets import TINY

    root = tmp_path_factory.mktemp("tiny_pipeline")
    plan = dataclasses.replace(TINY.demo, check_gradients=("bpda",))  # halves the checklist: the pages only display it
    engine.run(TINY, protocols.tables(TINY, plan), root / "run",
               engine.Options(workdir=str(root / "work"), progress=False, log=lambda *a: None))
    return root


def run_pipeline_notebook(name, tiny_run, tmp_path, **extra):
    out_json = tmp_path / f"{name}.json"
    out_nb = tmp_path / f"{name}.ipynb"
    params = dict(live_preset="tiny", run_dir=str(tiny_run / "run"), live_workdir=str(tiny_run / "work"),
                  results_json=str(out_json), **extra)
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out_nb), kernel_name="python3",
                               parameters=params, cwd=str(NOTEBOOKS), progress_bar=False)
    nb = nbformat.read(out_nb, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    assert "No recorded run" not in text  # the shared run was found
    return json.loads(out_json.read_text())


def unit_interval(d):
    """Every number in a nested dict of accuracies lies in [0, 1]."""
    vals = [v for x in d.values() for v in (unit_values(x))]
    return vals and all(0.0 <= v <= 1.0 for v in vals)


def unit_values(x):
    if isinstance(x, dict):
        return [v for y in x.values() for v in unit_values(y)]
    return [x]


def test_pipeline_notebooks_have_the_live_and_recorded_parameters():
    for name in PIPELINE_NOTEBOOKS:
        nb, tagged = _checked_notebook(name)
        assert len(tagged) == 1
        for p in ("results_json", "run_dir", "live_preset = None"):
            assert p in tagged[0].source, (name, p)
        assert any("torch.set_num_threads(1)" in c.source for c in nb.cells)
        assert not any("sys.path" in c.source for c in nb.cells)


def test_04_digits_on_the_tiny_run(tiny_run, tmp_path):
    res = run_pipeline_notebook("04_digits", tiny_run, tmp_path)
    assert res["preset"] == "tiny" and res["n"] == 12
    assert {"undefended", "ADP", "DiffPure-style"} <= set(res["worst_case"])
    assert any(d.startswith("PurSAMERE") for d in res["worst_case"])
    assert all(set(v) <= {"linf", "l2", "l1"} for v in res["worst_case"].values())
    assert unit_interval(res["worst_case"]) and unit_interval(res["clean"]) and unit_interval(res["table3_mean"])
    assert 0.0 <= res["auroc_best"] <= 1.0 and 0.0 <= res["checks_passed_fraction"] <= 1.0
    for d, v in res["worst_case"].items():  # the headline never exceeds clean accuracy
        assert all(acc <= res["clean"][d] + 1e-12 for acc in v.values())


def test_05_attacks_and_baselines_on_the_tiny_run(tiny_run, tmp_path):
    res = run_pipeline_notebook("05_attacks_and_baselines", tiny_run, tmp_path, eps_sweep_dir=str(tmp_path / "none"))
    assert res["preset"] == "tiny" and res["eps_curve_source"] == "main run"
    assert unit_interval(res["linf_by_gradient"]) and unit_interval(res["worst_case_linf"])
    pur = [d for d in res["linf_by_gradient"] if d.startswith("PurSAMERE")]
    assert pur and all({"gray-box (gPGD)", "BPDA", "exact gradient"} <= set(res["linf_by_gradient"][d]) for d in pur)
    # the worst case is at most every single attack
    for d in pur:
        assert res["worst_case_linf"][d] <= min(res["linf_by_gradient"][d].values()) + 1e-12
    assert all(-1.0 <= g <= 1.0 for g in res["exact_minus_bpda"].values()) and set(pur) <= set(res["exact_minus_bpda"])
    assert all(0.0 <= p["robust"] <= 1.0 for p in res["eps_curve"])


def test_06_cifar10_cost_model_and_tiny_run(tiny_run, tmp_path):
    from pursamere.experiments.presets import CIFAR10

    res = run_pipeline_notebook("06_cifar10_gpu", tiny_run, tmp_path, device="cpu", plan="full")
    c = CIFAR10.purify
    assert res["score_evals_per_purification"] == c.steps * c.m * 2 == 240  # K·M·(1+SAM), the paper's recipe
    per = res["score_evals_per_image"]
    assert per["BPDA200-det"] == 201 * 240 and per["BPDA20-det"] == 21 * 240
    assert res["run_preset"] == "tiny" and unit_interval(res["worst_case"]) and unit_interval(res["clean"])


def test_07_worst_case_live_tiny(tiny_run, tmp_path):
    """Chapter 7 runs the tiny ensemble and both studies live and reports consistent numbers."""
    name = "07_worst_case"
    nb, tagged = _checked_notebook(name)
    assert len(tagged) == 1 and "live_preset = None" in tagged[0].source
    out_json = tmp_path / f"{name}.json"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"), kernel_name="python3",
                               parameters=dict(live_preset="tiny", live_workdir=str(tiny_run / "work"),
                                               results_json=str(out_json)),
                               cwd=str(NOTEBOOKS), progress_bar=False)
    out = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
    errors = [o for c in out.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    res = json.loads(out_json.read_text())
    assert {"undefended", "PGD-AT", "TRADES"} <= set(res["worst_case"]) and unit_interval(res["worst_case"])
    for d, by_eps in res["worst_case"].items():  # the worst case never exceeds the best single attack
        for e, acc in by_eps.items():
            single = res["best_single"][d][e]
            assert single is None or acc <= single + 1e-12
            assert acc <= res["clean"][d] + 1e-12
    assert res["attack_study_worst"] <= min(res["attack_study"].values()) + 1e-12
    conv = res["convergence"]  # the live three-point ladder ran for every defence and was read back
    assert {(c["steps"], c["restarts"]) for c in conv} == {(1, 1), (2, 1), (1, 2)}
    for d in {c["defence"] for c in conv}:
        base = next(c for c in conv if c["defence"] == d and (c["steps"], c["restarts"]) == (1, 1))
        assert all(0 <= c["worst_case"] <= 1 for c in conv if c["defence"] == d) and base["n"] == 12
    v = res["sam_verdict"]
    assert v["n_sam_settings"] == sum(1 for s in res["sam_study"].values() if s["kind"] != "off")
    assert v["best_worst_case"] == max(r["worst_case"] for r in res["sam_study"].values())


def test_08_your_purifier(tmp_path):
    """The 'evaluate your own purifier' chapter: a median filter and a noisy one through evaluate_purifier."""
    name = "08_your_purifier"
    nb, tagged = _checked_notebook(name)
    assert len(tagged) == 1
    out_json = tmp_path / f"{name}.json"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"), kernel_name="python3",
                               parameters=dict(results_json=str(out_json), n_images=30, epochs=2),
                               cwd=str(NOTEBOOKS), progress_bar=False)
    res = json.loads(out_json.read_text())
    assert set(res["worst_case"]) == {"no purifier", "median filter", "noisy median filter",
                                      "noisy median filter (fixed seed 0)"}
    for d, acc in res["worst_case"].items():  # the worst case is at most every attack and the clean accuracy
        assert acc <= min(res["per_attack"][d].values()) + 1e-12 and acc <= res["clean"][d] + 1e-12
    assert res["paired_median_vs_none"]["n"] == 30


def _recorded_run(name, tmp_path):
    """A chapter run as the book builds it (default parameters: the recorded tables): its notebook, with no cell
    failed, and its results JSON."""
    out_json, out_nb = tmp_path / f"{name}.json", tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out_nb), kernel_name="python3",
                               parameters={"results_json": str(out_json)}, cwd=str(NOTEBOOKS), progress_bar=False)
    nb = nbformat.read(out_nb, as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    return nb, json.loads(out_json.read_text())


def test_06_on_the_recorded_table_counts_its_longer_suites(tmp_path):
    """Chapter 6 as the book builds it (the recorded CIFAR-10 table, no live run): its headline and findings give
    each row at its worst case over the 20-step table and the recorded 40- and 80-step suites."""
    from pursamere.book import cifar10 as chapter
    from pursamere.evaluation.results import over_longer_suites, read_results

    name = "06_cifar10_gpu"
    nb, res = _recorded_run(name, tmp_path)
    data = NOTEBOOKS.parent / "book" / "data"
    table = read_results(data / "cifar10-cpu-table")
    rungs = chapter.longer_suites(table, [(40, data / "cifar10-cpu-table-40"), (80, data / "cifar10-cpu-table-80"),
                                          (160, data / "cifar10-cpu-table-160")])
    merged = over_longer_suites(table, rungs)
    for w in merged["worst_case"]:
        if w["norm"] == "inf":
            assert res["worst_case"][w["defence"]]["linf"] == w["robust_acc"], w["defence"]
    shown = {(s["defence"], s["norm"]): s for s in res["over_all_suites"]}
    assert any(s["longer_suites"] for s in shown.values()) == bool(rungs)
    assert any("-step suite" in f for f in res["findings"]) == any(w.get("longer_suites") for w in merged["worst_case"])
    # the other rows (--part rest), each at its worst case over what has run (an upper bound until it finishes), over
    # both suites where the 40-step check of their PurSAMERE rows has run
    if (data / "cifar10-cpu-rest" / "results.json").is_file():
        rest = read_results(data / "cifar10-cpu-rest")
        rest = over_longer_suites(rest, chapter.longer_suites(rest, [(40, data / "cifar10-cpu-rest-40")]))
        assert res["rest"]["n"] == rest["meta"]["n"] == 128
        assert {(w["defence"], f"l{w['norm']}"): w["robust_acc"] for w in rest["worst_case"]} == \
            {(d, k): v for d, row in res["rest"]["worst_case"].items() for k, v in row.items()}
    else:
        assert "rest" not in res
    # the purifiers in front of the eq.-17 classifier (the paper's pairing), on the same images as the table
    if (data / "cifar10-cpu-eq17" / "results.json").is_file():
        eq17 = read_results(data / "cifar10-cpu-eq17")
        assert res["eq17"]["n"] == eq17["meta"]["n"] == table["meta"]["n"]
        assert {(w["defence"], f"l{w['norm']}"): w["robust_acc"] for w in eq17["worst_case"]} == \
            {(d, k): v for d, row in res["eq17"]["worst_case"].items() for k, v in row.items()}
    else:
        assert "eq17" not in res
    # the obfuscation checks, one line per purifier and gradient the table's checks.json holds
    text = "\n".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    for e in json.loads((data / "cifar10-cpu-table" / "checks.json").read_text()):
        assert f"{e['defence']}, {e['gradient']}, n = {e['n']}: " in text


def test_07_on_the_recorded_tables_counts_every_longer_suite(tmp_path):
    """Chapter 7 as the book builds it (the recorded digits tables, no live run): its whole-test-set headline gives
    each row at its worst case over the 80-step table and every recorded longer suite (160 steps, then 320 for ERE
    descent at ε = 0.2), the same merge the README's digits table is written from."""
    from pursamere.evaluation.results import over_longer_suites, read_results

    from script_module import load_script  # tests/script_module.py

    rt = load_script("record_tables")
    name = "07_worst_case"
    nb, res = _recorded_run(name, tmp_path)
    data = NOTEBOOKS.parent / "book" / "data"
    rungs = []
    for table, steps in rt.RUNGS["digits-whole-test"]:
        if not (data / table / "results.json").is_file():
            break
        rungs.append((steps, read_results(data / table)))
    merged = over_longer_suites(read_results(data / "digits-whole-test"), rungs)
    want = {(w["defence"], w["eps"]): (w["robust_acc"], [s["steps"] for s in w.get("longer_suites") or []])
            for w in merged["worst_case"]}
    got = {(r["defence"], r["eps"]): (r["robust_acc"], r["longer_suites"]) for r in res["whole_test_over_all_suites"]}
    assert got == want and len(got) == 30
    assert any(s for _, s in got.values())  # the 160-step suite is recorded: some row counts it
    redraws = data / "digits-redraws" / "redraws.json"
    if redraws.is_file():  # the stochastic rows' second draw, as recorded (scripts/record_redraws.py)
        assert res["redraws"] == json.loads(redraws.read_text())["rows"]
