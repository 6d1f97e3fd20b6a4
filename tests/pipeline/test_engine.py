"""The Dask engine and deterministic mode.

The matrix: the same recipes trained in fresh processes (each starting its own
LocalCluster) with 1 and 2 workers, under different ``ATEN_CPU_CAPABILITY``
and thread settings in the *parent* environment and in another recipe order,
must store identical bits: every model's weights and every evaluation's arrays.
With the opt-out (fast mode) they may differ, and on this machine they do.

The cluster tests run on one real 2-worker LocalCluster shared by the module:
a profile trains, a bad recipe fails alone, a killed worker loses no work, two
clients on one store store each recipe once.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rmpm.pipeline import engine as E
from rmpm.book import manifest as M
from rmpm.pipeline.evaluate import EvalSpec
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.runs import run_recipes
from rmpm.pipeline.store import Store

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CNN = Recipe(dataset="digits", arch="cnn", width=4, epochs=2, batch_size=64, lr=5e-3)
MLP = Recipe(dataset="digits", arch="mlp", width=16, epochs=2, batch_size=64, lr=2e-3)
RECIPES = [CNN, CNN.replace(init_seed=1), CNN.replace(order_seed=1, augment="crop"),
           MLP, MLP.replace(dropout=0.25, init_seed=2)]
SPEC = EvalSpec(n_test=120, n_probe=60, corruptions=("gaussian_noise",), severities=(1, 5))

_SCRIPT = """
import json, sys
from rmpm.book import manifest as M
from rmpm.pipeline.evaluate import EvalSpec
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.runs import run_recipes
from rmpm.pipeline.store import Store
if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    recipes = [Recipe.from_dict(d) for d in args["recipes"]]
    spec = EvalSpec(**args["spec"])
    run_recipes(recipes, spec, args["store"], "cpu", progress=False,
                workers=args["workers"], deterministic=args["deterministic"])
    m = M.compute(recipes, spec.key(), Store(args["store"]))
    meta = [Store(args["store"]).model(r).meta["compute"] for r in recipes]
    print("RESULT", json.dumps({"models": {k: v["digest"] for k, v in m["models"].items()},
                               "evals": {k: v["digest"] for k, v in m["evals"].items()},
                               "compute": meta}))
"""


def _spec_dict():
    d = SPEC.to_dict()
    d["corruptions"], d["severities"] = tuple(d["corruptions"]), tuple(d["severities"])
    return d


def _run(tmp: Path, name: str, recipes, workers: int, env: dict, deterministic: bool = True):
    """Train ``recipes`` in a fresh Python whose environment is ``env`` over ours."""
    script = tmp / "run.py"
    script.write_text(_SCRIPT)
    args = {"recipes": [r.to_dict() for r in recipes], "spec": _spec_dict(),
            "store": str(tmp / name), "workers": workers, "deterministic": deterministic}
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop(E.SCHEDULER_VAR, None)
    p = subprocess.run([sys.executable, str(script), json.dumps(args)], env=full, cwd=tmp,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_same_bits_whatever_the_parent_environment_workers_and_order(tmp_path):
    a = _run(tmp_path, "a", RECIPES, 1, {})
    b = _run(tmp_path, "b", RECIPES[::-1], 2,
             {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"})
    c = _run(tmp_path, "c", RECIPES[2:] + RECIPES[:2], 2,
             {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"})
    assert len(a["models"]) == len(RECIPES) and len(a["evals"]) == len(RECIPES)
    assert a["models"] == b["models"] == c["models"]
    assert a["evals"] == b["evals"] == c["evals"]
    for run in (a, b, c):
        assert all(m == {"mode": "deterministic", "cpu_capability": "AVX2", "threads": 1,
                         "cuda_deterministic": False} for m in run["compute"])
    # the opt-out: workers inherit the parent's kernels, and the bits follow them
    # (ATen's scalar DEFAULT kernels sum in another order than AVX2's)
    f = _run(tmp_path, "f", RECIPES[:2], 2, {"ATEN_CPU_CAPABILITY": "default"},
             deterministic=False)
    assert all(m["mode"] == "fast" and m["cpu_capability"] == "DEFAULT" for m in f["compute"])
    assert any(f["models"][k] != a["models"][k] for k in f["models"])


# ----------------------------------------------------------------------------- one cluster

@pytest.fixture(scope="module")
def client():
    c = E.get_client(workers=2, deterministic=True)
    yield c


def _digests(store: Store, recipes) -> dict[str, str]:
    m = M.compute(recipes, SPEC.key(), store)
    return {**{k: v["digest"] for k, v in m["models"].items()},
            **{k: v["digest"] for k, v in m["evals"].items()}}


def test_a_profile_trains_on_the_cluster(client, tmp_path):
    from rmpm.analysis import populations as X
    store = Store(tmp_path)
    out = X.train_profile("smoke_multi", datasets=["digits"], factors=["init_seed", "lr"],
                          store=store, progress=False, workers=2)
    want = X.profile_recipes("smoke_multi", ["digits"], ["init_seed", "lr"])
    assert [o.recipe for o in out] == want
    assert all(o.trained for o in out)
    spec = X.eval_spec("smoke_multi").key()
    for r in want:
        assert store.model(r).meta["compute"]["mode"] == "deterministic"
        assert store.has_eval(r, spec)
    again = X.train_profile("smoke_multi", datasets=["digits"], factors=["init_seed", "lr"],
                            store=store, progress=False, workers=2)
    assert not any(o.trained for o in again)


def test_one_bad_recipe_fails_alone(client, tmp_path):
    store = Store(tmp_path)
    bad = CNN.replace(train_size=5000)  # digits has 1437 training images
    good = [CNN.replace(init_seed=5), MLP.replace(init_seed=5)]
    with pytest.raises(E.EngineError) as info:
        run_recipes([good[0], bad, good[1]], SPEC, store, "cpu", progress=False, workers=2)
    msg = str(info.value)
    assert "1 of 3 recipe(s) failed" in msg
    assert bad.key()[:12] in msg and "train_size=5000 exceeds" in msg
    assert list(info.value.failures) == [bad.key()]
    for r in good:
        assert store.has_model(r) and store.has_eval(r, SPEC.key())
    assert not store.has_model(bad)


def test_a_killed_worker_loses_no_work(client, tmp_path):
    store = Store(tmp_path)
    recipes = [CNN.replace(epochs=12, width=8, init_seed=20 + i) for i in range(4)]
    errors = []

    def go():
        try:
            run_recipes(recipes, SPEC, store, "cpu", progress=False, workers=2)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    pids = client.run(os.getpid)  # worker address -> process id
    t = threading.Thread(target=go)
    t.start()
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline:
        busy = {w: ks for w, ks in client.processing().items()
                if any(str(k).startswith("rmpm-train") for k in ks)}
        if busy:
            killed = next(iter(busy))
            os.kill(pids[killed], signal.SIGKILL)  # as the OOM killer would
        time.sleep(0.05)
    t.join(600)
    assert killed is not None, "no training task was seen running"
    assert not errors, errors
    assert all(store.has_model(r) and store.has_eval(r, SPEC.key()) for r in recipes)
    # the restarted worker is pinned like the others: the bits equal a clean run
    assert all(store.model(r).meta["compute"]["mode"] == "deterministic" for r in recipes)
    clean = Store(tmp_path / "clean")
    run_recipes(recipes[:1], SPEC, clean, "cpu", progress=False, workers=2)
    assert _digests(clean, recipes[:1]) == _digests(store, recipes[:1])


def _start_environ() -> dict[str, str]:
    """The environment this process was *started* with (what glibc read), not os.environ."""
    raw = Path(f"/proc/{os.getpid()}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_workers_start_with_the_allocator_settings(client):
    from rmpm.pipeline.determinism import ALLOC_ENV, PINNED_ENV
    want = {**ALLOC_ENV, **PINNED_ENV, "OMP_NUM_THREADS": "1"}
    envs = client.run(_start_environ)
    assert len(envs) == 2
    for env in envs.values():
        assert {k: env.get(k) for k in want} == want
    # also a worker its nanny restarts (after a crash) starts with them
    client.restart_workers(list(envs)[:1], timeout=600)  # slow on a loaded machine
    again = client.run(_start_environ)
    assert all({k: e.get(k) for k in want} == want for e in again.values())


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_dask_worker_started_with_rmpm_env_starts_with_it(tmp_path):
    """The README's external-cluster recipe: `rmpm env` exported before `dask worker`."""
    from rmpm.pipeline.determinism import ALLOC_ENV, PINNED_ENV, worker_env
    from dask.distributed import Client
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **worker_env(True)}
    sched = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1",
                              "--port", "0", "--dashboard-address", ":0",
                              "--scheduler-file", str(tmp_path / "s.json")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.time() + 60
        while not (tmp_path / "s.json").is_file() and time.time() < deadline:
            time.sleep(0.2)
        worker = subprocess.Popen([str(bin_dir / "dask"), "worker", "--nthreads", "1",
                                   "--scheduler-file", str(tmp_path / "s.json")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with Client(scheduler_file=str(tmp_path / "s.json"), set_as_default=False) as c:
            c.wait_for_workers(1, timeout=60)
            def start_environ():  # pickled by value: the worker cannot import tests/
                raw = Path(f"/proc/{os.getpid()}/environ").read_bytes().split(b"\0")
                return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)
            [got] = c.run(start_environ).values()
        want = {**ALLOC_ENV, **PINNED_ENV}
        assert {k: got.get(k) for k in want} == want
    finally:
        for p in (worker, sched):
            if p is not None:
                p.terminate()
                p.wait(30)


def test_two_clients_on_one_store_store_each_recipe_once(client, tmp_path):
    store = Store(tmp_path / "shared")
    recipes = [CNN.replace(init_seed=40 + i) for i in range(4)]
    address = client.scheduler.address
    errors = []

    def go(kw):
        try:
            run_recipes(recipes, SPEC, store, "cpu", progress=False, **kw)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    # one through the shared embedded cluster, one as a second client of its scheduler
    ts = [threading.Thread(target=go, args=(kw,)) for kw in ({"workers": 2},
                                                              {"scheduler": address})]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    assert not errors, errors
    models = [p for p in (store.root / "models").glob("*/*")]
    assert sorted(p.name for p in models) == sorted(r.key() for r in recipes)
    assert not any(p.name.startswith(".") for p in store.root.rglob("*"))  # no temp folders
    evals = list((store.root / "evals").glob("*/*"))
    assert len(evals) == len(recipes)


def test_workers_zero_refuses_an_unpinned_process(tmp_path):
    from rmpm.pipeline import determinism
    if determinism.is_pinned():
        pytest.skip("this test process was started pinned")
    with pytest.raises(ValueError, match="workers=0 runs in this process"):
        run_recipes([CNN], SPEC, Store(tmp_path), "cpu", workers=0)
    with pytest.raises(ValueError, match="workers=-1 must be >= 0"):
        run_recipes([CNN], SPEC, Store(tmp_path), "cpu", workers=-1)
    assert not (tmp_path / "models").exists()


def test_an_unpinned_worker_refuses_deterministic_work(monkeypatch):
    """A worker of an external cluster started without the environment refuses."""
    from rmpm.pipeline import determinism
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    if determinism.cpu_capability() == determinism.PINNED_CAPABILITY:
        monkeypatch.setattr(determinism, "cpu_capability", lambda: "AVX512")
    import torch
    old = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="not in deterministic mode.*python -m rmpm env"):
            determinism.enter(True)
        determinism.enter(False)  # fast mode runs anywhere
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_env_command_and_worker_count_checks(capsys, tmp_path):
    from rmpm.cli import main
    from rmpm.pipeline.determinism import PINNED_ENV
    assert main(["env"]) == 0
    out = capsys.readouterr().out.splitlines()
    for k, v in PINNED_ENV.items():
        assert f"export {k}={v}" in out
    assert "export OMP_NUM_THREADS=1" in out
    assert "export MALLOC_TRIM_THRESHOLD_=1073741824" in out
    assert "NPY_DISABLE_CPU_FEATURES" not in "\n".join(out)  # a worker's: numpy is free
    assert main(["env", "--fast"]) == 0
    assert "ATEN_CPU_CAPABILITY" not in capsys.readouterr().out
    from rmpm.pipeline.determinism import kernel_env
    assert main(["env", "--kernel"]) == 0
    kernel = capsys.readouterr().out.splitlines()
    assert kernel == [f"export {k}={v}" for k, v in kernel_env(True).items()]
    assert "export NPY_DISABLE_CPU_FEATURES=X86_V4,AVX512_ICL,AVX512_SPR" in kernel
    assert main(["env", "--numerics"]) == 0
    import json
    described = json.loads(capsys.readouterr().out)
    assert {"pinned", "problems", "numpy_simd", "blas", "env"} <= set(described)
    assert main(["train", "--profile", "smoke", "--workers", "0", "--store", str(tmp_path)]) == 2
    assert "--workers=0 must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers=0 must be >= 1"):
        E.start_cluster(0)
