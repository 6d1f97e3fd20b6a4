"""The execution record of a book build: per notebook whether it ran in this build or
was reused by an ``--only`` build, its run time and papermill's status, on the
reproducibility page; a failing notebook stops the build naming the partially
executed notebook, which is kept, and the status file. Tiny notebooks executed by
papermill keep this fast."""
import json

import nbformat
import pytest

from rmpm import paths
from rmpm.book import build as B
from rmpm.book import notebooks as NB
from rmpm.book import builds as BD
from rmpm.book import reproducibility as RP

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def book(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "01_first.ipynb", "print('first')")
    _notebook(nbs / "02_second.ipynb", "x = 2 * 21", "print(x)")
    monkeypatch.setattr(paths, "notebooks_dir", lambda: nbs)
    monkeypatch.setattr(paths, "executed_dir", lambda: tmp_path / "executed")
    monkeypatch.setattr(NB, "kernel_name", lambda: "python3")
    return tmp_path


def _status(build_dir):
    return json.loads((build_dir / BD.STATUS).read_text())


def test_status_records_what_ran_and_what_was_reused(book):
    builds = book / "builds"
    B.run_notebooks("smoke", builds_dir=builds)
    first = BD.latest_build("smoke", builds)
    s1 = _status(first.dir)
    assert s1["state"] == "finished" and s1["build"] == first.id
    for name in ("01_first", "02_second"):
        e = s1["notebooks"][name]
        assert e["state"] == "ran" and e["build"] == first.id
        assert e["papermill"] == "completed" and e["seconds"] > 0

    # --only: a new build runs one chapter and inherits the other's record
    B.run_notebooks("smoke", only=["02_second"], builds_dir=builds)
    second = BD.latest_build("smoke", builds)
    assert second.id != first.id
    s2 = _status(second.dir)["notebooks"]
    assert s2["02_second"]["state"] == "ran" and s2["02_second"]["build"] == second.id
    assert s2["01_first"] == {**s1["notebooks"]["01_first"], "state": "reused"}

    # a third build reusing it still names the build that really executed it
    B.run_notebooks("smoke", only=["02_second"], builds_dir=builds)
    third = BD.latest_build("smoke", builds)
    assert _status(third.dir)["notebooks"]["01_first"]["build"] == first.id

    lines = "\n".join(RP.execution_section({"execution": _status(second.dir)}))
    assert "## Execution status" in lines and "reused" in lines
    assert f"| [01_first](../_executed/01_first.ipynb) | reused | `{first.id}` |" in lines
    assert f"| [02_second](../_executed/02_second.ipynb) | ran | `{second.id}` |" in lines
    assert "completed" in lines
    assert RP.execution_section({"execution": None}) == []


def test_a_failing_notebook_is_kept_and_named(book):
    _notebook(paths.notebooks_dir() / "03_fails.ipynb", "print('got this far')",
              "raise ValueError('boom')")
    builds = book / "builds"
    with pytest.raises(B.NotebookFailed) as e:
        B.run_notebooks("smoke", builds_dir=builds)
    msg = str(e.value)
    assert BD.latest_build("smoke", builds) is None  # a failed build never becomes the latest
    bdir = next((builds / "smoke").iterdir())
    status = _status(bdir)
    entry = status["notebooks"]["03_fails"]
    assert status["state"] == "failed" and entry["state"] == "failed"
    # papermill's numbering: In [1] parameters, [2] its injected values, [3] print, [4] raise
    assert entry["error"] == "In [4] raised ValueError: boom"
    assert entry["papermill"] == "failed at In [4]"
    assert status["notebooks"]["01_first"]["state"] == "ran"
    kept = bdir / "failed" / "03_fails.ipynb"
    assert entry["partial"] == str(kept)
    # the kept copy is what papermill wrote: the cells before the failure, with outputs
    text = kept.read_text()
    assert "got this far" in text and "boom" in text
    for named in (str(paths.executed_dir() / "03_fails.ipynb"), str(kept), str(bdir / BD.STATUS),
                  "ValueError: boom", "03_fails.ipynb failed in build"):
        assert named in msg
    assert "\n" not in msg  # one line (the CLI prints `rmpm book: error: ...`)


def test_a_notebook_that_fails_before_papermill_writes_is_named_too(book, monkeypatch):
    def refuse(path, out, params, **kw):
        raise ValueError(f"{path.name} has no parameter(s) nope")
    monkeypatch.setattr(B, "execute", refuse)
    with pytest.raises(B.NotebookFailed, match="failed before papermill wrote a notebook"):
        B.run_notebooks("smoke", builds_dir=book / "builds")
    status = _status(next((book / "builds" / "smoke").iterdir()))
    assert status["notebooks"]["01_first"]["partial"] is None
    assert status["notebooks"]["01_first"]["error"].startswith("ValueError:")


def test_papermill_status_reads_the_record(tmp_path):
    p = tmp_path / "x.ipynb"
    nb = nbformat.v4.new_notebook()
    nbformat.write(nb, p)
    assert NB.papermill_status(p) is None
    nb.metadata["papermill"] = {"exception": False}
    nbformat.write(nb, p)
    assert NB.papermill_status(p) == "completed"
    assert NB.papermill_status(tmp_path / "missing.ipynb") is None
