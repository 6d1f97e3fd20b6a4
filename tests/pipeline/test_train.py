"""Training: determinism, recipes actually change training, resume after a kill."""
import numpy as np
import pytest
import torch

from rmpm.pipeline.evaluate import EvalSpec
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.runs import run_recipe, run_recipes
from rmpm.pipeline.store import Store
from rmpm.pipeline.train import augment, fit, lr_at, train_indices

TINY = Recipe(dataset="digits", arch="cnn", width=4, epochs=2, batch_size=64, lr=5e-3)
SPEC = EvalSpec(n_test=120, n_probe=60, corruptions=("gaussian_noise",), severities=(1, 5))


def _state(res):
    return {k: v.clone() for k, v in res.model.state_dict().items()}


@pytest.mark.trains
def test_same_recipe_bit_identical_on_cpu():
    a, b = fit(TINY, "cpu"), fit(TINY, "cpu")
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
        assert a.metrics[k] == b.metrics[k]
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


@pytest.mark.trains
def test_global_rng_neither_used_nor_disturbed():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = fit(TINY, "cpu")
    after = torch.rand(3)
    assert torch.equal(before, after)
    torch.manual_seed(999)
    b = fit(TINY, "cpu")
    assert a.metrics["test_loss"] == b.metrics["test_loss"]


@pytest.mark.parametrize("change", [dict(init_seed=1), dict(order_seed=1), dict(lr=1e-3),
                                    dict(dropout=0.3), dict(augment="crop"), dict(mixup_alpha=0.4),
                                    dict(label_smoothing=0.1), dict(weight_decay=0.05),
                                    dict(train_size=500, subset_seed=1), dict(bootstrap=True)])
@pytest.mark.trains
def test_each_factor_changes_the_model(change):
    a = fit(TINY, "cpu")
    b = fit(TINY.replace(**change), "cpu")
    assert a.metrics["train_loss"] != b.metrics["train_loss"], change


@pytest.mark.trains
def test_models_learn():
    res = fit(TINY.replace(epochs=4), "cpu")
    assert res.metrics["test_acc"] > 0.6  # 10 classes: chance is 0.1
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    for arch in ("mlp", "resnet"):
        r = fit(TINY.replace(arch=arch, epochs=3), "cpu")
        assert r.metrics["test_acc"] > 0.3, arch


def test_train_indices_and_bad_size():
    full = train_indices(TINY, 1000)
    assert torch.equal(full, torch.arange(1000))
    sub = train_indices(TINY.replace(train_size=100, subset_seed=3), 1000)
    assert len(sub) == 100 and len(set(sub.tolist())) == 100
    boot = train_indices(TINY.replace(bootstrap=True), 1000)
    assert len(boot) == 1000 and len(set(boot.tolist())) < 1000
    with pytest.raises(ValueError, match="train_size=5000 exceeds"):
        fit(TINY.replace(train_size=5000), "cpu")


def test_lr_schedule():
    r = TINY.replace(lr=1.0, warmup_epochs=1.0, schedule="cosine")
    lrs = [lr_at(r, s, 100, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01
    assert lr_at(r.replace(schedule="constant"), 50, 100, 10) == 1.0


def test_augment_is_a_shifted_crop():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment(x, "crop", g)
    assert out.shape == x.shape
    # every output row is a (zero padded) shifted copy of an input row
    for b in range(2):
        vals = set(out[b].flatten().tolist()) - {0.0}
        assert vals <= set(x[b].flatten().tolist())
    assert torch.equal(augment(x, "none", g), x)


@pytest.mark.trains
def test_run_recipe_stores_and_reuses(tmp_path):
    store = Store(tmp_path)
    r1 = run_recipe(TINY, SPEC, store, "cpu")
    assert r1.trained
    arr = r1.eval.arrays()
    assert arr["probs:iid"].shape == (120, 10)
    assert arr["probs:gaussian_noise:5"].shape == (120, 10)
    np.testing.assert_allclose(arr["probs:iid"].sum(1), 1.0, atol=1e-5)
    assert arr["act:conv1:pool"].shape == (60, 4)
    assert arr["act:conv1:positions"].shape[1] == 4
    assert arr["act:fc"].shape == (60, 16)
    m = r1.eval.metrics
    assert m["acc:gaussian_noise:1"] >= m["acc:gaussian_noise:5"] - 0.05
    r2 = run_recipe(TINY, SPEC, store, "cpu")
    assert not r2.trained and r2.model.path == r1.model.path
    # the stored weights reproduce the stored predictions
    from rmpm.pipeline.evaluate import evaluate
    [(m2, a2)] = evaluate([r2.model.load_model()], TINY.dataset, SPEC)
    np.testing.assert_array_equal(a2["probs:iid"], arr["probs:iid"])


@pytest.mark.trains
def test_resume_after_kill(tmp_path, monkeypatch):
    """A run killed during the third model keeps the first two; rerun trains only the rest."""
    import rmpm.pipeline.train as train  # the loop's tasks.train_into looks fit up there
    store = Store(tmp_path)
    recipes = [TINY.replace(init_seed=i) for i in range(4)]
    real_fit, calls = train.fit, []

    def dying_fit(recipe, *a, **k):
        calls.append(recipe.init_seed)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_fit(recipe, *a, **k)

    monkeypatch.setattr(train, "fit", dying_fit)
    # in this process (workers=0, fast mode), where the patched fit is seen
    with pytest.raises(KeyboardInterrupt):
        run_recipes(recipes, SPEC, store, "cpu", progress=False, workers=0, deterministic=False)
    assert [store.has_model(r) for r in recipes] == [True, True, False, False]
    calls.clear()
    out = run_recipes(recipes, SPEC, store, "cpu", progress=False, workers=0, deterministic=False)
    assert calls == [2, 3]
    assert [o.trained for o in out] == [False, False, True, True]


@pytest.mark.trains
def test_chunked_evaluation_equals_one_at_a_time(tmp_path):
    """run_recipes evaluates several models per corrupted set; the numbers must not change."""
    recipes = [TINY.replace(init_seed=i, epochs=1) for i in range(3)]
    a = run_recipes(recipes, SPEC, Store(tmp_path / "a"), "cpu", progress=False, eval_chunk=2,
                    workers=0, deterministic=False)  # both in this process
    b = [run_recipe(r, SPEC, Store(tmp_path / "b"), "cpu") for r in recipes]
    for ra, rb in zip(a, b):
        aa, ab = ra.eval.arrays(), rb.eval.arrays()
        assert set(aa) == set(ab)
        for k in aa:
            np.testing.assert_array_equal(aa[k], ab[k], err_msg=k)
        assert ra.eval.metrics == rb.eval.metrics
    with pytest.raises(ValueError, match="eval_chunk=0 must be >= 1"):
        run_recipes(recipes, SPEC, Store(tmp_path / "a"), "cpu", eval_chunk=0)


@pytest.mark.trains
def test_run_recipe_maps_over_separate_processes(tmp_path):
    """The scale-out seam: run_recipe mapped over worker processes (as Dask or a
    Slurm job array would) with a shared store folder and no coordination.

    Workers are spawned, so nothing is inherited from this process: recipe, spec
    and store path must travel by pickling, and the result must come back the same
    way. One recipe is submitted twice, so two workers may race to store it. The
    stored numbers must equal a serial run in one process, bit for bit."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    recipes = [TINY.replace(init_seed=i, epochs=1) for i in range(3)]
    jobs = recipes + [recipes[0]]
    shared = tmp_path / "shared"
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as ex:
        futures = [ex.submit(run_recipe, r, SPEC, str(shared), "cpu") for r in jobs]
        results = [f.result(timeout=600) for f in futures]

    store = Store(shared)
    assert [res.recipe for res in results] == jobs
    assert len(list(store.models())) == 3  # the duplicate left one entry, not two
    assert not any(p.name.startswith(".") for p in (shared / "models").rglob("*"))  # no temp dirs
    # the serial reference runs in one spawned process too: this process's own CPU
    # kernel settings (ISA, threads) may differ from a fresh process's
    serial = Store(tmp_path / "serial")
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        for r in recipes:
            ex.submit(run_recipe, r, SPEC, str(serial.root), "cpu").result(timeout=600)
    for r in recipes:
        a = store.eval(r, SPEC.key())
        b = serial.eval(r, SPEC.key())
        assert a.metrics == b.metrics
        aa, ab = a.arrays(), b.arrays()
        for k in ab:
            np.testing.assert_array_equal(aa[k], ab[k], err_msg=k)


def test_shards_partition_the_deduplicated_recipes():
    from rmpm.pipeline.runs import shard
    recipes = [TINY.replace(init_seed=i) for i in range(7)]
    parts = [shard(recipes + recipes[:2], i, 3) for i in range(3)]  # duplicates dropped
    keys = [r.key() for p in parts for r in p]
    assert sorted(keys) == sorted(r.key() for r in recipes) and len(set(keys)) == 7
    assert [len(p) for p in parts] == [3, 2, 2]
    with pytest.raises(ValueError, match="shard count=0 must be >= 1"):
        shard(recipes, 0, 0)
    with pytest.raises(ValueError, match="shard index=-1 must be >= 0"):
        shard(recipes, -1, 2)


@pytest.mark.parametrize("arch,shape", [("cnn", (1, 28, 28)), ("mlp", (1, 8, 8)),
                                        ("resnet", (3, 16, 16))])
def test_evaluation_at_its_batch_size_repeats_its_bits(arch, shape):
    """Evaluation runs in batches of EVAL_BATCH for speed (activations that stay in
    the caches). At that batch size the outputs repeat bit for bit; against batches of
    1,000 (the size used before) they agree to float32 rounding only. The bits of
    another batch size are the same on an AMD EPYC (measured when the size changed)
    but not on an Intel Xeon with AVX-512/AMX (1.2e-7 apart, 2026-12-03, pinned and
    not): EVAL_BATCH is part of the numbers, like the kernels."""
    import torch
    from rmpm.pipeline.models import build_model
    from rmpm.pipeline.train import EVAL_BATCH
    m = build_model(arch, shape, 10, width=8, seed=1).eval()
    x = torch.randn(1100, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        big = torch.cat([m(x[i:i + 1000]) for i in range(0, len(x), 1000)])
        small = torch.cat([m(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
        again = torch.cat([m(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    assert EVAL_BATCH < 1000 and torch.equal(small, again)
    assert torch.allclose(big, small, rtol=1e-5, atol=1e-6)
