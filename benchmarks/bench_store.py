"""What checksumming costs: SHA-256 manifests against the work around them.

For entries of three sizes (a smoke CNN with a smoke evaluation, a paper-profile
ResNet with a paper-sized evaluation of random numbers), times in the same run:

- writing an entry (``put_model`` / ``put_eval``, which now hash every file for
  the manifest) and the share of it spent hashing;
- the first check of an entry (``has_*``: every file hashed) and a repeated one
  (memoised while the files are unchanged);
- a checked read (``state_dict`` / ``arrays``: the loaded bytes are hashed) against
  the plain decode of the same bytes (what reads cost before).

Prints seconds and ratios; nothing is asserted. Usage::

    python benchmarks/bench_store.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import numpy as np
import torch

import rmpm.pipeline.store as S
from rmpm.pipeline.models import build_model
from rmpm.pipeline.recipe import Recipe


def _time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _eval_arrays(n_test, n_probs, n_probe, widths, rng):
    out = {f"probs:{i}": rng.random((n_test, 10), dtype=np.float32) for i in range(n_probs)}
    out.update({f"act:l{i}": rng.standard_normal((n_probe, w), dtype=np.float32)
                for i, w in enumerate(widths)})
    out["labels"] = rng.integers(0, 10, n_test)
    return out


CASES = {
    # name: (arch, in_shape, width, eval arrays (n_test, prob sets, n_probe, widths))
    "smoke CNN": ("cnn", (1, 28, 28), 8, (500, 10, 300, (8, 16, 64, 10))),
    "default CNN": ("cnn", (1, 28, 28), 16, (1000, 31, 500, (16, 32, 128, 10))),
    "paper ResNet": ("resnet", (3, 32, 32), 16, (10000, 51, 2000, (16, 32, 64, 64, 10))),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'entry':18} {'MB':>6} {'write s':>8} {'hash %':>7} {'check s':>8} {'memo s':>8} "
          f"{'read s':>8} {'decode s':>8} {'read/decode':>11}")
    for name, (arch, shape, width, ev) in CASES.items():
        sd = build_model(arch, shape, 10, width, seed=0).state_dict()
        arrays = _eval_arrays(*ev, rng)
        for kind in ("models", "evals"):
            with tempfile.TemporaryDirectory() as tmp:
                store = S.Store(tmp)
                r = Recipe(dataset="digits", width=width, init_seed=int(rng.integers(1 << 30)))
                i = [0]

                def put():
                    i[0] += 1
                    rr = r.replace(order_seed=i[0])
                    if kind == "models":
                        return store.put_model(rr, sd, {"test_acc": 0.5}, [], shape, 10)
                    return store.put_eval(rr, {}, "spec", {"iid_acc": 0.5}, arrays)

                write_s = _time(put, args.repeats)
                e = put()
                d = e.path
                hash_s = _time(lambda: S._checksums_of(d), args.repeats)
                mb = sum(f.stat().st_size for f in d.iterdir()) / 1e6

                def first_check():
                    S._CHECKED.clear()
                    assert S.ensure_intact(d, kind)

                check_s = _time(first_check, args.repeats)
                memo_s = _time(lambda: S.ensure_intact(d, kind), args.repeats)
                if kind == "models":
                    raw = (d / "model.pt").read_bytes()
                    read_s = _time(e.state_dict, args.repeats)
                    decode_s = _time(lambda: torch.load(io.BytesIO(raw), weights_only=True),
                                     args.repeats)
                else:
                    raw = (d / "arrays.npz").read_bytes()

                    def decode():
                        with np.load(io.BytesIO(raw)) as z:
                            return {k: z[k] for k in z.files}

                    read_s = _time(e.arrays, args.repeats)
                    decode_s = _time(decode, args.repeats)
                print(f"{name + ' ' + kind[:-1]:18} {mb:6.2f} {write_s:8.4f} "
                      f"{100 * hash_s / write_s:6.1f}% {check_s:8.4f} {memo_s:8.5f} "
                      f"{read_s:8.4f} {decode_s:8.4f} {read_s / decode_s:10.2f}x")


if __name__ == "__main__":
    main()
