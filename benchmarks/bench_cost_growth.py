"""How a model's cost grows with its training set and its epochs, measured.

In one fresh process started with rmpm's deterministic worker environment (AVX2,
one thread, rmpm's allocator settings) the default profile's Fashion-MNIST base
recipe (SmallCNN width 16, batch 128) is trained at three training-set sizes
times three epoch counts, after one untimed warm-up model (a worker's first model
also pays for generating its kernels). Each point is measured ``--rounds`` times
(the grid forwards, then backwards) and its least-disturbed (smallest) CPU time
kept. :func:`rmpm.pipeline.train.fit`'s CPU time is split into

- the training steps, fitted as ``per_image_epoch * n * epochs`` (a per-epoch and a
  per-model term came out within the noise, and negative), and
- its own evaluations (``evaluate_split``: 1,000 test images per epoch, then the
  training subset and the 10,000 test images), fitted as ``per_image * images``;

then one evaluation under the default spec (:func:`rmpm.pipeline.evaluate.evaluate`)
is timed. The fit's worst relative residual shows whether the cost is linear in
image-epochs. ``benchmarks/estimate_profile.py`` takes its cost model from these
numbers (``--json`` writes them).

    python benchmarks/bench_cost_growth.py                    # about 3 CPU-minutes
    python benchmarks/bench_cost_growth.py --json growth.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (2500, 10000, 40000)
EPOCHS = (1, 2, 4)

_CHILD = r"""
import json, resource, sys
import torch
from rmpm.pipeline import determinism
import rmpm.pipeline.train as T
from rmpm.pipeline.evaluate import evaluate
from rmpm.pipeline.recipe import Recipe
from rmpm.analysis.populations import eval_spec
args = json.loads(sys.argv[1])
determinism.enter(True)
base = Recipe.from_dict(args["recipe"])
data = T.prepare(base.dataset, torch.device("cpu"))

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

scored = {"cpu": 0.0, "images": 0}
real_split = T.evaluate_split
def timed_split(model, x, y, *a, **k):  # fit's own evaluations, timed apart
    t = cpu(); out = real_split(model, x, y, *a, **k)
    scored["cpu"] += cpu() - t; scored["images"] += len(x)
    return out
T.evaluate_split = timed_split

T.fit(base.replace(epochs=1, train_size=2500), "cpu", data=data)   # warm-up
points = [(n, e) for n in args["sizes"] for e in args["epochs"]]
best = {}
for rnd in range(args["rounds"]):
    for n, e in (points if rnd % 2 == 0 else points[::-1]):
        scored.update(cpu=0.0, images=0)
        t = cpu()
        res = T.fit(base.replace(train_size=n, epochs=e), "cpu", data=data)
        total = cpu() - t
        row = {"n": n, "epochs": e, "fit": total, "steps": total - scored["cpu"],
               "evals": scored["cpu"], "images_scored": scored["images"],
               "step_count": res.metrics["steps"]}
        if (n, e) not in best or total < best[(n, e)]["fit"]:
            best[(n, e)] = row
model = res.model
t = cpu()
evaluate([model], base.dataset, eval_spec("default"), "cpu")
ev = cpu() - t
print("RESULT", json.dumps({"points": list(best.values()), "evaluate": ev}))
"""


def lstsq(rows: list[list[float]], y: list[float]) -> list[float]:
    import numpy as np
    coef, *_ = np.linalg.lstsq(np.array(rows, dtype=float), np.array(y, dtype=float), rcond=None)
    return [float(c) for c in coef]


def main(argv: list[str] | None = None) -> dict:
    from rmpm.analysis.profiles import get_profile
    from rmpm.paths import data_root
    from rmpm.pipeline.determinism import worker_env
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the fitted costs here")
    args = ap.parse_args(argv)
    base = get_profile("default").base["fashion_mnist"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({**worker_env(True), "RMPM_DATA": str(data_root()), "PYTHONPATH": str(ROOT)})
    spec = {"recipe": base.to_dict(), "sizes": SIZES, "epochs": EPOCHS, "rounds": args.rounds}
    p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env,
                       capture_output=True, text=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        raise RuntimeError(p.stderr[-3000:])
    res = json.loads(line[-1][len("RESULT "):])
    pts = res["points"]
    [a] = lstsq([[r["n"] * r["epochs"]] for r in pts], [r["steps"] for r in pts])
    [f] = lstsq([[r["images_scored"]] for r in pts], [r["evals"] for r in pts])
    print(f"{base.dataset} {base.arch} width {base.width}, batch {base.batch_size}; CPU seconds "
          f"(least of {args.rounds} rounds), one pinned process, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'images':>7} {'epochs':>6} {'fit s':>7} {'steps s':>8} {'evals s':>8} "
          f"{'ms/img-epoch':>13} {'model':>7} {'resid':>6}")
    worst = 0.0
    for r in sorted(pts, key=lambda r: (r["n"], r["epochs"])):
        pred = a * r["n"] * r["epochs"] + f * r["images_scored"]
        resid = (r["fit"] - pred) / r["fit"]
        worst = max(worst, abs(resid))
        print(f"{r['n']:7d} {r['epochs']:6d} {r['fit']:7.2f} {r['steps']:8.2f} {r['evals']:8.2f} "
              f"{1e3 * r['steps'] / (r['n'] * r['epochs']):13.3f} {pred:7.2f} {resid:+6.1%}")
    print(f"fitted: training {a * 1e3:.4f} ms per image-epoch; scoring {f * 1e6:.1f} us per image "
          f"({f / a:.2f} of an image-epoch); worst relative residual {worst:.1%}")
    print(f"one evaluation under the default spec: {res['evaluate']:.2f} s")
    out = {"recipe": base.to_dict(), "train_s_per_image_epoch": a, "forward_s_per_image": f, "evaluate_default_s": res["evaluate"],
           "worst_relative_residual": worst, "points": pts, "load": os.getloadavg()[0]}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
