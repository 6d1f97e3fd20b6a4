"""The tests behind the verdicts: one calibrated decision statistic per claim.

Each function here turns the table a chapter builds into a small, typed
*evidence* record (a frozen dataclass), which the chapter saves and
:mod:`rmpm.book.claims` turns into a verdict. The same functions run inside the
simulations of :mod:`rmpm.book.calibration`, so the false-positive rates printed
beside the verdicts are those of exactly this code.

Units and nulls (the choices are ours; the paper's text is not available):

* **C1** (some training differences give systematically larger RM). Blocks are
  (data set, replicate); within a block every factor's population starts from
  the same base recipe. Statistic: Kendall's W of the factor ranking across
  blocks (equivalently Friedman's chi-square). Null: within every block the
  factor labels are exchangeable. p-value: each block's values shuffled
  independently (exact under that null, whatever the number of blocks).
* **C2, C3** (associations across populations). A population is one (data set,
  factor, replicate). Values are ranked within a data set (Spearman), centred
  within each block (removing whatever a block's shared base model adds to all
  its populations), and, for a *partial* association, the control variable is
  projected out. The unit of inference is the **factor**: replicates of one
  factor share their recipe, so they are not independent evidence of an
  association *across training differences*. p-value: the factor labels of ``y``
  are permuted within each data set (the same permutation in every replicate;
  Freedman & Lane 1983 for the partial case); interval: factors resampled within
  data sets. Data sets are combined by the mean of their Fisher z.
* **C4** (equally good models disagree beyond what accuracy implies). For two
  models, the share of inputs on which they disagree is at least the difference
  of their accuracies; the statistic is the mean over model pairs of
  ``churn - |acc_i - acc_j|``. It is tested against a threshold (default 1 % of
  inputs) with a bootstrap over models and inputs.

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

#: Default significance level of every rule.
ALPHA = 0.05
BLOCK = ("dataset", "replicate")
ALTERNATIVES = ("greater", "less")


# ----------------------------------------------------------------------------- typed records

class Evidence:
    """Base of the evidence records: strict conversion to and from plain dicts.

    ``from_dict`` refuses missing and unexpected keys, so a renamed field in a
    chapter's result fails loudly instead of silently changing a verdict.
    """

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

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


def _plain(v: Any) -> Any:
    if isinstance(v, Evidence):
        return v.to_dict()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _f(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _p_value(stat: float, null: np.ndarray, alternative: str) -> float:
    """Permutation p-value ``(1 + #{null at least as extreme}) / (1 + n)``."""
    null = null[np.isfinite(null)]
    tol = 1e-12 * max(1.0, abs(stat))
    hits = (null >= stat - tol) if alternative == "greater" else (null <= stat + tol)
    return float((1 + hits.sum()) / (1 + null.size))


# ----------------------------------------------------------------------------- C1

@dataclass(frozen=True)
class C1Evidence(Evidence):
    """Is the factor ranking of ``value`` the same in every block?"""

    value: str                   # the table column tested (e.g. "rm_adj")
    ranking: list[str]           # factors by decreasing mean over blocks
    means: dict[str, float]      # mean over blocks per factor
    kendalls_w: float | None     # agreement of the blocks' rankings (1 = identical)
    p_value: float | None        # within-block permutation p of W; None with < 2 blocks
    n_blocks: int
    n_factors: int
    n_datasets: int
    p_datasets: float | None     # same test with data sets as blocks (replicate means); None with 1
    effect_size: float | None    # SD of factor effects / residual SD (two-way ANOVA)
    n_perm: int


def _block_matrix(table: pd.DataFrame, value: str, blocks=BLOCK) -> pd.DataFrame:
    from .factor_analysis import block_matrix
    return block_matrix(table, value, blocks)


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


def c1_evidence(table: pd.DataFrame, value: str = "rm_adj", n_perm: int = 2000,
                seed: int = 0) -> C1Evidence:
    """C1's evidence from a factor table (one row per data set, factor, replicate)."""
    from ..measures.stats import kendalls_w, kendalls_w_permutation
    check_range("n_perm", n_perm, 1, integer=True)
    m = _block_matrix(table, value)
    n_blocks, n_factors = m.shape
    if n_factors < 2:
        raise ValueError(f"C1 needs at least 2 factors; got {n_factors}")
    means = m.mean(axis=0).sort_values(ascending=False)
    w = p = None
    if n_blocks >= 2 and np.ptp(m.to_numpy(), axis=1).max() > 0:
        w = kendalls_w(m.to_numpy())
        p = kendalls_w_permutation(m.to_numpy(), n_perm, seed)
    datasets = list(dict.fromkeys(table["dataset"]))
    p_ds = None
    if len(datasets) >= 2:
        dm = (table.groupby(["dataset", "factor"], sort=False)[value].mean().reset_index()
              .assign(replicate=0))
        md = _block_matrix(dm, value)[list(m.columns)]
        if np.ptp(md.to_numpy(), axis=1).max() > 0:
            p_ds = kendalls_w_permutation(md.to_numpy(), n_perm, seed + 1)
    return C1Evidence(value=value, ranking=[str(f) for f in means.index],
                      means={str(k): float(v) for k, v in means.items()},
                      kendalls_w=_f(w), p_value=_f(p), n_blocks=int(n_blocks),
                      n_factors=int(n_factors), n_datasets=len(datasets), p_datasets=_f(p_ds),
                      effect_size=factor_effect_size(m.to_numpy()), n_perm=int(n_perm))


# ----------------------------------------------------------------------------- associations

@dataclass(frozen=True)
class Association(Evidence):
    """Within-data-set (partial) rank association of ``x`` with ``y`` across factors."""

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
    n_populations: int
    n_factors: int
    n_datasets: int
    n_perm: int
    n_boot: int
    level: float


def _raw_matrices(sub: pd.DataFrame, cols: Sequence[str], blocks=BLOCK) -> list[np.ndarray]:
    """blocks x factors matrices of ``cols`` for one data set (blocks and factors in
    order of first appearance); every (block, factor) cell exactly once."""
    # plain numpy indexing: calibration calls this hundreds of thousands of times
    bi, bk = pd.factorize(pd.MultiIndex.from_frame(sub[list(blocks)]))
    fi, fk = pd.factorize(sub["factor"])
    cell = bi * len(fk) + fi
    if len(np.unique(cell)) != len(sub) or len(sub) != len(bk) * len(fk):
        raise ValueError(f"need exactly one row per ({', '.join(blocks)}, factor): "
                         f"{len(sub)} rows for {len(bk)} blocks x {len(fk)} factors")
    out = []
    for c in cols:
        m = np.empty(len(bk) * len(fk))
        m[cell] = sub[c].to_numpy(dtype=float)
        out.append(m.reshape(len(bk), len(fk)))
    return out


def _rank_centre(a: np.ndarray) -> np.ndarray:
    """Ranks over the whole matrix (a data set), centred within each block (row);
    a stack ``(..., B, F)`` is ranked matrix by matrix."""
    flat = a.reshape(*a.shape[:-2], -1)
    r = _st.rankdata(flat, axis=-1).reshape(a.shape)
    return r - r.mean(axis=-1, keepdims=True)


def _project_out(v: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    """Residual of ``v`` after least squares on ``z`` (both block-centred); works
    on a stack ``(..., B, F)`` of ``v``."""
    if z is None:
        return v
    zz = (z * z).sum(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(zz > 0, (v * z).sum(axis=(-2, -1), keepdims=True) / np.where(zz > 0, zz, 1), 0)
    return v - slope * z


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation of matched (B, F) matrices (either side may be a stack
    ``(..., B, F)``), both already mean-zero within rows (so within the matrix)."""
    num = (x * y).sum(axis=(-2, -1))
    den = np.sqrt((x * x).sum(axis=(-2, -1)) * (y * y).sum(axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _fisher(r):
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


class _DatasetPart(typing.NamedTuple):
    x: np.ndarray
    y_res: np.ndarray   # y with the control (and blocks) projected out
    z: np.ndarray | None
    r: float


def _dataset_part(raw: Sequence[np.ndarray]) -> _DatasetPart:
    """Ranked, block-centred x and y (control projected out) of one data set, from
    its raw matrices ``[x, y]`` or ``[x, y, control]``."""
    mats = [_rank_centre(a) for a in raw]
    z = mats[2] if len(mats) > 2 else None
    xr, yr = _project_out(mats[0], z), _project_out(mats[1], z)
    return _DatasetPart(xr, yr, z, float(_corr(xr, yr)))


def association(table: pd.DataFrame, x: str, y: str, control: str | None = None,
                alternative: str = "greater", n_perm: int = 2000, n_boot: int = 1000,
                level: float = 0.95, seed: int = 0) -> Association:
    """Within-data-set (partial) Spearman association of ``x`` and ``y`` over
    populations, combined over data sets; see the module docstring for the units.

    ``table`` needs columns dataset, factor, replicate, ``x``, ``y`` (and
    ``control``), one row per population, every factor in every replicate.
    """
    check_choice("alternative", alternative, ALTERNATIVES)
    check_range("n_perm", n_perm, 1, integer=True)
    check_range("n_boot", n_boot, 0, integer=True)
    check_range("level", level, 0.0, 1.0, lo_open=True)
    cols = [x, y] + ([control] if control else [])
    missing = [c for c in ["dataset", "factor", "replicate", *cols] if c not in table.columns]
    if missing:
        raise KeyError(f"the table has no column(s) {', '.join(missing)}")
    if table[cols].isna().any().any():
        raise ValueError(f"some population lacks a value of {', '.join(cols)}")
    rng = np.random.default_rng(seed)
    datasets = list(dict.fromkeys(table["dataset"]))
    raw = {ds: _raw_matrices(table[table["dataset"] == ds], cols) for ds in datasets}
    parts = {ds: _dataset_part(m) for ds, m in raw.items()}
    n_factors = {ds: p.x.shape[1] for ds, p in parts.items()}
    if min(n_factors.values()) < 3:
        raise ValueError(f"an association across factors needs >= 3 factors per data set; "
                         f"got {n_factors}")
    r = {ds: p.r for ds, p in parts.items()}
    ok = all(np.isfinite(v) for v in r.values())
    est = float(np.tanh(np.mean([_fisher(v) for v in r.values()]))) if ok else None
    p_val = low = high = None
    if ok:
        # permutation: factor labels of y shuffled within each data set (columns of
        # the residual matrix, Freedman-Lane), the same shuffle for every replicate
        zs = []
        for ds, part in parts.items():
            f = part.x.shape[1]
            perm = rng.permuted(np.broadcast_to(np.arange(f), (n_perm, f)), axis=1)
            yp = _project_out(part.y_res[:, perm].transpose(1, 0, 2), part.z)
            zs.append(_fisher(_corr(part.x, yp)))
        null = np.tanh(np.mean(zs, axis=0))
        p_val = _p_value(est, null, alternative)
        # bootstrap (interval only; n_boot=0 skips it): factors resampled within
        # each data set, ranks recomputed on every resample
        if n_boot:
            zb = []
            for ds in datasets:
                f = raw[ds][0].shape[1]
                pick = rng.integers(0, f, (n_boot, f))
                mats = [_rank_centre(a[:, pick].transpose(1, 0, 2)) for a in raw[ds]]
                zc = mats[2] if len(mats) > 2 else None
                zb.append(_fisher(_corr(_project_out(mats[0], zc), _project_out(mats[1], zc))))
            reps = np.tanh(np.mean(zb, axis=0))
            reps = reps[np.isfinite(reps)]
            if reps.size:
                a = (1 - level) / 2
                low, high = (float(q) for q in np.quantile(reps, [a, 1 - a]))
    loo = None
    if len(datasets) >= 2 and ok:
        loo = {ds: float(np.tanh(np.mean([_fisher(r[o]) for o in datasets if o != ds])))
               for ds in datasets}
    return Association(x=x, y=y, control=control, alternative=alternative, estimate=_f(est),
                       low=low, high=high, p_value=p_val,
                       per_dataset={ds: _f(v) for ds, v in r.items()}, leave_one_out=loo,
                       n_populations=int(len(table)), n_factors=int(max(n_factors.values())),
                       n_datasets=len(datasets), n_perm=int(n_perm), n_boot=int(n_boot),
                       level=float(level))


def direction_holds(a: Association) -> bool:
    """Whether every leave-one-data-set-out estimate has the expected sign (True
    with one data set: there is nothing to leave out)."""
    if a.leave_one_out is None:
        return True
    sign = 1 if a.alternative == "greater" else -1
    return all(v is not None and sign * v > 0 for v in a.leave_one_out.values())


# ----------------------------------------------------------------------------- C2, C3

@dataclass(frozen=True)
class C3Evidence(Evidence):
    """RM vs PM across populations, on i.i.d. and on OOD inputs."""

    iid: Association
    ood: Association | None
    n_datasets: int


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


@dataclass(frozen=True)
class C2Evidence(Evidence):
    """Small-sample RM and PM as predictors of OOD behaviour, beyond the obvious
    small-sample baseline (accuracy for OOD accuracy, i.i.d. PM for OOD PM)."""

    rm_acc: Association | None    # RM_small -> OOD accuracy | small-sample accuracy (negative)
    pm_acc: Association | None    # PM_small -> OOD accuracy | small-sample accuracy (negative)
    rm_pm: Association | None     # RM_small -> OOD PM | small-sample PM (positive)
    baseline: Association | None  # small-sample accuracy -> OOD accuracy (descriptive)
    n_small: int
    n_datasets: int


def c2_evidence(small: pd.DataFrame, n_small: int, n_perm: int = 2000, n_boot: int = 1000,
                seed: int = 0) -> C2Evidence:
    """C2's evidence from :func:`rmpm.book.finite_samples.small_sample_table` (one row per
    population, with its dataset, factor and replicate). Predictions whose
    target is missing (no corruptions stored) are None."""
    out = {}
    for i, (name, x, y, z, alt) in enumerate(C2_PREDICTIONS):
        out[name] = association(small, x, y, z, alt, n_perm, n_boot, seed=seed + i) \
            if y in small.columns else None
    base = association(small, "acc_small", "acc_ood_rest", None, "greater", n_perm, n_boot,
                       seed=seed + 10) if "acc_ood_rest" in small.columns else None
    return C2Evidence(**out, baseline=base, n_small=int(n_small),
                      n_datasets=int(small["dataset"].nunique()))


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


__all__ = ["ALPHA", "Evidence", "C1Evidence", "c1_evidence", "factor_effect_size",
           "Association", "association", "direction_holds", "C2Evidence", "c2_evidence",
           "C2_PREDICTIONS", "C3Evidence", "c3_evidence", "ExcessDisagreement",
           "excess_disagreement", "C4Evidence", "c4_evidence"]
