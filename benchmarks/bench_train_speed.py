"""Model-epochs per core-second: the code before the fused SmallCNN path and now, in one run.

Each measurement trains the default profile's Fashion-MNIST base recipe (SmallCNN
width 16, 10,000 images, 3 epochs, batch 128; ``--dataset`` for another) in a fresh process started with
rmpm's deterministic worker environment (AVX2 pinned, one thread, rmpm's
allocator settings), then evaluates it under the default evaluation spec; the
``old`` and ``new`` processes alternate, ``--repeats`` times each. "Old" is the
package as of ``--baseline`` (a commit; its ``rmpm/`` is extracted with ``git
archive`` into a temporary folder), "new" is this checkout. Rates use CPU time
(user + system of the process over the phase), not wall time:

- ``train``: :func:`rmpm.pipeline.train.fit`, which includes its own evaluations
  (1,000 test images per epoch for the learning curve, then the whole training
  subset and test split);
- ``eval``: :func:`rmpm.pipeline.evaluate.evaluate` (1,000 test images x 31 clean
  and corrupted sets, probe activations);
- model-epochs per core-second = epochs / CPU seconds of ``train`` (and of
  ``train + eval``, the cost of one population model).

Then, with the new code only, the bits: the base recipe and a second seed are
trained and evaluated through ``run_recipes`` (the Dask engine) in three fresh
parent processes that differ in their own CPU settings and worker counts: 1
worker; 2 workers with ``ATEN_CPU_CAPABILITY=avx512``, ``DNNL_MAX_CPU_ISA=AVX512_CORE``
and 2 threads in the parent; 2 workers with ``ATEN_CPU_CAPABILITY=default``,
``DNNL_MAX_CPU_ISA=SSE41``, ``MKL_CBWR=COMPATIBLE`` (as tests/test_engine.py
emulates other machines). The digests of every stored model and evaluation must
agree. A control in fast mode (workers inherit ``ATEN_CPU_CAPABILITY=default``)
shows that the comparison does see a change of kernels.

    python benchmarks/bench_train_speed.py                 # timings + bits (about 6 min on 2 idle cores)
    python benchmarks/bench_train_speed.py --repeats 1 --no-bits --dataset digits
    python benchmarks/bench_train_speed.py --profile       # op-by-op profile of a step and an evaluation,
                                                           # and a step's lower bound
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the last commit before the fused SmallCNN path (what "today's code" was)
BASELINE = "a472bfa"

_TIMED = r"""
import hashlib, json, resource, sys, time
import numpy as np
import torch
from rmpm.pipeline import determinism
from rmpm.pipeline.evaluate import evaluate
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.train import fit, prepare
from rmpm.analysis.populations import eval_spec
args = json.loads(sys.argv[1])
determinism.enter(True)
recipe = Recipe.from_dict(args["recipe"])
data = prepare(recipe.dataset, torch.device("cpu"))
spec = eval_spec("default")

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def digest(arrays):
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode()); h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()

out = []
for _ in range(args["models"]):  # the same recipe again: a worker's later models
    a = cpu()
    res = fit(recipe, "cpu", data=data)
    b = cpu()
    [(metrics, arrays)] = evaluate([res.model], recipe.dataset, spec, "cpu")
    c = cpu()
    out.append({
        "train": b - a, "eval": c - b,
        "weights": digest({k: v.numpy() for k, v in res.model.state_dict().items()}),
        "arrays": digest(arrays), "test_acc": res.metrics["test_acc"],
        "train_acc": res.metrics["train_acc"], "iid_acc": metrics["iid_acc"],
        "ood_acc": metrics["ood_acc"]})
print("RESULT", json.dumps(out))
"""

_PROFILED = r"""
import json, sys
import torch
import torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity
from rmpm.pipeline import determinism
from rmpm.pipeline.models import build_model
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.train import EVAL_BATCH, make_optimizer, prepare
args = json.loads(sys.argv[1])
determinism.enter(True)
r = Recipe.from_dict(args["recipe"])
data = prepare(r.dataset, torch.device("cpu"))
model = build_model(r.arch, data.in_shape, data.n_classes, r.width, r.dropout, seed=r.init_seed)
opt = make_optimizer(r, model.parameters())
x, y = data.x_train[:r.batch_size], data.y_train[:r.batch_size]
xe = data.x_test[:EVAL_BATCH]

def step():  # what fit does per batch
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    loss.item(), (out.argmax(1) == y).sum().item()

@torch.no_grad()
def evaluation():  # one batch of evaluate_split
    out = model(xe)
    F.cross_entropy(out, y[:0].new_zeros(len(xe)), reduction="sum").item()

def table(fn, train, reps):
    model.train(train)
    for _ in range(5):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(reps):
            fn()
    events = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / reps / 1000
    return {"total_ms": total, "rows": [(e.key, e.count / reps, e.self_cpu_time_total / reps / 1000)
                                         for e in events[:args["rows"]]]}

def bound():  # the step's convolutions, linear layers, loss and update; slices, not BN/ReLU/pool
    h = F.conv2d(x.contiguous(memory_format=torch.channels_last), model.conv1[0].weight,
                 None, 1, 1)[:, :, ::2, ::2]
    h = F.conv2d(h, model.conv2[0].weight, None, 1, 1)[:, :, ::2, ::2]
    out = model.logits(model.fc(model.flatten(h)))
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

def ms_per_call(fns, reps=10, rounds=7):
    import time
    times = {k: [] for k in fns}
    for _ in range(rounds):  # interleaved; the least-disturbed round counts
        for k, fn in fns.items():
            t = time.process_time()
            for _ in range(reps):
                fn()
            times[k].append((time.process_time() - t) / reps * 1000)
    return {k: min(v) for k, v in times.items()}

model.train()
plain = ms_per_call({"step": step, "bound": bound})
print("RESULT", json.dumps({"step": table(step, True, 20), "eval": table(evaluation, False, 20),
                            "plain": plain}))
"""


def _baseline_tree(rev: str, into: Path) -> Path:
    """``rmpm/`` as of ``rev``, extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "rmpm"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _child(code: str, tree: Path, args: dict, env_extra: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh Python with ``tree`` first on its path, started with
    the deterministic worker environment (what an rmpm worker gets)."""
    from rmpm.paths import data_root
    from rmpm.pipeline.determinism import worker_env
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({**worker_env(True), "RMPM_DATA": str(data_root()),
                "PYTHONPATH": str(tree), **(env_extra or {})})
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=env, cwd=tree,
                         capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


_BITS = r"""
import json, sys
from rmpm.book import manifest as M
from rmpm.analysis.populations import eval_spec
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.runs import run_recipes
from rmpm.pipeline.store import Store
if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    recipes = [Recipe.from_dict(d) for d in args["recipes"]]
    spec = eval_spec("default")
    run_recipes(recipes, spec, args["store"], "cpu", progress=False, workers=args["workers"],
                deterministic=args["deterministic"])
    m = M.compute(recipes, spec.key(), Store(args["store"]))
    print("RESULT", json.dumps({"models": {k: v["digest"] for k, v in m["models"].items()},
                               "evals": {k: v["digest"] for k, v in m["evals"].items()}}))
"""

#: (name, workers, environment of the parent process, deterministic)
_BIT_RUNS = [
    ("1 worker, parent env as is", 1, {}, True),
    ("2 workers, parent AVX-512 + 2 threads", 2,
     {"ATEN_CPU_CAPABILITY": "avx512", "DNNL_MAX_CPU_ISA": "AVX512_CORE",
      "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, True),
    ("2 workers, parent scalar/SSE4.1", 2,
     {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
     True),
    ("control: fast mode, scalar ATen", 2, {"ATEN_CPU_CAPABILITY": "default"}, False),
]


def bits(recipes, tmp: Path) -> list[tuple[str, dict]]:
    """Train and evaluate ``recipes`` through run_recipes once per entry of _BIT_RUNS,
    each in a fresh parent process with its own store."""
    out = []
    # a folder of its own: the script's folder comes first on its path, and ``tmp``
    # holds the baseline's rmpm/ (the bits are the new code's)
    here = tmp / "bits"
    here.mkdir(exist_ok=True)
    for i, (name, workers, env, det) in enumerate(_BIT_RUNS):
        script = here / "bits.py"
        script.write_text(_BITS)
        args = {"recipes": [r.to_dict() for r in recipes], "store": str(tmp / f"store{i}"),
                "workers": workers, "deterministic": det}
        full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        full.pop("RMPM_SCHEDULER", None)
        p = subprocess.run([sys.executable, str(script), json.dumps(args)], env=full, cwd=here,
                           capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            raise RuntimeError(f"bits run {name!r} failed:\n{p.stderr[-3000:]}")
        out.append((name, json.loads(line[-1][len("RESULT "):])))
        print(f"  trained: {name}", flush=True)
    return out


def _stats(v: list[float]) -> str:
    return f"{statistics.median(v):6.2f} (min {min(v):5.2f}, max {max(v):5.2f})"


def main(argv: list[str] | None = None) -> dict:
    from rmpm.analysis.profiles import get_profile
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=BASELINE, help="commit of the old code")
    ap.add_argument("--repeats", type=int, default=3, help="processes per variant")
    ap.add_argument("--dataset", default="fashion_mnist",
                    help="whose default base recipe: fashion_mnist, mnist5k or digits")
    ap.add_argument("--epochs", type=int, default=None, help="default: the base recipe's")
    ap.add_argument("--bits", action=argparse.BooleanOptionalAction, default=True,
                    help="also check the bits across parent environments and worker counts")
    ap.add_argument("--profile", action="store_true",
                    help="only the op-by-op profile of one step and one evaluation batch")
    ap.add_argument("--rows", type=int, default=12, help="profile rows per table")
    args = ap.parse_args(argv)
    base = get_profile("default").base[args.dataset]
    if args.epochs:
        base = base.replace(epochs=args.epochs)
    with tempfile.TemporaryDirectory(prefix="rmpm-bench-") as tmp:
        trees = {"old": _baseline_tree(args.baseline, Path(tmp)), "new": ROOT}
        if args.profile:
            return profile_both(trees, base, args.rows)
        return compare(trees, base, args, Path(tmp))


def profile_both(trees: dict[str, Path], recipe, rows: int) -> dict:
    res = {n: _child(_PROFILED, t, {"recipe": recipe.to_dict(), "rows": rows})
           for n, t in trees.items()}
    for what, label in (("step", f"one training step (batch {recipe.batch_size})"),
                        ("eval", "one evaluation batch (EVAL_BATCH inputs)")):
        for n in trees:
            t = res[n][what]
            print(f"\n{n}: {label}, self CPU per call of the whole, total {t['total_ms']:.2f} ms "
                  "(profiler overhead included)")
            for key, count, ms in t["rows"]:
                print(f"  {ms:7.3f} ms  {count:5.1f}x  {key}")
    print("\nwithout the profiler, ms per training step (least of 7 interleaved rounds of 10):")
    for n in trees:
        p = res[n]["plain"]
        print(f"  {n}: step {p['step']:.2f}; lower bound with this code's optimizer (convolutions, "
              f"linear layers, loss, update; no BatchNorm, ReLU or pooling) {p['bound']:.2f}")
    return res


def compare(trees: dict[str, Path], base, args, tmp: Path) -> dict:
    runs: dict[str, list[list[dict]]] = {n: [] for n in trees}
    for i in range(args.repeats):
        for n, tree in trees.items():   # alternate, so that changes of load hit both
            runs[n].append(_child(_TIMED, tree, {"recipe": base.to_dict(), "models": 2}))
            print(f"  measured {n} {i + 1}/{args.repeats}", flush=True)
    e = base.epochs
    print(f"\nrecipe: {base.dataset} {base.arch} width {base.width}, {e} epochs on "
          f"{base.train_size} images, batch {base.batch_size}; evaluation: the default spec; "
          f"old = {args.baseline}, new = this checkout; {args.repeats} process(es) each, "
          "each training and evaluating the recipe twice")
    print("CPU seconds per model, median (min, max) over the processes; 'first' is a fresh "
          "process's first model (one-off kernel generation included), 'later' its second, "
          "what a worker pays for every model after its first:")
    rate = {}
    for n, procs in runs.items():
        for label, k in (("first", 0), ("later", -1)):
            tr = [p[k]["train"] for p in procs]
            ev = [p[k]["eval"] for p in procs]
            tot = [a + b for a, b in zip(tr, ev)]
            print(f"  {n:4} {label:5} train {_stats(tr)}   eval {_stats(ev)}   "
                  f"train+eval {_stats(tot)}")
        tr = [p[-1]["train"] for p in procs]
        tot = [p[-1]["train"] + p[-1]["eval"] for p in procs]
        rate[n] = (statistics.median([e / t for t in tr]), statistics.median([e / t for t in tot]))
    for n in runs:
        print(f"  {n:4} model-epochs per core-second (later models): training {rate[n][0]:.3f}, "
              f"training + evaluation {rate[n][1]:.3f}")
    print(f"ratio new / old: training {rate['new'][0] / rate['old'][0]:.2f}x, training + "
          f"evaluation {rate['new'][1] / rate['old'][1]:.2f}x")
    for n, procs in runs.items():
        same = len({(m["weights"], m["arrays"]) for p in procs for m in p}) == 1
        r = procs[0][0]
        print(f"  {n:4} every model bit-identical: {'yes' if same else 'NO'}; test acc "
              f"{r['test_acc']:.4f}, train acc {r['train_acc']:.4f}, iid acc (1k) "
              f"{r['iid_acc']:.4f}, ood acc {r['ood_acc']:.4f}; weights {r['weights'][:12]}")
    out = {"runs": runs, "rate": rate}
    if args.bits:
        print("\nbits of the new code: base recipe + init_seed=1, trained and evaluated by "
              "run_recipes in fresh parent processes", flush=True)
        results = bits([base, base.replace(init_seed=1)], tmp)
        ref = results[0][1]
        for name, r in results:
            same = r["models"] == ref["models"] and r["evals"] == ref["evals"]
            print(f"  {name:40} models+evaluations identical to the first: "
                  f"{'yes' if same else 'NO'}")
        out["bits"] = results
    return out


if __name__ == "__main__":
    main()
