"""Calibration caches are computed under a claim, like every store entry: a scenario
another process is simulating is waited for, not simulated again, and two
calibrations at once simulate each scenario once (rmpm.pipeline.locks).

The claim on scenario ``key`` is ``lock_path(paths.calibration_dir(), "calibration",
key)``: the cache folder holds its own ``locks/`` (it is not in the store, and moves
with ``RMPM_CACHE``)."""
import threading
import time
from collections import Counter

import numpy as np
import pytest

from rmpm import paths
from rmpm.analysis import calibration as C
from rmpm.pipeline.locks import Lock, lock_path

KW = {"n_perm": 50, "n_boot": 20, "threshold": 0.01}


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A fresh cache, and every simulation counted by scenario (each takes a while,
    so two calibrations at once overlap)."""
    monkeypatch.setenv("RMPM_CACHE", str(tmp_path))
    calls: Counter = Counter()
    real = C.Scenario.simulate

    def simulate(self, d, n_sim, seed, kw):
        calls[self.key] += 1
        time.sleep(0.2)
        return real(self, d, n_sim, seed, kw)

    monkeypatch.setattr(C.Scenario, "simulate", simulate)
    return calls


def test_a_scenario_claimed_elsewhere_is_waited_for_not_simulated(counted):
    d = C.design("smoke")
    sc = C.scenarios()[0]
    key = C._cache_key(d, sc, 5, 0, KW)
    path = paths.calibration_dir() / f"{key}{C.CACHE_SUFFIX}"
    holder = Lock(lock_path(paths.calibration_dir(), "calibration", key))
    assert holder.try_acquire()  # "another build" is simulating this scenario
    got = {}
    t = threading.Thread(target=lambda: got.update(r=C.simulated(d, sc, 5, 0, KW)))
    try:
        t.start()
        time.sleep(1.5)
        assert t.is_alive() and not counted, "simulated a scenario another process had claimed"
        theirs = {"p_blocks": np.linspace(0, 1, 5), "p_datasets": np.full(5, 0.5)}
        C._save(path, theirs, 7.0)  # the holder commits its simulations ...
    finally:
        holder.release()  # ... and lets go
        t.join(30)
    out, seconds, cached = got["r"]
    assert not counted and cached and seconds == 7.0
    assert np.array_equal(out["p_blocks"], np.linspace(0, 1, 5))


def test_two_calibrations_at_once_simulate_each_scenario_once(counted):
    tables = []
    threads = [threading.Thread(target=lambda: tables.append(
        C.calibrate("smoke", n_sim=5, n_perm=50, n_boot=20, claims_=("C1", "C4"))))
        for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(tables) == 2
    assert counted and set(counted.values()) == {1}, dict(counted)
    assert tables[0]["rate"].tolist() == tables[1]["rate"].tolist()
    # what each reports as computed now, not from the cache, adds up to one of each
    n = len({(s.claim, s.key) for s in C.scenarios() if s.claim in ("C1", "C4")})
    assert sum(C.cost(t)["scenarios"] - C.cost(t)["cached"] for t in tables) == n


def test_a_damaged_cache_file_is_simulated_again_under_its_claim(counted):
    d = C.design("smoke")
    sc = C.scenarios()[0]
    path = paths.calibration_dir() / f"{C._cache_key(d, sc, 5, 0, KW)}{C.CACHE_SUFFIX}"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"0" * 64 + b"\nnot an npz")
    with pytest.warns(RuntimeWarning, match="is damaged"):
        _, _, cached = C.simulated(d, sc, 5, 0, KW)
    assert not cached and counted[sc.key] == 1 and C._load(path) is not None
