"""Small JSON result files that notebooks write and the Claims and
reproducibility pages read: every number in those pages traces back to one.

Where they go decides who can overwrite them, so:

- a book build (``rmpm book``) gives every build its own folder,
  ``book/_generated/builds/<profile>/<build id>/results/`` (see :mod:`rmpm.book`),
  passed to the notebooks' kernels in ``RMPM_RESULTS`` with the build id in
  ``RMPM_BUILD``; the book's pages read only that folder, and no later run
  writes into it;
- any other run (JupyterLab, plain papermill, a script) writes to the
  *interactive* folder :func:`interactive_dir` (``<cache>/results``), so running
  a chapter by hand can never change a finished book's results;
- ``RMPM_RESULTS`` set by hand picks any other folder (tests do).

Report files a chapter saves (:func:`reports_dir`) follow the same rule: a build's
go to its own ``reports/`` folder (``RMPM_REPORTS``), others to ``<cache>/reports``.

Every file records the profile and the build that wrote it, and is written
atomically (temp file, then rename).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import paths
from ..atomic import atomic_write_text

#: the build id of results written outside a book build
INTERACTIVE = "interactive"


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


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
                                        "values": _clean(values)}, indent=1, sort_keys=True))
    return path


def load(name: str) -> dict[str, Any]:
    path = results_dir() / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"result {name!r} not found at {path}: execute notebook {name} first")
    return json.loads(path.read_text())


def digests() -> dict[str, str]:
    """SHA-256 of every result file, for the reproducibility page."""
    d = results_dir()
    return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.glob("*.json"))} if d.is_dir() else {}


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
