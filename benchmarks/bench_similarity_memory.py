"""Peak memory of all-pairs SVCCA at the issue's size: 64 models x 10,000 inputs x 512 neurons.

The activations are float32 and low-rank plus noise, like real layers (a
shared 64-dim latent mapped through a random per-model 512 x 64 matrix); the
script prints the dims SVCCA keeps, the time, and the peak resident memory
against the memory of the activations themselves, measured in the same run.

    python benchmarks/bench_similarity_memory.py [--models 64 --inputs 10000 --neurons 512]
"""
import argparse
import resource
import time

import numpy as np
import torch

from rmpm.measures.similarity import pairwise_similarity


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--neurons", type=int, default=512)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--noise", type=float, default=0.05)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.inputs, args.latent, generator=g)
    acts = [(z @ torch.randn(args.latent, args.neurons, generator=g)
             + args.noise * torch.randn(args.inputs, args.neurons, generator=g)).float()
            for _ in range(args.models)]
    act_gib = sum(a.numel() * a.element_size() for a in acts) / 2**30
    base = rss_gib()
    t0 = time.perf_counter()
    sim = pairwise_similarity(acts, "svcca", keep=0.99)
    dt = time.perf_counter() - t0
    peak = rss_gib()
    off = sim[~np.eye(len(sim), dtype=bool)]
    print(f"{args.models} models x ({args.inputs}, {args.neurons}) float32: activations {act_gib:.2f} GiB")
    print(f"all-pairs SVCCA: {dt:.1f} s; peak RSS {peak:.2f} GiB (before: {base:.2f} GiB; "
          f"growth {peak - base:.2f} GiB = {(peak - base) / act_gib:.2f}x the activations)")
    print(f"similarity over pairs: min {off.min():.4f} mean {off.mean():.4f} max {off.max():.4f}")


if __name__ == "__main__":
    main()
