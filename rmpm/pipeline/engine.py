"""Dask as the engine: recipes become tasks on worker processes, the store stays
the only shared state.

The same code runs on a laptop and on a cluster. By default
:func:`get_client` starts an embedded ``LocalCluster`` of single-threaded worker
*processes* (one per available core; on CUDA one per GPU, worker i on GPU i), spawned with
:func:`rmpm.pipeline.determinism.worker_env` so that their CPU kernels are pinned before
torch initialises in them (the parent, which has imported torch already, could
not change its own). ``scheduler=ADDRESS`` (or the ``RMPM_SCHEDULER``
environment variable) uses an existing cluster instead; its workers must have
been started with the same environment, which every task checks
(:func:`rmpm.pipeline.determinism.enter`).

A task trains one recipe (on a GPU: one batched ensemble group) or evaluates a
chunk of trained models, and writes its entries to the shared store; it returns
only keys. Hence:

- a failing recipe fails its own task; the others finish, and the failures are
  reported together, each with its recipe key (:class:`EngineError`);
- a worker that dies (killed, out of memory) loses only its running task, which
  the scheduler reschedules on another worker (up to dask's
  ``distributed.scheduler.allowed-failures`` times);
- two clients, or two clusters, on one store store each recipe once: a task
  skips what the store already has, and of two copies finished at the same
  moment the first atomic rename wins (:func:`rmpm.pipeline.store.commit_dir`).

Task keys are derived from the recipe keys, so two clients of one scheduler
that ask for the same recipe share one task.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from . import determinism
from .._checks import check_range
from .recipe import Recipe

#: environment variable holding the address of a Dask scheduler to use
SCHEDULER_VAR = "RMPM_SCHEDULER"

_CLIENTS: dict[Any, Any] = {}  # (address,) or (workers, deterministic) -> Client


class EngineError(RuntimeError):
    """Some recipes failed; ``failures`` maps each recipe key to its error message."""

    def __init__(self, failures: dict[str, str], total: int):
        self.failures = failures
        lines = [f"  recipe {k[:12]}: {msg}" for k, msg in failures.items()]
        super().__init__(f"{len(failures)} of {total} recipe(s) failed (the others are stored):\n"
                         + "\n".join(lines))


def default_workers(device: str | None = "cpu") -> int:
    """One worker per GPU when ``device`` is CUDA (``"auto"`` with a GPU present), else
    the cores this process may use (its CPU affinity), at least 1."""
    if device is not None and str(device) != "cpu":
        import torch
        if torch.cuda.is_available() and (str(device) == "auto" or "cuda" in str(device)):
            return max(1, torch.cuda.device_count())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def scheduler_address(scheduler: str | None = None) -> str | None:
    """``scheduler`` if given, else ``$RMPM_SCHEDULER``, else None (embedded cluster)."""
    return scheduler or os.environ.get(SCHEDULER_VAR) or None


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` for the block (child processes inherit it), then restore."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_cluster(workers: int | None = None, deterministic: bool = True,
                  device: str | None = "auto"):
    """A ``LocalCluster`` of ``workers`` single-threaded processes (default: one per core).

    Every worker process is *started* with the mode's environment
    (:func:`rmpm.pipeline.determinism.worker_env`): it goes into the nannies'
    pre-spawn environment, which each nanny puts in place just before it spawns
    its worker (also when it restarts one that died). Passing it as the nanny's
    ``env`` alone would be too late for what is read at process start (glibc's
    allocator settings), and the nanny's own pre-spawn default would override the
    allocator settings of ``os.environ``.
    """
    import dask
    from dask.distributed import LocalCluster
    n = default_workers(device) if workers is None else workers
    check_range("workers", n, 1, integer=True)
    env = determinism.worker_env(deterministic)
    pre_spawn = determinism.nanny_pre_spawn_env(deterministic)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}), environ(env):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=env,
                            dashboard_address=":0", memory_limit=0,
                            silence_logs=logging.ERROR)


def get_client(workers: int | None = None, scheduler: str | None = None,
               deterministic: bool = True, device: str | None = "auto"):
    """A Dask client, shared by every call in this process that asks for the same.

    With a scheduler address (argument or ``$RMPM_SCHEDULER``) a client of that
    cluster; otherwise an embedded cluster started on first use and closed when
    the process exits.
    """
    from dask.distributed import Client
    _close_at_exit()
    address = scheduler_address(scheduler)
    key: tuple = (address,) if address else (
        default_workers(device) if workers is None else workers, deterministic)
    client = _CLIENTS.get(key)
    if client is not None and client.status == "running":
        return client
    if address:
        client = Client(address, set_as_default=False)
    else:
        cluster = start_cluster(key[0], deterministic)
        client = Client(cluster, set_as_default=False)
    _CLIENTS[key] = client
    return client


def _close_at_exit() -> None:
    # registered after distributed's own exit handlers (which close every cluster),
    # so that it runs before them: atexit runs last-registered first, and a client
    # whose cluster is already gone would wait to reconnect and print tracebacks
    global _REGISTERED
    if not _REGISTERED:
        atexit.register(close_clients)
        _REGISTERED = True


_REGISTERED = False


def close_clients() -> None:
    """Close every client (and embedded cluster) this process started."""
    # clients of a scheduler first: closing an embedded cluster first would leave
    # them waiting to reconnect to it
    order = sorted(_CLIENTS, key=lambda k: len(k) == 2)
    clients = [_CLIENTS.pop(k) for k in order]
    for client in clients:
        cluster = client.cluster
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


@contextlib.contextmanager
def serve(workers: int | None = None, deterministic: bool = True,
          device: str | None = "auto") -> Iterator[str]:
    """Run an embedded cluster for the block and export its address in
    ``$RMPM_SCHEDULER``, so that child processes (the book's notebook kernels)
    submit to it instead of each starting its own. An address already in
    ``$RMPM_SCHEDULER`` is used as it is."""
    address = scheduler_address()
    if address:
        yield address
        return
    client = get_client(workers, None, deterministic, device)
    address = client.scheduler.address
    with environ({SCHEDULER_VAR: address}):
        yield address


# ----------------------------------------------------------------------------- driver

def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def run(client, recipes: Sequence[Recipe], spec, store_root: str, device: str = "auto",
        engine: str = "single", max_group: int = 32, eval_chunk: int = 16,
        deterministic: bool = True, progress: bool = True) -> None:
    """Train and evaluate every recipe the store lacks, as tasks on ``client``.

    Training tasks go first (one per recipe, or per ensemble group); trained
    models are evaluated in chunks of at most ``eval_chunk`` as they finish, and a
    chunk is submitted early when workers would otherwise idle. Raises
    :class:`EngineError` after everything else has finished if any recipe failed.
    """
    from dask.distributed import as_completed

    from .ensemble import group_recipes
    from .store import Store
    from .tasks import eval_task, progress_bar, train_task
    check_range("eval_chunk", eval_chunk, 1, integer=True)
    store = Store(store_root)
    skey = spec.key()
    recipes = list(recipes)
    untrained = [r for r in recipes if not store.has_model(r)]
    need_eval = {r.key() for r in recipes if not store.has_eval(r, skey)}
    if not need_eval and not untrained:
        return
    groups = (group_recipes(untrained, max_group) if engine == "ensemble"
              else [[r] for r in untrained])
    mode = "det" if deterministic else "fast"
    n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})) or 1)

    ac = as_completed(loop=client.loop)
    what: dict[str, tuple[str, list[Recipe]]] = {}  # future key -> (phase, recipes)
    ready: dict[str, list[Recipe]] = {}  # data set -> trained, waiting for evaluation
    failures: dict[str, str] = {}
    pending_train = 0

    def submit(fn, phase: str, rs: list[Recipe], *args) -> None:
        # a key is a function of the work, so two clients asking for it share one task
        ident = hashlib.sha256(" ".join([phase, mode, skey if phase == "eval" else ""]
                                        + [r.key() for r in rs]).encode()).hexdigest()
        key = f"rmpm-{phase}-{rs[0].key()[:8]}-{ident[:16]}"
        fut = client.submit(fn, rs, *args, key=key, pure=False)
        what[fut.key] = (phase, rs)
        ac.add(fut)

    def flush(force: bool) -> None:
        busy = ac.count()  # submitted and not yet finished, queued ones included
        for ds in list(ready):
            rs = ready[ds]
            while rs and (force or len(rs) >= eval_chunk or busy < n_workers):
                # a partial chunk is split over the idle workers (all workers when
                # none is idle), so the last evaluations do not run on one worker
                free = n_workers - busy
                size = min(eval_chunk, -(-len(rs) // (free if free > 0 else n_workers)))
                chunk, rs = rs[:size], rs[size:]
                submit(eval_task, "eval", chunk, spec, store_root, device, deterministic)
                busy += 1
            ready[ds] = rs

    for g in groups:
        submit(train_task, "train", g, store_root, device, engine, deterministic)
        pending_train += 1
    untrained_keys = {r.key() for r in untrained}
    for r in recipes:  # trained before, not evaluated yet
        if r.key() in need_eval and r.key() not in untrained_keys:
            ready.setdefault(r.dataset, []).append(r)
    flush(force=not pending_train)

    bar = progress_bar(progress, len(untrained) + len(need_eval),
               f"{len(untrained)} to train, {len(need_eval)} to evaluate on {n_workers} worker(s)")
    try:
        for fut in ac:
            phase, rs = what.pop(fut.key)
            if fut.status == "error":
                err = _short(fut.exception())
                for r in rs:
                    failures[r.key()] = f"{phase} {r.dataset}/{r.arch}: {err}"
            else:
                fut.result()
            bar.update(len(rs) if phase == "train" else len([r for r in rs if r.key() in need_eval]))
            if phase == "train":
                pending_train -= 1
                if fut.status != "error":
                    for r in rs:
                        if r.key() in need_eval:
                            ready.setdefault(r.dataset, []).append(r)
            flush(force=not pending_train)
            fut.release()
    finally:
        bar.close()
    if failures:
        raise EngineError(failures, len(recipes))
