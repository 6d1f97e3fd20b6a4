"""Analyses of the factor table (:func:`rmpm.analysis.populations.factor_table`) for the
results chapters: RM by training difference (C1), PM under shift, RM vs PM (C3).

Everything here is a pure function of DataFrames/arrays, so the notebooks only
call, tabulate and plot. The unit of replication throughout is the
*population*: one row of the factor table, i.e. one (data set, factor,
replicate). Conventions:

* **Blocks** are (data set, replicate) pairs. Within a block every factor's
  population starts from the same replicate base recipe (same seeds), so
  comparing factors within a block is a paired comparison; this is the
  blocking of the Friedman test and of the paired bootstrap below.
* **Bootstrap intervals** are percentile intervals (as :mod:`rmpm.measures.stats`) over
  blocks or populations, resampled *within each data set* (stratified), so a
  resample never changes how much each data set weighs. With one data set and
  R replicates they are intervals over the R replicates only; with R = 2 the
  interval is little more than the range of the two values.
* Every random draw comes from ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from ..measures import stats
from .._checks import check_choice, check_range
from ..pipeline.evaluate import pred_key, shifts_in
from .factors import BLOCK, block_matrix, factor_group, need_columns

# -- tidy tables --------------------------------------------------------------


def layer_names(table: pd.DataFrame, dataset: str | None = None) -> list[str]:
    """Probe layers with an ``rm:<layer>`` value (for ``dataset``, if given), in
    network order.

    The order comes from the ``layers`` column (comma-separated, written by
    :func:`rmpm.analysis.populations.factor_table`) when the rows agree on it. Column order
    is not enough: after concatenating the tables of two data sets with different
    architectures, a layer name both share (e.g. ``logits``) keeps the first
    table's position. Without a ``layers`` column, column order is used.
    """
    t = table if dataset is None else table[table["dataset"] == dataset]
    if t.empty:
        raise ValueError(f"no rows for dataset={dataset!r}")
    have = [c.split(":", 1)[1] for c in t.columns
            if c.startswith("rm:") and t[c].notna().all()]
    if "layers" in t.columns:
        orders = t["layers"].dropna().unique()
        if len(orders) == 1:
            order = str(orders[0]).split(",")
            return [layer for layer in order if layer in have] + \
                [layer for layer in have if layer not in order]
    return have


def rm_long(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (data set, factor, replicate, layer) with its ``rm``."""
    need_columns(table, ["dataset", "factor", "replicate"])
    parts = []
    for ds, t in table.groupby("dataset", sort=False):
        for layer in layer_names(t):
            parts.append(t[["dataset", "factor", "replicate"]].assign(
                layer=layer, rm=t[f"rm:{layer}"].to_numpy()))
    return pd.concat(parts, ignore_index=True)


def pm_long(table: pd.DataFrame, prefix: str = "pm") -> pd.DataFrame:
    """One row per (data set, factor, replicate, kind, severity) with ``pm``.

    The i.i.d. test set is ``kind="iid"``, ``severity=0``; shifts come from the
    ``<prefix>:<kind>:<severity>`` columns of the factor table.
    """
    need_columns(table, ["dataset", "factor", "replicate", f"{prefix}:iid"])
    keys = ["dataset", "factor", "replicate"]
    parts = [table[keys].assign(kind="iid", severity=0, pm=table[f"{prefix}:iid"].to_numpy())]
    for kind, sev in shifts_in(table.columns, prefix):
        parts.append(table[keys].assign(kind=kind, severity=sev,
                                        pm=table[pred_key(kind, sev, prefix)].to_numpy()))
    if len(parts) == 1:
        raise ValueError(f"the table has no shifted {prefix!r} columns "
                         f"('{prefix}:<kind>:<severity>'): the profile evaluates no corruptions")
    return pd.concat(parts, ignore_index=True).dropna(subset=["pm"])


# -- bootstrap over blocks / populations ---------------------------------------

def _strata_indices(strata: Sequence[Any] | None, n: int) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n)]
    s = np.asarray(list(strata), dtype=object)
    if s.shape != (n,):
        raise ValueError(f"strata must have one label per row ({n}); got {s.shape[0]}")
    return [np.flatnonzero(s == u) for u in dict.fromkeys(s.tolist())]


def _resample_rows(rng: np.random.Generator, groups: list[np.ndarray]) -> np.ndarray:
    """Row indices of one stratified resample (each stratum keeps its size)."""
    return np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])


def bootstrap_column_means(matrix: pd.DataFrame | np.ndarray, strata: Sequence[Any] | None = None,
                           n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                           return_replicates: bool = False):
    """Mean of every column with a percentile bootstrap interval over rows.

    Rows (blocks or populations) are resampled with replacement *within each
    stratum* (e.g. data set); all columns share the same resampled rows, so the
    replicates also give paired intervals of differences between columns.
    Returns a DataFrame indexed by column with ``estimate``, ``low``, ``high``
    (and, with ``return_replicates``, the ``(n_boot, columns)`` replicate array).
    """
    stats.check_boot(n_boot, level)
    df = matrix if isinstance(matrix, pd.DataFrame) else pd.DataFrame(np.asarray(matrix))
    a = df.to_numpy(dtype=float)
    if a.ndim != 2 or a.shape[0] < 1:
        raise ValueError(f"matrix must be 2-D with at least one row; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("matrix contains NaN/inf")
    groups = _strata_indices(strata, a.shape[0])
    rng = np.random.default_rng(seed)
    reps = np.stack([a[_resample_rows(rng, groups)].mean(axis=0) for _ in range(n_boot)])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha], axis=0)
    out = pd.DataFrame({"estimate": a.mean(axis=0), "low": lo, "high": hi}, index=df.columns)
    return (out, reps) if return_replicates else out


def factor_intervals(table: pd.DataFrame, value: str = "rm", n_boot: int = 1000,
                     level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean ``value`` per factor over (data set, replicate) blocks, with a
    bootstrap interval over blocks stratified by data set; sorted by decreasing
    mean. Columns: ``estimate``, ``low``, ``high``, ``group``, ``rank`` (1 = largest)."""
    m = block_matrix(table, value)
    ci = bootstrap_column_means(m, m.index.get_level_values("dataset"), n_boot, level, seed)
    ci = ci.sort_values("estimate", ascending=False)
    ci["group"] = [factor_group(f) for f in ci.index]
    ci["rank"] = np.arange(1, len(ci) + 1)
    ci.index.name = "factor"
    return ci


def layer_intervals(table: pd.DataFrame, dataset: str, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """RM per (factor, layer) of one data set: mean over replicates with a
    bootstrap interval over replicates. Long format: factor, layer, estimate, low, high."""
    t = table[table["dataset"] == dataset]
    if t.empty:
        raise ValueError(f"no rows for dataset={dataset!r}; data sets: "
                         f"{', '.join(map(str, table['dataset'].unique()))}")
    rows = []
    for i, layer in enumerate(layer_names(t)):
        m = block_matrix(t, f"rm:{layer}")
        ci = bootstrap_column_means(m, None, n_boot, level, seed + i)
        rows.append(ci.rename_axis("factor").reset_index().assign(layer=layer))
    return pd.concat(rows, ignore_index=True)[["factor", "layer", "estimate", "low", "high"]]


def ci_separated(intervals: pd.DataFrame) -> bool:
    """Whether the interval of the first row (largest mean) lies entirely above
    that of the last row (smallest mean) of :func:`factor_intervals`' output."""
    if len(intervals) < 2:
        raise ValueError("need at least 2 factors to compare the top and the bottom one")
    return bool(intervals["low"].iloc[0] > intervals["high"].iloc[-1])


def group_difference(table: pd.DataFrame, a: Sequence[str], b: Sequence[str],
                     value: str = "rm", n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Mean ``value`` of factors ``a`` minus that of factors ``b``, paired within
    (data set, replicate) blocks, with a stratified bootstrap interval over blocks.

    Returns ``{"a": CI dict, "b": CI dict, "difference": CI dict, "n_blocks"}``.
    """
    a, b = list(a), list(b)
    if not a or not b:
        raise ValueError(f"both factor groups must be non-empty; got a={a!r}, b={b!r}")
    if set(a) & set(b):
        raise ValueError(f"factor groups overlap: {sorted(set(a) & set(b))}")
    m = block_matrix(table, value)
    missing = [f for f in a + b if f not in m.columns]
    if missing:
        raise ValueError(f"factor(s) {', '.join(missing)} are not in the table")
    g = pd.DataFrame({"a": m[a].mean(axis=1), "b": m[b].mean(axis=1)})
    g["difference"] = g["a"] - g["b"]
    ci = bootstrap_column_means(g, m.index.get_level_values("dataset"), n_boot, level, seed)
    out: dict[str, Any] = {k: {c: float(ci.loc[k, c]) for c in ("estimate", "low", "high")}
                           for k in ci.index}
    out["n_blocks"] = int(len(m))
    return out


def format_intervals(frames: Mapping[str, pd.DataFrame], digits: int = 4) -> pd.DataFrame:
    """Side-by-side display of several interval tables (columns estimate, low,
    high, same index): one text column ``"estimate [low, high]"`` per entry."""
    check_range("digits", digits, 0, integer=True)
    out = {}
    for name, f in frames.items():
        need_columns(f, ["estimate", "low", "high"])
        out[name] = [f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                     for e, lo, hi in zip(f["estimate"], f["low"], f["high"])]
    first = next(iter(frames.values()))
    return pd.DataFrame(out, index=first.index)


# -- is the ranking systematic? -------------------------------------------------

def concordance(table: pd.DataFrame, value: str = "rm", blocks: Sequence[str] = BLOCK,
                n_perm: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Friedman test and Kendall's W of the factor ranking across ``blocks``.

    Keys: ``statistic`` (Friedman chi-square), ``pvalue`` (its chi-square
    approximation), ``pvalue_permutation`` (:func:`rmpm.measures.stats.kendalls_w_permutation`),
    ``kendalls_w``, ``n_blocks``, ``n_treatments``. With fewer than 2 blocks
    the test is undefined and every number is None.
    """
    m = block_matrix(table, value, blocks)
    n_blocks, n_treat = m.shape
    out: dict[str, Any] = {"statistic": None, "pvalue": None, "pvalue_permutation": None,
                           "kendalls_w": None, "n_blocks": int(n_blocks),
                           "n_treatments": int(n_treat)}
    if n_treat < 2:
        raise ValueError(f"need at least 2 factors to rank; got {n_treat}")
    if n_blocks < 2:
        return out
    fr = stats.friedman_test(m.to_numpy())
    out.update(statistic=fr.statistic, pvalue=fr.pvalue, kendalls_w=fr.kendalls_w,
               pvalue_permutation=stats.kendalls_w_permutation(m.to_numpy(), n_perm, seed))
    return out


def dataset_matrix(table: pd.DataFrame, value: str = "rm") -> pd.DataFrame:
    """Data sets x factors matrix of ``value`` averaged over replicates (for the
    question "is the ordering the same on every data set?")."""
    mean = table.groupby(["dataset", "factor"], sort=False)[value].mean().reset_index()
    return block_matrix(mean, value, blocks=("dataset",))


def rank_matrix(matrix: pd.DataFrame) -> pd.DataFrame:
    """Ranks within each row, 1 = largest value (average ranks for ties)."""
    return matrix.rank(axis=1, ascending=False, method="average")


#: The factor ranking under other similarity measures, beside ``rm_adj`` (chance-
#: adjusted SVCCA, 99 % variance): on the same chance-adjusted footing (debiased
#: CKA; SVCCA keeping a fixed number of directions, so no factor is ranked by its
#: kept dimensions), and raw (linear CKA, PWCCA), all over the same layers.
CROSS_CHECKS = {"debiased CKA (adj.)": "rm_dcka_adj", "SVCCA, fixed k (adj.)": "rm_k_adj",
                "linear CKA (raw)": "rm_cka", "PWCCA (raw)": "rm_pwcca"}


def measure_rankings(table: pd.DataFrame, reference: str = "rm_adj",
                     others: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Mean value per factor over blocks under ``reference`` and each of ``others``
    (default :data:`CROSS_CHECKS`, those the table has), with each measure's rank
    (1 = largest), factors in the reference's order."""
    others = {k: v for k, v in (others or CROSS_CHECKS).items() if v in table.columns}
    cols = {"SVCCA 99% (adj., tested)": reference, **others}
    means = pd.DataFrame({name: block_matrix(table, col).mean(axis=0) for name, col in cols.items()})
    means = means.sort_values(next(iter(cols)), ascending=False)
    ranks = means.rank(ascending=False).add_suffix(" rank")
    return pd.concat([means, ranks], axis=1)


def measure_agreement(table: pd.DataFrame, reference: str = "rm_adj",
                      others: Mapping[str, str] | None = None, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Spearman correlation, across factors, between the mean per factor under
    ``reference`` (chance-adjusted SVCCA) and under each other measure (default
    :data:`CROSS_CHECKS`, those the table has).

    Each mean is over (data set, replicate) blocks; 1 means the measures order
    the factors identically. Returns ``{name: {"r", "low", "high", "p"}}`` with
    a bootstrap interval over factors (:func:`rmpm.measures.stats.correlation`).
    """
    others = {k: v for k, v in (others or CROSS_CHECKS).items() if v in table.columns}
    ref = block_matrix(table, reference).mean(axis=0)
    if len(ref) < 3:
        raise ValueError(f"rank agreement needs at least 3 factors; got {len(ref)}")
    out = {}
    for i, (name, col) in enumerate(others.items()):
        other = block_matrix(table, col).mean(axis=0)[ref.index]
        c = stats.correlation(ref.to_numpy(), other.to_numpy(), "spearman", n_boot, level,
                              seed + i)
        out[name] = dict(c._asdict())
    return out


# -- PM under shift --------------------------------------------------------------

def severity_matrix(long: pd.DataFrame) -> pd.DataFrame:
    """Populations x severities: PM averaged over corruption kinds at each
    severity (severity 0 = i.i.d.). Index: (dataset, factor, replicate)."""
    need_columns(long, ["dataset", "factor", "replicate", "severity", "pm"])
    m = long.pivot_table(index=["dataset", "factor", "replicate"], columns="severity",
                         values="pm", aggfunc="mean", sort=False)
    m = m[sorted(m.columns)]
    if m.isna().any().any():
        raise ValueError("some population lacks PM at some severity")
    return m


def severity_curves(long: pd.DataFrame, by: str | None = None, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean PM per severity (and per ``by``: e.g. ``"kind"`` or ``"factor"``),
    with a bootstrap interval over populations stratified by data set.

    For ``by="kind"`` the i.i.d. point (severity 0) is shared by every kind.
    Long format: [by], severity, estimate, low, high, n.
    """
    if by is None:
        groups = [(None, long)]
    else:
        check_choice("by", by, ("kind", "factor", "dataset"))
        shifted = long[long["kind"] != "iid"]
        iid = long[long["kind"] == "iid"]
        groups = []
        for g, t in shifted.groupby(by, sort=False):
            base = iid if by == "kind" else iid[iid[by] == g]
            groups.append((g, pd.concat([base, t])))
    rows = []
    for i, (g, t) in enumerate(groups):
        m = severity_matrix(t)
        ci = bootstrap_column_means(m, m.index.get_level_values("dataset"), n_boot, level,
                                    seed + i)
        ci = ci.rename_axis("severity").reset_index().assign(n=len(m))
        if by is not None:
            ci.insert(0, by, g)
        rows.append(ci)
    return pd.concat(rows, ignore_index=True)


def _pooled_spearman(m: np.ndarray, sev: np.ndarray) -> float:
    return stats.rank_correlation(np.broadcast_to(sev, m.shape).ravel(), m.ravel())


def severity_trend(long: pd.DataFrame, n_boot: int = 1000, n_perm: int = 2000,
                   level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Does PM grow with shift severity? Spearman correlation of PM (mean over
    kinds) with severity over all (population, severity) points, i.i.d. as
    severity 0.

    The points of one population are not independent, so the interval is a
    *cluster* bootstrap (whole populations resampled, stratified by data set) and
    the p-value a permutation test that shuffles severities *within* each
    population (one-sided would hide a decrease, so it is two-sided on |r|).
    Also: ``within_mean``, the mean over populations of each population's own
    Spearman r, and ``frac_increasing``, the share of populations whose PM at the
    highest severity exceeds their i.i.d. PM.
    """
    stats.check_boot(n_boot, level)
    check_range("n_perm", n_perm, 1, integer=True)
    mdf = severity_matrix(long)
    if mdf.shape[1] < 2:
        raise ValueError("need PM at 2 or more severities (i.i.d. counts as 0)")
    m = mdf.to_numpy()
    sev = np.asarray(mdf.columns, dtype=float)
    r = _pooled_spearman(m, sev)
    if not np.isfinite(r):
        raise ValueError("PM is constant over every population and severity")
    rng = np.random.default_rng(seed)
    groups = _strata_indices(mdf.index.get_level_values("dataset"), len(m))
    reps = np.array([_pooled_spearman(m[_resample_rows(rng, groups)], sev)
                     for _ in range(n_boot)])
    ci = stats.percentile_ci(r, reps, level, n_boot)
    # permutation null: exchangeable severities within a population; global ranks
    # of PM travel with the values, so rank once and shuffle the ranks
    ry = _st.rankdata(m.ravel()).reshape(m.shape)
    rx = _st.rankdata(np.broadcast_to(sev, m.shape).ravel()).reshape(m.shape)
    perm = rng.permuted(np.broadcast_to(ry, (n_perm, *m.shape)).copy(), axis=2)
    px = (rx - rx.mean()).ravel()
    py = perm.reshape(n_perm, -1) - ry.mean()
    r_perm = py @ px / (np.sqrt((py**2).sum(axis=1)) * np.sqrt((px**2).sum()))
    p = float((1 + (np.abs(r_perm) >= abs(r) * (1 - 1e-12)).sum()) / (1 + n_perm))
    within = [stats.rank_correlation(sev, row) for row in m]
    return {"r": float(r), "low": ci.low, "high": ci.high, "p": p,
            "n_populations": int(len(m)), "n_points": int(m.size),
            "within_mean": float(np.nanmean(within)),
            "frac_increasing": float((m[:, -1] > m[:, 0]).mean())}


def ood_over_iid_ratio(long: pd.DataFrame) -> float:
    """Mean PM at the highest severity (over populations and kinds) divided by
    the mean i.i.d. PM (over populations)."""
    iid = long.loc[long["kind"] == "iid", "pm"]
    shifted = long[long["kind"] != "iid"]
    if iid.empty or shifted.empty:
        raise ValueError("need both i.i.d. and shifted PM")
    top = shifted.loc[shifted["severity"] == shifted["severity"].max(), "pm"]
    if iid.mean() <= 0:
        raise ValueError("the mean i.i.d. PM is 0; the ratio is undefined")
    return float(top.mean() / iid.mean())


def population_ci(values: pd.Series | np.ndarray, strata: Sequence[Any] | None = None,
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of one value per population with a stratified bootstrap interval."""
    ci = bootstrap_column_means(np.asarray(values, dtype=float)[:, None], strata, n_boot,
                                level, seed)
    return {c: float(ci.iloc[0][c]) for c in ("estimate", "low", "high")}


# -- RM vs PM --------------------------------------------------------------------

def centre_within(table: pd.DataFrame, cols: Sequence[str], by: str = "dataset") -> pd.DataFrame:
    """Copy of ``table`` with ``cols`` centred within each ``by`` group, so that
    a pooled correlation reflects only within-data-set covariation, not
    differences in level between data sets."""
    need_columns(table, [by, *cols])
    out = table.copy()
    for c in cols:
        out[c] = table[c] - table.groupby(by, sort=False)[c].transform("mean")
    return out


def correlations(x, y, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> dict[str, dict[str, float | None]]:
    """Spearman and Pearson correlation of paired values with bootstrap intervals
    (:func:`rmpm.measures.stats.correlation`). Fewer than 3 pairs, or a constant variable,
    gives None values and a ``note`` instead of an error, because a data set
    can legitimately have too few populations for a correlation."""
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.size} and {ya.size}")
    why = None
    if xa.size < 3:
        why = f"only {xa.size} pairs"
    elif np.ptp(xa) == 0 or np.ptp(ya) == 0:
        why = "a constant variable"
    out = {}
    for i, method in enumerate(("spearman", "pearson")):
        if why:
            out[method] = {"r": None, "low": None, "high": None, "p": None, "note": why}
        else:
            out[method] = dict(stats.correlation(xa, ya, method, n_boot, level, seed + i)._asdict())
    return out


def rm_pm_correlations(table: pd.DataFrame, x: str = "rm",
                       ys: Mapping[str, str] | None = None, n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Correlation across populations of ``x`` (RM) with each PM column in ``ys``
    (default ``{"iid": "pm:iid", "ood": "pm_ood"}``), per data set and pooled.

    Returns ``{"per_dataset": {ds: {y: {"spearman": ..., "pearson": ...}}},
    "pooled": {...}, "pooled_centred": {...}, "n_populations": int}``; pooled
    uses raw values, pooled_centred values centred within each data set
    (:func:`centre_within`). With one data set the three agree up to the
    centring, which changes nothing.
    """
    ys = dict(ys or {"iid": "pm:iid", "ood": "pm_ood"})
    need_columns(table, ["dataset", x, *ys.values()])
    t = table.dropna(subset=[x, *ys.values()])
    if len(t) < len(table):
        raise ValueError(f"{len(table) - len(t)} population(s) lack {x!r} or a PM value")

    def block(df: pd.DataFrame) -> dict[str, Any]:
        return {name: correlations(df[x], df[col], n_boot, level, seed)
                for name, col in ys.items()}

    centred = centre_within(t, [x, *ys.values()])
    return {"per_dataset": {ds: block(g) for ds, g in t.groupby("dataset", sort=False)},
            "pooled": block(t), "pooled_centred": block(centred),
            "n_populations": int(len(t))}


def correlation_table(res: Mapping[str, Any]) -> pd.DataFrame:
    """:func:`rm_pm_correlations`' nested result as one tidy table: scope
    (a data set, ``pooled`` or ``pooled, centred``), pm, method, r, low, high, p."""
    scopes = {**{ds: v for ds, v in res["per_dataset"].items()},
              "pooled": res["pooled"], "pooled, centred": res["pooled_centred"]}
    rows = [{"scope": scope, "pm": pm, "method": method,
             **{k: c.get(k) for k in ("r", "low", "high", "p")}}
            for scope, by_pm in scopes.items() for pm, by_m in by_pm.items()
            for method, c in by_m.items()]
    return pd.DataFrame(rows)


def correlations_record(res: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`rm_pm_correlations`' result as the chapter saves it: ``pooled``,
    ``pooled_centred`` and ``per_dataset``, each ``{pm: {method: {r, low, high, p}}}``."""
    def plain(block):
        return {pm: {m: {k: c.get(k) for k in ("r", "low", "high", "p")} for m, c in by_m.items()}
                for pm, by_m in block.items()}
    return {"pooled": plain(res["pooled"]), "pooled_centred": plain(res["pooled_centred"]),
            "per_dataset": {ds: plain(b) for ds, b in res["per_dataset"].items()}}


def layer_pm_correlations(table: pd.DataFrame, dataset: str, y: str = "pm:iid",
                          n_boot: int = 1000, level: float = 0.95,
                          seed: int = 0) -> pd.DataFrame:
    """Spearman correlation, across one data set's populations, of each layer's
    RM with ``y``: which layer's RM tracks PM best. Columns: layer, r, low, high, p."""
    t = table[table["dataset"] == dataset]
    rows = []
    for layer in layer_names(t):
        c = correlations(t[f"rm:{layer}"], t[y], n_boot, level, seed)["spearman"]
        rows.append({"layer": layer, **{k: c[k] for k in ("r", "low", "high", "p")}})
    return pd.DataFrame(rows)


def distinct_models(populations: Mapping[str, Sequence[Any]] | Sequence[Any]) -> int:
    """Number of distinct recipes (models) in populations (objects with
    ``.recipes``), given as a list or a ``{factor: [population, ...]}`` mapping;
    populations share their base model, so this is less than the sum of sizes."""
    pops = [p for v in populations.values() for p in v] if isinstance(populations, Mapping) \
        else list(populations)
    return len({r.key() for p in pops for r in p.recipes})
