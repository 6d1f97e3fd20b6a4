"""The tests behind the verdicts: one calibrated decision statistic per claim.

Each function here turns the table a chapter builds into a small, typed
*evidence* record (a frozen dataclass), which the chapter saves and
:mod:`rmpm.analysis.verdicts` turns into a verdict. The statistics themselves are
array functions (``*_core``) that take a stack of simulations as well as one
table, so :mod:`rmpm.analysis.calibration` runs exactly this code, vectorised, and
the false-positive rates printed beside the verdicts are those of this code.

Units and nulls (the choices are ours; the paper's text is not available). The
data are shaped by the design: a *block* is a (data set, replicate); within a
block every factor's population starts from the same replicate base recipe, and
in most factors a population's models share their initial weights; a
population's RM and PM are measured on the same models, so their noise is
shared. The tests are built so that none of that can fake a result:

* **C1** (some training differences give systematically larger RM).
  Pre-registered contrasts: in every block, each factor's RM minus the RM of the
  ``both_seeds`` population (ordinary independent runs): "does this change alone
  move representations more or less than a fresh seed?". Statistic: per factor,
  the mean contrast over blocks divided by its root mean square (a monotone
  function of the one-sample t that does not change under sign flips); the
  largest absolute value over factors (max-T, family-wise over factors).
  p-value: **block-level sign flips** (every block's whole contrast vector
  flipped together, all ``2^B`` flips when there are at most 2^14, else a seeded
  sample). It is exact when each block's contrast vector is symmetric about 0
  under the null, whatever the variances, tails or correlations of the factors'
  noise within a block (no exchangeability of factors is assumed). Across data
  sets: per factor, the smallest same-signed data-set mean contrast (a
  conjunction: the contrast points the same way in *every* data set), max over
  factors, same sign flips.
* **C2, C3** (associations across training factors). Rank association of ``x``
  with ``y`` (Spearman), ranks within a data set centred within each block, a
  control variable projected out of each side (partial association).
  **Cross-fitted**: ``x`` is taken from replicate ``r`` and ``y`` from replicate
  ``r + 1`` (cyclically, with 3 or more replicates; with 2, replicate 0 against 1),
  so the two sides never come from the same models and noise shared by quantities
  measured on the same models cannot make an association. The unit of inference
  is the **factor**: p-value by permuting the factor labels of ``y`` (the same
  permutation in every replicate and every data set, since a factor's effects
  may be alike across data sets; Freedman & Lane 1983 for the partial case);
  interval by resampling factors (jointly across data sets). Data sets are
  combined by the mean of their Fisher z.
* **C4** (equally good models disagree beyond what accuracy implies): the
  premise of a recommendation. For two models, the share of inputs on which they
  disagree is at least the difference of their accuracies; the statistic is the
  mean over model pairs of ``churn - |acc_i - acc_j|``, tested against a threshold
  (default 1 % of inputs) with a bootstrap over models and inputs.

Every random draw comes from ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from .._checks import check_choice, check_range
from ..jsonable import jsonable
from .factors import BLOCK, block_matrix

#: Default significance level of every rule.
ALPHA = 0.05
#: bump when an evidence function computes something else from the same table: a
#: comparison of two builds (:mod:`rmpm.analysis.regimes`) refuses builds that differ
EVIDENCE_VERSION = 1
DIRECTIONS = ("greater", "less")


# ----------------------------------------------------------------------------- typed records

class Evidence:
    """Base of the evidence records: strict conversion to and from plain dicts.

    ``from_dict`` refuses missing and unexpected keys, so a renamed field in a
    chapter's result fails loudly instead of silently changing a verdict.
    """

    def to_dict(self) -> dict[str, Any]:
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}: expected a dict, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        extra = sorted(set(d) - set(names))
        if missing or extra:
            raise KeyError(f"{cls.__name__}: " + "; ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else []) +
                ([f"unexpected field(s) {', '.join(extra)}"] if extra else [])))
        hints = typing.get_type_hints(cls)
        kw = {}
        for n in names:
            t, v = hints[n], d[n]
            sub = _evidence_type(t)
            kw[n] = sub.from_dict(v) if sub is not None and v is not None else v
        return cls(**kw)


def _evidence_type(t) -> type | None:
    for cand in (t, *typing.get_args(t)):
        if isinstance(cand, type) and issubclass(cand, Evidence):
            return cand
    return None


def _f(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _p_value(stat: float, null: np.ndarray, alternative: str) -> float:
    """Permutation p-value ``(1 + #{null at least as extreme}) / (1 + n)``."""
    null = null[np.isfinite(null)]
    tol = 1e-12 * max(1.0, abs(stat))
    hits = (null >= stat - tol) if alternative == "greater" else (null <= stat + tol)
    return float((1 + hits.sum()) / (1 + null.size))


# ----------------------------------------------------------------------------- C1

#: The pre-registered baseline of C1's contrasts: ordinary independent runs.
C1_BASELINE = "both_seeds"
#: Up to this many blocks every sign flip is enumerated (an exact test).
MAX_FLIPS = 2 ** 14


def sign_flips(n_blocks: int, max_flips: int = MAX_FLIPS, seed: int = 0) -> tuple[np.ndarray, bool]:
    """``(flips, exact)``: a ``(S, n_blocks)`` array of +-1, row 0 the identity.
    All ``2^n_blocks`` flips when that is at most ``max_flips`` (``exact``), else
    the identity and ``max_flips - 1`` seeded random ones."""
    check_range("n_blocks", n_blocks, 1, integer=True)
    check_range("max_flips", max_flips, 2, integer=True)
    if 2 ** n_blocks <= max_flips:
        bits = (np.arange(2 ** n_blocks)[:, None] >> np.arange(n_blocks)) & 1
        return 1.0 - 2.0 * bits, True
    rng = np.random.default_rng(seed)
    rand = rng.choice([-1.0, 1.0], size=(max_flips - 1, n_blocks))
    return np.vstack([np.ones(n_blocks), rand]), False


class C1Core(typing.NamedTuple):
    t: np.ndarray             # (..., K) mean contrast / RMS contrast over blocks
    p_any: np.ndarray         # (...,) some factor's contrast differs from 0 (max-|T|)
    p_factor: np.ndarray      # (..., K) single-step max-T adjusted p per factor
    consistency: np.ndarray   # (..., K) smallest same-signed data-set mean / RMS (NaN: 1 data set)
    p_consistent: np.ndarray  # (...,) some factor points the same way in every data set
    p_consistent_factor: np.ndarray  # (..., K) adjusted p of each factor's consistency


def _flip_p(null_max: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Share of flips (row 0 included) whose statistic reaches ``obs``;
    ``null_max`` (..., S), ``obs`` (..., [K])."""
    tol = 1e-12 * np.maximum(1.0, np.abs(obs))
    if obs.ndim == null_max.ndim:  # one value per factor
        return (null_max[..., :, None] >= obs[..., None, :] - tol[..., None, :]).mean(axis=-2)
    return (null_max >= obs[..., None] - tol[..., None]).mean(axis=-1)


def c1_core(contrasts: np.ndarray, block_dataset: np.ndarray, flips: np.ndarray) -> C1Core:
    """C1's tests on contrasts ``(..., B, K)`` (blocks x factors, a stack of
    simulations allowed); ``block_dataset`` (B,) the data set index of each block;
    ``flips`` from :func:`sign_flips`. See the module docstring."""
    d = np.asarray(contrasts, dtype=float)
    n_blocks = d.shape[-2]
    rms = np.sqrt((d ** 2).mean(axis=-2))
    inv = np.where(rms > 0, 1.0 / np.where(rms > 0, rms, 1.0), 0.0)
    flipped = np.einsum("sb,...bk->...sk", flips, d) / n_blocks * inv[..., None, :]
    t = flipped[..., 0, :]
    null_any = np.abs(flipped).max(axis=-1)
    p_any = _flip_p(null_any, np.abs(t).max(axis=-1))
    p_factor = _flip_p(null_any, np.abs(t))
    groups = np.unique(block_dataset)
    nan_k = np.full(t.shape, np.nan)
    if len(groups) < 2:
        return C1Core(t, p_any, p_factor, nan_k, np.full(p_any.shape, np.nan), nan_k)
    avg = np.stack([(block_dataset == g) / (block_dataset == g).sum() for g in groups])  # (G, B)
    gm = np.einsum("gb,sb,...bk->...sgk", avg, flips, d) * inv[..., None, None, :]
    cons = np.maximum(gm.min(axis=-2), (-gm).min(axis=-2))            # (..., S, K)
    c_obs = cons[..., 0, :]
    null_c = cons.max(axis=-1)
    return C1Core(t, p_any, p_factor, c_obs, _flip_p(null_c, c_obs.max(axis=-1)),
                  _flip_p(null_c, c_obs))


@dataclass(frozen=True)
class C1Evidence(Evidence):
    """Does any factor move representations systematically more or less than a
    fresh seed (``baseline``), and the same way on every data set?"""

    value: str                   # the table column tested (e.g. "rm_adj")
    baseline: str                # the factor every other one is contrasted with
    ranking: list[str]           # every factor by decreasing mean over blocks
    means: dict[str, float]      # mean over blocks per factor
    contrasts: dict[str, dict[str, Any]]  # factor -> estimate, low, high (t interval over
    #                              blocks), p_adjusted, p_consistent_adjusted, per_dataset
    p_value: float | None        # some factor differs from the baseline (max-T, sign flips)
    p_datasets: float | None     # some factor differs the same way in every data set; None with 1
    n_blocks: int
    n_factors: int
    n_datasets: int
    n_flips: int
    exact: bool                  # every sign flip enumerated
    kendalls_w: float | None     # descriptive: agreement of the blocks' rankings (not a test)
    effect_size: float | None    # SD of factor effects / residual SD (two-way ANOVA)

    @property
    def smallest_p(self) -> float:
        """The smallest p-value the sign-flip test can give: flipping every block
        leaves both statistics unchanged, so ``2 / 2^B`` when every flip is
        enumerated (with 3 blocks 0.25: no level below it can be reached)."""
        return (2.0 if self.exact else 1.0) / self.n_flips


def factor_effect_size(matrix) -> float | None:
    """SD of the factor (column) effects over the residual SD, from the two-way
    ANOVA without interaction of a blocks x factors matrix: ``sqrt(max(0, (MS_f -
    MS_e) / B) / MS_e)``. None with fewer than 2 blocks or no residual variance."""
    a = np.asarray(matrix, dtype=float)
    b, f = a.shape
    if b < 2 or f < 2:
        return None
    resid = a - a.mean(1, keepdims=True) - a.mean(0, keepdims=True) + a.mean()
    ms_e = (resid ** 2).sum() / ((b - 1) * (f - 1))
    ms_f = b * ((a.mean(0) - a.mean()) ** 2).sum() / (f - 1)
    if ms_e <= 0:
        return None
    return float(np.sqrt(max(0.0, (ms_f - ms_e) / b) / ms_e))


def c1_contrasts(values: np.ndarray, factors: Sequence[str], baseline: str = C1_BASELINE
                 ) -> tuple[np.ndarray, list[str]]:
    """Each factor's value minus the baseline's within every block: ``values``
    (..., B, F) -> ``(contrasts (..., B, F-1), contrasted factor names)``."""
    factors = list(factors)
    check_choice("baseline", baseline, factors)
    j = factors.index(baseline)
    keep = [i for i in range(len(factors)) if i != j]
    v = np.asarray(values, dtype=float)
    return v[..., keep] - v[..., [j]], [factors[i] for i in keep]


def c1_evidence(table: pd.DataFrame, value: str = "rm_adj", baseline: str = C1_BASELINE,
                max_flips: int = MAX_FLIPS, level: float = 0.95, seed: int = 0) -> C1Evidence:
    """C1's evidence from a factor table (one row per data set, factor, replicate)."""
    from ..measures.stats import kendalls_w
    check_range("level", level, 0.0, 1.0, lo_open=True)
    m = block_matrix(table, value, BLOCK)
    n_blocks, n_factors = m.shape
    if n_factors < 2:
        raise ValueError(f"C1 needs at least 2 factors; got {n_factors}")
    factors = [str(f) for f in m.columns]
    if baseline not in factors:
        raise ValueError(f"baseline={baseline!r} is not a factor of the table; C1's contrasts "
                         f"need it. Factors: {', '.join(factors)}")
    a = m.to_numpy(dtype=float)
    means = m.mean(axis=0).sort_values(ascending=False)
    ds_of_block = np.asarray(pd.factorize(m.index.get_level_values("dataset"))[0])
    datasets = list(dict.fromkeys(m.index.get_level_values("dataset")))
    d, names = c1_contrasts(a, factors, baseline)
    flips, exact = sign_flips(n_blocks, max_flips, seed)
    core = c1_core(d, ds_of_block, flips)
    est = d.mean(axis=0)
    if n_blocks >= 2:
        half = _st.t.ppf((1 + level) / 2, n_blocks - 1) * d.std(axis=0, ddof=1) / np.sqrt(n_blocks)
    else:
        half = np.full(len(names), np.nan)
    contrasts = {}
    for k, f in enumerate(names):
        contrasts[f] = {"estimate": float(est[k]), "low": _f(est[k] - half[k]),
                        "high": _f(est[k] + half[k]), "p_adjusted": _f(core.p_factor[k]),
                        "p_consistent_adjusted": _f(core.p_consistent_factor[k]),
                        "per_dataset": {str(ds): float(d[ds_of_block == i, k].mean())
                                        for i, ds in enumerate(datasets)}}
    w = None
    if n_blocks >= 2 and np.ptp(a, axis=1).min() > 0:
        w = kendalls_w(a)
    return C1Evidence(value=value, baseline=baseline, ranking=[str(f) for f in means.index],
                      means={str(k): float(v) for k, v in means.items()}, contrasts=contrasts,
                      p_value=_f(core.p_any) if n_blocks >= 2 else None,
                      p_datasets=_f(core.p_consistent) if len(datasets) >= 2 else None,
                      n_blocks=int(n_blocks), n_factors=int(n_factors),
                      n_datasets=len(datasets), n_flips=int(len(flips)), exact=bool(exact),
                      kendalls_w=_f(w), effect_size=factor_effect_size(a))


def c1_contrast_table(ev: C1Evidence) -> pd.DataFrame:
    """One row per contrasted factor: estimate, interval, adjusted p-values and the
    mean contrast per data set, sorted by estimate."""
    rows = [{"factor": f, **{k: c[k] for k in ("estimate", "low", "high", "p_adjusted",
                                               "p_consistent_adjusted")},
             **{f"in {ds}": v for ds, v in c["per_dataset"].items()}}
            for f, c in ev.contrasts.items()]
    return pd.DataFrame(rows).set_index("factor").sort_values("estimate", ascending=False)


# ----------------------------------------------------------------------------- associations

@dataclass(frozen=True)
class Association(Evidence):
    """Within-data-set (partial) rank association of ``x`` with ``y`` across
    factors, cross-fitted across replicates."""

    x: str
    y: str
    control: str | None
    alternative: str                       # "greater" (positive expected) or "less"
    estimate: float | None                 # tanh of the mean Fisher z over data sets
    low: float | None                      # percentile interval, factors resampled
    high: float | None
    p_value: float | None                  # one-sided, factor labels permuted
    per_dataset: dict[str, float | None]
    leave_one_out: dict[str, float | None] | None  # estimate without each data set (>= 2)
    crossfit: bool                         # x and y from different replicates' models
    n_populations: int
    n_factors: int
    n_datasets: int
    n_perm: int
    n_boot: int
    level: float


def _rank_centre(a: np.ndarray) -> np.ndarray:
    """Ranks over the whole (R, F) matrix (a data set), centred within each block
    (row); a stack ``(..., R, F)`` is ranked matrix by matrix."""
    flat = a.reshape(*a.shape[:-2], -1)
    r = _st.rankdata(flat, axis=-1).reshape(a.shape)
    return r - r.mean(axis=-1, keepdims=True)


def _project_out(v: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    """Residual of ``v`` after least squares on ``z`` (both block-centred); works
    on stacks ``(..., R, F)`` that broadcast."""
    if z is None:
        return v
    zz = (z * z).sum(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(zz > 0, (v * z).sum(axis=(-2, -1), keepdims=True) / np.where(zz > 0, zz, 1), 0)
    return v - slope * z


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation of matched (R, F) matrices (stacks broadcast), both already
    mean-zero within rows (so within the matrix)."""
    num = (x * y).sum(axis=(-2, -1))
    den = np.sqrt((x * x).sum(axis=(-2, -1)) * (y * y).sum(axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _fisher(r):
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


def crossfit_rows(n_replicates: int, crossfit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Which replicate's ``x`` is paired with which replicate's ``y``: ``(rows_x,
    rows_y)``. Cross-fitted: replicate ``r`` with ``r + 1`` cyclically (3 or more
    replicates: every replicate used once on each side, and no two pairs are the
    same two replicates swapped, whose products would share both noises), with 2
    replicates 0 with 1 only. Not cross-fitted: every replicate with itself."""
    check_range("n_replicates", n_replicates, 1, integer=True)
    r = np.arange(n_replicates)
    if not crossfit:
        return r, r
    if n_replicates < 2:
        raise ValueError("a cross-fitted association needs >= 2 replicates (x and y must come "
                         f"from different models); got {n_replicates}")
    if n_replicates == 2:
        return np.array([0]), np.array([1])
    return r, (r + 1) % n_replicates


class _Part(typing.NamedTuple):
    x: np.ndarray            # (..., R', F) ranked, centred, control projected out
    y: np.ndarray
    zy: np.ndarray | None    # the control on y's rows (re-projected after permuting y)


def _part(raw: Sequence[np.ndarray], crossfit: bool) -> _Part:
    """One data set's cross-fitted parts from raw matrices ``[x, y]`` or ``[x, y,
    control]``, each (..., R, F)."""
    rx, ry = crossfit_rows(raw[0].shape[-2], crossfit)
    x, y = _rank_centre(raw[0][..., rx, :]), _rank_centre(raw[1][..., ry, :])
    zx = zy = None
    if len(raw) > 2:
        zx, zy = _rank_centre(raw[2][..., rx, :]), _rank_centre(raw[2][..., ry, :])
    return _Part(_project_out(x, zx), _project_out(y, zy), zy)


class AssociationCore(typing.NamedTuple):
    estimate: np.ndarray      # (...,)
    p_value: np.ndarray       # (...,)
    per_dataset: np.ndarray   # (..., D)
    leave_one_out: np.ndarray | None  # (..., D) with >= 2 data sets


def permutations(n_factors: int, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_perm, n_factors)`` random permutations of the factor labels."""
    return rng.permuted(np.broadcast_to(np.arange(n_factors), (n_perm, n_factors)), axis=1)


def _unit_norm(a: np.ndarray) -> np.ndarray:
    """``a`` divided by its Frobenius norm over the last two axes (NaN where 0)."""
    n = np.sqrt((a * a).sum(axis=(-2, -1), keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, a / np.where(n > 0, n, 1.0), np.nan)


def _studentised(u: np.ndarray) -> np.ndarray:
    """``sum_f u_f / sqrt(sum_f u_f^2)`` over the last axis (0 where all are 0)."""
    den = np.sqrt((u * u).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, u.sum(axis=-1) / np.where(den > 0, den, 1.0), 0.0)


def association_core(raws: Sequence[Sequence[np.ndarray]], alternative: str, perms: np.ndarray,
                     crossfit: bool = True) -> AssociationCore:
    """The association test on one or a stack of designs: ``raws[d] = [x, y(,
    control)]`` per data set, each ``(..., R, F)`` with the factors in the same
    order in every data set; ``perms`` (P, F) from :func:`permutations`, applied to
    ``y``'s factor labels in every replicate and data set at once.

    Estimate: ``tanh`` of the mean over data sets of the Fisher z of the
    within-data-set correlations. Test statistic: each data set's correlation is a
    sum of per-factor contributions ``u_df = sum_r x_drf y_drf / (|x_d| |y_d|)``;
    with ``u_f = sum_d u_df`` the statistic is ``sum_f u_f / sqrt(sum_f u_f^2)``,
    permuted like the data. Studentising so (DiCiccio & Romano 2017, *Robust
    permutation tests for correlation and regression coefficients*, JASA) keeps
    the permutation test valid when ``x`` and ``y`` are uncorrelated but not
    independent, e.g. when a factor's noise is large on both sides.
    """
    parts = [_part(raw, crossfit) for raw in raws]
    u_obs, u_null, r = 0.0, 0.0, []
    for p in parts:
        xn, yn = _unit_norm(p.x), _unit_norm(p.y)
        c = (xn * yn).sum(axis=-2)                                          # (..., F)
        r.append(c.sum(axis=-1))
        yp = np.moveaxis(p.y[..., perms], -2, -3)                           # (..., P, R', F)
        zy = None if p.zy is None else p.zy[..., None, :, :]
        u_null = u_null + (xn[..., None, :, :] * _unit_norm(_project_out(yp, zy))).sum(axis=-2)
        u_obs = u_obs + c
    r = np.stack(r, axis=-1)                                                # (..., D)
    zs = _fisher(r)
    est = np.tanh(zs.mean(axis=-1))
    t_obs, t_null = _studentised(u_obs), _studentised(u_null)              # (...,), (..., P)
    sign = 1.0 if alternative == "greater" else -1.0
    tol = 1e-12 * np.maximum(1.0, np.abs(t_obs))
    hits = (sign * t_null >= sign * t_obs[..., None] - tol[..., None]).sum(axis=-1)
    ok = np.isfinite(r).all(axis=-1)
    p = np.where(ok, (1.0 + hits) / (1.0 + perms.shape[0]), np.nan)
    loo = None
    n_ds = r.shape[-1]
    if n_ds >= 2:
        total = zs.sum(axis=-1, keepdims=True)
        loo = np.tanh((total - zs) / (n_ds - 1))
    return AssociationCore(est, p, r, loo)


def _aligned_matrices(table: pd.DataFrame, cols: Sequence[str]) -> tuple[list[str], list[str],
                                                                        list[list[np.ndarray]]]:
    """(data sets, factors, per data set the (R, F) matrices of ``cols``), the
    factors in the same order in every data set (that of the first)."""
    datasets = list(dict.fromkeys(table["dataset"]))
    factors = list(dict.fromkeys(table["factor"]))
    out = []
    for ds in datasets:
        sub = table[table["dataset"] == ds]
        if set(sub["factor"]) != set(factors):
            raise ValueError(f"every data set needs the same factors: {ds!r} has "
                             f"{sorted(set(sub['factor']))}, the table {sorted(factors)}")
        mats = []
        for c in cols:
            m = sub.pivot_table(index="replicate", columns="factor", values=c, aggfunc="first",
                                dropna=False, sort=True)
            if sub.duplicated(["replicate", "factor"]).any() or m.isna().any().any():
                raise ValueError(f"need exactly one row per (replicate, factor) in {ds!r}, "
                                 f"with a value of {c!r}")
            mats.append(m[factors].to_numpy(dtype=float))
        out.append(mats)
    return datasets, factors, out


def association(table: pd.DataFrame, x: str, y: str, control: str | None = None,
                alternative: str = "greater", n_perm: int = 2000, n_boot: int = 1000,
                level: float = 0.95, seed: int = 0, crossfit: bool = True) -> Association:
    """Within-data-set (partial) Spearman association of ``x`` and ``y`` across
    factors, cross-fitted across replicates, combined over data sets; see the
    module docstring for the units.

    ``table`` needs columns dataset, factor, replicate, ``x``, ``y`` (and
    ``control``), one row per population, every factor in every replicate.
    ``crossfit=False`` pairs each replicate's ``x`` with its own ``y`` (the
    statistic used before cross-fitting; shared noise then makes associations, so
    it is kept only to show that, in the tests).
    """
    check_choice("alternative", alternative, DIRECTIONS)
    check_range("n_perm", n_perm, 1, integer=True)
    check_range("n_boot", n_boot, 0, integer=True)
    check_range("level", level, 0.0, 1.0, lo_open=True)
    cols = [x, y] + ([control] if control else [])
    missing = [c for c in ["dataset", "factor", "replicate", *cols] if c not in table.columns]
    if missing:
        raise KeyError(f"the table has no column(s) {', '.join(missing)}")
    if table[cols].isna().any().any():
        raise ValueError(f"some population lacks a value of {', '.join(cols)}")
    datasets, factors, raws = _aligned_matrices(table, cols)
    n_f = len(factors)
    if n_f < 3:
        raise ValueError(f"an association across factors needs >= 3 factors; got {n_f}")
    rng = np.random.default_rng(seed)
    core = association_core(raws, alternative, permutations(n_f, n_perm, rng), crossfit)
    ok = bool(np.isfinite(core.per_dataset).all())
    est = float(core.estimate) if ok else None
    low = high = None
    if ok and n_boot:
        # factors resampled jointly across data sets (a factor's effects may be
        # alike in every data set), ranks recomputed on every resample
        pick = rng.integers(0, n_f, (n_boot, n_f))
        zb = []
        for raw in raws:
            p = _part([np.moveaxis(a[:, pick], 1, 0) for a in raw], crossfit)
            zb.append(_fisher(_corr(p.x, p.y)))
        reps = np.tanh(np.mean(zb, axis=0))
        reps = reps[np.isfinite(reps)]
        if reps.size:
            a = (1 - level) / 2
            low, high = (float(q) for q in np.quantile(reps, [a, 1 - a]))
    loo = None
    if core.leave_one_out is not None and ok:
        loo = {ds: float(v) for ds, v in zip(datasets, core.leave_one_out)}
    return Association(x=x, y=y, control=control, alternative=alternative, estimate=est,
                       low=low, high=high, p_value=_f(core.p_value) if ok else None,
                       per_dataset={ds: _f(v) for ds, v in zip(datasets, core.per_dataset)},
                       leave_one_out=loo, crossfit=bool(crossfit),
                       n_populations=int(len(table)), n_factors=int(n_f),
                       n_datasets=len(datasets), n_perm=int(n_perm), n_boot=int(n_boot),
                       level=float(level))


def direction_holds(a: Association) -> bool:
    """Whether every leave-one-data-set-out estimate has the expected sign (True
    with one data set: there is nothing to leave out)."""
    if a.leave_one_out is None:
        return True
    sign = 1 if a.alternative == "greater" else -1
    return all(v is not None and sign * v > 0 for v in a.leave_one_out.values())


def direction_holds_core(core: AssociationCore, alternative: str) -> np.ndarray:
    """:func:`direction_holds` for a stack of :class:`AssociationCore` results."""
    if core.leave_one_out is None:
        return np.ones(core.estimate.shape, dtype=bool)
    sign = 1.0 if alternative == "greater" else -1.0
    return (sign * core.leave_one_out > 0).all(axis=-1)


# ----------------------------------------------------------------------------- C2, C3

@dataclass(frozen=True)
class C3Evidence(Evidence):
    """RM vs PM across factors (cross-fitted), on i.i.d. and on OOD inputs."""

    iid: Association
    ood: Association | None
    n_datasets: int


#: C3's two associations: (field, PM column).
C3_TESTS = (("iid", "pm:iid"), ("ood", "pm_ood"))


def c3_evidence(table: pd.DataFrame, x: str = "rm_adj", iid: str = "pm:iid",
                ood: str = "pm_ood", n_perm: int = 2000, n_boot: int = 1000,
                seed: int = 0) -> C3Evidence:
    a_iid = association(table, x, iid, None, "greater", n_perm, n_boot, seed=seed)
    a_ood = association(table, x, ood, None, "greater", n_perm, n_boot, seed=seed + 1) \
        if ood in table.columns else None
    return C3Evidence(a_iid, a_ood, int(table["dataset"].nunique()))


#: C2's three predictions: (name, predictor, target, control, expected direction).
C2_PREDICTIONS = (
    ("rm_acc", "rm_small", "acc_ood_rest", "acc_small", "less"),
    ("pm_acc", "pm_small", "acc_ood_rest", "acc_small", "less"),
    ("rm_pm", "rm_small", "pm_ood_rest", "pm_small", "greater"),
)
#: Descriptive companions (not in the verdict): the labelled baseline and the
#: label-free one, each as a predictor of OOD accuracy.
C2_BASELINES = (
    ("baseline", "acc_small", "acc_ood_rest", None, "greater"),
    ("label_free", "disagree_small", "acc_ood_rest", None, "less"),
)


@dataclass(frozen=True)
class C2Evidence(Evidence):
    """Small-sample RM and PM as predictors of OOD behaviour across training
    factors, beyond the obvious small-sample baseline (accuracy for OOD accuracy,
    i.i.d. PM for OOD PM), each side from different replicates' models."""

    rm_acc: Association | None    # RM_small -> OOD accuracy | small-sample accuracy (negative)
    pm_acc: Association | None    # PM_small -> OOD accuracy | small-sample accuracy (negative)
    rm_pm: Association | None     # RM_small -> OOD PM | small-sample PM (positive)
    baseline: Association | None  # small-sample accuracy (labelled) -> OOD accuracy (descriptive)
    label_free: Association | None  # small-sample disagreement (no labels) -> OOD accuracy
    n_small: int
    n_datasets: int


def c2_evidence(small: pd.DataFrame, n_small: int, n_perm: int = 2000, n_boot: int = 1000,
                seed: int = 0) -> C2Evidence:
    """C2's evidence from :func:`rmpm.analysis.finite_samples.small_sample_table` (one row per
    population, with its dataset, factor and replicate). Predictions whose
    target is missing (no corruptions stored) are None; a data set where a column
    is NaN (RM with every layer flagged) is left out of that prediction (its
    ``n_datasets`` says how many remain), and with none left it is None."""
    out = {}
    for i, (name, x, y, z, alt) in enumerate(C2_PREDICTIONS + C2_BASELINES):
        cols = [x, y] + ([z] if z else [])
        out[name] = None
        if not all(c in small.columns for c in cols):
            continue  # no corruptions stored: no target
        # a data set whose RM is NaN (every layer flagged at this sample size) leaves
        # the prediction; it is tested on the others (None if none is left)
        ok = small.groupby("dataset", sort=False)[cols].transform(
            lambda v: v.notna().all()).all(axis=1)
        if ok.any():
            out[name] = association(small[ok], x, y, z, alt, n_perm, n_boot, seed=seed + i)
    return C2Evidence(**out, n_small=int(n_small), n_datasets=int(small["dataset"].nunique()))


# ----------------------------------------------------------------------------- C4

@dataclass(frozen=True)
class ExcessDisagreement(Evidence):
    """Mean over model pairs of churn minus the accuracy difference (a lower
    bound of churn), i.e. disagreement that accuracy cannot explain."""

    estimate: float
    low: float                 # two-sided percentile interval at ``level``
    high: float
    p_value: float             # bootstrap p of "excess <= threshold" (one-sided)
    threshold: float
    churn: float               # mean pairwise disagreement
    accuracy_gap: float        # mean pairwise |acc_i - acc_j|
    n_models: int
    n_inputs: int
    n_boot: int
    level: float


def _excess_reps(pred: np.ndarray, correct: np.ndarray, weights: np.ndarray,
                 models: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(excess, churn, gap) for each replicate: ``weights`` (R, n) input counts,
    ``models`` (R, m) model indices; pairs of a model with its own copy left out."""
    m, n = pred.shape
    w = weights / weights.sum(axis=1, keepdims=True)
    dis = (pred[:, None, :] != pred[None, :, :]).reshape(m * m, n).astype(float)
    churn_all = (w @ dis.T).reshape(-1, m, m)               # (R, m, m)
    acc_all = w @ correct.T.astype(float)                    # (R, m)
    ia, ib = np.triu_indices(models.shape[1], k=1)
    a, b = models[:, ia], models[:, ib]                      # (R, pairs)
    r = np.arange(len(models))[:, None]
    churn = churn_all[r, a, b]
    gap = np.abs(acc_all[r, a] - acc_all[r, b])
    keep = a != b
    cnt = keep.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = lambda v: np.where(cnt > 0, (v * keep).sum(axis=1) / np.maximum(cnt, 1), np.nan)
        return mean(churn - gap), mean(churn), mean(gap)


def excess_disagreement(probs, labels, threshold: float = 0.01, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> ExcessDisagreement:
    """Excess disagreement of a population (models, inputs, classes) with a two-way
    bootstrap: models and inputs resampled with replacement, pairs of a model
    with its own copy left out (they carry no information about disagreement)."""
    from ..measures.multiplicity import as_probs, check_labels
    check_range("threshold", threshold, 0.0, 1.0)
    check_range("n_boot", n_boot, 1, integer=True)
    check_range("level", level, 0.0, 1.0, lo_open=True)
    p = as_probs(probs)
    m, n, _ = p.shape
    if m < 2:
        raise ValueError(f"excess disagreement needs >= 2 models; got {m}")
    y = check_labels(labels, n)
    pred = p.argmax(axis=2)
    correct = pred == y[None]
    est, churn, gap = (float(v[0]) for v in
                       _excess_reps(pred, correct, np.ones((1, n)), np.arange(m)[None]))
    rng = np.random.default_rng(seed)
    reps = []
    for start in range(0, n_boot, 200):  # bounded memory: 200 replicates at a time
        k = min(200, n_boot - start)
        models = rng.integers(0, m, (k, m))
        weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(k)])
        reps.append(_excess_reps(pred, correct, weights, models)[0])
    reps = np.concatenate(reps)
    reps = reps[np.isfinite(reps)]
    a = (1 - level) / 2
    low, high = np.quantile(reps, [a, 1 - a])
    p_val = float((1 + (reps <= threshold).sum()) / (1 + reps.size))
    return ExcessDisagreement(estimate=est, low=float(low), high=float(high), p_value=p_val,
                              threshold=float(threshold), churn=churn, accuracy_gap=gap,
                              n_models=int(m), n_inputs=int(n), n_boot=int(n_boot),
                              level=float(level))


@dataclass(frozen=True)
class C4Evidence(Evidence):
    iid: ExcessDisagreement
    ood: ExcessDisagreement | None
    acc_range: float            # max - min test accuracy over the population (whole split)


def c4_evidence(probs_iid, labels, probs_ood=None, acc_range: float = float("nan"),
                threshold: float = 0.01, n_boot: int = 1000, seed: int = 0) -> C4Evidence:
    iid = excess_disagreement(probs_iid, labels, threshold, n_boot, seed=seed)
    ood = None if probs_ood is None else \
        excess_disagreement(probs_ood, labels, threshold, n_boot, seed=seed + 1)
    return C4Evidence(iid, ood, float(acc_range))


__all__ = ["ALPHA", "Evidence", "C1_BASELINE", "MAX_FLIPS", "sign_flips", "c1_core", "C1Core",
           "c1_contrasts", "C1Evidence", "c1_evidence", "c1_contrast_table", "factor_effect_size",
           "Association", "association", "association_core", "AssociationCore", "permutations",
           "crossfit_rows", "direction_holds", "direction_holds_core", "C2Evidence",
           "c2_evidence", "C2_PREDICTIONS", "C2_BASELINES", "C3Evidence", "C3_TESTS",
           "c3_evidence", "ExcessDisagreement", "excess_disagreement", "C4Evidence", "c4_evidence"]
