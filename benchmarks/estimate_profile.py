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

What a real build adds: the workers share the machine (on 2 cores each trains
about 1.25x slower per image than one alone: caches, memory bandwidth), and a
build has a fixed cost (workers starting, each loading its data sets, the
scheduler). Fitted on two real builds from a store without their models
(2026-12-03, 2 workers, 2-core Intel Xeon): ``default`` (calibrated estimate
300 s, training and evaluation took 576 s) and ``large`` (1,680 s; 2,303 s):
real = 1.25 x calibrated + 200 s (``--shared-factor``, ``--overhead-seconds``),
printed as the build's expected time; the notebooks come on top (default 3.6 min,
large 2.2 min once default's calibration is cached). Two builds on one machine
fit two numbers exactly: the model is a reading, not a tested law. And the
estimate itself moves from run to run: ``large`` on 2 workers came out at 28 and
35 calibrated minutes in two runs minutes apart on an idle machine (``--sample``
1000 random images per timing), so read it as good to about a quarter.
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
    ap.add_argument("--shared-factor", type=float, default=1.25,
                    help="how much slower each worker trains in a build than one alone")
    ap.add_argument("--overhead-seconds", type=float, default=200.0,
                    help="a build's fixed cost: workers starting, data loading, scheduling")
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
    expected = args.shared_factor * totals["calibrated"] + args.overhead_seconds
    print(f"profile {p.name} on {args.workers} workers: about {totals['calibrated'] / 60:.0f} min "
          f"calibrated, {totals['measured'] / 60:.0f} min at this machine's measured speed; "
          f"a build's training and evaluation: about {expected / 60:.0f} min "
          f"({args.shared_factor:g} x calibrated + {args.overhead_seconds:.0f} s)")
    res = {"profile": p.name, "workers": args.workers, "measured_s_per_example_epoch": measured,
           "calibration_factor": scale, "wall_s": totals, "expected_build_s": expected,
           "per_dataset": out,
           "load": os.getloadavg()[0]}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
