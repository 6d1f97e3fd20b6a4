"""The notebooks read the same in JupyterLab as in the book: citations and figure
references are written as plain Markdown links, and the book build turns them into
the MyST roles Jupyter Book resolves.

JupyterLab (with the ``jupyterlab-myst`` extension) renders MyST, but it cannot resolve
BibTeX citations or a ``{numref}`` to a figure labelled in a code cell's metadata
(``mystnb.figure.name``): a chapter written with roles showed `` {cite:p}`raghu2017svcca` ``
there. So the chapters' markdown cells hold readable text, in three forms::

    ([Raghu et al., 2017](references.md#raghu2017svcca); [LeCun et al., 1998](https://doi.org/10.1109/5.726791))
        -> {cite:p}`raghu2017svcca,lecun1998gradient`   the book shows [Raghu et al., 2017, ...]
    [Raghu et al. (2017)](references.md#raghu2017svcca)
        -> {cite:t}`raghu2017svcca`                      the book shows Raghu et al. [2017]
    [Fig. 12](#fig-rm-layers)
        -> {numref}`fig-rm-layers`                       the book shows Fig. 12

A citation links to the entry's DOI where ``book/references.bib`` gives one, else to
the entry in ``notebooks/references.md`` (generated from the same file, with the
entry's arXiv or web address). Its text is the author-year label the book prints;
a figure reference's is the number the book gives the figure (figures are numbered
through the book in the order of ``_toc.yml``).

Nothing here can drift silently: :func:`to_roles`, which the book build runs on every
executed notebook (:func:`rewrite_notebook`), refuses a citation link whose target
is no entry, whose text is not the entry's label, a parenthetical label outside
parentheses, a figure link to a label the chapter does not have or with another
number, and any MyST role left in the text. ``python -m rmpm.book.readable`` turns
roles written by hand (as in the examples above)
into this form, brings every label and number up to date and rewrites
``notebooks/references.md``; ``--check`` only says what it would change (the tests
run it).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths

#: where JupyterLab's citation links point when an entry has no DOI: this file,
#: next to the notebooks (written by :func:`write_references`)
REFERENCES_PAGE = "references.md"
DOI_URL = "https://doi.org/"
FIGURE_PREFIX = "fig-"

#: a Markdown link: [text](target), the text on one or more lines
_LINK = r"\[[^\[\]]+\]\([^()\s]+\)"
LINK = re.compile(r"\[(?P<text>[^\[\]]+)\]\((?P<target>[^()\s]+)\)")
#: links in parentheses, separated by "; " (a parenthetical citation when all are citations)
GROUP = re.compile(rf"\((?P<links>{_LINK}(?:;\s+{_LINK})*)\)")
#: MyST roles as the book's sources write them
ROLE = re.compile(r"\{(?P<role>[a-z]+(?::[a-z]+)?)\}`(?P<body>[^`]*)`")
#: what no chapter's markdown may show in JupyterLab: a role, or a directive's fence
RAW_MYST = re.compile(r"\{[a-z]+(?::[a-z]+)?\}`|^\s*(?:```|:::)\{", re.M)


class ReadableError(ValueError):
    """A chapter's markdown does not have the readable form (see the module's doc)."""


@dataclass(frozen=True)
class Entry:
    """One entry of the bibliography, as the chapters cite it."""

    key: str
    authors: str   # "Raghu et al.", "Freedman and Lane", "Holm"
    year: str
    doi: str | None
    reference: str  # the whole entry, as plain text
    links: tuple[tuple[str, str], ...]  # (label, address): DOI, arXiv, web page

    @property
    def target(self) -> str:
        return DOI_URL + self.doi if self.doi else f"{REFERENCES_PAGE}#{self.key}"

    def text(self, textual: bool = False) -> str:
        """The label the book prints: ``Raghu et al., 2017`` in parentheses,
        ``Raghu et al. (2017)`` in the sentence (``{cite:t}``)."""
        return f"{self.authors} ({self.year})" if textual else f"{self.authors}, {self.year}"

    def link(self, textual: bool = False) -> str:
        return f"[{self.text(textual)}]({self.target})"


def _plain(words: Iterable[Any]) -> str:
    """Name parts (pybtex rich text, one per word) as plain text: braces gone."""
    return " ".join(str(w).strip() for w in words if str(w).strip())


def _authors(persons) -> str:
    """sphinxcontrib-bibtex's author-year label: one or two last names, or the first
    one and "et al." (its ``author_year`` style)."""
    last = [" ".join(x for x in (_plain(p.rich_prelast_names), _plain(p.rich_last_names)) if x)
            for p in persons]
    if len(last) == 1:
        return last[0]
    if len(last) == 2:
        return f"{last[0]} and {last[1]}"
    return f"{last[0]} et al."


def bibliography(path: Path | None = None) -> dict[str, Entry]:
    """``book/references.bib`` as :class:`Entry` objects, by key."""
    from pybtex.database import parse_file
    from pybtex.plugin import find_plugin
    path = path or paths.repo_root() / "book" / "references.bib"
    bib = parse_file(str(path))
    style = find_plugin("pybtex.style.formatting", "unsrt")()
    backend = find_plugin("pybtex.backends", "text")()
    rendered = {e.key: e.text.render(backend) for e in style.format_entries(bib.entries.values())}
    out = {}
    for key, e in bib.entries.items():
        persons = e.persons.get("author") or e.persons.get("editor") or []
        doi = e.fields.get("doi")
        links = []
        if doi:
            links.append(("DOI", DOI_URL + doi))
        if e.fields.get("eprint"):
            links.append(("arXiv", "https://arxiv.org/abs/" + e.fields["eprint"]))
        if e.fields.get("url"):
            links.append(("web", e.fields["url"]))
        out[key] = Entry(key, _authors(persons), e.fields.get("year", ""), doi,
                         rendered[key], tuple(links))
    targets = [e.target for e in out.values()]
    dup = sorted({t for t in targets if targets.count(t) > 1})
    if dup:
        raise ReadableError(f"entries of {path.name} that share a DOI: {dup}")
    return out


# --- figure numbers -----------------------------------------------------------------

def toc_notebooks() -> list[Path]:
    """The chapters' source notebooks in the book's order (``_toc.yml``)."""
    import yaml
    toc = yaml.safe_load((paths.repo_root() / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part["chapters"]]
    nbs = paths.notebooks_dir()
    return [nbs / f"{Path(f).name}.ipynb" for f in files
            if (nbs / f"{Path(f).name}.ipynb").is_file()]


def figure_labels(nb: Any) -> list[str]:
    """The labels of a notebook's numbered figures, in order."""
    return [c.metadata["mystnb"]["figure"]["name"] for c in nb.cells
            if c.cell_type == "code" and c.metadata.get("mystnb", {}).get("figure", {}).get("name")]


def figure_numbers(notebooks: Iterable[Path] | None = None) -> dict[str, dict[str, int]]:
    """notebook stem -> {figure label: the number the book gives it}: figures are
    numbered through the whole book, in the order of its chapters."""
    import nbformat
    out, n = {}, 0
    for path in notebooks if notebooks is not None else toc_notebooks():
        out[path.stem] = {}
        for label in figure_labels(nbformat.read(path, as_version=4)):
            n += 1
            out[path.stem][label] = n
    return out


# --- readable text -> roles (the book build) -----------------------------------------

def _by_target(bib: Mapping[str, Entry]) -> dict[str, Entry]:
    return {e.target: e for e in bib.values()}


def _transform(text: str, by_target: Mapping[str, Entry], on_group, on_link) -> str:
    """``text`` with every parenthetical citation (a :data:`GROUP` of citation links)
    replaced by ``on_group(match, entries)`` and every other link by ``on_link(match)``."""
    out, last = [], 0
    for m in GROUP.finditer(text):
        links = list(LINK.finditer(m.group("links")))
        if not all(lk.group("target") in by_target for lk in links):
            continue  # not a citation: its links are handled one by one
        out.append(LINK.sub(on_link, text[last:m.start()]))
        out.append(on_group(m, [(by_target[lk.group("target")], lk) for lk in links]))
        last = m.end()
    out.append(LINK.sub(on_link, text[last:]))
    return "".join(out)


def _check_text(entry: Entry, text: str, textual: bool, where: str) -> None:
    got = " ".join(text.split())
    if got == entry.text(textual):
        return
    hint = ""
    if got == entry.text(not textual):
        hint = (" (the parenthetical form: put it in parentheses)" if textual
                else " (the textual form: take it out of the parentheses)")
    raise ReadableError(f"{where}: the citation of {entry.key} reads {got!r}, but the book "
                        f"prints {entry.text(textual)!r} there{hint}; python -m "
                        "rmpm.book.readable writes the labels")


def _role(name: str, body: str) -> str:
    return "{" + name + "}`" + body + "`"


def _figure_name(target: str) -> str | None:
    return target[1:] if target.startswith("#" + FIGURE_PREFIX) else None


def to_roles(text: str, bib: Mapping[str, Entry], figures: Mapping[str, int] | None = None,
             where: str = "markdown") -> str:
    """Markdown with readable citations and figure references (see the module's doc)
    turned into ``{cite:p}``, ``{cite:t}`` and ``{numref}`` roles. ``figures``: the
    chapter's figure labels and their numbers (None: figure links are not checked).
    Raises :class:`ReadableError` on anything that would not read the same in both."""
    by_target = _by_target(bib)
    m = ROLE.search(text)
    if m:
        raise ReadableError(f"{where}: the MyST role {m.group(0)!r}, which JupyterLab shows "
                            "raw; python -m rmpm.book.readable writes it as a readable link")

    def group(m: re.Match, entries) -> str:
        for e, lk in entries:
            _check_text(e, lk.group("text"), False, where)
        return _role("cite:p", ",".join(e.key for e, _ in entries))

    def link(m: re.Match) -> str:
        target, label = m.group("target"), m.group("text")
        name = _figure_name(target)
        if name is not None:
            if figures is not None:
                if name not in figures:
                    raise ReadableError(f"{where}: [{label}]({target}) names no figure of this "
                                        f"chapter; its figures: {', '.join(figures) or 'none'}")
                want = f"Fig. {figures[name]}"
                if " ".join(label.split()) != want:
                    raise ReadableError(f"{where}: [{label}]({target}) should read {want!r}, "
                                        "the number the book gives that figure; python -m "
                                        "rmpm.book.readable renumbers")
            return _role("numref", name)
        e = by_target.get(target)
        if e is None:
            if target.startswith((REFERENCES_PAGE, DOI_URL)):
                raise ReadableError(f"{where}: [{label}]({target}) links to no entry of "
                                    "book/references.bib")
            return m.group(0)
        _check_text(e, label, True, where)
        return _role("cite:t", e.key)

    return _transform(text, by_target, group, link)


def rewrite_notebook(path: Path, name: str | None = None) -> None:
    """The book build's hook: in executed notebook ``path`` (chapter ``name``, default
    its stem), every markdown cell's readable citations and figure references become
    the roles Jupyter Book resolves (:func:`to_roles`)."""
    import nbformat

    from ..atomic import atomic_write_text
    name = name or Path(path).stem
    nb = nbformat.read(path, as_version=4)
    bib = bibliography()
    figures = figure_numbers().get(name)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = to_roles(cell.source, bib, figures, where=f"{name}, cell {i}")
    atomic_write_text(path, nbformat.writes(nb))


def check_notebooks(notebooks: Iterable[Path]) -> None:
    """Refuse (:class:`ReadableError`) a chapter whose markdown :func:`to_roles` would
    refuse, before a build executes anything."""
    import nbformat
    bib, numbers = bibliography(), figure_numbers()
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "markdown":
                to_roles(cell.source, bib, numbers.get(path.stem), where=f"{path.stem}, cell {i}")


# --- roles -> readable text (authors: python -m rmpm.book.readable) -----------------------

def to_readable(text: str, bib: Mapping[str, Entry], figures: Mapping[str, int],
                where: str = "markdown") -> str:
    """The inverse of :func:`to_roles`: roles become readable links, and readable links
    get their current label or number (so it also renumbers)."""
    def entry(key: str) -> Entry:
        if key not in bib:
            raise ReadableError(f"{where}: {key!r} is not a key of book/references.bib")
        return bib[key]

    def figure(name: str) -> str:
        if name not in figures:
            raise ReadableError(f"{where}: {name!r} is not a figure of this chapter; its "
                                f"figures: {', '.join(figures) or 'none'}")
        return f"[Fig. {figures[name]}](#{name})"

    def role(m: re.Match) -> str:
        r, body = m.group("role"), m.group("body")
        keys = [k.strip() for k in body.split(",") if k.strip()]
        if r == "cite:p":
            return "(" + "; ".join(entry(k).link() for k in keys) + ")"
        if r == "cite:t":
            return ", ".join(entry(k).link(textual=True) for k in keys)
        if r == "numref" and "<" not in body:
            return figure(body.strip())
        raise ReadableError(f"{where}: the role {m.group(0)!r} has no readable form; "
                            "JupyterLab would show it raw")

    text = ROLE.sub(role, text)

    def link(m: re.Match) -> str:
        name = _figure_name(m.group("target"))
        if name is not None:
            return figure(name)
        e = by_target.get(m.group("target"))
        if e is None:
            return m.group(0)
        if " ".join(m.group("text").split()) == e.text():
            raise ReadableError(f"{where}: {m.group(0)!r} is a parenthetical citation outside "
                                "parentheses: write it in parentheses, or as "
                                f"{e.link(textual=True)!r}")
        return e.link(textual=True)

    by_target = _by_target(bib)
    return _transform(text, by_target,
                      lambda m, es: "(" + "; ".join(e.link() for e, _ in es) + ")", link)


def cited_keys(text: str, bib: Mapping[str, Entry]) -> set[str]:
    """The bibliography keys a chapter's readable markdown cites."""
    by_target = {e.target: e.key for e in bib.values()}
    return {by_target[m.group("target")] for m in LINK.finditer(text)
            if m.group("target") in by_target}


def without_citations(text: str, bib: Mapping[str, Entry]) -> str:
    """``text`` with its citation links removed (to look for references typed as text)."""
    targets = {e.target for e in bib.values()}
    return LINK.sub(lambda m: "" if m.group("target") in targets else m.group(0), text)


# --- notebooks/references.md ----------------------------------------------------------------

def references_markdown(bib: Mapping[str, Entry]) -> str:
    """The page JupyterLab's citation links land on (for entries without a DOI): every
    entry of the bibliography, sorted as the book's references page, each with its DOI,
    arXiv or web address."""
    lines = ["# References", "",
             "The entries of `book/references.bib`, which the chapters cite (the book's "
             "references page lists the same). Written by `python -m rmpm.book.readable`; "
             "do not edit.", ""]
    for e in sorted(bib.values(), key=lambda e: (e.authors.lower(), e.year, e.key)):
        links = "".join(f" [{label}]({url})" for label, url in e.links)
        # a MyST target: the paragraph gets the key as its id (raw HTML anchors are dropped)
        lines += [f"({e.key})=", f"**{e.text()}**: {e.reference}{links}", ""]
    return "\n".join(lines)


def references_path() -> Path:
    return paths.notebooks_dir() / REFERENCES_PAGE


# --- the command -------------------------------------------------------------------------------

def fix_notebooks(notebooks: Iterable[Path] | None = None, write: bool = True) -> list[str]:
    """Bring the chapters' markdown into the readable form (:func:`to_readable`) and
    ``notebooks/references.md`` up to date; returns what changed (or, with
    ``write=False``, what would)."""
    import nbformat

    from ..atomic import atomic_write_text
    bib = bibliography()
    nbs = list(notebooks) if notebooks is not None else toc_notebooks()
    numbers = figure_numbers(toc_notebooks())
    changed = []
    for path in nbs:
        nb = nbformat.read(path, as_version=4)
        n = 0
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "markdown":
                continue
            new = to_readable(cell.source, bib, numbers.get(path.stem, {}),
                              where=f"{path.stem}, cell {i}")
            if new != cell.source:
                cell.source, n = new, n + 1
        if n:
            changed.append(f"{path.name}: {n} markdown cell(s)")
            if write:
                atomic_write_text(path, nbformat.writes(nb) + "\n")
    page = references_markdown(bib)
    ref = references_path()
    if not ref.is_file() or ref.read_text() != page:
        changed.append(ref.name)
        if write:
            atomic_write_text(ref, page)
    return changed


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(
        prog="python -m rmpm.book.readable",
        description="Write the chapters' citations and figure references as readable links "
                    "(JupyterLab) that the book build turns into MyST roles; renumber them; "
                    "rewrite notebooks/references.md.")
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if something would change")
    args = ap.parse_args(argv)
    changed = fix_notebooks(write=not args.check)
    for c in changed:
        print(("would change " if args.check else "changed ") + c)
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
