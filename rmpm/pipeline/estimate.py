"""How long a profile takes, from per-model-epoch costs measured on random tensors.

The real files of MNIST, CIFAR-10 and SVHN need a download; their *shapes* do
not. :func:`epoch_seconds` trains a recipe for one epoch on random tensors of
its data set's shape (same architecture, width, batch size and number of
training examples, so the same arithmetic) and times it; :func:`profile_seconds`
adds up a profile's model-epochs at those costs and divides by the workers.
Training cost does not depend on the pixel values, so random inputs time it
faithfully; every forward pass in eval mode (``fit``'s own scoring of the learning
curve, the training subset and the test split, then one pass per shifted test
set) is estimated from the same costs (:data:`FORWARD_FRACTION`).
benchmarks/bench_cost_growth.py measured the model: a SmallCNN's training time is
linear in image-epochs (within 17% from 2,500 to 40,000 images and 1 to 4 epochs,
on a shared machine; 0.13 to 0.17 ms per image-epoch)
and its scoring linear in images scored.
"""
from __future__ import annotations

import time
from collections.abc import Mapping

from .._checks import check_range
from .recipe import Recipe

#: data set -> (image shape, classes, training examples, test examples)
SHAPES: dict[str, tuple[tuple[int, int, int], int, int, int]] = {
    "mnist": ((1, 28, 28), 10, 60000, 10000),
    "fashion_mnist": ((1, 28, 28), 10, 60000, 10000),
    "cifar10": ((3, 32, 32), 10, 50000, 10000),
    "svhn": ((3, 32, 32), 10, 73257, 26032),
    "mnist5k": ((1, 28, 28), 10, 4000, 1000),
    "digits": ((1, 8, 8), 10, 1437, 360),
}
#: an eval-mode forward pass of one image, in training image-epochs: measured 35 us
#: against 150 us for the default SmallCNN (benchmarks/bench_cost_growth.py; eval
#: mode folds BatchNorm into the convolutions)
FORWARD_FRACTION = 0.23
#: test images fit scores per epoch for the learning curve (train.CURVE_TEST_SIZE)
CURVE_IMAGES = 1000


def cost_key(recipe: Recipe) -> tuple:
    """What an epoch's cost depends on (seeds, learning rates and the like do not)."""
    return (recipe.dataset, recipe.arch, recipe.width, recipe.batch_size, recipe.augment)


def random_data(dataset: str, n_train: int, n_test: int = 1000, seed: int = 0):
    """A :class:`rmpm.pipeline.train.TrainData` of random tensors shaped like ``dataset``."""
    import torch

    from .train import TrainData
    if dataset not in SHAPES:
        raise ValueError(f"dataset={dataset!r} has no known shape; known: {', '.join(SHAPES)}")
    shape, k, _, _ = SHAPES[dataset]
    g = torch.Generator().manual_seed(seed)
    return TrainData(torch.randn((n_train, *shape), generator=g),
                     torch.randint(0, k, (n_train,), generator=g),
                     torch.randn((n_test, *shape), generator=g),
                     torch.randint(0, k, (n_test,), generator=g), k, shape)


def examples(recipe: Recipe) -> int:
    """Training examples per epoch of ``recipe`` at its data set's real size."""
    return recipe.train_size if recipe.train_size is not None else SHAPES[recipe.dataset][2]


def epoch_seconds(recipe: Recipe, sample: int = 2000) -> float:
    """Seconds per training example per epoch of ``recipe``, measured in this process on
    ``sample`` random examples (one warm-up epoch first, then one timed epoch)."""
    from .train import fit
    check_range("sample", sample, 2, integer=True)
    r = recipe.replace(epochs=1, train_size=None, bootstrap=False)
    data = random_data(recipe.dataset, sample, n_test=200)
    fit(r, "cpu", data=data)  # warm-up: first-call allocations, oneDNN primitive creation
    t0 = time.perf_counter()
    fit(r, "cpu", data=data)
    total = time.perf_counter() - t0
    # fit also scores: the curve's and the whole test sample, and the training set
    scored = min(CURVE_IMAGES, len(data.x_test)) + len(data.x_test) + sample
    return total / (sample + FORWARD_FRACTION * scored)


def fit_scored_images(recipe: Recipe) -> int:
    """Images :func:`rmpm.pipeline.train.fit` scores in eval mode besides training:
    the learning curve's test sample every epoch, then the training subset (a
    bootstrap's distinct images, about 63%) and the whole test split."""
    test = SHAPES[recipe.dataset][3]
    train = examples(recipe)
    if recipe.bootstrap:
        train = round(train * (1 - (1 - 1 / train) ** train))
    return recipe.epochs * min(CURVE_IMAGES, test) + train + test


def forward_flops(recipe: Recipe) -> int:
    """FLOPs of one forward pass of one example through ``recipe``'s network (counted by
    torch's ``FlopCounterMode`` on a random input of the data set's shape): a cost
    measure that, unlike a timing, does not depend on what else the machine runs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models import build_model
    shape, k, _, _ = SHAPES[recipe.dataset]
    model = build_model(recipe.arch, shape, k, recipe.width, recipe.dropout, seed=0).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros((1, *shape)))
    return int(counter.get_total_flops())


def flop_costs(recipes: list[Recipe], reference: Recipe, reference_cost: float
               ) -> dict[tuple, float]:
    """Seconds per example-epoch for each :func:`cost_key`, scaled by forward FLOPs from
    one measured ``reference_cost`` (seconds per example-epoch of ``reference``)."""
    check_range("reference_cost", reference_cost, 0, lo_open=True)
    f0 = forward_flops(reference)
    return {cost_key(r): reference_cost * forward_flops(r) / f0
            for r in {cost_key(r): r for r in recipes}.values()}


def profile_seconds(recipes: list[Recipe], cost: Mapping[tuple, float], workers: int,
                    n_eval_inputs: int = 1000, n_shifts: int = 0) -> dict[str, float]:
    """Estimated wall-clock seconds to train and evaluate ``recipes`` on ``workers``
    single-threaded workers, from ``cost``: :func:`cost_key` -> seconds per example-epoch.

    Training includes ``fit``'s own scoring (:func:`fit_scored_images`); evaluation is
    one forward pass per stored prediction. Assumes the work divides evenly (many
    more recipes than workers)."""
    check_range("workers", workers, 1, integer=True)
    train = sum((r.epochs * examples(r) + FORWARD_FRACTION * fit_scored_images(r))
                * cost[cost_key(r)] for r in recipes)
    evals = sum((1 + n_shifts) * n_eval_inputs * FORWARD_FRACTION * cost[cost_key(r)]
                for r in recipes)
    return {"train_core_s": train, "eval_core_s": evals,
            "wall_s": (train + evals) / workers}
