"""A manifest of what a book build used, and checking a store against one.

The manifest lists, for every stored model, evaluation and result file the
book used, a SHA-256 *content* digest and its numbers:

- a model: its weights (every tensor's name, dtype, shape and bytes, in name
  order) and its metrics;
- an evaluation: its arrays (name, dtype, shape, bytes) and its metrics;
- a result file: its ``values`` (canonical JSON).

Content, not file bytes, because the files also hold what legitimately differs
between two builds of the same numbers: creation times (in ``meta.json``, in the
zip headers of ``arrays.npz``, in a result file's ``written``), host names and
wall-clock timings. Those are left out of digests and comparisons
(:data:`rmpm.book.records.VOLATILE`).

:func:`verify` compares a store and result folder with a published manifest:
which entries match bit for bit, which differ and by how much (the largest
absolute difference of any number in their metrics or values), which are
missing, and whether any claim's verdict changed.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.profiles import PROFILES
from ..analysis.verdicts import all_verdicts
from ..atomic import atomic_write_text
from ..pipeline.recipe import Recipe
from ..pipeline.store import EvalEntry, ModelEntry, Store, check_entry, read_only
from .builds import builds_root, latest_build
from .records import content_digest, result_paths, stable

MANIFEST_VERSION = 1


def _h_arrays(items: Iterable[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, a in sorted(items, key=lambda t: t[0]):
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def weights_digest(state_dict: dict) -> str:
    """SHA-256 of a state dict's tensors (independent of how ``torch.save`` lays out the file)."""
    return _h_arrays((k, v.detach().cpu().numpy()) for k, v in state_dict.items())


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (independent of the npz file's timestamps)."""
    return _h_arrays(arrays.items())


def model_digest(entry: ModelEntry) -> str:
    """The content digest of a stored model: :func:`weights_digest` of its weights."""
    return weights_digest(entry.state_dict())


def eval_digest(entry: EvalEntry) -> str:
    """The content digest of a stored evaluation: :func:`arrays_digest` of its arrays."""
    return arrays_digest(entry.arrays())


def compute(recipes: Iterable[Recipe], spec_key: str, store: Store | str | None = None,
          results_dir: Path | None = None, environment: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    """The manifest of ``recipes`` (their models and evaluations under ``spec_key``)
    and of every result file in ``results_dir``. Entries the store lacks are skipped."""
    st = store if isinstance(store, Store) else Store(store)
    models, evals = {}, {}
    for r in dict.fromkeys(recipes):
        if st.has_model(r):
            e = st.model(r)
            models[r.key()] = {"digest": model_digest(e), "metrics": stable(e.metrics)}
        if st.has_eval(r, spec_key):
            e = st.eval(r, spec_key)
            evals[f"{r.key()}-{spec_key}"] = {"digest": eval_digest(e),
                                              "metrics": stable(e.metrics)}
    res = {}
    for p in result_paths(results_dir):
        doc = json.loads(p.read_text())
        res[p.stem] = {"profile": doc.get("profile"), "digest": content_digest(doc.get("values")),
                       "values": stable(doc.get("values"))}
    return {"version": MANIFEST_VERSION, "spec_key": spec_key,
            "environment": environment or {}, "models": models, "evals": evals,
            "results": res}


def write(manifest: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True,
                                              allow_nan=True))


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {str(path)!r} does not exist")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"manifest {str(path)!r} is not JSON: {e}") from None
    if not isinstance(m, dict) or m.get("version") != MANIFEST_VERSION:
        raise ValueError(f"manifest {str(path)!r} is not an rmpm manifest of version "
                         f"{MANIFEST_VERSION}")
    return m


#: the decimals the book's tables round numbers to (``DataFrame.round(4)``)
PAGE_DECIMALS = 4


def differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any, float]]:
    """Every place where two JSON trees differ: (field path, e.g.
    ``invariances.noise[3].svcca``; value in ``a``; in ``b``; absolute difference, inf
    where the structure or a non-number differs)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if a == b else [(path, a, b, math.inf)]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if a == b or (a != a and b != b):
            return []
        d = abs(a - b)
        return [(path, a, b, d if math.isfinite(d) else math.inf)]
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append((sub, a.get(k), b.get(k), math.inf))
            else:
                out += differences(a[k], b[k], sub)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(path, f"{len(a)} items", f"{len(b)} items", math.inf)]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b, math.inf)]


def max_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between corresponding numbers of two JSON trees
    (inf where the structure or a non-number differs)."""
    return max((d for *_, d in differences(a, b)), default=0.0)


def shown_differently(diffs: list[tuple[str, Any, Any, float]],
                      decimals: int = PAGE_DECIMALS) -> list[str]:
    """The field paths of ``diffs`` whose numbers differ even as the pages round them."""
    out = []
    for path, x, y, d in diffs:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        if not numbers or round(x, decimals) != round(y, decimals):
            out.append(path)
    return out


@dataclass(frozen=True)
class Check:
    kind: str       # "model", "eval" or "result"
    key: str
    status: str     # "identical", "differs", "missing", "damaged" or "new" (a result file
                    # the manifest does not list)
    max_diff: float = 0.0  # largest difference of any number in metrics / values
    detail: str = ""       # what is wrong with a damaged entry
    #: (field path, published, here, difference) of every number that differs
    fields: tuple[tuple[str, Any, Any, float], ...] = ()


@dataclass(frozen=True)
class Report:
    checks: list[Check]
    verdicts: list[tuple[str, str, str]] = field(default_factory=list)  # (claim, was, now)
    results_from: str = ""  # which result folder was compared, and why that one

    def count(self, status: str, kind: str | None = None) -> int:
        return sum(c.status == status and (kind is None or c.kind == kind) for c in self.checks)

    @property
    def verdicts_changed(self) -> list[tuple[str, str, str]]:
        return [v for v in self.verdicts if v[1] != v[2]]

    @property
    def identical(self) -> bool:
        return all(c.status == "identical" for c in self.checks) and not self.verdicts_changed

    def text(self) -> str:
        lines = [f"results: {self.results_from}"] if self.results_from else []
        for kind in ("model", "eval", "result"):
            n = sum(c.kind == kind for c in self.checks)
            damaged = self.count("damaged", kind)
            lines.append(f"{kind + 's':8} {n:5d} checked: {self.count('identical', kind):5d} "
                         f"identical, {self.count('differs', kind):5d} differ, "
                         f"{self.count('missing', kind):5d} missing"
                         + (f", {damaged:5d} damaged" if damaged else "")
                         + (f", {self.count('new', kind):5d} not in the manifest"
                            if self.count("new", kind) else ""))
        for c in self.checks:
            if c.status == "differs":
                lines.append(f"  differs  {c.kind:6} {c.key[:40]:40} largest difference "
                             f"{c.max_diff:.3g}")
                lines += _field_lines(c)
            elif c.status == "missing":
                lines.append(f"  missing  {c.kind:6} {c.key[:40]}")
            elif c.status == "new":
                lines.append(f"  new      {c.kind:6} {c.key[:40]:40} (a result the manifest does "
                             "not list: a chapter added since it was written)")
            elif c.status == "damaged":
                lines.append(f"  damaged  {c.kind:6} {c.key[:40]:40} {c.detail} (left in "
                             "place; `rmpm store verify --repair` moves it aside)")
        for claim, was, now in self.verdicts:
            lines.append(f"verdict {claim}: {was}" + ("" if was == now else f" -> {now} (CHANGED)"))
        lines.append("all identical" if self.identical else "NOT identical")
        return "\n".join(lines)


#: differing fields a report names per entry
SHOWN_FIELDS = 5


def _field_lines(c: Check) -> list[str]:
    """Which fields of a differing entry differ, by how much, and whether any of them
    shows differently on a page."""
    if not c.fields:
        return ["           (its numbers are the same: only what they are digested with differs)"]
    out = [f"           {path}: {_short(x)} -> {_short(y)} ({d:.3g})"
           for path, x, y, d in c.fields[:SHOWN_FIELDS]]
    if len(c.fields) > SHOWN_FIELDS:
        out.append(f"           ... and {len(c.fields) - SHOWN_FIELDS} more field(s)")
    shown = shown_differently(list(c.fields))
    out.append(f"           rounded to the pages' {PAGE_DECIMALS} decimals: " + (
        "no number differs" if not shown else f"{len(shown)} field(s) differ ({', '.join(shown[:3])}"
        + (", ..." if len(shown) > 3 else "") + ")"))
    return out


def _short(v: Any, width: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= width else text[:width - 4] + " ..."


def _verdicts(results: dict[str, Any]) -> list[tuple[str, str]]:
    vals = {k: v.get("values") for k, v in results.items()}
    names = {v.get("profile") for v in results.values()} - {None}
    prof = PROFILES.get(next(iter(names))) if len(names) == 1 else None
    try:
        return [(v.claim, v.verdict) for v in
                all_verdicts(vals, evidence=prof.evidence if prof is not None else True)]
    except Exception as e:  # a result file of another shape: say so rather than guess
        return [("all", f"could not be computed ({type(e).__name__})")]


def results_folder(published: dict[str, Any]) -> tuple[Path | None, str]:
    """The result folder of the build a manifest describes, and how it was found.

    The manifest names its profile and build; that build's folder is used when it is
    here (a reader checking the build they just made against its own manifest), else
    the profile's latest build (CI checking its fresh rebuild against a committed
    manifest, whose build happened elsewhere). None when neither exists.
    """
    env = published.get("environment") or {}
    profile, bid = env.get("profile"), env.get("build")
    if not profile:
        return None, "the manifest names no profile"
    if bid and (builds_root() / profile / bid / "results").is_dir():
        return builds_root() / profile / bid / "results", f"build {bid} (the manifest's own)"
    latest = latest_build(profile)
    if latest is not None and latest.results_dir.is_dir():
        why = (f"the manifest's build {bid} is not here" if bid else "the manifest names no build")
        return latest.results_dir, f"the latest {profile} build here, {latest.id} ({why})"
    return None, f"no {profile} build here"


def _damage(st: Store, section: str, key: str) -> tuple[Path, str]:
    """The entry folder of a manifest key, and what is wrong with it ("" if intact or absent)."""
    d = st.entry_dir(section, key)  # the store names entries by these keys
    if not d.is_dir():
        return d, ""
    try:
        problems, _ = check_entry(d, section)
    except FileNotFoundError:
        return d, ""
    return d, "; ".join(problems)


def verify(published: dict[str, Any], store: Store | str | None = None,
           results_dir: Path | None = None) -> Report:
    """Compare the store and result files here with a ``published`` manifest.

    Read-only: a damaged entry is reported as damaged and left where it is (repair
    is ``rmpm store verify --repair``'s job), so a check never changes what it
    checks. ``results_dir`` (default: :func:`results_folder`) is the build's
    result folder to compare.
    """
    st = store if isinstance(store, Store) else Store(store)
    skey = published["spec_key"]
    if results_dir is None:
        results_dir, found = results_folder(published)
        if results_dir is None:
            raise ValueError(f"cannot find the results to verify: {found}; build the book "
                             f"first (make book PROFILE={(published.get('environment') or {}).get('profile', 'NAME')}) "
                             "or pass --results FOLDER")
    else:
        found = f"{results_dir} (given)"
    with read_only():
        damaged = {}
        for section in ("models", "evals"):
            for key in published[section]:
                d, problem = _damage(st, section, key)
                if problem:
                    damaged[(section, key)] = problem
        recipes = []
        for k in published["models"]:
            d = st.entry_dir("models", k)
            if ("models", k) not in damaged and (d / "recipe.json").is_file():
                recipes.append(ModelEntry(d).recipe)
        here = compute(recipes, skey, st, results_dir)
    checks = []
    for kind, section in (("model", "models"), ("eval", "evals"), ("result", "results")):
        for key, pub in published[section].items():
            mine = here[section].get(key)
            if (section, key) in damaged:
                checks.append(Check(kind, key, "damaged", math.nan, damaged[(section, key)]))
            elif mine is None:
                checks.append(Check(kind, key, "missing", math.nan))
            elif mine["digest"] == pub["digest"]:
                checks.append(Check(kind, key, "identical"))
            else:
                num = "values" if kind == "result" else "metrics"
                diffs = differences(pub[num], mine[num])
                checks.append(Check(kind, key, "differs", max((d for *_, d in diffs), default=0.0),
                                    fields=tuple(diffs)))
    checks += [Check("result", key, "new", math.nan) for key in here["results"]
               if key not in published["results"]]
    verdicts = []
    if published["results"]:
        was = dict(_verdicts(published["results"]))
        now = dict(_verdicts(here["results"]))
        verdicts = [(c, was[c], now.get(c, "missing")) for c in was]
    return Report(checks, verdicts, found)
