"""Small JSON result files that notebooks write and the Claims and
reproducibility pages read: every number in those pages traces back to one.

Files live in ``book/_generated/results/<name>.json`` (see :mod:`rmpm.paths`)
and are written atomically (temp file, then rename).
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

from . import paths
from .store import atomic_write_text


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


def results_dir() -> Path:
    return Path(os.environ.get("RMPM_RESULTS", paths.generated_dir() / "results"))


def save(name: str, profile: str, values: dict[str, Any]) -> Path:
    """Write ``values`` as result ``name`` (a notebook's stem), tagged with the profile."""
    d = results_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    atomic_write_text(path, json.dumps({"name": name, "profile": profile,
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
