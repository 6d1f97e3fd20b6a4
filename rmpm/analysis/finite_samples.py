"""Finite samples (experiment 6, claim C2): how many inputs and models RM and PM need,
and whether RM/PM measured on a small i.i.d. sample predict OOD behaviour.

Every function takes plain arrays (or a :class:`~rmpm.analysis.populations.PopulationData`)
and returns a DataFrame or dict, so that the notebook only tabulates and plots.

Conventions
-----------
* Input subsamples are *prefixes* of the stored test sample. The stored sample is
  a seeded random permutation's prefix (:func:`rmpm.pipeline.data.sample_indices`), stored
  in that random order, so the prefix of length ``n`` is a uniform random sample
  of size ``n`` and growing ``n`` only adds inputs (a test checks the uniformity).
* With ``conv="positions"`` a conv layer's activation rows are (input, position)
  pairs; ``owners`` maps each row to its input, and every subsample and
  bootstrap draws *inputs* (with all their rows), never single rows.
* "CI" is a percentile bootstrap over *inputs* at a fixed set of models (the
  question here is how many inputs are needed); model-level uncertainty is handled
  by :func:`by_models` and :func:`replicate_agreement`.
* The probe inputs (those with stored activations) are the first ``n_probe``
  inputs of the test sample, so a small sample of size ``n <= n_probe`` has both
  predictions and activations.
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..measures import multiplicity as PM
from ..measures import similarity as SIM
from ..measures import stats
from .._checks import check_range

ActsByLayer = Mapping[str, Sequence[np.ndarray]]


# ----------------------------------------------------------------------------- helpers

def default_small_sample(n_probe: int) -> int:
    """Chapter 6's small i.i.d. sample when none is given: a fifth of the probe
    inputs, at least 20 (the size the calibration simulates C2 at, too)."""
    check_range("n_probe", n_probe, 2, integer=True)
    return max(20, n_probe // 5)


def size_grid(n_max: int, n_min: int = 10, per_doubling: int = 2) -> list[int]:
    """Sample sizes from ``n_min`` to ``n_max`` (both included), ``per_doubling``
    points per doubling (geometric), as sorted distinct ints."""
    check_range("n_max", n_max, 2, integer=True)
    check_range("n_min", n_min, 2, n_max, integer=True)
    check_range("per_doubling", per_doubling, 1, integer=True)
    k = max(1, math.ceil(per_doubling * math.log2(n_max / n_min)))
    grid = {int(round(n_min * (n_max / n_min) ** (i / k))) for i in range(k + 1)}
    return sorted(grid | {n_min, n_max})


def _check_sizes(sizes: Sequence[int], n: int, what: str) -> list[int]:
    out = sorted({int(s) for s in sizes})
    if not out:
        raise ValueError("sizes must hold at least one sample size")
    for s in out:
        check_range("sizes", s, 2, integer=True)
    if out[-1] > n:
        raise ValueError(f"sizes go up to {out[-1]} but only {n} {what} are stored; "
                         f"use sizes <= {n}")
    return out


Owners = Mapping[str, "np.ndarray | None"] | None


def _check_acts(acts_by_layer: ActsByLayer, owners: Owners = None) -> tuple[list[str], int, int]:
    """(layers, models, inputs); with ``owners`` a layer's rows may be (input,
    position) pairs, and the inputs are counted through them."""
    if not isinstance(acts_by_layer, Mapping) or not acts_by_layer:
        raise ValueError("acts_by_layer must be a non-empty dict {layer: [activations per model]}")
    layers = list(acts_by_layer)
    m = {len(v) for v in acts_by_layer.values()}
    if len(m) != 1 or min(m) < 2:
        raise ValueError(f"every layer needs the same number (>= 2) of models; got "
                         f"{ {k: len(v) for k, v in acts_by_layer.items()} }")
    n = set()
    for layer, v in acts_by_layer.items():
        rows = {int(np.shape(a)[0]) for a in v}
        own = (owners or {}).get(layer)
        if own is not None:
            if rows != {len(own)}:
                raise ValueError(f"owners[{layer!r}] has {len(own)} entries for {sorted(rows)} rows")
            n.add(int(np.max(own)) + 1)
        else:
            n |= rows
    if len(n) != 1:
        raise ValueError(f"all activations must hold the same inputs (rows); got input counts {sorted(n)}")
    return layers, m.pop(), n.pop()


def count_inputs(acts_by_layer: ActsByLayer, owners: Owners = None) -> int:
    """Number of probe inputs behind ``acts_by_layer`` (rows, or (input, position)
    rows grouped by ``owners``)."""
    return _check_acts(acts_by_layer, owners)[2]


class _RowIndex:
    """Rows of each input, grouped once (a stable argsort of the owners), so that
    bootstrap loops look rows up without re-sorting."""

    __slots__ = ("order", "starts")

    def __init__(self, owner) -> None:
        owner = np.asarray(owner)
        self.order = np.argsort(owner, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=int(owner.max()) + 1))])


def _indexed(owners: Owners) -> Owners:
    """``owners`` with each layer's row-to-input map grouped once (see :class:`_RowIndex`)."""
    if owners is None:
        return None
    return {k: v if v is None or isinstance(v, _RowIndex) else _RowIndex(v) for k, v in owners.items()}


def _rows(owner: "np.ndarray | _RowIndex | None", inputs: np.ndarray) -> np.ndarray:
    """Activation rows of ``inputs`` (which may repeat): the inputs themselves, or
    every (input, position) row of each input when ``owner`` maps rows to inputs."""
    inputs = np.asarray(inputs, dtype=np.int64)
    if owner is None:
        return inputs
    ix = owner if isinstance(owner, _RowIndex) else _RowIndex(owner)
    return np.concatenate([ix.order[ix.starts[i]:ix.starts[i + 1]] for i in inputs])


def _rm_on_rows(acts_by_layer: ActsByLayer, rows: np.ndarray, keep, owners: Owners = None,
                null_seed: int | None = None) -> dict[str, float]:
    """RM (1 - SVCCA, mean over model pairs) per layer on the given inputs (which
    may repeat); NaN where undefined. With ``null_seed``, each model's selected
    rows are permuted independently first: the RM unrelated representations of
    the same dimensions get on these inputs (SVCCA's small-sample floor).

    The same computation as :func:`rmpm.measures.similarity.pairwise_similarity` (checked in
    the tests), in plain numpy float64: bootstraps call it thousands of times on
    small matrices, where torch's per-call overhead dominates.
    """
    rng = None if null_seed is None else np.random.default_rng(null_seed)
    out = {}
    for layer, acts in acts_by_layer.items():
        r = _rows((owners or {}).get(layer), rows)
        try:
            mats = [np.asarray(a, dtype=np.float64)[r] for a in acts]
            if rng is not None:
                mats = [m[rng.permutation(len(m))] for m in mats]
            bases = [SIM.svcca_basis(m, keep) for m in mats]
        except ValueError:  # e.g. a ReLU layer that is constant on a tiny resample
            out[layer] = float("nan")
            continue
        d = [SIM.svcca_distance(a, b) for a, b in itertools.combinations(bases, 2)]
        out[layer] = float(np.mean(d))
    return out


def _ci_row(n: int, ci: stats.CI) -> dict[str, float]:
    return {"n": n, "estimate": ci.estimate, "low": ci.low, "high": ci.high,
            "half_width": (ci.high - ci.low) / 2.0}


# ----------------------------------------------------------------------------- vs inputs

def pm_by_inputs(probs, sizes: Sequence[int], n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> pd.DataFrame:
    """PM (prediction variance) on the first ``n`` inputs for each ``n`` in ``sizes``,
    with a percentile-bootstrap CI over those inputs.

    Columns: n, estimate, low, high, half_width. PV is a mean of per-input terms, so
    its bootstrap over inputs is the bootstrap of a mean.
    """
    p = PM.as_probs(probs)
    per_input = PM.prediction_variance(p, per_input=True)
    rows = []
    for n in _check_sizes(sizes, p.shape[1], "inputs"):
        ci = stats.bootstrap_ci(np.mean, per_input[:n], n_boot=n_boot, level=level, seed=seed)
        rows.append(_ci_row(n, ci))
    return pd.DataFrame(rows)


def rm_by_inputs(acts_by_layer: ActsByLayer, sizes: Sequence[int], keep=0.99,
                 n_boot: int = 200, level: float = 0.95, seed: int = 0,
                 owners: Owners = None) -> pd.DataFrame:
    """RM (1 - SVCCA, mean over layers and model pairs) on the first ``n`` probe inputs,
    with a percentile-bootstrap CI over those inputs.

    Each bootstrap replicate draws ``n`` input rows with replacement (the same rows
    for every model and layer) and recomputes SVCCA. Repeated rows lower the
    effective sample size, and SVCCA similarity is biased upwards at small samples,
    so the interval sits slightly *below* the estimate; its width is what we use.

    Columns: n, estimate, low, high, half_width, ``rm:<layer>`` per layer, and
    ``dims:<layer>`` (the most SVCCA dimensions a model keeps there), and
    ``saturated`` (True when, for some layer, the two largest kept dimensions add
    up to more than ``n - 1``, so some canonical correlations are 1 by construction).
    """
    layers, _, n_all = _check_acts(acts_by_layer, owners)
    owners = _indexed(owners)
    rows = []
    for n in _check_sizes(sizes, n_all, "probe inputs"):
        per_layer = _rm_on_rows(acts_by_layer, np.arange(n), keep, owners)
        estimate = float(np.mean(list(per_layer.values())))
        if not np.isfinite(estimate):
            raise ValueError(f"RM is undefined on the first {n} probe inputs (a layer has no "
                             "variance there); start sizes higher")

        def stat(idx, n=n):
            return float(np.mean(list(_rm_on_rows(acts_by_layer, idx.astype(np.int64), keep,
                                                  owners).values())))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN replicates are reported as dropped
            ci = stats.bootstrap_ci(stat, np.arange(n), n_boot=n_boot, level=level, seed=seed)
        row = _ci_row(n, ci)
        row.update({f"rm:{k}": v for k, v in per_layer.items()})
        row["saturated"] = _saturated(acts_by_layer, n, keep, owners)
        row.update({f"dims:{k}": int(max(v)) for k, v in
                    _kept_dims(acts_by_layer, n, keep, owners).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _kept_dims(acts_by_layer: ActsByLayer, n: int, keep, owners: Owners = None) -> dict[str, list[int]]:
    return {layer: [SIM.svd_reduce(np.asarray(a)[_rows((owners or {}).get(layer), np.arange(n))],
                                   keep).dims for a in acts]
            for layer, acts in acts_by_layer.items()}


def _saturated(acts_by_layer: ActsByLayer, n: int, keep, owners: Owners = None) -> bool:
    for dims in _kept_dims(acts_by_layer, n, keep, owners).values():
        two = sorted(dims)[-2:]
        if sum(two) > n - 1:
            return True
    return False


def svcca_null(acts_by_layer: ActsByLayer, sizes: Sequence[int], keep=0.99, n_perm: int = 20,
               seed: int = 0, owners: Owners = None) -> pd.DataFrame:
    """SVCCA similarity that *unrelated* representations get on ``n`` inputs.

    Empirical null: every model's rows are permuted independently (so the pairing of
    inputs across models is broken while each model keeps its own activation
    spectrum), and the mean pairwise SVCCA similarity is averaged over ``n_perm``
    permutations. Analytic reference: ``sqrt(k/(n-1))`` with ``k`` the largest kept
    dimension, the root of :func:`rmpm.measures.similarity.null_mean_squared_cc` (an upper
    bound of the mean canonical correlation of a uniformly random subspace, by Jensen).

    Columns: n, layer, null_similarity, null_rm (= 1 - null_similarity, the RM that
    unrelated models would get), analytic_rms_cc, max_kept_dims.
    """
    layers, m, n_all = _check_acts(acts_by_layer, owners)
    check_range("n_perm", n_perm, 1, integer=True)
    owners = _indexed(owners)
    rng = np.random.default_rng(seed)
    rows = []
    for n in _check_sizes(sizes, n_all, "probe inputs"):
        dims = _kept_dims(acts_by_layer, n, keep, owners)
        for layer in layers:
            r = _rows((owners or {}).get(layer), np.arange(n))
            vals = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(n_perm):
                    perm = [np.asarray(a)[r][rng.permutation(len(r))] for a in acts_by_layer[layer]]
                    vals.append(1.0 - SIM.representational_multiplicity(
                        SIM.pairwise_similarity(perm, "svcca", keep)))
            k = max(dims[layer])
            sim = float(np.mean(vals))
            rows.append({"n": n, "layer": layer, "null_similarity": sim, "null_rm": 1.0 - sim,
                         "analytic_rms_cc": math.sqrt(SIM.null_mean_squared_cc(n, (k, k))),
                         "max_kept_dims": k})
    return pd.DataFrame(rows)


def stable_size(frame: pd.DataFrame, full_estimate: float, tolerance: float = 0.1) -> int | None:
    """Smallest ``n`` of ``frame`` (columns n, half_width) from which on the CI half-width
    stays at or below ``tolerance * |full_estimate|`` for every larger ``n`` in the frame.

    None if even the largest ``n`` misses it. "From which on" guards against a lucky
    narrow interval at one small size followed by wider ones.
    """
    check_range("tolerance", tolerance, 0.0, lo_open=True)
    if not np.isfinite(full_estimate):
        raise ValueError("full_estimate must be finite")
    f = frame.sort_values("n")
    ok = (f["half_width"] <= tolerance * abs(full_estimate)).to_numpy()
    if not ok[-1]:
        return None
    # last position where it fails; stability starts right after
    bad = np.flatnonzero(~ok)
    start = 0 if bad.size == 0 else bad[-1] + 1
    return int(f["n"].iloc[start])


def first_within(frame: pd.DataFrame, full_estimate: float, tolerance: float = 0.1) -> int | None:
    """Smallest ``n`` from which on the *estimate* stays within ``tolerance`` (relative)
    of the full-sample estimate: where the small-sample bias has faded."""
    check_range("tolerance", tolerance, 0.0, lo_open=True)
    f = frame.sort_values("n")
    ok = (np.abs(f["estimate"] - full_estimate) <= tolerance * abs(full_estimate)).to_numpy()
    if not ok[-1]:
        return None
    bad = np.flatnonzero(~ok)
    start = 0 if bad.size == 0 else bad[-1] + 1
    return int(f["n"].iloc[start])


# ----------------------------------------------------------------------------- vs models

def by_models(probs, sims: Mapping[str, np.ndarray] | None = None, max_subsets: int = 30,
              seed: int = 0) -> pd.DataFrame:
    """PM and RM of sub-populations of ``m`` models, for every ``m`` from 2 to M.

    For each ``m`` the measures are computed on every ``m``-subset of the models
    (or on ``max_subsets`` distinct random ones when there are more) and summarised
    by their mean, standard deviation, min and max over subsets. RM needs the
    all-pairs similarity matrices ``sims`` (``{layer: (M, M)}``); SVCCA is pairwise,
    so a subset's RM is read off the sub-matrix.

    Measures: ``pm`` (prediction variance, our reading of the paper's PM, population variance, ddof=0,
    whose expectation grows like ``(m-1)/m``), ``pm_unbiased`` (ddof=1), ``disagree``
    (mean pairwise churn) and ``rm`` (mean over layers).
    """
    p = PM.as_probs(probs)
    m_all = p.shape[0]
    if m_all < 2:
        raise ValueError("by_models needs at least 2 models")
    check_range("max_subsets", max_subsets, 1, integer=True)
    if sims is not None:
        for layer, s in sims.items():
            if np.shape(s) != (m_all, m_all):
                raise ValueError(f"sims[{layer!r}] has shape {np.shape(s)}; expected ({m_all}, {m_all})")
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(2, m_all + 1):
        subsets = _subsets(m_all, m, max_subsets, rng)
        vals: dict[str, list[float]] = {"pm": [], "pm_unbiased": [], "disagree": []}
        if sims is not None:
            vals["rm"] = []
        for sub in subsets:
            q = p[list(sub)]
            vals["pm"].append(PM.prediction_variance(q))
            vals["pm_unbiased"].append(PM.prediction_variance(q, ddof=1))
            vals["disagree"].append(PM.mean_disagreement(q))
            if sims is not None:
                vals["rm"].append(float(np.mean([SIM.representational_multiplicity(
                    np.asarray(s)[np.ix_(sub, sub)]) for s in sims.values()])))
        for measure, v in vals.items():
            a = np.asarray(v)
            rows.append({"m": m, "measure": measure, "mean": a.mean(),
                         "sd": a.std(ddof=1) if a.size > 1 else 0.0,
                         "min": a.min(), "max": a.max(), "n_subsets": len(subsets)})
    return pd.DataFrame(rows)


def _subsets(n: int, m: int, max_subsets: int, rng) -> list[tuple[int, ...]]:
    total = math.comb(n, m)
    if total <= max_subsets:
        return list(itertools.combinations(range(n), m))
    seen: set[tuple[int, ...]] = set()
    while len(seen) < max_subsets:
        seen.add(tuple(sorted(rng.choice(n, m, replace=False).tolist())))
    return sorted(seen)


def replicate_agreement(table: pd.DataFrame, column: str, unit: str = "factor",
                        replicate: str = "replicate") -> dict[str, float]:
    """Are population-level estimates repeatable with the models a population has?

    ``table`` holds one row per (unit, replicate) population. Returns
    ``spearman`` (mean over pairs of replicates of the Spearman correlation across
    units; NaN if undefined), ``between_share`` (eta squared: the share of the
    total variance of ``column`` that lies between units, 1 = replicates agree
    exactly, about ``1/replicates`` or less = the unit explains nothing),
    ``n_units`` and ``n_replicates``.
    """
    for c in (column, unit, replicate):
        if c not in table:
            raise ValueError(f"table has no column {c!r}; columns: {', '.join(map(str, table.columns))}")
    wide = table.pivot_table(index=unit, columns=replicate, values=column, aggfunc="mean").dropna()
    if wide.shape[0] < 3 or wide.shape[1] < 2:
        raise ValueError(f"need >= 3 {unit}s with >= 2 replicates each for {column!r}; "
                         f"got {wide.shape[0]} x {wide.shape[1]}")
    rs = [stats.rank_correlation(wide[a].to_numpy(), wide[b].to_numpy())
          for a, b in itertools.combinations(wide.columns, 2)]
    v = wide.to_numpy()
    total = ((v - v.mean()) ** 2).sum()
    between = (v.shape[1] * (v.mean(axis=1) - v.mean()) ** 2).sum()
    return {"spearman": float(np.nanmean(rs)) if np.isfinite(rs).any() else float("nan"),
            "between_share": float(between / total) if total > 0 else float("nan"),
            "n_units": int(wide.shape[0]), "n_replicates": int(wide.shape[1])}


# ----------------------------------------------------------------------------- small sample as predictor

def replicate_agreement_by_dataset(table: pd.DataFrame, columns: Sequence[str],
                                   unit: str = "factor") -> dict[tuple[str, str], dict[str, Any]]:
    """:func:`replicate_agreement` of each of ``columns`` the table has, per data set:
    ``{(dataset, column): result}``; where it is undefined (too few units or
    replicates) the result is NaN with the reason under ``note``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for col in columns:
        if col not in table:
            continue
        for ds, part in table.groupby("dataset"):
            try:
                out[(ds, col)] = replicate_agreement(part, col, unit)
            except ValueError as err:
                out[(ds, col)] = {"spearman": np.nan, "between_share": np.nan, "note": str(err)}
    return out


def small_sample_measures(data, n_small: int, keep=0.99, conv: str = "pool") -> dict[str, float]:
    """RM, PM and accuracy of one population on the first ``n_small`` test inputs, and
    the targets on the *other* inputs of the stored sample.

    ``data`` is a :class:`~rmpm.analysis.populations.PopulationData`. Keys:
    ``rm_small`` (chance-adjusted RM, ``RM / RM of row-permuted activations``,
    mean over hidden layers: at small samples SVCCA's floor moves with the kept
    dimensions, so raw RM would partly rank dimensions; :func:`small_sample_table`
    recomputes it over the layers it does not flag), ``rm_small_raw`` (the raw
    hidden-layer RM), per hidden layer ``rm_small:<layer>``, ``rm_small_null:<layer>``,
    ``dims_small:<layer>`` (most SVCCA dimensions kept by a model) and
    ``fill_small:<layer>`` (:func:`~rmpm.measures.similarity.subspace_fill`);
    ``pm_small`` (prediction variance), ``disagree_small`` (mean pairwise churn,
    needs no labels), ``acc_small`` (mean over models); on the held-out inputs
    ``n_small:``: ``acc_iid_rest``, ``pm_iid_rest``, ``acc_ood_rest`` and
    ``pm_ood_rest`` (means over every stored corruption and severity, and over
    models for accuracy); and on the first ``n_small`` corrupted inputs (means over
    corruptions) ``disagree_ood_small`` (no labels) and ``acc_ood_small`` (labelled).
    Keeping the targets off the small sample means a predictor cannot look good
    just because it saw the same images.
    """
    from .populations import NULL_SEED, hidden_layers
    p_iid = data.probs("iid")
    n_test = p_iid.shape[1]
    layers = hidden_layers(data.layers())
    acts = {layer: data.activations(layer, conv) for layer in layers}
    owners = {layer: data.row_inputs(layer, conv) for layer in layers}
    _, _, n_probe = _check_acts(acts, owners)
    owners = _indexed(owners)
    check_range("n_small", n_small, 2, integer=True)
    if n_small > n_probe:
        raise ValueError(f"n_small={n_small} exceeds the {n_probe} probe inputs with stored "
                         "activations; choose n_small <= n_probe")
    if n_small >= n_test:
        raise ValueError(f"n_small={n_small} leaves no held-out inputs of the {n_test} stored")
    y = data.labels
    rm = _rm_on_rows(acts, np.arange(n_small), keep, owners)
    rm0 = _rm_on_rows(acts, np.arange(n_small), keep, owners, null_seed=NULL_SEED)
    dims = _kept_dims(acts, n_small, keep, owners)
    small = p_iid[:, :n_small]
    out = {"rm_small": float(np.mean([rm[k] / rm0[k] for k in layers])),
           "rm_small_raw": float(np.mean(list(rm.values()))),
           "layers_small": ",".join(layers)}
    for k in layers:
        rows = len(_rows((owners or {}).get(k), np.arange(n_small)))
        out.update({f"rm_small:{k}": rm[k], f"rm_small_null:{k}": rm0[k],
                    f"dims_small:{k}": int(max(dims[k])),
                    f"fill_small:{k}": SIM.subspace_fill(dims[k], rows)})
    out.update({"pm_small": PM.prediction_variance(small),
                "disagree_small": PM.mean_disagreement(small),
                "acc_small": float(PM.accuracies(small, y[:n_small]).mean()),
                "acc_iid_rest": float(PM.accuracies(p_iid[:, n_small:], y[n_small:]).mean()),
                "pm_iid_rest": PM.prediction_variance(p_iid[:, n_small:])})
    shift = data.shifts()
    if shift:
        accs, pms, dis_s, acc_s = [], [], [], []
        for kind, sev in shift:
            q = data.probs(kind, sev)
            accs.append(PM.accuracies(q[:, n_small:], y[n_small:]).mean())
            pms.append(PM.prediction_variance(q[:, n_small:]))
            dis_s.append(PM.mean_disagreement(q[:, :n_small]))
            acc_s.append(PM.accuracies(q[:, :n_small], y[:n_small]).mean())
        out["acc_ood_rest"] = float(np.mean(accs))
        out["pm_ood_rest"] = float(np.mean(pms))
        out["disagree_ood_small"] = float(np.mean(dis_s))
        out["acc_ood_small"] = float(np.mean(acc_s))
    return out


def small_sample_table(populations: Sequence[tuple[Mapping[str, Any], Any]], n_small: int,
                       keep=0.99, conv: str = "pool", max_fill: float | None = None) -> pd.DataFrame:
    """One row per population: its ``meta`` (e.g. dataset, factor, replicate) and
    :func:`small_sample_measures`. ``populations`` is a list of ``(meta, data)``.

    Per data set (``meta["dataset"]``, if given), a hidden layer whose kept SVCCA
    dimensions fill ``max_fill`` (default
    :data:`rmpm.analysis.populations.MAX_FILL`) of the small sample's centred space in
    any population is flagged, and ``rm_small`` and ``rm_small_raw`` are recomputed
    over the others (``rm_small_layers``, ``flagged_small``). If every layer is
    flagged they are NaN: RM on this few inputs measures the sample, not the
    models, and the tests leave it out."""
    from .populations import MAX_FILL
    max_fill = MAX_FILL if max_fill is None else check_range("max_fill", max_fill, 0.0, lo_open=True)
    rows = [{**meta, **small_sample_measures(data, n_small, keep, conv)} for meta, data in populations]
    if not rows:
        raise ValueError("populations is empty")
    t = pd.DataFrame(rows)
    groups = t.groupby("dataset", sort=False).groups if "dataset" in t else {None: t.index}
    for _, idx in groups.items():
        part = t.loc[idx]
        layers = part["layers_small"].iloc[0].split(",")
        flagged = [k for k in layers if (part[f"fill_small:{k}"] >= max_fill).any()]
        used = [k for k in layers if k not in flagged]
        t.loc[idx, "flagged_small"] = ",".join(flagged)
        t.loc[idx, "rm_small_layers"] = ",".join(used)
        if used:
            t.loc[idx, "rm_small"] = np.mean([part[f"rm_small:{k}"] / part[f"rm_small_null:{k}"]
                                              for k in used], axis=0)
            t.loc[idx, "rm_small_raw"] = np.mean([part[f"rm_small:{k}"] for k in used], axis=0)
        else:
            t.loc[idx, ["rm_small", "rm_small_raw"]] = np.nan
    return t


def kept_dims_table(table: pd.DataFrame, prefix: str = "dims_small") -> pd.DataFrame:
    """Kept SVCCA dimensions per (data set, factor) and layer (the most over
    replicates) from the ``<prefix>:<layer>`` columns of a small-sample or factor
    table: the record of what each layer's RM rests on."""
    cols = [c for c in table.columns if c.startswith(prefix + ":")]
    if not cols:
        raise ValueError(f"the table has no {prefix}:<layer> columns")
    keys = [k for k in ("dataset", "factor") if k in table]
    out = table.groupby(keys, sort=False)[cols].max()
    return out.rename(columns=lambda c: c.split(":", 1)[1])


# ----------------------------------------------------------------------------- generalisation

#: The abstract's question, answered across populations: predictors measured on
#: the small sample and what they would predict on the held-out inputs.
PREDICTORS = {"RM (chance-adjusted)": "rm_small", "PM (prediction variance)": "pm_small",
              "disagreement, no labels": "disagree_small",
              "accuracy, labelled (baseline)": "acc_small"}
TARGETS = {"OOD accuracy": "acc_ood_rest", "OOD PM": "pm_ood_rest",
           "i.i.d. accuracy": "acc_iid_rest"}
#: Error estimates (estimate column, target error = 1 - accuracy column, needs labels?)
ERROR_ESTIMATES = (
    ("i.i.d. error", "disagreement on the small sample", "disagree_small", "acc_iid_rest", False),
    ("i.i.d. error", "error on the small labelled sample", "err:acc_small", "acc_iid_rest", True),
    ("OOD error", "disagreement on unlabelled corrupted inputs", "disagree_ood_small",
     "acc_ood_rest", False),
    ("OOD error", "error on the small labelled i.i.d. sample", "err:acc_small", "acc_ood_rest", True),
    ("OOD error", "error on a small labelled corrupted sample", "err:acc_ood_small",
     "acc_ood_rest", True),
)


def _factor_resamples(t: pd.DataFrame, n_boot: int, rng) -> list[np.ndarray]:
    """Row indices of ``n_boot`` resamples of whole factors (all their data sets and
    replicates), drawn jointly across data sets."""
    factors = list(dict.fromkeys(t["factor"]))
    rows = [np.flatnonzero(t["factor"].to_numpy() == f) for f in factors]
    return [np.concatenate([rows[i] for i in rng.integers(0, len(factors), len(factors))])
            for _ in range(n_boot)]


def _within_spearman(t: pd.DataFrame, x: np.ndarray, y: np.ndarray) -> float:
    """tanh of the mean Fisher z of the per-data-set Spearman correlations."""
    zs = []
    for ds in dict.fromkeys(t["dataset"]):
        m = (t["dataset"] == ds).to_numpy()
        r = stats.rank_correlation(x[m], y[m]) if m.sum() >= 3 else np.nan
        zs.append(np.arctanh(np.clip(r, -0.999999, 0.999999)))
    return float(np.tanh(np.mean(zs)))


def _interval(fn, t: pd.DataFrame, n_boot: int, level: float, seed: int) -> tuple[float, float, float]:
    est = fn(t)
    rng = np.random.default_rng(seed)
    reps = np.array([fn(t.iloc[i].reset_index(drop=True)) for i in _factor_resamples(t, n_boot, rng)])
    reps = reps[np.isfinite(reps)]
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a]) if reps.size else (np.nan, np.nan)
    return est, float(lo), float(hi)


def generalisation_predictors(small: pd.DataFrame, n_boot: int = 1000, level: float = 0.95,
                              seed: int = 0) -> pd.DataFrame:
    """How well each small-sample quantity (:data:`PREDICTORS`) predicts each
    held-out target (:data:`TARGETS`) across populations: the within-data-set
    Spearman correlation (Fisher-z mean over data sets) with a percentile interval
    over whole *factors* resampled (a factor's replicates share its recipe).
    Predictor and target come from the same models, as a user predicting *their*
    models' generalisation would have them; it answers the abstract's question
    descriptively (the test of C2 is :func:`rmpm.analysis.evidence.c2_evidence`)."""
    stats.check_boot(n_boot, level)
    rows = []
    for i, (pname, x) in enumerate(PREDICTORS.items()):
        for tname, y in TARGETS.items():
            if x not in small or y not in small:
                continue
            t = small.dropna(subset=[x, y]).reset_index(drop=True)
            if t.empty:
                continue
            est, lo, hi = _interval(lambda u: _within_spearman(u, u[x].to_numpy(float),
                                                               u[y].to_numpy(float)),
                                    t, n_boot, level, seed + i)
            rows.append({"predictor": pname, "target": tname, "spearman": est, "low": lo,
                         "high": hi, "n_populations": len(t)})
    return pd.DataFrame(rows)


def error_estimates(small: pd.DataFrame, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> pd.DataFrame:
    """Disagreement between a population's models as a label-free estimate of their
    error (Jiang et al. 2022, *Assessing generalization of SGD via disagreement*,
    ICLR: for independently trained, well-calibrated models the expected
    disagreement equals the expected error) beside labelled estimates, for the
    held-out i.i.d. and OOD error (:data:`ERROR_ESTIMATES`). Per estimate: mean
    bias (estimate - actual error), mean absolute error and the within-data-set
    Spearman with the actual error, each with an interval over resampled
    factors. Most populations here share their initial weights, which lowers
    their disagreement: the bias shows how much."""
    stats.check_boot(n_boot, level)
    rows = []
    for i, (target, what, est_col, acc_col, labels) in enumerate(ERROR_ESTIMATES):
        src = est_col.split(":", 1)[1] if est_col.startswith("err:") else est_col
        if src not in small or acc_col not in small:
            continue
        t = small.dropna(subset=[src, acc_col]).reset_index(drop=True)
        if t.empty:
            continue

        def estimate(u):
            return 1 - u[src].to_numpy(float) if est_col.startswith("err:") else u[src].to_numpy(float)

        def bias(u):
            return float(np.mean(estimate(u) - (1 - u[acc_col].to_numpy(float))))

        def mae(u):
            return float(np.mean(np.abs(estimate(u) - (1 - u[acc_col].to_numpy(float)))))

        def rho(u):
            return _within_spearman(u, estimate(u), 1 - u[acc_col].to_numpy(float))
        row = {"target": target, "estimate": what, "needs labels": labels}
        for j, (name, fn) in enumerate((("bias", bias), ("mean abs. error", mae), ("spearman", rho))):
            e, lo, hi = _interval(fn, t, n_boot, level, seed + 10 * i + j)
            row.update({name: e, f"{name} low": lo, f"{name} high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def _corr_row(x, y, method, n_boot, seed) -> dict[str, float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": np.nan, "low": np.nan, "high": np.nan, "p": np.nan, "n": int(x.size)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant resamples of few pairs
        c = stats.correlation(x, y, method, n_boot=n_boot, seed=seed)
    return {"r": c.r, "low": c.low, "high": c.high, "p": c.p, "n": int(x.size)}


def predictive_correlations(table: pd.DataFrame, predictors: Sequence[str], targets: Sequence[str],
                            method: str = "spearman", n_boot: int = 1000,
                            seed: int = 0) -> pd.DataFrame:
    """Correlation (with bootstrap CI over populations) of every predictor column with
    every target column. Undefined correlations (fewer than 3 populations, a constant
    column) are NaN rather than errors, so one bad pair does not hide the others."""
    missing = [c for c in [*predictors, *targets] if c not in table]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; columns: {', '.join(map(str, table.columns))}")
    rows = [{"predictor": x, "target": y, **_corr_row(table[x], table[y], method, n_boot, seed)}
            for x in predictors for y in targets]
    return pd.DataFrame(rows)


def leave_one_dataset_out(table: pd.DataFrame, predictor: str, target: str,
                          dataset: str = "dataset", method: str = "spearman",
                          n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """For every data set: the correlation on the *other* data sets pooled, and on the
    held-out one alone. A relation that only holds pooled (because data sets differ in
    level) shows up as a strong pooled and a weak held-out correlation."""
    if dataset not in table:
        raise ValueError(f"table has no column {dataset!r}")
    names = list(dict.fromkeys(table[dataset]))
    if len(names) < 2:
        raise ValueError(f"leave-one-dataset-out needs >= 2 data sets; the table has {names}")
    rows = []
    for d in names:
        rest, held = table[table[dataset] != d], table[table[dataset] == d]
        a = _corr_row(rest[predictor], rest[target], method, n_boot, seed)
        b = _corr_row(held[predictor], held[target], method, n_boot, seed)
        rows.append({"held_out": d, "r_rest": a["r"], "low_rest": a["low"], "high_rest": a["high"],
                     "r_held_out": b["r"], "low_held_out": b["low"], "high_held_out": b["high"],
                     "n_held_out": b["n"]})
    return pd.DataFrame(rows)


def correlation_dict(frame: pd.DataFrame, predictor: str, target: str) -> dict[str, float | None]:
    """``{r, low, high, p}`` of one row of :func:`predictive_correlations` (None if NaN),
    the form the results files store."""
    row = frame[(frame["predictor"] == predictor) & (frame["target"] == target)]
    if row.empty:
        raise ValueError(f"no correlation of {predictor!r} with {target!r} in the frame")
    r = row.iloc[0]
    return {k: (None if not np.isfinite(r[k]) else float(r[k])) for k in ("r", "low", "high", "p")}


__all__ = ["default_small_sample", "kept_dims_table", "generalisation_predictors",
           "error_estimates", "PREDICTORS", "TARGETS", "ERROR_ESTIMATES", "count_inputs", "size_grid", "pm_by_inputs", "rm_by_inputs", "svcca_null", "stable_size", "first_within",
           "by_models", "replicate_agreement", "small_sample_measures", "small_sample_table",
           "predictive_correlations", "leave_one_dataset_out", "correlation_dict",
           "replicate_agreement_by_dataset"]
