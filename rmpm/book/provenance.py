"""Where each figure and verdict of the book came from.

Under every numbered figure (a captioned ``mystnb.figure`` cell) a post-processing
step of the executed notebooks (like :func:`rmpm.book.notebooks.show_parameters`, so no
notebook carries it in its source) adds a compact markdown line; every row of the
Claims page's verdict table carries the same kind of line
(:func:`rmpm.book.claims_page.verdict_provenance`). A line names:

- the notebook, with a download link to the executed ``.ipynb``;
- the ``rmpm`` functions that computed it: for a figure, those its cell calls, read
  from the cell's source and resolved through the notebook's imports (``from
  rmpm.book import plots as P`` makes ``P.rm_by_layer(...)``
  ``rmpm.book.plots.rm_by_layer``); for a verdict, the evidence function and the rule;
- the chapter's result file and its **content digest**: the SHA-256 of the file's
  ``values`` (:func:`rmpm.book.records.content_digest`), the digest the build's
  ``manifest.json`` lists and ``rmpm verify`` compares. Not the file's own SHA-256,
  which also covers the time the file was written, so it differs between two builds
  of the same numbers;
- the build id and the git commit.

:func:`check_lines` compares lines with a manifest and :func:`check_html_book` checks a
built book: every figure has its line, every verdict row its provenance, every digest
matches the manifest, and the reproducibility page links back to all of them.
"""
from __future__ import annotations

import ast
import copy
import html
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from .. import paths

#: marks the added cells, so adding twice replaces rather than duplicates
TAG = "rmpm-provenance"
_MAGIC = re.compile(r"^\s*[%!]")


def _parse(source: str) -> ast.AST | None:
    """The cell's syntax tree; IPython magics and shell lines are blanked first; None
    for a cell that is not Python."""
    code = "\n".join("" if _MAGIC.match(line) else line for line in source.splitlines())
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def notebook_imports(sources: list[str]) -> dict[str, str]:
    """Local name -> dotted path of everything the cells import from ``rmpm``."""
    names: dict[str, str] = {}
    for src in sources:
        tree = _parse(src)
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "rmpm" or a.name.startswith("rmpm."):
                        # `import rmpm.book.plots` binds `rmpm`; `... as P` binds P to it
                        names[a.asname or "rmpm"] = a.name if a.asname else "rmpm"
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and (node.module == "rmpm" or node.module.startswith("rmpm.")):
                for a in node.names:
                    if a.name != "*":
                        names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def rmpm_calls(source: str, imports: dict[str, str]) -> list[str]:
    """The ``rmpm`` functions a cell calls, fully qualified, in order of first call."""
    tree = _parse(source)
    out: list[str] = []
    for node in ast.walk(tree) if tree is not None else ():
        if not isinstance(node, ast.Call):
            continue
        parts = _dotted(node.func)
        if parts and parts[0] in imports:
            name = ".".join([imports[parts[0]], *parts[1:]])
            if name not in out:
                out.append(name)
    # ast.walk is breadth-first; the order of the source reads better
    return sorted(out, key=lambda n: _position(source, n.rsplit(".", 1)[-1]))


def _position(source: str, name: str) -> int:
    i = source.find(name + "(")
    return i if i >= 0 else len(source)


def git_commit() -> str:
    """The checkout's commit, marked when tracked files have uncommitted changes."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=paths.repo_root()).stdout.strip()
    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return commit


def current_commit() -> str:
    """The commit a book build runs from (``RMPM_COMMIT``, which the build passes to its
    kernels, so that every line of one build names the same commit), else the checkout's."""
    return os.environ.get("RMPM_COMMIT") or git_commit()


def qualname(fn: Any) -> str:
    """``module.name`` of a function, as the lines print it."""
    return f"{fn.__module__}.{fn.__qualname__}"


#: opens every line; the book's CSS (:mod:`rmpm.book.sphinx_ext`) lets its long names wrap
OPEN = '<small class="rmpm-provenance">'


def _download(notebook: str) -> str:
    return f"{{download}}`{notebook}.ipynb <{notebook}.ipynb>`"


def _result(result: str | None, digest: str | None) -> str:
    return f"result `{result}.json`" + (f" (content SHA-256 `{digest[:16]}…`)" if digest
                                        else " (not written)")


def _build_commit(build: str, commit: str) -> list[str]:
    sha, _, note = commit.partition(" ")  # e.g. "<sha> (with uncommitted changes)"
    return [f"build `{build}`", f"commit `{sha[:12]}`" + (f" {note}" if note else "")]


def line(notebook: str, calls: list[str], result: str | None, digest: str | None,
         build: str, commit: str) -> str:
    """The markdown of a figure's provenance line."""
    parts = [f"notebook {_download(notebook)}"]
    if calls:
        parts.append("computed by " + ", ".join(f"`{c}`" for c in calls))
    if result is not None:
        parts.append(_result(result, digest))
    parts += _build_commit(build, commit)
    return OPEN + "Provenance: " + " · ".join(parts) + "</small>"


def ident(name: str) -> str:
    """``name`` as inline code that may break after its dots (``<wbr>``), and anywhere
    when a part is still too long (the book's CSS, class ``rmpm-name``): a table cell is
    narrower than ``rmpm.analysis.evidence.c1_evidence``. Raw HTML, since a Markdown code
    span cannot hold a break opportunity."""
    return ('<code class="docutils literal notranslate rmpm-name">'
            + ".<wbr>".join(html.escape(p) for p in name.split(".")) + "</code>")


def verdict_line(chapter: str, evidence: str, rules: list[str], result: str | None,
                 digest: str | None, build: str, commit: str) -> str:
    """The markdown of a verdict's provenance, one item a line, for a cell of the
    Claims page's table: the chapter that computed the evidence (download link), the
    evidence function, the rule(s), the chapter's result file and its content digest,
    build and commit."""
    result = result or chapter
    sha, _, note = commit.partition(" ")
    parts = [f"notebook {_download(chapter)}", f"evidence {ident(evidence)}",
             "rule " + ", ".join(ident(r) for r in rules),
             f"result {ident(result + '.json')}"
             + (f" (content SHA-256 {ident(digest[:16] + '…')})" if digest else " (not written)"),
             f"build {ident(build)}", f"commit {ident(sha[:12])}" + (f" {note}" if note else "")]
    # the space before each <br> keeps the items apart in the text of the HTML
    return OPEN + "Provenance: <br>" + " <br>".join(parts) + "</small>"


def add_figure_provenance(nb: Any, notebook: str, result: str | None, digest: str | None,
                          build: str, commit: str) -> Any:
    """A copy of executed notebook ``nb`` with a provenance line after every captioned
    figure cell (earlier provenance cells replaced). Each added cell also holds what
    its line says, as metadata (``rmpm``), for the reproducibility page."""
    import nbformat
    nb = copy.deepcopy(nb)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    imports = notebook_imports(code)
    cells = []
    for cell in nb.cells:
        if TAG in cell.metadata.get("tags", []):
            continue
        cells.append(cell)
        fig = cell.metadata.get("mystnb", {}).get("figure") if cell.cell_type == "code" else None
        if fig:
            calls = rmpm_calls(cell.source, imports)
            md = nbformat.v4.new_markdown_cell(line(notebook, calls, result, digest, build, commit))
            md.metadata["tags"] = [TAG]
            md.metadata["rmpm"] = {"figure": fig.get("name"), "notebook": notebook,
                                   "calls": calls, "result": result, "digest": digest,
                                   "build": build, "commit": commit}
            cells.append(md)
    nb.cells = cells
    return nb


def figure_lines(nb: Any) -> dict[str, str]:
    """Figure name -> its provenance line, in an annotated notebook (for checks)."""
    return {c.metadata["rmpm"]["figure"]: c.source for c in nb.cells
            if TAG in c.metadata.get("tags", []) and c.metadata.get("rmpm", {}).get("figure")}


def figure_records(executed: list[Path]) -> list[dict[str, Any]]:
    """What the provenance line of every numbered figure in the executed notebooks
    ``executed`` says (in their order, then the order of the figures), for the
    reproducibility page."""
    import nbformat
    out = []
    for path in executed:
        if not Path(path).is_file():
            continue
        for c in nbformat.read(path, as_version=4).cells:
            meta = c.metadata.get("rmpm", {})
            if TAG in c.metadata.get("tags", []) and meta.get("figure"):
                out.append({"notebook": path.stem, **meta})
    return out


# -- checking lines against a manifest -----------------------------------------------

_ROLE = re.compile(r"\{download\}`([^`<]*?)\s*<[^`>]*>`")
_FIELDS = {
    "notebook": re.compile(r"notebook (\S+?)\.ipynb"),
    "result": re.compile(r"result (\S+?)\.json"),
    "digest": re.compile(r"content SHA-256 ([0-9a-f]{16})…"),
    "build": re.compile(r"build (\S+)"),
    "commit": re.compile(r"commit ([0-9a-f]{12}|unknown)"),
}


def plain(text: str) -> str:
    """A line as a reader reads it: download roles by their text, no backticks or tags."""
    text = _ROLE.sub(r"\1", text)
    text = re.sub(r"<br\s*/?>", " ", text)
    text = html.unescape(re.sub(r"<[^>]*>", "", text)).replace("`", "")
    return re.sub(r"\s+", " ", text).strip()


def parse_line(text: str) -> dict[str, str | None]:
    """The fields a provenance line (markdown, or the text of its rendered HTML) names;
    None for a field it does not name."""
    t = plain(text)
    out = {k: (m.group(1) if (m := rx.search(t)) else None) for k, rx in _FIELDS.items()}
    out["provenance"] = t.startswith("Provenance:")
    out["not_written"] = "(not written)" in t
    return out


def check_lines(lines: dict[str, str], manifest: dict[str, Any],
                builds: dict[str, str] | None = None) -> list[str]:
    """What is wrong with provenance ``lines`` (where -> text) against a build's
    ``manifest``: a line that is not one, a result the manifest does not list, a digest
    that is not the manifest's content digest of that result, a build or a commit that
    is not the manifest's. ``builds`` (notebook -> build id) names the build that ran a
    notebook that an ``--only`` build reused (its lines name that build)."""
    env = manifest.get("environment") or {}
    want_commit = (env.get("git_commit") or "unknown").split(" ")[0][:12]
    problems = []
    for where, text in lines.items():
        f = parse_line(text)
        bad = []
        if not f["provenance"]:
            bad.append("no provenance line")
        if f["result"] is not None:
            listed = manifest.get("results", {}).get(f["result"])
            if listed is None:
                bad.append(f"result {f['result']} is not in the manifest")
            elif f["digest"] is None:
                bad.append(f"no digest for result {f['result']}")
            elif not listed["digest"].startswith(f["digest"]):
                bad.append(f"digest {f['digest']} of {f['result']} is not the manifest's "
                           f"{listed['digest'][:16]}")
        build = (builds or {}).get(f["notebook"] or "", env.get("build"))
        if f["build"] != build:
            bad.append(f"build {f['build']}, the manifest's is {build}")
        if f["commit"] != want_commit:
            bad.append(f"commit {f['commit']}, the manifest's is {want_commit}")
        problems += [f"{where}: {b}" for b in bad]
    return problems


# -- checking a built book -------------------------------------------------------------

#: the reproducibility page's section that links back to every figure and verdict
BACKLINKS_TITLE = "Where every figure and verdict came from"


def verdict_anchor(claim: str) -> str:
    """The HTML id of claim ``claim``'s row on the Claims page (what the reproducibility
    page links to)."""
    return f"verdict-{claim.lower()}"


def _is_line(tag) -> bool:
    return tag.name == "small" and tag.get_text().strip().startswith("Provenance:")


def _target(page: Path, href: str) -> tuple[Path, str]:
    from urllib.parse import unquote, urlsplit
    u = urlsplit(href)
    return (page.parent / unquote(u.path)).resolve() if u.path else page.resolve(), u.fragment


def check_html_book(html_dir: str | Path, manifest: dict[str, Any],
                    builds: dict[str, str] | None = None,
                    claims: tuple[str, ...] = ("C1", "C2", "C3", "C4")) -> dict[str, Any]:
    """Check a built book (``_build/html``) against its build's ``manifest``: every
    numbered figure of every chapter is followed by its provenance line, whose download
    link leads to that chapter's executed notebook; every verdict row of the Claims page
    carries its provenance; every digest, build and commit a line names is the
    manifest's (:func:`check_lines`); and the reproducibility page links back to every
    figure and verdict, each link landing on an element of its page. Returns the
    numbers checked and the problems found (empty when all is well)."""
    from bs4 import BeautifulSoup
    html_dir = Path(html_dir)
    soups: dict[Path, Any] = {}

    def soup(path: Path):
        if path not in soups:
            soups[path] = BeautifulSoup(path.read_text(), "html.parser")
        return soups[path]

    problems: list[str] = []
    lines: dict[str, str] = {}
    figures: set[tuple[Path, str]] = set()
    pages = sorted((html_dir / "book" / "_executed").glob("*.html"))
    if not pages:
        problems.append(f"no chapter pages under {html_dir / 'book' / '_executed'}")
    for page in pages:
        items = soup(page).find_all(lambda t: t.name == "figure" or _is_line(t))
        for i, t in enumerate(items):
            if t.name != "figure" or not (t.get("id") or "").startswith("fig-"):
                continue
            where = f"{page.stem}#{t['id']}"
            figures.add((page.resolve(), t["id"]))
            nxt = items[i + 1] if i + 1 < len(items) else None
            if nxt is None or nxt.name == "figure":
                problems.append(f"{where}: no provenance line under the figure")
                continue
            lines[where] = nxt.get_text()
            problems += _check_download(page, nxt, page.stem, where)
    verdicts: set[tuple[Path, str]] = set()
    claims_page = html_dir / "book" / "_executed" / "08_claims.html"
    if claims_page.is_file():
        for c in claims:
            where = f"08_claims#{verdict_anchor(c)}"
            anchor = soup(claims_page).find(id=verdict_anchor(c))
            row = anchor.find_parent("tr") if anchor is not None else None
            line_tag = row.find(_is_line) if row is not None else None
            if line_tag is None:
                problems.append(f"{where}: no verdict row with a provenance line")
                continue
            verdicts.add((claims_page.resolve(), verdict_anchor(c)))
            lines[where] = line_tag.get_text()
            chapter = parse_line(lines[where])["notebook"] or "?"
            problems += _check_download(claims_page, line_tag, chapter, where)
    else:
        problems.append(f"no Claims page at {claims_page}")
    problems += check_lines(lines, manifest, builds)
    linked, digests = _check_backlinks(html_dir / "book" / "_generated" / "reproducibility.html",
                                       soup, manifest, problems)
    for page, anchor in sorted((figures | verdicts) - linked):
        problems.append(f"reproducibility page: no link back to {page.stem}#{anchor}")
    return {"figures": len(figures), "verdicts": len(verdicts), "lines": len(lines),
            "lines_with_digest": sum(parse_line(t)["digest"] is not None for t in lines.values()),
            "backlinks": len(linked), "backlinks_with_digest": digests, "problems": problems}


def _check_download(page: Path, tag, notebook: str, where: str) -> list[str]:
    a = tag.find("a", class_="download")
    if a is None:
        return [f"{where}: no download link"]
    target, _ = _target(page, a.get("href", ""))
    if target.name != f"{notebook}.ipynb":
        return [f"{where}: the download link leads to {target.name}, not {notebook}.ipynb"]
    if not target.is_file():
        return [f"{where}: the download link's file {target} is not in the book"]
    try:
        nb = json.loads(target.read_text())
    except ValueError:
        return [f"{where}: {target.name} is not a notebook"]
    if not nb.get("metadata", {}).get("papermill"):
        return [f"{where}: {target.name} is not an executed notebook"]
    return []


def _check_backlinks(page: Path, soup, manifest: dict[str, Any],
                     problems: list[str]) -> tuple[set[tuple[Path, str]], int]:
    """The (page, anchor) pairs the reproducibility page's back-link table reaches, and
    how many of its rows name a digest that matches the manifest; adds to ``problems``
    every link that lands nowhere and every digest that is not the manifest's."""
    if not page.is_file():
        problems.append(f"no reproducibility page at {page}")
        return set(), 0
    heading = soup(page).find(lambda t: t.name in ("h1", "h2", "h3")
                              and t.get_text().strip().rstrip("#").strip() == BACKLINKS_TITLE)
    table = heading.find_next("table") if heading is not None else None
    if table is None:
        problems.append(f"reproducibility page: no table under '{BACKLINKS_TITLE}'")
        return set(), 0
    reached, matched = set(), 0
    results = manifest.get("results", {})
    for row in table.find("tbody").find_all("tr"):
        cells = row.find_all("td")
        a = cells[0].find("a") if cells else None
        if a is None:
            problems.append(f"reproducibility page: a row without a link: {row.get_text(' ')[:80]}")
            continue
        target, anchor = _target(page, a.get("href", ""))
        if not target.is_file() or not anchor or soup(target).find(id=anchor) is None:
            problems.append(f"reproducibility page: the link {a.get('href')} lands nowhere")
            continue
        reached.add((target, anchor))
        # the last column: the result file and its content digest
        m = re.fullmatch(r"(\S+)\.json (?:([0-9a-f]{16})…|not written)",
                         plain(cells[-1].get_text()))
        if m and (m.group(1) not in results or m.group(2) is None
                  or not results[m.group(1)]["digest"].startswith(m.group(2))):
            problems.append(f"reproducibility page: the digest of {m.group(1)} in the row of "
                            f"{target.stem}#{anchor} is not the manifest's")
        elif m and m.group(2):
            matched += 1
    return reached, matched
