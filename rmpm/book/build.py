"""Build the book: execute every notebook with papermill under a profile, then
render them with Jupyter Book 1.x.

``python -m rmpm book --profile smoke`` is what ``make book`` runs. Executed
notebooks go to ``book/_executed`` (never committed); the trained models they
need come from the store, so a second build retrains nothing.

Every build writes its result files to a folder of its own,
``book/_generated/builds/<profile>/<build id>/results/`` (see :mod:`rmpm.book.records`),
and its reports (chapter 7) to ``reports/`` beside them; the book's pages read only
that folder; ``latest`` in the profile's folder names the last build that executed
all its notebooks. ``--only`` starts a new build from a copy of the latest one's
results, so it never rewrites a finished build either.

A build in progress lives in a hidden ``.partial-<build id>`` folder, claimed by its
process (:class:`rmpm.pipeline.claims.Claim`), and is renamed to its id only when
every notebook has run, just before ``latest`` names it. A stopped build (Ctrl-C,
SIGTERM) is removed; a failed one is kept for inspection as ``.failed-<build id>``
(its status file and the failed notebook); one killed outright leaves its hidden
partial folder, which the next build, finding its claim expired, moves to
``.failed-<build id>`` too. So nothing that looks like a finished build is ever
left half done.
"""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from .._checks import check_choice
from .profiles import Profile, get_profile
from ..atomic import atomic_write_text

KERNEL_NAME = "rmpm"
TRAINING_TIMING = "training (all notebooks' models)"  # key in timings_s, and the book shows it


def notebook_paths() -> list[Path]:
    """The book's notebooks, in chapter order (their file names start with the number)."""
    return sorted(paths.notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its ``parameters`` cell, with defaults."""
    import papermill as pm
    return {k: v["default"] for k, v in pm.inspect_notebook(str(path)).items()}


def check_parameters(path: Path, params: dict[str, Any]) -> None:
    """Refuse parameters the notebook does not declare (papermill would only warn),
    and values that break :func:`rmpm.book.chapter.check_values` (the same check the
    notebook itself makes when it runs), before anything is executed."""
    from .chapter import check_values
    declared = notebook_parameters(path)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"{path.name} has no parameter(s) {', '.join(unknown)}; "
                         f"its parameters are: {', '.join(sorted(declared))}")
    # papermill reports defaults as source text, e.g. '"smoke"'
    profile = params["profile"] if "profile" in params else ast.literal_eval(declared["profile"])
    check_values(Path(path), {**params, "profile": profile})


def kernel_name() -> str:
    """The project kernel if it is registered, else the current interpreter's ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager
    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def execute(path: Path, out: Path, params: dict[str, Any], cwd: Path | None = None,
            progress: bool = False) -> float:
    """Execute one notebook with papermill; returns the seconds it took.

    A failing cell raises (papermill's PapermillExecutionError), after writing
    the partially executed notebook to ``out`` for inspection.
    """
    import papermill as pm
    check_parameters(path, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the kernel is killed, not asked to shut down, once its cells have run (their
    # files are written by then) or when the build is stopped: a kernel asked to shut
    # down in the middle of a cell prints a traceback of its own
    pm.execute_notebook(str(path), str(out), parameters=params, kernel_name=kernel_name(),
                        cwd=str(cwd or path.parent), progress_bar=progress,
                        shutdown_kernel="immediate")
    return time.perf_counter() - t0


def select_notebooks(only: Sequence[str] | None = None) -> list[Path]:
    """The notebooks named in ``only`` (None: all), checked before any work."""
    nbs = notebook_paths()
    if only is None:
        return nbs
    names = [p.stem for p in nbs]
    if not only:
        raise ValueError(f"only={list(only)!r} names no notebook; choose from: "
                         f"{', '.join(names)} (or None for all)")
    for o in only:
        check_choice("notebook", o, names)
    return [p for p in nbs if p.stem in only]


PARTIAL, FAILED = ".partial-", ".failed-"


@dataclass(frozen=True)
class Build:
    """One book build: its id and the folder its files live in now (the hidden
    ``.partial-<id>`` folder until it is finished, see :func:`finish_build`)."""

    profile: str
    id: str
    dir: Path

    @property
    def results_dir(self) -> Path:
        return self.dir / "results"

    @property
    def reports_dir(self) -> Path:
        """Reports the chapters save as files (chapter 7's), this build's own."""
        return self.dir / "reports"

    @property
    def finished(self) -> bool:
        return self.dir.name == self.id

    def as_finished(self) -> "Build":
        """The same build where it lives once finished."""
        return Build(self.profile, self.id, self.dir.parent / self.id)


def builds_root() -> Path:
    return paths.generated_dir() / "builds"


def latest_build(profile: str, root: Path | None = None) -> Build | None:
    """The last build of ``profile`` that executed all of its notebooks."""
    d = (root or builds_root()) / profile
    try:
        bid = (d / "latest").read_text().strip()
    except FileNotFoundError:
        return None
    return Build(profile, bid, d / bid) if bid and (d / bid).is_dir() else None


#: claims of the builds this process has in progress, by build id
_IN_PROGRESS: dict[str, Any] = {}


def _partial_claim(folder: Path):
    from ..pipeline.claims import Claim
    return Claim(folder.with_name(folder.name + ".lock"))


def sweep_partial_builds(profile: str, root: Path | None = None) -> int:
    """Move the partial folders of ``profile``'s builds whose process is gone (its
    claim expired: killed, crashed) aside as failed builds, their status marked
    ``killed``; a build still running keeps its claim, and its folder. Returns how
    many were moved."""
    n = 0
    for folder in sorted(((root or builds_root()) / profile).glob(f"{PARTIAL}*")):
        if not folder.is_dir():
            continue
        claim = _partial_claim(folder)
        if claim.try_acquire():
            try:
                b = Build(profile, folder.name[len(PARTIAL):], folder)
                failed = fail_build(b)
                status = _read_status(failed)
                if status is not None:
                    _write_status(failed, {**status, "state": "killed"})
                n += 1
            finally:
                claim.release()
                claim.path.unlink(missing_ok=True)  # nobody else ever claims this build id
    return n


def new_build(profile: str | Profile, root: Path | None = None, inherit: bool = False) -> Build:
    """A fresh build, in progress (in its hidden partial folder, claimed by this process,
    until :func:`finish_build`); with ``inherit`` it starts with a copy of the latest
    build's results (for ``--only``: the other chapters' results stay available).
    Partial folders of builds whose process died are removed first."""
    name = get_profile(profile).name
    d = (root or builds_root()) / name
    d.mkdir(parents=True, exist_ok=True)
    sweep_partial_builds(name, root)
    bid = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    b = Build(name, bid, d / f"{PARTIAL}{bid}")
    claim = _partial_claim(b.dir)
    claim.try_acquire()  # a fresh id: nobody else holds it
    _IN_PROGRESS[bid] = claim
    b.results_dir.mkdir(parents=True)
    prev = latest_build(name, root) if inherit else None
    if prev is not None and prev.results_dir.is_dir():
        for f in prev.results_dir.glob("*.json"):
            shutil.copy2(f, b.results_dir / f.name)
    return b


def finish_build(b: Build) -> Build:
    """Publish a build whose notebooks all ran: its folder gets its id's name, then
    ``latest`` names it (in that order, so ``latest`` only ever names a finished build)."""
    if b.finished:
        return b
    done = b.as_finished()
    b.dir.rename(done.dir)
    atomic_write_text(done.dir.parent / "latest", done.id + "\n")
    _release(b)
    return done


def fail_build(b: Build) -> Build:
    """Keep an unfinished build that failed, for inspection, as ``.failed-<id>`` (never
    named by ``latest``); returns it where it now is."""
    if not b.dir.name.startswith(PARTIAL):
        return b
    failed = Build(b.profile, b.id, b.dir.with_name(f"{FAILED}{b.id}"))
    b.dir.rename(failed.dir)
    _release(b)
    return failed


def abandon_build(b: Build) -> None:
    """Remove a stopped build's partial folder (its results are never used); a
    finished or failed build is left alone."""
    if b.dir.name.startswith(PARTIAL):
        shutil.rmtree(b.dir, ignore_errors=True)
    _release(b)


def _release(b: Build) -> None:
    claim = _IN_PROGRESS.pop(b.id, None)
    if claim is not None:
        claim.release()
        claim.path.unlink(missing_ok=True)


@contextmanager
def build_env(b: Build, commit: str | None = None) -> Iterator[Build]:
    """Point this process (and the notebook kernels it starts, which inherit the
    environment) at the build's results and reports folders; with ``commit``, tell them
    the commit the build runs from (``RMPM_COMMIT``, for the verdicts' provenance)."""
    from ..pipeline.engine import environ
    env = {"RMPM_RESULTS": str(b.results_dir), "RMPM_REPORTS": str(b.reports_dir),
           "RMPM_BUILD": b.id}
    with environ({**env, "RMPM_COMMIT": commit} if commit else env):
        yield b


def show_parameters(path: Path, out: Path, params: dict[str, Any]) -> None:
    """In the executed copy ``out`` of ``path``, replace papermill's two parameter cells
    (the notebook's defaults, then the injected values) by one table of the values the
    page ran with (:func:`rmpm.book.chapter.present_parameters`), and give each captioned
    figure cell its image alone (:func:`rmpm.book.chapter.split_figure_outputs`)."""
    import nbformat
    import papermill as pm

    from .chapter import present_parameters, split_figure_outputs
    nb = present_parameters(nbformat.read(out, as_version=4),
                            pm.inspect_notebook(str(path)), params)
    atomic_write_text(out, nbformat.writes(split_figure_outputs(nb)))


class NotebookFailed(RuntimeError):
    """A notebook of a book build raised; the message names the partially executed
    notebook and the build's status file."""


#: the execution record of a build, in its folder (see :func:`run_notebooks`)
STATUS = "status.json"


def papermill_status(path: Path) -> str | None:
    """What papermill recorded in executed notebook ``path``: ``completed``, ``failed``
    (naming the cell as papermill does, by its execution count), or None if it holds no
    papermill record."""
    try:
        nb = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    pm_meta = nb.get("metadata", {}).get("papermill")
    if not pm_meta:
        return None
    if not pm_meta.get("exception"):
        return "completed"
    failed = [c.get("execution_count") for c in nb.get("cells", [])
              if c.get("metadata", {}).get("papermill", {}).get("status") == "failed"]
    return f"failed at In [{failed[0]}]" if failed else "failed"


def _write_status(build: Build, status: dict[str, Any]) -> Path:
    path = build.dir / STATUS
    atomic_write_text(path, json.dumps(status, indent=1))
    return path


def _one_line(e: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError
    if isinstance(e, PapermillExecutionError):
        value = (e.evalue or "").strip().splitlines()
        return f"In [{e.exec_count}] raised {e.ename}: {value[0] if value else ''}".strip()
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def run_notebooks(profile: str | Profile, only: Sequence[str] | None = None,
                  out_dir: Path | None = None, build: Build | None = None,
                  builds_dir: Path | None = None) -> dict[str, float]:
    """Execute the book's notebooks under ``profile``; returns seconds per notebook.

    Results go to ``build``'s folder (default: a new build under ``builds_dir``,
    see :func:`new_build`); when every notebook ran, it becomes the profile's latest.
    The notebooks get the profile's name (a papermill parameter) and resolve it
    themselves, in their kernels.

    The build's ``status.json`` records, per notebook, whether it ran in this build or
    was reused (an ``--only`` build inherits the other chapters' results and their
    record from the previous build), its run time and papermill's status; it is
    rewritten after every notebook, so a killed build leaves it too. A failing
    notebook stops the build with :class:`NotebookFailed` naming the partially
    executed notebook papermill wrote (a copy is kept in the build folder, since the
    next build overwrites ``book/_executed``) and the status file; the build is then
    kept as ``.failed-<id>`` (:func:`fail_build`). A stopped one (Ctrl-C, SIGTERM) is
    removed, and says so in the note of its ``KeyboardInterrupt``.
    """
    p = get_profile(profile)
    out_dir = out_dir or paths.executed_dir()
    nbs = select_notebooks(only)
    prev = latest_build(p.name, builds_dir) if only else None  # what new_build inherits
    build = build or new_build(p, builds_dir, inherit=bool(only))
    commit = git_commit()
    status = {"profile": p.name, "build": build.id, "state": "running",
              "notebooks": _status_entries(nbs, prev, out_dir)}
    _write_status(build, status)
    timings = {}
    params = {"profile": p.name}
    from .readable import check_notebooks, rewrite_notebook
    try:
        check_notebooks(nbs)  # their readable citations and figure references, first
        with build_env(build, commit):
            for nb in nbs:
                print(f"[rmpm book] executing {nb.name} (profile={p.name}, build {build.id})",
                      flush=True)
                out, entry = out_dir / nb.name, status["notebooks"][nb.stem]
                before = out.stat().st_mtime_ns if out.exists() else None
                t0 = time.perf_counter()
                try:
                    timings[nb.stem] = execute(nb, out, params)
                except Exception as e:
                    build = fail_build(build)  # kept for inspection, under a name of its own
                    fresh = out.exists() and out.stat().st_mtime_ns != before
                    kept = None
                    if fresh:  # papermill wrote what ran so far; the next build overwrites it
                        kept = build.dir / "failed" / nb.name
                        kept.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(out, kept)
                    entry.update(state="failed", build=build.id,
                                 seconds=round(time.perf_counter() - t0, 1),
                                 papermill=papermill_status(out) if fresh else None,
                                 error=_one_line(e), partial=str(kept) if kept else None)
                    status["state"] = "failed"
                    spath = _write_status(build, status)
                    where = (f"the partially executed notebook is {out} (kept as {kept})" if kept
                             else "it failed before papermill wrote a notebook")
                    raise NotebookFailed(f"{nb.name} failed in build {build.id}: "
                                         f"{entry['error']}; {where}; status: {spath}") from None
                show_parameters(nb, out, params)
                rewrite_notebook(out, nb.stem)  # readable links -> the book's MyST roles
                annotate_figures(out, nb.stem, build, commit)
                entry.update(state="ran", build=build.id, seconds=round(timings[nb.stem], 1),
                             papermill=papermill_status(out))
                _write_status(build, status)
                print(f"[rmpm book]   done in {timings[nb.stem]:.1f} s", flush=True)
        status["state"] = "finished"
        _write_status(build, status)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the build is discarded
        abandon_build(build)
        if not getattr(e, "note", ""):
            e.note = _unfinished(build, f"{len(timings)} of {len(nbs)} notebook(s) had run",
                                 builds_dir)
        raise
    except BaseException:
        fail_build(build)
        raise
    finish_build(build)
    return timings


def _unfinished(b: Build, done: str, root: Path | None = None) -> str:
    """What a stopped build leaves: for the one line a stopped ``rmpm book`` prints."""
    latest = latest_build(b.profile, root)
    return (f"build {b.id} was not finished ({done}) and is discarded; the latest "
            f"{b.profile} build is still {latest.id if latest else 'none'}")


def git_commit() -> str:
    """The checkout's commit, marked when tracked files have uncommitted changes."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=paths.repo_root()).stdout.strip()
    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return commit


def annotate_figures(out: Path, name: str, build: Build, commit: str) -> None:
    """Under every numbered figure of executed notebook ``out``, its provenance line
    (:mod:`rmpm.book.provenance`): this notebook, the rmpm functions the cell calls,
    the chapter's result file and its content digest (the manifest's), the build and
    the commit."""
    import nbformat

    from .provenance import add_figure_provenance, result_digest
    digest = result_digest(build.results_dir / f"{name}.json")
    nb = add_figure_provenance(nbformat.read(out, as_version=4), name,
                               name if digest else None, digest, build.id, commit)
    atomic_write_text(out, nbformat.writes(nb))


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


def kernel_env(deterministic: bool = True) -> dict[str, str]:
    """Environment of the notebooks' kernels: in deterministic mode pinned like the
    workers (the kernels compute the result files from stored arrays), plus
    OpenBLAS (numpy's and scipy's linear algebra) pinned to its AVX2 kernels."""
    from ..pipeline.determinism import worker_env
    env = worker_env(deterministic)
    if deterministic:
        env["OPENBLAS_CORETYPE"] = "Haswell"
    return env


def run_on_engine(p: Profile, only: Sequence[str] | None = None, workers: int | None = None,
                  deterministic: bool = True,
                  build: Build | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Train the profile's models on one Dask cluster, then execute the notebooks
    with that cluster's address in ``$RMPM_SCHEDULER`` (their ``run_recipes``
    calls submit to it). Returns the notebook timings and what ran them."""
    from ..pipeline import engine as E
    from .populations import TRAINED_VAR, train_profile
    external = E.scheduler_address()
    with E.serve(workers, deterministic, p.device) as address, E.environ(kernel_env(deterministic)):
        t0 = time.perf_counter()
        train_profile(p, device=p.device, deterministic=deterministic, scheduler=address)
        train_s = time.perf_counter() - t0
        client = E.get_client(scheduler=address)
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        # every model is stored now: the chapters load them without re-checking
        with E.environ({TRAINED_VAR: p.name}):
            timings = {TRAINING_TIMING: train_s,
                       **run_notebooks(p, only, build=build)}
    info = {"workers": n, "threads_per_worker": 1, "deterministic": deterministic,
            "scheduler": external or "embedded LocalCluster"}
    return timings, info


def write_build_info(profile: str | Profile, timings: dict[str, float],
                     build: Build | None = None,
                     engine_info: dict[str, Any] | None = None) -> Path:
    """Record what built the book; the reproducibility page and the manifest read it
    (and the build's result files: ``build``, default the profile's latest)."""
    import platform

    import torch
    p = get_profile(profile)
    build = build or latest_build(p.name)
    gen = paths.generated_dir()
    gen.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    info = {"profile": p.name, "timings_s": timings, "total_s": sum(timings.values()),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": __import__("os").cpu_count(),
            "cuda": torch.cuda.is_available(), "git_commit": commit,
            "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "build": build.id if build else None,
            "results_dir": str(build.results_dir) if build else None,
            "execution": _read_status(build),
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


def _read_status(build: Build | None) -> dict[str, Any] | None:
    try:
        return json.loads((build.dir / STATUS).read_text()) if build is not None else None
    except (OSError, ValueError):
        return None


def _engine_info(engine_info: dict[str, Any] | None) -> dict[str, Any]:
    from ..pipeline import determinism as DT
    env = kernel_env(bool((engine_info or {}).get("deterministic", True)))
    return {"engine": engine_info or {}, "cpu_model": DT.cpu_model(),
            "cpu_capability_native": DT.cpu_capability(), "libraries": DT.library_versions(),
            "worker_env": env}


def book_recipes(p: Profile) -> list:
    """The recipes whose models the book used: the profile's, and every stored model a
    result file names by its key."""
    import re

    from . import records
    from .populations import profile_recipes
    from ..pipeline.store import ModelEntry, Store
    recipes = list(profile_recipes(p))
    st, seen = Store(), {r.key() for r in recipes}
    d = records.results_dir()
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        for k in re.findall(r"\b[0-9a-f]{64}\b", f.read_text()):
            md = st.root / "models" / k[:2] / k
            if k not in seen and (md / "model.pt").is_file():
                seen.add(k)
                recipes.append(ModelEntry(md).recipe)
    return recipes


def write_manifest(info: dict[str, Any], p: Profile | None = None) -> Path:
    """``book/_generated/manifest.json``: digests of every model, evaluation and result
    file the book used (see :mod:`rmpm.book.manifest`); ``rmpm verify`` checks against it."""
    from . import manifest as M
    from .populations import eval_spec
    p = p or get_profile(info["profile"])
    env = {k: info.get(k) for k in ("profile", "build", "git_commit", "built", "cpu_model",
                                    "cpu_capability_native", "libraries", "engine",
                                    "worker_env")}
    m = M.build(book_recipes(p), eval_spec(p).key(), environment=env)
    return M.write(m, paths.generated_dir() / "manifest.json")


def reproducibility_page(info: dict[str, Any], p: Profile | None = None) -> str:
    """Markdown for the reproducibility page, from the build info and the result files."""

    from . import records
    from .populations import eval_spec
    from .provenance import result_digests
    p = p or get_profile(info["profile"])
    lines = [
        "# Reproducibility", "",
        f"This book was built with profile **`{p.name}`** ({p.description}) on "
        f"{info['built']}, from git commit `{info['git_commit']}`.", "",
        "## Commands", "",
        "```bash",
        f"make book PROFILE={p.name}      # set up, execute every notebook, build this book",
        "make test                       # set up, run the tests",
        f"python -m rmpm book --profile {p.name}   # the same build inside the environment",
        f"python -m rmpm train --profile {p.name}  # only train the profile's models",
        "```", "",
        "## Environment", "",
        "| component | version |", "|---|---|",
        f"| Python | {info['python']} |", f"| PyTorch | {info['torch']} |",
        f"| platform | {info['platform']} |", f"| CPU cores | {info['cpu_count']} |",
        f"| CUDA available | {info['cuda']} |", "",
        *compute_section(info),
        "## Profile", "",
        "| setting | value |", "|---|---|",
        f"| data sets | {', '.join(p.datasets)} |",
        f"| replicates per population | {p.replicates} |",
        f"| reference population size | {p.reference_seeds} |",
        f"| SVCCA variance kept | {p.svcca_keep} |",
        f"| bootstrap resamples | {p.n_boot} |",
        f"| evaluation spec | `{json.dumps(eval_spec(p).to_dict())}` |",
        f"| evaluation spec key | `{eval_spec(p).key()}` |",
        "", "Base recipe of the factor populations, and the reference recipe, per data set:", "",
    ]
    for ds in p.datasets:
        lines += [f"- `{ds}` base: `{json.dumps(p.base[ds].to_dict())}`",
                  f"- `{ds}` reference: `{json.dumps(p.reference[ds].to_dict())}`"]
    lines += ["", "Factors and their values (seed-like factors: offsets added to the "
              "replicate's seed):", "", "| factor | values |", "|---|---|"]
    lines += [f"| {f} | {', '.join(map(str, v))} |" for f, v in p.factors.items()]
    lines += execution_section(info)
    lines += ["", "## Timings", "", "| notebook | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in info["timings_s"].items()]
    where = (f"build `{info['build']}`, `book/_generated/builds/{p.name}/{info['build']}/results/`"
             if info.get("build") else f"`{records.results_dir()}`")
    content = result_digests()
    lines += [f"| **total** | **{info['total_s']:.1f}** |", "",
              "## Result files", "",
              f"Every number in the Claims page is read from one of these files ({where}; "
              "runs outside a book build write elsewhere and cannot change them); the build "
              "that wrote each, and two digests: the **content** SHA-256 of its values, "
              "which the manifest lists, `rmpm verify` compares and every provenance line "
              "names, and the SHA-256 of the file, which also covers when it was written "
              "(so it differs between two builds of the same numbers):", "",
              "| result | written by build | content SHA-256 | file SHA-256 |",
              "|---|---|---|---|"]
    lines += [f"| {k} | `{records.load(k).get('build', '?')}` | `{content.get(k)}` | `{v}` |"
              for k, v in records.digests().items()]
    lines += ["", "Trained models and evaluations live in the content-addressed store "
              "(`rmpm.paths.store_root()`), keyed by the SHA-256 of their recipe; the "
              "result files list the keys of the models they used.", ""]
    lines += backlinks_section(info)
    return "\n".join(lines)


def backlinks_section(info: dict[str, Any]) -> list[str]:
    """The page's table of every numbered figure and every verdict, each linked to where
    it stands in the book, with what computed it and the result file it depends on
    (what its provenance line says; :mod:`rmpm.book.provenance`)."""
    from .claims import verdict_provenance
    from .provenance import BACKLINKS_TITLE, figure_records, ident, verdict_anchor
    figures = figure_records([paths.executed_dir() / p.name for p in notebook_paths()])
    verdicts = verdict_provenance(info.get("build"), info.get("git_commit"))

    def result(name: str | None, digest: str | None) -> str:
        if not name:
            return "none (the chapter saves no result)"
        return ident(f"{name}.json") + " <br>" + (ident(f"{digest[:16]}…") if digest
                                                  else "not written")
    # three columns, names that break after their dots (ident): five did not fit the page
    lines = [f"## {BACKLINKS_TITLE}", "",
             "Every numbered figure has a provenance line under it, and every verdict on the "
             "Claims page one in its row: the notebook (with its executed `.ipynb` to "
             "download), the `rmpm` functions that computed it, the result file it depends on "
             "and that file's content SHA-256 (as in the manifest), the build and the commit. "
             "They are all listed here, each linked to where it stands:", "",
             "| figure or verdict | computed by | result, content SHA-256 |",
             "|---|---|---|"]
    for f in figures:
        calls = ", ".join(ident(c) for c in f.get("calls") or []) or "(no rmpm call)"
        lines.append(f"| {{numref}}`{f['figure']}` <br>in [{f['notebook']}](../_executed/"
                     f"{f['notebook']}.ipynb) | {calls} | "
                     f"{result(f.get('result'), f.get('digest'))} |")
    for c, v in verdicts.items():
        # a raw link: a table row cannot carry a Sphinx label
        link = f'<a href="../_executed/08_claims.html#{verdict_anchor(c)}">verdict {c}</a>'
        lines.append(f"| {link} <br>evidence from [{v['chapter']}](../_executed/"
                     f"{v['chapter']}.ipynb) | evidence {ident(v['evidence'])}; "
                     f"rule {', '.join(ident(r) for r in v['rules'])} | "
                     f"{result(v['result'], v['digest'])} |")
    return lines + [""]


def execution_section(info: dict[str, Any]) -> list[str]:
    """The page's "Execution status": per notebook, whether it ran in this build or was
    reused from an earlier one (an ``--only`` build), its run time and papermill's status."""
    status = info.get("execution")
    if not status:
        return []
    here = status.get("build")
    lines = ["", "## Execution status", "",
             f"Every chapter is a notebook executed by papermill. Build `{here}` "
             + ("executed all of them." if all(e["state"] == "ran" for e in
                                               status["notebooks"].values())
                else "executed those marked *ran*; the others are *reused*: their results "
                     "and pages come from the earlier build named (an `--only` build)."), "",
             "| notebook | in this build | executed by build | run time (s) | papermill status |",
             "|---|---|---|---|---|"]
    for name, e in status["notebooks"].items():
        secs = "" if e.get("seconds") is None else f"{e['seconds']:.1f}"
        lines.append(f"| [{name}](../_executed/{name}.ipynb) | {e['state']} | "
                     f"`{e.get('build') or '?'}` | {secs} | {e.get('papermill') or 'unknown'} |")
    return lines


def compute_section(info: dict[str, Any]) -> list[str]:
    """The page's "How the numbers were computed" and "Manifest" sections."""
    eng = info.get("engine") or {}
    if not eng:
        return []
    det = eng.get("deterministic", True)
    env = info.get("worker_env", {})
    lines = [
        "## How the numbers were computed", "",
        "| setting | value |", "|---|---|",
        f"| CPU | {info.get('cpu_model', 'unknown')} (native ISA: "
        f"{info.get('cpu_capability_native', 'unknown')}) |",
        f"| mode | {'deterministic: CPU kernels pinned to AVX2, one thread' if det else 'fast: this CPU’s own kernels (numbers match only on the same kind of CPU)'} |",
        f"| engine | Dask, {eng.get('scheduler')}, {eng.get('workers')} worker process(es) "
        f"× {eng.get('threads_per_worker', 1)} thread |",
        f"| worker and kernel environment | `{' '.join(f'{k}={v}' for k, v in env.items())}` |",
    ]
    lines += [f"| {k} | {v} |" for k, v in (info.get("libraries") or {}).items()]
    lines += ["", ("In deterministic mode every model is trained and evaluated in a worker "
                   "process started with this environment, so the stored weights and arrays "
                   "are the same bits on any x86-64 CPU with AVX2, whatever its own ISA, "
                   "core count, worker count or the order of the recipes (tested in "
                   "`tests/test_engine.py`). On a GPU, deterministic algorithms make reruns on "
                   "the same GPU model and library versions identical, not runs on different "
                   "GPU models.") if det else "", "",
              "## Manifest", "",
              "`manifest.json`, published next to this book (and in `book/_generated/`), "
              "holds a content digest of every stored model (its weights), evaluation (its "
              "arrays) and result file (its values) this build used, with their numbers. "
              "Check your store or rebuilt book against it:", "",
              "```bash", "python -m rmpm verify manifest.json", "```", ""]
    mpath = paths.generated_dir() / "manifest.json"
    if mpath.is_file():
        m = json.loads(mpath.read_text())
        lines += [f"It lists {len(m['models'])} models, {len(m['evals'])} evaluations and "
                  f"{len(m['results'])} result files.", "",
                  "| entry | kind | SHA-256 of its content |", "|---|---|---|"]
        for kind, sec in (("result", "results"), ("model", "models"), ("evaluation", "evals")):
            lines += [f"| `{k if kind == 'result' else k[:12]}` | {kind} | `{v['digest']}` |"
                      for k, v in m[sec].items()]
        lines.append("")
    return lines


def write_reproducibility_page(info: dict[str, Any], p: Profile | None = None) -> Path:
    path = paths.generated_dir() / "reproducibility.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, reproducibility_page(info, p))
    return path


def build_html(strict: bool = True) -> Path:
    """Render the executed notebooks and pages with Jupyter Book 1.x."""
    root = paths.repo_root()
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(root), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True, cwd=root)
    return root / "_build" / "html" / "index.html"


def build(profile: str | Profile, only: Sequence[str] | None = None, strict: bool = True,
          clean: bool = False, workers: int | None = None,
          deterministic: bool = True) -> Path:
    """Execute all notebooks under ``profile`` and build the HTML book.

    First makes sure every data set of the profile can be loaded (see
    :func:`rmpm.pipeline.data.ensure`), so a missing one stops the build before any work.
    Training runs on the Dask engine (:mod:`rmpm.pipeline.engine`): one cluster of
    ``workers`` processes for the whole build, which first trains every model
    the profile needs at once and then serves the notebooks' kernels.
    """
    p = get_profile(profile)
    select_notebooks(only)  # bad names stop here, before any work
    from ..pipeline.data import clear_cache, ensure
    from ..pipeline.store import Store
    Store().check_writable()  # a read-only or full store stops here, before any work
    ensure(p.datasets)
    clear_cache()  # the notebooks' kernels load what they need; this process needs none
    if clean:
        shutil.rmtree(paths.executed_dir(), ignore_errors=True)
    t0 = time.perf_counter()
    b = new_build(p, inherit=bool(only))
    try:
        timings, engine_info = run_on_engine(p, only, workers, deterministic, build=b)
    except BaseException as e:
        abandon_build(b)
        if isinstance(e, KeyboardInterrupt) and not getattr(e, "note", ""):
            e.note = _unfinished(b, "no notebook had run")
        raise
    b = b.as_finished()
    write_build_info(p, timings, b, engine_info)
    index = build_html(strict)
    mpath = paths.generated_dir() / "manifest.json"
    if mpath.is_file() and index.parent.is_dir():  # published next to the book
        shutil.copyfile(mpath, index.parent / "manifest.json")
    train_s = timings.get(TRAINING_TIMING, 0.0)
    print(f"[rmpm book] profile {p.name}: training and evaluation {train_s:.0f} s, "
          f"notebooks {sum(timings.values()) - train_s:.0f} s, "
          f"total {time.perf_counter() - t0:.0f} s")
    print(f"[rmpm book] the book is at {index}")
    return index
