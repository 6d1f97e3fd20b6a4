"""Batched ensemble engine: members agree with ``fit``, grouping, refusal, determinism,
and the ensemble engine through ``run_recipes``."""
import pytest
import torch

from rmpm.pipeline.ensemble import batch_key, fit_ensemble, group_recipes
from rmpm.pipeline.evaluate import EvalSpec
from rmpm.pipeline.models import build_model
from rmpm.pipeline.recipe import Recipe
from rmpm.pipeline.runs import run_recipes
from rmpm.pipeline.store import Store
from rmpm.pipeline.train import fit, prepare

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains

BASE = Recipe(dataset="digits", arch="cnn", width=4, epochs=2, batch_size=64, lr=1e-2,
              train_size=400)
SPEC = EvalSpec(n_test=60, n_probe=30, corruptions=("gaussian_noise",), severities=(3,))


@pytest.fixture(autouse=True)
def _one_thread():
    """These tiny models run fastest on one thread (and the CI machine is shared);
    restore the caller's setting afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    return prepare("digits", torch.device("cpu"))


def _group(base: Recipe) -> list[Recipe]:
    """Members that differ in all three seeds, lr, weight decay, label smoothing and mixup."""
    return [base,
            base.replace(init_seed=1, order_seed=2, subset_seed=3, lr=base.lr / 2,
                         weight_decay=0.05),
            base.replace(init_seed=2, order_seed=1, label_smoothing=0.1, mixup_alpha=0.4,
                         bootstrap=True)]


def _rel_diff(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all floating-point tensors of two state dicts."""
    keys = [k for k in b if b[k].is_floating_point()]
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in keys)
    den = sum(float(b[k].pow(2).sum()) for k in keys)
    return (num / den) ** 0.5


@pytest.mark.parametrize("arch, changes", [
    ("mlp", {}),
    # + per-member dropout: on the CPU the masks are the same draws as fit's
    ("cnn", dict(augment="crop")),
    ("resnet", dict(optimizer="sgd", lr=0.02, augment="crop_flip", epochs=1)),
])
def test_members_match_fit(digits, arch, changes):
    base = BASE.replace(arch=arch, **changes)
    recipes = _group(base)
    if arch == "cnn":
        recipes.append(base.replace(init_seed=3, order_seed=3, dropout=0.3))
    if arch == "resnet":
        recipes.append(base.replace(init_seed=3, order_seed=3, momentum=0.8))
        recipes.append(base.replace(init_seed=4, order_seed=4, momentum=0.0))  # plain SGD
    ens = fit_ensemble(recipes, "cpu", data=digits)
    n_test = len(digits.y_test)
    for r, e in zip(recipes, ens):
        s = fit(r, "cpu", data=digits)
        assert set(e.metrics) >= set(s.metrics)
        assert e.metrics["engine"] == "ensemble" and e.metrics["amp"] is False
        assert e.metrics["device"] == "cpu" and e.metrics["steps"] == s.metrics["steps"]
        se, ss = e.model.state_dict(), s.model.state_dict()
        assert list(se) == list(ss) and all(se[k].shape == ss[k].shape for k in ss)
        assert _rel_diff(se, ss) < 1e-4, r
        assert abs(e.metrics["test_acc"] - s.metrics["test_acc"]) <= 1 / n_test + 1e-12
        assert e.metrics["train_loss"] == pytest.approx(s.metrics["train_loss"], rel=1e-4)
        assert [set(h) for h in e.history] == [set(h) for h in s.history]
        for he, hs in zip(e.history, s.history):
            assert he["train_loss"] == pytest.approx(hs["train_loss"], rel=1e-4)
            assert he["train_acc_running"] == pytest.approx(hs["train_acc_running"], abs=3e-3)


def test_deterministic_and_global_rng_untouched(digits):
    recipes = _group(BASE.replace(width=2, epochs=1))
    torch.manual_seed(5)
    before = torch.rand(2)
    torch.manual_seed(5)
    a = fit_ensemble(recipes, "cpu", data=digits)
    assert torch.equal(torch.rand(2), before)
    b = fit_ensemble(recipes, "cpu", data=digits)
    for ra, rb in zip(a, b):
        sa, sb = ra.model.state_dict(), rb.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
            assert ra.metrics[k] == rb.metrics[k]
        assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]
    # a member does not depend on the rest of its group
    [alone] = fit_ensemble(recipes[1:2], "cpu", data=digits)
    assert _rel_diff(alone.model.state_dict(), a[1].model.state_dict()) < 1e-5


def test_batch_key_and_grouping():
    same = [BASE.replace(init_seed=3), BASE.replace(order_seed=4), BASE.replace(subset_seed=2),
            BASE.replace(bootstrap=True), BASE.replace(lr=1e-3), BASE.replace(momentum=0.5),
            BASE.replace(weight_decay=0.1), BASE.replace(label_smoothing=0.2),
            BASE.replace(mixup_alpha=0.2), BASE.replace(dropout=0.5)]
    assert {batch_key(r) for r in same} == {batch_key(BASE)}
    hash(batch_key(BASE))
    for change in (dict(dataset="fashion_mnist"), dict(arch="mlp"), dict(width=8), dict(epochs=3),
                   dict(batch_size=32), dict(optimizer="sgd"), dict(schedule="constant"),
                   dict(warmup_epochs=1.0), dict(augment="crop"), dict(train_size=300),
                   dict(train_size=None)):
        assert batch_key(BASE.replace(**change)) != batch_key(BASE), change
    wide = [BASE.replace(width=8, init_seed=i) for i in range(3)]
    mixed = [BASE.replace(init_seed=i) for i in range(5)]
    groups = group_recipes([mixed[0], wide[0], *mixed[1:], *wide[1:]], max_group=2)
    assert groups == [mixed[0:2], mixed[2:4], mixed[4:5], wide[0:2], wide[2:3]]
    with pytest.raises(ValueError, match="max_group"):
        group_recipes(mixed, max_group=0)


def test_mismatched_group_is_refused(digits):
    with pytest.raises(ValueError, match="field 'width' differs"):
        fit_ensemble([BASE, BASE.replace(width=8)], "cpu", data=digits)
    with pytest.raises(ValueError, match="field 'augment' differs"):
        fit_ensemble([BASE, BASE.replace(init_seed=1), BASE.replace(augment="crop")], "cpu",
                     data=digits)
    with pytest.raises(ValueError, match="at least one"):
        fit_ensemble([], "cpu", data=digits)


def test_amp_path_runs_on_cpu(digits):
    """bf16 autocast (the CUDA default) exercised on the CPU: trains, stays close to fp32."""
    recipes = _group(BASE.replace(width=2, epochs=1))
    amp = fit_ensemble(recipes, "cpu", data=digits, amp=True)
    ref = fit_ensemble(recipes, "cpu", data=digits)
    for a, r in zip(amp, ref):
        assert a.metrics["amp"] is True
        assert all(v.dtype == r.model.state_dict()[k].dtype for k, v in a.model.state_dict().items())
        assert abs(a.metrics["test_acc"] - r.metrics["test_acc"]) < 0.15


def test_run_recipes_ensemble_engine(tmp_path, monkeypatch, digits):
    import rmpm.pipeline.ensemble as ensemble  # where tasks.train_into looks it up
    store = Store(tmp_path)
    small = BASE.replace(width=2, epochs=1)
    recipes = [small.replace(init_seed=i) for i in range(3)] + [small.replace(width=3)]
    real, calls, killed = ensemble.fit_ensemble, [], []

    def dying(group, *a, **k):
        calls.append([r.init_seed for r in group])
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise KeyboardInterrupt("killed")
        return real(group, *a, **k)

    monkeypatch.setattr(ensemble, "fit_ensemble", dying)
    with pytest.raises(KeyboardInterrupt):
        run_recipes(recipes, SPEC, store, "cpu", progress=False, engine="ensemble", max_group=2,
                    workers=0, deterministic=False)
    # the first group (two members) was stored as soon as it finished; evaluation
    # comes after all training, so none has happened yet
    assert [store.has_model(r) for r in recipes] == [True, True, False, False]
    assert not store.has_eval(recipes[0], SPEC.key())
    calls.clear()
    out = run_recipes(recipes, SPEC, store, "cpu", progress=False, engine="ensemble", max_group=2,
                    workers=0, deterministic=False)
    assert calls == [[2], [0]]  # only the missing models, grouped by key
    assert [o.trained for o in out] == [False, False, True, True]
    assert all(store.has_eval(r, SPEC.key()) for r in recipes)
    for o in out:
        m = o.model.metrics
        assert m["engine"] == "ensemble" and set(m) >= {"train_acc", "test_acc", "train_seconds"}
        # stored in the single engine's format: loads into a build_model network
        net = o.model.load_model()
        ref = build_model(o.recipe.arch, digits.in_shape, digits.n_classes, o.recipe.width)
        assert list(net.state_dict()) == list(ref.state_dict())
    again = run_recipes(recipes, SPEC, store, "cpu", progress=False, engine="ensemble",
                        workers=0, deterministic=False)
    assert not any(o.trained for o in again)
    # on the CPU "auto" stays the single-model loop
    [auto] = run_recipes([small.replace(init_seed=9)], SPEC, store, "cpu", progress=False,
                         workers=0, deterministic=False)
    assert auto.model.metrics["engine"] == "single"
    with pytest.raises(ValueError, match="engine"):
        run_recipes(recipes, SPEC, store, "cpu", progress=False, engine="batched")
