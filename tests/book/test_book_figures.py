"""Numbered figures: captioned figure cells, unique labels, references that resolve,
and the build's split of a figure cell that also shows other outputs."""
import re

import nbformat
import pytest


from rmpm.book import notebooks as NB
from rmpm.book.chapter import split_figure_outputs

NUMREF = re.compile(r"\{numref\}`(?:[^`<]*<)?([^`>]+)>?`")
#: the chapters' form of a figure reference (rmpm.book.readable): [Fig. 12](#fig-x)
FIGURE_LINK = re.compile(r"\]\(#(fig-[^)\s]+)\)")


def _figures():
    out = {}
    for path in NB.notebook_paths():
        nb = nbformat.read(path, as_version=4)
        for c in nb.cells:
            fig = c.metadata.get("mystnb", {}).get("figure")
            if fig:
                assert c.cell_type == "code", (path.stem, fig)
                out.setdefault(fig["name"], []).append(path.stem)
                assert fig["name"].startswith("fig-") and fig.get("caption"), (path.stem, fig)
    return out


def test_figure_labels_are_unique_and_every_reference_resolves():
    figures = _figures()
    assert len(figures) >= 20
    assert all(len(v) == 1 for v in figures.values()), {k: v for k, v in figures.items() if len(v) > 1}
    for path in NB.notebook_paths():
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        mine = {n for n, (stem,) in figures.items() if stem == path.stem}
        refs = NUMREF.findall(text) + FIGURE_LINK.findall(text)
        assert refs or not mine, f"{path.stem} never refers to its figures"
        for ref in refs:
            assert ref in mine, f"{path.stem} cites {ref}, which is not one of its figures"


def _cell(outputs, fig=True):
    meta = {"tags": ["hide-input"]}
    if fig:
        meta["mystnb"] = {"figure": {"caption": "A caption.", "name": "fig-x"}}
    c = nbformat.v4.new_code_cell("show()", metadata=meta)
    c.outputs = outputs
    return c


def _png():
    return nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})


def _table():
    return nbformat.v4.new_output("execute_result", data={"text/html": "<table/>", "text/plain": "t"},
                                  execution_count=1)


def test_a_figure_cell_with_a_table_is_split_so_the_figure_holds_only_the_image():
    stderr = nbformat.v4.new_output("stream", name="stderr", text="progress")
    nb = nbformat.v4.new_notebook(cells=[_cell([stderr, _table(), _png(), _table()])])
    out = split_figure_outputs(nb)
    assert [len(c.outputs) for c in out.cells] == [2, 1, 1]
    figs = [c for c in out.cells if c.metadata.get("mystnb", {}).get("figure")]
    assert len(figs) == 1 and figs[0].outputs[0]["data"]["image/png"] == "iVBOR"
    assert [("remove-input" in c.metadata["tags"]) for c in out.cells] == [False, True, True]
    assert len({c["id"] for c in out.cells}) == 3
    assert "mystnb" in nb.cells[0].metadata and len(nb.cells) == 1  # input untouched
    nbformat.validate(out)


def test_a_figure_cell_with_only_its_image_is_left_alone_and_one_without_loses_its_caption():
    nb = nbformat.v4.new_notebook(cells=[_cell([_png()]), _cell([_table()]), _cell([_table()], fig=False)])
    out = split_figure_outputs(nb)
    assert out.cells[0] == nb.cells[0]
    assert "figure" not in out.cells[1].metadata["mystnb"]
    assert out.cells[2] == nb.cells[2]


def test_a_figure_cell_with_two_images_is_refused():
    nb = nbformat.v4.new_notebook(cells=[_cell([_png(), _png()])])
    with pytest.raises(ValueError, match="figure 'fig-x'.* shows 2 images"):
        split_figure_outputs(nb)
