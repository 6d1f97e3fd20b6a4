import os
import threading

import numpy as np
import pytest
import torch

from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.store import TMP_PREFIX, Store, commit_dir


def _put(store, recipe, value=1.0):
    sd = {"w": torch.full((3,), value)}
    return store.put_model(recipe, sd, {"train_acc": value, "test_acc": value,
                                        "train_seconds": 0.0}, [{"epoch": 1}], (1, 8, 8), 10)


def test_model_round_trip(tmp_path):
    store, r = Store(tmp_path), Recipe(dataset="digits", width=4)
    assert not store.has_model(r)
    with pytest.raises(KeyError, match="no trained model"):
        store.model(r)
    e = _put(store, r, 0.5)
    assert store.has_model(r)
    assert e.recipe == r and e.metrics["test_acc"] == 0.5 and e.history == [{"epoch": 1}]
    assert torch.equal(e.state_dict()["w"], torch.full((3,), 0.5))
    assert e.meta["key"] == r.key() and e.meta["in_shape"] == [1, 8, 8]
    assert [m.path for m in store.models()] == [e.path]


def test_eval_round_trip(tmp_path):
    store, r = Store(tmp_path), Recipe()
    arrays = {"probs:iid": np.random.default_rng(0).random((4, 3)).astype(np.float32),
              "labels": np.arange(4)}
    e = store.put_eval(r, {"n_test": 4}, "abc", {"iid_acc": 0.25}, arrays)
    assert store.has_eval(r, "abc") and not store.has_eval(r, "abd")
    got = store.eval(r, "abc").arrays()
    assert set(got) == set(arrays)
    np.testing.assert_array_equal(got["probs:iid"], arrays["probs:iid"])
    assert e.metrics == {"iid_acc": 0.25} and e.spec == {"n_test": 4}


def test_failed_write_leaves_nothing(tmp_path):
    final = tmp_path / "x" / "entry"

    def write(d):
        (d / "half.json").write_text("{")
        raise KeyboardInterrupt  # as if the run were killed mid-write

    with pytest.raises(KeyboardInterrupt):
        commit_dir(final, write)
    assert not final.exists()
    assert list((tmp_path / "x").iterdir()) == []


def test_half_written_entry_is_never_read(tmp_path):
    # a killed process leaves a temp folder behind: it is invisible to readers
    store, r = Store(tmp_path), Recipe()
    d = store.model_dir(r)
    tmp = d.parent / f"{TMP_PREFIX}{d.name}-123-abc"
    tmp.mkdir(parents=True)
    (tmp / "model.pt").write_bytes(b"garbage")
    assert not store.has_model(r)
    assert list(store.models()) == []
    os.utime(tmp, (0, 0))
    assert store.sweep(older_than_s=60) == 1 and not tmp.exists()


def test_concurrent_writers_first_wins(tmp_path):
    store, r = Store(tmp_path), Recipe()
    errors = []

    def worker(v):
        try:
            _put(store, r, v)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(float(i),)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    e = store.model(r)
    v = e.metrics["test_acc"]
    assert torch.equal(e.state_dict()["w"], torch.full((3,), v))  # one writer's files, not a mix
    assert [p.name for p in e.path.parent.iterdir()] == [e.path.name]  # no temp folders left
