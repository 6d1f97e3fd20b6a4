"""The Claims page: the chapters' saved results in, the verdict table with where each
verdict came from out.

The verdicts themselves are science (:mod:`rmpm.analysis.verdicts`: typed evidence
in, verdicts out); this module only reads the result files of the current build
(:mod:`rmpm.book.records`) and publishes the verdicts with their provenance
(:mod:`rmpm.book.provenance`).
"""
from __future__ import annotations

from typing import Any

from ..analysis.verdicts import (CHAPTER, EVIDENCE_FUNCTIONS, LEVEL_RULES, RESULT_CHAPTERS,
                                 VERDICT_RULES, Verdict)
from . import records
from .provenance import current_commit, qualname, verdict_anchor, verdict_line


def chapter_results(profile: str) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    """The saved result values of :data:`~rmpm.analysis.verdicts.RESULT_CHAPTERS` for
    ``profile`` in the current build (None where a chapter has not run), and the
    missing chapters."""
    found = {name: records.values(name, profile) for name in RESULT_CHAPTERS}
    return found, [n for n, v in found.items() if v is None]


def verdict_provenance(build: str | None = None, commit: str | None = None,
                       results_dir=None) -> dict[str, dict[str, Any]]:
    """Per claim, where its verdict comes from: the chapter whose notebook computed the
    evidence, the evidence function, the rules (the verdict function and its decision
    rule on arrays), the chapter's result file and its content digest (as the manifest
    lists it), the build and the commit (default: the current build's,
    :func:`rmpm.book.records.current_build` and
    :func:`rmpm.book.provenance.current_commit`)."""
    digests = records.content_digests(results_dir)
    build = build or records.current_build()
    commit = commit or current_commit()
    return {c: {"chapter": chapter, "evidence": qualname(EVIDENCE_FUNCTIONS[c]),
                "rules": [qualname(VERDICT_RULES[c]), qualname(LEVEL_RULES[c])],
                "result": chapter, "digest": digests.get(chapter), "build": build,
                "commit": commit}
            for c, chapter in CHAPTER.items()}


def _cell(text: str) -> str:
    # a Markdown table cell: one line, no column separators
    return " ".join(str(text).split()).replace("|", "\\|")


def verdict_table(verdicts: list[Verdict], provenance: dict[str, dict[str, Any]]) -> str:
    """The Claims page's verdict table as MyST Markdown: the claim, the verdict with why,
    the result, and where the verdict came from (:func:`verdict_provenance`, one
    :func:`rmpm.book.provenance.verdict_line` per row). Each row carries the HTML id the
    reproducibility page links to (:func:`rmpm.book.provenance.verdict_anchor`). Four
    columns, not five: a provenance column beside five text columns did not fit the page."""
    rows = ["| claim | verdict, and why | result | provenance |", "|---|---|---|---|"]
    for v in verdicts:
        key = v.claim.split(":")[0]
        pv = provenance[key]
        where = verdict_line(pv["chapter"], pv["evidence"], pv["rules"], pv["result"],
                             pv["digest"], pv["build"], pv["commit"])
        rows.append(f'| <span id="{verdict_anchor(key)}"></span>{_cell(v.claim)} | '
                    f"**{_cell(v.verdict)}** <br>{_cell(v.evidence)} | {_cell(v.result)} | "
                    f"{_cell(where)} |")
    return "\n".join(rows)
