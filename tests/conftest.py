"""The suite's one shared rule: ``make test-fast`` (``RMPM_TEST_FAST=1``) runs the tests that
need no trained model, and any other test that trains one fails there instead of quietly
making the fast loop slow.

Tests that train (``rmpm.pipeline.train.fit``, ``rmpm.pipeline.ensemble.fit_ensemble``, or
on Dask workers: ``rmpm.pipeline.engine.get_client``) or execute a notebook (papermill)
are marked ``trains`` (or ``notebook``, ``cluster``,
``slow``, ``browser``); in a fast run every unmarked test runs with those entry points
replaced by a guard that raises, fixtures included.
"""
from __future__ import annotations

import os

import pytest

FAST = bool(os.environ.get("RMPM_TEST_FAST"))
#: markers of the tests a fast run leaves out (pyproject.toml describes them)
HEAVY = ("trains", "notebook", "cluster", "slow", "browser")


def _guard(what: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"this test {what} but is not marked 'trains' (make test-fast "
                           "runs only tests that need no trained model): mark it")
    return refuse


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if not FAST or any(item.get_closest_marker(m) for m in HEAVY):
        return
    import papermill

    from rmpm.pipeline import engine, ensemble, train
    patch = pytest.MonkeyPatch()
    patch.setattr(engine, "get_client", _guard("trains on Dask workers"))
    patch.setattr(train, "fit", _guard("trains a model"))
    patch.setattr(ensemble, "fit_ensemble", _guard("trains a model"))
    patch.setattr(papermill, "execute_notebook", _guard("executes a notebook"))
    item._rmpm_fast_guard = patch


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    patch = getattr(item, "_rmpm_fast_guard", None)
    if patch is not None:
        patch.undo()
