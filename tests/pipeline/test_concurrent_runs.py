"""Concurrent runs on one store share the work (rmpm.pipeline.locks).

A recipe another process is training is deferred, then waited for, not trained
again; a claim whose holder is killed (a real SIGKILL) expires, and the waiting run
trains the recipe itself. Both engines: the in-process loop (workers=0) and the Dask
driver. Two real concurrent `rmpm train` runs on one empty store train each recipe
once between them (counted in their summary tables: "trained" vs "store").
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rmpm.analysis import populations as X
from rmpm.cli import main
from rmpm.pipeline.locks import Lock, lock_path
from rmpm.pipeline.runs import run_recipes
from rmpm.pipeline.store import Store

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains
ROOT = Path(__file__).resolve().parents[2]
RECIPES = X.profile_recipes("smoke_multi", datasets=["digits"], factors=["init_seed"])[:4]
SPEC = X.eval_spec("smoke_multi")

#: holds the claim on RECIPES[0]; on "train" trains and stores it, then lets go
_HOLDER = """
import sys
from rmpm.pipeline.locks import Lock, lock_path
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.store import Store

r = Recipe.from_dict({recipe!r})
store = Store({store!r})
claim = Lock(lock_path(store.root, "models", r.key()))
assert claim.try_acquire()
print("held", flush=True)
if sys.stdin.readline().strip() == "train":
    import torch
    from rmpm.pipeline.tasks import put_trained
    from rmpm.pipeline.train import fit, prepare
    data = prepare(r.dataset, torch.device("cpu"))
    put_trained(store, r, fit(r, torch.device("cpu"), data=data), data)
    claim.release()
    print("stored", flush=True)
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RMPM_SCHEDULER"}
    return {**env, "PYTHONPATH": str(ROOT)}


def _holder(store: Path) -> subprocess.Popen:
    code = _HOLDER.format(recipe=RECIPES[0].to_dict(), store=str(store))
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=_env())
    assert p.stdout.readline().strip() == "held"
    return p


def _committed(store: Path, kind: str = "models") -> set[str]:
    return {d.name for d in (store / kind).glob("*/*") if not d.name.startswith(".")}


def test_a_killed_holders_claim_expires(tmp_path):
    """filelock's claim is an flock: the OS drops it when its holder dies by SIGKILL."""
    store = tmp_path / "store"
    holder = _holder(store)
    claim = Lock(lock_path(store, "models", RECIPES[0].key()))
    assert not claim.try_acquire()  # held by the other process
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    assert holder.returncode == -signal.SIGKILL
    assert claim.try_acquire()
    claim.release()
    assert Store(store).verify() == []  # locks/ is no entry: nothing to list or check


def test_store_sweep_removes_old_lock_files_nobody_holds(tmp_path, capsys):
    """Lock files stay after a run (see rmpm.pipeline.locks); `rmpm store sweep` removes
    the old ones that are free, never one another process holds or a fresh one."""
    from rmpm.pipeline.locks import sweep
    store = tmp_path / "store"
    holder = _holder(store)  # another process holds RECIPES[0]'s claim
    held = lock_path(store, "models", RECIPES[0].key())
    free_old, free_new = (lock_path(store, "evals", r.key()) for r in RECIPES[1:3])
    for f in (free_old, free_new):
        c = Lock(f)
        assert c.try_acquire()
        c.release()
    old = time.time() - 7200
    for f in (held, free_old):
        os.utime(f, (old, old))
    assert main(["store", "sweep", "--store", str(store)]) == 0
    assert "removed 0 temporary folder(s) and 1 unused lock file(s)" in capsys.readouterr().out
    assert held.exists() and free_new.exists() and not free_old.exists()
    holder.kill()
    holder.wait(10)
    assert sweep(store) == 1 and not held.exists()  # its holder is gone: free and old
    assert sweep(store, older_than_s=0) == 1 and not free_new.exists()
    assert Store(store).verify() == []


def test_a_claim_held_past_the_timeout_is_computed_anyway(tmp_path):
    """A holder that is alive but never finishes (hung): the waiting task gives up after
    its timeout, warns, and computes the entry itself (the atomic commit keeps one copy)."""
    from rmpm.pipeline.locks import work_through
    store = tmp_path / "store"
    holder = _holder(store)  # holds RECIPES[0] until told otherwise
    done, computed = set(), []

    def compute(batch):
        computed.append([r.key() for r in batch])
        done.update(r.key() for r in batch)

    args = (RECIPES[:2], lambda r: r.key(), store, "models", lambda r: r.key() in done, compute)
    assert work_through(*args) == ([RECIPES[1]], [RECIPES[0]])  # the claimed one deferred
    with pytest.warns(RuntimeWarning, match="1 entry of models claimed by another process for "
                                            "over 1 s; computing it here too"):
        assert work_through(*args, wait=True, poll=0.1, timeout=1.0) == ([RECIPES[0]], [])
    assert computed == [[RECIPES[1].key()], [RECIPES[0].key()]]
    holder.kill()
    holder.wait(10)


def _run_in_thread(store: Path, workers: int):
    out: dict = {}

    def go():
        try:
            out["results"] = run_recipes(RECIPES, SPEC, store, "cpu", progress=False,
                                         workers=workers, deterministic=False)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out["error"] = e

    t = threading.Thread(target=go)
    t.start()
    return t, out


def _wait_until(cond, limit: float = 300) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < limit, "timed out waiting"
        time.sleep(0.2)


def _run_behind_a_holder(tmp_path: Path, workers: int):
    """Another process holds RECIPES[0]'s claim; a run in a thread has trained the
    other recipes first. Returns (store, holder, thread, its output)."""
    store = tmp_path / "store"
    holder = _holder(store)
    t, out = _run_in_thread(store, workers)
    _wait_until(lambda: {r.key() for r in RECIPES[1:]} <= _committed(store))
    return store, holder, t, out


@pytest.mark.cluster
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "dask"])
def test_a_claimed_recipe_is_waited_for_not_trained_again(tmp_path, workers):
    # the run trains the other recipes first, then waits for the claimed one
    store, holder, t, out = _run_behind_a_holder(tmp_path, workers)
    time.sleep(1.0)  # a run that ignored the claim would train RECIPES[0] meanwhile
    assert t.is_alive() and RECIPES[0].key() not in _committed(store)
    holder.stdin.write("train\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "stored"
    t.join(300)
    assert not t.is_alive() and "error" not in out, out.get("error")
    res = out["results"]
    assert [r.trained for r in res] == [False, True, True, True]  # the holder trained the first
    assert _committed(store) == {r.key() for r in RECIPES}
    assert len(_committed(store, "evals")) == len(RECIPES)
    assert holder.wait(30) == 0


@pytest.mark.cluster
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "dask"])
def test_a_crashed_holders_recipe_is_trained_by_the_waiting_run(tmp_path, workers):
    store, holder, t, out = _run_behind_a_holder(tmp_path, workers)
    assert t.is_alive() and RECIPES[0].key() not in _committed(store)
    os.kill(holder.pid, signal.SIGKILL)  # dies holding the claim
    holder.wait(10)
    t.join(300)
    assert not t.is_alive() and "error" not in out, out.get("error")
    assert [r.trained for r in out["results"]] == [True] * len(RECIPES)
    assert _committed(store) == {r.key() for r in RECIPES}
    assert main(["store", "verify", "--store", str(store)]) == 0


def _trained_rows(stdout: str) -> tuple[int, int]:
    """(rows "trained", rows "store") of an `rmpm train` summary table."""
    rows = [l for l in stdout.splitlines() if re.match(r"^[0-9a-f]{12} ", l)]
    return sum(l.endswith(" trained") for l in rows), sum(l.endswith(" store") for l in rows)


@pytest.mark.slow
def test_two_concurrent_train_runs_train_each_recipe_once(tmp_path):
    """Two real `rmpm train` processes, each with its own embedded cluster, started
    together on one empty store."""
    store = tmp_path / "store"
    args = [sys.executable, "-m", "rmpm", "train", "--profile", "smoke", "--shard", "0/4",
            "--device", "cpu", "--workers", "1", "--store", str(store)]
    env = {**_env(), "RMPM_CACHE": str(tmp_path / "cache")}
    runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in runs]
    for p, (o, e) in zip(runs, outs):
        assert p.returncode == 0, e[-3000:]
        assert "Traceback" not in e
    counts = [_trained_rows(o) for o, _ in outs]
    n = sum(counts[0])
    assert n == sum(counts[1]) == 8  # every recipe in each run's table
    assert counts[0][0] + counts[1][0] == n, counts  # each trained once, by one of them
    assert len(_committed(store)) == n and len(_committed(store, "evals")) == n
    assert not list(store.rglob(".tmp-*"))
    assert main(["store", "verify", "--store", str(store)]) == 0
