"""rmpm.measures.stats against scipy and hand-computed values."""
import numpy as np
import pytest
from scipy import stats as st

from rmpm.measures import stats as S
from rmpm.measures.multiplicity import prediction_variance


def test_bootstrap_ci_mean_matches_normal_theory_and_is_seeded():
    x = np.random.default_rng(0).normal(5.0, 2.0, size=400)
    ci = S.bootstrap_ci(np.mean, x, n_boot=2000, seed=1)
    assert ci.estimate == pytest.approx(x.mean())
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert ci.low < ci.estimate < ci.high
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)
    assert S.bootstrap_ci(np.mean, x, n_boot=2000, seed=1) == ci
    assert S.bootstrap_ci(np.mean, x, n_boot=2000, seed=2) != ci
    est, lo, hi = ci
    assert (est, lo, hi) == (ci.estimate, ci.low, ci.high)


def test_bootstrap_two_axes_and_pm_helpers():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(6, 50))
    pv = prediction_variance(probs)
    for over in ("models", "inputs", "both"):
        ci = S.bootstrap_pm(probs, over=over, n_boot=200)
        assert ci.estimate == pytest.approx(pv) and ci.low <= ci.high
    # an over-models resample of a constant-in-models array has zero width
    same = np.repeat(probs[:1], 4, axis=0)
    ci = S.bootstrap_pm(same, over="models", n_boot=50)
    assert ci.low == ci.high == 0.0
    with pytest.raises(ValueError, match="over"):
        S.bootstrap_pm(probs, over="classes")
    with pytest.raises(ValueError, match="axis 5"):
        S.bootstrap_ci(np.mean, probs, over=5)


def test_bootstrap_rm():
    s = np.full((5, 5), 0.7)
    np.fill_diagonal(s, 1.0)
    ci = S.bootstrap_rm(s, n_boot=100)
    assert ci.estimate == pytest.approx(0.3) and ci.low == pytest.approx(0.3)
    assert ci.high == pytest.approx(0.3)


def test_correlation_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(40)
    y = x + rng.standard_normal(40)
    for method, ref in (("spearman", st.spearmanr(x, y)), ("pearson", st.pearsonr(x, y))):
        r = S.correlation(x, y, method=method, n_boot=500, seed=0)
        assert r.r == pytest.approx(ref[0]) and r.p == pytest.approx(ref[1])
        assert r.low < r.r < r.high
    with pytest.raises(ValueError, match="x is constant"):
        S.correlation(np.ones(5), np.arange(5))
    with pytest.raises(ValueError, match="method"):
        S.correlation(x, y, method="kendall")


def test_friedman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 4, size=(8, 5)).astype(float)  # many ties
    res = S.friedman_test(m)
    ref = st.friedmanchisquare(*m.T)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue == pytest.approx(ref.pvalue)
    assert res.kendalls_w == pytest.approx(S.kendalls_w(m))
    assert res.kendalls_w == pytest.approx(res.statistic / (8 * 4))


def test_kendalls_w_hand_values():
    assert S.kendalls_w([[1, 2, 3, 4], [10, 20, 30, 40], [0.1, 0.2, 0.3, 0.4]]) == pytest.approx(1.0)
    # R = (6, 7, 8, 9), S = 5, W = 12*5 / (9 * 60)
    assert S.kendalls_w([[1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1]]) == pytest.approx(1 / 9)
    # ties: ranks (1.5, 1.5, 3) and (1, 2, 3); R = (2.5, 3.5, 6), S = 6.5,
    # T = 2^3 - 2 = 6; W = 12*6.5 / (4*24 - 2*6) = 78/84
    assert S.kendalls_w([[1, 1, 2], [1, 2, 3]]) == pytest.approx(78 / 84)
    with pytest.raises(ValueError, match="entirely tied"):
        S.kendalls_w([[1, 1, 1], [2, 2, 2]])
    with pytest.raises(ValueError, match="2-D"):
        S.kendalls_w([1, 2, 3])
