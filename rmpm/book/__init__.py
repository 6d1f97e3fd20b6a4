"""Book: publishing what :mod:`rmpm.analysis` computes, as a Jupyter Book.

Uses :mod:`rmpm.measures`, :mod:`rmpm.pipeline` and :mod:`rmpm.analysis`; nothing
imports from here. A chapter (a notebook in ``notebooks/``) sets parameters, calls
the analysis, tabulates and plots.

- chapters: :mod:`~rmpm.book.chapter` (what every notebook does at its top: banner,
  parameter checks), :mod:`~rmpm.book.plots`, :mod:`~rmpm.book.records` (the JSON
  results notebooks save, and their content digests), :mod:`~rmpm.book.claims_page`
  (the verdicts with where they came from);
- building: :mod:`~rmpm.book.notebooks` (the notebooks, run with papermill),
  :mod:`~rmpm.book.builds` (build folders), :mod:`~rmpm.book.build` (the whole build,
  then the HTML), :mod:`~rmpm.book.sphinx_ext`;
- what a build says of itself: :mod:`~rmpm.book.provenance` (every figure's and
  verdict's line), :mod:`~rmpm.book.manifest` (digests of a build, ``rmpm verify``),
  :mod:`~rmpm.book.reproducibility` (the reproducibility page),
  :mod:`~rmpm.book.archive` (a build carried to another machine).
"""
