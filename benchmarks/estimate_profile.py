"""Estimate a profile's wall-clock time on N single-threaded CPU workers from
per-example-epoch costs measured on random tensors of each data set's shape (no
download needed), in a deterministic worker (AVX2, one thread) like real training.

    python benchmarks/estimate_profile.py --profile paper_cpu --workers 8
    python benchmarks/estimate_profile.py --profile default --workers 2   # a check against a real build

Measured: one epoch of each data set's *base* recipe, and of a reference recipe
(the ``default`` profile's SmallCNN, width 16). Other recipes of the profile
(other widths, batch sizes) are scaled from their data set's base by forward
FLOPs (``rmpm.pipeline.estimate.forward_flops``), which no machine load disturbs.
Calibrated: the measured costs are also rescaled so that the reference recipe
costs ``--reference-seconds`` per example-epoch, which removes the load of a
shared machine from the estimate. The default, 0.150 ms per image-epoch of
training (1.5 s per 10k-image epoch, one thread, pinned AVX2), is what
``benchmarks/bench_cost_growth.py`` fitted for the reference on the 2-core AMD EPYC
development machine (a shared one: load average 3.7 then, so if anything high).
Evaluation is estimated as one eval-mode forward pass per stored prediction, and
training includes ``fit``'s own scoring, both at ``FORWARD_FRACTION`` of an
image-epoch, measured by the same benchmark (``rmpm.pipeline.estimate.profile_seconds``).
"""
from __future__ import annotations

import argparse
import json
import os

from rmpm.pipeline import engine as E
from rmpm.pipeline import estimate as T
from rmpm.analysis import populations as X
from rmpm.analysis.profiles import get_profile


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="paper_cpu")
    ap.add_argument("--workers", type=int, default=8, help="workers of the machine estimated for")
    ap.add_argument("--sample", type=int, default=1000, help="random examples per timing")
    ap.add_argument("--reference-seconds", type=float, default=1.50e-4,
                    help="seconds per example-epoch of the reference recipe on an idle machine")
    args = ap.parse_args(argv)
    p = get_profile(args.profile)
    recipes = X.profile_recipes(p)
    ref = get_profile("default").base["fashion_mnist"]
    client = E.get_client(workers=1, deterministic=True, device="cpu")
    measured = {}
    for name, r in [("reference", ref)] + [(ds, p.base[ds]) for ds in p.datasets]:
        measured[name] = client.submit(T.epoch_seconds, r, args.sample, pure=False).result()
        print(f"measured {name:14} {r.arch}-{r.width}: {measured[name] * 1e3:.3f} ms "
              f"per example-epoch ({T.forward_flops(r) / 1e6:.2f} MFLOP forward)")
    E.close_clients()
    scale = args.reference_seconds / measured["reference"]
    print(f"this machine ran the reference {1 / scale:.2f}x slower than the calibration "
          f"(load average {os.getloadavg()[0]:.1f})")
    spec = X.eval_spec(p)
    out, totals = {}, {"measured": 0.0, "calibrated": 0.0}
    for ds in p.datasets:
        rs = [r for r in recipes if r.dataset == ds]
        n_eval = spec.n_test or T.SHAPES[ds][3]
        for kind, s in (("measured", 1.0), ("calibrated", scale)):
            cost = T.flop_costs(rs, p.base[ds], measured[ds] * s)
            est = T.profile_seconds(rs, cost, args.workers, n_eval, len(spec.shifts))
            out.setdefault(ds, {"recipes": len(rs),
                                "model_epochs": sum(r.epochs for r in rs)})[kind] = est
            totals[kind] += est["wall_s"]
        c = out[ds]["calibrated"]
        print(f"{ds:14} {len(rs):4d} recipes {out[ds]['model_epochs']:5d} model-epochs: "
              f"{c['train_core_s'] / 60:7.1f} core-min training, "
              f"{c['eval_core_s'] / 60:6.1f} core-min evaluation (calibrated)")
    print(f"profile {p.name} on {args.workers} workers: about {totals['calibrated'] / 60:.0f} min "
          f"calibrated, {totals['measured'] / 60:.0f} min at this machine's measured speed")
    res = {"profile": p.name, "workers": args.workers, "measured_s_per_example_epoch": measured,
           "calibration_factor": scale, "wall_s": totals, "per_dataset": out,
           "load": os.getloadavg()[0]}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
