import pytest
"""Per-figure provenance lines, added to executed notebooks by post-processing: the
notebook (download link), the rmpm functions the figure's cell calls (resolved through
the notebook's imports), the chapter's result file and its content digest, build and
commit. (tests/book/test_book_provenance.py checks them against a build's manifest.)"""
import nbformat

from rmpm.book import provenance as P
from rmpm.book import builds as BD
from rmpm.book import notebooks as NB


def _nb():
    nb = nbformat.v4.new_notebook()
    cells = [
        "%matplotlib inline\nimport numpy as np\nfrom rmpm.analysis import factor_analysis as A\nfrom rmpm.book import plots\n"
        "import rmpm.measures.stats as S\nfrom rmpm.book.chapter import factor_chapter",
        "ch = factor_chapter(profile)\ntable = ch.table",
        "ci = A.layer_intervals(table, 'fmnist', n_boot=10)\nfig = plots.layer_lines(ci)\n"
        "np.mean([1, 2])",
        "print(S.kendalls_w([[1, 2], [2, 1]]))",
        "rho = S.correlation([1, 2, 3], [1, 3, 2]).estimate\nfig = plots.interval_chart(rho)",
    ]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells[2].metadata["mystnb"] = {"figure": {"caption": "RM by layer", "name": "fig-layers"}}
    nb.cells[4].metadata["mystnb"] = {"figure": {"caption": "A chart", "name": "fig-chart"}}
    return nb


def test_imports_and_calls_resolve_to_rmpm_functions():
    nb = _nb()
    imports = P.notebook_imports([c.source for c in nb.cells])
    assert imports == {"A": "rmpm.analysis.factor_analysis", "plots": "rmpm.book.plots",
                       "S": "rmpm.measures.stats", "factor_chapter": "rmpm.book.chapter.factor_chapter"}
    assert P.rmpm_calls(nb.cells[2].source, imports) == [
        "rmpm.analysis.factor_analysis.layer_intervals", "rmpm.book.plots.layer_lines"]  # not np.mean
    assert P.rmpm_calls(nb.cells[4].source, imports) == [
        "rmpm.measures.stats.correlation", "rmpm.book.plots.interval_chart"]
    assert P.rmpm_calls("this is not python(", imports) == []
    # `import rmpm.x` binds rmpm itself
    assert P.rmpm_calls("rmpm.book.plots.f()", P.notebook_imports(["import rmpm.book.plots"])) == [
        "rmpm.book.plots.f"]


def test_every_figure_gets_one_line_and_only_figures():
    nb = P.add_figure_provenance(_nb(), "03_rm_by_factor", "03_rm_by_factor", "ab" * 32,
                                 "20260101T000000-abcdef", "0123456789abcdef0123")
    lines = P.figure_lines(nb)
    assert set(lines) == {"fig-layers", "fig-chart"}
    assert len(nb.cells) == 5 + 2
    # each line sits right after its figure cell
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and c.metadata.get("mystnb", {}).get("figure"):
            after = nb.cells[i + 1]
            assert after.cell_type == "markdown" and P.TAG in after.metadata["tags"]
    text = lines["fig-layers"]
    for part in ("{download}`03_rm_by_factor.ipynb <03_rm_by_factor.ipynb>`",
                 "`rmpm.analysis.factor_analysis.layer_intervals`, `rmpm.book.plots.layer_lines`",
                 "result `03_rm_by_factor.json` (content SHA-256 `abababababababab…`)",
                 "build `20260101T000000-abcdef`", "commit `0123456789ab`"):
        assert part in text, part
    assert "np.mean" not in text and "kendalls_w" not in text


def test_annotating_twice_replaces_and_a_missing_result_is_said():
    once = P.add_figure_provenance(_nb(), "x", "x", None, "b1", "c1")
    twice = P.add_figure_provenance(once, "x", "x", "cd" * 32, "b2", "c2")
    assert len(twice.cells) == len(once.cells)
    assert "(not written)" in P.figure_lines(once)["fig-chart"]
    assert "build `b2`" in P.figure_lines(twice)["fig-chart"]
    assert "build `b1`" not in "".join(c.source for c in twice.cells)


@pytest.mark.trains
def test_a_book_build_annotates_its_figures(tmp_path, monkeypatch):
    """run_notebooks adds the lines to what it executed, with the digest of the result
    file the notebook wrote in this build."""
    import json

    from rmpm import paths
    from rmpm.book import build as B
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    fig = nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nfrom rmpm.book import records\n"
        "records.save('01_fig', profile, {'x': 1})\n"
        "fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([1, 2])\nplt.show()")
    fig.metadata["mystnb"] = {"figure": {"caption": "A line", "name": "fig-line"}}
    nb.cells = [params, fig]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbs / "01_fig.ipynb")
    monkeypatch.setattr(paths, "notebooks_dir", lambda: nbs)
    monkeypatch.setattr(paths, "executed_dir", lambda: tmp_path / "executed")
    monkeypatch.setattr(NB, "kernel_name", lambda: "python3")
    B.run_notebooks("smoke", builds_dir=tmp_path / "builds")
    build = BD.latest_build("smoke", tmp_path / "builds")
    from rmpm.book.records import content_digest
    # the content digest, as the manifest lists it
    digest = content_digest(json.loads((build.results_dir / "01_fig.json").read_text())["values"])
    lines = P.figure_lines(nbformat.read(tmp_path / "executed" / "01_fig.ipynb", as_version=4))
    assert set(lines) == {"fig-line"}
    text = lines["fig-line"]
    assert f"content SHA-256 `{digest[:16]}…`" in text and f"build `{build.id}`" in text
    assert "`rmpm.book.records.save`" in text
    assert json.loads((build.dir / BD.STATUS).read_text())["notebooks"]["01_fig"]["state"] == "ran"
