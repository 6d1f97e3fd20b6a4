"""Model-epochs per second: one-at-a-time (``train.fit``) vs batched (``ensemble.fit_ensemble``).

A population of ``--models`` SmallCNNs on Fashion-MNIST (seeds 0..M-1: init and
order seed both i), trained both ways in the same run, on the same device, from
the same recipes. Prints both rates, the speed-up, and test accuracy of both
(mean, min) with the largest difference between matched members.

Usage (GPU target: >= 50 model-epochs/s on an H100 with test acc >= 0.89 after
1 epoch and >= 0.91 after 5):

    python benchmarks/bench_training.py --models 32 --epochs 1
    python benchmarks/bench_training.py --models 32 --epochs 5
    python benchmarks/bench_training.py --models 4 --train-size 10000 --device cpu   # CPU

Timings are of whole calls (training plus the final train/test evaluation both
engines do) after one untimed warm-up of each engine; data loading is excluded.
The one-at-a-time baseline times only the first ``--single-models`` members
(default 8 on CUDA, 2 elsewhere) and extrapolates linearly; the output says so.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from rmpm.pipeline.ensemble import fit_ensemble
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.train import fit, prepare, resolve_device


def _int_or_none(s: str) -> int | None:
    return None if s.lower() == "none" else int(s)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=32, help="population size M")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-size", type=_int_or_none, default=None,
                    help="training examples per model (None: all 60000)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast for the batched engine (default: on for CUDA only)")
    ap.add_argument("--channels-last", action="store_true",
                    help="NHWC inputs for the batched engine's convolutions (CUDA)")
    ap.add_argument("--single-models", type=int, default=None,
                    help="how many members to time one at a time (default: 8 on CUDA, "
                         "2 elsewhere; the rate is extrapolated linearly to all)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    amp = (dev.type == "cuda") if args.amp is None else args.amp
    m = args.models
    # the one-at-a-time baseline is slow by design: bound it by default (CUDA 8, else 2)
    k = args.single_models if args.single_models is not None else min(m, 8 if dev.type == "cuda" else 2)
    k = max(1, min(k, m))
    base = Recipe(dataset="fashion_mnist", arch="cnn", width=args.width, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, train_size=args.train_size)
    recipes = [base.replace(init_seed=i, order_seed=i) for i in range(m)]

    t = time.perf_counter()
    data = prepare(base.dataset, dev)
    _sync(dev)
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} CPU threads), torch {torch.__version__}; data loaded in "
          f"{time.perf_counter() - t:.1f}s; {m} x SmallCNN(width={args.width}) on "
          f"{args.train_size or len(data.x_train)} Fashion-MNIST examples, {args.epochs} epoch(s), "
          f"batch {args.batch_size}, amp={amp}, channels_last={args.channels_last}", flush=True)

    if not args.no_warmup:  # CUDA context, cuDNN autotuning, allocator: not part of the rate
        # 2048 examples plus the timed run's last partial batch, so both batch shapes are tuned
        n = args.train_size or len(data.x_train)
        warm = base.replace(epochs=1, train_size=min(2048 + n % args.batch_size, len(data.x_train)))
        fit(warm, dev, data=data)
        fit_ensemble([warm.replace(init_seed=i) for i in range(m)], dev, data=data, amp=amp,
                     channels_last=args.channels_last)
        _sync(dev)

    t = time.perf_counter()
    batched = fit_ensemble(recipes, dev, data=data, amp=amp, channels_last=args.channels_last)
    _sync(dev)
    t_batched = time.perf_counter() - t

    t = time.perf_counter()
    single = []
    for r in recipes[:k]:
        single.append(fit(r, dev, data=data))
        _sync(dev)
    t_single_timed = time.perf_counter() - t
    t_single = t_single_timed * m / k

    me = m * args.epochs
    rate_b, rate_s = me / t_batched, me / t_single
    loop_b = batched[0].metrics["group_train_seconds"]
    loop_s = sum(s.metrics["train_seconds"] for s in single) * m / k
    acc_b = [r.metrics["test_acc"] for r in batched]
    acc_s = [r.metrics["test_acc"] for r in single]
    diff = max(abs(a.metrics["test_acc"] - b.metrics["test_acc"]) for a, b in zip(batched, single))
    res = {
        "device": str(dev), "models": m, "epochs": args.epochs, "width": args.width,
        "train_size": args.train_size or len(data.x_train), "amp": amp,
        "channels_last": args.channels_last, "threads": torch.get_num_threads(),
        "single_models_timed": k, "batched_seconds": t_batched, "single_seconds": t_single,
        "batched_model_epochs_per_s": rate_b, "single_model_epochs_per_s": rate_s,
        "speedup": rate_b / rate_s,
        "batched_loop_model_epochs_per_s": me / loop_b, "single_loop_model_epochs_per_s": me / loop_s,
        "batched_test_acc_mean": statistics.fmean(acc_b), "batched_test_acc_min": min(acc_b),
        "single_test_acc_mean": statistics.fmean(acc_s), "single_test_acc_min": min(acc_s),
        "max_abs_test_acc_diff_matched": diff,
    }
    extrap = "" if k == m else f" (timed {k} of {m} models, extrapolated linearly)"
    print(f"one-at-a-time: {rate_s:8.3g} model-epochs/s  ({t_single:.1f}s for {me} model-epochs{extrap}; "
          f"training loop only {res['single_loop_model_epochs_per_s']:.3g})")
    print(f"batched:       {rate_b:8.3g} model-epochs/s  ({t_batched:.1f}s for {me} model-epochs; "
          f"training loop only {res['batched_loop_model_epochs_per_s']:.3g})")
    print(f"speed-up:      {res['speedup']:8.2f}x")
    print(f"test accuracy: batched mean {res['batched_test_acc_mean']:.4f} min {min(acc_b):.4f} | "
          f"one-at-a-time mean {res['single_test_acc_mean']:.4f} min {min(acc_s):.4f} "
          f"(over the {k} timed) | max |diff| over {k} matched members {diff:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
