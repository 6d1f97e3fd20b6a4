"""The chapters' readable citations and figure references (rmpm.book.readable): what
JupyterLab shows, what the book build turns them into, and that the two agree with
book/references.bib and with the figures the book numbers."""
import re

import nbformat
import pytest

from rmpm import paths
from rmpm.book import readable as R


@pytest.fixture(scope="module")
def bib():
    return R.bibliography()


FIGS = {"fig-a": 3, "fig-b": 4}


def test_labels_are_the_books_author_year_labels(bib):
    assert bib["raghu2017svcca"].text() == "Raghu et al., 2017"
    assert bib["raghu2017svcca"].text(textual=True) == "Raghu et al. (2017)"
    assert bib["freedman1983nonstochastic"].text() == "Freedman and Lane, 1983"
    assert bib["holm1979simple"].text() == "Holm, 1979"
    # a last name of two words, and a corporate author in braces
    assert bib["kendall1939problem"].text() == "Kendall and Babington Smith, 1939"
    assert bib["dask2016"].text() == "Dask Development Team, 2016"


def test_a_citation_links_to_its_doi_or_else_to_the_references_page(bib):
    assert bib["lecun1998gradient"].target == "https://doi.org/10.1109/5.726791"
    assert bib["raghu2017svcca"].target == "references.md#raghu2017svcca"
    for e in bib.values():  # a target Markdown can hold, one per entry (checked on load)
        assert not re.search(r"[()\s]", e.target), e.key


@pytest.mark.parametrize("roles", [
    "SVCCA {cite:p}`raghu2017svcca`: centre",
    "({cite:t}`raghu2017svcca`'s\nconvention)",
    "residuals {cite:p}`freedman1983nonstochastic,winkler2014permutation`, and",
    "{cite:p}`holm1979simple` at the start; as {cite:t}`song2012feature` and "
    "{cite:t}`nguyen2021wide` do\n({numref}`fig-a`). The left panel of {numref}`fig-b`.",
    "a [plain link](https://example.org/x) and ([one in parentheses](other.md)) stay",
])
def test_roles_become_readable_text_and_back_exactly(bib, roles):
    text = R.to_readable(roles, bib, FIGS)
    assert not R.ROLE.search(text)
    assert R.to_roles(text, bib, FIGS) == roles
    assert R.to_readable(text, bib, FIGS) == text  # already readable: unchanged


def test_the_readable_forms(bib):
    assert R.to_readable("see {cite:p}`raghu2017svcca,lecun1998gradient`", bib, FIGS) == (
        "see ([Raghu et al., 2017](references.md#raghu2017svcca); "
        "[LeCun et al., 1998](https://doi.org/10.1109/5.726791))")
    assert R.to_readable("{cite:t}`holm1979simple`", bib, FIGS) == (
        "[Holm (1979)](references.md#holm1979simple)")
    assert R.to_readable("({numref}`fig-b`)", bib, FIGS) == "([Fig. 4](#fig-b))"


def test_a_link_wrapped_over_two_lines_still_converts(bib):
    text = "as ([Raghu et\nal., 2017](references.md#raghu2017svcca)) did"
    assert R.to_roles(text, bib, FIGS) == "as {cite:p}`raghu2017svcca` did"


@pytest.mark.parametrize("text, error", [
    ("([Raghu, 2017](references.md#raghu2017svcca))", "reads 'Raghu, 2017', but the book prints"),
    ("[Raghu et al., 2017](references.md#raghu2017svcca) said",
     "the parenthetical form: put it in parentheses"),
    ("([Raghu et al. (2017)](references.md#raghu2017svcca))",
     "the textual form: take it out of the parentheses"),
    ("([Nobody, 2017](references.md#nobody2017))", "links to no entry"),
    ("([Nobody, 2017](https://doi.org/10.1/none))", "links to no entry"),
    ("see {cite:p}`raghu2017svcca`", "the MyST role"),
    ("[Fig. 9](#fig-a)", "should read 'Fig. 3'"),
    ("[Fig. 3](#fig-c)", "names no figure of this chapter"),
])
def test_what_would_not_read_the_same_in_both_is_refused(bib, text, error):
    with pytest.raises(R.ReadableError, match=re.escape(error)):
        R.to_roles(text, bib, FIGS, where="ch, cell 1")


def test_fixing_relabels_and_renumbers(bib):
    stale = "([Raghu, 2016](references.md#raghu2017svcca)) and [Fig. 1](#fig-b)"
    assert R.to_readable(stale, bib, FIGS) == (
        "([Raghu et al., 2017](references.md#raghu2017svcca)) and [Fig. 4](#fig-b)")
    with pytest.raises(R.ReadableError, match="not a key"):
        R.to_readable("{cite:p}`nobody2017`", bib, FIGS)
    with pytest.raises(R.ReadableError, match="no readable form"):
        R.to_readable("{ref}`somewhere`", bib, FIGS)


# --- the chapters themselves ------------------------------------------------------------

def test_the_chapters_are_readable_and_current():
    """No role is left in a chapter's markdown, every label and number is current and
    notebooks/references.md is what references.bib gives (python -m rmpm.book.readable
    --check; the same check the build makes before it executes anything)."""
    assert R.fix_notebooks(write=False) == []
    R.check_notebooks(R.toc_notebooks())


def test_every_chapter_is_in_the_book_and_cites(bib):
    chapters = R.toc_notebooks()
    assert [p.stem for p in chapters] == sorted(p.stem for p in paths.notebooks_dir().glob(
        "[0-9][0-9]_*.ipynb"))
    for path in chapters:
        nb = nbformat.read(path, as_version=4)
        md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert R.cited_keys(md, bib), f"{path.stem} cites nothing"
        assert not R.RAW_MYST.search(md), (path.stem, R.RAW_MYST.search(md).group(0))


def test_figures_are_numbered_through_the_book_in_chapter_order():
    numbers = R.figure_numbers()
    flat = [n for ch in numbers.values() for n in ch.values()]
    assert flat == list(range(1, len(flat) + 1)) and len(flat) >= 20
    assert list(numbers) == [p.stem for p in R.toc_notebooks()]


def test_the_build_rewrites_an_executed_notebook_into_roles(tmp_path, bib):
    nb = nbformat.read(paths.notebooks_dir() / "01_svcca_checked.ipynb", as_version=4)
    out = tmp_path / "01_svcca_checked.ipynb"
    nbformat.write(nb, out)
    R.rewrite_notebook(out)
    md = [c.source for c in nbformat.read(out, as_version=4).cells if c.cell_type == "markdown"]
    text = "\n".join(md)
    assert "{cite:p}`raghu2017svcca`" in text and "{cite:t}`raghu2017svcca`" in text
    assert "{numref}`fig-svcca-noise`" in text
    assert not [m.group(0) for m in R.LINK.finditer(text)
                if m.group("target").startswith(("references.md", "https://doi.org/", "#fig-"))]


def test_the_references_page_lists_every_entry_with_a_target(bib):
    page = R.references_path().read_text()
    for key, e in bib.items():
        assert f"({key})=\n**{e.text()}**: " in page, key
        for _, url in e.links:
            assert f"({url})" in page, (key, url)
