"""What vectorising the corruptions buys: one call on a batch against a loop over
its images, for every corruption at severity 5, timed in the same run.

Replaces a wall-clock assertion that used to sit in the tests (it failed at random
on a busy machine). Prints seconds per corruption and the loop/batch ratio;
nothing is asserted. Usage::

    python benchmarks/bench_shifts.py [--n 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import timeit

import torch

from rmpm.pipeline import shifts


def best_of(fn, repeats: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="images in the batch")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    x = torch.rand(a.n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    print(f"{'corruption':16s} {'batch s':>9s} {'loop s':>9s} {'loop/batch':>10s}")
    ratios = []
    for kind in shifts.CORRUPTIONS:
        batch = best_of(lambda: shifts.corrupt(x, kind, 5), a.repeats)
        loop = best_of(lambda: [shifts.corrupt(x[i:i + 1], kind, 5) for i in range(a.n)], a.repeats)
        ratios.append(loop / batch)
        print(f"{kind:16s} {batch:9.4f} {loop:9.4f} {loop / batch:10.1f}")
    print(f"all ten, batch of {a.n}: median loop/batch ratio {statistics.median(ratios):.1f}")


if __name__ == "__main__":
    main()
