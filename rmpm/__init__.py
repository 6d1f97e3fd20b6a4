"""rmpm: representational and predictive multiplicity of deep networks.

A replication of Heljakka et al., *Disentangling Model Multiplicity in Deep
Learning* (arXiv:2206.08890), and a toolkit to measure multiplicity of any set
of models. One module per concept:

- measures: :mod:`rmpm.similarity` (SVCCA, PWCCA, CKA, RM), :mod:`rmpm.multiplicity`
  (PM measures), :mod:`rmpm.stats` (bootstrap, correlations, Friedman/Kendall's W),
  :mod:`rmpm.report` (a multiplicity report for any models and data);
- training: :mod:`rmpm.data`, :mod:`rmpm.shifts`, :mod:`rmpm.models`,
  :mod:`rmpm.recipe`, :mod:`rmpm.train`, :mod:`rmpm.ensemble`, :mod:`rmpm.evaluate`,
  :mod:`rmpm.runs`, :mod:`rmpm.store`;
- the book: :mod:`rmpm.profiles`, :mod:`rmpm.experiments`, :mod:`rmpm.analysis`,
  :mod:`rmpm.samples`, :mod:`rmpm.claims`, :mod:`rmpm.results`, :mod:`rmpm.book`;
- :mod:`rmpm.paths` is the one place that knows where files go.

Submodules are imported on demand (``from rmpm import similarity``), so the
command line starts quickly.
"""

__version__ = "0.1.0"
