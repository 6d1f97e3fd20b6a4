"""Build folders: where each book build keeps its results, reports and records, and
their life from started to finished (or failed, or stopped).

Every build writes its result files to a folder of its own,
``book/_generated/builds/<profile>/<build id>/results/`` (see :mod:`rmpm.book.records`),
and its reports (chapter 7) to ``reports/`` beside them; the book's pages read only
that folder; ``latest`` in the profile's folder names the last build that executed
all its notebooks. ``--only`` starts a new build from a copy of the latest one's
results, so it never rewrites a finished build either.

A build in progress lives in a hidden ``.partial-<build id>`` folder, locked by its
process (:class:`rmpm.pipeline.locks.Lock`), and is renamed to its id only when
every notebook has run, just before ``latest`` names it. A stopped build (Ctrl-C,
SIGTERM) is removed; a failed one is kept for inspection as ``.failed-<build id>``
(its status file and the failed notebook); one killed outright leaves its hidden
partial folder, which the next build, finding its lock free, moves to
``.failed-<build id>`` too. So nothing that looks like a finished build is ever
left half done.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..analysis.profiles import Profile, get_profile
from ..atomic import atomic_write_text
from ..pipeline.locks import Lock

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


def set_latest(profile_dir: Path, build_id: str) -> None:
    """Name ``build_id`` the latest build in ``profile_dir`` (a profile's folder of
    builds); only ever a finished build."""
    atomic_write_text(Path(profile_dir) / "latest", build_id + "\n")


#: locks of the builds this process has in progress, by build id
_IN_PROGRESS: dict[str, Any] = {}


def _partial_lock(folder: Path) -> Lock:
    return Lock(folder.with_name(folder.name + ".lock"))


def sweep_partial_builds(profile: str, root: Path | None = None) -> int:
    """Move the partial folders of ``profile``'s builds whose process is gone (its
    lock expired: killed, crashed) aside as failed builds, their status marked
    ``killed``; a build still running keeps its lock, and its folder. Returns how
    many were moved."""
    n = 0
    for folder in sorted(((root or builds_root()) / profile).glob(f"{PARTIAL}*")):
        if not folder.is_dir():
            continue
        lock = _partial_lock(folder)
        if lock.try_acquire():
            try:
                b = Build(profile, folder.name[len(PARTIAL):], folder)
                failed = fail_build(b)
                status = read_status(failed)
                if status is not None:
                    write_status(failed, {**status, "state": "killed"})
                n += 1
            finally:
                lock.release()
                lock.path.unlink(missing_ok=True)  # nobody else ever locks this build id
    return n


def new_build(profile: str | Profile, root: Path | None = None, inherit: bool = False) -> Build:
    """A fresh build, in progress (in its hidden partial folder, locked by this process,
    until :func:`finish_build`); with ``inherit`` it starts with a copy of the latest
    build's results (for ``--only``: the other chapters' results stay available).
    Partial folders of builds whose process died are removed first."""
    name = get_profile(profile).name
    d = (root or builds_root()) / name
    d.mkdir(parents=True, exist_ok=True)
    sweep_partial_builds(name, root)
    bid = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    b = Build(name, bid, d / f"{PARTIAL}{bid}")
    lock = _partial_lock(b.dir)
    lock.try_acquire()  # a fresh id: nobody else holds it
    _IN_PROGRESS[bid] = lock
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
    set_latest(done.dir.parent, done.id)
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
    lock = _IN_PROGRESS.pop(b.id, None)
    if lock is not None:
        lock.release()
        lock.path.unlink(missing_ok=True)


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


#: the execution record of a build, in its folder (see :func:`rmpm.book.build.run_notebooks`)
STATUS = "status.json"


def write_status(build: Build, status: dict[str, Any]) -> Path:
    path = build.dir / STATUS
    atomic_write_text(path, json.dumps(status, indent=1))
    return path


def read_status(build: Build | None) -> dict[str, Any] | None:
    try:
        return json.loads((build.dir / STATUS).read_text()) if build is not None else None
    except (OSError, ValueError):
        return None


def unfinished(b: Build, done: str, root: Path | None = None) -> str:
    """What a stopped build leaves: for the one line a stopped ``rmpm book`` prints."""
    latest = latest_build(b.profile, root)
    return (f"build {b.id} was not finished ({done}) and is discarded; the latest "
            f"{b.profile} build is still {latest.id if latest else 'none'}")
