"""Recipe in, store entries out.

:func:`run_recipe` is the unit of work: a pure function of (recipe, eval spec)
whose only effect is to add entries to a content-addressed store, so a grid of
recipes can be mapped over any executor (a loop, ``concurrent.futures``, Dask
with dask-jobqueue) without coordination. :func:`run_recipes` is the loop with
progress, resumption and a summary table.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .evaluate import EvalSpec, evaluate
from .recipe import Recipe
from .store import EvalEntry, ModelEntry, Store
from .train import TrainData, fit, prepare, resolve_device


@dataclass(frozen=True)
class RunResult:
    recipe: Recipe
    model: ModelEntry
    eval: EvalEntry
    trained: bool  # False when the model came from the store


def run_recipe(recipe: Recipe, spec: EvalSpec, store: Store | str | None = None,
               device: str | torch.device | None = "auto",
               data: TrainData | None = None) -> RunResult:
    """Train ``recipe`` unless the store has it, evaluate it under ``spec`` unless
    the store has that too; return the entries."""
    store = store if isinstance(store, Store) else Store(store)
    dev = resolve_device(device)
    trained = False
    if not store.has_model(recipe):
        res = fit(recipe, dev, data=data)
        d = data or prepare(recipe.dataset, torch.device("cpu"))
        store.put_model(recipe, res.model.state_dict(), res.metrics, res.history,
                        d.in_shape, d.n_classes)
        trained = True
    entry = store.model(recipe)
    skey = spec.key()
    if not store.has_eval(recipe, skey):
        model = entry.load_model()
        [(metrics, arrays)] = evaluate([model], recipe.dataset, spec, dev)
        store.put_eval(recipe, spec.to_dict(), skey, metrics, arrays)
    return RunResult(recipe, entry, store.eval(recipe, skey), trained)


def run_recipes(recipes: Sequence[Recipe], spec: EvalSpec, store: Store | str | None = None,
                device: str | torch.device | None = "auto", progress: bool = True,
                summary: bool = False) -> list[RunResult]:
    """Run every recipe (deduplicated, in order); finished entries are reused.

    A run killed half-way loses at most the model being trained: rerun the
    same call and it continues where it stopped.
    """
    store = store if isinstance(store, Store) else Store(store)
    dev = resolve_device(device)
    unique = list({r.key(): r for r in recipes}.values())
    data_cache: dict[str, TrainData] = {}
    out: dict[str, RunResult] = {}
    todo = [r for r in unique if not (store.has_model(r) and store.has_eval(r, spec.key()))]
    for r in unique:
        if r not in todo:
            out[r.key()] = RunResult(r, store.model(r), store.eval(r, spec.key()), False)
    it = todo
    if progress and todo:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc=f"training {len(todo)} of {len(unique)} models", unit="model")
    for r in it:
        if r.dataset not in data_cache:
            data_cache = {r.dataset: prepare(r.dataset, dev)}  # keep one data set resident
        out[r.key()] = run_recipe(r, spec, store, dev, data=data_cache[r.dataset])
    results = [out[r.key()] for r in recipes]
    if summary:
        print(summary_table(results))
    return results


def summary_table(results: Sequence[RunResult]) -> str:
    """A plain-text table: one row per model, with accuracies and where it came from."""
    rows = [f"{'key':12} {'dataset':14} {'arch':6} {'train':>6} {'test':>6} {'ood':>6} {'sec':>6}  src"]
    for r in results:
        m, e = r.model.metrics, r.eval.metrics
        ood = e.get("ood_acc")
        rows.append(f"{r.recipe.key()[:12]} {r.recipe.dataset:14} {r.recipe.arch:6} "
                    f"{m['train_acc']:6.3f} {m['test_acc']:6.3f} "
                    f"{ood if ood is None else f'{ood:6.3f}':>6} {m['train_seconds']:6.1f}  "
                    f"{'trained' if r.trained else 'store'}")
    return "\n".join(rows)
