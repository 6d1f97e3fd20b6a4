"""A small Sphinx extension for the book (listed in ``_config.yml``): two fixes that
make the rendered pages load in a browser without console errors.

- sphinx-thebe and sphinx-togglebutton add inline scripts from an event that fires
  after the HTML builder has copied the registered scripts, so every page declared
  ``const THEBE_JS_URL`` twice, a SyntaxError in the console. Identical scripts are
  kept once per page.
- pydata-sphinx-theme logs "Got invalid theme mode" on a reader's first visit when
  no default mode is configured; the book sets it to ``auto`` (follow the system).

It also adds one style sheet, :data:`CSS`: in provenance lines and the names they
list (:mod:`rmpm.book.provenance`) long function names, digests and build ids may
break anywhere, so that the Claims page's provenance column (at least 12rem wide) and
the reproducibility page's table wrap inside the page instead of overflowing it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

CSS_FILE = "rmpm.css"
CSS = """/* written by rmpm.book.sphinx_ext */
small.rmpm-provenance code, small.rmpm-provenance code span.pre, code.rmpm-name {
  overflow-wrap: anywhere; white-space: normal;
}
/* the Claims page's provenance column: wide enough for most dotted names on a
   line, narrow enough that the four columns fit the page with whole words in the
   others (at 14rem the default book's table overflowed by 15 px) */
td small.rmpm-provenance { display: inline-block; min-width: 12rem; }
"""


def _script_key(js: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    # an inline script's file name is None from one registration and "" from the other
    attributes = getattr(js, "attributes", {}) or {}
    return str(getattr(js, "filename", js) or ""), tuple(sorted(
        (str(k), str(v)) for k, v in attributes.items()))


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """``scripts`` without repeats (same file or inline body, same attributes), in order."""
    seen, kept = set(), []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            kept.append(js)
    return kept


def _page_context(app, pagename, templatename, context, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(context["script_files"])


def _config_inited(app, config) -> None:
    context = dict(config.html_context or {})
    context.setdefault("default_mode", "auto")  # pydata-sphinx-theme reads it from here
    config.html_context = context
    # written from here rather than shipped as a file, so an installed rmpm needs no
    # package data; the HTML builder copies the folder into _static/
    static = Path(app.doctreedir).parent / "rmpm_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / CSS_FILE).write_text(CSS)
    config.html_static_path = [*config.html_static_path, str(static)]


def setup(app) -> dict[str, Any]:
    app.connect("config-inited", _config_inited)
    app.add_css_file(CSS_FILE)
    # late, so that every other extension has added its scripts
    app.connect("html-page-context", _page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
