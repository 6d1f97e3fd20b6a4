"""Profile time estimates: random tensors of the right shape, and the arithmetic."""
import pytest

from rmpm.pipeline import estimate as T
from rmpm.analysis.populations import profile_recipes
from rmpm.pipeline.recipe import Recipe


def test_random_data_has_each_data_sets_shape():
    d = T.random_data("cifar10", 10, 4)
    assert tuple(d.x_train.shape) == (10, 3, 32, 32) and d.in_shape == (3, 32, 32)
    assert d.n_classes == 10 and int(d.y_train.max()) < 10 and len(d.x_test) == 4
    with pytest.raises(ValueError, match="dataset='imagenet' has no known shape"):
        T.random_data("imagenet", 10)


def test_profile_seconds_adds_model_epochs_at_their_cost():
    a = Recipe(dataset="mnist", arch="cnn", width=16, epochs=3, train_size=1000)
    b = a.replace(init_seed=1, epochs=2)
    c = Recipe(dataset="svhn", arch="resnet", width=8, epochs=1)  # the whole split
    cost = {T.cost_key(a): 1e-3, T.cost_key(c): 1e-2}
    assert T.cost_key(a) == T.cost_key(b)
    est = T.profile_seconds([a, b, c], cost, workers=2, n_eval_inputs=100, n_shifts=2)
    scored = T.FORWARD_FRACTION * (
        1e-3 * ((3 + 2) * 1000 + 2 * (1000 + 10000)) + 1e-2 * (1000 + 73257 + 26032))
    assert T.fit_scored_images(a) == 3 * 1000 + 1000 + 10000
    from rmpm.pipeline.train import CURVE_TEST_SIZE
    assert T.CURVE_IMAGES == CURVE_TEST_SIZE
    assert est["train_core_s"] == pytest.approx(5 * 1000 * 1e-3 + 73257 * 1e-2 + scored)
    assert est["eval_core_s"] == pytest.approx(3 * 100 * T.FORWARD_FRACTION * (2e-3 + 1e-2))
    assert est["wall_s"] == pytest.approx((est["train_core_s"] + est["eval_core_s"]) / 2)
    with pytest.raises(ValueError, match="workers=0 must be >= 1"):
        T.profile_seconds([a], cost, workers=0)


@pytest.mark.trains
def test_epoch_seconds_measures_a_positive_cost():
    r = Recipe(dataset="digits", arch="mlp", width=8, epochs=5, batch_size=64)
    assert 0 < T.epoch_seconds(r, sample=200) < 1.0


def test_every_paper_cpu_recipe_has_a_known_shape():
    for r in profile_recipes("paper_cpu"):
        assert r.dataset in T.SHAPES and T.examples(r) == 10000


def test_flop_costs_scale_with_the_network():
    small = Recipe(dataset="mnist", arch="cnn", width=8)
    wide = small.replace(width=16)
    res = Recipe(dataset="cifar10", arch="resnet", width=8)
    f = {r: T.forward_flops(r) for r in (small, wide, res)}
    assert 0 < f[small] < f[wide] < f[res]
    cost = T.flop_costs([small, wide, res], small, 1e-3)
    assert cost[T.cost_key(small)] == pytest.approx(1e-3)
    assert cost[T.cost_key(wide)] == pytest.approx(1e-3 * f[wide] / f[small])
