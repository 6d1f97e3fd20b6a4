"""Recipe in, store entries out.

:func:`run_recipe` is the unit of work: a pure function of (recipe, eval spec)
whose only effect is to add entries to a content-addressed store, so a grid of
recipes can be mapped over any executor (a loop, ``concurrent.futures``, Dask
with dask-jobqueue) without coordination. :func:`run_recipes` is the loop with
progress, resumption and a summary table; on a GPU it trains recipes that
differ only in seeds or scalar hyperparameters together, as batched ensembles
(:mod:`rmpm.pipeline.ensemble`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import determinism
from .._checks import check_choice, check_range
from .locks import work_through
from .ensemble import group_recipes
from .evaluate import EvalSpec
from .recipe import Recipe, dedupe
from .store import EvalEntry, ModelEntry, Store, StoreWriteError
from .tasks import eval_claim_name, evaluate_into, progress_bar, train_into
from .train import TrainData, prepare, resolve_device

ENGINES = ("auto", "single", "ensemble")


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

    def train(_: list[Recipe]) -> None:
        nonlocal data
        data = data or prepare(recipe.dataset, dev)  # once, for training and its shapes
        train_into(store, [recipe], "single", dev, data)

    skey = spec.key()
    # each under its claim, waiting for another process that is computing it
    trained = work_through([recipe], Recipe.key, store.root, "models", store.has_model, train,
                           wait=True)[0]
    work_through([recipe], eval_claim_name(store, skey), store.root, "evals",
                 lambda r: store.has_eval(r, skey),
                 lambda todo: evaluate_into(store, todo, spec, dev), wait=True)
    return RunResult(recipe, store.model(recipe), store.eval(recipe, skey), bool(trained))


def preflight(datasets: Sequence[str], store: Store | str | None = None,
              device: str | torch.device | None = None, device_name: str = "device") -> Store:
    """What a run checks before any work, so that it fails in seconds rather than
    after hours: the device exists (if given; an error names ``device_name``), the
    store can be written (not read-only, not full) and every data set loads (all the
    missing ones named at once). Returns the store."""
    from .data import ensure
    if device is not None:
        resolve_device(device, name=device_name)
    st = store if isinstance(store, Store) else Store(store)
    st.check_writable()
    ensure(list(dict.fromkeys(datasets)))
    return st


def resolve_engine(engine: str, device: torch.device) -> str:
    """``"auto"``: the batched ensemble on CUDA, the single-model loop elsewhere.

    The CPU default stays the single loop so that a recipe's stored numbers never
    depend on what else was in the grid (the ensemble agrees with it only up to
    floating-point rounding).
    """
    check_choice("engine", engine, ENGINES)
    if engine == "auto":
        return "ensemble" if device.type == "cuda" else "single"
    return engine


def run_recipes(recipes: Sequence[Recipe], spec: EvalSpec, store: Store | str | None = None,
                device: str | torch.device | None = "auto", progress: bool = True,
                summary: bool = False, engine: str = "auto",
                max_group: int = 32, eval_chunk: int = 16, *, deterministic: bool = True,
                workers: int | None = None, scheduler: str | None = None) -> list[RunResult]:
    """Run every recipe (deduplicated, in order); finished entries are reused.

    Where the work runs (see :mod:`rmpm.pipeline.engine` and :mod:`rmpm.pipeline.determinism`):
    on a Dask cluster, by default an embedded one of ``workers`` single-threaded
    processes (default: one per core), or the cluster at ``scheduler`` (default:
    ``$RMPM_SCHEDULER``). ``deterministic`` (default) pins every worker's CPU
    kernels to AVX2 and one thread, so the stored bits do not depend on the
    machine, the worker count or the recipe order; ``False`` lets each worker use
    its CPU's fastest kernels. ``workers=0`` runs in this process instead: allowed
    in fast mode, or in a process that was itself started pinned (a worker).

    ``engine``: ``"single"`` trains one recipe at a time with :func:`rmpm.pipeline.train.fit`;
    ``"ensemble"`` trains the untrained recipes in groups of equal
    :func:`rmpm.pipeline.ensemble.batch_key` (at most ``max_group`` each) with
    :func:`rmpm.pipeline.ensemble.fit_ensemble`; ``"auto"`` picks ensemble on CUDA, single
    otherwise (see :func:`resolve_engine`).

    Models are trained first, then evaluated ``eval_chunk`` at a time. A run
    killed half-way loses at most the model (or group) being trained, or the
    chunk being evaluated: each entry is stored as soon as it is finished, and
    rerunning the same call continues where it stopped.
    """
    store = store if isinstance(store, Store) else Store(store)
    dev = resolve_device(device)
    engine = resolve_engine(engine, dev)
    check_range("eval_chunk", eval_chunk, 1, integer=True)
    if workers is not None:
        check_range("workers", workers, 0, integer=True)
    if workers == 0 and scheduler is None:
        if deterministic and not determinism.is_pinned():
            raise ValueError(
                "workers=0 runs in this process, whose CPU kernels are not pinned ("
                + "; ".join(determinism.problems(True)) + "); use workers >= 1 (worker "
                "processes started pinned) or deterministic=False")
        return _run_in_process(recipes, spec, store, dev, progress, summary, engine,
                               max_group, eval_chunk)
    from . import engine as E
    unique = dedupe(recipes)
    skey = spec.key()
    if all(store.has_model(r) and store.has_eval(r, skey) for r in unique):
        # everything is stored (a chapter run after `make book`): no cluster to start
        results = [RunResult(r, store.model(r), store.eval(r, skey), False) for r in recipes]
        if summary:
            print(summary_table(results))
        return results
    client = E.get_client(workers, scheduler, deterministic, str(dev))
    trained = E.run(client, unique, spec, str(store.root.resolve()),
                    str(dev) if device not in (None, "auto") else "auto", engine, max_group,
                    eval_chunk, deterministic, progress)
    results = [RunResult(r, store.model(r), store.eval(r, skey), r.key() in trained)
               for r in recipes]
    if summary:
        print(summary_table(results))
    return results


def _run_in_process(recipes: Sequence[Recipe], spec: EvalSpec, store: Store, dev: torch.device,
                    progress: bool, summary: bool, engine: str, max_group: int,
                    eval_chunk: int) -> list[RunResult]:
    """:func:`run_recipes` in this process, one model (or group) at a time, each under
    its claim (:mod:`rmpm.pipeline.locks`): what another process is computing is left
    for the end, then waited for. A store that cannot be written stops the run at the
    first write, saying what is stored."""
    unique = dedupe(recipes)
    skey = spec.key()
    try:
        return _in_process(recipes, unique, spec, store, dev, progress, summary, engine,
                           max_group, eval_chunk)
    except StoreWriteError as e:
        raise e.stopped(f"The run stopped there: {store.progress(unique, skey)}.") from None


def _in_process(recipes, unique, spec, store, dev, progress, summary, engine, max_group,
                eval_chunk) -> list[RunResult]:
    data_cache: dict[str, TrainData] = {}
    out: dict[str, RunResult] = {}
    skey = spec.key()
    todo = [r for r in unique if not (store.has_model(r) and store.has_eval(r, skey))]
    for r in unique:
        if r not in todo:  # already complete in the store
            out[r.key()] = RunResult(r, store.model(r), store.eval(r, skey), False)
    if todo:
        store.check_writable()  # a read-only or full store stops now, not after training

    def data_for(dataset: str) -> TrainData:
        nonlocal data_cache
        if dataset not in data_cache:
            data_cache = {dataset: prepare(dataset, dev)}  # keep one data set resident
        return data_cache[dataset]

    def train(group: list[Recipe]) -> None:
        train_into(store, group, engine, dev, data_for(group[0].dataset))
        bar.update(len(group))

    def evaluate_chunk(chunk: list[Recipe]) -> None:
        evaluate_into(store, chunk, spec, dev)
        bar.update(len(chunk))

    root = store.root

    def through(units, kind, name_of, done, compute) -> list[Recipe]:
        """Each unit under its claims; then, waiting, what others were computing."""
        computed, later = [], []
        for unit in units:
            c, d = work_through(unit, name_of, root, kind, done, compute)
            computed += c
            later += d
        if later:
            computed += work_through(later, name_of, root, kind, done, compute, wait=True)[0]
        return computed

    # Phase 1: train what the store lacks, storing each model as soon as it is done.
    untrained = [r for r in todo if not store.has_model(r)]
    bar = progress_bar(progress, len(untrained), f"training {len(untrained)} of {len(unique)} models")
    try:
        units = group_recipes(untrained, max_group) if engine == "ensemble" else [[r] for r in untrained]
        trained = {r.key() for r in through(units, "models", Recipe.key, store.has_model, train)}
    finally:
        bar.close()
    # Phase 2: evaluate in chunks, so each corrupted test set is generated once
    # per chunk rather than once per model.
    need = [r for r in todo if not store.has_eval(r, skey)]
    bar = progress_bar(progress, len(need), f"evaluating {len(need)} models")
    try:
        chunks = [chunk for dataset in dict.fromkeys(r.dataset for r in need)
                  for same in [[r for r in need if r.dataset == dataset]]
                  for chunk in (same[i:i + eval_chunk] for i in range(0, len(same), eval_chunk))]
        through(chunks, "evals", eval_claim_name(store, skey),
                lambda r: store.has_eval(r, skey), evaluate_chunk)
    finally:
        bar.close()
    for r in todo:
        out[r.key()] = RunResult(r, store.model(r), store.eval(r, skey), r.key() in trained)
    results = [out[r.key()] for r in recipes]
    if summary:
        print(summary_table(results))
    return results


def shard(recipes: Sequence[Recipe], index: int, count: int) -> list[Recipe]:
    """Part ``index`` (0-based) of ``count`` disjoint parts of the deduplicated recipes.

    Round-robin (every ``count``-th recipe), so that each part gets a similar mix of
    data sets and factors; the parts together are every recipe exactly once. Meant
    for job arrays: ``rmpm train --shard I/N`` in N jobs sharing one store.
    """
    check_range("shard count", count, 1, integer=True)
    check_range("shard index", index, 0, count - 1, integer=True)
    unique = dedupe(recipes)
    return unique[index::count]


def plan_table(recipes: Sequence[Recipe], spec: EvalSpec,
               store: Store | str | None = None) -> str:
    """What :func:`run_recipes` would do, without doing it: per data set and
    architecture, how many recipes, how many the store already has trained and
    evaluated under ``spec``, and the model-epochs left to train."""
    store = store if isinstance(store, Store) else Store(store)
    skey = spec.key()
    unique = dedupe(recipes)
    groups: dict[tuple[str, str], list[Recipe]] = {}
    for r in unique:
        groups.setdefault((r.dataset, r.arch), []).append(r)
    head = (f"{'dataset':14} {'arch':6} {'recipes':>7} {'trained':>7} {'evaluated':>9} "
            f"{'to train':>8} {'epochs to train':>15}")
    rows, tot = [head], [0, 0, 0, 0, 0]
    for (ds, arch), rs in groups.items():
        trained = [store.has_model(r) for r in rs]
        row = [len(rs), sum(trained), sum(store.has_eval(r, skey) for r in rs),
               trained.count(False), sum(r.epochs for r, t in zip(rs, trained) if not t)]
        tot = [a + b for a, b in zip(tot, row)]
        rows.append(f"{ds:14} {arch:6} {row[0]:7d} {row[1]:7d} {row[2]:9d} {row[3]:8d} "
                    f"{row[4]:15d}")
    rows.append(f"{'total':21} {tot[0]:7d} {tot[1]:7d} {tot[2]:9d} {tot[3]:8d} {tot[4]:15d}")
    rows.append(f"store: {store.root}   eval spec: {skey[:12]}")
    return "\n".join(rows)


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
