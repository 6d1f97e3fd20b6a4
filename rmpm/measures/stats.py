"""Statistics for the book: bootstrap intervals, correlations, rank agreement.

* :func:`bootstrap_ci` - percentile bootstrap over one or more axes of an array
  (Efron & Tibshirani 1993, ch. 13): resample indices with replacement along
  each axis in ``over`` (independently, for a two-way bootstrap), recompute the
  statistic, and report the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the
  replicates around the estimate on the full data.
* :func:`bootstrap_pm` / :func:`bootstrap_rm` - the same over models and/or inputs
  for a PM statistic of a ``(models, inputs, classes)`` array, and over models for
  RM of an ``(N, N)`` similarity matrix.
* :func:`correlation` - Spearman or Pearson with a paired bootstrap interval and
  scipy's p-value.
* :func:`friedman_test` and :func:`kendalls_w` - is a ranking of factors the same
  across blocks (data sets, seeds)? With average ranks and the tie correction.

Every random draw comes from ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats as _st

from .._checks import check_choice, check_range


@dataclass(frozen=True)
class CI:
    """A point estimate with a percentile-bootstrap interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_boot: int = 0

    def __iter__(self):  # so that ``est, lo, hi = ci`` works
        return iter((self.estimate, self.low, self.high))

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def ci_dict(ci: CI | None) -> dict[str, float | None]:
    """``{"estimate", "low", "high"}`` as floats (all None for no interval): how
    intervals go into JSON results and tables."""
    if ci is None:
        return {"estimate": None, "low": None, "high": None}
    return {"estimate": float(ci.estimate), "low": float(ci.low), "high": float(ci.high)}


def _array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind in "fc" or a.dtype.kind in "iub":
        a = a.astype(np.float64)
    return a


def check_boot(n_boot: int, level: float) -> None:
    """``n_boot`` a positive int and ``level`` in (0, 1), else one clear error."""
    check_range("n_boot", n_boot, 1, integer=True)
    check_range("level", level, 0.0, 1.0, lo_open=True)
    if level >= 1.0:
        raise ValueError(f"level={level!r} must be < 1")


def percentile_ci(estimate: float, reps: np.ndarray, level: float, n_boot: int) -> CI:
    """Percentile interval of bootstrap replicates ``reps`` around ``estimate``.

    The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates
    (Efron & Tibshirani 1993, ch. 13). Non-finite replicates are dropped with a
    warning, or refused when they are more than half.
    """
    ok = np.isfinite(reps)
    if not ok.all():
        bad = int((~ok).sum())
        if bad > n_boot // 2:
            raise ValueError(f"the statistic was NaN/inf on {bad} of {n_boot} bootstrap "
                             "resamples; the interval would be meaningless")
        warnings.warn(f"the statistic was NaN/inf on {bad} of {n_boot} bootstrap resamples; "
                      "they are left out of the interval", RuntimeWarning, stacklevel=3)
        reps = reps[ok]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return CI(float(estimate), float(low), float(high), float(level), int(n_boot))


def bootstrap_ci(statistic: Callable[[np.ndarray], float], data, over: int | tuple[int, ...] = 0,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> CI:
    """Percentile bootstrap interval of ``statistic(data)``.

    Each replicate draws, for every axis ``a`` in ``over``, ``data.shape[a]`` indices
    with replacement (independently per axis) and evaluates the statistic on
    ``data`` indexed by them; ``low``/``high`` are the ``(1 - level)/2`` and
    ``(1 + level)/2`` empirical quantiles of the ``n_boot`` replicates (the
    percentile method; Efron & Tibshirani 1993). ``estimate`` is the statistic of the
    full data. A statistic that is NaN on some resamples (e.g. a correlation of a
    constant resample) has those replicates dropped with a warning, or raises if
    more than half are.
    """
    check_boot(n_boot, level)
    a = _array(data, "data")
    axes = (over,) if isinstance(over, (int, np.integer)) else tuple(over)
    if not axes:
        raise ValueError("over must name at least one axis")
    for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)) or not -a.ndim <= ax < a.ndim:
            raise ValueError(f"over={over!r}: axis {ax!r} is not an axis of data with "
                             f"shape {a.shape}")
        if a.shape[ax] < 2:
            raise ValueError(f"cannot bootstrap over axis {ax} of size {a.shape[ax]} (< 2)")
    axes = tuple(int(ax) % a.ndim for ax in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"over={over!r} names an axis twice")
    estimate = float(statistic(a))
    if not np.isfinite(estimate):
        raise ValueError("the statistic is NaN/inf on the full data")
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        r = a
        for ax in axes:
            r = np.take(r, rng.integers(0, a.shape[ax], a.shape[ax]), axis=ax)
        reps[b] = statistic(r)
    return percentile_ci(estimate, reps, level, n_boot)


_OVER = {"models": (0,), "inputs": (1,), "both": (0, 1)}


def bootstrap_pm(probs, statistic: Callable | None = None, over: str = "models",
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> CI:
    """Bootstrap a PM statistic of ``probs`` (models, inputs, classes).

    ``over="models"``: how much the number depends on which models were trained;
    ``"inputs"``: on which test inputs were drawn; ``"both"``: a two-way resample.
    Default statistic: :func:`rmpm.measures.multiplicity.prediction_variance`. Note that
    resampling models duplicates some, which biases pairwise statistics (churn)
    downwards within a replicate; the interval is still the standard percentile one.
    """
    from .multiplicity import as_probs, prediction_variance

    check_choice("over", over, _OVER)
    p = as_probs(probs)
    return bootstrap_ci(statistic or prediction_variance, p, _OVER[over], n_boot, level, seed)


def bootstrap_rm(sim, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> CI:
    """Bootstrap over models of RM = mean off-diagonal ``1 - S[i, j]`` of an (N, N) matrix.

    A replicate draws N model indices with replacement and averages ``1 - S[i, j]``
    over the drawn pairs whose indices differ (a model paired with its own copy
    carries no information about multiplicity).
    """
    check_boot(n_boot, level)
    s = _array(sim, "sim")
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise ValueError(f"sim must be a square (N, N) matrix with N >= 2; got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("sim contains NaN/inf")
    n = s.shape[0]
    d = 1.0 - s
    off = ~np.eye(n, dtype=bool)
    estimate = d[off].mean()
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        distinct = idx[:, None] != idx[None, :]
        reps[b] = d[np.ix_(idx, idx)][distinct].mean() if distinct.any() else np.nan
    return percentile_ci(estimate, reps, level, n_boot)


class Correlation(NamedTuple):
    """Correlation coefficient with its bootstrap interval and two-sided p-value."""

    r: float
    low: float
    high: float
    p: float


def rank_correlation(x, y) -> float:
    """Spearman's rho as the Pearson correlation of average ranks (ties share their
    mean rank); NaN when ``x`` or ``y`` is constant, where it is undefined. The one
    Spearman the bootstrap and permutation loops use (:func:`correlation`'s point
    estimate and p-value are scipy's ``spearmanr``, equal up to rounding)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(_st.rankdata(x), _st.rankdata(y))[0, 1])


def correlation(x, y, method: str = "spearman", n_boot: int = 1000, level: float = 0.95,
                seed: int = 0) -> Correlation:
    """Spearman (rank) or Pearson correlation of paired samples, with a percentile
    bootstrap interval over pairs and scipy's two-sided p-value
    (``scipy.stats.spearmanr`` / ``pearsonr``)."""
    check_choice("method", method, ("spearman", "pearson"))
    check_boot(n_boot, level)
    xa, ya = _array(x, "x").ravel(), _array(y, "y").ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.size} and {ya.size}")
    if xa.size < 3:
        raise ValueError(f"correlation needs at least 3 pairs; got {xa.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("x and y must not contain NaN/inf")
    for nm, v in (("x", xa), ("y", ya)):
        if np.ptp(v) == 0:
            raise ValueError(f"{nm} is constant; its correlation is undefined")

    def coef(a, b):
        if method == "spearman":
            return rank_correlation(a, b)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return np.nan
        return float(np.corrcoef(a, b)[0, 1])

    res = _st.spearmanr(xa, ya) if method == "spearman" else _st.pearsonr(xa, ya)
    r, p = float(res[0]), float(res[1])
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, xa.size, xa.size)
        reps[b] = coef(xa[idx], ya[idx])
    ci = percentile_ci(r, reps, level, n_boot)
    return Correlation(r, ci.low, ci.high, p)


class Friedman(NamedTuple):
    statistic: float
    pvalue: float
    kendalls_w: float
    n_blocks: int
    n_treatments: int


def _rank_matrix(matrix) -> tuple[np.ndarray, np.ndarray]:
    a = _array(matrix, "matrix")
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError("matrix must be 2-D with >= 2 rows (blocks/raters) and >= 2 columns "
                         f"(treatments/factors); got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("matrix contains NaN/inf")
    ranks = np.apply_along_axis(_st.rankdata, 1, a)  # average ranks for ties
    ties = 0.0
    for row in a:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts**3 - counts).sum())
    return ranks, np.array(ties)


def kendalls_w(matrix) -> float:
    """Kendall's coefficient of concordance W of ``m`` raters (rows) ranking ``n``
    objects (columns), with the tie correction (Kendall & Babington Smith 1939):

    ``W = 12 S / (m^2 (n^3 - n) - m sum_j T_j)``, ``S = sum_i (R_i - m (n+1)/2)^2``,
    ``R_i`` the rank sum of object i (average ranks within a row),
    ``T_j = sum_groups (t^3 - t)`` over the groups of ``t`` tied values in row j.
    1 = all rows rank identically; 0 = no agreement. Equals
    ``Q_Friedman / (m (n - 1))``.
    """
    ranks, ties = _rank_matrix(matrix)
    m, n = ranks.shape
    s = float(((ranks.sum(axis=0) - m * (n + 1) / 2.0) ** 2).sum())
    denom = m**2 * (n**3 - n) - m * float(ties)
    if denom <= 0:
        raise ValueError("every row is entirely tied; Kendall's W is undefined")
    return 12.0 * s / denom


def kendalls_w_permutation(matrix, n_perm: int = 2000, seed: int = 0) -> float:
    """Permutation p-value of Kendall's W: each block's ranks are shuffled
    independently (the null that the factor labels carry no order), and
    ``p = (1 + #{W_perm >= W}) / (1 + n_perm)``. Unlike the chi-square
    approximation of the Friedman test it is valid for few blocks."""
    check_range("n_perm", n_perm, 1, integer=True)
    a = np.asarray(matrix, dtype=float)
    kendalls_w(a)  # validates shape and values with a clear message
    ranks = np.apply_along_axis(_st.rankdata, 1, a)
    m, n = ranks.shape
    rng = np.random.default_rng(seed)
    perm = rng.permuted(np.broadcast_to(ranks, (n_perm, m, n)).copy(), axis=2)
    # ties are unchanged by shuffling, so W is a fixed multiple of S
    s_obs = ((ranks.sum(axis=0) - m * (n + 1) / 2.0) ** 2).sum()
    s_perm = ((perm.sum(axis=1) - m * (n + 1) / 2.0) ** 2).sum(axis=1)
    if s_obs == 0:
        return 1.0
    ge = (s_perm >= s_obs * (1 - 1e-12)).sum()
    return float((1 + ge) / (1 + n_perm))


def friedman_test(matrix) -> Friedman:
    """Friedman test that the columns (treatments, e.g. training factors) have the same
    distribution of ranks within rows (blocks, e.g. data sets x seeds).

    ``Q = [12/(m n (n+1)) sum_i R_i^2 - 3 m (n+1)] / (1 - sum_j T_j / (m (n^3 - n)))``,
    ``p = P(chi2_{n-1} >= Q)`` (Friedman 1937; tie correction as in
    ``scipy.stats.friedmanchisquare``). Also returns Kendall's ``W = Q / (m (n-1))``.
    """
    ranks, ties = _rank_matrix(matrix)
    m, n = ranks.shape
    r = ranks.sum(axis=0)
    q = 12.0 / (m * n * (n + 1)) * float((r**2).sum()) - 3.0 * m * (n + 1)
    c = 1.0 - float(ties) / (m * (n**3 - n))
    if c <= 0:
        raise ValueError("every row is entirely tied; the Friedman statistic is undefined")
    q /= c
    return Friedman(float(q), float(_st.chi2.sf(q, n - 1)), float(q / (m * (n - 1))), m, n)


__all__ = ["CI", "percentile_ci", "bootstrap_ci", "bootstrap_pm", "bootstrap_rm", "Correlation", "correlation",
           "Friedman", "friedman_test", "kendalls_w"]
