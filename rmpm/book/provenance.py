"""Where each figure of the book came from: a compact line under every numbered figure.

A post-processing step of the executed notebooks (like
:func:`rmpm.book.build.show_parameters`), so no notebook carries it in its source.
Under every captioned figure cell (``mystnb.figure``) it adds a small markdown cell
naming:

- the notebook, with a download link to the executed ``.ipynb``;
- the ``rmpm`` functions the figure's cell calls, read from the cell's source and
  resolved through the notebook's imports (``from rmpm.book import plots as P`` makes
  ``P.rm_by_layer(...)`` ``rmpm.book.plots.rm_by_layer``);
- the chapter's result file and its SHA-256 (:func:`rmpm.book.records.digests`, the
  digests the reproducibility page lists);
- the build id and the git commit.
"""
from __future__ import annotations

import ast
import copy
import re
from typing import Any

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


def line(notebook: str, calls: list[str], result: str | None, digest: str | None,
         build: str, commit: str) -> str:
    """The markdown of one provenance line."""
    parts = [f"notebook {{download}}`{notebook}.ipynb <{notebook}.ipynb>`"]
    if calls:
        parts.append("computed by " + ", ".join(f"`{c}`" for c in calls))
    if result is not None:
        parts.append(f"result `{result}.json`"
                     + (f" (SHA-256 `{digest[:16]}…`)" if digest else " (not written)"))
    parts.append(f"build `{build}`")
    sha, _, note = commit.partition(" ")  # e.g. "<sha> (with uncommitted changes)"
    parts.append(f"commit `{sha[:12]}`" + (f" {note}" if note else ""))
    return "<small>Provenance: " + " · ".join(parts) + "</small>"


def add_figure_provenance(nb: Any, notebook: str, result: str | None, digest: str | None,
                          build: str, commit: str) -> Any:
    """A copy of executed notebook ``nb`` with a provenance line after every captioned
    figure cell (earlier provenance cells replaced)."""
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
            md = nbformat.v4.new_markdown_cell(
                line(notebook, rmpm_calls(cell.source, imports), result, digest, build, commit))
            md.metadata["tags"] = [TAG]
            md.metadata["rmpm"] = {"figure": fig.get("name")}
            cells.append(md)
    nb.cells = cells
    return nb


def figure_lines(nb: Any) -> dict[str, str]:
    """Figure name -> its provenance line, in an annotated notebook (for checks)."""
    return {c.metadata["rmpm"]["figure"]: c.source for c in nb.cells
            if TAG in c.metadata.get("tags", []) and c.metadata.get("rmpm", {}).get("figure")}
