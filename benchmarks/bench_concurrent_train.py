"""Two concurrent ``rmpm train`` runs on one empty store, against one run alone.

With claims (:mod:`rmpm.pipeline.locks`) the pair shares the work: each recipe is
trained once between them, so the pair should take about as long as one run (the
machine's cores are the limit either way), not twice as long. Prints each run's
wall time, its trainings ("trained" rows of its summary table: trained by this
run, not taken from the store) and the load average. Nothing is asserted.

    python benchmarks/bench_concurrent_train.py [--profile smoke] [--workers N]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start(store: Path, profile: str, workers: int | None) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-m", "rmpm", "train", "--profile", profile, "--store", str(store)]
    if workers:
        cmd += ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if k != "RMPM_SCHEDULER"}
    return (subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True), time.perf_counter())


def finish(p: subprocess.Popen, t0: float) -> dict:
    out, err = p.communicate()
    if p.returncode:
        raise SystemExit(f"rmpm train failed ({p.returncode}):\n{err[-3000:]}")
    rows = [l for l in out.splitlines() if re.match(r"^[0-9a-f]{12} ", l)]
    return {"seconds": time.perf_counter() - t0, "recipes": len(rows),
            "trained": sum(l.endswith(" trained") for l in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--workers", type=int, default=None,
                    help="workers of each run's embedded cluster (default: rmpm's, one per core)")
    ap.add_argument("--dir", default=None,
                    help="keep the two stores in this folder (default: a temporary one)")
    args = ap.parse_args()
    with (tempfile.TemporaryDirectory() if args.dir is None
          else contextlib.nullcontext(args.dir)) as tmp:
        print(f"load average before: {os.getloadavg()}")
        alone = finish(*start(Path(tmp) / "alone", args.profile, args.workers))
        print(f"one run alone:   {alone['seconds']:6.1f} s, trained {alone['trained']} of "
              f"{alone['recipes']} recipes; load average {os.getloadavg()}")
        pair = [start(Path(tmp) / "shared", args.profile, args.workers) for _ in range(2)]
        t0 = time.perf_counter()
        done = [finish(p, t) for p, t in pair]
        wall = time.perf_counter() - t0
        for i, d in enumerate(done):
            print(f"pair, run {i + 1}:    {d['seconds']:6.1f} s, trained {d['trained']} of "
                  f"{d['recipes']} recipes")
        print(f"the pair:        {wall:6.1f} s wall, {sum(d['trained'] for d in done)} trainings "
              f"for {done[0]['recipes']} recipes; load average {os.getloadavg()}")
        entries = len([d for d in (Path(tmp) / "shared" / "models").glob("*/*")
                       if not d.name.startswith(".")])
        print(f"the shared store holds {entries} models")


if __name__ == "__main__":
    main()
