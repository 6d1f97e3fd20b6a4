"""All-pairs SVCCA (reduce every model once, batched pairs) vs. a pairwise baseline.

The baseline calls :func:`rmpm.measures.similarity.svcca` on every pair, which centres,
SVDs and cuts both layers again for each pair (what a loop over pairs with a
standard SVCCA function does). Both run in this process on the same data, so the
ratio and the max |difference| are measured together. Run:

    .venv/bin/python benchmarks/bench_similarity.py            # 32 models, as in issue 3
    .venv/bin/python benchmarks/bench_similarity.py --models 8 # quick look

Synthetic activations: every model sees the same inputs through a shared latent
code, mixed by its own random weights and a ReLU, plus noise, so spectra decay as
in trained networks and pairs are partly similar. The number of kept dimensions
(99 % of variance) is printed, because the speed-up depends on it.

What bounds the speed-up: both methods must form, for every pair, the k x k
matrix of inner products of the two kept bases over the n inputs (n k^2 flops per
pair); the all-pairs path saves the two n x p SVDs per pair and does the products
in large blocks. The ratio therefore approaches (2 SVD + product) / product for many
models, roughly 4-10x on CPU at n=2,000, p=128, k~120 -- it does not grow with N.
Each case also prints this cost model's bound, from timings of one reduction and
one pair taken in the same run: with S per reduction and C per pair, the baseline
costs P(2S + C) for P = N(N-1)/2 pairs and any exact all-pairs method at least
N S + P C, so the ratio is below N - 1 (31 for 32 models) however cheap C is.
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from rmpm.measures.similarity import (DEFAULT_MAX_POINTS, canonical_correlations,
                             pairwise_similarity, svcca, svd_reduce)


def dense_population(n_models, n, p, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 48))
    return [np.maximum(z @ rng.standard_normal((48, p)) + 0.3 * rng.standard_normal((n, p)), 0)
            .astype(np.float32) for _ in range(n_models)]


def conv_population(n_models, n, c, hw, seed):
    rng = np.random.default_rng(seed)
    z = torch.from_numpy(rng.standard_normal((n, 8, hw, hw)))
    out = []
    for _ in range(n_models):
        w = torch.from_numpy(rng.standard_normal((c, 8, 3, 3)))
        a = torch.relu(torch.nn.functional.conv2d(z, w, padding=1))
        out.append((a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(
            int(rng.integers(1 << 31)))).double()).float().numpy())
    return out


def _best(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_case(name, acts, keep, **kw):
    t0 = time.perf_counter()
    fast = pairwise_similarity(acts, "svcca", keep, **kw)
    t_fast = time.perf_counter() - t0

    n_models = len(acts)
    slow = np.eye(n_models)
    t0 = time.perf_counter()
    for i, j in itertools.combinations(range(n_models), 2):
        slow[i, j] = slow[j, i] = svcca(acts[i], acts[j], keep, **kw).similarity
    t_slow = time.perf_counter() - t0

    reds = [svd_reduce(a, keep, **kw) for a in acts[:2]]
    dims = [r.dims for r in reds]
    diff = float(np.abs(fast - slow).max())
    # Cost model: reducing a model costs S, one pair's cross product + svdvals C.
    # The baseline pays P(2S + C); an exact all-pairs method pays N S + P C' with
    # C' the per-pair cost inside large blocks (each pair's k x k product is still
    # needed), so the ratio is near P(2S + C)/(N S + P C) and below N - 1 for any C'.
    t_s = _best(lambda: svd_reduce(acts[0], keep, **kw))
    qa, qb = reds[0].basis, reds[1].basis
    t_c = _best(lambda: canonical_correlations(qa, qb))
    P = n_models * (n_models - 1) // 2
    bound = P * (2 * t_s + t_c) / (n_models * t_s + P * t_c)
    shape = tuple(np.shape(acts[0]))
    print(f"{name}: {n_models} models x {shape}, keep={keep}, dims kept (first 2 models) {dims}")
    print(f"  all-pairs (reduce once, batched): {t_fast:8.3f} s")
    print(f"  pairwise baseline (SVD per pair): {t_slow:8.3f} s   "
          f"({P} pairs)")
    print(f"  speed-up {t_slow / t_fast:7.1f}x   max |difference| {diff:.2e}   "
          f"mean SVCCA {fast[np.triu_indices(n_models, 1)].mean():.4f}")
    print(f"  cost model: reduce one model {1e3 * t_s:.1f} ms, one pair's product + svdvals "
          f"{1e3 * t_c:.1f} ms -> an exact all-pairs method paying one pair's cost per pair "
          f"reaches about {bound:.1f}x; below N-1 = {n_models - 1}x even if pairs were free")
    return t_slow / t_fast, diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=2000)
    ap.add_argument("--neurons", type=int, default=128)
    ap.add_argument("--keep", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, CPU")
    run_case("dense", dense_population(args.models, args.inputs, args.neurons, args.seed),
             args.keep)
    # conv: 200 inputs x 8x8 positions = 12,800 points, 32 channels; positions convention
    run_case("conv (positions)", conv_population(args.models, 200, 32, 8, args.seed + 1),
             args.keep, conv="positions", max_points=DEFAULT_MAX_POINTS)


if __name__ == "__main__":
    main()
