"""The experiments' heavy lifting: which models a profile needs, training them
(once, shared by every notebook), and loading a population's results.

Notebooks call these functions, tabulate and plot; they hold no logic of their own.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._checks import check_choice, check_range
from ..pipeline.evaluate import EvalSpec, act_key, layers_in, pred_key, shifts_in
from ..pipeline.recipe import FACTORS, Population, Recipe, dedupe, unique_recipes, vary
from ..pipeline.runs import RunResult, run_recipes
from ..pipeline.runs import shard as shard_recipes
from ..pipeline.store import Store
from .profiles import FitRule, Profile, get_profile


def eval_spec(profile: str | Profile) -> EvalSpec:
    p = get_profile(profile)
    return EvalSpec(n_test=p.n_test, n_probe=p.n_probe, corruptions=p.corruptions,
                    severities=p.severities)


def _dataset(p: Profile, dataset: str | None) -> str:
    if dataset is None:
        return p.datasets[0]
    return check_choice("dataset", dataset, p.datasets)


def reference_population(profile: str | Profile, dataset: str | None = None,
                         n_models: int | None = None) -> Population:
    """Experiment 2's population: the profile's reference recipe with independent
    seeds, ``n_models`` of them (default: the profile's ``reference_seeds``)."""
    p = get_profile(profile)
    ds = _dataset(p, dataset)
    n = p.reference_seeds if n_models is None else check_range("n_models", n_models, 2, integer=True)
    return vary(p.reference[ds], "both_seeds", tuple(range(n)))[0]


def reference_runs(profile: str | Profile, dataset: str | None = None, n_models: int | None = None,
                   device: str | None = None, progress: bool = True,
                   store: Store | str | None = None) -> tuple[list[RunResult], "PopulationData"]:
    """Experiment 2's population trained (what is missing) and loaded: its runs (with
    the stored models) and their :class:`PopulationData`. ``device``: default the
    profile's."""
    p = get_profile(profile)
    pop = reference_population(p, dataset, n_models)
    runs = run_recipes(pop.recipes, eval_spec(p), store, device=device or p.device,
                       progress=progress)
    return runs, load_population(runs)


def factor_population_data(profile: str | Profile, datasets: Sequence[str] | None = None,
                           store: Store | str | None = None
                           ) -> list[tuple[dict[str, Any], "PopulationData"]]:
    """Every stored factor population of ``datasets`` (default: all of the profile's),
    as ``({"dataset", "factor", "replicate"}, data)`` pairs in table order. The models
    must be trained (e.g. by :func:`factor_table`)."""
    p = get_profile(profile)
    out = []
    for ds in datasets or p.datasets:
        for factor, reps in factor_populations(p, ds).items():
            for pop in reps:
                out.append(({"dataset": ds, "factor": factor, "replicate": pop.replicate},
                            load_population(pop, p, store)))
    return out


def factor_populations(profile: str | Profile, dataset: str | None = None,
                       factors: Sequence[str] | None = None) -> dict[str, list[Population]]:
    """factor -> one population per replicate, for one data set of the profile."""
    p = get_profile(profile)
    ds = _dataset(p, dataset)
    names = list(p.factors) if factors is None else list(factors)
    if not names:
        raise ValueError(f"factors={factors!r} names no factor; give None (all) or some of: "
                         f"{', '.join(repr(k) for k in FACTORS if k in p.factors)}")
    for f in names:
        check_choice("factor", f, [k for k in FACTORS if k in p.factors])
    return {f: vary(p.base[ds], f, p.factors[f], p.replicates) for f in names}


def profile_recipes(profile: str | Profile, datasets: Sequence[str] | None = None,
                    factors: Sequence[str] | None = None, reference_only: bool = False,
                    shard: tuple[int, int] | None = None) -> list[Recipe]:
    """Every recipe the profile's experiments need, once each, in a fixed order
    (per data set: the reference population, then each factor's populations);
    with ``shard=(i, n)`` only part ``i`` of ``n`` of them
    (:func:`rmpm.pipeline.runs.shard`, one job of a job array)."""
    p = get_profile(profile)
    recipes: list[Recipe] = []
    for ds in datasets or p.datasets:
        ds = _dataset(p, ds)
        recipes += reference_population(p, ds).recipes
        if not reference_only:
            for pops in factor_populations(p, ds, factors).values():
                recipes += unique_recipes(pops)
    recipes = dedupe(recipes)
    return recipes if shard is None else shard_recipes(recipes, *shard)


#: set by the book build for the notebooks' kernels once it has trained the
#: profile's models, so chapters load them without checking every recipe again
TRAINED_VAR = "RMPM_TRAINED"


def trained_by_build(profile: str | Profile) -> bool:
    """True inside a book build that has already trained ``profile``'s models."""
    return os.environ.get(TRAINED_VAR) == get_profile(profile).name


def train_profile(profile: str | Profile, datasets: Sequence[str] | None = None,
                  factors: Sequence[str] | None = None, reference_only: bool = False,
                  device: str = "auto", store: Store | str | None = None,
                  progress: bool = True, shard: tuple[int, int] | None = None,
                  **engine: Any) -> list[RunResult]:
    """Train and evaluate every model the profile's experiments need (resumable), or
    the part of them that ``shard`` names (see :func:`profile_recipes`).

    ``engine``: ``deterministic``, ``workers``, ``scheduler`` as for
    :func:`rmpm.pipeline.runs.run_recipes`."""
    recipes = profile_recipes(profile, datasets, factors, reference_only, shard)
    return run_recipes(recipes, eval_spec(profile), store, device=device, progress=progress,
                       **engine)


@dataclass
class PopulationData:
    """Everything stored for a set of models evaluated under one spec."""

    recipes: list[Recipe]
    metrics: pd.DataFrame
    histories: list[list[dict[str, float]]]
    labels: np.ndarray
    arrays: list[dict[str, np.ndarray]] = field(repr=False)

    @property
    def n_models(self) -> int:
        return len(self.recipes)

    def probs(self, kind: str = "iid", severity: int | None = None) -> np.ndarray:
        """Predicted probabilities, shape (models, inputs, classes)."""
        k = pred_key(kind, severity)
        if k not in self.arrays[0]:
            have = sorted(a for a in self.arrays[0] if a.startswith("probs:"))
            raise KeyError(f"no predictions {k!r}; stored: {', '.join(have)}")
        return np.stack([a[k] for a in self.arrays])

    def shifts(self) -> list[tuple[str, int]]:
        """``(kind, severity)`` of every stored shifted prediction, in stored order."""
        return shifts_in(self.arrays[0])

    def layers(self) -> list[str]:
        """Probe layer names, in network order."""
        return layers_in(self.arrays[0])

    def activations(self, layer: str, conv: str = "pool") -> list[np.ndarray]:
        """One (inputs, neurons) array per model; ``conv`` picks the conv-layer convention."""
        check_choice("conv", conv, ("pool", "positions"))
        a0 = self.arrays[0]
        key = act_key(layer) if act_key(layer) in a0 else act_key(layer, conv)
        if key not in a0:
            raise KeyError(f"no activations for layer {layer!r}; layers: {', '.join(self.layers())}")
        return [a[key] for a in self.arrays]

    def row_inputs(self, layer: str, conv: str = "pool") -> np.ndarray | None:
        """For ``conv="positions"`` on a conv layer: the probe input of every row of
        :meth:`activations` (rows are (input, position) pairs); else None (row i
        is input i)."""
        key = f"rows:{layer}:{conv}"
        return self.arrays[0][key] if key in self.arrays[0] else None


def load_population(results_or_recipes: Sequence[RunResult] | Sequence[Recipe] | Population,
                    profile: str | Profile | None = None,
                    store: Store | str | None = None) -> PopulationData:
    """Load stored results of a population (RunResults, or recipes + the profile's spec)."""
    items = results_or_recipes.recipes if isinstance(results_or_recipes, Population) \
        else results_or_recipes
    entries = []
    if items and isinstance(items[0], RunResult):
        entries = [(r.recipe, r.model, r.eval) for r in items]
    else:
        if profile is None:
            raise ValueError("profile is needed to find the evaluations of bare recipes")
        st = store if isinstance(store, Store) else Store(store)
        key = eval_spec(profile).key()
        entries = [(r, st.model(r), st.eval(r, key)) for r in items]
    rows, hists, arrays = [], [], []
    for r, me, ee in entries:
        rows.append({"key": r.key()[:12], **r.to_dict(), **me.metrics, **ee.metrics})
        hists.append(me.history)
        arrays.append(ee.arrays())
    return PopulationData([e[0] for e in entries], pd.DataFrame(rows), hists,
                          arrays[0]["labels"], arrays)


ACCURACY_COLUMNS = ("train_acc", "test_acc", "gap", "ood_acc")


def reference_accuracy(profile: str | Profile, datasets: Sequence[str] | None = None,
                       n_models: int | None = None, device: str | None = None,
                       store: Store | str | None = None, n_boot: int | None = None,
                       seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Experiment 2 on every data set (default: the profile's): are the reference
    population's models equally good?

    Returns (per model: data set, key, seeds and :data:`ACCURACY_COLUMNS`; per data
    set: the mean test accuracy with a 95 % bootstrap interval over models, its
    range, the mean train accuracy, gap and OOD accuracy, and the profile's floor
    ``min_test_acc`` with whether every model reaches it)."""
    from ..measures import stats
    p = get_profile(profile)
    n_boot = p.n_boot if n_boot is None else check_range("n_boot", n_boot, 1, integer=True)
    per_model, summary = [], []
    for ds in datasets or p.datasets:
        _, data = reference_runs(p, ds, n_models, device, store=store)
        m = data.metrics
        table = m[["key", "init_seed", "order_seed", *[c for c in ACCURACY_COLUMNS if c in m]]]
        per_model.append(table.assign(dataset=ds)[["dataset", *table.columns]])
        ci = stats.bootstrap_ci(np.mean, m["test_acc"].to_numpy(), n_boot=n_boot, seed=seed)
        floor = p.min_test_acc.get(ds)
        summary.append({"dataset": ds, "models": len(m), "test_acc": ci.estimate,
                        "low": ci.low, "high": ci.high, "min": float(m["test_acc"].min()),
                        "max": float(m["test_acc"].max()),
                        **{c: float(m[c].mean()) for c in ("train_acc", "gap", "ood_acc")
                           if c in m},
                        "floor": floor,
                        "every model reaches it": None if floor is None
                        else bool(m["test_acc"].min() >= floor)})
    return (pd.concat(per_model, ignore_index=True),
            pd.DataFrame(summary).set_index("dataset"))


def population_accuracy(profile: str | Profile, datasets: Sequence[str] | None = None,
                        store: Store | str | None = None, train: bool | None = None,
                        device: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Test accuracy of every factor population, one row per (data set, factor):
    mean, lowest and highest over its models in all replicates, and the mean range
    within one population (what "equally good" means inside it). Trains what is
    missing first, as :func:`factor_table` does (``train``)."""
    p = get_profile(profile)
    st = store if isinstance(store, Store) else Store(store)
    if train is None:
        train = not trained_by_build(p)
    rows = []
    for ds in datasets or p.datasets:
        pops = factor_populations(p, ds)
        if train:
            train_profile(p, [ds], list(pops), device=device or p.device, store=st,
                          progress=progress)
        for factor, reps in pops.items():
            accs = [[st.model(r).metrics["test_acc"] for r in pop.recipes] for pop in reps]
            flat = [a for pop in accs for a in pop]
            rows.append({"dataset": ds, "factor": factor,
                         "values": ", ".join(map(str, reps[0].values)),
                         "models": len(flat), "test_acc": float(np.mean(flat)),
                         "min": float(np.min(flat)), "max": float(np.max(flat)),
                         "range within a population": float(np.mean(
                             [max(a) - min(a) for a in accs]))})
    return pd.DataFrame(rows)


def training_fit(profile: str | Profile, datasets: Sequence[str] | None = None,
                 store: Store | str | None = None, train: bool | None = None,
                 device: str | None = None, progress: bool = False
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Are the populations equally good on their training data (the paper's premise)?

    Returns (per model of the reference and every factor population: data set,
    population, replicate, key, final training accuracy and loss, the last epoch's
    relative drop of the training loss, test accuracy, the profile's fit rule for the
    data set and whether the model meets it, None without a rule; per population: the
    means, the lowest training accuracy, how many models meet the rule, and ``flag``,
    why it is not equally good on training data, "" if it is). A population is flagged
    when its mean training accuracy is more than the profile's ``train_acc_tolerance``
    below its data set's reference population's, or when any of its models misses the
    fit rule. Trains what is missing first (``train``, as :func:`factor_table`)."""
    p = get_profile(profile)
    st = store if isinstance(store, Store) else Store(store)
    if train is None:
        train = not trained_by_build(p)
    rows = []
    for ds in datasets or p.datasets:
        pops = {"reference": [reference_population(p, ds)], **factor_populations(p, ds)}
        if train:
            train_profile(p, [ds], list(pops)[1:], device=device or p.device, store=st,
                          progress=progress)
        rule = p.fit_rule.get(ds)
        for name, reps in pops.items():
            for pop in reps:
                for r in pop.recipes:
                    e = st.model(r)
                    m, h = e.metrics, e.history
                    rows.append({"dataset": ds, "population": name,
                                 "replicate": pop.replicate if name != "reference" else None,
                                 "key": r.key(), "train_acc": float(m["train_acc"]),
                                 "train_loss": float(m["train_loss"]),
                                 "last_epoch_loss_drop": FitRule().loss_drop(h),
                                 "test_acc": float(m["test_acc"]),
                                 "fit_rule": rule.text() if rule else "none",
                                 "meets_rule": None if rule is None else rule.met(m, h)})
    per_model = _whole_replicates(pd.DataFrame(rows))
    return per_model, _fit_by_population(per_model, p.train_acc_tolerance)


def _whole_replicates(t: pd.DataFrame) -> pd.DataFrame:
    # the reference population has no replicate: keep the others whole numbers, not floats
    t["replicate"] = pd.Series([None if pd.isna(v) else int(v) for v in t["replicate"]],
                               index=t.index, dtype=object)
    return t


def _fit_by_population(per_model: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """:func:`training_fit`'s per-population table, with its flags."""
    out = []
    keys = ["dataset", "population", "replicate"]
    for (ds, name, rep), g in per_model.groupby(keys, sort=False, dropna=False):
        ruled = g["meets_rule"].dropna()
        out.append({"dataset": ds, "population": name,
                    "replicate": None if pd.isna(rep) else int(rep), "models": len(g),
                    "train_acc": float(g["train_acc"].mean()),
                    "train_acc_min": float(g["train_acc"].min()),
                    "train_loss": float(g["train_loss"].mean()),
                    "test_acc": float(g["test_acc"].mean()),
                    "meet_rule": None if ruled.empty else int(ruled.sum())})
    t = _whole_replicates(pd.DataFrame(out))
    ref = t[t["population"] == "reference"].set_index("dataset")["train_acc"]
    flags = []
    for row in t.itertuples():
        why = []
        below = ref[row.dataset] - row.train_acc
        if below > tolerance:
            why.append(f"training accuracy {100 * below:.1f} points below the reference's")
        if row.meet_rule is not None and row.meet_rule < row.models:
            why.append(f"{row.models - row.meet_rule} of {row.models} models miss the fit rule")
        flags.append("; ".join(why))
    return t.assign(flag=flags)


def describe_recipe_difference(recipes: Sequence[Recipe]) -> dict[str, list[Any]]:
    """Fields whose values differ across ``recipes`` (what a population varies)."""
    dicts = [r.to_dict() for r in recipes]
    return {k: [d[k] for d in dicts] for k in dicts[0] if len({repr(d[k]) for d in dicts}) > 1}


# -- per-population RM and PM, the table every results chapter starts from ----

#: The output layer. Its RM measures differences in the predictions themselves,
#: so verdicts use RM over the hidden layers and logits are reported apart.
LOGITS = "logits"
#: Seed of the row permutations that give SVCCA's small-sample floor.
NULL_SEED = 7


def hidden_layers(layers: Sequence[str]) -> list[str]:
    """``layers`` without the logits layer (all of them if that leaves none)."""
    h = [layer for layer in layers if layer != LOGITS]
    return h or list(layers)


def permuted_rows(acts: Sequence[np.ndarray], seed: int = NULL_SEED) -> list[np.ndarray]:
    """Every model's rows permuted independently (seeded): the pairing of inputs
    across models is broken while each model keeps its own activation spectrum,
    so SVCCA between them is what *unrelated* representations of the same
    dimensions score on this many inputs (the small-sample floor)."""
    rng = np.random.default_rng(seed)
    return [np.asarray(a)[rng.permutation(len(a))] for a in acts]


#: SVCCA's fixed number of kept directions in the cross-check (``rm_k``): the
#: same for every layer and model, so no factor is ranked by its kept dimensions.
FIXED_K = 8
#: A layer whose two largest kept SVCCA dimensions fill this share of the
#: centred input space (:func:`rmpm.measures.similarity.subspace_fill`) in some
#: population of a data set is flagged and left out of that data set's tests.
MAX_FILL = 0.5


def population_measures(data: PopulationData, keep: float = 0.99, conv: str = "pool",
                        cross_checks: bool = True) -> dict[str, Any]:
    """RM (per layer, over hidden layers, chance-adjusted) and PM (i.i.d. and every
    shift) of one population.

    RM keys: ``rm:<layer>`` (1 - SVCCA, mean over model pairs) and
    ``rm_null:<layer>`` (the same on row-permuted activations,
    :func:`permuted_rows`); ``rm_adj:<layer>`` = ``rm / rm_null``, RM as a
    fraction of what unrelated representations with the same kept dimensions
    would score (1 = no more similar than chance; the SVCCA analogue of a
    chance-corrected agreement); ``dims:<layer>`` the most SVCCA dimensions a
    model keeps, ``rows:<layer>`` the activation rows, ``fill:<layer>`` their
    :func:`~rmpm.measures.similarity.subspace_fill`. Model level: ``rm``,
    ``rm_adj`` and ``rm_null`` are means over the hidden layers
    (:func:`hidden_layers`; :func:`factor_table` recomputes them over the layers
    it does not flag), ``rm_logits`` the output layer's RM, ``rm_all_layers`` the
    mean over every layer. With ``cross_checks``, per hidden layer: ``rm_cka:``
    (1 - linear CKA), ``rm_pwcca:``, ``rm_dcka:`` and ``rm_dcka_null:`` (1 -
    debiased CKA, observed and row-permuted), ``rm_k:`` and ``rm_k_null:`` (SVCCA
    keeping :data:`FIXED_K` directions), and their means ``rm_cka``, ``rm_pwcca``,
    ``rm_dcka_adj``, ``rm_k_adj`` (chance-adjusted like ``rm_adj``).
    PM keys: ``pm:iid`` and ``pm:<kind>:<sev>`` (prediction variance), ``pm_ood``
    (mean over shifts), ``disagree:iid``, ``disagree:<kind>:<sev>``,
    ``disagree_ood``; accuracies ``acc_iid``, ``acc_ood`` (means over models),
    ``gap`` (train - test accuracy), and the spread of test accuracy ``acc_iid_range``.
    """
    out: dict[str, Any] = {"n_models": data.n_models}
    out.update(_rm_measures(data, keep, conv, cross_checks))
    out.update(_pm_measures(data))
    out.update(_accuracies(data))
    return out


def _rm_measures(data: PopulationData, keep: float, conv: str,
                 cross_checks: bool) -> dict[str, Any]:
    """The RM keys of :func:`population_measures`: per layer, the cross-checks on the
    hidden layers, then the model-level means."""
    from ..measures import similarity as SIM
    out: dict[str, Any] = {}
    layers = data.layers()
    hidden = hidden_layers(layers)
    acts = {layer: data.activations(layer, conv) for layer in layers}
    permuted = {k: permuted_rows(v, NULL_SEED + i) for i, (k, v) in enumerate(acts.items())}
    sims = SIM.pairwise_layers(acts, "svcca", keep)
    nulls = SIM.pairwise_layers(permuted, "svcca", keep)
    for layer in layers:
        out[f"rm:{layer}"] = SIM.representational_multiplicity(sims[layer])
    for layer in layers:
        out[f"rm_null:{layer}"] = SIM.representational_multiplicity(nulls[layer])
        out[f"rm_adj:{layer}"] = _ratio(out[f"rm:{layer}"], out[f"rm_null:{layer}"])
        dims = [SIM.svd_reduce(a, keep).dims for a in acts[layer]]
        rows = int(np.shape(acts[layer][0])[0])
        out[f"dims:{layer}"] = int(max(dims))
        out[f"rows:{layer}"] = rows
        out[f"fill:{layer}"] = SIM.subspace_fill(dims, rows)
    if cross_checks:
        hid = {k: acts[k] for k in hidden}
        hid_perm = {k: permuted[k] for k in hidden}
        for name, measure, kept, what in (("rm_cka", "cka", keep, hid), ("rm_pwcca", "pwcca", keep, hid),
                                          ("rm_dcka", "cka_debiased", keep, hid),
                                          ("rm_dcka_null", "cka_debiased", keep, hid_perm),
                                          ("rm_k", "svcca", FIXED_K, hid),
                                          ("rm_k_null", "svcca", FIXED_K, hid_perm)):
            for layer, sim in SIM.pairwise_layers(what, measure, kept).items():
                out[f"{name}:{layer}"] = SIM.representational_multiplicity(sim)
    out.update(layer_means(out, hidden, layers))
    return out


def _pm_measures(data: PopulationData) -> dict[str, Any]:
    """The PM keys of :func:`population_measures`: i.i.d., every shift, their means."""
    from ..measures import multiplicity as PM
    p_iid = data.probs("iid")
    out: dict[str, Any] = {"pm:iid": PM.prediction_variance(p_iid),
                           "disagree:iid": PM.mean_disagreement(p_iid)}
    pm_ood, dis_ood = [], []
    for kind, sev in data.shifts():
        p = data.probs(kind, sev)
        out[f"pm:{kind}:{sev}"] = PM.prediction_variance(p)
        out[f"disagree:{kind}:{sev}"] = PM.mean_disagreement(p)
        pm_ood.append(out[f"pm:{kind}:{sev}"])
        dis_ood.append(out[f"disagree:{kind}:{sev}"])
    if pm_ood:
        out["pm_ood"] = float(np.mean(pm_ood))
        out["disagree_ood"] = float(np.mean(dis_ood))
    return out


def _accuracies(data: PopulationData) -> dict[str, float]:
    """The accuracy keys of :func:`population_measures` (means over the models)."""
    m = data.metrics
    out = {"acc_iid": float(m["test_acc"].mean()),
           "acc_iid_range": float(m["test_acc"].max() - m["test_acc"].min()),
           "gap": float(m["gap"].mean())}
    if "ood_acc" in m:
        out["acc_ood"] = float(m["ood_acc"].mean())
    return out


def _ratio(a: float, b: float) -> float:
    """``a / b`` for the chance adjustment; NaN when the floor ``b`` is not positive."""
    return float(a / b) if b > 0 else float("nan")


def layer_means(m: dict[str, Any], used: Sequence[str],
                layers: Sequence[str] | None = None) -> dict[str, float]:
    """The model-level RM of one population's measures ``m`` over the hidden layers
    ``used``: ``rm``, ``rm_adj``, ``rm_null`` and, where ``m`` has them, the
    cross-checks ``rm_cka``, ``rm_pwcca`` (raw), ``rm_dcka_adj`` and ``rm_k_adj``
    (each layer's value over its row-permuted floor, then averaged, as ``rm_adj``);
    with ``layers`` also ``rm_all_layers`` and ``rm_logits``."""
    if not used:
        raise ValueError("layer_means needs at least one layer")
    out = {"rm": float(np.mean([m[f"rm:{k}"] for k in used])),
           "rm_adj": float(np.mean([m[f"rm_adj:{k}"] for k in used])),
           "rm_null": float(np.mean([m[f"rm_null:{k}"] for k in used]))}
    for name in ("rm_cka", "rm_pwcca"):
        if f"{name}:{used[0]}" in m:
            out[name] = float(np.mean([m[f"{name}:{k}"] for k in used]))
    for name in ("rm_dcka", "rm_k"):
        if f"{name}:{used[0]}" in m:
            out[f"{name}_adj"] = float(np.mean([_ratio(m[f"{name}:{k}"], m[f"{name}_null:{k}"])
                                                for k in used]))
    if layers is not None:
        out["rm_all_layers"] = float(np.mean([m[f"rm:{k}"] for k in layers]))
        if LOGITS in layers:
            out["rm_logits"] = m[f"rm:{LOGITS}"]
    return out


def flagged_layers(rows: Sequence[dict[str, Any]], layers: Sequence[str],
                   max_fill: float = MAX_FILL) -> list[str]:
    """The ``layers`` whose ``fill:<layer>`` reaches ``max_fill`` in any of
    ``rows`` (the populations of one data set): their kept SVCCA dimensions
    approach the number of inputs, so their RM is mostly the small-sample floor.
    Flagging per data set keeps every population's RM over the same layers."""
    check_range("max_fill", max_fill, 0.0, lo_open=True)
    return [k for k in layers if any(r[f"fill:{k}"] >= max_fill for r in rows)]


def trusted_layer_means(rows: list[dict[str, Any]], max_fill: float = MAX_FILL) -> None:
    """Recompute, in place, the model-level RM of the populations ``rows`` (one
    data set's, each with its ``layers``) over the hidden layers that
    :func:`flagged_layers` does not flag; record ``rm_layers`` (those used) and
    ``flagged_layers``. If every hidden layer is flagged, all of them are used and
    ``rm_layers`` says ``"all flagged: ..."``, so no reader takes it for trusted."""
    if not rows:
        return
    layers = rows[0]["layers"].split(",")
    hidden = hidden_layers(layers)
    flagged = flagged_layers(rows, hidden, max_fill)
    used = [k for k in hidden if k not in flagged]
    label = ",".join(used) if used else "all flagged: " + ",".join(hidden)
    for r in rows:
        r.update(layer_means(r, used or hidden, layers))
        r["rm_layers"] = label
        r["flagged_layers"] = ",".join(flagged)


def factor_table(profile: str | Profile, dataset: str | None = None,
                 factors: Sequence[str] | None = None, conv: str = "pool",
                 store: Store | str | None = None, train: bool | None = None,
                 progress: bool = True, device: str | None = None,
                 max_fill: float = MAX_FILL) -> pd.DataFrame:
    """One row per (data set, factor, replicate) population with its RM and PM.

    The model-level RM (``rm``, ``rm_adj``, ``rm_null`` and the cross-checks) is
    over the hidden layers that no population of the data set flags
    (:func:`trusted_layer_means`, ``max_fill``); ``rm_layers`` and
    ``flagged_layers`` say which.

    Trains whatever is missing first (``train=True``, on ``device``, default the
    profile's), so a notebook can call this alone; with ``train=False`` a missing
    model raises ``KeyError``. ``train=None``: train unless a book build already
    trained the profile (:func:`trained_by_build`).
    """
    p = get_profile(profile)
    check_range("max_fill", max_fill, 0.0, lo_open=True)
    if train is None:
        train = not trained_by_build(p)
    datasets = [dataset] if dataset is not None else list(p.datasets)
    rows = []
    for ds in datasets:
        first = len(rows)
        pops = factor_populations(p, ds, factors)
        if train:
            train_profile(p, [ds], list(pops), device=device or p.device, store=store,
                          progress=progress)
        for factor, reps in pops.items():
            for pop in reps:
                m = cached_population_measures(pop, p, conv, store)
                # measures keep network order (JSON keeps key order); a concatenated
                # table's columns do not, so the order travels in its own column
                layers = ",".join(k.split(":", 1)[1] for k in m if k.startswith("rm:"))
                field0 = FACTORS[factor].fields[0]
                rows.append({"dataset": ds, "factor": factor, "replicate": pop.replicate,
                             "values": ", ".join(map(str, pop.values)),
                             # what the recipes actually used (relative values resolved)
                             "settings": ", ".join(f"{getattr(r, field0):g}" if isinstance(
                                 getattr(r, field0), float) else str(getattr(r, field0))
                                 for r in pop.recipes),
                             "layers": layers, **m})
        trusted_layer_means(rows[first:], max_fill)
    return pd.DataFrame(rows)


#: bump when population_measures changes what it computes (3: hidden-layer and
#: chance-adjusted RM; 4: entries record their inputs; 5: kept dimensions per
#: layer, debiased-CKA and fixed-k SVCCA cross-checks per layer)
MEASURES_VERSION = 5


def measures_key(pop: Population, profile: str | Profile, conv: str = "pool") -> str:
    """The store key of :func:`cached_population_measures`' entry for ``pop``."""
    from ..pipeline.recipe import content_key
    p = get_profile(profile)
    return content_key({"v": MEASURES_VERSION, "models": list(pop.keys),
                        "spec": eval_spec(p).key(), "conv": conv, "keep": p.svcca_keep})


def cached_population_measures(pop: Population, profile: str | Profile, conv: str = "pool",
                               store: Store | str | None = None) -> dict[str, Any]:
    """:func:`population_measures` of a stored population, memoised in the store.

    The measures are a pure function of the population's stored evaluations, so
    they are kept under ``derived/`` keyed by the models, the eval spec and the
    options; every chapter that needs them then computes SVCCA once. The entry
    records the content digests of the model and evaluation entries it was
    computed from (``inputs.json``); when those differ from the store's current
    entries (one was damaged and recomputed, say) the stale measures are moved
    to quarantine and recomputed. Its files are checked like every store entry.
    It is computed under its claim (:mod:`rmpm.pipeline.locks`), so another build
    on the same store computing it is waited for, not repeated.
    """
    from ..pipeline.locks import work_through
    from ..pipeline.store import (DamagedEntryError, commit_dir, ensure_intact, kind_of, quarantine,
                        read_verified)
    p = get_profile(profile)
    st = store if isinstance(store, Store) else Store(store)
    spec_key = eval_spec(p).key()
    key = measures_key(pop, p, conv)
    path = st.derived_dir(key)
    # the inputs must be stored intact (KeyError naming a missing one otherwise)
    entries = [e for r in pop.recipes for e in (st.model(r), st.eval(r, spec_key))]
    inputs = {f"{kind_of(e.path)}/{e.path.name}": e.digest for e in entries}
    if ensure_intact(path, "derived"):
        try:
            if json.loads(read_verified(path, "inputs.json")) == inputs:
                return json.loads(read_verified(path, "measures.json"))
            quarantine(path, ["inputs.json: its input entries have changed since"],
                       reason="stale")
        except DamagedEntryError:
            pass  # quarantined with a warning; recompute below
    computed: list[dict[str, Any]] = []

    def compute(_):
        measures = population_measures(load_population(pop, p, st), p.svcca_keep, conv)

        def write(d):
            (d / "measures.json").write_text(json.dumps(measures))
            (d / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True))

        commit_dir(path, write)
        computed.append(measures)

    # under the entry's claim, as models and evaluations are: a concurrent build on
    # this store that is computing the same measures is waited for, not repeated
    work_through([key], str, st.root, "derived", lambda _: path.is_dir(), compute, wait=True)
    return computed[0] if computed else json.loads(read_verified(path, "measures.json"))
