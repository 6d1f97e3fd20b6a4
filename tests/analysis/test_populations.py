"""Experiment plumbing on a tiny digits profile: populations, factor table, caching."""
import numpy as np
import pytest

from rmpm.analysis import populations as X
from rmpm.analysis.profiles import Profile
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.store import Store

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains

BASE = Recipe(dataset="digits", arch="cnn", width=4, epochs=1, batch_size=64, lr=5e-3)
TINY = Profile(name="tiny", description="test", datasets=("digits",), base={"digits": BASE},
               reference={"digits": BASE}, factors={"init_seed": (0, 1, 2), "lr": (5e-3, 1e-2)},
               replicates=2, reference_seeds=3, n_test=100, n_probe=50,
               corruptions=("gaussian_noise",), severities=(1, 5), n_boot=50)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("store"))


def test_factor_table(store):
    df = X.factor_table(TINY, store=store, progress=False)
    assert len(df) == 4  # 2 factors x 2 replicates
    assert set(df["factor"]) == {"init_seed", "lr"}
    assert list(df["n_models"]) == [3, 3, 2, 2]
    for col in ("rm", "rm:conv1", "rm:logits", "rm_cka", "rm_pwcca"):
        assert df[col].between(0, 1).all(), col
    assert (df["pm:iid"] > 0).all() and (df["pm:gaussian_noise:5"] > 0).all()
    assert {"disagree:gaussian_noise:1", "pm_ood", "acc_ood", "gap"} <= set(df.columns)
    assert set(df["layers"]) == {"conv1,conv2,fc,logits"}  # network order
    # factor models: 2 replicates x (3 + 2), the base of each replicate shared by both
    # factors; plus the reference population (3 seeds, its seed 0 is the base again)
    assert len(list(store.models())) == 2 * (3 + 2) - 2 + 2


def test_training_fit_records_the_rule_per_model_and_flags_populations(store):
    from rmpm.analysis.profiles import FitRule
    # after test_factor_table every model is stored: nothing is trained here
    models, pops = X.training_fit(TINY, store=store, train=False)
    assert len(models) == 3 + 2 * (3 + 2)  # the reference, then every factor population's
    assert set(models["fit_rule"]) == {"none"} and models["meets_rule"].isna().all()
    ref = pops[pops["population"] == "reference"]
    assert len(ref) == 1 and ref["replicate"].iloc[0] is None and ref["flag"].iloc[0] == ""
    assert list(pops["replicate"].iloc[1:]) == [0, 1, 0, 1]
    for row in pops.itertuples():  # the flag follows the tolerance
        below = ref["train_acc"].iloc[0] - row.train_acc
        assert bool(row.flag) == (below > TINY.train_acc_tolerance)
    # a rule no model meets: every model recorded as missing it, every population flagged
    strict = TINY.replace(fit_rule={"digits": FitRule(min_train_acc=1.01)})
    models, pops = X.training_fit(strict, store=store, train=False)
    assert (models["meets_rule"] == False).all()  # noqa: E712
    assert all("miss the fit rule" in f for f in pops["flag"])
    assert set(models["fit_rule"]) == {"training accuracy >= 1.01"}
    # a rule every model meets flags nothing beyond the tolerance
    loose = TINY.replace(fit_rule={"digits": FitRule(min_train_acc=0.0)}, train_acc_tolerance=1.0)
    assert (X.training_fit(loose, store=store, train=False)[1]["flag"] == "").all()


def test_inside_a_book_build_the_table_is_read_without_training(store, monkeypatch):
    # after test_factor_table every model is stored; a build that trained the profile
    # sets RMPM_TRAINED, and then factor_table must not go through train_profile
    calls = []
    monkeypatch.setattr(X, "train_profile", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setenv(X.TRAINED_VAR, "tiny")
    assert X.trained_by_build(TINY)
    inside = X.factor_table(TINY, store=store, progress=False)
    assert calls == []
    monkeypatch.setenv(X.TRAINED_VAR, "smoke")  # another profile's build: check the store
    assert not X.trained_by_build(TINY)
    outside = X.factor_table(TINY, store=store, progress=False)
    assert len(calls) == 1 and inside.equals(outside)


def test_cached_measures_equal_fresh(store):
    pop = X.factor_populations(TINY, "digits", ["init_seed"])["init_seed"][0]
    cached = X.cached_population_measures(pop, TINY, store=store)
    fresh = X.population_measures(X.load_population(pop, TINY, store), TINY.svcca_keep)
    assert set(cached) == set(fresh)
    for k in fresh:
        assert np.isclose(cached[k], fresh[k], rtol=1e-12), k
    other = X.cached_population_measures(pop, TINY, conv="positions", store=store)
    assert other["rm:conv1"] != cached["rm:conv1"]  # the option is part of the cache key


def test_measures_another_process_is_computing_are_waited_for(store, monkeypatch):
    """Derived measures are claimed like models: while their claim is held elsewhere a
    build waits instead of computing them too; once it is free, it computes them once."""
    import threading
    import time

    from rmpm.pipeline.locks import Lock, lock_path
    pop = X.factor_populations(TINY, "digits", ["lr"])["lr"][1]
    key = X.measures_key(pop, TINY, "positions")  # not computed by the tests above
    assert not store.derived_dir(key).exists()
    calls, compute = [], X.population_measures
    monkeypatch.setattr(X, "population_measures",
                        lambda *a, **k: calls.append(1) or compute(*a, **k))
    other = Lock(lock_path(store.root, "derived", key))  # "another process" holds it
    assert other.try_acquire()
    out = {}
    t = threading.Thread(target=lambda: out.update(
        m=X.cached_population_measures(pop, TINY, conv="positions", store=store)))
    t.start()
    time.sleep(1.5)
    assert t.is_alive() and calls == [] and not store.derived_dir(key).exists()
    other.release()  # its holder let go without committing (it died, say): computed here
    t.join(120)
    assert not t.is_alive() and calls == [1] and store.derived_dir(key).is_dir()
    assert X.cached_population_measures(pop, TINY, conv="positions", store=store) == out["m"]
    assert calls == [1]


def test_population_data_access(store):
    pop = X.reference_population(TINY)
    assert len(pop.recipes) == 3
    X.train_profile(TINY, reference_only=True, store=store, progress=False)
    data = X.load_population(pop, TINY, store)
    assert data.probs().shape == (3, 100, 10)
    assert data.probs("gaussian_noise", 5).shape == (3, 100, 10)
    assert data.layers() == ["conv1", "conv2", "fc", "logits"]
    assert data.activations("conv1", "positions")[0].shape[1] == 4
    with pytest.raises(KeyError, match="stored: probs:gaussian_noise:1"):
        data.probs("rotate", 1)
    with pytest.raises(ValueError, match="conv='avg' is not allowed"):
        data.activations("conv1", "avg")
    assert set(X.describe_recipe_difference(pop.recipes)) == {"init_seed", "order_seed"}


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="dataset='mnist' is not allowed; choose one of: 'digits'"):
        X.factor_populations(TINY, "mnist")
    with pytest.raises(ValueError, match="factor='width' is not allowed"):
        X.factor_populations(TINY, "digits", ["width"])


def test_factor_table_for_a_resnet(store):
    """The paper profile's CIFAR-10/SVHN path: ResNet probe layers (conv stages)
    are evaluated, stored, reduced and measured, in network order."""
    base = BASE.replace(arch="resnet", epochs=1, optimizer="sgd", lr=0.02)
    prof = TINY.replace(name="tiny_resnet", base={"digits": base}, reference={"digits": base},
                        factors={"init_seed": (0, 1, 2)}, replicates=1)
    df = X.factor_table(prof, store=store, progress=False)
    assert len(df) == 1 and df["n_models"].iloc[0] == 3
    layers = df["layers"].iloc[0].split(",")
    assert layers == ["stem", "stage1", "stage2", "stage3", "logits"]
    assert all(0 < df[f"rm:{l}"].iloc[0] < 1 for l in layers)  # 3 seeds: some, not total, difference
    assert df["pm:iid"].iloc[0] > 0
    from rmpm.analysis.factor_analysis import layer_names
    assert layer_names(df) == layers


def test_kept_dimensions_are_recorded_and_saturated_layers_left_out(store):
    df = X.factor_table(TINY, store=store, progress=False)
    for layer in ("conv1", "conv2", "fc", "logits"):
        assert (df[f"dims:{layer}"] >= 1).all() and (df[f"rows:{layer}"] == 50).all()
        assert (df[f"fill:{layer}"] >= df[f"dims:{layer}"] / 49 - 1e-12).all()
    # one set of layers per data set, exactly those some population saturates
    assert df["flagged_layers"].nunique() == 1 and df["rm_layers"].nunique() == 1
    expect = [k for k in ("conv1", "conv2", "fc") if (df[f"fill:{k}"] >= X.MAX_FILL).any()]
    assert df["flagged_layers"].iloc[0] == ",".join(expect)
    used = df["rm_layers"].iloc[0].split(",")
    assert used == [k for k in ("conv1", "conv2", "fc") if k not in expect]
    assert np.allclose(df["rm_adj"], df[[f"rm_adj:{k}" for k in used]].mean(axis=1))
    assert np.allclose(df["rm"], df[[f"rm:{k}" for k in used]].mean(axis=1))
    # the cross-checks on the same chance-adjusted footing, over the same layers
    for k in ("rm_dcka", "rm_k"):
        ratio = df[[f"{k}:{l}" for l in used]].to_numpy() / df[[f"{k}_null:{l}" for l in used]].to_numpy()
        assert np.allclose(df[f"{k}_adj"], ratio.mean(axis=1)) and df[f"{k}_adj"].gt(0).all()
    # a limit every layer reaches: all are used, and rm_layers says they are all flagged
    strict = X.factor_table(TINY, store=store, progress=False, max_fill=1e-9)
    assert (strict["rm_layers"] == "all flagged: conv1,conv2,fc").all()
    with pytest.raises(ValueError, match="max_fill=0 must be > 0"):
        X.factor_table(TINY, store=store, progress=False, max_fill=0)
