"""The book's notebooks: which there are, their parameters, running one with papermill
on the project's kernel, and what the build adds to each executed copy (one table of
the parameters it ran with, captioned figures alone in their cells, every figure's
provenance line).
"""
from __future__ import annotations

import ast
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import paths
from .._checks import check_choice
from ..atomic import atomic_write_text
from .chapter import check_values, present_parameters, split_figure_outputs
from .provenance import add_figure_provenance
from .records import file_content_digest

KERNEL_NAME = "rmpm"


def notebook_paths() -> list[Path]:
    """The book's notebooks, in chapter order (their file names start with the number)."""
    return sorted(paths.notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its ``parameters`` cell, with defaults."""
    import papermill as pm
    return {k: v["default"] for k, v in pm.inspect_notebook(str(path)).items()}


def check_papermill_parameters(path: Path, params: dict[str, Any]) -> None:
    """Refuse parameters the notebook does not declare (papermill would only warn),
    and values that break :func:`rmpm.book.chapter.check_values` (the same check the
    notebook itself makes when it runs), before anything is executed."""
    declared = notebook_parameters(path)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"{path.name} has no parameter(s) {', '.join(unknown)}; "
                         f"its parameters are: {', '.join(sorted(declared))}")
    # papermill reports defaults as source text, e.g. '"smoke"'
    profile = params["profile"] if "profile" in params else ast.literal_eval(declared["profile"])
    check_values(Path(path), {**params, "profile": profile})


def kernel_name() -> str:
    """The project kernel if it is registered, else the current interpreter's ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager
    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def execute(path: Path, out: Path, params: dict[str, Any], cwd: Path | None = None,
            progress: bool = False) -> float:
    """Execute one notebook with papermill; returns the seconds it took.

    A failing cell raises (papermill's PapermillExecutionError), after writing
    the partially executed notebook to ``out`` for inspection.
    """
    import papermill as pm
    check_papermill_parameters(path, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the kernel is killed, not asked to shut down, once its cells have run (their
    # files are written by then) or when the build is stopped: a kernel asked to shut
    # down in the middle of a cell prints a traceback of its own
    pm.execute_notebook(str(path), str(out), parameters=params, kernel_name=kernel_name(),
                        cwd=str(cwd or path.parent), progress_bar=progress,
                        shutdown_kernel="immediate")
    return time.perf_counter() - t0


def select_notebooks(only: Sequence[str] | None = None) -> list[Path]:
    """The notebooks named in ``only`` (None: all), checked before any work."""
    nbs = notebook_paths()
    if only is None:
        return nbs
    names = [p.stem for p in nbs]
    if not only:
        raise ValueError(f"only={list(only)!r} names no notebook; choose from: "
                         f"{', '.join(names)} (or None for all)")
    for o in only:
        check_choice("notebook", o, names)
    return [p for p in nbs if p.stem in only]


def show_parameters(path: Path, out: Path, params: dict[str, Any]) -> None:
    """In the executed copy ``out`` of ``path``, replace papermill's two parameter cells
    (the notebook's defaults, then the injected values) by one table of the values the
    page ran with (:func:`rmpm.book.chapter.present_parameters`), and give each captioned
    figure cell its image alone (:func:`rmpm.book.chapter.split_figure_outputs`)."""
    import nbformat
    import papermill as pm

    nb = present_parameters(nbformat.read(out, as_version=4),
                            pm.inspect_notebook(str(path)), params)
    atomic_write_text(out, nbformat.writes(split_figure_outputs(nb)))


def annotate_figures(out: Path, name: str, results_dir: Path, build_id: str,
                     commit: str) -> None:
    """Under every numbered figure of executed notebook ``out``, its provenance line
    (:mod:`rmpm.book.provenance`): this notebook, the rmpm functions the cell calls,
    the chapter's result file in ``results_dir`` and its content digest (the
    manifest's), the build and the commit."""
    import nbformat
    digest = file_content_digest(Path(results_dir) / f"{name}.json")
    nb = add_figure_provenance(nbformat.read(out, as_version=4), name,
                               name if digest else None, digest, build_id, commit)
    atomic_write_text(out, nbformat.writes(nb))


def papermill_status(path: Path) -> str | None:
    """What papermill recorded in executed notebook ``path``: ``completed``, ``failed``
    (naming the cell as papermill does, by its execution count), or None if it holds no
    papermill record."""
    try:
        nb = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    pm_meta = nb.get("metadata", {}).get("papermill")
    if not pm_meta:
        return None
    if not pm_meta.get("exception"):
        return "completed"
    failed = [c.get("execution_count") for c in nb.get("cells", [])
              if c.get("metadata", {}).get("papermill", {}).get("status") == "failed"]
    return f"failed at In [{failed[0]}]" if failed else "failed"


def error_line(e: BaseException) -> str:
    """A failed notebook's error in one line (papermill's: which cell raised what)."""
    from papermill.exceptions import PapermillExecutionError
    if isinstance(e, PapermillExecutionError):
        value = (e.evalue or "").strip().splitlines()
        return f"In [{e.exec_count}] raised {e.ename}: {value[0] if value else ''}".strip()
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
