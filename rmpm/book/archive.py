"""Portable result archives: one book build's store entries, result files and
manifest in one tar file, so a book that a GPU machine trained can be rebuilt on
another machine without training anything.

``rmpm store export --profile NAME FILE`` packs, for the profile's latest build
(or ``--build ID``):

- ``build/``: the build folder (``manifest.json``, ``build_info.json``, ``results/``);
- ``store/models/..``, ``store/evals/..``: every model and evaluation the build's
  manifest lists, each entry folder as the store holds it (with its own
  ``manifest.json`` of file SHA-256s);
- ``store/derived/..``: the memoised measures computed only from those entries
  (so the rebuilt book does not recompute SVCCA either);
- ``rmpm-archive.json`` (last): the index, size and SHA-256 of every other member.

``FILE`` ending in ``.tar`` is uncompressed; ``.tar.gz``/``.tgz``, ``.tar.xz`` and
``.tar.bz2`` are compressed (weights and npz arrays compress little: plain tar is
the fast choice).

``rmpm store import FILE`` reads the archive twice. The first pass writes nothing: it
checks every member's size and SHA-256 against the index, every entry's files
against the entry's own manifest, every model's weights and every evaluation's
arrays against the content digests of the build manifest, that every entry sits
under the key its content gives (recipe key, eval-spec key), that the result files'
values match the manifest, and that the archive holds exactly what the manifest
lists, of one profile. Any failure (a flipped byte, a truncated or foreign archive)
is one :class:`ArchiveError` naming what failed, and the store is untouched. The
second pass commits each entry with the store's atomic, checksummed commit (an
entry already in the store intact is kept) and re-checks every byte it writes
against the index, so an archive replaced between the passes cannot slip through.

The result files become a build folder, ``<builds>/<profile>/<build id>/``, as the
build that wrote them left it: ``rmpm verify`` can check a rebuilt book against its
manifest and results, a ``--only`` build can inherit the other chapters' results
from it, and the numbers keep the id of the build that computed them instead of
mixing with local runs. It becomes the profile's ``latest`` only where the profile
has no local build yet, so an import never replaces results built here.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import shutil
import tarfile
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pipeline.evaluate import EVAL_SCHEMA_VERSION
from ..pipeline.recipe import Recipe, content_key
from ..pipeline.store import (CHECKSUMS, REQUIRED, TMP_PREFIX, EvalEntry, ModelEntry, Store,
                              check_entry, entry_digest, files_digest, read_checksums)
from . import manifest as M
from .builds import Build, builds_root, latest_build, set_latest
from .records import content_digest

FORMAT = "rmpm-result-archive"
VERSION = 1
INDEX = "rmpm-archive.json"
#: file name endings and the tarfile compression each means
COMPRESSION = {".tar": "", ".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz", ".tar.bz2": "bz2"}
_HEX = r"[0-9a-f]"
#: the only member names an archive may have (so no name can point outside the store)
_ENTRY = re.compile(rf"store/(models|evals|derived)/({_HEX}{{2}})/({_HEX}{{64}}(?:-{_HEX}{{64}})?)"
                    rf"/([A-Za-z0-9_][A-Za-z0-9_.-]*)")
_BUILD = re.compile(r"build/(manifest\.json|build_info\.json|results/[A-Za-z0-9_][A-Za-z0-9_.-]*\.json)")
#: how many problems an error message lists before it counts the rest
_SHOWN = 5


class ArchiveError(ValueError):
    """An archive that cannot be imported (damaged, truncated, foreign) or a build that
    cannot be exported; nothing was written."""


def compression(file: str | os.PathLike) -> str:
    """The tarfile compression that ``file``'s name asks for; ValueError for another name."""
    name = Path(file).name
    for ending in sorted(COMPRESSION, key=len, reverse=True):
        if name.endswith(ending) and len(name) > len(ending):
            return COMPRESSION[ending]
    raise ValueError(f"FILE={str(file)!r} must end in one of {', '.join(COMPRESSION)} "
                     "(.tar is uncompressed and fastest)")


def _problems(what: str, problems: list[str]) -> ArchiveError:
    shown = "; ".join(problems[:_SHOWN])
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    return ArchiveError(f"{what}: {shown}{more}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ export

@dataclass(frozen=True)
class ExportReport:
    file: Path
    profile: str
    build: str
    models: int
    evals: int
    derived: int
    results: int
    bytes: int
    seconds: float

    def text(self) -> str:
        return (f"exported build {self.build} of profile {self.profile}: {self.models} models, "
                f"{self.evals} evaluations, {self.derived} derived measures, {self.results} "
                f"result files, {self.bytes / 1e6:.1f} MB to {self.file} in {self.seconds:.1f} s")


def _find_build(profile: str, build_id: str | None, builds_dir: Path | None) -> Build:
    root = Path(builds_dir) if builds_dir is not None else builds_root()
    if build_id is None:
        b = latest_build(profile, root)
        if b is None:
            raise ArchiveError(f"--profile {profile}: no finished build of profile {profile!r} in "
                               f"{root / profile}; build it first (`rmpm book --profile {profile}`)")
        return b
    b = Build(profile, build_id, root / profile / build_id)
    if not b.dir.is_dir():
        have = sorted(d.name for d in (root / profile).glob("*") if d.is_dir()) \
            if (root / profile).is_dir() else []
        raise ArchiveError(f"--build {build_id}: no such build of profile {profile!r} in "
                           f"{root / profile}; builds there: {', '.join(have) or 'none'}")
    return b


def export(profile: str, file: str | os.PathLike, store: Store | str | None = None,
           build_id: str | None = None, builds_dir: Path | None = None,
           check_content: bool = True) -> ExportReport:
    """Write build ``build_id`` of ``profile`` (default: its latest) with the store entries
    its manifest lists to archive ``file`` (see the module docstring).

    Refuses, before writing, a build without a manifest, an entry the store lacks or
    holds damaged, and (``check_content``) an entry whose content no longer matches
    the manifest: an archive that import would refuse is never written.
    """
    t0 = time.perf_counter()
    file = Path(file)
    comp = compression(file)
    st = store if isinstance(store, Store) else Store(store)
    b = _find_build(profile, build_id, builds_dir)
    mpath, man = _build_manifest(b)
    entries = [("models", k) for k in man["models"]] + [("evals", k) for k in man["evals"]]
    digests = _intact_entries(st, b, entries)
    if check_content:
        _same_content(st, b, man, entries)
    derived = _derived_of(st, digests)
    results = sorted(b.results_dir.glob("*.json")) if b.results_dir.is_dir() else []
    if {p.stem for p in results} != set(man["results"]):
        raise ArchiveError(f"build {b.id}: its results/ folder holds "
                           f"{sorted(p.stem for p in results)} but its manifest lists "
                           f"{sorted(man['results'])}")
    members: list[tuple[str, Path]] = [("build/manifest.json", mpath)]
    if (b.dir / "build_info.json").is_file():
        members.append(("build/build_info.json", b.dir / "build_info.json"))
    members += [(f"build/results/{p.name}", p) for p in results]
    for kind, name in entries:
        d = st.entry_dir(kind, name)
        members += [(f"store/{kind}/{name[:2]}/{name}/{f.name}", f) for f in _files(d)]
    for d in derived:
        members += [(f"store/derived/{d.name[:2]}/{d.name}/{f.name}", f) for f in _files(d)]
    index = {"format": FORMAT, "version": VERSION, "profile": profile, "build": b.id,
             "spec_key": man["spec_key"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "files": {}}
    _write_tar(file, comp, members, index)
    counts = {k: sum(kk == k for kk, _ in entries) for k in ("models", "evals")}
    return ExportReport(file, profile, b.id, counts["models"], counts["evals"], len(derived),
                        len(results), file.stat().st_size, time.perf_counter() - t0)


def _build_manifest(b: Build) -> tuple[Path, dict[str, Any]]:
    """Build ``b``'s manifest (its path and content), which must be its profile's."""
    mpath = b.dir / "manifest.json"
    if not mpath.is_file():
        raise ArchiveError(f"build {b.id} of profile {b.profile!r} has no manifest.json (built "
                           "before builds kept their manifest); build the book again")
    man = M.load(mpath)
    if man.get("environment", {}).get("profile") != b.profile:
        raise ArchiveError(f"{mpath} is the manifest of profile "
                           f"{man.get('environment', {}).get('profile')!r}, not {b.profile!r}")
    return mpath, man


def _intact_entries(st: Store, b: Build, entries: list[tuple[str, str]]) -> dict[str, str]:
    """Refuse entries the store lacks, holds damaged or holds without checksums; returns
    ``"<kind>/<name>"`` -> :func:`rmpm.pipeline.store.entry_digest` of each."""
    problems, digests = [], {}
    for kind, name in entries:
        d = st.entry_dir(kind, name)
        found, legacy = check_entry(d, kind)
        if found or legacy:
            problems.append(f"{kind}/{name[:12]}: " + ("; ".join(found) if found else
                            "written before manifests (run `rmpm store verify --repair`)"))
            continue
        digests[f"{kind}/{name}"] = entry_digest(d)
    if problems:
        raise _problems(f"cannot export build {b.id}: the store at {st.root} lacks or holds "
                        "damaged entries its manifest lists", problems)
    return digests


def _same_content(st: Store, b: Build, man: dict[str, Any], entries: list[tuple[str, str]]) -> None:
    """Refuse entries whose weights or arrays are no longer the manifest's (recomputed)."""
    problems = []
    for kind, name in entries:
        d = st.entry_dir(kind, name)
        got = M.model_digest(ModelEntry(d)) if kind == "models" else M.eval_digest(EvalEntry(d))
        if got != man[kind][name]["digest"]:
            problems.append(f"{kind}/{name[:12]}: content differs from the manifest")
    if problems:
        raise _problems(f"cannot export build {b.id}: the store's entries were recomputed "
                        "since that build", problems)


def _derived_of(st: Store, digests: dict[str, str]) -> list[Path]:
    """The memoised measures of the exported populations only: those whose every input
    is among the exported entries (``digests``)."""
    derived = []
    for d in st.entry_dirs("derived"):
        try:
            found, legacy = check_entry(d, "derived")
            inputs = json.loads((d / "inputs.json").read_text()) if not (found or legacy) else None
        except (OSError, ValueError):
            continue
        if inputs and all(digests.get(k) == v for k, v in inputs.items()):
            derived.append(d)
    return derived


def _write_tar(file: Path, comp: str, members: list[tuple[str, Path]],
               index: dict[str, Any]) -> None:
    """Pack ``members`` (archive name, file) and, last, their ``index`` into ``file``,
    atomically; refuse store files that changed since they were checked."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        with tarfile.open(tmp, f"w:{comp}" if comp else "w", format=tarfile.PAX_FORMAT) as tf:
            for arcname, path in members:
                data = path.read_bytes()
                index["files"][arcname] = {"size": len(data), "sha256": _sha(data)}
                _add(tf, arcname, data)
            # entries were checked above; what was packed must still be what they hold
            changed = [a for a, p in members if a.startswith("store/")
                       and p.name != CHECKSUMS and not _matches_entry_checksums(p, index["files"][a])]
            if changed:
                raise _problems("the store changed while exporting", changed)
            _add(tf, INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
        os.replace(tmp, file)
    finally:
        if tmp.exists():
            tmp.unlink()


def _files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))


def _matches_entry_checksums(path: Path, rec: dict[str, Any]) -> bool:
    m = read_checksums(path.parent)
    want = (m or {}).get("files", {}).get(path.name)
    return want is not None and want["size"] == rec["size"] and want["sha256"] == rec["sha256"]


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tf.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------ import

@dataclass
class ImportReport:
    file: Path
    profile: str
    build: str
    imported: dict[str, int] = field(default_factory=dict)   # kind -> entries written
    present: dict[str, int] = field(default_factory=dict)    # kind -> already in the store
    build_dir: Path | None = None
    build_status: str = ""
    seconds: float = 0.0

    def text(self) -> str:
        kinds = ("models", "evals", "derived")
        lines = [f"imported build {self.build} of profile {self.profile} from {self.file} in "
                 f"{self.seconds:.1f} s: every digest matched its manifest",
                 "  " + ", ".join(f"{kind}: {self.imported.get(kind, 0)} written, "
                                  f"{self.present.get(kind, 0)} already stored" for kind in kinds)]
        if self.build_dir is not None:
            lines.append(f"  result files: {self.build_status} {self.build_dir}")
        else:
            lines.append(f"  result files: {self.build_status}")
        return "\n".join(lines)


def _members(file: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every member, streaming; only regular files are allowed."""
    try:
        with tarfile.open(file, "r|*") as tf:
            for m in tf:
                if not m.isfile():
                    raise ArchiveError(f"{file}: member {m.name!r} is not a regular file; an rmpm "
                                       "archive holds only files")
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise ArchiveError(f"{file} is truncated: member {m.name!r} has "
                                       f"{len(data)} of its {m.size} bytes")
                yield m.name, data
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        raise ArchiveError(f"{file} is damaged or truncated, or not a tar archive "
                           f"({type(e).__name__}: {e})") from None


@dataclass
class _Scan:
    """What the first pass learned about an archive."""

    index: dict[str, Any] | None = None
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (size, sha)
    json: dict[str, Any] = field(default_factory=dict)               # small JSON members
    content: dict[str, str] = field(default_factory=dict)            # entry -> content digest
    problems: list[str] = field(default_factory=list)


def _scan(file: Path) -> _Scan:
    """First pass: hash every member and compute the content digests; writes nothing."""
    import numpy as np
    import torch
    s = _Scan()
    for name, data in _members(file):
        if name in s.files or (name == INDEX and s.index is not None):
            s.problems.append(f"{name}: appears twice")
            continue
        if name == INDEX:
            try:
                s.index = json.loads(data)
            except ValueError:
                s.problems.append(f"{INDEX}: is not JSON")
            continue
        m_entry, m_build = _ENTRY.fullmatch(name), _BUILD.fullmatch(name)
        if not (m_entry or m_build):
            s.problems.append(f"{name}: not a member an rmpm archive has")
            continue
        if m_entry and m_entry.group(2) != m_entry.group(3)[:2]:
            s.problems.append(f"{name}: entry under the wrong prefix folder")
            continue
        s.files[name] = (len(data), _sha(data))
        try:
            if name.endswith(".json"):
                s.json[name] = json.loads(data)
            elif name.endswith("/model.pt"):
                sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                s.content[name.rsplit("/", 1)[0]] = M.weights_digest(sd)
            elif name.endswith("/arrays.npz"):
                with np.load(io.BytesIO(data)) as z:
                    s.content[name.rsplit("/", 1)[0]] = M.arrays_digest({k: z[k] for k in z.files})
        except Exception as e:  # any decoder error: a damaged member (its digest says which)
            s.problems.append(f"{name}: does not parse ({type(e).__name__})")
    return s


def _check(file: Path, s: _Scan, profile: str | None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Every check of the module docstring on a first pass's findings; returns the
    build manifest and the archive's entries (``store/<kind>/<xx>/<name>`` -> file names)."""
    _check_members(file, s)
    man = _check_origin(file, s, profile)
    entries: dict[str, list[str]] = {}
    for name in s.files:
        if name.startswith("store/"):
            folder, fname = name.rsplit("/", 1)
            entries.setdefault(folder, []).append(fname)
    problems = _entry_problems(s, man, entries) + _result_problems(s, man)
    if problems:
        raise _problems(f"{file} does not match its own manifest (a foreign or tampered "
                        "archive); nothing was imported", problems)
    return man, entries


def _check_members(file: Path, s: _Scan) -> None:
    """The archive is whole: an rmpm index of this version, every member it lists there
    with its size and SHA-256, nothing else."""
    if s.index is None or s.index.get("format") != FORMAT:
        raise ArchiveError(f"{file} is truncated or not an rmpm result archive: it has no "
                           f"{INDEX} index (an archive ends with it)"
                           + (f"; also: {'; '.join(s.problems[:_SHOWN])}" if s.problems else ""))
    idx = s.index
    if idx.get("version") != VERSION:
        raise ArchiveError(f"{file} is an rmpm archive of version {idx.get('version')!r}; this "
                           f"rmpm reads version {VERSION}")
    problems = list(s.problems)
    listed = idx.get("files", {})
    missing = sorted(set(listed) - set(s.files))
    if missing:
        problems.append(f"{len(missing)} member(s) listed in its index are missing, e.g. "
                        f"{missing[0]} (the archive is truncated or incomplete)")
    problems += [f"{n}: not listed in the archive's index" for n in sorted(set(s.files) - set(listed))]
    for name, (size, sha) in s.files.items():
        rec = listed.get(name)
        if rec is not None and (rec.get("size") != size or rec.get("sha256") != sha):
            problems.append(f"{name}: {size} bytes with SHA-256 {sha[:12]}, its index says "
                            f"{rec.get('size')} bytes, {str(rec.get('sha256'))[:12]} (corrupted)")
    if problems:
        raise _problems(f"{file} is damaged; nothing was imported", problems)


def _check_origin(file: Path, s: _Scan, profile: str | None) -> dict[str, Any]:
    """One profile and one build throughout (index, manifest, build info, every result,
    and ``profile`` if given); returns the build manifest."""
    idx = s.index
    arch_profile, build = idx.get("profile"), idx.get("build")
    man = s.json.get("build/manifest.json")
    if not isinstance(man, dict) or man.get("version") != M.MANIFEST_VERSION:
        raise ArchiveError(f"{file}: build/manifest.json is missing or not an rmpm manifest")
    info = s.json.get("build/build_info.json", {})
    profiles = {"the archive's index": arch_profile,
                "its manifest": man.get("environment", {}).get("profile"),
                "its build_info.json": info.get("profile", arch_profile)}
    profiles |= {f"result {n}": doc.get("profile") for n, doc in s.json.items()
                 if n.startswith("build/results/")}
    if profile is not None:
        profiles["--profile"] = profile
    if len(set(profiles.values())) != 1:
        raise ArchiveError(f"{file} mixes profiles (foreign archive): "
                           + ", ".join(f"{k}: {v!r}" for k, v in profiles.items()))
    if info and info.get("build") != build:
        raise ArchiveError(f"{file}: its index names build {build!r}, its build_info.json "
                           f"{info.get('build')!r} (foreign archive)")
    return man


def _entry_problems(s: _Scan, man: dict[str, Any], entries: dict[str, list[str]]) -> list[str]:
    """The archive's store entries are exactly the manifest's, each whole by its own
    checksums, under the key its content gives, with the manifest's content; derived
    measures only of those entries."""
    problems = []
    skey = man["spec_key"]
    if s.index.get("spec_key") != skey:
        problems.append(f"its index has eval spec {str(s.index.get('spec_key'))[:12]}, its "
                        f"manifest {skey[:12]}")
    have = {k: {f.rsplit("/", 1)[1] for f in entries if f.split("/")[1] == k}
            for k in ("models", "evals", "derived")}
    for kind in ("models", "evals"):
        want = set(man[kind])
        problems += [f"{kind}/{k[:12]}: in the manifest, not in the archive"
                     for k in sorted(want - have[kind])]
        problems += [f"{kind}/{k[:12]}: in the archive, not in its manifest"
                     for k in sorted(have[kind] - want)]
    digests: dict[str, str] = {}
    for folder, names in sorted(entries.items()):
        _, kind, _, key = folder.split("/")
        em = s.json.get(f"{folder}/{CHECKSUMS}")
        files = em.get("files") if isinstance(em, dict) else None
        if not isinstance(files, dict):
            problems.append(f"{kind}/{key[:12]}: no readable {CHECKSUMS}")
            continue
        if set(files) != set(names) - {CHECKSUMS}:
            problems.append(f"{kind}/{key[:12]}: holds {sorted(set(names) - {CHECKSUMS})}, its "
                            f"{CHECKSUMS} lists {sorted(files)}")
        problems += [f"{kind}/{key[:12]}: {n} is missing" for n in REQUIRED[kind] if n not in files]
        for n, rec in files.items():
            got = s.files.get(f"{folder}/{n}")
            if got is not None and (got[0] != rec.get("size") or got[1] != rec.get("sha256")):
                problems.append(f"{kind}/{key[:12]}/{n}: does not match the entry's {CHECKSUMS}")
        digests[f"{kind}/{key}"] = files_digest({n: r.get("sha256") for n, r in files.items()})
        problems += _content_problems(s, folder, kind, key, man, skey)
    for folder in (f for f in entries if f.split("/")[1] == "derived"):
        inputs = s.json.get(f"{folder}/inputs.json")
        if not isinstance(inputs, dict) or any(digests.get(k) != v for k, v in inputs.items()):
            problems.append(f"derived/{folder.rsplit('/', 1)[1][:12]}: its inputs are not the "
                            "archive's entries")
    return problems


def _result_problems(s: _Scan, man: dict[str, Any]) -> list[str]:
    """The archive's result files are exactly the manifest's, with its values."""
    results = {n.removeprefix("build/results/").removesuffix(".json"): doc
               for n, doc in s.json.items() if n.startswith("build/results/")}
    problems = []
    if set(results) != set(man["results"]):
        problems.append(f"result files {sorted(results)}, its manifest lists "
                        f"{sorted(man['results'])}")
    for name, doc in results.items():
        pub = man["results"].get(name)
        if pub is not None and content_digest(doc.get("values")) != pub["digest"]:
            problems.append(f"result {name}: values differ from the manifest")
    return problems


def _content_problems(s: _Scan, folder: str, kind: str, key: str, man: dict[str, Any],
                      skey: str) -> list[str]:
    """An entry must sit under the key its content gives and hold the manifest's content."""
    out = []
    if kind == "models":
        try:
            rkey = Recipe.from_dict(s.json[f"{folder}/recipe.json"]).key()
        except Exception as e:  # a recipe of another rmpm version or a damaged one
            return [f"models/{key[:12]}: recipe.json is not a recipe ({type(e).__name__})"]
        if rkey != key:
            out.append(f"models/{key[:12]}: its recipe has key {rkey[:12]} (entry under a foreign key)")
    elif kind == "evals":
        rkey, _, ekey = key.partition("-")
        spec = s.json.get(f"{folder}/spec.json")
        if content_key({"schema": EVAL_SCHEMA_VERSION, "spec": spec}) != ekey or ekey != skey:
            out.append(f"evals/{key[:12]}: its spec.json is not the manifest's eval spec "
                       f"{skey[:12]}")
        if rkey not in man["models"]:
            out.append(f"evals/{key[:12]}: evaluates a model the manifest does not list")
    if kind in ("models", "evals"):
        want = man[kind].get(key, {}).get("digest")
        got = s.content.get(folder)
        if want is not None and got != want:
            out.append(f"{kind}/{key[:12]}: its {'weights' if kind == 'models' else 'arrays'} "
                       "differ from the manifest's content digest")
    return out


def import_archive(file: str | os.PathLike, store: Store | str | None = None,
                   builds_dir: Path | None = None, profile: str | None = None) -> ImportReport:
    """Check archive ``file`` completely, then add its entries to ``store`` and its
    result files as a build folder under ``builds_dir`` (default: the book's; None
    outside a source checkout, where only the store entries are imported).
    ``profile``: refuse an archive of any other profile."""
    t0 = time.perf_counter()
    file = Path(file)
    if not file.is_file():
        raise ValueError(f"FILE={str(file)!r} does not exist")
    st = store if isinstance(store, Store) else Store(store)
    s = _scan(file)
    man, entries = _check(file, s, profile)
    idx = s.index
    prof, bid = idx["profile"], idx["build"]
    bdir = _builds_dir(builds_dir)
    target = bdir / prof / bid if bdir is not None else None
    build_files = {n.removeprefix("build/"): s.files[n] for n in s.files if n.startswith("build/")}
    if target is not None and target.exists():
        differ = [n for n, (size, sha) in build_files.items()
                  if not (target / n).is_file() or _sha((target / n).read_bytes()) != sha]
        if differ:
            raise ArchiveError(f"{target} exists and differs from the archive's build {bid} "
                               f"({', '.join(differ[:_SHOWN])}); move it away to import")

    # second pass: commit; every byte is checked against the index again as it is written
    rep = ImportReport(file, prof, bid)
    pending: dict[str, dict[str, bytes]] = {}
    build_data: dict[str, bytes] = {}

    def commit(folder: str) -> None:
        data = pending.pop(folder)
        _, kind, _, key = folder.split("/")
        final = st.entry_dir(kind, key)
        existed = final.is_dir() and not check_entry(final, kind)[0]
        st.commit_files(kind, key, data)
        counter = rep.present if existed else rep.imported
        counter[kind] = counter.get(kind, 0) + 1

    for name, data in _members(file):
        if name == INDEX:
            continue
        rec = idx["files"].get(name, {})
        if len(data) != rec.get("size") or _sha(data) != rec.get("sha256"):
            raise ArchiveError(f"{file} changed while it was imported ({name}); entries "
                               "committed so far are intact, rerun the import")
        if name.startswith("build/"):
            build_data[name.removeprefix("build/")] = data
            continue
        folder, fname = name.rsplit("/", 1)
        for other in [f for f in pending if f != folder]:
            commit(other)  # an entry's files are contiguous: the previous one is complete
        pending.setdefault(folder, {})[fname] = data
    for folder in list(pending):
        commit(folder)
    if target is None:
        rep.build_status = ("not placed: rmpm runs outside a source checkout (the entries are "
                            "in the store; pass builds_dir to keep them)")
    else:
        rep.build_dir = target
        rep.build_status = _place_build(target, build_data, prof, bid, file)
    rep.seconds = time.perf_counter() - t0
    return rep


def _builds_dir(builds_dir: Path | None) -> Path | None:
    if builds_dir is not None:
        return Path(builds_dir)
    try:
        return builds_root()
    except RuntimeError:  # an installed rmpm has no book folder
        return None


def _place_build(target: Path, data: dict[str, bytes], profile: str, bid: str,
                 file: Path) -> str:
    """The archived build folder at ``target`` (written whole, then renamed into place);
    it becomes the profile's ``latest`` only if the profile has none here."""
    if target.exists():  # identical (checked in the first pass)
        status = "already there as"
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{TMP_PREFIX}{bid}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            for name, b in data.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(b)
            (tmp / "imported.json").write_text(json.dumps(
                {"from": str(file.resolve()), "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                indent=1))
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        status = "placed in"
    if latest_build(profile, target.parent.parent) is None:
        set_latest(target.parent, bid)
        status += " (now the profile's latest build)"
    return status
