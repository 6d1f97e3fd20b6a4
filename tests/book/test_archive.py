"""Portable result archives (``rmpm store export`` / ``import``): the round trip gives
identical entries and digests and a store from which nothing is trained again; a
flipped byte, a truncated archive and a foreign one are each refused with one error,
leaving the store and the book's build folders untouched. Two 1-epoch MLPs on
scikit-learn's digits keep this fast."""
import io
import json
import tarfile
from pathlib import Path

import pytest

from rmpm.book import archive as A
from rmpm.book import manifest as M
from rmpm.analysis import populations as X
from rmpm.analysis.profiles import get_profile
from rmpm.cli import main
from rmpm.pipeline.runs import run_recipes
from rmpm.pipeline.store import Store, commit_dir

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains

_R = get_profile("smoke_multi").reference["digits"].replace(epochs=1, width=16)
TINY = get_profile("smoke_multi").replace(
    name="tiny_digits", datasets=("digits",), base={"digits": _R}, reference={"digits": _R},
    reference_seeds=2, corruptions=("gaussian_noise",), severities=(3,), n_test=200, n_probe=100)
PROFILE, BUILD = "smoke", "20260101T000000-abcdef"


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), but the claims of a store's
    ``locks/`` folder: empty lock files of the runs that trained it, no data."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "locks"} if root.exists() else {}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A store with a population, its memoised measures and one unrelated derived entry,
    and a finished build of it (results, build_info, manifest) as `rmpm book` leaves it."""
    tmp = tmp_path_factory.mktemp("source")
    store = Store(tmp / "store")
    pop = X.reference_population(TINY, "digits")
    spec = X.eval_spec(TINY)
    run_recipes(pop.recipes, spec, store, "cpu", progress=False, workers=0, deterministic=False)
    measures = X.cached_population_measures(pop, TINY, store=store)
    commit_dir(store.derived_dir("f" * 64), lambda d: (
        (d / "measures.json").write_text("{}"),
        (d / "inputs.json").write_text(json.dumps({"models/" + "0" * 64: "x"}))))
    builds = tmp / "builds"
    bdir = builds / PROFILE / BUILD
    (bdir / "results").mkdir(parents=True)
    (bdir / "results" / "03_rm_by_factor.json").write_text(json.dumps(
        {"name": "03_rm_by_factor", "profile": PROFILE, "build": BUILD, "written": "then",
         "values": {"rm": 0.25, "keys": list(pop.keys)}}))
    (bdir / "build_info.json").write_text(json.dumps({"profile": PROFILE, "build": BUILD}))
    man = M.compute(pop.recipes, spec.key(), store, bdir / "results",
                  environment={"profile": PROFILE, "build": BUILD})
    M.write(man, bdir / "manifest.json")
    (builds / PROFILE / "latest").write_text(BUILD + "\n")
    return {"store": store, "builds": builds, "pop": pop, "spec": spec, "manifest": man,
            "measures": measures}


@pytest.fixture(scope="module")
def archive(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("archive") / "smoke.tar"
    rep = A.export(PROFILE, path, source["store"], builds_dir=source["builds"])
    assert (rep.models, rep.evals, rep.derived, rep.results) == (2, 2, 1, 1)
    return path


def _empty(tmp_path):
    return Store(tmp_path / "store2"), tmp_path / "builds2"


def _assert_nothing_written(store, builds):
    assert _tree(store.root) == {} and _tree(builds) == {}


def test_round_trip_identical_entries_and_nothing_trained(source, archive, tmp_path, monkeypatch):
    store, builds = _empty(tmp_path)
    rep = A.import_archive(archive, store, builds_dir=builds)
    assert rep.imported == {"models": 2, "evals": 2, "derived": 1} and rep.present == {}
    # the entries are byte for byte the source's (the unrelated derived entry stayed behind)
    src, dst = _tree(source["store"].root), _tree(store.root)
    assert dst and all(src[k] == v for k, v in dst.items())
    assert set(src) - set(dst) == {k for k in src if k.startswith("derived/ff/")}
    # the build folder is the source's, plus a note of where it came from; it is the latest
    target = builds / PROFILE / BUILD
    assert _tree(target) == {**_tree(source["builds"] / PROFILE / BUILD),
                             "imported.json": (target / "imported.json").read_bytes()}
    assert (builds / PROFILE / "latest").read_text().strip() == BUILD
    # rmpm verify: every model, evaluation and result identical to the published manifest
    assert M.verify(source["manifest"], store, target / "results").identical
    # a rebuild trains and evaluates nothing, and reuses the memoised measures
    res = run_recipes(source["pop"].recipes, source["spec"], store, "cpu", progress=False,
                      workers=0, deterministic=False)
    assert [r.trained for r in res] == [False, False]
    monkeypatch.setattr(X, "population_measures", lambda *a, **k: pytest.fail("recomputed"))
    assert X.cached_population_measures(source["pop"], TINY, store=store) == source["measures"]
    # importing again changes nothing and says so
    again = A.import_archive(archive, store, builds_dir=builds)
    assert again.imported == {} and again.present == {"models": 2, "evals": 2, "derived": 1}
    assert "already there" in again.text()


def _member_offset(path: Path, suffix: str) -> tuple[int, int]:
    with tarfile.open(path) as tf:
        m = next(m for m in tf.getmembers() if m.name.endswith(suffix))
        return m.offset_data, m.size


def test_a_flipped_byte_in_a_weight_file_is_refused(archive, tmp_path):
    bad = tmp_path / "bad.tar"
    data = bytearray(archive.read_bytes())
    off, size = _member_offset(archive, "/model.pt")
    data[off + size // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    store, builds = _empty(tmp_path)
    with pytest.raises(A.ArchiveError, match=r"is damaged.*model\.pt.*corrupted"):
        A.import_archive(bad, store, builds_dir=builds)
    _assert_nothing_written(store, builds)


def test_a_damaged_compressed_archive_is_refused(source, tmp_path):
    gz = tmp_path / "smoke.tar.gz"
    A.export(PROFILE, gz, source["store"], builds_dir=source["builds"])
    data = bytearray(gz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gz.write_bytes(bytes(data))
    store, builds = _empty(tmp_path)
    with pytest.raises(A.ArchiveError, match="damaged"):
        A.import_archive(gz, store, builds_dir=builds)
    _assert_nothing_written(store, builds)


@pytest.mark.parametrize("where", ["inside a member", "at a member boundary"])
def test_a_truncated_archive_is_refused(archive, tmp_path, where):
    off, size = _member_offset(archive, "/arrays.npz")
    cut = off + size // 3 if where == "inside a member" else off + size + (-size % 512)
    short = tmp_path / "short.tar"
    short.write_bytes(archive.read_bytes()[:cut])
    store, builds = _empty(tmp_path)
    with pytest.raises(A.ArchiveError, match="truncated"):
        A.import_archive(short, store, builds_dir=builds)
    _assert_nothing_written(store, builds)


def _rewrite(archive: Path, out: Path, change) -> Path:
    """A copy of ``archive`` whose members ``change(name, bytes)`` rewrites, with an index
    that agrees with the new bytes: only the content checks can catch it."""
    with tarfile.open(archive) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    files = {n: change(n, b) for n, b in members if n != A.INDEX}
    index = json.loads(dict(members)[A.INDEX])
    index["files"] = {n: {"size": len(b), "sha256": A._sha(b)} for n, b in files.items()}
    with tarfile.open(out, "w") as tf:
        for n, b in [*files.items(), (A.INDEX, json.dumps(index).encode())]:
            info = tarfile.TarInfo(n)
            info.size = len(b)
            tf.addfile(info, io.BytesIO(b))
    return out


def test_a_foreign_manifest_is_refused(archive, tmp_path):
    """The manifest of another build (one model trained differently) with these entries."""
    def change(name, data):
        if name == "build/manifest.json":
            man = json.loads(data)
            key = sorted(man["models"])[0]
            man["models"][key]["digest"] = "0" * 64
            return json.dumps(man).encode()
        return data
    foreign = _rewrite(archive, tmp_path / "foreign.tar", change)
    store, builds = _empty(tmp_path)
    with pytest.raises(A.ArchiveError, match="foreign.*weights differ from the manifest"):
        A.import_archive(foreign, store, builds_dir=builds)
    _assert_nothing_written(store, builds)


def test_swapped_weights_are_refused(archive, tmp_path):
    """Two models' weights swapped between their entries: every file still matches its
    entry manifest once that is rewritten too, but not the recipe keys' content."""
    with tarfile.open(archive) as tf:
        weights = {m.name: tf.extractfile(m).read() for m in tf.getmembers()
                   if m.name.endswith("/model.pt")}
    a, b = sorted(weights)

    def change(name, data):
        if name in (a, b):
            return weights[b if name == a else a]
        if name in (a.replace("model.pt", "manifest.json"), b.replace("model.pt", "manifest.json")):
            m = json.loads(data)
            other = weights[b if name.startswith(a.rsplit("/", 1)[0]) else a]
            m["files"]["model.pt"] = {"size": len(other), "sha256": A._sha(other)}
            return json.dumps(m).encode()
        return data
    foreign = _rewrite(archive, tmp_path / "swapped.tar", change)
    store, builds = _empty(tmp_path)
    with pytest.raises(A.ArchiveError, match="weights differ from the manifest"):
        A.import_archive(foreign, store, builds_dir=builds)
    _assert_nothing_written(store, builds)


def test_another_profiles_archive_is_refused(archive, tmp_path, capsys):
    store, builds = _empty(tmp_path)
    with pytest.raises(A.ArchiveError, match="mixes profiles.*--profile: 'default'"):
        A.import_archive(archive, store, builds_dir=builds, profile="default")
    _assert_nothing_written(store, builds)
    # a result file of another profile inside is foreign too
    def change(name, data):
        if name.startswith("build/results/"):
            doc = json.loads(data)
            return json.dumps({**doc, "profile": "default"}).encode()
        return data
    mixed = _rewrite(archive, tmp_path / "mixed.tar", change)
    with pytest.raises(A.ArchiveError, match="mixes profiles"):
        A.import_archive(mixed, store, builds_dir=builds)
    _assert_nothing_written(store, builds)


def test_a_build_folder_of_the_same_id_with_other_results_is_not_overwritten(archive, tmp_path):
    store, builds = _empty(tmp_path)
    target = builds / PROFILE / BUILD / "results"
    target.mkdir(parents=True)
    (target / "03_rm_by_factor.json").write_text("{}")
    with pytest.raises(A.ArchiveError, match="exists and differs"):
        A.import_archive(archive, store, builds_dir=builds)
    assert _tree(store.root) == {}


def test_export_refuses_a_damaged_entry_and_leaves_no_file(source, tmp_path):
    st = Store(tmp_path / "copy")
    import shutil
    shutil.copytree(source["store"].root, st.root)
    ev = next(st.entry_dirs("evals")) / "arrays.npz"
    data = bytearray(ev.read_bytes())
    data[len(data) // 2] ^= 0x01
    ev.write_bytes(bytes(data))
    out = tmp_path / "out.tar"
    with pytest.raises(A.ArchiveError, match=r"damaged entries.*arrays\.npz"):
        A.export(PROFILE, out, st, builds_dir=source["builds"])
    assert list(tmp_path.glob("*.tar*")) == [] and not list(tmp_path.glob(".out.tar*"))


def test_export_refuses_unknown_build_and_bad_file_name(source, tmp_path):
    with pytest.raises(ValueError, match="FILE=.*must end in one of .tar"):
        A.export(PROFILE, tmp_path / "x.zip", source["store"], builds_dir=source["builds"])
    with pytest.raises(A.ArchiveError, match="--build nope: no such build.*" + BUILD):
        A.export(PROFILE, tmp_path / "x.tar", source["store"], build_id="nope",
                 builds_dir=source["builds"])
    with pytest.raises(A.ArchiveError, match="no finished build of profile 'default'"):
        A.export("default", tmp_path / "x.tar", source["store"], builds_dir=source["builds"])


def test_cli(source, archive, tmp_path, monkeypatch, capsys):
    from rmpm import paths
    monkeypatch.setattr(paths, "generated_dir", lambda: source["builds"].parent)
    out = tmp_path / "cli.tar"
    assert main(["store", "export", "--profile", PROFILE, str(out),
                 "--store", str(source["store"].root)]) == 0
    assert "2 models, 2 evaluations, 1 derived" in capsys.readouterr().out
    # import into an empty store of another checkout's book
    monkeypatch.setattr(paths, "generated_dir", lambda: tmp_path / "gen")
    assert main(["store", "import", str(out), "--store", str(tmp_path / "s2")]) == 0
    assert "every digest matched" in capsys.readouterr().out
    assert (tmp_path / "gen" / "builds" / PROFILE / BUILD / "manifest.json").is_file()
    # a damaged one: one line, exit 2, nothing written
    bad = tmp_path / "bad.tar"
    data = bytearray(out.read_bytes())
    off, size = _member_offset(out, "/model.pt")
    data[off + 7] ^= 0x01
    bad.write_bytes(bytes(data))
    assert main(["store", "import", str(bad), "--store", str(tmp_path / "s3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rmpm store: error:") and "model.pt" in err[0]
    assert not (tmp_path / "s3").exists()
    # wrong combinations stop before any work
    for argv in (["store", "export", str(out)], ["store", "import"],
                 ["store", "ls", str(out)], ["store", "verify", "--profile", "smoke"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert main(["store", "export", "--profile", PROFILE, str(tmp_path / "x.zip")]) == 2
    assert "must end in one of" in capsys.readouterr().err


def test_an_archive_changed_between_the_two_passes_is_caught(archive, tmp_path, monkeypatch):
    """The second pass checks every byte it writes against the index again."""
    real, passes = A._members, []

    def members(file):
        passes.append(file)
        for name, data in real(file):
            if len(passes) == 2 and name.endswith("/model.pt"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            yield name, data
    monkeypatch.setattr(A, "_members", members)
    store, builds = _empty(tmp_path)
    with pytest.raises(A.ArchiveError, match="changed while it was imported"):
        A.import_archive(archive, store, builds_dir=builds)
    assert _tree(builds) == {}
    # what was committed before the change is whole and intact
    from rmpm.pipeline.store import check_entry
    assert all(not check_entry(d)[0] for d in store.entry_dirs())
    assert not [d for d in store.root.rglob(".tmp-*")]
