"""One population model trained and evaluated the old way and the new way, in one run.

Each variant runs in a fresh process started with its own environment (as a Dask
worker is: glibc reads its allocator settings when a process starts), pinned to
rmpm's deterministic mode (AVX2, one thread). It trains the default profile's
Fashion-MNIST base recipe and evaluates it under the default evaluation spec, and
reports its CPU time (user, system), minor page faults, and digests of the weights
and of the evaluation's arrays.

- ``old``        Dask's nanny default ``MALLOC_TRIM_THRESHOLD_=65536`` (what every
                 worker got before), NCHW layout;
- ``allocator``  rmpm's allocator settings (``determinism.ALLOC_ENV``), NCHW layout:
                 must give the old bits exactly;
- ``new``        rmpm's allocator settings, channels-last conv nets (what rmpm does
                 now): new bits, by design (the one change of stored numbers).

"NCHW layout" replays the previous code: the model's channels-last conversions are
switched off in that process only.

    python benchmarks/bench_worker_env.py               # default recipe, 3 epochs
    python benchmarks/bench_worker_env.py --epochs 1    # quicker
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import hashlib, json, resource, sys, time
import numpy as np
import torch
from rmpm.pipeline import determinism, models
from rmpm.pipeline.evaluate import evaluate
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.train import fit, prepare
from rmpm.analysis.populations import eval_spec
args = json.loads(sys.argv[1])
if args["layout"] == "nchw":  # the code before channels-last
    models._nhwc = lambda x: x
    models._channels_last = lambda m: m
determinism.enter(True)
recipe = Recipe.from_dict(args["recipe"])
data = prepare(recipe.dataset, torch.device("cpu"))
spec = eval_spec("default")

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_utime, r.ru_stime, r.ru_minflt, time.perf_counter()])

def digest(arrays):
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode()); h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()

a = usage()
res = fit(recipe, "cpu", data=data)
b = usage()
[(metrics, arrays)] = evaluate([res.model], recipe.dataset, spec, "cpu")
c = usage()
print("RESULT", json.dumps({
    "train": (b - a).tolist(), "eval": (c - b).tolist(),
    "weights": digest({k: v.numpy() for k, v in res.model.state_dict().items()}),
    "arrays": digest(arrays), "test_acc": res.metrics["test_acc"]}))
"""


def run_variant(name: str, env_extra: dict[str, str], layout: str, recipe: dict) -> dict:
    import os

    from rmpm.pipeline.determinism import PINNED_ENV, THREAD_ENV
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({**PINNED_ENV, **THREAD_ENV, "RMPM_MODE": "deterministic", **env_extra,
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(
        {"layout": layout, "recipe": recipe})], env=env, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not line:
        raise RuntimeError(f"variant {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main(argv: list[str] | None = None) -> dict:
    from rmpm.analysis.profiles import get_profile
    from rmpm.pipeline.determinism import ALLOC_ENV
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="default: the base recipe's")
    args = ap.parse_args(argv)
    base = get_profile("default").base["fashion_mnist"]
    if args.epochs:
        base = base.replace(epochs=args.epochs)
    variants = {"old": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, "nchw"),
                "allocator": (ALLOC_ENV, "nchw"),
                "new": (ALLOC_ENV, "channels_last")}
    res = {n: run_variant(n, e, lay, base.to_dict()) for n, (e, lay) in variants.items()}
    print(f"recipe: {base.dataset} {base.arch} width {base.width}, {base.epochs} epochs on "
          f"{base.train_size} images; evaluation: the default spec (1,000 test inputs x 31)")
    print(f"{'variant':10} {'phase':6} {'user s':>7} {'sys s':>7} {'CPU s':>7} {'faults':>10} "
          f"{'CPU / old':>9}  weights       arrays")
    for n, r in res.items():
        for phase in ("train", "eval"):
            u, s_, f, _ = r[phase]
            o = res["old"][phase]
            print(f"{n:10} {phase:6} {u:7.2f} {s_:7.2f} {u + s_:7.2f} {int(f):10d} "
                  f"{(u + s_) / (o[0] + o[1]):9.2f}  {r['weights'][:12]}  {r['arrays'][:12]}")
    tot = {n: sum(r[p][0] + r[p][1] for p in ("train", "eval")) for n, r in res.items()}
    same = res["allocator"]["weights"] == res["old"]["weights"] and \
        res["allocator"]["arrays"] == res["old"]["arrays"]
    print(f"CPU time, train + evaluate: old {tot['old']:.1f} s, allocator {tot['allocator']:.1f} s "
          f"({tot['allocator'] / tot['old']:.2f}x), new {tot['new']:.1f} s "
          f"({tot['new'] / tot['old']:.2f}x)")
    print(f"allocator settings change no bit: {'yes' if same else 'NO'} (weights and arrays "
          "identical to old)")
    print(f"channels-last changes the bits (by design): weights "
          f"{'identical' if res['new']['weights'] == res['old']['weights'] else 'differ'}; "
          f"test accuracy old {res['old']['test_acc']:.4f}, new {res['new']['test_acc']:.4f}")
    return res


if __name__ == "__main__":
    main()
