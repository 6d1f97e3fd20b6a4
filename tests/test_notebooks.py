"""Every book notebook executes under the smoke profile and writes sane results."""
import json

import nbformat
import pytest

from rmpm import book, paths

NOTEBOOKS = book.notebook_paths()


def test_there_are_notebooks():
    assert any(p.stem == "02_populations" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "profile" in book.notebook_parameters(path)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs committed"
    assert nb.metadata.kernelspec.name == book.KERNEL_NAME


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_under_smoke(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RMPM_RESULTS", str(tmp_path / "results"))
    out = tmp_path / path.name
    book.execute(path, out, {"profile": "smoke"})
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "every chapter shows at least one figure"
    res = tmp_path / "results" / f"{path.stem}.json"
    if res.exists():
        data = json.loads(res.read_text())
        assert data["profile"] == "smoke" and data["values"]


def test_population_notebook_results_are_sane(tmp_path, monkeypatch):
    monkeypatch.setenv("RMPM_RESULTS", str(tmp_path))
    book.execute(paths.notebooks_dir() / "02_populations.ipynb", tmp_path / "o.ipynb",
                 {"profile": "smoke", "n_models": 3})
    v = json.loads((tmp_path / "02_populations.json").read_text())["values"]
    assert v["n_models"] == 3 and len(v["model_keys"]) == 3
    assert 0.3 < v["test_acc"]["estimate"] <= 1.0  # smoke models are weak but far above chance
    assert v["test_acc"]["low"] <= v["test_acc"]["estimate"] <= v["test_acc"]["high"]
    assert all(0.0 <= rm <= 1.0 for rm in v["rm_by_layer"].values())
    assert v["pm_iid"] > 0.0


def test_unknown_parameter_is_refused_with_the_allowed_ones(tmp_path):
    path = paths.notebooks_dir() / "02_populations.ipynb"
    with pytest.raises(ValueError, match=r"has no parameter\(s\) n_model; its parameters are: .*n_models.*profile"):
        book.execute(path, tmp_path / "o.ipynb", {"profile": "smoke", "n_model": 3})


def test_unknown_profile_is_refused(tmp_path):
    path = paths.notebooks_dir() / "02_populations.ipynb"
    with pytest.raises(ValueError, match="profile='tiny' is not allowed; choose one of: 'smoke', 'default', 'paper'"):
        book.execute(path, tmp_path / "o.ipynb", {"profile": "tiny"})
    with pytest.raises(ValueError, match="profile='tiny' is not allowed"):
        book.run_notebooks("tiny")


def test_cli_reports_bad_profile(capsys):
    from rmpm.cli import main
    with pytest.raises(SystemExit):
        main(["book", "--profile", "tiny"])
    assert "invalid choice: 'tiny'" in capsys.readouterr().err


def test_unknown_dataset_is_refused_before_running(tmp_path):
    path = paths.notebooks_dir() / "02_populations.ipynb"
    with pytest.raises(ValueError, match="dataset='cifar10' is not allowed; choose one of: 'fashion_mnist'"):
        book.execute(path, tmp_path / "o.ipynb", {"profile": "smoke", "dataset": "cifar10"})
    assert not (tmp_path / "o.ipynb").exists()
