"""Wall-clock time of the ``default`` profile's factor populations on the Dask engine
with 1 worker vs N workers (default 2), in one run, and the ratio.

Each configuration trains and evaluates the same recipes from its own empty store,
in deterministic mode, on a fresh embedded LocalCluster (cluster start-up is
timed separately and excluded). The stores' digests are compared at the end:
the worker count must not change a single bit.

    python benchmarks/bench_parallel.py                          # every factor population
    python benchmarks/bench_parallel.py --factors init_seed lr   # a subset (shared machine)
    python benchmarks/bench_parallel.py --factors init_seed --epochs 1 --train-size 2000

``--epochs`` and ``--train-size`` shrink every recipe for a quick run; the output
says what was run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from rmpm.pipeline import engine as E
from rmpm.analysis import populations as X
from rmpm.book import manifest as M
from rmpm.pipeline.recipe import dedupe
from rmpm.pipeline.runs import run_recipes


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--factors", nargs="*", default=None, help="default: all of the profile's")
    ap.add_argument("--workers", type=int, default=2, help="the parallel configuration")
    ap.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    ap.add_argument("--train-size", type=int, default=None, help="override train_size")
    ap.add_argument("--fast", action="store_true", help="fast mode instead of deterministic")
    args = ap.parse_args(argv)

    recipes = []
    for pops in X.factor_populations(args.profile, None, args.factors).values():
        for pop in pops:
            recipes += pop.recipes
    changes = {k: v for k, v in (("epochs", args.epochs), ("train_size", args.train_size))
               if v is not None}
    recipes = dedupe([r.replace(**changes) for r in recipes])
    spec = X.eval_spec(args.profile)
    epochs = sum(r.epochs for r in recipes)
    print(f"{len(recipes)} recipes ({epochs} model-epochs) of profile {args.profile!r}, "
          f"factors {args.factors or 'all'}{', with ' + str(changes) if changes else ''}; "
          f"{'fast' if args.fast else 'deterministic'} mode")

    out, digests = {}, {}
    root = Path(tempfile.mkdtemp(prefix="rmpm-bench-parallel-"))
    try:
        for n in (1, args.workers):
            t0 = time.perf_counter()
            client = E.get_client(workers=n, deterministic=not args.fast)
            client.run(lambda: __import__("rmpm.pipeline.train"))  # import torch in every worker
            startup = time.perf_counter() - t0
            store = root / f"w{n}"
            t0 = time.perf_counter()
            run_recipes(recipes, spec, store, "cpu", progress=False, workers=n,
                        deterministic=not args.fast)
            wall = time.perf_counter() - t0
            E.close_clients()
            m = M.compute(recipes, spec.key(), store)
            digests[n] = ({k: v["digest"] for k, v in m["models"].items()},
                          {k: v["digest"] for k, v in m["evals"].items()})
            out[n] = {"workers": n, "seconds": wall, "startup_seconds": startup,
                      "model_epochs_per_s": epochs / wall}
            print(f"{n} worker(s): {wall:7.1f} s  ({epochs / wall:.2f} model-epochs/s; "
                  f"cluster start-up {startup:.1f} s, not included)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = out[1]["seconds"] / out[args.workers]["seconds"]
    same = digests[1] == digests[args.workers]
    print(f"speed-up with {args.workers} workers: {ratio:.2f}x; stored bits identical: {same}")
    res = {"recipes": len(recipes), "model_epochs": epochs, "runs": list(out.values()),
           "speedup": ratio, "identical": same}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
