"""Run every toy notebook through papermill with small parameters and check the numbers it saves."""
import json
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

TINY = {
    "01_ere_on_toys": dict(grid=21, landscape_sigmas=[0.3], prop1_n=5, n_nodes=30),
    "02_theorem1": dict(n_sigmas=6, purifier_sigmas=[0.2, 0.1], purifier_steps=20),
    "03_sam_and_sliders": dict(n_starts=8, seeds=[0], steps=50, rhos=[0.3], lrs=[0.1],
                               view_grid=15, view_steps=10),
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


def test_every_notebook_has_a_parameters_cell_and_the_python3_kernel():
    for name in TINY:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "results_json" in tagged[0].source
        assert not any("sys.path" in c.source for c in nb.cells)


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
