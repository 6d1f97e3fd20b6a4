"""What vectorising the calibration buys: the same simulations through the
chapters' table-in, evidence-out functions (one simulation at a time) and through
the stacked ``*_core`` path :mod:`rmpm.analysis.calibration` runs, in the same run,
and what a cached rebuild costs.

For C1 (sign flips) and C3 (cross-fitted permutation test) on a design of three
data sets x 3 replicates x 12 factors: seconds per simulation each way and their
ratio; then ``calibrate`` on all scenarios twice (simulated, then read from a
fresh cache). Prints seconds and ratios; nothing is asserted. Usage::

    python benchmarks/bench_calibration.py [--n-sim 100]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

from rmpm.analysis import calibration as C, evidence as D


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-sim", type=int, default=100)
    n = ap.parse_args().n_sim
    d = C.design("default").replace(datasets=("fashion_mnist", "mnist5k", "digits"))
    kw = {"n_perm": 500, "n_boot": 200, "threshold": 0.01}
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for claim, draw, stacked, one in (
                ("C1", C.draw_c1, C.evidence_c1,
                 lambda t: D.c1_evidence(t)),
                ("C3", C.draw_c3, C.evidence_c3,
                 lambda t: D.c3_evidence(t, n_perm=kw["n_perm"], n_boot=0, seed=1))):
            arrays = draw(d, rng, n, "combined")
            t0 = time.perf_counter()
            for i in range(n):
                one(C.as_table(d, arrays, i))
            loop = (time.perf_counter() - t0) / n
            t0 = time.perf_counter()
            stacked(d, arrays, kw, 1)
            vec = (time.perf_counter() - t0) / n
            print(f"{claim}: {1e3 * loop:.2f} ms per simulation one table at a time, "
                  f"{1e3 * vec:.2f} ms stacked: {loop / vec:.1f}x")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RMPM_CACHE"] = tmp
        t0 = time.perf_counter()
        C.calibrate(d, n_sim=n)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        C.calibrate(d, n_sim=n)
        again = time.perf_counter() - t0
    print(f"calibrate, {len(C.scenarios())} scenarios x {n} simulations: {first:.1f} s "
          f"simulated, {again:.2f} s from the cache ({first / again:.0f}x)")


if __name__ == "__main__":
    main()
