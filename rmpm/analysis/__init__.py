"""Analysis: the replication's science. Which models a profile trains, what is
computed from them, and what is decided.

Uses :mod:`rmpm.measures` and :mod:`rmpm.pipeline`; knows nothing of notebooks, build
folders or pages (:mod:`rmpm.book` publishes what is computed here).

- what to run: :mod:`~rmpm.analysis.profiles` (the sizes of each profile),
  :mod:`~rmpm.analysis.populations` (a profile's populations of models, trained once,
  and the factor table of their RM and PM), :mod:`~rmpm.analysis.factors` (the training
  factors' kinds and blocks);
- analyses: :mod:`~rmpm.analysis.factor_analysis` (RM by factor, PM under shift, RM vs
  PM), :mod:`~rmpm.analysis.finite_samples` (how many inputs and models the measures
  need), :mod:`~rmpm.analysis.synthetic` (known-answer data for the measures);
- decisions: :mod:`~rmpm.analysis.evidence` (each claim's evidence, from the tables),
  :mod:`~rmpm.analysis.verdicts` (the verdict rules), :mod:`~rmpm.analysis.calibration`
  (their error rates, simulated through the same code).
"""
