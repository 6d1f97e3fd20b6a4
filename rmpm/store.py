"""Content-addressed result store with atomic writes.

Layout (under :func:`rmpm.paths.store_root`)::

    models/<k[:2]>/<k>/          k = Recipe.key()
        recipe.json  metrics.json  history.json  meta.json  model.pt
    evals/<k[:2]>/<k>-<e>/       e = EvalSpec.key()
        spec.json  metrics.json  meta.json  arrays.npz

An entry is a directory that appears in one ``rename``: it is written in full
into a hidden temporary sibling first, so a reader never sees a half-written
entry, a killed run leaves only a ``.tmp-*`` folder (ignored, and swept by
:meth:`Store.sweep`), and two workers computing the same recipe at once are
harmless (the first rename wins, the second copy is discarded). There is no
index file or other shared mutable state: the directory tree is the index.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import determinism, paths
from .recipe import Recipe

TMP_PREFIX = ".tmp-"


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=True))


def _fsync_dir_tree(d: Path) -> None:
    for f in d.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def commit_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Create directory ``final`` atomically: ``write(tmp)`` fills a temp dir, then rename.

    If ``final`` already exists (another worker won the race) the new copy is
    dropped. If ``write`` raises, nothing is left behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_dir_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def atomic_write(path: Path, write: Callable[[Any], None]) -> Path:
    """Write file ``path`` atomically: ``write(f)`` fills a temp sibling opened in
    binary mode, which then replaces ``path``; on failure nothing is left behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())


@dataclass(frozen=True)
class ModelEntry:
    """A trained model in the store (read-only view)."""

    path: Path

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(json.loads((self.path / "recipe.json").read_text()))

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    @property
    def history(self) -> list[dict[str, float]]:
        return json.loads((self.path / "history.json").read_text())

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    def state_dict(self) -> dict:
        import torch
        return torch.load(self.path / "model.pt", map_location="cpu", weights_only=True)

    def load_model(self):
        """The trained ``nn.Module`` (CPU, eval mode)."""
        from .models import build_model
        r = self.recipe
        meta = self.meta
        model = build_model(r.arch, tuple(meta["in_shape"]), meta["n_classes"], r.width, r.dropout)
        model.load_state_dict(self.state_dict())
        return model.eval()


@dataclass(frozen=True)
class EvalEntry:
    """Predictions, activations and metrics of one model under one EvalSpec."""

    path: Path

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    @property
    def spec(self) -> dict[str, Any]:
        return json.loads((self.path / "spec.json").read_text())

    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "arrays.npz") as z:
            return {k: z[k] for k in z.files}


def _meta() -> dict[str, Any]:
    import platform

    import torch
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "host": platform.node(), "compute": determinism.describe()}


class Store:
    """The content-addressed store rooted at ``root`` (default: ``paths.store_root()``)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else paths.store_root()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths -----------------------------------------------------------
    def model_dir(self, recipe: Recipe) -> Path:
        k = recipe.key()
        return self.root / "models" / k[:2] / k

    def eval_dir(self, recipe: Recipe, spec_key: str) -> Path:
        k = recipe.key()
        return self.root / "evals" / k[:2] / f"{k}-{spec_key}"

    # -- models ------------------------------------------------------------
    def has_model(self, recipe: Recipe) -> bool:
        return (self.model_dir(recipe) / "model.pt").is_file()

    def model(self, recipe: Recipe) -> ModelEntry:
        if not self.has_model(recipe):
            raise KeyError(f"no trained model in {self} for recipe {recipe.key()[:12]}: {recipe}")
        return ModelEntry(self.model_dir(recipe))

    def put_model(self, recipe: Recipe, state_dict: dict, metrics: dict, history: list,
                  in_shape: tuple[int, ...], n_classes: int) -> ModelEntry:
        import torch

        def write(d: Path) -> None:
            _write_json(d / "recipe.json", recipe.to_dict())
            _write_json(d / "metrics.json", metrics)
            _write_json(d / "history.json", history)
            _write_json(d / "meta.json", {**_meta(), "key": recipe.key(),
                                          "in_shape": list(in_shape), "n_classes": n_classes})
            buf = io.BytesIO()
            torch.save(state_dict, buf)
            (d / "model.pt").write_bytes(buf.getvalue())

        return ModelEntry(commit_dir(self.model_dir(recipe), write))

    # -- evaluations ---------------------------------------------------------
    def has_eval(self, recipe: Recipe, spec_key: str) -> bool:
        return (self.eval_dir(recipe, spec_key) / "arrays.npz").is_file()

    def eval(self, recipe: Recipe, spec_key: str) -> EvalEntry:
        if not self.has_eval(recipe, spec_key):
            raise KeyError(f"no evaluation {spec_key[:12]} in {self} for recipe {recipe.key()[:12]}")
        return EvalEntry(self.eval_dir(recipe, spec_key))

    def put_eval(self, recipe: Recipe, spec: dict, spec_key: str, metrics: dict,
                 arrays: dict[str, np.ndarray]) -> EvalEntry:
        def write(d: Path) -> None:
            _write_json(d / "spec.json", spec)
            _write_json(d / "metrics.json", metrics)
            _write_json(d / "meta.json", {**_meta(), "recipe_key": recipe.key(),
                                          "spec_key": spec_key})
            save_npz(d / "arrays.npz", arrays)

        return EvalEntry(commit_dir(self.eval_dir(recipe, spec_key), write))

    # -- housekeeping ------------------------------------------------------
    def models(self) -> Iterator[ModelEntry]:
        for d in sorted((self.root / "models").glob("*/*")):
            if not d.name.startswith(TMP_PREFIX) and (d / "model.pt").is_file():
                yield ModelEntry(d)

    def sweep(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary folders left by killed runs; returns how many were removed.

        Only folders older than ``older_than_s`` go, so a run still writing is safe.
        """
        n, now = 0, time.time()
        for d in self.root.glob(f"*/*/{TMP_PREFIX}*"):
            if now - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n
