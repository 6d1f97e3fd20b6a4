"""The bibliography: every key the book cites (with a role, or in the chapters with a
readable link, see rmpm.book.readable) exists in book/references.bib, every
entry has an author, a title and a year and renders without raw TeX, and the book's
configuration lists it and ends with the references page."""
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIB = ROOT / "book" / "references.bib"
#: {cite}`a`, {cite:p}`a,b`, {cite:t}`a`, {cite:ps}`a`, ... (sphinxcontrib-bibtex's roles)
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]*)`")


def cited_keys(text: str) -> set[str]:
    """Keys cited with a role, and (the chapters' form, rmpm.book.readable) with a
    readable link to the entry."""
    from rmpm.book.readable import bibliography, cited_keys as linked
    return ({k.strip() for group in CITE.findall(text) for k in group.split(",") if k.strip()}
            | linked(text, bibliography(BIB)))


def _sources() -> dict[str, str]:
    """Every text a citation can come from: the hand-written pages, the notebooks' cells
    (markdown, and code that displays Markdown) and rmpm's modules (generated pages)."""
    out = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "book").glob("*.md"))}
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(p.read_text())["cells"]
        out[str(p.relative_to(ROOT))] = "\n".join(
            "".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    for p in sorted((ROOT / "rmpm").rglob("*.py")):
        out[str(p.relative_to(ROOT))] = p.read_text()
    return out


@pytest.fixture(scope="module")
def bib():
    from pybtex.database import parse_file
    return parse_file(str(BIB))  # duplicate keys raise here (pybtex's strict mode)


def test_cite_pattern_finds_every_role_form():
    text = ("see {cite:p}`a2020, b2021` and {cite:t}`c` or {cite}`d`; {cite:ps}`e`; "
            "not `{cite:p}` alone")
    assert cited_keys(text) == {"a2020", "b2021", "c", "d", "e"}


def test_every_cited_key_is_in_the_bibliography(bib):
    missing = {}
    for where, text in _sources().items():
        unknown = sorted(cited_keys(text) - set(bib.entries))
        if unknown:
            missing[where] = unknown
    assert not missing, f"cited but not in {BIB.name}: {missing}"
    # the hand-written pages do cite (a pattern that matched nothing would pass vacuously)
    assert len(cited_keys((ROOT / "book" / "intro.md").read_text())) >= 20


def test_every_entry_has_author_title_year(bib):
    bad = {}
    for key, e in bib.entries.items():
        lacking = [f for f in ("title", "year") if not e.fields.get(f, "").strip()]
        if not e.persons.get("author"):
            lacking.append("author")
        year = e.fields.get("year", "")
        if year and not re.fullmatch(r"(19|20)\d\d", year):
            lacking.append(f"year {year!r} is not a year")
        if lacking:
            bad[key] = lacking
    assert not bad, bad


def test_the_replicated_paper_is_there_in_both_versions(bib):
    v1, v2 = bib.entries["heljakka2022representational"], bib.entries["heljakka2023disentangling"]
    assert v1.fields["eprint"] == "2206.08890v1" and v2.fields["eprint"] == "2206.08890v2"
    assert "Representational Multiplicity" in v1.fields["title"]
    assert "Disentangling Model Multiplicity" in v2.fields["title"]
    for e in (v1, v2):
        assert [str(p) for p in e.persons["author"]] == [
            "Heljakka, Ari", "Trapp, Martin", "Kannala, Juho", "Solin, Arno"]


def test_every_entry_renders_without_raw_tex(bib):
    """Formatting needs each entry type's required fields (a missing one raises) and
    must leave no TeX markup that the HTML would show verbatim."""
    from pybtex.plugin import find_plugin
    style = find_plugin("pybtex.style.formatting", "unsrt")()
    text = find_plugin("pybtex.backends", "text")()
    rendered = {e.key: e.text.render(text) for e in style.format_entries(bib.entries.values())}
    assert set(rendered) == set(bib.entries)
    raw = {k: v for k, v in rendered.items() if re.search(r"[\\${}]", v)}
    assert not raw, raw


def test_no_invented_identifiers(bib):
    """DOIs and arXiv ids have their registries' shapes (a typo'd or made-up one is
    likelier to break the shape than to keep it)."""
    for key, e in bib.entries.items():
        if "doi" in e.fields:
            assert re.fullmatch(r"10\.\d{4,5}/\S+", e.fields["doi"]), key
        if "eprint" in e.fields:
            assert re.fullmatch(r"\d{4}\.\d{5}(v\d+)?", e.fields["eprint"]), key


def test_book_config_uses_the_bibliography_and_ends_with_it():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["bibtex_bibfiles"] == [str(BIB.relative_to(ROOT))]
    assert cfg["sphinx"]["config"]["bibtex_reference_style"] == "author_year"
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["parts"][-1]["chapters"][-1]["file"] == "book/references"
    page = (ROOT / "book" / "references.md").read_text()
    assert re.search(r"```\{bibliography\}\n:all:\n```", page)


#: What each chapter must cite because it uses it: its methods, data sets and tests (a
#: chapter that keeps describing a method but drops its citation fails here).
CHAPTER_CITES = {
    "00_methods": {"raghu2017svcca", "morcos2018insights", "kornblith2019similarity",
                   "song2012feature", "nguyen2021wide", "marx2020predictive", "hsu2022rashomon",
                   "mu2019mnistc", "hendrycks2019benchmarking", "lecun1998gradient",
                   "xiao2017fashion", "raschka2018mlxtend", "alpaydin1998optical",
                   "kendall1939problem", "winkler2014permutation", "freedman1983nonstochastic",
                   "diciccio2017robust", "heljakka2023disentangling"},
    "01_svcca_checked": {"raghu2017svcca", "morcos2018insights", "kornblith2019similarity",
                         "song2012feature", "nguyen2021wide"},
    "02_populations": {"raghu2017svcca", "marx2020predictive", "heljakka2023disentangling"},
    "03_rm_by_factor": {"raghu2017svcca", "kendall1939problem", "friedman1937use",
                        "phipson2010permutation", "winkler2014permutation",
                        "kornblith2019similarity", "song2012feature", "nguyen2021wide",
                        "morcos2018insights", "heljakka2023disentangling"},
    "04_pm_iid_ood": {"marx2020predictive", "mu2019mnistc", "hendrycks2019benchmarking",
                      "heljakka2023disentangling"},
    "05_rm_vs_pm": {"raghu2017svcca", "marx2020predictive", "diciccio2017robust",
                    "heljakka2023disentangling"},
    "06_finite_samples": {"raghu2017svcca", "freedman1983nonstochastic", "diciccio2017robust",
                          "jiang2022assessing", "heljakka2023disentangling"},
    "07_exposing_multiplicity": {"raghu2017svcca", "marx2020predictive", "hsu2022rashomon",
                                 "heljakka2023disentangling"},
    "08_claims": {"winkler2014permutation", "freedman1983nonstochastic", "diciccio2017robust",
                  "holm1979simple", "heljakka2023disentangling"},
    "09_regimes": {"heljakka2023disentangling", "efron1993introduction"},
}
#: an author-year reference typed as plain text ("Raghu et al. 2017", "Marx & Ustun 2020")
PLAIN_REFERENCE = re.compile(r"\b[A-Z][a-z]+ (?:et al\.|&|and [A-Z][a-z]+)[^.`]{0,30}?\b(?:19|20)\d\d\b")


def _markdown(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_every_chapter_cites_what_it_uses_with_citation_links():
    from rmpm.book.readable import bibliography, without_citations
    chapters = {p.stem: _markdown(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    assert set(chapters) == set(CHAPTER_CITES), "a chapter without its list of citations"
    missing = {name: sorted(CHAPTER_CITES[name] - cited_keys(text))
               for name, text in chapters.items() if CHAPTER_CITES[name] - cited_keys(text)}
    assert not missing, f"chapters that do not cite what they use: {missing}"
    # outside its citation links (whose label rmpm.book.readable checks), no author-year
    bib = bibliography(BIB)
    plain = {name: PLAIN_REFERENCE.findall(without_citations(text, bib))
             for name, text in chapters.items()
             if PLAIN_REFERENCE.search(without_citations(text, bib))}
    assert not plain, f"references typed as text, not cited with a link or role: {plain}"


def test_the_plain_reference_pattern_catches_typed_references():
    assert PLAIN_REFERENCE.search("SVCCA (Raghu et al. 2017): centre")
    assert PLAIN_REFERENCE.search("relative to a model (Marx, Calmon & Ustun 2020)")
    assert not PLAIN_REFERENCE.search("SVCCA {cite:p}`raghu2017svcca`: centre; 2017 models")
    from rmpm.book.readable import bibliography, without_citations
    linked = "SVCCA ([Raghu et al., 2017](references.md#raghu2017svcca)): centre"
    assert PLAIN_REFERENCE.search(linked)
    assert not PLAIN_REFERENCE.search(without_citations(linked, bibliography(BIB)))
