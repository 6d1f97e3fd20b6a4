"""Every book notebook executes under the smoke profile and writes sane results."""
import json

import nbformat
import pytest

from rmpm.analysis.profiles import get_profile

from rmpm import paths

from rmpm.book import build as book

from rmpm.book import notebooks as NB
from rmpm.analysis import evidence as D

NOTEBOOKS = NB.notebook_paths()


def test_there_are_notebooks():
    assert any(p.stem == "02_populations" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "profile" in NB.notebook_parameters(path)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs committed"
    assert nb.metadata.kernelspec.name == NB.KERNEL_NAME


def _is_ci(c):
    return c["low"] <= c.get("estimate", c.get("r")) <= c["high"]


def _assoc_ok(a):
    return a.estimate is None or (-1 <= a.low <= a.high <= 1 and 0 < a.p_value <= 1)


def _excess_ok(e):
    return -1 <= e.low <= e.high <= 1 and 0 < e.p_value <= 1 and e.churn >= e.accuracy_gap - 1e-12


def _corr_ok(c):
    return -1 <= c["low"] <= c["r"] <= c["high"] <= 1 and 0 <= c["p"] <= 1


# What each chapter must have saved, and what "sane" means for it (smoke numbers
# are weak, so these are range and consistency checks, not claims).
SANE = {
    "01_svcca_checked": lambda v: v["invariance_max_deviation"] < 1e-8
        and v["covariance_cca_max_diff"] < 1e-6 and v["pairwise_max_diff"] < 1e-6,
    "02_populations": lambda v: 0.3 < v["test_acc"]["estimate"] <= 1 and _is_ci(v["test_acc"])
        and all(0 <= x <= 1 for x in v["rm_by_layer"].values()) and v["pm_iid"] > 0,
    "03_rm_by_factor": lambda v: len(v["ranking"]) == 12 and set(v["ranking"]) == set(v["rm_by_factor"])
        and all(_is_ci(c) and 0 <= c["estimate"] for c in v["rm_by_factor"].values())
        and 0 <= v["friedman"]["pvalue"] <= 1 and 0 <= v["friedman"]["kendalls_w"] <= 1
        and 0 < D.C1Evidence.from_dict(v["evidence"]).p_value <= 1,
    "04_pm_iid_ood": lambda v: v["pm_iid"]["estimate"] > 0 and _is_ci(v["pm_iid"])
        and all(_is_ci(c) for c in v["pm_by_severity"].values()) and _corr_ok(v["severity_trend"]),
    "05_rm_vs_pm": lambda v: all(_corr_ok(v["pooled"][s][m]) for s in ("iid", "ood")
                                 for m in ("spearman", "pearson")) and v["n_populations"] == 24
        and _assoc_ok(D.C3Evidence.from_dict(v["evidence"]).iid),
    "06_finite_samples": lambda v: all(_corr_ok(c) for c in (*v["predict_ood_acc"].values(),
                                                             *v["predict_ood_pm"].values()))
        and v["small_sample_size"] > 0
        and all(_assoc_ok(a) for a in vars(D.C2Evidence.from_dict(v["evidence"])).values()
                if isinstance(a, D.Association)),
    "07_exposing_multiplicity": lambda v: 0 <= v["frac_inputs_disputed"] <= v["frac_inputs_disputed_ood"] <= 1
        and len(v["confabulations_per_model"]) == v["n_models"] and 0 <= v["acc_range"] < 0.2
        and _excess_ok(D.C4Evidence.from_dict(v["evidence"]).iid),
    # a toy profile's Claims page shows the numbers but no verdict
    "08_claims": lambda v: set(v["verdicts"]) == {"C1", "C2", "C3", "C4"} and all(
        x["verdict"] in ("not evidence", "not tested") for x in v["verdicts"].values())
        and {r["claim"] for r in v["calibration"]} == {"C1", "C2", "C3", "C4"}
        and v["versions"] == {"rules": 2, "evidence": 1},
    # compared with no other profile: this build's C1 contrasts alone, no verdicts
    "09_regimes": lambda v: v["against"] is None and v["verdicts"] is None
        and len(v["contrasts"]) == 11 and v["rank_agreement"] is None,
}


def test_every_chapter_has_a_sanity_check():
    assert {p.stem for p in NOTEBOOKS} - {"00_methods"} == set(SANE)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_under_smoke(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RMPM_RESULTS", str(tmp_path / "results"))
    out = tmp_path / path.name
    if path.stem == "09_regimes":  # it compares the records of the chapters before it
        NB.execute(path.with_name("03_rm_by_factor.ipynb"), tmp_path / "03.ipynb",
                   {"profile": "smoke"})
    NB.execute(path, out, {"profile": "smoke"})
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "every chapter shows at least one figure"
    res = tmp_path / "results" / f"{path.stem}.json"
    if path.stem in SANE:
        data = json.loads(res.read_text())
        assert data["profile"] == "smoke"
        assert SANE[path.stem](data["values"]), data["values"]


@pytest.mark.trains
def test_population_notebook_results_are_sane(tmp_path, monkeypatch):
    monkeypatch.setenv("RMPM_RESULTS", str(tmp_path))
    NB.execute(paths.notebooks_dir() / "02_populations.ipynb", tmp_path / "o.ipynb",
                 {"profile": "smoke", "n_models": 3})
    v = json.loads((tmp_path / "02_populations.json").read_text())["values"]
    assert v["n_models"] == 3 and len(v["model_keys"]) == 3
    assert 0.3 < v["test_acc"]["estimate"] <= 1.0  # smoke models are weak but far above chance
    assert v["test_acc"]["low"] <= v["test_acc"]["estimate"] <= v["test_acc"]["high"]
    assert all(0.0 <= rm <= 1.0 for rm in v["rm_by_layer"].values())
    assert v["pm_iid"] > 0.0
    # every data set's reference population, and every factor population's spread
    [ds] = v["accuracy_by_dataset"]
    assert ds["dataset"] == "fashion_mnist" and ds["min"] <= ds["test_acc"] <= ds["max"]
    assert ds["floor"] is None and ds["every model reaches it"] is None  # smoke sets no floor
    pops = v["population_accuracy"]
    assert {p["factor"] for p in pops} == set(get_profile("smoke").factors)
    assert all(p["min"] <= p["test_acc"] <= p["max"] and p["models"] == 4 for p in pops)


def test_unknown_parameter_is_refused_with_the_allowed_ones(tmp_path):
    path = paths.notebooks_dir() / "02_populations.ipynb"
    with pytest.raises(ValueError, match=r"has no parameter\(s\) n_model; its parameters are: .*n_models.*profile"):
        NB.execute(path, tmp_path / "o.ipynb", {"profile": "smoke", "n_model": 3})


def test_unknown_profile_is_refused(tmp_path):
    path = paths.notebooks_dir() / "02_populations.ipynb"
    with pytest.raises(ValueError, match="profile='tiny' is not allowed; choose one of: 'smoke', 'smoke_multi', 'default', 'large', 'paper'"):
        NB.execute(path, tmp_path / "o.ipynb", {"profile": "tiny"})
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
        NB.execute(path, tmp_path / "o.ipynb", {"profile": "smoke", "dataset": "cifar10"})
    assert not (tmp_path / "o.ipynb").exists()


# The chapters whose code branches on several data sets (pooling across data sets,
# one panel per data set, C3's data-set cap). Under smoke and default there is one
# data set, so only this test runs those branches before a paper build does.
MULTI = ["03_rm_by_factor", "04_pm_iid_ood", "05_rm_vs_pm", "08_claims"]


@pytest.mark.notebook
def test_cross_dataset_chapters_run_under_smoke_multi(tmp_path, monkeypatch):
    monkeypatch.setenv("RMPM_RESULTS", str(tmp_path / "results"))
    both = ["fashion_mnist", "digits"]
    by_stem = {p.stem: p for p in NOTEBOOKS}
    values = {}
    for stem in MULTI:
        out = tmp_path / f"{stem}.ipynb"
        NB.execute(by_stem[stem], out, {"profile": "smoke_multi"})
        nb = nbformat.read(out, as_version=4)
        assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if o.get("output_type") == "error"], stem
        data = json.loads((tmp_path / "results" / f"{stem}.json").read_text())
        assert data["profile"] == "smoke_multi"
        values[stem] = data["values"]
        if stem in SANE and stem != "05_rm_vs_pm":  # 05's check counts one data set's populations
            assert SANE[stem](values[stem]), values[stem]
    for stem in MULTI[:3]:
        assert values[stem]["datasets"] == both and values[stem]["n_populations"] == 48, stem
    assert values["03_rm_by_factor"]["friedman"]["n_blocks"] == 4  # 2 data sets x 2 replicates
    c1 = D.C1Evidence.from_dict(values["03_rm_by_factor"]["evidence"])
    assert c1.n_blocks == 4 and c1.n_datasets == 2 and c1.p_datasets is not None
    c3 = D.C3Evidence.from_dict(values["05_rm_vs_pm"]["evidence"])
    assert c3.n_datasets == 2 and set(c3.iid.per_dataset) == set(both) \
        and set(c3.iid.leave_one_out) == set(both)
    rm_pm = values["05_rm_vs_pm"]
    assert set(rm_pm["per_dataset"]) == set(both)
    assert all(_corr_ok(rm_pm["pooled"][s][m]) for s in ("iid", "ood") for m in ("spearman", "pearson"))
    claims = values["08_claims"]
    assert claims["n_datasets"] == 2
    # a toy profile: numbers, no verdicts
    assert claims["verdicts"]["C1"]["verdict"] == claims["verdicts"]["C3"]["verdict"] == "not evidence"
