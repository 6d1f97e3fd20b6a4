"""The experiments' heavy lifting: which models a profile needs, training them
(once, shared by every notebook), and loading a population's results.

Notebooks call these functions, tabulate and plot; they hold no logic of their own.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._checks import check_choice
from .evaluate import EvalSpec, pred_key
from .profiles import Profile, get_profile
from .recipe import FACTORS, Population, Recipe, unique_recipes, vary
from .runs import RunResult, run_recipes
from .store import Store


def eval_spec(profile: str | Profile) -> EvalSpec:
    p = get_profile(profile)
    return EvalSpec(n_test=p.n_test, n_probe=p.n_probe, corruptions=p.corruptions,
                    severities=p.severities)


def _dataset(p: Profile, dataset: str | None) -> str:
    if dataset is None:
        return p.datasets[0]
    return check_choice("dataset", dataset, p.datasets)


def reference_population(profile: str | Profile, dataset: str | None = None) -> Population:
    """Experiment 2's population: the profile's reference recipe with independent seeds."""
    p = get_profile(profile)
    ds = _dataset(p, dataset)
    return vary(p.reference[ds], "both_seeds", tuple(range(p.reference_seeds)))[0]


def factor_populations(profile: str | Profile, dataset: str | None = None,
                       factors: Sequence[str] | None = None) -> dict[str, list[Population]]:
    """factor -> one population per replicate, for one data set of the profile."""
    p = get_profile(profile)
    ds = _dataset(p, dataset)
    names = list(p.factors) if factors is None else list(factors)
    for f in names:
        check_choice("factor", f, [k for k in FACTORS if k in p.factors])
    return {f: vary(p.base[ds], f, p.factors[f], p.replicates) for f in names}


def train_profile(profile: str | Profile, datasets: Sequence[str] | None = None,
                  factors: Sequence[str] | None = None, reference_only: bool = False,
                  device: str = "auto", store: Store | str | None = None,
                  progress: bool = True) -> list[RunResult]:
    """Train and evaluate every model the profile's experiments need (resumable)."""
    p = get_profile(profile)
    spec = eval_spec(p)
    recipes: list[Recipe] = []
    for ds in datasets or p.datasets:
        ds = _dataset(p, ds)
        recipes += reference_population(p, ds).recipes
        if not reference_only:
            for pops in factor_populations(p, ds, factors).values():
                recipes += unique_recipes(pops)
    return run_recipes(recipes, spec, store, device=device, progress=progress)


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

    def layers(self) -> list[str]:
        """Probe layer names, in network order."""
        seen: dict[str, None] = {}
        for k in self.arrays[0]:
            if k.startswith("act:"):
                seen.setdefault(k.split(":")[1])
        return list(seen)

    def activations(self, layer: str, conv: str = "pool") -> list[np.ndarray]:
        """One (inputs, neurons) array per model; ``conv`` picks the conv-layer convention."""
        check_choice("conv", conv, ("pool", "positions"))
        a0 = self.arrays[0]
        key = f"act:{layer}" if f"act:{layer}" in a0 else f"act:{layer}:{conv}"
        if key not in a0:
            raise KeyError(f"no activations for layer {layer!r}; layers: {', '.join(self.layers())}")
        return [a[key] for a in self.arrays]


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


def describe_recipe_difference(recipes: Sequence[Recipe]) -> dict[str, list[Any]]:
    """Fields whose values differ across ``recipes`` (what a population varies)."""
    dicts = [r.to_dict() for r in recipes]
    return {k: [d[k] for d in dicts] for k in dicts[0] if len({repr(d[k]) for d in dicts}) > 1}
