"""Measures: similarity of representations, multiplicity of predictions, statistics,
and a report for any set of models.

This layer knows nothing of training, recipes or the book: every function takes
arrays (or torch models and inputs) and returns numbers, tables or figures. It
imports nothing from :mod:`rmpm.pipeline` or :mod:`rmpm.book` (a test checks).

- :mod:`~rmpm.measures.similarity`: SVCCA, PWCCA, linear CKA, RM = 1 - similarity;
- :mod:`~rmpm.measures.multiplicity`: PM measures of a population's predictions;
- :mod:`~rmpm.measures.stats`: bootstrap, rank correlations, Friedman / Kendall's W;
- :mod:`~rmpm.measures.activations`: outputs of named layers of any model;
- :mod:`~rmpm.measures.report`: :func:`~rmpm.measures.report.multiplicity_report`.
"""
