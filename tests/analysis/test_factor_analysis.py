"""rmpm.analysis.factor_analysis on small hand-built factor tables with known answers."""
import numpy as np
import pandas as pd
import pytest

from rmpm.book import chapter
from rmpm._checks import check_names
from rmpm.analysis import factor_analysis as A
from rmpm.analysis import factors as F

FACTORS = ["init_seed", "lr", "width", "dropout", "both_seeds"]


def _table(rm_of, datasets=("fashion_mnist",), replicates=3, layers=("conv1", "fc")):
    """A factor table whose ``rm`` (and each layer's) is ``rm_of(dataset, factor_index, rep)``."""
    rows = []
    for ds in datasets:
        for i, f in enumerate(FACTORS):
            for r in range(replicates):
                v = rm_of(ds, i, r)
                rows.append({"dataset": ds, "factor": f, "replicate": r, "values": "0, 1",
                             **{f"rm:{layer}": v for layer in layers}, "rm": v,
                             "rm_cka": 2 * v + 1, "rm_pwcca": -v,
                             "pm:iid": v / 10, "pm_ood": v / 5})
    return pd.DataFrame(rows)


def test_identical_ranking_in_every_block_gives_w_one_and_tiny_p():
    t = _table(lambda ds, i, r: 0.1 * i + 0.01 * r + (0.05 if ds == "mnist" else 0.0),
               datasets=("fashion_mnist", "mnist"), replicates=4)
    c = A.concordance(t, n_perm=999, seed=0)
    assert c["n_blocks"] == 8 and c["n_treatments"] == 5
    assert c["kendalls_w"] == pytest.approx(1.0)
    assert c["pvalue"] < 1e-4
    assert c["pvalue_permutation"] == pytest.approx(1 / 1000)  # no permutation reaches W = 1
    ci = A.factor_intervals(t, n_boot=200, seed=0)
    assert list(ci.index) == FACTORS[::-1]  # decreasing RM
    assert list(ci["rank"]) == [1, 2, 3, 4, 5]
    assert A.ci_separated(ci)
    d = A.dataset_matrix(t)
    assert d.shape == (2, 5) and (A.rank_matrix(d).iloc[0] == A.rank_matrix(d).iloc[1]).all()


def test_random_rankings_give_w_near_zero():
    rng = np.random.default_rng(1)
    vals = {(ds, i, r): rng.random() for ds in ("a", "b") for i in range(5) for r in range(60)}
    t = _table(lambda ds, i, r: vals[ds, i, r], datasets=("a", "b"), replicates=60)
    c = A.concordance(t, n_perm=500, seed=0)
    assert c["kendalls_w"] < 0.05
    assert c["pvalue"] > 0.01 and c["pvalue_permutation"] > 0.01


def test_permutation_p_matches_chi_square_roughly_and_is_seeded():
    rng = np.random.default_rng(2)
    m = rng.random((6, 5)) + np.arange(5) * 0.3  # a weak common order
    from rmpm.measures.stats import friedman_test, kendalls_w_permutation
    p1 = kendalls_w_permutation(m, 4000, seed=3)
    assert p1 == kendalls_w_permutation(m, 4000, seed=3)
    assert p1 == pytest.approx(friedman_test(m).pvalue, abs=0.05)


def test_one_block_gives_none_and_bad_input_is_named():
    t = _table(lambda ds, i, r: float(i), replicates=1)
    c = A.concordance(t)
    assert c["n_blocks"] == 1 and c["kendalls_w"] is None and c["pvalue"] is None
    t2 = _table(lambda ds, i, r: float(i), replicates=2)
    with pytest.raises(ValueError, match=r"incomplete blocks: 'rm' is missing for factor\(s\) width"):
        F.block_matrix(t2[~((t2.factor == "width") & (t2.replicate == 0))])
    with pytest.raises(ValueError, match="more than one row"):
        F.block_matrix(pd.concat([t, t.iloc[:1]]))
    with pytest.raises(KeyError, match="no column.*rm_x"):
        F.block_matrix(t, "rm_x")
    with pytest.raises(ValueError, match="factors='nope' is not allowed"):
        check_names("factors", "nope", FACTORS)
    assert check_names("factors", None, FACTORS) == FACTORS
    assert check_names("datasets", "mnist", ["mnist", "svhn"]) == ["mnist"]


def test_bootstrap_column_means_is_stratified_paired_and_seeded():
    m = pd.DataFrame({"x": [1.0, 1.0, 5.0, 5.0], "y": [0.0, 0.0, 4.0, 4.0]})
    strata = ["a", "a", "b", "b"]
    ci, reps = A.bootstrap_column_means(m, strata, n_boot=300, seed=0, return_replicates=True)
    # within each stratum the values are equal, so a stratified resample changes nothing
    assert (ci["low"] == ci["estimate"]).all() and (ci["high"] == ci["estimate"]).all()
    assert ci.loc["x", "estimate"] == 3.0
    free = A.bootstrap_column_means(m, None, n_boot=300, seed=0)
    assert free.loc["x", "low"] < 3.0 < free.loc["x", "high"]
    # paired: x - y is exactly 1 in every replicate
    _, reps = A.bootstrap_column_means(m, None, n_boot=300, seed=0, return_replicates=True)
    assert np.allclose(reps[:, 0] - reps[:, 1], 1.0)
    assert A.bootstrap_column_means(m, None, n_boot=50, seed=4).equals(
        A.bootstrap_column_means(m, None, n_boot=50, seed=4))


def test_group_difference_and_layer_intervals():
    t = _table(lambda ds, i, r: (1.0 if FACTORS[i] in F.SEED_FACTORS else 0.2) + 0.01 * r)
    d = A.group_difference(t, ["init_seed", "both_seeds"], ["lr", "width", "dropout"],
                           n_boot=200, seed=0)
    assert d["difference"]["estimate"] == pytest.approx(0.8)
    assert d["difference"]["low"] == pytest.approx(0.8) == d["difference"]["high"]
    assert d["n_blocks"] == 3
    with pytest.raises(ValueError, match="overlap"):
        A.group_difference(t, ["lr"], ["lr", "width"])
    li = A.layer_intervals(t, "fashion_mnist", n_boot=100)
    assert set(li["layer"]) == {"conv1", "fc"} and len(li) == 10
    assert (li["low"] <= li["estimate"]).all() and (li["estimate"] <= li["high"]).all()
    assert F.factor_group("subset_seed") == "data" and F.factor_group("lr") == "hyperparameters"


def test_measure_agreement_monotone_and_reversed():
    t = _table(lambda ds, i, r: 0.1 * i + 0.01 * r)
    t["rm_adj"] = t["rm"]
    t["rm_dcka_adj"] = np.sqrt(t["rm"] + 1)               # same order, chance-adjusted
    ag = A.measure_agreement(t, n_boot=100)
    assert set(ag) == {"debiased CKA (adj.)", "linear CKA (raw)", "PWCCA (raw)"}  # no rm_k_adj
    assert ag["linear CKA (raw)"]["r"] == pytest.approx(1.0)   # 2 v + 1: same order
    assert ag["PWCCA (raw)"]["r"] == pytest.approx(-1.0)       # -v: reversed order
    assert ag["debiased CKA (adj.)"]["r"] == pytest.approx(1.0)
    ranks = A.measure_rankings(t)
    assert list(ranks.index) == FACTORS[::-1]                  # largest rm_adj first
    assert (ranks["PWCCA (raw) rank"].to_numpy() == np.arange(5, 0, -1)).all()
    assert F.shares_initialisation("lr") and not F.shares_initialisation("both_seeds")
    assert not F.shares_initialisation("width") and F.shares_initialisation("order_seed")


def _pm_table(pm_of, n_pop=6, kinds=("noise", "blur"), sevs=(1, 3, 5)):
    rows = []
    for j in range(n_pop):
        row = {"dataset": "d", "factor": FACTORS[j % 5], "replicate": j // 5, "pm:iid": pm_of(j, 0)}
        for k in kinds:
            for s in sevs:
                row[f"pm:{k}:{s}"] = pm_of(j, s)
        rows.append(row)
    return pd.DataFrame(rows)


def test_pm_growing_with_severity():
    t = _pm_table(lambda j, s: 0.01 * (1 + s) * (1 + 0.1 * j))
    long = A.pm_long(t)
    assert set(long["kind"]) == {"iid", "noise", "blur"} and long["severity"].max() == 5
    tr = A.severity_trend(long, n_boot=200, n_perm=500, seed=0)
    assert tr["within_mean"] == pytest.approx(1.0) and tr["frac_increasing"] == 1.0
    assert tr["r"] > 0.8 and tr["low"] <= tr["r"] <= tr["high"] and tr["p"] < 0.01
    assert tr["n_populations"] == 6 and tr["n_points"] == 24
    assert A.ood_over_iid_ratio(long) == pytest.approx(6.0)
    cur = A.severity_curves(long, by="kind", n_boot=100)
    assert set(cur["kind"]) == {"noise", "blur"} and set(cur["severity"]) == {0, 1, 3, 5}
    assert cur.groupby("kind")["estimate"].apply(lambda s: s.is_monotonic_increasing).all()


def test_pm_flat_in_severity_has_no_trend():
    rng = np.random.default_rng(0)
    noise = {(j, s): rng.random() for j in range(40) for s in (0, 1, 3, 5)}
    t = _pm_table(lambda j, s: 0.01 + 0.001 * noise[j, s], n_pop=40)
    tr = A.severity_trend(A.pm_long(t), n_boot=100, n_perm=500, seed=0)
    assert abs(tr["r"]) < 0.25 and tr["p"] > 0.01
    with pytest.raises(ValueError, match="no shifted"):
        A.pm_long(t[["dataset", "factor", "replicate", "pm:iid"]])


def test_rm_pm_correlations_monotone_and_centring():
    # two data sets at different levels; within each, PM is a monotone function of RM
    rows = []
    for ds, off in (("a", 0.0), ("b", 10.0)):
        for i in range(6):
            rm = off + i
            rows.append({"dataset": ds, "rm": rm, "pm:iid": 0.01 * np.exp(i) + (3.0 if ds == "a" else 0.0),
                         "pm_ood": rm ** 2})
    t = pd.DataFrame(rows)
    res = A.rm_pm_correlations(t, n_boot=100)
    assert res["n_populations"] == 12
    for ds in ("a", "b"):
        assert res["per_dataset"][ds]["iid"]["spearman"]["r"] == pytest.approx(1.0)
        assert res["per_dataset"][ds]["iid"]["pearson"]["r"] < 1.0  # exp is not linear
    # pooled raw: the data-set offsets reverse the iid relation; centring removes that
    assert res["pooled"]["iid"]["spearman"]["r"] < 0
    assert res["pooled_centred"]["iid"]["spearman"]["r"] > 0.9
    assert res["pooled"]["ood"]["spearman"]["r"] == pytest.approx(1.0)
    few = A.correlations([1, 2], [3, 4])
    assert few["spearman"]["r"] is None and "2 pairs" in few["spearman"]["note"]
    assert A.correlations([1, 1, 1], [1, 2, 3])["pearson"]["note"] == "a constant variable"


def test_helpers_for_the_notebooks():
    opts = chapter.resolve_options("smoke", None, ["lr", "width"], "pool", None, min_factors=2)
    assert opts == {"datasets": ["fashion_mnist"], "factors": ["lr", "width"], "conv": "pool",
                    "n_boot": 200}
    with pytest.raises(ValueError, match="datasets='cifar10' is not allowed"):
        chapter.resolve_options("smoke", ["cifar10"])
    with pytest.raises(ValueError, match="conv='mean' is not allowed"):
        chapter.resolve_options("smoke", conv="mean")
    with pytest.raises(ValueError, match="needs at least 2 factors"):
        chapter.resolve_options("smoke", factors="lr", min_factors=2)
    with pytest.raises(ValueError, match="n_boot=0"):
        chapter.resolve_options("smoke", n_boot=0)
    ci = pd.DataFrame({"estimate": [0.5], "low": [0.25], "high": [0.75]}, index=["lr"])
    assert A.format_intervals({"rm": ci}, 2).loc["lr", "rm"] == "0.50 [0.25, 0.75]"
    t = pd.DataFrame({"dataset": ["a"] * 6, "rm": [1, 2, 3, 4, 5, 6], "pm:iid": [1, 3, 2, 4, 6, 5],
                      "pm_ood": [6, 5, 4, 3, 2, 1]})
    tab = A.correlation_table(A.rm_pm_correlations(t, n_boot=50))
    assert len(tab) == 3 * 2 * 2  # (a, pooled, pooled centred) x (iid, ood) x 2 methods
    row = tab[(tab.scope == "pooled") & (tab.pm == "ood") & (tab.method == "spearman")]
    assert row["r"].iloc[0] == pytest.approx(-1.0)


def test_distinct_models_counts_shared_base_once():
    from rmpm.pipeline.recipe import Recipe, vary
    base = Recipe(epochs=1, width=4)
    pops = {"init_seed": vary(base, "init_seed", (0, 1), 2), "lr": vary(base, "lr", (1e-3, 2e-3), 2)}
    # per replicate: base (init offset 0 == lr 2e-3), init +1, lr 1e-3 -> 3 models, x 2 replicates
    assert A.distinct_models(pops) == 6


def test_layer_names_keep_network_order_across_architectures():
    """Concatenating two data sets' tables puts a shared layer name (logits) at the
    first table's position; the ``layers`` column restores each network's order."""
    cnn = pd.DataFrame({"dataset": "a", "factor": ["f", "g"], "replicate": 0,
                        "layers": "conv1,conv2,logits",
                        "rm:conv1": 0.1, "rm:conv2": 0.2, "rm:logits": 0.3})
    mlp = pd.DataFrame({"dataset": "b", "factor": ["f", "g"], "replicate": 0,
                        "layers": "fc1,fc2,logits", "rm:fc1": 0.1, "rm:fc2": 0.2, "rm:logits": 0.3})
    table = pd.concat([cnn, mlp], ignore_index=True)
    assert list(table.columns).index("rm:logits") < list(table.columns).index("rm:fc1")
    assert A.layer_names(table, "b") == ["fc1", "fc2", "logits"]
    assert A.layer_names(table, "a") == ["conv1", "conv2", "logits"]
    assert list(A.layer_intervals(table, "b", n_boot=20)["layer"].unique()) == ["fc1", "fc2", "logits"]
    # without the column: column order (what a hand-made single table gives)
    assert A.layer_names(table.drop(columns="layers"), "b") == ["logits", "fc1", "fc2"]
