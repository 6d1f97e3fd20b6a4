"""Training recipes: frozen, validated, hashable descriptions of one model's training.

A :class:`Recipe` holds every factor the paper's protocol varies (see PAPER.md,
"Training differences"). Two recipes that are equal give the same model (on CPU,
bit for bit); :meth:`Recipe.key` is the content address under which the store
keeps it. A *population* is a set of recipes that share everything except one
factor: :func:`vary` expands "vary this factor over these values, for these
replicates" into recipes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .._checks import check_choice, check_keys, check_range

#: Bump when the meaning of a field or what training stores changes: old entries
#: then no longer match and are retrained instead of being silently reused.
SCHEMA_VERSION = 1

DATASETS = ("fashion_mnist", "mnist", "mnist5k", "cifar10", "svhn", "digits")
ARCHS = ("mlp", "cnn", "resnet")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
AUGMENTS = ("none", "crop", "crop_flip")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines one trained model.

    Seeds: ``init_seed`` draws the initial weights; ``order_seed`` draws the
    data order and every other random choice made while training (augmentation,
    mixup, dropout masks); ``subset_seed`` picks the training subset (or the
    bootstrap resample) when ``train_size`` is set or ``bootstrap`` is on.
    """

    dataset: str = "fashion_mnist"
    arch: str = "cnn"
    width: int = 32            # channels of the first conv layer / hidden units of the MLP
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9      # SGD only
    schedule: str = "cosine"   # learning-rate schedule over all steps
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0  # decoupled (AdamW-style) for adam, L2 for sgd
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0   # 0 turns mixup off
    dropout: float = 0.0       # before the last layer
    augment: str = "none"
    train_size: int | None = None  # None: the whole training split
    bootstrap: bool = False    # resample the training set with replacement
    subset_seed: int = 0
    init_seed: int = 0
    order_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("arch", self.arch, ARCHS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("augment", self.augment, AUGMENTS)
        check_range("width", self.width, 1, integer=True)
        check_range("epochs", self.epochs, 1, integer=True)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("momentum", self.momentum, 0, 1)
        check_range("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("label_smoothing", self.label_smoothing, 0, 1)
        check_range("mixup_alpha", self.mixup_alpha, 0)
        check_range("dropout", self.dropout, 0, 0.95)
        if self.train_size is not None:
            check_range("train_size", self.train_size, 1, integer=True)
        if not isinstance(self.bootstrap, bool):
            raise ValueError(f"bootstrap={self.bootstrap!r} must be True or False")
        for name in ("subset_seed", "init_seed", "order_seed"):
            check_range(name, getattr(self, name), 0, integer=True)

    # -- identity ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        check_keys("recipe field(s)", d, [f.name for f in fields(cls)])
        return cls(**d)

    def key(self) -> str:
        """Content address: equal recipes give equal keys, any change a different one."""
        return content_key({"schema": SCHEMA_VERSION, "recipe": self.to_dict()})

    def replace(self, **changes: Any) -> "Recipe":
        check_keys("recipe field(s)", changes, [f.name for f in fields(self)])
        return replace(self, **changes)


def content_key(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys, floats in repr)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# -- factors and populations ------------------------------------------------

@dataclass(frozen=True)
class Factor:
    """One training difference: which recipe fields a value sets."""

    name: str
    fields: tuple[str, ...]
    doc: str
    seed_like: bool = False  # values are seeds (nominal), not an ordered quantity

    def apply(self, base: Recipe, value: Any) -> Recipe:
        return base.replace(**{f: self.resolve(base, f, value) for f in self.fields})

    def resolve(self, base: Recipe, field_name: str, value: Any) -> Any:
        """The recipe value of ``value``: as given, or, for a *relative* value
        ``"x<m>"`` (e.g. ``"x0.5"``) of a numeric factor, ``m`` times the base
        recipe's value, so that one profile perturbs every data set's recipe by
        the same factor (the protocol's "relative to each data set's base")."""
        if not (isinstance(value, str) and value.startswith("x")):
            return value
        base_value = getattr(base, field_name)
        if self.seed_like or isinstance(base_value, (str, bool)) or base_value is None:
            raise ValueError(f"factor {self.name!r} takes no relative value; got {value!r}")
        try:
            m = float(value[1:])
        except ValueError:
            raise ValueError(f"relative value {value!r} of factor {self.name!r} must be "
                             "'x' and a number, e.g. 'x0.5'") from None
        if not m > 0:
            raise ValueError(f"relative value {value!r} of factor {self.name!r} must be > 0")
        if base_value == 0:
            raise ValueError(f"factor {self.name!r}: relative value {value!r} of a base value "
                             "of 0 is 0 for every multiplier; give absolute values")
        out = base_value * m
        return max(1, int(round(out))) if isinstance(base_value, int) else float(out)


FACTORS: dict[str, Factor] = {f.name: f for f in (
    Factor("init_seed", ("init_seed",), "initialisation seed only", seed_like=True),
    Factor("order_seed", ("order_seed",), "data-order seed only", seed_like=True),
    Factor("both_seeds", ("init_seed", "order_seed"), "both seeds: ordinary independent runs",
           seed_like=True),
    Factor("augment", ("augment",), "data augmentation on/off"),
    Factor("lr", ("lr",), "learning rate"),
    Factor("batch_size", ("batch_size",), "batch size"),
    Factor("weight_decay", ("weight_decay",), "weight decay"),
    Factor("label_smoothing", ("label_smoothing",), "label smoothing"),
    Factor("mixup_alpha", ("mixup_alpha",), "mixup (Beta(alpha, alpha); 0 = off)"),
    Factor("dropout", ("dropout",), "dropout rate"),
    Factor("subset_seed", ("subset_seed",), "a different random subset / bootstrap of the training data",
           seed_like=True),
    Factor("width", ("width",), "width of the network"),
)}


@dataclass(frozen=True)
class Population:
    """Models that share ``base`` except for ``factor``, which takes ``values``."""

    factor: str
    replicate: int
    recipes: tuple[Recipe, ...] = field(repr=False)
    values: tuple[Any, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(r.key() for r in self.recipes)


def replicate_base(base: Recipe, replicate: int) -> Recipe:
    """The base recipe of replicate ``r``: all seeds shifted by ``1000 * r``.

    Replicates repeat a whole population with fresh seeds, so a factor's RM/PM
    comes with a spread over independent repeats.
    """
    check_range("replicate", replicate, 0, integer=True)
    off = 1000 * replicate
    return base.replace(init_seed=base.init_seed + off, order_seed=base.order_seed + off,
                        subset_seed=base.subset_seed + off)


def vary(base: Recipe, factor: str, values: tuple[Any, ...] | list[Any],
         replicates: int = 1) -> list[Population]:
    """Expand "vary ``factor`` over ``values``" into one population per replicate.

    Seed-like values are offsets added to the replicate's seed, so replicates
    never share a model by accident.
    """
    check_choice("factor", factor, FACTORS)
    check_range("replicates", replicates, 1, integer=True)
    values = tuple(values)
    if len(values) < 2:
        raise ValueError(f"values for factor {factor!r} must have at least 2 entries, got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"values for factor {factor!r} must be distinct, got {values!r}")
    f = FACTORS[factor]
    if factor == "subset_seed" and base.train_size is None and not base.bootstrap:
        # On the whole training set a different "subset" can only be a bootstrap
        # resample; otherwise every value would train on the same data.
        base = base.replace(bootstrap=True)
    pops = []
    for r in range(replicates):
        rb = replicate_base(base, r)
        recipes = []
        for v in values:
            if f.seed_like:
                recipes.append(f.apply(rb, getattr(rb, f.fields[0]) + int(v)))
            else:
                recipes.append(f.apply(rb, v))
        pops.append(Population(factor, r, tuple(recipes), values))
    return pops


def dedupe(recipes: Iterable[Recipe]) -> list[Recipe]:
    """Each distinct recipe (by :meth:`Recipe.key`) once, in first-seen order."""
    seen: dict[str, Recipe] = {}
    for r in recipes:
        seen.setdefault(r.key(), r)
    return list(seen.values())


def unique_recipes(pops: list[Population]) -> list[Recipe]:
    """All recipes of ``pops`` once each, in first-seen order (populations share the base)."""
    return dedupe(r for p in pops for r in p.recipes)
