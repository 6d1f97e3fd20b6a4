"""The one place that knows where rmpm reads and writes files.

Everything rmpm writes lives under one *cache root*:

- ``<cache>/data``   data sets that torchvision downloads (MNIST, CIFAR-10, SVHN, ...)
- ``<cache>/store``  the content-addressed result store (trained models, evaluations)
- ``<cache>/results`` result files of notebooks run outside a book build (see rmpm.book.records)

The cache root is, in order of precedence: the ``RMPM_CACHE`` environment
variable; ``<repo>/_cache`` when rmpm runs from a source checkout; else
``~/.cache/rmpm``. ``RMPM_DATA`` and ``RMPM_STORE`` override the two
sub-folders separately (useful on clusters where data and results live on
different file systems).
"""
from __future__ import annotations

import os
from pathlib import Path

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The source checkout rmpm runs from, or None for an installed copy."""
    root = _PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "_toc.yml").is_file():
        return root
    return None


def cache_root() -> Path:
    env = os.environ.get("RMPM_CACHE")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    if root is not None:
        return root / "_cache"
    return Path.home() / ".cache" / "rmpm"


def data_root() -> Path:
    env = os.environ.get("RMPM_DATA")
    return Path(env).expanduser() if env else cache_root() / "data"


def store_root() -> Path:
    env = os.environ.get("RMPM_STORE")
    return Path(env).expanduser() if env else cache_root() / "store"


def in_the_way(path: Path) -> Path | None:
    """The file that stops ``path`` from being (or becoming) a folder: ``path`` itself
    or the nearest of its parents that exists, if that is not a folder; else None."""
    for p in (Path(path), *Path(path).parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


def check_folders(store: str | os.PathLike | None = None) -> None:
    """Refuse, before any work, a store or data folder that cannot be one: a setting
    (``--store``, ``RMPM_STORE``, ``RMPM_DATA``, or ``RMPM_CACHE`` under which both
    default) that names a file, or a folder inside a file. One ``ValueError`` names
    the setting. A folder that does not exist yet is fine: it is created when needed.
    Every command calls this, so each checks the same way (``--dry-run`` included)."""
    settings = [("--store", Path(store).expanduser())] if store is not None else []
    for var in ("RMPM_CACHE", "RMPM_STORE", "RMPM_DATA"):
        if os.environ.get(var) and not (var == "RMPM_STORE" and store is not None):
            settings.append((var, Path(os.environ[var]).expanduser()))
    if store is None:
        settings.append(("the store folder", store_root()))
    settings.append(("the data folder", data_root()))
    for name, path in settings:
        blocker = in_the_way(path)
        if blocker is None:
            continue
        what = "is a file" if blocker == path else f"is inside {blocker}, which is a file"
        if not name.startswith(("--", "RMPM_")):  # a default: say which setting chose it
            raise ValueError(f"{name} {path} {what}, not a folder; set RMPM_CACHE, RMPM_STORE "
                             "or RMPM_DATA to a folder (it is created if missing)")
        raise ValueError(f"{name}={path} {what}, not a folder; point {name} at a folder "
                         "(it is created if missing)" + ("" if name == "--store" else
                                                         f", or unset {name}"))


def notebooks_dir() -> Path:
    root = repo_root()
    if root is None:
        raise RuntimeError("the notebooks live in the rmpm source checkout; run from a clone")
    return root / "notebooks"


def executed_dir() -> Path:
    """Where papermill writes executed notebooks that the book renders."""
    root = repo_root()
    if root is None:
        raise RuntimeError("the book is built from the rmpm source checkout; run from a clone")
    return root / "book" / "_executed"


def generated_dir() -> Path:
    """Pages and tables the build writes for the book (claims, reproducibility)."""
    root = repo_root()
    if root is None:
        raise RuntimeError("the book is built from the rmpm source checkout; run from a clone")
    return root / "book" / "_generated"


def calibration_dir() -> Path:
    """Cached calibration simulations (rmpm.analysis.calibration), one file per
    scenario, keyed by design, rule and simulation versions, number of
    simulations and seed."""
    return cache_root() / "calibration"
