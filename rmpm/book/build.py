"""Build the book: train the profile's models, execute every notebook with papermill
in a build folder of its own (:mod:`rmpm.book.builds`), record what built it (build
info, :mod:`rmpm.book.manifest`, :mod:`rmpm.book.reproducibility`), then render the
HTML with Jupyter Book 1.x.

``python -m rmpm book --profile smoke`` is what ``make book`` runs. Executed
notebooks go to ``book/_executed`` (never committed); the trained models they
need come from the store, so a second build retrains nothing.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import paths
from ..analysis.populations import TRAINED_VAR, eval_spec, profile_recipes, train_profile
from ..analysis.profiles import Profile, get_profile
from ..atomic import atomic_write_text
from ..pipeline import determinism as DT
from ..pipeline import engine as E
from ..pipeline.data import clear_cache
from ..pipeline.runs import preflight
from ..pipeline.store import ModelEntry, Store
from . import manifest as M
from . import records
from .builds import (STATUS, Build, abandon_build, build_env, fail_build, finish_build,
                     latest_build, new_build, read_status, unfinished, write_status)
from .notebooks import (annotate_figures, error_line, execute, notebook_paths, papermill_status,
                        select_notebooks, show_parameters)
from .provenance import git_commit
from .readable import check_notebooks, rewrite_notebook
from .reproducibility import write_reproducibility_page

TRAINING_TIMING = "training (all notebooks' models)"  # key in timings_s, and the book shows it


class NotebookFailed(RuntimeError):
    """A notebook of a book build raised; the message names the partially executed
    notebook and the build's status file."""


def run_notebooks(profile: str | Profile, only: Sequence[str] | None = None,
                  out_dir: Path | None = None, build: Build | None = None,
                  builds_dir: Path | None = None) -> dict[str, float]:
    """Execute the book's notebooks under ``profile``; returns seconds per notebook.

    Results go to ``build``'s folder (default: a new build under ``builds_dir``,
    see :func:`rmpm.book.builds.new_build`); when every notebook ran, it becomes the
    profile's latest. The notebooks get the profile's name (a papermill parameter) and
    resolve it themselves, in their kernels.

    The build's ``status.json`` records, per notebook, whether it ran in this build or
    was reused (an ``--only`` build inherits the other chapters' results and their
    record from the previous build), its run time and papermill's status; it is
    rewritten after every notebook, so a killed build leaves it too. A failing
    notebook stops the build with :class:`NotebookFailed` naming the partially
    executed notebook papermill wrote (a copy is kept in the build folder, since the
    next build overwrites ``book/_executed``) and the status file; the build is then
    kept as ``.failed-<id>`` (:func:`rmpm.book.builds.fail_build`). A stopped one
    (Ctrl-C, SIGTERM) is removed, and says so in the note of its ``KeyboardInterrupt``.
    """
    p = get_profile(profile)
    out_dir = out_dir or paths.executed_dir()
    nbs = select_notebooks(only)
    prev = latest_build(p.name, builds_dir) if only else None  # what new_build inherits
    build = build or new_build(p, builds_dir, inherit=bool(only))
    commit = git_commit()
    status = {"profile": p.name, "build": build.id, "state": "running",
              "notebooks": _status_entries(nbs, prev, out_dir)}
    write_status(build, status)
    timings: dict[str, float] = {}
    try:
        check_notebooks(nbs)  # their readable citations and figure references, first
        with build_env(build, commit):
            for nb in nbs:
                timings[nb.stem] = _run_one(nb, out_dir / nb.name, p, build, commit, status)
        status["state"] = "finished"
        write_status(build, status)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the build is discarded
        abandon_build(build)
        if not getattr(e, "note", ""):
            e.note = unfinished(build, f"{len(timings)} of {len(nbs)} notebook(s) had run",
                                builds_dir)
        raise
    except NotebookFailed:  # _failed kept the build as failed already
        raise
    except BaseException:
        fail_build(build)
        raise
    finish_build(build)
    return timings


def _run_one(nb: Path, out: Path, p: Profile, build: Build, commit: str,
             status: dict[str, Any]) -> float:
    """Execute notebook ``nb`` into ``out`` and post-process it (its parameter table,
    its figures' provenance); record the outcome in ``status``. A failure keeps the
    build as failed and raises :class:`NotebookFailed`."""
    print(f"[rmpm book] executing {nb.name} (profile={p.name}, build {build.id})", flush=True)
    entry, params = status["notebooks"][nb.stem], {"profile": p.name}
    before = out.stat().st_mtime_ns if out.exists() else None
    t0 = time.perf_counter()
    try:
        seconds = execute(nb, out, params)
    except Exception as e:
        _failed(nb, out, build, status, e, time.perf_counter() - t0,
                fresh=out.exists() and out.stat().st_mtime_ns != before)
    show_parameters(nb, out, params)
    rewrite_notebook(out, nb.stem)  # readable links -> the book's MyST roles
    annotate_figures(out, nb.stem, build.results_dir, build.id, commit)
    entry.update(state="ran", build=build.id, seconds=round(seconds, 1),
                 papermill=papermill_status(out))
    write_status(build, status)
    print(f"[rmpm book]   done in {seconds:.1f} s", flush=True)
    return seconds


def _failed(nb: Path, out: Path, build: Build, status: dict[str, Any], e: Exception,
            seconds: float, fresh: bool) -> NoReturn:
    """Keep a build whose notebook ``nb`` raised as failed, with a copy of what papermill
    wrote of it (``fresh``: it wrote ``out`` in this run; the next build overwrites it),
    record why, and raise :class:`NotebookFailed` saying where to look."""
    build = fail_build(build)  # kept for inspection, under a name of its own
    kept = None
    if fresh:
        kept = build.dir / "failed" / nb.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, kept)
    entry = status["notebooks"][nb.stem]
    entry.update(state="failed", build=build.id, seconds=round(seconds, 1),
                 papermill=papermill_status(out) if fresh else None,
                 error=error_line(e), partial=str(kept) if kept else None)
    status["state"] = "failed"
    spath = write_status(build, status)
    where = (f"the partially executed notebook is {out} (kept as {kept})" if kept
             else "it failed before papermill wrote a notebook")
    raise NotebookFailed(f"{nb.name} failed in build {build.id}: {entry['error']}; {where}; "
                         f"status: {spath}") from None


def _status_entries(selected: list[Path], prev: Build | None,
                    out_dir: Path) -> dict[str, dict[str, Any]]:
    """The initial record: the selected notebooks pending, the others reused from
    ``prev`` (with the record of the build that really ran them)."""
    names = {p.stem for p in selected}
    old = {}
    if prev is not None and (prev.dir / STATUS).is_file():
        old = json.loads((prev.dir / STATUS).read_text()).get("notebooks", {})
    out = {}
    for nb in notebook_paths():
        if nb.stem in names:
            out[nb.stem] = {"state": "pending", "build": None, "seconds": None,
                            "papermill": None, "notebook": str(out_dir / nb.name)}
        elif prev is not None:
            was = old.get(nb.stem, {})
            out[nb.stem] = {"state": "reused", "build": was.get("build") or prev.id,
                            "seconds": was.get("seconds"), "papermill": was.get("papermill"),
                            "notebook": str(out_dir / nb.name)}
    return out


def run_on_engine(runs: Sequence[tuple[Profile, Build]], only: Sequence[str] | None = None,
                  workers: int | None = None, deterministic: bool = True
                  ) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """On one Dask cluster, for each (profile, build) of ``runs`` in order: train the
    profile's models, then execute its notebooks (``only`` applies to the last) into the
    build, with the cluster's address in ``$RMPM_SCHEDULER`` (their ``run_recipes``
    calls submit to it). Returns each run's timings and what ran them."""
    external = E.scheduler_address()
    timings = []
    device = runs[-1][0].device
    with E.serve(workers, deterministic, device) as address, \
            E.environ(DT.kernel_env(deterministic)):
        for i, (p, build) in enumerate(runs):
            t0 = time.perf_counter()
            train_profile(p, device=p.device, deterministic=deterministic, scheduler=address)
            train_s = time.perf_counter() - t0
            # every model is stored now: the chapters load them without re-checking
            with E.environ({TRAINED_VAR: p.name}):
                timings.append({TRAINING_TIMING: train_s, **run_notebooks(
                    p, only if i == len(runs) - 1 else None, build=build)})
        client = E.get_client(scheduler=address)
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    info = {"workers": n, "threads_per_worker": 1, "deterministic": deterministic,
            "scheduler": external or "embedded LocalCluster"}
    return timings, info


def write_build_info(profile: str | Profile, timings: dict[str, float],
                     build: Build | None = None,
                     engine_info: dict[str, Any] | None = None) -> Path:
    """Record what built the book; the reproducibility page and the manifest read it
    (and the build's result files: ``build``, default the profile's latest)."""
    import torch
    p = get_profile(profile)
    build = build or latest_build(p.name)
    gen = paths.generated_dir()
    gen.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    info = {"profile": p.name, "timings_s": timings, "total_s": sum(timings.values()),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.is_available(), "git_commit": commit,
            "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "build": build.id if build else None,
            "results_dir": str(build.results_dir) if build else None,
            "execution": read_status(build),
            **_engine_info(engine_info)}
    path = gen / "build_info.json"
    atomic_write_text(path, json.dumps(info, indent=1))
    if build is not None:
        atomic_write_text(build.dir / "build_info.json", json.dumps(info, indent=1))
        with build_env(build):  # the page and manifest list this build's result files only
            mpath = write_manifest(info, p)
            write_reproducibility_page(info, p)
        # kept with the build too: `rmpm store export` packs the entries it lists
        atomic_write_text(build.dir / "manifest.json", mpath.read_text())
    else:
        write_manifest(info, p)
        write_reproducibility_page(info, p)
    return path


def _engine_info(engine_info: dict[str, Any] | None) -> dict[str, Any]:
    env = DT.kernel_env(bool((engine_info or {}).get("deterministic", True)))
    return {"engine": engine_info or {}, "cpu_model": DT.cpu_model(),
            "cpu_capability_native": DT.cpu_capability(), "libraries": DT.library_versions(),
            "worker_env": env}


def book_recipes(p: Profile) -> list:
    """The recipes whose models the book used: the profile's, and every stored model a
    result file names by its key."""
    recipes = list(profile_recipes(p))
    st, seen = Store(), {r.key() for r in recipes}
    for f in records.result_paths():
        for k in re.findall(r"\b[0-9a-f]{64}\b", f.read_text()):
            md = st.entry_dir("models", k)
            if k not in seen and (md / "model.pt").is_file():
                seen.add(k)
                recipes.append(ModelEntry(md).recipe)
    return recipes


def write_manifest(info: dict[str, Any], p: Profile | None = None) -> Path:
    """``book/_generated/manifest.json``: digests of every model, evaluation and result
    file the book used (see :mod:`rmpm.book.manifest`); ``rmpm verify`` checks against it."""
    p = p or get_profile(info["profile"])
    env = {k: info.get(k) for k in ("profile", "build", "git_commit", "built", "cpu_model",
                                    "cpu_capability_native", "libraries", "engine",
                                    "worker_env")}
    m = M.compute(book_recipes(p), eval_spec(p).key(), environment=env)
    return M.write(m, paths.generated_dir() / "manifest.json")


def build_html(strict: bool = True) -> Path:
    """Render the executed notebooks and pages with Jupyter Book 1.x."""
    root = paths.repo_root()
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(root), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True, cwd=root)
    return root / "_build" / "html" / "index.html"


def build_book(profile: str | Profile, only: Sequence[str] | None = None, strict: bool = True,
               clean: bool = False, workers: int | None = None,
               deterministic: bool = True) -> Path:
    """Execute all notebooks under ``profile`` and build the HTML book.

    First makes sure every data set of the profile can be loaded (see
    :func:`rmpm.pipeline.data.ensure`), so a missing one stops the build before any work.
    Training runs on the Dask engine (:mod:`rmpm.pipeline.engine`): one cluster of
    ``workers`` processes for the whole build, which first trains every model
    the profile needs at once and then serves the notebooks' kernels. A profile that
    is compared with another (``compare_with``) whose build is not here builds that
    one's notebooks first, on the same cluster and store (its build folder and
    manifest are its own; the HTML is this profile's book).
    """
    p = get_profile(profile)
    select_notebooks(only)  # bad names stop here, before any work
    first = [get_profile(p.compare_with)] if (p.compare_with and
                                              latest_build(p.compare_with) is None) else []
    # so do a store that cannot be written and a missing data set
    preflight([ds for q in (*first, p) for ds in q.datasets])
    clear_cache()  # the notebooks' kernels load what they need; this process needs none
    if clean:
        shutil.rmtree(paths.executed_dir(), ignore_errors=True)
    t0 = time.perf_counter()
    runs = [(q, new_build(q)) for q in first] + [(p, new_build(p, inherit=bool(only)))]
    try:
        timings, engine_info = run_on_engine(runs, only, workers, deterministic)
    except BaseException as e:
        for _, b in runs:
            abandon_build(b)
        if isinstance(e, KeyboardInterrupt) and not getattr(e, "note", ""):
            e.note = unfinished(runs[-1][1], "no notebook had run")
        raise
    for (q, b), t in zip(runs, timings):  # this profile's last: its manifest and page stay
        write_build_info(q, t, b.as_finished(), engine_info)
    index = build_html(strict)
    mpath = paths.generated_dir() / "manifest.json"
    if mpath.is_file() and index.parent.is_dir():  # published next to the book
        shutil.copyfile(mpath, index.parent / "manifest.json")
    for (q, _), t in zip(runs, timings):
        train_s = t.get(TRAINING_TIMING, 0.0)
        print(f"[rmpm book] profile {q.name}: training and evaluation {train_s:.0f} s, "
              f"notebooks {sum(t.values()) - train_s:.0f} s")
    print(f"[rmpm book] total {time.perf_counter() - t0:.0f} s; the book ({p.name}) is at {index}")
    return index
