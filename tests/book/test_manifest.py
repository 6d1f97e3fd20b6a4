"""Manifests and ``rmpm verify``: identical entries match bit for bit, a changed one is
reported with its largest difference, a missing one as missing, and changed verdicts
are named."""
import json
import shutil

import numpy as np
import pytest
import torch

from rmpm.book import manifest as M
from rmpm.book import records as R
from rmpm.cli import main
from rmpm.pipeline.evaluate import EvalSpec
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.runs import run_recipes
from rmpm.pipeline.store import Store
from rmpm.book import builds as BD
from rmpm.book import reproducibility as RP

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains

TINY = Recipe(dataset="digits", arch="mlp", width=8, epochs=1, batch_size=64, lr=5e-3)
SPEC = EvalSpec(n_test=60, n_probe=30)
RECIPES = [TINY, TINY.replace(init_seed=1)]


@pytest.fixture()
def built(tmp_path):
    store = Store(tmp_path / "store")
    run_recipes(RECIPES, SPEC, store, "cpu", progress=False, workers=0, deterministic=False)
    res = tmp_path / "results"
    res.mkdir()
    (res / "03_rm_by_factor.json").write_text(json.dumps(
        {"name": "03_rm_by_factor", "profile": "smoke", "written": "then",
         "values": {"rm": 0.25, "table": [1.0, 2.0]}}))
    man = M.compute(RECIPES, SPEC.key(), store, res, environment={"profile": "smoke"})
    path = M.write(man, tmp_path / "manifest.json")
    return store, res, path


def test_digests_are_of_content_not_files(built, tmp_path):
    store, res, _ = built
    e = store.model(TINY)
    d = M.model_digest(e)
    assert d == M.model_digest(e) and d != M.model_digest(store.model(RECIPES[1]))
    # re-saving the same arrays (new zip timestamps) keeps the evaluation's digest
    ev = store.eval(TINY, SPEC.key())
    before = M.eval_digest(ev)
    from rmpm.pipeline.store import save_npz
    save_npz(ev.path / "arrays.npz", ev.arrays())
    assert M.eval_digest(ev) == before
    # a result file's time stamp does not count, its values do
    doc = json.loads((res / "03_rm_by_factor.json").read_text())
    assert R.content_digest(doc["values"]) == R.content_digest({**doc["values"]})
    assert R.content_digest({"rm": 0.25, "seconds": 1}) == R.content_digest({"rm": 0.25, "seconds": 2})
    assert R.content_digest({"rm": 0.25}) != R.content_digest({"rm": 0.26})
    # timings and cache provenance of a calibration are not results (two clean CI
    # builds of the default book differed only in them: 55.8 s vs 60.2 s)
    a = {"calibration": [{"rate": 0.043, "seconds": 0.33, "cached": False}],
         "calibration_cost": {"seconds_to_compute": 55.8, "seconds_computed_now": 55.8}}
    b = {"calibration": [{"rate": 0.043, "seconds": 0.30, "cached": True}],
         "calibration_cost": {"seconds_to_compute": 60.2, "seconds_computed_now": 0.0}}
    assert R.content_digest(a) == R.content_digest(b)
    b["calibration"][0]["rate"] = 0.044
    assert R.content_digest(a) != R.content_digest(b)


def test_verify_identical(built):
    store, res, path = built
    rep = M.verify(M.load(path), store, res)
    assert rep.identical
    assert rep.count("identical", "model") == 2 and rep.count("identical", "eval") == 2
    assert rep.count("identical", "result") == 1
    assert "all identical" in rep.text()
    assert main(["verify", str(path), "--store", str(store.root), "--results", str(res)]) == 0


def test_verify_reports_differences_missing_and_changed_verdicts(built, tmp_path, monkeypatch,
                                                                 capsys):
    store, res, path = built
    # a "rebuild" whose first model came out different: other weights, other accuracy
    e = store.model(TINY)
    sd = e.state_dict()
    sd = {k: v + 1e-3 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(sd, e.path / "model.pt")
    m = json.loads((e.path / "metrics.json").read_text())
    m["test_acc"] += 0.125
    (e.path / "metrics.json").write_text(json.dumps(m))
    # a consistent entry of other content (not damage, which the store would quarantine)
    from rmpm.pipeline.store import write_checksums
    write_checksums(e.path)
    # the second model's evaluation is gone
    shutil.rmtree(store.eval(RECIPES[1], SPEC.key()).path)
    # and a result value moved
    f = res / "03_rm_by_factor.json"
    doc = json.loads(f.read_text())
    doc["values"]["rm"] = 0.75
    f.write_text(json.dumps(doc))
    # a rule that turns on that value, so the verdict flips
    import rmpm.analysis.verdicts as C
    monkeypatch.setattr(M, "all_verdicts", lambda vals, **kw: [C.Verdict(
        "C1", C.SUPPORTED if vals["03_rm_by_factor"]["rm"] < 0.5 else C.NOT_SUPPORTED, "", "")])

    rep = M.verify(M.load(path), store, res)
    assert not rep.identical
    by = {(c.kind, c.key[:64]): c for c in rep.checks}
    model = by[("model", TINY.key())]
    assert model.status == "differs" and model.max_diff == pytest.approx(0.125)
    assert by[("model", RECIPES[1].key())].status == "identical"
    assert by[("eval", RECIPES[1].key())].status == "missing"
    assert by[("eval", TINY.key())].status == "identical"
    result = by[("result", "03_rm_by_factor")]
    assert result.status == "differs" and result.max_diff == pytest.approx(0.5)
    assert rep.verdicts_changed == [("C1", C.SUPPORTED, C.NOT_SUPPORTED)]
    assert main(["verify", str(path), "--store", str(store.root), "--results", str(res)]) == 1
    out = capsys.readouterr().out
    assert "largest difference 0.125" in out and "CHANGED" in out and "NOT identical" in out


def test_differences_name_the_fields_and_whether_a_page_shows_them():
    was = {"invariances": {"noise": [{"svcca": 0.5}, {"svcca": 0.993765750715438}]},
           "rm": 0.12344, "name": "a", "n": 3}
    now = {"invariances": {"noise": [{"svcca": 0.5}, {"svcca": 0.9937657507154384}]},
           "rm": 0.12346, "name": "b", "n": 3}
    diffs = M.differences(was, now)
    assert [d[0] for d in diffs] == ["invariances.noise[1].svcca", "rm", "name"]
    assert diffs[0][3] == pytest.approx(3.33e-16, rel=0.01) and diffs[2][3] == np.inf
    # 1 ulp never shows at 4 decimals; 0.12344 -> 0.12346 does (0.1234 -> 0.1235), text does
    assert M.shown_differently(diffs) == ["rm", "name"]
    assert M.shown_differently(diffs[:1]) == []
    assert M.differences({"a": [1, 2]}, {"a": [1]}) == [("a", "2 items", "1 items", np.inf)]
    check = M.Check("result", "01_svcca_checked", "differs", diffs[0][3], fields=(diffs[0],))
    text = M.Report([check]).text()
    assert "invariances.noise[1].svcca: 0.993765750715438 -> 0.9937657507154384 (3.33e-16)" in text
    assert "rounded to the pages' 4 decimals: no number differs" in text
    new = M.Report([M.Check("result", "09_regimes", "new", np.nan)])
    assert not new.identical and "1 not in the manifest" in new.text()
    assert "new      result 09_regimes" in new.text()


def test_max_difference():
    assert M.max_difference({"a": 1.0, "b": [1, 2]}, {"a": 1.5, "b": [1, 4]}) == 2
    assert M.max_difference({"a": 1}, {"b": 1}) == np.inf
    assert M.max_difference("x", "x") == 0.0
    assert M.max_difference(float("nan"), float("nan")) == 0.0


def test_bad_manifest(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m.json").write_text('{"version": 99}')
    assert main(["verify", str(tmp_path / "m.json")]) == 2
    assert "not an rmpm manifest" in capsys.readouterr().err


def test_book_manifest_and_reproducibility_section(tmp_path, monkeypatch):
    """The build's manifest covers the profile's models and any model a result file
    names; the page states the mode, engine, CPU and the digests."""
    from rmpm import paths
    from rmpm.book import build as book
    store = Store(tmp_path / "store")
    extra = TINY.replace(init_seed=7)
    run_recipes(RECIPES + [extra], SPEC, store, "cpu", progress=False, workers=0,
                deterministic=False)
    res = tmp_path / "results"
    res.mkdir()
    (res / "02_populations.json").write_text(json.dumps(
        {"name": "02_populations", "profile": "smoke", "values": {"model_keys": [extra.key()]}}))
    monkeypatch.setenv("RMPM_STORE", str(store.root))
    monkeypatch.setenv("RMPM_RESULTS", str(res))
    monkeypatch.setattr(paths, "generated_dir", lambda: tmp_path / "gen")
    monkeypatch.setattr(book, "profile_recipes", lambda profile: list(RECIPES))
    monkeypatch.setattr(book, "eval_spec", lambda profile: SPEC)
    info = {"profile": "smoke", "git_commit": "abc", "built": "now",
            **book._engine_info({"workers": 2, "threads_per_worker": 1, "deterministic": True,
                                 "scheduler": "embedded LocalCluster"})}
    path = book.write_manifest(info)
    m = M.load(path)
    assert set(m["models"]) == {r.key() for r in RECIPES + [extra]}
    assert m["environment"]["engine"]["workers"] == 2
    assert m["environment"]["worker_env"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert M.verify(m, store, res).identical
    text = "\n".join(RP.compute_section(info))
    assert "deterministic: CPU kernels pinned to AVX2, one thread" in text
    assert "2 worker process(es)" in text and "OPENBLAS_CORETYPE=Haswell" in text
    assert "python -m rmpm verify manifest.json" in text
    assert m["models"][extra.key()]["digest"] in text
    assert "3 models, 3 evaluations and 1 result files" in text


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                  if p.is_file())


def test_verify_is_read_only_a_damaged_entry_is_reported_and_left_in_place(built, capsys):
    store, res, path = built
    e = store.model(TINY)
    blob = bytearray((e.path / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # a flipped byte
    (e.path / "model.pt").write_bytes(bytes(blob))
    from rmpm.pipeline import store as S
    S._CHECKED.clear()  # as a fresh process: nothing checked yet
    before = _tree(store.root)
    rep = M.verify(M.load(path), store, res)
    assert _tree(store.root) == before  # nothing moved, nothing written
    assert not (store.root / "quarantine").exists()
    by = {(c.kind, c.key[:64]): c for c in rep.checks}
    assert by[("model", TINY.key())].status == "damaged"
    assert "model.pt" in by[("model", TINY.key())].detail
    assert by[("model", RECIPES[1].key())].status == "identical"
    assert not rep.identical
    assert main(["verify", str(path), "--store", str(store.root), "--results", str(res)]) == 1
    out = capsys.readouterr().out
    assert "damaged  model" in out and "left in place" in out
    assert _tree(store.root) == before
    # repairing stays the store command's job
    assert main(["store", "verify", "--repair", "--store", str(store.root)]) == 1
    assert (store.root / "quarantine").is_dir()


def test_verify_finds_the_results_of_the_build_its_manifest_names(built, tmp_path, monkeypatch,
                                                                 capsys):
    """`rmpm verify manifest.json` as the README writes it: no --results. The
    manifest's own build if it is here, else the profile's latest build."""
    from rmpm import paths
    store, res, path = built
    monkeypatch.setattr(paths, "generated_dir", lambda: tmp_path / "gen")
    monkeypatch.setenv("RMPM_STORE", str(store.root))
    own = BD.new_build("smoke")
    shutil.copy(res / "03_rm_by_factor.json", own.results_dir)
    own = BD.finish_build(own)
    later = BD.new_build("smoke")  # another build, whose results differ
    doc = json.loads((res / "03_rm_by_factor.json").read_text())
    doc["values"]["rm"] = 0.5
    (later.results_dir / "03_rm_by_factor.json").write_text(json.dumps(doc))
    later = BD.finish_build(later)  # the latest
    m = M.load(path)
    m["environment"]["build"] = own.id
    folder, why = M.results_folder(m)
    assert folder == own.results_dir and "manifest's own" in why
    M.write(m, path)
    assert main(["verify", str(path)]) == 0
    assert f"build {own.id}" in capsys.readouterr().out
    # a manifest from another machine (CI's committed one): this machine's latest build
    m["environment"]["build"] = "20260101T000000-abcdef"
    M.write(m, path)
    folder, why = M.results_folder(m)
    assert folder == later.results_dir and "latest smoke build" in why
    assert main(["verify", str(path)]) == 1  # its rm differs
    # no build of the profile at all: one clear error
    m["environment"]["profile"] = "smoke_multi"
    M.write(m, path)
    assert main(["verify", str(path)]) == 2
    assert "no smoke_multi build here" in capsys.readouterr().err
