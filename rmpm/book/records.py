"""Small JSON result files that notebooks write and the Claims and
reproducibility pages read: every number in those pages traces back to one.

Where they go decides who can overwrite them, so:

- a book build (``rmpm book``) gives every build its own folder,
  ``book/_generated/builds/<profile>/<build id>/results/`` (see :mod:`rmpm.book.builds`),
  passed to the notebooks' kernels in ``RMPM_RESULTS`` with the build id in
  ``RMPM_BUILD``; the book's pages read only that folder, and no later run
  writes into it;
- any other run (JupyterLab, plain papermill, a script) writes to the
  *interactive* folder :func:`interactive_dir` (``<cache>/results``), so running
  a chapter by hand can never change a finished book's results;
- ``RMPM_RESULTS`` set by hand picks any other folder (tests do).

Report files a chapter saves (:func:`reports_dir`) follow the same rule: a build's
go to its own ``reports/`` folder (``RMPM_REPORTS``), others to ``<cache>/reports``.

Every file records the profile and the build that wrote it and what computed its
numbers (``numerics``: :func:`rmpm.pipeline.determinism.describe_numerics`, whether the
process was pinned, numpy's SIMD level, the BLAS kernels and threads), and is written
atomically (temp file, then rename). Only its ``values`` are digested.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .. import paths
from ..atomic import atomic_write_text
from ..jsonable import jsonable
from ..pipeline.determinism import describe_numerics

#: the build id of results written outside a book build
INTERACTIVE = "interactive"


def interactive_dir() -> Path:
    """Where results of runs outside a book build go (never a build's folder)."""
    return paths.cache_root() / "results"


def reports_dir() -> Path:
    """Where a chapter saves report files (chapter 7's multiplicity report): the
    build's own ``reports/`` folder in a book build (``RMPM_REPORTS``), else the
    interactive ``<cache>/reports``, so no run writes into another's reports."""
    env = os.environ.get("RMPM_REPORTS")
    return Path(env) if env else paths.cache_root() / "reports"


def current_build() -> str:
    """The id of the book build this process belongs to, or ``"interactive"``."""
    return os.environ.get("RMPM_BUILD") or INTERACTIVE


def results_dir() -> Path:
    env = os.environ.get("RMPM_RESULTS")
    return Path(env) if env else interactive_dir()


def save(name: str, profile: str, values: dict[str, Any]) -> Path:
    """Write ``values`` as result ``name`` (a notebook's stem), tagged with the
    profile and the build (see the module docstring for where it goes)."""
    d = results_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    atomic_write_text(path, json.dumps({"name": name, "profile": profile, "build": current_build(),
                                        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        # what computed them, beside the values: not digested
                                        "numerics": jsonable(describe_numerics()),
                                        "values": jsonable(values)}, indent=1, sort_keys=True))
    return path


def load(name: str) -> dict[str, Any]:
    path = results_dir() / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"result {name!r} not found at {path}: execute notebook {name} first")
    return json.loads(path.read_text())


def result_paths(folder: str | Path | None = None) -> list[Path]:
    """Every result file in ``folder`` (default: :func:`results_dir`, the current
    build's), by name."""
    d = Path(folder) if folder is not None else results_dir()
    return sorted(d.glob("*.json")) if d.is_dir() else []


def file_digests(folder: str | Path | None = None) -> dict[str, str]:
    """Result name -> SHA-256 of its file (which also covers when it was written)."""
    return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in result_paths(folder)}


# -- content digests: what the manifest lists, `rmpm verify` compares and provenance names

#: keys whose values are timings or provenance, not results
VOLATILE = frozenset({"train_seconds", "group_train_seconds", "seconds", "written", "device",
                      # whether a simulation came from the calibration cache: how, not what
                      "cached"})


def volatile(key: str) -> bool:
    """A key holding a timing or provenance, not a result: :data:`VOLATILE`, and any
    ``seconds_*`` / ``*_seconds`` timing (e.g. the calibration's cost)."""
    return key in VOLATILE or key.startswith("seconds_") or key.endswith("_seconds")


def stable(values: Any) -> Any:
    """``values`` without its :func:`volatile` keys, at any depth."""
    if isinstance(values, dict):
        return {k: stable(v) for k, v in values.items() if not volatile(k)}
    if isinstance(values, list):
        return [stable(v) for v in values]
    return values


def content_digest(values: Any) -> str:
    """The content digest of a result's ``values``: SHA-256 of their :func:`stable`
    part as sorted JSON, so two builds of the same numbers have the same digest."""
    return hashlib.sha256(json.dumps(stable(values), sort_keys=True, allow_nan=True)
                          .encode()).hexdigest()


def file_content_digest(path: str | Path) -> str | None:
    """:func:`content_digest` of result file ``path``; None if it is not there."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    return content_digest(doc.get("values"))


def content_digests(folder: str | Path | None = None) -> dict[str, str]:
    """Result name -> :func:`content_digest`, for every result file in ``folder``."""
    return {p.stem: file_content_digest(p) for p in result_paths(folder)}


def values_in(folder: str | Path, profile: str) -> dict[str, dict[str, Any]]:
    """Result name -> values of every result file in ``folder`` made with ``profile``
    (another build's, e.g. :attr:`rmpm.book.builds.Build.results_dir`)."""
    out = {}
    for p in result_paths(folder):
        doc = json.loads(p.read_text())
        if doc.get("profile") == profile:
            out[p.stem] = doc["values"]
    return out


def values(name: str, profile: str) -> dict[str, Any] | None:
    """The values of result ``name`` if it exists *and* was made with ``profile``.

    A result from another profile is treated as missing: a page must never mix
    numbers from two profiles.
    """
    try:
        r = load(name)
    except FileNotFoundError:
        return None
    return r["values"] if r.get("profile") == profile else None
