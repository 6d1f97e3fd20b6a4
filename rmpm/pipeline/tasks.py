"""The units of work: train one recipe, evaluate trained models, each writing only
to the store.

Both the in-process loop (:mod:`rmpm.pipeline.runs`) and the Dask engine
(:mod:`rmpm.pipeline.engine`) run these; they live apart from both so that the
engine, which the loop calls, never imports the loop back. A task checks the
process's compute mode first (:func:`rmpm.pipeline.determinism.enter`), reads and
writes only the store, and returns keys, never models or arrays.
"""
from __future__ import annotations

from typing import Any

from . import determinism
from .recipe import Recipe
from .store import Store, StoreWriteError
from .train import TrainData, TrainResult


def put_trained(store: Store, recipe: Recipe, res: TrainResult, data: TrainData) -> None:
    """Store a trained model with what is needed to rebuild it (input shape, classes)."""
    store.put_model(recipe, res.model.state_dict(), res.metrics, res.history,
                    data.in_shape, data.n_classes)


def train_into(store: Store, recipes: list[Recipe], engine: str, dev, data: TrainData) -> None:
    """Train ``recipes`` (one data set; one ensemble group with ``engine="ensemble"``)
    on ``data`` and store each model."""
    from .ensemble import fit_ensemble
    from .train import fit
    results = (fit_ensemble(recipes, dev, data=data) if engine == "ensemble"
               else [fit(r, dev, data=data) for r in recipes])
    for r, res in zip(recipes, results):
        put_trained(store, r, res, data)


def evaluate_into(store: Store, recipes: list[Recipe], spec, dev) -> None:
    """Evaluate the stored models of ``recipes`` (one data set) under ``spec`` together,
    so each corrupted test set is generated once, and store each evaluation."""
    from .evaluate import evaluate
    skey = spec.key()
    models = [store.model(r).load_model() for r in recipes]
    for r, (metrics, arrays) in zip(recipes, evaluate(models, recipes[0].dataset, spec, dev)):
        store.put_eval(r, spec.to_dict(), skey, metrics, arrays)


def eval_claim_name(store: Store, skey: str):
    """A claim on an evaluation is named as its store entry."""
    return lambda r: store.eval_dir(r, skey).name


_RESIDENT: dict[tuple[str, str], Any] = {}  # one data set kept per worker


def worker_device(device: str):
    """The torch device for this worker: on a multi-GPU machine, worker i uses GPU i mod n."""
    import torch

    from .train import resolve_device
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.device_count() > 1:
        try:
            from distributed import get_worker
            name = get_worker().name
            i = int(name) if str(name).isdigit() else abs(hash(name))
        except (ImportError, ValueError):
            i = 0
        dev = torch.device("cuda", i % torch.cuda.device_count())
    return dev


def resident_data(dataset: str, dev) -> TrainData:
    """The data set, normalised on ``dev``; one is kept between tasks of a worker."""
    from .train import prepare
    k = (dataset, str(dev))
    if k not in _RESIDENT:
        _RESIDENT.clear()
        _RESIDENT[k] = prepare(dataset, dev)
    return _RESIDENT[k]


def train_task(recipes: list[Recipe], store_root: str, device: str, engine: str,
               deterministic: bool, wait: bool = False) -> dict[str, list[str]]:
    """Train ``recipes`` (one, or one ensemble group) unless stored, each under its claim
    (:mod:`rmpm.pipeline.locks`). Returns the keys this task ``"trained"`` and those it
    ``"deferred"`` because another process is training them; with ``wait`` it waits
    for those instead, and trains any whose claim its holder gave up (it died).

    A store that cannot be written comes back as ``"store_error"`` rather than as the
    task's failure: the driver stops the run on it, and no worker logs a traceback
    for what is not a bug."""
    from .locks import work_through
    determinism.enter(deterministic)
    store = Store(store_root)

    def train(todo: list[Recipe]) -> None:
        dev = worker_device(device)
        train_into(store, todo, engine, dev, resident_data(todo[0].dataset, dev))

    try:
        trained, deferred = work_through(recipes, Recipe.key, store_root, "models",
                                         store.has_model, train, wait=wait)
    except StoreWriteError as e:
        return {"store_error": e}
    return {"trained": [r.key() for r in trained], "deferred": [r.key() for r in deferred]}


def eval_task(recipes: list[Recipe], spec, store_root: str, device: str,
              deterministic: bool, wait: bool = False) -> dict[str, list[str]]:
    """Evaluate stored models of one data set under ``spec`` unless stored, each under its
    claim; returns the keys ``"evaluated"`` here and ``"deferred"`` (as :func:`train_task`).

    Several models per task, so each corrupted test set is generated once per chunk
    (the numbers do not depend on the chunk: each model is evaluated on its own).
    """
    from .locks import work_through
    determinism.enter(deterministic)
    store = Store(store_root)
    skey = spec.key()
    try:
        done, deferred = work_through(recipes, eval_claim_name(store, skey), store_root,
                                      "evals", lambda r: store.has_eval(r, skey),
                                      lambda todo: evaluate_into(store, todo, spec,
                                                                 worker_device(device)),
                                      wait=wait)
    except StoreWriteError as e:
        return {"store_error": e}
    return {"evaluated": [r.key() for r in done], "deferred": [r.key() for r in deferred]}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(progress: bool, total: int, desc: str):
    """A tqdm bar counting models (a silent stand-in when off or empty). Plain tqdm, a
    line of text, also in a notebook's kernel: tqdm.auto warns there without ipywidgets,
    which rmpm does not need, and JupyterLab shows the text bar updating in place."""
    if not (progress and total):
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="model")
