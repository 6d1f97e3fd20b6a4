"""How long ``rmpm store export`` and ``rmpm store import`` take for a default-sized
build: N models and N evaluations (default N = 230).

The store is synthesised with realistic entries: every model is the ``default``
profile's CNN with its own initial weights (``build_model`` with a seed, so every
``model.pt`` differs), every evaluation holds the arrays of a real evaluation under
the ``default`` eval spec (probabilities on the i.i.d. test sample and every
corruption and severity, probe-layer activations), computed once from Fashion-MNIST
for one of those models and stored for each; a build folder with a manifest lists
them all. Untrained weights have the trained ones' sizes; activations of an
untrained network may compress a little differently.

Times, in one run: export to ``.tar`` and to ``.tar.gz``, import of each into an
empty store (first pass: every member hashed and every model and evaluation decoded
and content-digested; second pass: atomic commits). Prints seconds, sizes and MB/s;
nothing is asserted. Usage::

    python benchmarks/bench_archive.py [--n 230] [--no-gz]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rmpm.book import archive as A
from rmpm.book import manifest as M
from rmpm.analysis.populations import eval_spec
from rmpm.analysis.profiles import get_profile
from rmpm.pipeline.evaluate import evaluate
from rmpm.pipeline.models import build_model
from rmpm.pipeline.store import Store

BUILD = "20260101T000000-bench0"


def synthesise(root: Path, n: int) -> tuple[Store, Path]:
    p = get_profile("default")
    base, spec = p.base[p.datasets[0]], eval_spec(p)
    st = Store(root / "store")
    recipes = [base.replace(init_seed=i) for i in range(n)]
    shape = (1, 28, 28)
    model = build_model(base.arch, shape, 10, base.width, base.dropout, seed=0)
    (metrics, arrays), = evaluate([model], base.dataset, spec)
    for r in recipes:
        m = build_model(r.arch, shape, 10, r.width, r.dropout, seed=r.init_seed)
        st.put_model(r, m.state_dict(), {"test_acc": 0.1}, [], shape, 10)
        st.put_eval(r, spec.to_dict(), spec.key(), metrics, arrays)
    bdir = root / "builds" / p.name / BUILD
    (bdir / "results").mkdir(parents=True)
    (bdir / "results" / "02_populations.json").write_text(json.dumps(
        {"name": "02_populations", "profile": p.name, "build": BUILD,
         "values": {"model_keys": [r.key() for r in recipes]}}))
    M.write(M.compute(recipes, spec.key(), st, bdir / "results",
                    environment={"profile": p.name, "build": BUILD}), bdir / "manifest.json")
    (bdir.parent / "latest").write_text(BUILD + "\n")
    return st, root / "builds"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=230, help="models (and evaluations)")
    ap.add_argument("--no-gz", action="store_true", help="skip the .tar.gz case")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        st, builds = synthesise(tmp, args.n)
        size = sum(f.stat().st_size for f in st.root.rglob("*") if f.is_file())
        print(f"synthesised {args.n} models + {args.n} evaluations, {size / 1e6:.0f} MB in "
              f"the store ({time.perf_counter() - t0:.0f} s)")
        for suffix in (".tar",) + (() if args.no_gz else (".tar.gz",)):
            out = tmp / f"default{suffix}"
            ex = A.export("default", out, st, builds_dir=builds)
            im = A.import_archive(out, Store(tmp / f"imported{suffix}"),
                                  builds_dir=tmp / f"builds{suffix}")
            mb = ex.bytes / 1e6
            print(f"{suffix:8} archive {mb:7.0f} MB   export {ex.seconds:6.1f} s "
                  f"({mb / ex.seconds:5.0f} MB/s)   import {im.seconds:6.1f} s "
                  f"({mb / im.seconds:5.0f} MB/s)")
            out.unlink()


if __name__ == "__main__":
    main()
