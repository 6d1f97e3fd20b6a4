"""What a chapter run outside a book build (JupyterLab, papermill) says first about its
models: that it reads them from the store ``make book`` filled, or, where the store
lacks some, how many it will train, about how long that takes on this machine and
that ``make book`` fills the store for every chapter at once; a progress bar follows
when it trains (:func:`rmpm.pipeline.tasks.progress_bar`).

The chapter harness calls :func:`remember` from ``check_parameters`` (every chapter's
first code cell) and appends :func:`notice` to the profile banner, the chapter's first
output. In a book build (``$RMPM_BUILD`` set) it says nothing: the book's pages are
what they were, and the build has trained every model before any chapter runs.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .._checks import check_names
from ..analysis import populations as X
from ..analysis.profiles import Profile, get_profile
from ..pipeline.recipe import FACTORS

#: the chapter whose first code cell ran last in this kernel, and its namespace
_CURRENT: dict[str, Any] = {}


def remember(notebook: str, namespace: Mapping[str, Any]) -> None:
    """Called by :func:`rmpm.book.chapter.check_parameters`: which chapter runs, with
    which parameter values (its namespace, read again when the banner is shown, so that
    values the chapter resolved meanwhile count)."""
    _CURRENT.clear()
    _CURRENT.update(notebook=notebook, namespace=namespace)


def in_book_build() -> bool:
    """True in a notebook kernel of ``rmpm book`` (its build folder, or the profile it
    has trained, is in the environment)."""
    return bool(os.environ.get("RMPM_BUILD") or os.environ.get(X.TRAINED_VAR))


# --- which models a chapter trains (what its cells call, with its parameters) ------------

def _n_models(p: Profile, v: Mapping[str, Any]) -> int:
    return v.get("n_models") or p.reference_seeds


def _reference(p: Profile, datasets, n: int) -> list:
    return [r for ds in datasets for r in X.reference_population(p, ds, n).recipes]


def _factor_chapter(p: Profile, v: Mapping[str, Any]) -> list:
    ds = check_names("datasets", v.get("datasets"), p.datasets)
    fs = check_names("factors", v.get("factors"), [f for f in FACTORS if f in p.factors])
    return X.profile_recipes(p, ds, fs)  # factor_table trains these, per data set


def _populations(p: Profile, v: Mapping[str, Any]) -> list:
    # reference_accuracy (every data set), population_accuracy (every factor population)
    return _reference(p, p.datasets, _n_models(p, v)) + X.profile_recipes(p)


def _finite_samples(p: Profile, v: Mapping[str, Any]) -> list:
    ds = v.get("dataset")
    return (_reference(p, [ds or p.datasets[0]], _n_models(p, v))
            + X.profile_recipes(p, [ds] if ds else list(p.datasets)))


def _exposing(p: Profile, v: Mapping[str, Any]) -> list:
    return _reference(p, [v.get("dataset") or p.datasets[0]], _n_models(p, v))


#: chapter -> the recipes its cells train (run_recipes through rmpm.analysis.populations),
#: from the profile and its parameter values; chapters not listed train nothing
CHAPTER_MODELS: dict[str, Callable[[Profile, Mapping[str, Any]], list]] = {
    "02_populations": _populations,
    "03_rm_by_factor": _factor_chapter,
    "04_pm_iid_ood": _factor_chapter,
    "05_rm_vs_pm": _factor_chapter,
    "06_finite_samples": _finite_samples,
    "07_exposing_multiplicity": _exposing,
}


def chapter_recipes(notebook: str, profile: str | Profile,
                    values: Mapping[str, Any] | None = None) -> list:
    """The distinct recipes chapter ``notebook`` trains under ``profile`` with its
    parameter ``values`` (none for a chapter that trains nothing)."""
    from ..pipeline.recipe import dedupe
    rule = CHAPTER_MODELS.get(notebook)
    return dedupe(rule(get_profile(profile), values or {})) if rule else []


# --- what the store holds, and how long the rest takes ---------------------------------------

def missing(recipes: list, profile: str | Profile, store=None) -> list:
    """The recipes whose model or evaluation ``store`` lacks. Only looks at the entries'
    folders (as :meth:`rmpm.pipeline.store.Store.progress` does): it writes nothing, so
    it may look at a store this process must not change."""
    from ..pipeline.store import Store
    st = store if isinstance(store, Store) else Store(store)
    skey = X.eval_spec(profile).key()
    return [r for r in recipes if not (st.model_dir(r).is_dir() and st.eval_dir(r, skey).is_dir())]


#: what a run pays before its first model, whatever it trains: starting the worker
#: processes (each imports torch) and loading each one's data; about this on the 2-core
#: machine rmpm is developed on, where 4 default-profile models took 107 s against an
#: estimate of 30 s for their training and evaluation alone
STARTUP_S = 30.0


def estimate_seconds(recipes: list, profile: str | Profile,
                     workers: int | None = None) -> dict[str, float]:
    """About how long training and evaluating ``recipes`` takes here, on ``workers``
    single-threaded worker processes (default: one per core, what ``run_recipes`` starts):
    one epoch of the commonest network is timed on random tensors in this process, on
    one thread like a worker, and the others scaled by their FLOPs
    (:mod:`rmpm.pipeline.estimate`), plus :data:`STARTUP_S`. Returns ``profile_seconds``'
    dict plus ``workers`` and ``measured_s`` (what the timing itself took)."""
    import time
    from collections import Counter

    import torch

    from ..pipeline import estimate as T
    from ..pipeline.engine import default_workers
    p = get_profile(profile)
    workers = workers or default_workers("cpu")
    keys = Counter(T.cost_key(r) for r in recipes)
    ref = next(r for r in recipes if T.cost_key(r) == keys.most_common(1)[0][0])
    t0, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # the quicker of two timings: the first in a process still pays for set-up
        per_example = min(T.epoch_seconds(ref, sample=512) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    cost = T.flop_costs(recipes, ref, per_example)
    spec = X.eval_spec(p)
    n_shifts = len(spec.corruptions) * len(spec.severities)
    out = T.profile_seconds(recipes, cost, workers, n_eval_inputs=spec.n_test, n_shifts=n_shifts)
    out["wall_s"] += STARTUP_S
    return {**out, "workers": workers, "measured_s": time.perf_counter() - t0}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(10, round(seconds, -1)):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def notice(profile: str | Profile, notebook: str | None = None,
           values: Mapping[str, Any] | None = None, store=None) -> str | None:
    """Markdown for the chapter's first output: where its models come from (see the
    module's doc); None in a book build, for a chapter that trains nothing, or when no
    chapter has run its first cell in this kernel."""
    from ..pipeline.store import Store
    if in_book_build():
        return None
    notebook = notebook or _CURRENT.get("notebook")
    if values is None:
        values = _CURRENT.get("namespace", {}) if notebook == _CURRENT.get("notebook") else {}
    recipes = chapter_recipes(notebook, profile, values) if notebook else []
    if not recipes:
        return None
    p = get_profile(profile)
    st = store if isinstance(store, Store) else Store(store)
    lack = missing(recipes, p, st)
    where = f"the store at `{st.root}`"
    if not lack:
        return (f"**Models**: this chapter reads its {len(recipes)} models from {where}, "
                f"which `make book PROFILE={p.name}` filled; it trains none.")
    est = estimate_seconds(lack, p)
    have = len(recipes) - len(lack)
    return (f"**Models**: {where} holds {have} of the {len(recipes)} models this chapter "
            f"needs. It will now train the other **{len(lack)}** and evaluate them: about "
            f"**{_duration(est['wall_s'])}** on this machine ({est['workers']} worker "
            f"process{'es' if est['workers'] > 1 else ''}, estimated by timing one epoch "
            "here). `make book PROFILE=" + p.name + "` fills the store for every chapter "
            "at once, on every core; after it no chapter trains. A progress bar follows.")
