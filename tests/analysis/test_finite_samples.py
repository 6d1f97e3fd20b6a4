"""Finite-sample analyses on synthetic data with known answers."""
import numpy as np
import pandas as pd
import pytest

from rmpm.analysis import finite_samples as S


def _probs(m, n, k=4, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, n, k)) * 3
    logits = base + noise * rng.normal(size=(m, n, k))
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    return e / e.sum(axis=2, keepdims=True)


def _acts(m=3, n=200, p=6, seed=0, shared=0.8):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, p))
    return {"l1": [shared * z @ rng.normal(size=(p, p)) + (1 - shared) * rng.normal(size=(n, p))
                   for _ in range(m)]}


def test_size_grid_is_sorted_and_includes_ends():
    g = S.size_grid(300, 10, 2)
    assert g[0] == 10 and g[-1] == 300 and g == sorted(set(g))
    with pytest.raises(ValueError, match="n_min"):
        S.size_grid(5, 10)


def test_pm_ci_shrinks_with_n_and_matches_full_estimate():
    p = _probs(4, 800)
    f = S.pm_by_inputs(p, [20, 100, 800], n_boot=200)
    assert list(f["n"]) == [20, 100, 800]
    assert f["half_width"].iloc[0] > f["half_width"].iloc[1] > f["half_width"].iloc[2]
    from rmpm.measures.multiplicity import prediction_variance
    assert f["estimate"].iloc[-1] == pytest.approx(prediction_variance(p))
    assert (f["low"] <= f["estimate"]).all() and (f["estimate"] <= f["high"]).all()


def test_identical_models_have_zero_pm_and_rm():
    p = np.repeat(_probs(1, 100), 3, axis=0)
    f = S.pm_by_inputs(p, [50, 100], n_boot=50)
    assert np.allclose(f["estimate"], 0) and np.allclose(f["half_width"], 0)
    a = _acts(1, 100)["l1"][0]
    r = S.rm_by_inputs({"l1": [a, a.copy(), a * 2.0]}, [50, 100], n_boot=20)
    assert np.allclose(r["estimate"], 0, atol=1e-7)


def test_rm_sizes_beyond_the_sample_are_refused():
    with pytest.raises(ValueError, match="only 200 probe inputs"):
        S.rm_by_inputs(_acts(), [500], n_boot=5)


def test_svcca_null_is_high_at_small_n_and_falls():
    nul = S.svcca_null(_acts(2, 400, 8), [12, 400], n_perm=5)
    small, large = nul["null_similarity"].to_numpy()
    assert small > 0.5 and large < 0.3  # unrelated representations look similar on few inputs
    assert (nul["analytic_rms_cc"].diff().dropna() < 0).all()


def test_stable_size_needs_all_larger_sizes_to_pass():
    f = pd.DataFrame({"n": [10, 20, 40, 80], "half_width": [0.05, 0.3, 0.08, 0.02]})
    assert S.stable_size(f, 1.0, 0.1) == 40
    assert S.stable_size(f, 0.1, 0.1) is None
    assert S.first_within(pd.DataFrame({"n": [10, 20], "estimate": [2.0, 1.05]}), 1.0) == 20


def test_by_models_counts_subsets_and_pm_bias():
    p = _probs(5, 300)
    sims = {"l": np.full((5, 5), 0.8) + 0.2 * np.eye(5)}
    f = S.by_models(p, sims, max_subsets=4)
    assert set(f["m"]) == {2, 3, 4, 5}
    assert f[(f.m == 2) & (f.measure == "pm")]["n_subsets"].iloc[0] == 4
    assert f[(f.m == 5)]["n_subsets"].iloc[0] == 1
    assert np.allclose(f[f.measure == "rm"]["mean"], 0.2)
    pm = f[f.measure == "pm"].set_index("m")["mean"]
    pmu = f[f.measure == "pm_unbiased"].set_index("m")["mean"]
    assert np.allclose(pm / pmu, [(m - 1) / m for m in pm.index])


def test_replicate_agreement_perfect_and_none():
    t = pd.DataFrame({"factor": list("abcd") * 2, "replicate": [0] * 4 + [1] * 4,
                      "rm": [1, 2, 3, 4, 1, 2, 3, 4]})
    a = S.replicate_agreement(t, "rm")
    assert a["spearman"] == pytest.approx(1.0) and a["between_share"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no column 'pm'"):
        S.replicate_agreement(t, "pm")


def test_predictive_correlations_and_lodo():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    t = pd.DataFrame({"dataset": ["a"] * 15 + ["b"] * 15, "pm_small": x,
                      "acc_ood_rest": -x + 0.1 * rng.normal(size=30), "const": 1.0})
    c = S.predictive_correlations(t, ["pm_small", "const"], ["acc_ood_rest"], n_boot=100)
    d = S.correlation_dict(c, "pm_small", "acc_ood_rest")
    assert d["r"] < -0.9 and d["low"] <= d["r"] <= d["high"]
    assert S.correlation_dict(c, "const", "acc_ood_rest")["r"] is None
    lodo = S.leave_one_dataset_out(t, "pm_small", "acc_ood_rest", n_boot=50)
    assert list(lodo["held_out"]) == ["a", "b"] and (lodo["r_held_out"] < -0.8).all()
    with pytest.raises(ValueError, match="needs >= 2 data sets"):
        S.leave_one_dataset_out(t[t.dataset == "a"], "pm_small", "acc_ood_rest")


def test_fast_rm_matches_the_similarity_module():
    from rmpm.measures import similarity as SIM
    acts = _acts(3, 120, 7, seed=3, shared=0.6)
    rows = np.random.default_rng(1).integers(0, 120, 120)
    fast = S._rm_on_rows(acts, rows, 0.99)["l1"]
    ref = SIM.representational_multiplicity(
        SIM.pairwise_similarity([a[rows] for a in acts["l1"]], "svcca", 0.99))
    assert fast == pytest.approx(ref, abs=1e-10)


def test_positions_rows_are_resampled_by_input():
    # (input, position) rows: inputs own 1-3 rows each; subsamples and the null
    # must take whole inputs, and "n inputs" counts inputs, not rows
    from rmpm.analysis import finite_samples as S
    rng = np.random.default_rng(0)
    owner = np.repeat(np.arange(40), rng.integers(1, 4, 40))
    acts = {"conv": [rng.normal(size=(len(owner), 5)) for _ in range(3)]}
    owners = {"conv": owner}
    assert S.count_inputs(acts, owners) == 40
    first = S._rm_on_rows(acts, np.arange(20), 0.99, owners)["conv"]
    rows = np.flatnonzero(owner < 20)
    direct = S._rm_on_rows({"conv": [a[rows] for a in acts["conv"]]}, np.arange(len(rows)), 0.99)
    assert first == pytest.approx(direct["conv"])
    # a repeated input brings all its rows twice
    assert len(S._rows(owner, np.array([3, 3]))) == 2 * (owner == 3).sum()
    frame = S.rm_by_inputs(acts, [10, 40], n_boot=5, owners=owners)
    assert list(frame["n"]) == [10, 40]
    with pytest.raises(ValueError, match="sizes go up to 41 but only 40"):
        S.rm_by_inputs(acts, [41], n_boot=5, owners=owners)


def test_flatten_conv_reports_the_input_of_every_row():
    import torch
    from rmpm.measures.similarity import flatten_conv
    x = torch.randn(6, 3, 4, 4)
    rows, inputs = flatten_conv(x, "positions", max_points=20, seed=1, return_inputs=True)
    assert rows.shape == (20, 3) and inputs.shape == (20,)
    for r, i in zip(rows, inputs):
        assert any(torch.equal(r, x[i, :, h, w]) for h in range(4) for w in range(4))


class _FakePopulation:
    """What small_sample_measures reads from a PopulationData: two hidden layers
    (a narrow one and one as wide as the small sample) and the logits."""

    def __init__(self, seed, n=80, m=3, k=4):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, k, n)
        self._p = {("iid", None): _probs(m, n, k, seed),
                   ("blur", 1): _probs(m, n, k, seed + 1, noise=2.0)}
        z = rng.normal(size=(n, 40))
        self._acts = {"narrow": [z[:, :3] + 0.3 * rng.normal(size=(n, 3)) for _ in range(m)],
                      "wide": [z + 0.3 * rng.normal(size=(n, 40)) for _ in range(m)],
                      "logits": [rng.normal(size=(n, k)) for _ in range(m)]}

    def probs(self, kind="iid", severity=None):
        return self._p[(kind, severity)]

    def shifts(self):
        return [("blur", 1)]

    def layers(self):
        return ["narrow", "wide", "logits"]

    def activations(self, layer, conv="pool"):
        return self._acts[layer]

    def row_inputs(self, layer, conv="pool"):
        return None


def _fake_table(max_fill=None):
    pops = [({"dataset": ds, "factor": f, "replicate": r}, _FakePopulation(100 * i + 10 * j + r))
            for i, ds in enumerate(("a", "b")) for j, f in enumerate(("lr", "width", "dropout"))
            for r in range(2)]
    return S.small_sample_table(pops, 30, keep=0.99, max_fill=max_fill)


def test_small_sample_rm_leaves_out_layers_as_wide_as_the_sample():
    t = _fake_table()
    assert (t["dims_small:wide"] > 20).all() and (t["dims_small:narrow"] <= 3).all()
    assert (t["fill_small:wide"] >= 1).all()
    assert (t["flagged_small"] == "wide").all() and (t["rm_small_layers"] == "narrow").all()
    assert np.allclose(t["rm_small"], t["rm_small:narrow"] / t["rm_small_null:narrow"])
    assert np.allclose(t["rm_small_raw"], t["rm_small:narrow"])
    # no limit: both layers; a limit every layer reaches: RM is left out of the tests
    loose = _fake_table(max_fill=100.0)
    assert (loose["flagged_small"] == "").all()
    both = (loose[["rm_small:narrow", "rm_small:wide"]].to_numpy()
            / loose[["rm_small_null:narrow", "rm_small_null:wide"]].to_numpy()).mean(axis=1)
    assert np.allclose(loose["rm_small"], both)
    strict = _fake_table(max_fill=1e-9)
    assert strict["rm_small"].isna().all()
    from rmpm.analysis import evidence as D
    ev = D.c2_evidence(strict, 30, n_perm=20, n_boot=0)
    assert ev.rm_acc is None and ev.rm_pm is None and ev.pm_acc is not None
    # RM untestable on one data set only: the prediction is tested on the other
    mixed = t.copy()
    mixed.loc[mixed["dataset"] == "b", "rm_small"] = np.nan
    ev = D.c2_evidence(mixed, 30, n_perm=20, n_boot=0)
    assert ev.rm_acc.n_datasets == 1 and set(ev.rm_acc.per_dataset) == {"a"}
    assert ev.pm_acc.n_datasets == 2
    dims = S.kept_dims_table(t)
    assert list(dims.columns) == ["narrow", "wide"] and len(dims) == 6


def test_label_free_and_labelled_error_estimates():
    rng = np.random.default_rng(0)
    n = 24
    t = pd.DataFrame({"dataset": np.repeat(["a", "b"], 12),
                      "factor": np.tile(np.repeat(["f1", "f2", "f3", "f4", "f5", "f6"], 2), 2),
                      "replicate": np.tile([0, 1], 12)})
    err = rng.uniform(0.1, 0.4, n)
    t["acc_iid_rest"] = 1 - err
    t["disagree_small"] = err            # a perfect label-free estimate
    t["acc_small"] = 1 - err - 0.05      # a labelled one, 5 points too pessimistic
    est = S.error_estimates(t, n_boot=200).set_index("estimate")
    free = est.loc["disagreement on the small sample"]
    assert free["bias"] == pytest.approx(0) and free["mean abs. error"] == pytest.approx(0)
    assert free["spearman"] == pytest.approx(1, abs=1e-5) and not free["needs labels"]
    lab = est.loc["error on the small labelled sample"]
    assert lab["bias"] == pytest.approx(0.05) and lab["needs labels"]
    assert lab["bias low"] <= lab["bias"] <= lab["bias high"]
    pred = S.generalisation_predictors(t.assign(acc_ood_rest=t["acc_iid_rest"]), n_boot=200)
    row = pred[(pred["predictor"] == "disagreement, no labels") & (pred["target"] == "OOD accuracy")]
    assert row["spearman"].iloc[0] == pytest.approx(-1, abs=1e-5)
    assert (pred["low"] <= pred["spearman"] + 1e-12).all() and (pred["spearman"] <= pred["high"] + 1e-12).all()
