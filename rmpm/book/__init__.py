"""Book: the replication's experiments, analyses, verdicts and the Jupyter Book.

Uses :mod:`rmpm.measures` and :mod:`rmpm.pipeline`; nothing below imports from here.
A chapter (a notebook in ``notebooks/``) sets parameters, calls these modules,
tabulates and plots; the logic lives here.

- what to run: :mod:`~rmpm.book.profiles` (sizes of each profile),
  :mod:`~rmpm.book.populations` (a profile's populations of models, trained once
  and loaded for every chapter, and the factor table of their RM and PM);
- analyses: :mod:`~rmpm.book.factor_analysis` (the factor table: RM by factor, PM
  under shift, RM vs PM), :mod:`~rmpm.book.finite_samples` (how many inputs and
  models the measures need);
- verdicts: :mod:`~rmpm.book.decisions` (each claim's evidence),
  :mod:`~rmpm.book.claims` (verdict rules), :mod:`~rmpm.book.calibration` (their
  error rates, simulated through the same code);
- pages: :mod:`~rmpm.book.chapter` (what every notebook does at its top),
  :mod:`~rmpm.book.plots`, :mod:`~rmpm.book.records` (the JSON results notebooks
  save and the Claims page reads), :mod:`~rmpm.book.build` (execute notebooks, build
  HTML), :mod:`~rmpm.book.manifest` (digests of a build, ``rmpm verify``),
  :mod:`~rmpm.book.sphinx_ext`.
"""
