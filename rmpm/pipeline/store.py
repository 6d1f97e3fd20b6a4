"""Content-addressed result store with atomic, checksummed writes.

Layout (under :func:`rmpm.paths.store_root`)::

    models/<k[:2]>/<k>/          k = Recipe.key()
        recipe.json  metrics.json  history.json  meta.json  model.pt  manifest.json
    evals/<k[:2]>/<k>-<e>/       e = EvalSpec.key()
        spec.json  metrics.json  meta.json  arrays.npz  manifest.json
    derived/<d[:2]>/<d>/         memoised measures (rmpm.analysis.populations)
        measures.json  inputs.json  manifest.json
    quarantine/<kind>/<name>-<time>-<id>/   damaged entries, moved aside (never deleted)
    locks/<kind>/<k[:2]>/<name>.lock         claims of entries being computed now
                                             (rmpm.pipeline.locks; no entries, never listed)

An entry is a directory that appears in one ``rename``: it is written in full
into a hidden temporary sibling first, so a reader never sees a half-written
entry, a killed run leaves only a ``.tmp-*`` folder (ignored, and swept by
:meth:`Store.sweep`), and two workers computing the same recipe at once are
harmless (the first rename wins, the second copy is discarded). There is no
index file or other shared mutable state: the directory tree is the index.

Integrity: an entry's checksums file (``manifest.json``, a name older than the book's
build manifests, kept so that existing stores stay readable), written inside the same
atomic commit, lists every file's size and SHA-256. ``has_model``/``has_eval`` check a whole entry
(once per process while its files are unchanged) and every read checks the
bytes it loads, so a truncated, flipped, deleted or overwritten file is never
used: the entry is moved to ``quarantine/`` with one warning naming it and the
file, and the run recomputes it. Entries written before checksums files existed
("legacy") are checked by parsing every file (JSON, ``torch.load``, every
array of the ``.npz`` with its CRC); if they parse, a checksums file is added in
place, otherwise they are quarantined like any damaged entry.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import determinism

from .. import paths
from ..atomic import atomic_write_text
from .recipe import Recipe

TMP_PREFIX = ".tmp-"
CHECKSUMS = "manifest.json"
CHECKSUMS_VERSION = 1
QUARANTINE = "quarantine"
#: the files every committed entry of a kind must have (besides the checksums file)
REQUIRED = {
    "models": ("recipe.json", "metrics.json", "history.json", "meta.json", "model.pt"),
    "evals": ("spec.json", "metrics.json", "meta.json", "arrays.npz"),
    "derived": ("measures.json", "inputs.json"),
}
KINDS = tuple(REQUIRED)


class StoreDamageWarning(UserWarning):
    """A damaged store entry was found and moved to quarantine (it will be recomputed)."""


class DamagedEntryError(RuntimeError):
    """A store entry failed its check while being read; it was moved to quarantine."""


#: why a store cannot be written, by errno, and what the user can do about it
_ELSEWHERE = "or point --store (or the RMPM_STORE environment variable) at"
_NO_PERMISSION = ("permission", "Give this user write permission there, "
                  f"{_ELSEWHERE} a folder you may write to")
_CAUSES = {
    errno.ENOSPC: ("full", f"Free disk space there, {_ELSEWHERE} a folder with room"),
    errno.EDQUOT: ("full", f"Free space within your disk quota there, {_ELSEWHERE} a folder "
                   "with room"),
    errno.EROFS: ("read-only", f"Remount that file system read-write, {_ELSEWHERE} a writable "
                  "folder"),
    errno.EACCES: _NO_PERMISSION,
    errno.EPERM: _NO_PERMISSION,
    errno.ENOTDIR: ("not a directory", f"Move that file out of the way, {_ELSEWHERE} a folder"),
}
#: errors that mean "this store cannot be written" (no retry fixes them) rather than a bug
_WRITE_ERRNOS = set(_CAUSES)


class StoreWriteError(RuntimeError):
    """The store cannot be written: ``cause`` is ``"full"``, ``"read-only"``,
    ``"permission"`` or ``"not a directory"``; ``path`` the folder (or, for
    ``"not a directory"``, the file in the way). No retry fixes it, so a run stops at
    the first one; ``note`` says what the run had stored by then."""

    def __init__(self, cause: str, path: str | os.PathLike, detail: str, remedy: str,
                 note: str = ""):
        self.cause, self.path, self.detail, self.remedy, self.note = (
            cause, Path(path), detail, remedy, note)
        super().__init__(f"cannot write to the store at {path}: {detail}. {remedy}; entries "
                         "finished so far are kept, and a rerun continues from them."
                         + (f" {note}" if note else ""))

    def __reduce__(self):  # a task's error travels from a worker to the driver pickled
        return (type(self), (self.cause, str(self.path), self.detail, self.remedy, self.note))

    def stopped(self, note: str) -> "StoreWriteError":
        """The same error, saying what the stopped run had stored (``note``)."""
        return StoreWriteError(self.cause, self.path, self.detail, self.remedy, note)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=True))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _entry_files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.is_file() and f.name != CHECKSUMS
                  and not f.name.startswith("."))


def write_checksums(d: Path) -> dict[str, Any]:
    """Record size and SHA-256 of every file of entry folder ``d`` in its checksums file."""
    checksums = _checksums_of(d)
    _write_json(d / CHECKSUMS, checksums)
    return checksums


def read_checksums(d: Path) -> dict[str, Any] | None:
    """The checksums file of entry ``d``; None for a legacy entry (none written); raises
    ``ValueError`` for an unreadable one."""
    try:
        text = (d / CHECKSUMS).read_bytes()
    except FileNotFoundError:
        return None
    try:
        m = json.loads(text)
        files = m["files"]
        if not all(isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
                   for v in files.values()):
            raise ValueError("bad file record")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"{CHECKSUMS} is unreadable ({type(e).__name__})") from None
    return m


def _parse_check(path: Path) -> None:
    """Raise if a legacy entry's file does not parse (JSON, a torch file, an .npz
    whose every array passes its CRC)."""
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".pt":
        import torch
        torch.load(path, map_location="cpu", weights_only=True)
    elif path.suffix == ".npz":
        with np.load(path) as z:
            for k in z.files:
                z[k]


def kind_of(d: Path) -> str:
    """``models``, ``evals`` or ``derived``: the kind of entry folder ``d``."""
    return d.parent.parent.name


def check_entry(d: Path, kind: str | None = None) -> tuple[list[str], bool]:
    """Problems of entry folder ``d`` (``"<file>: <what>"``, empty if intact), and
    whether it is a legacy entry (no checksums file; checked by parsing instead)."""
    kind = kind or kind_of(d)
    required = REQUIRED.get(kind, ())
    if not d.is_dir():
        return [f"{d.name}: entry folder missing"], False
    try:
        checksums = read_checksums(d)
    except ValueError as e:
        return [str(e)], False
    problems = []
    if checksums is None:  # legacy: written before checksums files; parse what it has
        # (derived entries of that time had no inputs.json; their keys are no longer used)
        for name in (n for n in required if n != "inputs.json"):
            f = d / name
            if not f.is_file():
                problems.append(f"{name}: missing")
                continue
            try:
                _parse_check(f)
            except Exception as e:  # any decoder error means the file is damaged
                problems.append(f"{name}: does not parse ({type(e).__name__}: {str(e)[:80]})")
        return problems, True
    files = checksums["files"]
    problems += [f"{name}: not in {CHECKSUMS}" for name in required if name not in files]
    for name, rec in files.items():
        f = d / name
        if not f.is_file():
            problems.append(f"{name}: missing")
            continue
        size = f.stat().st_size
        if size != rec["size"]:
            problems.append(f"{name}: {size} bytes, the manifest says {rec['size']} (truncated "
                            "or overwritten)")
        elif sha256_file(f) != rec["sha256"]:
            problems.append(f"{name}: SHA-256 does not match the manifest (corrupted)")
    return problems, False


def _signature(d: Path) -> tuple:
    """What must stay unchanged for an entry checked once to count as still checked."""
    try:
        return tuple((f.name, st.st_size, st.st_mtime_ns)
                     for f in sorted(d.iterdir()) if f.is_file()
                     for st in [f.stat()])
    except FileNotFoundError:
        return ()


#: entry folder -> signature when it last passed :func:`check_entry` in this process
_CHECKED: dict[str, tuple] = {}
#: > 0 inside :func:`read_only`: damaged entries are reported, never moved
_READ_ONLY = [0]


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Within the block, reads change nothing in any store: a damaged entry is still
    refused (reported absent, or ``DamagedEntryError``) but stays where it is, and a
    legacy entry gets no checksums file. For checks a reader runs (``rmpm verify``)."""
    _READ_ONLY[0] += 1
    try:
        yield
    finally:
        _READ_ONLY[0] -= 1


def quarantine(d: Path, problems: list[str], reason: str = "damaged") -> Path | None:
    """Move entry ``d`` to ``<store>/quarantine/<kind>/`` (never delete it) and warn
    once, naming the entry and its files; returns where it went (None if another
    process moved it first, or inside :func:`read_only`, where nothing moves)."""
    if _READ_ONLY[0]:
        return None
    kind, root = kind_of(d), d.parent.parent.parent
    dest = root / QUARANTINE / kind / f"{d.name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(d, dest)
    except FileNotFoundError:
        return None  # someone else moved it already
    _CHECKED.pop(str(d), None)
    # Between our check and the move, another process may have quarantined the
    # damaged copy and committed a good one: if what we moved is intact, put it back.
    if reason == "damaged" and read_checksums_safe(dest) is not None \
            and not check_entry(dest, kind)[0]:
        try:
            os.rename(dest, d)
            return None
        except OSError:
            pass  # a third copy is in place; this intact duplicate stays in quarantine
    warnings.warn(f"store entry {kind}/{d.parent.name}/{d.name} is {reason}: "
                  f"{'; '.join(problems)}. Moved to {dest}; it will be recomputed.",
                  StoreDamageWarning, stacklevel=3)
    return dest


def read_checksums_safe(d: Path) -> dict[str, Any] | None:
    try:
        return read_checksums(d)
    except ValueError:
        return None


def ensure_intact(d: Path, kind: str | None = None) -> bool:
    """True if entry ``d`` exists and passes its check; a damaged entry is
    quarantined (with a warning) and reported as absent, so the caller recomputes it.
    A legacy entry that parses gets a checksums file."""
    key = str(d)
    if not d.is_dir():
        return False
    sig = _signature(d)
    if _CHECKED.get(key) == sig:
        return True
    try:
        problems, legacy = check_entry(d, kind)
    except FileNotFoundError:  # another process moved it to quarantine meanwhile
        return False
    if problems:
        quarantine(d, problems)
        return False
    if legacy and not _READ_ONLY[0]:
        try:  # upgrade in place; harmless if two processes do it at once
            _upgrade_legacy(d)
        except OSError:
            pass  # a read-only store stays legacy: it is checked by parsing each time
        sig = _signature(d)
    _CHECKED[key] = sig
    return True


def _upgrade_legacy(d: Path) -> None:
    atomic_write_text(d / CHECKSUMS, json.dumps(_checksums_of(d), indent=1, sort_keys=True))


def _checksums_of(d: Path) -> dict[str, Any]:
    return {"version": CHECKSUMS_VERSION,
            "files": {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
                      for f in _entry_files(d)}}


def read_verified(d: Path, name: str) -> bytes:
    """The bytes of file ``name`` of entry ``d``, checked against the checksums file
    (a legacy entry's file is checked by parsing). A damaged entry is quarantined
    and ``DamagedEntryError`` names it, the file and the remedy."""
    problem = None
    try:
        checksums = read_checksums(d)
    except ValueError as e:
        checksums, problem = None, str(e)
    data = None
    if problem is None:
        try:
            data = (d / name).read_bytes()
        except FileNotFoundError:
            problem = f"{name}: missing"
    if problem is None and checksums is not None:
        rec = checksums["files"].get(name)
        if rec is None:
            problem = f"{name}: not in {CHECKSUMS}"
        elif len(data) != rec["size"] or sha256_bytes(data) != rec["sha256"]:
            problem = f"{name}: does not match its manifest (truncated or corrupted)"
    if problem is None and checksums is None:
        try:
            _parse_check(d / name)
        except Exception as e:
            problem = f"{name}: does not parse ({type(e).__name__})"
    if problem is not None:
        dest = quarantine(d, [problem])
        raise DamagedEntryError(
            f"store entry {kind_of(d)}/{d.parent.name}/{d.name} is damaged: {problem}; "
            + (f"moved to {dest or 'quarantine'}. " if not _READ_ONLY[0] else "left in place. ")
            + "Rerun to recompute it "
            "(`python -m rmpm store verify` checks the whole store).")
    return data


def _fsync_dir_tree(d: Path) -> None:
    for f in d.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def is_write_error(e: BaseException, where: Path | None = None) -> bool:
    """Whether ``e`` means the store cannot be written at all (see :class:`StoreWriteError`):
    a full disk, a read-only file system, no permission, or a file where a folder must be
    (``FileExistsError`` from ``mkdir`` of ``where`` counts when ``where`` is not a folder)."""
    if not isinstance(e, OSError):
        return False
    if e.errno == errno.EEXIST:
        return where is not None and paths.in_the_way(where) is not None
    return e.errno in _WRITE_ERRNOS


def write_error(e: OSError, where: Path) -> StoreWriteError:
    """The :class:`StoreWriteError` for ``e``, which :func:`is_write_error` accepted."""
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = paths.in_the_way(where) or where
        cause, remedy = _CAUSES[errno.ENOTDIR]
        return StoreWriteError(cause, blocker, f"{blocker} is a file, not a folder", remedy)
    cause, remedy = _CAUSES[e.errno]
    return StoreWriteError(cause, where, e.strerror or str(e), remedy)


def commit_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Create directory ``final`` atomically: ``write(tmp)`` fills a temp dir, a
    checksums file of its files' SHA-256 is added, then one rename publishes it.

    If ``final`` already exists intact (another worker won the race) the new copy
    is dropped; a damaged one is quarantined and replaced. If ``write`` raises,
    nothing is left behind. A full or read-only disk raises :class:`StoreWriteError`
    naming the folder and the remedy.
    """
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        if is_write_error(e, final.parent):
            raise write_error(e, final.parent) from e
        raise
    try:
        write(tmp)
        write_checksums(tmp)
        _fsync_dir_tree(tmp)
        for attempt in range(2):
            try:
                os.rename(tmp, final)
                break
            except OSError:
                if not final.is_dir():
                    raise
                problems, _ = check_entry(final)
                if not problems or attempt:
                    shutil.rmtree(tmp, ignore_errors=True)
                    break
                quarantine(final, problems)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_error(e, final.parent):
            raise write_error(e, final.parent) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())


def entry_digest(d: Path) -> str:
    """One SHA-256 for an entry's content (its files' digests, except meta.json's
    timestamps): what derived results record about their inputs."""
    checksums = read_checksums(d)
    if checksums is None:
        return files_digest({f.name: sha256_file(f) for f in _entry_files(d)})
    return files_digest({k: v["sha256"] for k, v in checksums["files"].items()})


def files_digest(files: dict[str, str]) -> str:
    """:func:`entry_digest` from an entry's ``{file name: SHA-256}`` (meta.json left out),
    for entries not (yet) in a store folder, e.g. inside a result archive."""
    files = {k: v for k, v in files.items() if k != "meta.json"}
    return sha256_bytes(json.dumps(files, sort_keys=True).encode())


@dataclass(frozen=True)
class _Entry:
    path: Path

    def _json(self, name: str) -> Any:
        return json.loads(read_verified(self.path, name))

    @property
    def digest(self) -> str:
        return entry_digest(self.path)


@dataclass(frozen=True)
class ModelEntry(_Entry):
    """A trained model in the store (read-only view; every read is checked)."""

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self._json("recipe.json"))

    @property
    def metrics(self) -> dict[str, Any]:
        return self._json("metrics.json")

    @property
    def history(self) -> list[dict[str, float]]:
        return self._json("history.json")

    @property
    def meta(self) -> dict[str, Any]:
        return self._json("meta.json")

    def state_dict(self) -> dict:
        import torch
        data = read_verified(self.path, "model.pt")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def load_model(self):
        """The trained ``nn.Module`` (CPU, eval mode)."""
        from .models import build_model
        r = self.recipe
        meta = self.meta
        model = build_model(r.arch, tuple(meta["in_shape"]), meta["n_classes"], r.width, r.dropout)
        model.load_state_dict(self.state_dict())
        return model.eval()


@dataclass(frozen=True)
class EvalEntry(_Entry):
    """Predictions, activations and metrics of one model under one EvalSpec."""

    @property
    def metrics(self) -> dict[str, Any]:
        return self._json("metrics.json")

    @property
    def spec(self) -> dict[str, Any]:
        return self._json("spec.json")

    def arrays(self) -> dict[str, np.ndarray]:
        data = read_verified(self.path, "arrays.npz")
        with np.load(io.BytesIO(data)) as z:
            return {k: z[k] for k in z.files}


def _meta() -> dict[str, Any]:
    import platform

    import torch
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "host": platform.node(), "compute": determinism.describe()}


@dataclass(frozen=True)
class EntryReport:
    """What :meth:`Store.verify` found for one entry."""

    path: Path
    problems: tuple[str, ...]
    legacy: bool
    moved_to: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class Store:
    """The content-addressed store rooted at ``root`` (default: ``paths.store_root()``)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else paths.store_root()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths -----------------------------------------------------------
    def entry_dir(self, kind: str, name: str) -> Path:
        """Where entry ``name`` of ``kind`` (``models``, ``evals``, ``derived``) lives:
        ``<root>/<kind>/<name[:2]>/<name>`` (see the module docstring)."""
        return self.root / kind / name[:2] / name

    def model_dir(self, recipe: Recipe) -> Path:
        return self.entry_dir("models", recipe.key())

    def eval_dir(self, recipe: Recipe, spec_key: str) -> Path:
        return self.entry_dir("evals", f"{recipe.key()}-{spec_key}")

    def derived_dir(self, key: str) -> Path:
        return self.entry_dir("derived", key)

    def commit_files(self, kind: str, name: str, files: dict[str, bytes]) -> Path:
        """Commit entry ``name`` of ``kind`` from its files' bytes (e.g. a result
        archive's members), atomically and checksummed like every entry
        (:func:`commit_dir`); a checksums file among ``files`` is written anew."""
        def write(d: Path) -> None:
            for n, data in files.items():
                if n != CHECKSUMS:
                    (d / n).write_bytes(data)
        return commit_dir(self.entry_dir(kind, name), write)

    # -- models ------------------------------------------------------------
    def has_model(self, recipe: Recipe) -> bool:
        """True if the model is stored intact (a damaged entry is quarantined: False)."""
        return ensure_intact(self.model_dir(recipe), "models")

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
        """True if the evaluation is stored intact (a damaged entry is quarantined: False)."""
        return ensure_intact(self.eval_dir(recipe, spec_key), "evals")

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
    def progress(self, recipes, spec_key: str) -> str:
        """What the store holds of ``recipes`` (deduplicated): "M of N models and E of N
        evaluations are stored". Counts committed entries (commits are atomic) without
        checking their files, so it is quick enough for a run that is stopping."""
        keys = {r.key(): r for r in recipes}.values()
        models = sum(self.model_dir(r).is_dir() for r in keys)
        evals = sum(self.eval_dir(r, spec_key).is_dir() for r in keys)
        return (f"{models} of {len(keys)} model(s) and {evals} of {len(keys)} evaluation(s) "
                f"are stored in {self.root}")

    def require_existing(self) -> "Store":
        """Refuse a store folder that does not exist (for commands that only read)."""
        if not self.root.is_dir():
            raise ValueError(f"--store: no store at {self.root} (the folder does not exist); "
                             "give the folder `rmpm train` wrote to, or leave --store out for "
                             f"the default {paths.store_root()}")
        return self

    def check_writable(self) -> "Store":
        """Fail now, naming the folder and the remedy, if nothing can be written here
        (read-only file system, no permission, full disk) rather than after the work."""
        probe = self.root / f"{TMP_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"rmpm")
            probe.unlink()
        except OSError as e:
            with contextlib.suppress(OSError):
                probe.unlink()
            if not is_write_error(e, self.root):
                raise
            raise write_error(e, self.root) from e
        return self

    def entry_dirs(self, kind: str | None = None) -> Iterator[Path]:
        """Every committed entry folder (temporary ones excluded), by kind."""
        for k in (kind,) if kind else KINDS:
            for d in sorted((self.root / k).glob("*/*")):
                if d.is_dir() and not d.name.startswith(TMP_PREFIX):
                    yield d

    def models(self) -> Iterator[ModelEntry]:
        """Intact trained models (a damaged one is quarantined with a warning and skipped)."""
        for d in self.entry_dirs("models"):
            if ensure_intact(d, "models"):
                yield ModelEntry(d)

    def verify(self, repair: bool = False) -> list[EntryReport]:
        """Check every entry (all files hashed, nothing taken from the per-process
        memo). With ``repair`` damaged entries go to quarantine (the next run
        recomputes them) and legacy entries that parse get a checksums file."""
        out = []
        for d in self.entry_dirs():
            problems, legacy = check_entry(d)
            moved = None
            if repair and problems:
                moved = quarantine(d, problems)
            elif repair and legacy:
                _upgrade_legacy(d)
            out.append(EntryReport(d, tuple(problems), legacy, moved))
        return out

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
