"""The store notices damage and repairs itself.

Every kind of stored file is damaged in every way (truncated, one byte flipped,
deleted, overwritten with garbage): ``store verify`` names the entry and the
file, a rerun quarantines and recomputes it, and the repaired store verifies
clean with the numbers of an undamaged run. A run killed with SIGKILL at random
points ends, after a rerun, in a clean store with the same numbers. Tiny 1-epoch
MLPs on scikit-learn's digits keep this fast.
"""
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rmpm.analysis import populations as X
from rmpm.cli import main
from rmpm.analysis.profiles import get_profile
from rmpm.pipeline.runs import run_recipes
from rmpm.pipeline.store import (CHECKSUMS, QUARANTINE, DamagedEntryError, Store, StoreDamageWarning,
                        StoreWriteError, check_entry)

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains

_R = get_profile("smoke_multi").reference["digits"].replace(epochs=1, width=16)
TINY = get_profile("smoke_multi").replace(
    name="tiny_digits", datasets=("digits",), base={"digits": _R}, reference={"digits": _R},
    reference_seeds=2, corruptions=("gaussian_noise",), severities=(3,), n_test=200, n_probe=100)


def run(store):
    """What a chapter does: train and evaluate a population, then its measures."""
    pop = X.reference_population(TINY, "digits")
    res = run_recipes(pop.recipes, X.eval_spec(TINY), store, device="cpu", progress=False)
    measures = X.cached_population_measures(pop, TINY, store=store)
    return {"metrics": [{k: v for k, v in r.model.metrics.items() if "seconds" not in k}
                        for r in res],
            "weights": [r.model.state_dict() for r in res],
            "eval": [r.eval.metrics for r in res],
            "arrays": [r.eval.arrays() for r in res],
            "measures": measures}


def assert_same_numbers(a, b):
    assert a["metrics"] == b["metrics"] and a["eval"] == b["eval"]
    assert a["measures"] == b["measures"]
    for wa, wb in zip(a["weights"], b["weights"]):
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for xa, xb in zip(a["arrays"], b["arrays"]):
        assert xa.keys() == xb.keys()
        for k in xa:
            np.testing.assert_array_equal(xa[k], xb[k])


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    t0 = time.perf_counter()
    numbers = run(Store(root))
    return root, numbers, time.perf_counter() - t0


def _truncate(f: Path):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip(f: Path):
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


def _garbage(f: Path):  # same size, so only the digest can tell
    f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))


FAULTS = {"truncate": _truncate, "flip": _flip, "delete": Path.unlink, "garbage": _garbage}
FILES = {"model.pt": "models", "recipe.json": "models", "metrics.json": "models",
         "arrays.npz": "evals", "measures.json": "derived"}


def verify(root, capsys, *extra):
    rc = main(["store", "verify", "--store", str(root), *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", FILES)
def test_damage_is_named_quarantined_and_repaired(clean, tmp_path, capsys, name, fault):
    root = tmp_path / "store"
    shutil.copytree(clean[0], root)
    kind = FILES[name]
    entry = next(Store(root).entry_dirs(kind))
    FAULTS[fault](entry / name)

    rc, out = verify(root, capsys)
    assert rc == 1
    assert f"DAMAGED {kind}/{entry.parent.name}/{entry.name}: {name}:" in out
    assert "checked 5 entries" in out and "1 damaged" in out

    with pytest.warns(StoreDamageWarning, match=f"{entry.name} is damaged: {name}: .*Moved to"):
        repaired = run(Store(root))
    moved = list((root / QUARANTINE / kind).glob(f"{entry.name}-*"))
    assert len(moved) == 1, "the damaged entry is kept in quarantine, not deleted"
    assert verify(root, capsys)[0] == 0
    assert_same_numbers(repaired, clean[1])


def test_verify_repair_quarantines_and_the_next_run_recomputes(clean, tmp_path, capsys):
    root = tmp_path / "store"
    shutil.copytree(clean[0], root)
    entry = next(Store(root).entry_dirs("evals"))
    _flip(entry / "arrays.npz")
    rc, out = verify(root, capsys, "--repair")
    assert rc == 1 and "moved to" in out and not entry.exists()
    assert verify(root, capsys)[0] == 0  # what is left is intact
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreDamageWarning)  # the stale derived measures
        assert_same_numbers(run(Store(root)), clean[1])
    assert verify(root, capsys)[0] == 0


def test_a_read_checks_what_it_loads(clean, tmp_path):
    """Damage after the entry was checked (same process) is still never used."""
    root = tmp_path / "store"
    shutil.copytree(clean[0], root)
    store = Store(root)
    pop = X.reference_population(TINY, "digits")
    entry = store.model(pop.recipes[0])  # checked now
    _flip(entry.path / "model.pt")
    with pytest.warns(StoreDamageWarning), pytest.raises(
            DamagedEntryError, match=r"models/.*is damaged: model.pt: does not match its "
                                     r"manifest.*Rerun to recompute it"):
        entry.state_dict()
    assert not entry.path.exists()


def test_legacy_entries_are_checked_by_parsing_and_upgraded(clean, tmp_path, capsys):
    root = tmp_path / "store"
    shutil.copytree(clean[0], root)
    good, bad = list(Store(root).entry_dirs("models"))
    for d in (good, bad):  # as written before manifests existed
        (d / CHECKSUMS).unlink()
    _truncate(bad / "model.pt")
    rc, out = verify(root, capsys)
    assert rc == 1 and f"DAMAGED models/{bad.parent.name}/{bad.name}: model.pt: does not parse" in out
    assert "1 legacy" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreDamageWarning)
        assert_same_numbers(run(Store(root)), clean[1])
    assert (good / CHECKSUMS).is_file() and not check_entry(good)[0]  # upgraded in place
    rc, out = verify(root, capsys)
    assert rc == 0 and "0 legacy" in out


def test_derived_measures_are_recomputed_when_their_inputs_change(clean, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(clean[0], root)
    store, pop, spec = Store(root), X.reference_population(TINY, "digits"), X.eval_spec(TINY)
    r = pop.recipes[1]
    e = store.eval(r, spec.key())
    arrays, metrics = e.arrays(), e.metrics
    arrays["probs:iid"] = np.roll(arrays["probs:iid"], 1, axis=0)  # a different evaluation
    shutil.rmtree(e.path)
    store.put_eval(r, spec.to_dict(), spec.key(), metrics, arrays)
    with pytest.warns(StoreDamageWarning, match="is stale: inputs.json: its input entries have "
                                                "changed"):
        again = X.cached_population_measures(pop, TINY, store=store)
    assert again["pm:iid"] != clean[1]["measures"]["pm:iid"]
    assert again == X.population_measures(X.load_population(pop, TINY, store), TINY.svcca_keep)


def test_derived_entries_from_before_manifests_are_legacy_not_damage(tmp_path, capsys):
    d = tmp_path / "derived" / "ab" / ("ab" + "0" * 62)
    d.mkdir(parents=True)
    (d / "measures.json").write_text('{"rm": 0.1}')  # as MEASURES_VERSION 2 wrote them
    rc, out = verify(tmp_path, capsys)
    assert rc == 0 and "1 legacy" in out


def test_store_ls_lists_damage_instead_of_dying(clean, tmp_path, capsys):
    root = tmp_path / "store"
    shutil.copytree(clean[0], root)
    first = next(Store(root).entry_dirs("models"))
    (first / "metrics.json").write_text('{"test_acc": 0.5,')
    rc = main(["store", "ls", "--store", str(root)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"{first.name[:12]} DAMAGED: metrics.json:" in out
    assert len(out.splitlines()) == 2 and "digits" in out.splitlines()[1]
    assert "store verify --repair" in err


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_store_integrity import run
from rmpm.pipeline.store import Store
print("ready", flush=True)
run(Store({root!r}))
print("done", flush=True)
"""


def test_kill_9_at_random_points_ends_clean(clean, tmp_path, capsys):
    root = tmp_path / "store"
    work_s = clean[2]
    rng = random.Random(1234)  # the kill points are random but reproducible
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    code = _CHILD.format(tests=str(Path(__file__).parent), root=str(root))
    # a kill before the first commit leaves no entry; the folder must still verify
    root.mkdir()
    kills = 0
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.8 * work_s))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.wait()
        rc, out = verify(root, capsys)
        assert rc == 0, out  # whatever was committed is intact
    assert kills >= 2, "the kills should interrupt the work"
    numbers = run(Store(root))
    Store(root).sweep(older_than_s=0)
    rc, out = verify(root, capsys)
    assert rc == 0 and "checked 5 entries" in out and "0 damaged" in out
    assert_same_numbers(numbers, clean[1])


def test_full_disk_stops_with_the_path_and_the_remedy(tmp_path, monkeypatch):
    import rmpm.pipeline.store as S
    store = Store(tmp_path)
    r = TINY.reference["digits"]

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(S, "_write_json", full)
    with pytest.raises(StoreWriteError, match=rf"cannot write to the store at {tmp_path}.*No space "
                                              r"left on device.*Free disk space.*RMPM_STORE"):
        store.put_model(r, {"w": torch.zeros(2)}, {}, [], (1, 8, 8), 10)
    assert list((tmp_path / "models").glob("*/*")) == []  # no half-written entry left


def test_read_only_store_stops_train_before_any_work(tmp_path, monkeypatch, capsys):
    import rmpm.pipeline.data
    from pathlib import Path as P

    def read_only(self, data):
        raise OSError(errno.EROFS, "Read-only file system")

    def no_data(*a, **k):
        raise AssertionError("data was loaded before the store was checked")

    monkeypatch.setattr(P, "write_bytes", read_only)
    monkeypatch.setattr(rmpm.pipeline.data, "ensure", no_data)
    rc = main(["train", "--profile", "smoke", "--reference", "--device", "cpu",
               "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"rmpm train: error: cannot write to the store at {tmp_path}: Read-only file system" in err
    assert "--store (or the RMPM_STORE environment variable)" in err
