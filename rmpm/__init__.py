"""rmpm: representational and predictive multiplicity of deep networks.

A replication of Heljakka et al., *Disentangling Model Multiplicity in Deep
Learning* (arXiv:2206.08890), and a toolkit to measure multiplicity of any set
of models. Four layers, each importing only from the ones before it:

- :mod:`rmpm.measures`: similarity (SVCCA, PWCCA, CKA, RM), multiplicity (PM),
  statistics and a multiplicity report, for any models; knows nothing of training;
- :mod:`rmpm.pipeline`: recipes, data, OOD shifts, models, training, evaluation,
  the Dask engine and the content-addressed store: a recipe in, stored models out;
- :mod:`rmpm.analysis`: profiles, populations, analyses, the claims' evidence and
  verdicts, and their calibration: what the replication computes and decides;
- :mod:`rmpm.book`: how it is published: notebooks run, build folders, provenance,
  manifests, the reproducibility page, archives and the Jupyter Book build.

Shared by all four: :mod:`rmpm.paths` (the one place that knows where files go),
:mod:`rmpm.atomic` (atomic file writes), :mod:`rmpm.jsonable` (what JSON they hold),
:mod:`rmpm._checks` (argument checks). Submodules are imported on demand
(``from rmpm.measures import similarity``), so the command line starts quickly.
"""

__version__ = "0.1.0"
