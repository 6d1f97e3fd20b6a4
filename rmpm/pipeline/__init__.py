"""Pipeline: from a recipe to stored, evaluated models.

A :class:`~rmpm.pipeline.recipe.Recipe` (frozen, validated) names everything a
trained model depends on. :func:`~rmpm.pipeline.runs.run_recipe` is the unit of
work, a pure function from (recipe, evaluation spec) to store entries; the
:mod:`~rmpm.pipeline.engine` maps many recipes onto Dask workers, and the
content-addressed :mod:`~rmpm.pipeline.store` is the only shared state. This layer
may use :mod:`rmpm.measures`, never :mod:`rmpm.book` (a test checks).

- inputs: :mod:`~rmpm.pipeline.data` (data sets), :mod:`~rmpm.pipeline.shifts` (OOD shifts);
- models and training: :mod:`~rmpm.pipeline.models`, :mod:`~rmpm.pipeline.recipe`,
  :mod:`~rmpm.pipeline.train` (one model), :mod:`~rmpm.pipeline.ensemble` (many at once);
- evaluation: :mod:`~rmpm.pipeline.evaluate` (predictions and activations to store);
- running: :mod:`~rmpm.pipeline.runs`, :mod:`~rmpm.pipeline.engine`,
  :mod:`~rmpm.pipeline.determinism`, :mod:`~rmpm.pipeline.store`,
  :mod:`~rmpm.pipeline.estimate` (how long a set of recipes takes).
"""
