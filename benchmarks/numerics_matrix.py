"""Which result-file numbers depend on the machine: run the book's chapters under
several kernel environments and compare their result files field by field.

Each *setting* is an environment for the notebook kernel (a base, then a few
variables changed: BLAS threads, the BLAS kernel, torch threads, numpy's SIMD
dispatch); each chapter is executed with papermill, as ``rmpm book`` does, into a
results folder of the setting's own. The report lists, per setting and chapter, the
content digest (:func:`rmpm.book.records.content_digest`, what ``rmpm verify``
compares), the seconds the chapter took, and every field that differs from the
first setting (or from a manifest), with the largest difference.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/numerics_matrix.py --chapters 01 \\
        --settings base,blas2,sandybridge,torch2,avx2 --base today

``--base today`` is the notebooks' kernel environment before issue 26 (the worker
pins and ``OPENBLAS_CORETYPE=Haswell``); ``--base pinned`` is :func:`rmpm.pipeline.determinism.kernel_env`. ``--busy``
keeps a second process spinning on one core while the chapters run. With
``--settings base,native_simd,native_simd#2,base#2`` repeats settings (an ABBA
order, to time the pinning against the machine's load). With
``--fresh-derived`` the chapters read models and evaluations from ``--store`` but
compute the population measures (the store's ``derived/`` cache) themselves, in an
overlay folder of their own, so those numbers are exercised too; the store itself
is only read.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: variables changed on top of the base, per setting (None: unset)
SETTINGS: dict[str, dict[str, str | None]] = {
    "base": {},
    "blas2": {"OPENBLAS_NUM_THREADS": "2"},
    "sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge"},
    "skylakex": {"OPENBLAS_CORETYPE": "SkylakeX"},
    "zen": {"OPENBLAS_CORETYPE": "Zen"},
    "coretype_unset": {"OPENBLAS_CORETYPE": None},  # OpenBLAS picks for the CPU
    "l2_4096": {"OPENBLAS_L2_SIZE": "4096"},
    "torch2": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    # numpy's dispatch restricted to what an AVX2 (x86-64-v3) machine has
    "avx2": {"NPY_ENABLE_CPU_FEATURES": "X86_V3", "NPY_DISABLE_CPU_FEATURES": None},
    # numpy's dispatch as the machine allows (undoes a pin in the base)
    "native_simd": {"NPY_ENABLE_CPU_FEATURES": None, "NPY_DISABLE_CPU_FEATURES": None},
    "all2": {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
             "OPENBLAS_CORETYPE": "Sandybridge"},
}


def base_env(which: str) -> dict[str, str]:
    if which == "today":  # the notebooks' kernel environment up to a472bfa (issue 26)
        from rmpm.pipeline.determinism import worker_env
        return {**worker_env(True), "OPENBLAS_CORETYPE": "Haswell"}
    if which == "pinned":
        from rmpm.pipeline.determinism import kernel_env
        return kernel_env(True)
    if which == "none":
        return {}
    raise SystemExit(f"--base {which}: today, pinned or none")


def flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def differences(a, b) -> list[tuple[str, object, object, float | None]]:
    """Fields of ``a`` and ``b`` (result values) that differ: (path, a, b, |a - b|)."""
    from rmpm.book.records import stable as _stable  # what the digest covers: no timings
    fa, fb = flatten(_stable(a)), flatten(_stable(b))
    out = []
    for k in sorted(set(fa) | set(fb)):
        x, y = fa.get(k, "<missing>"), fb.get(k, "<missing>")
        if x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
            continue
        num = (isinstance(x, (int, float)) and isinstance(y, (int, float))
               and not isinstance(x, bool) and not isinstance(y, bool))
        out.append((k, x, y, abs(x - y) if num else None))
    return out


def overlay_store(store: Path, where: Path) -> Path:
    """A store that reads ``store``'s models and evaluations and keeps its own
    ``derived/`` and ``locks/``."""
    where.mkdir(parents=True, exist_ok=True)
    for kind in ("models", "evals"):
        (where / kind).symlink_to(store.resolve() / kind)
    return where


def run_setting(name: str, env: dict[str, str | None], chapters: list[Path], profile: str,
                store: Path, out: Path, fresh_derived: bool) -> dict[str, dict]:
    import papermill as pm

    from rmpm.book.records import content_digest as values_digest
    from rmpm.analysis.populations import TRAINED_VAR
    results = out / name / "results"
    results.mkdir(parents=True)
    st = overlay_store(store, out / name / "store") if fresh_derived else store
    full = {**os.environ, "RMPM_RESULTS": str(results), "RMPM_REPORTS": str(out / name / "reports"),
            "RMPM_BUILD": f"numerics-{name}", "RMPM_STORE": str(st), TRAINED_VAR: profile,
            "RMPM_CACHE": str(out / name / "cache"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    report = {}
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(full)
    try:
        for nb in chapters:
            t0 = time.perf_counter()
            pm.execute_notebook(str(nb), str(out / name / nb.name), parameters={"profile": profile},
                                kernel_name="rmpm", cwd=str(nb.parent), progress_bar=False,
                                shutdown_kernel="immediate")
            secs = time.perf_counter() - t0
            doc = json.loads((results / f"{nb.stem}.json").read_text())
            report[nb.stem] = {"seconds": round(secs, 1), "digest": values_digest(doc["values"]),
                               "values": doc["values"]}
            print(f"  {name:14s} {nb.stem:28s} {secs:7.1f} s  {report[nb.stem]['digest'][:12]}",
                  flush=True)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chapters", default="01", help="comma-separated chapter numbers")
    ap.add_argument("--settings", default="base,blas2,sandybridge,torch2,avx2")
    ap.add_argument("--base", default="today", help="today | pinned | none")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--store", default=os.environ.get("RMPM_STORE", "/work/store"))
    ap.add_argument("--fresh-derived", action="store_true")
    ap.add_argument("--busy", action="store_true", help="spin a second process while running")
    ap.add_argument("--manifest", help="compare against this manifest's result values too")
    ap.add_argument("--keep", help="keep the run folders here (default: a temp folder, removed)")
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args(argv)

    from rmpm.book.notebooks import notebook_paths
    nbs = [p for p in notebook_paths() if p.name[:2] in a.chapters.split(",")]
    names = a.settings.split(",")
    base = base_env(a.base)
    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="rmpm-numerics-"))
    busy = None
    if a.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    report: dict[str, dict] = {}
    try:
        for name in names:
            env = {**base, **SETTINGS[name.split("#")[0]]}  # base#2: base again
            report[name] = run_setting(name, env, nbs, a.profile, Path(a.store), out, a.fresh_derived)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)

    refs = {names[0]: report[names[0]]}
    if a.manifest:
        m = json.loads(Path(a.manifest).read_text())
        refs["manifest"] = {k: {"digest": v["digest"], "values": v["values"]}
                            for k, v in m["results"].items()}
    print(f"\nbase: {a.base} = {' '.join(f'{k}={v}' for k, v in base.items())}")
    for ref_name, ref in refs.items():
        print(f"\nagainst {ref_name}:")
        for name in names:
            for ch, r in report[name].items():
                if ch not in ref:
                    continue
                diff = differences(ref[ch]["values"], r["values"])
                same = r["digest"] == ref[ch]["digest"]
                print(f"  {name:14s} {ch:28s} {'same' if same else 'DIFFERS'}"
                      + ("" if same else f": {len(diff)} field(s)"))
                for path, x, y, d in diff[:12]:
                    print(f"      {path}: {x!r} -> {y!r}" + (f"  (|d| {d:.2e})" if d is not None else ""))
                if len(diff) > 12:
                    print(f"      ... and {len(diff) - 12} more")
    times = {name: sum(r["seconds"] for r in report[name].values()) for name in names}
    print("\nseconds per setting:", {k: round(v, 1) for k, v in times.items()})
    by = {}
    for name, t in times.items():
        by.setdefault(name.split("#")[0], []).append(t)
    if any(len(v) > 1 for v in by.values()):  # repeated settings (ABBA): their totals
        print("seconds per setting, all its runs:", {k: round(sum(v), 1) for k, v in by.items()})
    if a.json:
        Path(a.json).write_text(json.dumps({"base": base, "report": report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
