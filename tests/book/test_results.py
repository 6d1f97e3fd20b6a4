"""Results nobody overwrites by accident, and notebook parameters checked
wherever a notebook runs (JupyterLab, plain papermill, rmpm book)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rmpm import paths

from rmpm.book import build as book

from rmpm.book import notebooks as NB

from rmpm.book import builds as BD
from rmpm.book import chapter as N, records as results


@pytest.fixture
def no_results_env(tmp_path, monkeypatch):
    """As a user's shell: no RMPM_RESULTS/RMPM_BUILD; the cache (where interactive
    results go) in tmp, the store and data sets where they are."""
    store, data = paths.store_root(), paths.data_root()
    monkeypatch.delenv("RMPM_RESULTS", raising=False)
    monkeypatch.delenv("RMPM_BUILD", raising=False)
    monkeypatch.setenv("RMPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RMPM_STORE", str(store))
    monkeypatch.setenv("RMPM_DATA", str(data))
    return tmp_path


def _digests(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.json"))}


def test_a_build_has_its_own_results_and_interactive_runs_write_elsewhere(no_results_env):
    root = no_results_env / "builds"
    b = BD.new_build("smoke", root)
    with BD.build_env(b):
        results.save("02_populations", "smoke", {"x": 1})
        assert results.values("02_populations", "smoke") == {"x": 1}
    book_files = _digests(b.results_dir)
    assert json.loads((b.results_dir / "02_populations.json").read_text())["build"] == b.id
    # an interactive run of the same chapter, outside the build
    path = results.save("02_populations", "smoke", {"x": 2})
    assert path.parent == results.interactive_dir() != b.results_dir
    assert json.loads(path.read_text())["build"] == results.INTERACTIVE
    assert results.values("02_populations", "smoke") == {"x": 2}
    assert _digests(b.results_dir) == book_files
    with BD.build_env(b):  # the book reads only its own build's files
        assert results.values("02_populations", "smoke") == {"x": 1}
        assert set(results.file_digests()) == {"02_populations"}
    assert results.values("02_populations", "default") is None  # never mixes profiles


def test_only_starts_a_new_build_from_a_copy_of_the_latest(no_results_env):
    root = no_results_env / "builds"
    first = BD.new_build("smoke", root)
    with BD.build_env(first):
        results.save("03_rm_by_factor", "smoke", {"x": 3})
    first = BD.finish_build(first)
    before = _digests(first.results_dir)
    second = BD.new_build("smoke", root, inherit=True)
    assert second.dir != first.dir and _digests(second.results_dir) == before
    with BD.build_env(second):
        results.save("03_rm_by_factor", "smoke", {"x": 4})
    assert _digests(first.results_dir) == before
    assert BD.latest_build("smoke", root) == first


def test_run_notebooks_with_no_names_is_an_error():
    with pytest.raises(ValueError, match=r"only=\[\] names no notebook; choose from: 00_methods"):
        book.run_notebooks("smoke", only=[])


def test_parameters_are_checked_in_the_notebook_itself():
    """What the first line after the parameters cell does in a kernel."""
    ok = {"profile": "smoke", "dataset": None, "n_models": None, "conv": "pool", "device": "cpu"}
    N.check_parameters("02_populations", dict(ok, In=["", "profile = 'smoke'"]))  # JupyterLab
    injected = "# Parameters\nprofile = \"smoke\"\nn_boot = \"abc\"\n"
    with pytest.raises(ValueError, match=r"02_populations has no parameter\(s\) n_boot; its "
                                         r"parameters are: conv, dataset, device, n_models, profile"):
        N.check_parameters("02_populations", dict(ok, n_boot="abc", In=["", injected]))
    cases = {
        ("n_models", 0): "parameter n_models=0 must be >= 2 (or None for the default)",
        ("n_models", "abc"): "parameter n_models='abc' must be an integer",
        ("conv", "max"): "parameter conv='max' is not allowed; choose one of: 'positions', 'pool'",
        ("device", "nosuch"): "parameter device='nosuch' is not a device; choose one of: auto, cpu",
    }
    for (name, value), msg in cases.items():
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            N.check_parameters("02_populations", dict(ok, **{name: value}))
    with pytest.raises(ValueError, match="parameter dataset='mnist' is not allowed; choose one of: "
                                         "'fashion_mnist'"):
        N.check_parameters("02_populations", dict(ok, profile="default", dataset="mnist"))
    with pytest.raises(ValueError, match="parameter factors=\\['colour'\\]|factors='colour' is not"):
        N.check_values("03_rm_by_factor", {"profile": "smoke", "factors": ["colour"]})
    with pytest.raises(ValueError, match="parameter alpha=1.5 must be <= 1.0"):
        N.check_values("08_claims", {"profile": "smoke", "alpha": 1.5})


def test_every_notebook_checks_its_parameters_first():
    import nbformat
    for path in NB.notebook_paths():
        nb = nbformat.read(path, as_version=4)
        i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        first = next(c for c in nb.cells[i + 1:] if c.cell_type == "code")
        assert first.source.splitlines()[0] == (
            f'from rmpm.book.chapter import check_parameters; check_parameters("{path.stem}", globals())')
        for profile in ("smoke", "smoke_multi", "default", "paper"):  # the defaults pass
            N.check_values(path.stem, {**N.declared_parameters(path.stem), "profile": profile})


def _papermill(nb, out, *params):
    cmd = [sys.executable, "-m", "papermill", str(paths.notebooks_dir() / f"{nb}.ipynb"), str(out),
           "-k", NB.kernel_name(), "--no-progress-bar", *params]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.notebook
def test_plain_papermill_refuses_unknown_and_ill_typed_parameters(no_results_env):
    out = no_results_env / "o.ipynb"
    r = _papermill("08_claims", out, "-p", "profile", "smoke", "-p", "n_boot", "abc")
    assert r.returncode != 0
    assert "08_claims has no parameter(s) n_boot; its parameters are: alpha" in r.stdout + r.stderr
    r = _papermill("08_claims", out, "-p", "profile", "smoke", "-p", "alpha", "abc")
    assert r.returncode != 0
    assert "08_claims: parameter alpha='abc' must be a number" in r.stdout + r.stderr
    assert not results.interactive_dir().exists()  # nothing was written


@pytest.mark.notebook
def test_plain_papermill_after_a_book_build_leaves_the_book_results_unchanged(no_results_env):
    tmp = no_results_env
    book.run_notebooks("smoke", only=["02_populations"], out_dir=tmp / "executed",
                       builds_dir=tmp / "builds")
    built = BD.latest_build("smoke", tmp / "builds")
    before = _digests(built.results_dir)
    assert set(before) == {"02_populations.json"}
    assert json.loads((built.results_dir / "02_populations.json").read_text())["build"] == built.id
    # the README's command, as a user would run it after the build
    r = _papermill("02_populations", tmp / "mine.ipynb", "-p", "profile", "smoke",
                   "-p", "conv", "pool")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _digests(built.results_dir) == before
    mine = json.loads((results.interactive_dir() / "02_populations.json").read_text())
    assert mine["build"] == "interactive" and mine["profile"] == "smoke"
    with BD.build_env(built):
        assert results.load("02_populations")["build"] == built.id


def test_a_stopped_or_failed_build_leaves_nothing_that_looks_like_a_build(no_results_env,
                                                                        monkeypatch):
    root = no_results_env / "builds"
    done = BD.finish_build(BD.new_build("smoke", root))
    calls = []

    def execute(nb, out, params, **kw):  # the first notebook runs, the second is stopped
        calls.append(nb.stem)
        results.save(nb.stem, "smoke", {"x": 1})
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.0

    monkeypatch.setattr(book, "execute", execute)
    monkeypatch.setattr(book, "show_parameters", lambda *a: None)
    monkeypatch.setattr(book, "annotate_figures", lambda *a: None)
    monkeypatch.setattr(book, "rewrite_notebook", lambda *a: None)  # no notebook was written
    with pytest.raises(KeyboardInterrupt) as e:
        book.run_notebooks("smoke", out_dir=no_results_env / "executed", builds_dir=root)
    n = len(NB.notebook_paths())
    assert e.value.note.endswith(f"(1 of {n} notebook(s) had run) and is discarded; the latest "
                                 f"smoke build is still {done.id}")
    assert sorted(p.name for p in (root / "smoke").iterdir()) == [done.id, "latest"]
    assert BD.latest_build("smoke", root) == done
    monkeypatch.setattr(book, "execute", lambda *a, **k: 1 / 0)  # a failing notebook
    with pytest.raises(book.NotebookFailed) as e:
        book.run_notebooks("smoke", out_dir=no_results_env / "executed", builds_dir=root)
    # kept for inspection under a name no finished build has
    [failed] = [p for p in (root / "smoke").iterdir() if p.name.startswith(".failed-")]
    assert f"status: {failed / BD.STATUS}" in str(e.value)
    assert sorted(p.name for p in (root / "smoke").iterdir()) == sorted(
        [done.id, "latest", failed.name])
    assert BD.latest_build("smoke", root) == done


_KILLED = """
import os, sys
from pathlib import Path
from rmpm.book import builds as BD, records
b = BD.new_build("smoke", Path({root!r}))
with BD.build_env(b):
    records.save("02_populations", "smoke", {{"x": 1}})
print(b.dir, flush=True)
sys.stdin.readline()
"""


def test_a_killed_build_leaves_only_a_hidden_partial_that_the_next_build_sets_aside(
        no_results_env):
    """kill -9 in the middle of a build: no folder named like a build, no latest; the
    next build finds its claim expired and moves it aside as failed, and leaves a live
    one alone."""
    import os
    import signal
    root = no_results_env / "builds"
    env = {**os.environ, "PYTHONPATH": str(paths.repo_root())}
    procs = [subprocess.Popen([sys.executable, "-c", _KILLED.format(root=str(root))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    killed, alive = [Path(p.stdout.readline().strip()) for p in procs]
    os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].wait(10)
    assert killed.is_dir() and killed.name.startswith(".partial-")
    assert [p.name for p in (root / "smoke").iterdir() if not p.name.startswith(".")] == []
    assert BD.latest_build("smoke", root) is None
    b = BD.new_build("smoke", root)  # sweeps what the killed one left
    assert not killed.exists() and alive.is_dir()
    assert (root / "smoke" / killed.name.replace(".partial-", ".failed-")).is_dir()
    assert BD.latest_build("smoke", root) is None
    procs[1].stdin.close()
    procs[1].wait(10)
    BD.abandon_build(b)


def test_reports_go_to_the_builds_own_folder(no_results_env):
    root = no_results_env / "builds"
    b = BD.new_build("smoke", root)
    with BD.build_env(b):
        assert results.reports_dir() == b.reports_dir
        (results.reports_dir() / "07_x").mkdir(parents=True)
    assert results.reports_dir() == paths.cache_root() / "reports"  # interactive runs
    done = BD.finish_build(b)
    assert (done.dir / "reports" / "07_x").is_dir() and done.reports_dir.parent == done.dir
    assert not (paths.generated_dir() / "reports" / "07_x").exists()


@pytest.mark.notebook
def test_a_parameter_error_in_the_kernel_is_one_line(no_results_env, monkeypatch):
    """A value only the kernel refuses: the executed notebook shows the ParameterError
    alone, no traceback, and the build's one-line error quotes it."""
    import nbformat
    from papermill.exceptions import PapermillExecutionError
    out = no_results_env / "o.ipynb"
    monkeypatch.setattr(NB, "check_papermill_parameters", lambda *a: None)  # let it reach the kernel
    with pytest.raises(PapermillExecutionError) as e:
        NB.execute(paths.notebooks_dir() / "08_claims.ipynb", out,
                     {"profile": "smoke", "alpha": "abc"})
    want = "ParameterError: 08_claims: parameter alpha='abc' must be a number"
    assert e.value.traceback == [want]
    assert NB.error_line(e.value).endswith(f"raised {want}")
    nb = nbformat.read(out, as_version=4)
    [err] = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if o.output_type == "error"]
    assert err.traceback == [want]
