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
                            silence_logs=logging.ERROR, preload=[__name__])


def dask_setup(worker) -> None:
    """Run by every worker process of the embedded cluster as it starts (a Dask preload,
    so also by one restarted after a crash): the worker ignores SIGINT. A Ctrl-C at a
    terminal reaches the whole process group; the rmpm process then cancels the tasks
    and closes the cluster, which ends the workers, rather than each worker dying
    mid-task with a traceback of its own."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


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
        deterministic: bool = True, progress: bool = True) -> set[str]:
    """Train and evaluate every recipe the store lacks, as tasks on ``client``; returns
    the keys of the recipes this run trained (not those another process trained).

    Training tasks go first (one per recipe, or per ensemble group); trained
    models are evaluated in chunks of at most ``eval_chunk`` as they finish, and a
    chunk is submitted early when workers would otherwise idle. A recipe another
    process is computing (:mod:`rmpm.pipeline.locks`) comes back from its task
    deferred and is submitted again, to wait for it, behind the other work.

    Raises :class:`EngineError` after everything else has finished if any recipe
    failed. A store that cannot be written (:class:`~rmpm.pipeline.store.StoreWriteError`)
    stops the run at once: the tasks not finished are cancelled, and the error says
    what is stored. Ctrl-C (``KeyboardInterrupt``) cancels them too.
    """
    from dask.distributed import as_completed

    from .ensemble import group_recipes
    from .store import Store, StoreWriteError
    from .tasks import eval_task, progress_bar, train_task
    check_range("eval_chunk", eval_chunk, 1, integer=True)
    store = Store(store_root)
    skey = spec.key()
    recipes = list(recipes)
    untrained = [r for r in recipes if not store.has_model(r)]
    need_eval = {r.key() for r in recipes if not store.has_eval(r, skey)}
    if not need_eval and not untrained:
        return set()
    store.check_writable()  # a read-only or full store stops now, before any task
    groups = (group_recipes(untrained, max_group) if engine == "ensemble"
              else [[r] for r in untrained])
    mode = "det" if deterministic else "fast"
    n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})) or 1)

    ac = as_completed(loop=client.loop)
    what: dict[str, tuple[str, list[Recipe]]] = {}  # future key -> (phase, recipes)
    outstanding: dict[str, Any] = {}  # future key -> future, until it is done
    ready: dict[str, list[Recipe]] = {}  # data set -> trained, waiting for evaluation
    failures: dict[str, str] = {}
    trained: set[str] = set()
    pending_train = 0

    def submit(fn, phase: str, rs: list[Recipe], *args, wait: bool = False) -> None:
        # a key is a function of the work, so two clients asking for it share one task
        ident = hashlib.sha256(" ".join([phase, mode, skey if phase == "eval" else "",
                                         "wait" if wait else ""]
                                        + [r.key() for r in rs]).encode()).hexdigest()
        key = f"rmpm-{phase}-{rs[0].key()[:8]}-{ident[:16]}"
        fut = client.submit(fn, rs, *args, wait=wait, key=key, pure=False)
        what[fut.key] = (phase, rs)
        outstanding[fut.key] = fut
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
            outstanding.pop(fut.key, None)
            finished = rs
            if fut.status == "error":
                exc = fut.exception()
                if isinstance(exc, StoreWriteError):  # no retry fixes it: stop now
                    raise exc.stopped(_stopped_note(store, recipes, skey, outstanding)) from None
                err = _short(exc)
                for r in rs:
                    failures[r.key()] = f"{phase} {r.dataset}/{r.arch}: {err}"
            else:
                out = fut.result()
                if "store_error" in out:
                    raise out["store_error"].stopped(
                        _stopped_note(store, recipes, skey, outstanding)) from None
                trained.update(out.get("trained", ()))
                later = set(out["deferred"])
                if later:  # another process computes them: come back after the rest
                    again = [r for r in rs if r.key() in later]
                    finished = [r for r in rs if r.key() not in later]
                    if phase == "train":
                        submit(train_task, "train", again, store_root, device, engine,
                               deterministic, wait=True)
                        pending_train += 1
                    else:
                        submit(eval_task, "eval", again, spec, store_root, device,
                               deterministic, wait=True)
            bar.update(len(finished) if phase == "train"
                       else len([r for r in finished if r.key() in need_eval]))
            if phase == "train":
                pending_train -= 1
                if fut.status != "error":
                    for r in finished:
                        if r.key() in need_eval:
                            ready.setdefault(r.dataset, []).append(r)
            flush(force=not pending_train)
            fut.release()
    except BaseException:  # a store error, Ctrl-C, SIGTERM: leave no work queued behind
        _cancel(client, outstanding)
        raise
    finally:
        bar.close()
    if failures:
        raise EngineError(failures, len(recipes))
    return trained


def _stopped_note(store, recipes: Sequence[Recipe], skey: str, outstanding: dict) -> str:
    return (f"The run stopped there: {store.progress(recipes, skey)}; "
            f"{len(outstanding)} task(s) not finished were cancelled.")


def _cancel(client, outstanding: dict) -> None:
    """Cancel every task not finished (queued ones never start; a running one's result
    is dropped), for this client only: another client sharing a task keeps it."""
    with contextlib.suppress(Exception):
        if outstanding:
            client.cancel(list(outstanding.values()))
