"""Profiles: how big a run is, in one place.

- ``smoke``   seconds-to-minutes on 2 CPU cores; what the tests build. Numbers from it
              are too small to test the paper's claims and the book says so.
- ``smoke_multi`` smoke on two offline data sets (Fashion-MNIST, sklearn digits),
              so the tests run the cross-data-set code the paper profile needs.
- ``default`` the evidence profile: three real offline data sets (Fashion-MNIST,
              a 5k sample of MNIST, scikit-learn's digits) on a laptop-class CPU;
              what CI rebuilds and verifies.
- ``large``   the converged regime: default's design with Fashion-MNIST on all 60,000
              images and every base recipe trained until it fits; compared with
              default chapter by chapter (chapter 9).
- ``paper``   the four data sets at paper scale, meant for one GPU.
- ``paper_cpu`` the four data sets on 10k subsets, for an 8-core CPU (about 15 minutes
              by the estimate; not yet built for real).

Every notebook takes ``profile`` as a papermill parameter and reads its sizes
from here; every other notebook parameter overrides one of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .._checks import check_choice
from ..pipeline.recipe import Recipe


@dataclass(frozen=True)
class FitRule:
    """A profile's declared rule for "this model fits its training data", checked on
    every stored model (the populations chapter shows each model's outcome): its final
    training accuracy is at least ``min_train_acc``, and its last epoch lowered the
    epoch-mean training loss by at most ``max_loss_drop`` of its value (a plateau).
    A rule with neither is always met."""

    min_train_acc: float | None = None
    max_loss_drop: float | None = None

    def loss_drop(self, history: list[dict[str, float]]) -> float | None:
        """How much the last epoch lowered the epoch-mean training loss, relative to the
        epoch before (None with one epoch)."""
        if len(history) < 2:
            return None
        before, last = history[-2]["train_loss"], history[-1]["train_loss"]
        return (before - last) / before if before > 0 else 0.0

    def met(self, metrics: dict[str, float], history: list[dict[str, float]]) -> bool:
        if self.min_train_acc is not None and metrics["train_acc"] < self.min_train_acc:
            return False
        if self.max_loss_drop is not None:
            drop = self.loss_drop(history)
            return drop is not None and drop <= self.max_loss_drop
        return True

    def text(self) -> str:
        parts = ([f"training accuracy >= {self.min_train_acc:g}"] if self.min_train_acc is not None
                 else []) + ([f"the last epoch lowers the training loss by <= "
                              f"{100 * self.max_loss_drop:g} %"] if self.max_loss_drop is not None
                             else [])
        return " and ".join(parts) or "none"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    datasets: tuple[str, ...]
    #: base recipe per data set; factor populations vary one field of it
    base: dict[str, Recipe] = field(repr=False)
    #: recipe per data set of the "equally good models" population (experiment 2)
    reference: dict[str, Recipe] = field(repr=False)
    #: factor -> values (seed-like factors: seed offsets)
    factors: dict[str, tuple[Any, ...]] = field(repr=False)
    replicates: int = 2          # independent repeats of every population
    reference_seeds: int = 4     # size of the "equally good models" population (experiment 2)
    n_test: int | None = None    # i.i.d. test inputs whose predictions are stored (None: all)
    n_probe: int = 1000          # test inputs whose probe-layer activations are stored
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    n_boot: int = 1000           # bootstrap resamples for confidence intervals
    svcca_keep: float = 0.99     # variance fraction SVCCA keeps
    device: str = "auto"
    #: data set -> the test accuracy its base recipe must reach (chapter 2 checks
    #: it), so that a profile cannot get fast by training toy models
    min_test_acc: dict[str, float] = field(default_factory=dict, repr=False)
    #: data set -> the rule by which its models count as fitting their training data
    #: (none: the profile trains its models short on purpose, and says so)
    fit_rule: dict[str, FitRule] = field(default_factory=dict, repr=False)
    #: a population whose mean training accuracy is more than this below that of its
    #: data set's reference population is flagged as not equally good on training data
    train_acc_tolerance: float = 0.02
    #: the profile whose book this one's is compared with, chapter by chapter
    #: (:mod:`rmpm.analysis.regimes`); its build runs first when there is none
    compare_with: str | None = None
    #: False for the toy profiles whose numbers only show that the pipeline runs
    evidence: bool = True

    def replace(self, **changes: Any) -> "Profile":
        return replace(self, **changes)


ALL_FACTORS_SMALL = {
    "init_seed": (0, 1, 2),
    "order_seed": (0, 1, 2),
    "both_seeds": (0, 1, 2),
    "augment": ("none", "crop", "crop_flip"),  # 3 values like the others: PM grows with population size
    # relative to each data set's base recipe ("x2" = twice the base value), so the
    # perturbation is the same size on every data set; weight decay stays absolute
    # because the Adam bases have none (any multiple of 0 is 0)
    "lr": ("x0.5", "x1", "x2"),
    "batch_size": ("x0.5", "x1", "x2"),
    "weight_decay": (0.0, 5e-4, 5e-3),
    "label_smoothing": (0.0, 0.1, 0.2),
    "mixup_alpha": (0.0, 0.2, 1.0),
    "dropout": (0.0, 0.25, 0.5),
    "subset_seed": (0, 1, 2),
    "width": (16, 32, 64),
}

_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur",
                "contrast", "brightness", "rotate", "translate", "zoom", "elastic")

PROFILES: dict[str, Profile] = {}


def _register(p: Profile) -> None:
    PROFILES[p.name] = p


_SMOKE_FMNIST = Recipe(dataset="fashion_mnist", arch="cnn", width=8, epochs=1, batch_size=64,
                       lr=2e-3, train_size=2000)
_SMOKE_DIGITS = Recipe(dataset="digits", arch="mlp", width=32, epochs=3, batch_size=64, lr=2e-3)

_register(Profile(
    name="smoke",
    description="CI smoke test: tiny subset of Fashion-MNIST, 1 epoch, 2 replicates",
    datasets=("fashion_mnist",),
    base={"fashion_mnist": _SMOKE_FMNIST},
    reference={"fashion_mnist": _SMOKE_FMNIST},
    factors={k: v[:2] for k, v in ALL_FACTORS_SMALL.items()},
    replicates=2,
    reference_seeds=3,
    n_test=500,
    n_probe=300,
    corruptions=("gaussian_noise", "contrast", "rotate"),
    severities=(1, 3, 5),
    n_boot=200,
    evidence=False,
))

# The paper profile's cross-data-set code (pooled correlations, per-data-set
# panels, C3 over data sets) would otherwise first run after hours on a GPU; this
# profile runs it in minutes on a CPU with the two data sets that need no
# download. Its Fashion-MNIST half is exactly smoke's, so they share stored models;
# digits get an MLP, so that, as in the paper profile (CNN and ResNet), the data
# sets' networks have different layers.
_register(PROFILES["smoke"].replace(
    name="smoke_multi",
    description="CI check of the cross-data-set code: smoke's tiny CNNs on Fashion-MNIST "
                "and small MLPs on scikit-learn's 8x8 digits (both offline)",
    datasets=("fashion_mnist", "digits"),
    base={**PROFILES["smoke"].base, "digits": _SMOKE_DIGITS},
    reference={**PROFILES["smoke"].reference, "digits": _SMOKE_DIGITS},
))

# The evidence profile. Three real data sets that need no download, so that CI
# rebuilds it from an empty store and the claims are tested across data sets:
# Fashion-MNIST and the 5k MNIST sample share the architecture and recipe family
# (SmallCNN, Adam, lr 2e-3, batch 128: the data set is not confounded with the
# network; MNIST-5k trains 5 epochs on its 4,000 images, Fashion-MNIST 3 on a 10k
# subset, about 160 and 235 steps), digits is the architecture check (an MLP
# whose widest layer, 128 units at width x2, stays below its 359 probe inputs, so
# SVCCA is not saturated). Widths are relative like the other numeric factors.
# The "equally good models" population is the base recipe, as in `paper`.
_DEFAULT_CNN = dict(arch="cnn", width=16, batch_size=128, lr=2e-3)
_DEFAULT_BASE = {
    "fashion_mnist": Recipe(dataset="fashion_mnist", epochs=3, train_size=10000, **_DEFAULT_CNN),
    "mnist5k": Recipe(dataset="mnist5k", epochs=5, **_DEFAULT_CNN),
    "digits": Recipe(dataset="digits", arch="mlp", width=8, epochs=20, batch_size=64, lr=2e-3),
}

_register(Profile(
    name="default",
    description="three real offline data sets on a laptop-class CPU: Fashion-MNIST (10k "
                "training subset) and a 5k sample of MNIST with the same small CNN, "
                "scikit-learn's 8x8 digits with an MLP",
    datasets=tuple(_DEFAULT_BASE),
    base=_DEFAULT_BASE,
    reference=_DEFAULT_BASE,
    factors={**ALL_FACTORS_SMALL, "width": ("x0.5", "x1", "x2")},
    # 3 replicates: with 3 data sets, 9 independent blocks per factor
    replicates=3,
    reference_seeds=4,
    n_test=1000,   # Fashion-MNIST: a sample of 1,000; MNIST-5k and digits: all (1,000 and 359)
    n_probe=500,   # digits has 359 test images: all of them are its probes
    corruptions=_CORRUPTIONS,
    severities=(1, 3, 5),
    n_boot=1000,
    min_test_acc={"fashion_mnist": 0.85, "mnist5k": 0.95, "digits": 0.93},
))

# The converged regime: do default's verdicts survive models trained until they fit?
# The same three data sets, networks, factor grid and replicates; Fashion-MNIST on all
# 60,000 training images; every base recipe trained long enough by a rule the profile
# declares and chapter 2 checks on every model (``fit_rule``). Measured on the base
# recipes (2026-12-03, one pinned thread): MNIST-5k reaches 0.998 training accuracy in
# 10 epochs and 0.9998 in 15 (12 here), digits 0.999 in 40. On Fashion-MNIST the
# network keeps lowering its training loss: the cosine schedule's last epoch lowers it
# by 12.8 % at 4 epochs, 10.5 % at 5 and 9 % at 6, while test accuracy flattens (0.910,
# 0.914, 0.915; 0.918 at 8). Time decides: in a 2-worker build a 5-epoch model trains
# in 52 s (two workers share the machine: 1.7e-4 s per image-epoch, not the 1.5e-4 of
# one alone), which puts the build from an empty store (default first, 14 minutes) at
# about 62 minutes on 2 cores, over the hour it must fit in; 4 epochs, about 55. So
# Fashion-MNIST stops at 4, its rule is "the last epoch lowers the loss by at most
# 15 %" (the base: 12.8 %), and the book says that it has not fitted its training set
# (training accuracy 0.935) as MNIST-5k and digits have. Chapter 9 compares it with
# default.
_LARGE_BASE = {
    "fashion_mnist": _DEFAULT_BASE["fashion_mnist"].replace(epochs=4, train_size=None),
    "mnist5k": _DEFAULT_BASE["mnist5k"].replace(epochs=12),
    "digits": _DEFAULT_BASE["digits"].replace(epochs=40),
}

_register(PROFILES["default"].replace(
    name="large",
    description="the converged regime: default's data sets, networks and factor grid, "
                "Fashion-MNIST on all 60,000 training images, every base recipe trained "
                "until it fits (a rule per data set, checked on every model)",
    base=_LARGE_BASE,
    reference=_LARGE_BASE,
    min_test_acc={"fashion_mnist": 0.90, "mnist5k": 0.955, "digits": 0.95},
    fit_rule={"fashion_mnist": FitRule(max_loss_drop=0.15),
              "mnist5k": FitRule(min_train_acc=0.99, max_loss_drop=0.05),
              "digits": FitRule(min_train_acc=0.99, max_loss_drop=0.05)},
    compare_with="default",
))

_PAPER_BASE = {
    "mnist": Recipe(dataset="mnist", arch="cnn", width=32, epochs=10, batch_size=128),
    "fashion_mnist": Recipe(dataset="fashion_mnist", arch="cnn", width=32, epochs=10,
                            batch_size=128),
    "cifar10": Recipe(dataset="cifar10", arch="resnet", width=16, epochs=30, batch_size=256,
                      optimizer="sgd", lr=0.1, weight_decay=5e-4, augment="crop_flip"),
    "svhn": Recipe(dataset="svhn", arch="resnet", width=16, epochs=15, batch_size=256,
                   optimizer="sgd", lr=0.05, weight_decay=5e-4, augment="crop"),
}

_register(Profile(
    name="paper",
    description="the four data sets at full size on one GPU",
    datasets=tuple(_PAPER_BASE),
    base=_PAPER_BASE,
    reference=_PAPER_BASE,  # the "equally good models" are the base recipes themselves
    # every factor has the same number of values: PM (a variance over models)
    # depends on the population size, so unequal sizes would bias its comparison
    factors=dict(ALL_FACTORS_SMALL),
    replicates=3,
    reference_seeds=8,
    n_test=None,
    n_probe=2000,
    corruptions=_CORRUPTIONS,
    severities=(1, 2, 3, 4, 5),
    n_boot=2000,
))

# For readers with internet but no GPU: the paper's four data sets (so C3 is tested
# across data sets), each on a 10k training subset, for an 8-core CPU on the Dask
# engine (8 single-threaded workers). Sized when the estimate said about an hour;
# with the costs bench_cost_growth.py measured since (2026-12-03), estimate_profile.py
# says 9 calibrated minutes of training and evaluation, about 15 with a real build's
# sharing and fixed costs (from per-example-epoch costs measured on random tensors
# of each data set's shape, one thread, AVX2, other widths scaled by FLOPs); the
# ResNet data sets take five sixths of it. Not yet built for real: the book's
# reproducibility page records the time of a real build.
_CPU_SIZES = {  # what changes from the paper's recipes
    "mnist": dict(width=16, epochs=3, lr=2e-3),
    "fashion_mnist": dict(width=16, epochs=3, lr=2e-3),
    "cifar10": dict(width=8, epochs=5, batch_size=128, lr=0.05),
    "svhn": dict(width=8, epochs=3, batch_size=128),
}
_PAPER_CPU_BASE = {ds: r.replace(train_size=10000, **_CPU_SIZES[ds]) for ds, r in _PAPER_BASE.items()}

_register(PROFILES["paper"].replace(
    name="paper_cpu",
    description="the paper's four data sets on 10k-image subsets, for an 8-core CPU "
                "without a GPU",
    base=_PAPER_CPU_BASE,
    reference=_PAPER_CPU_BASE,
    # widths up to the base widths (16 for the CNNs, 8 for the ResNets) and one
    # step over for the ResNets: a 32-wide ResNet costs 15 times an 8-wide one
    factors={**ALL_FACTORS_SMALL, "width": (4, 8, 16)},
    replicates=2,
    reference_seeds=4,
    n_test=1000,
    n_probe=500,
    severities=(1, 3, 5),
    n_boot=1000,
))


def get_profile(name: str | Profile) -> Profile:
    """The profile called ``name`` (a Profile passes through)."""
    if isinstance(name, Profile):
        return name
    check_choice("profile", name, PROFILES)
    return PROFILES[name]
