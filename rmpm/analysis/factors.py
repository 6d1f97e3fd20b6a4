"""The protocol's training factors as the analyses see them: their kinds, which share
their models' initial weights, and the blocks they are compared within.

A factor (:data:`rmpm.pipeline.recipe.FACTORS`) is one training difference, varied
from a data set's base recipe. **Blocks** are (data set, replicate) pairs: within a
block every factor's population starts from the same replicate base recipe (same
seeds), so comparing factors within a block is a paired comparison.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .._checks import check_choice
from ..pipeline.recipe import FACTORS

#: the unit of the paired comparisons: one replicate of one data set
BLOCK = ("dataset", "replicate")

#: Factors whose populations differ only in random seeds, on the same data.
SEED_FACTORS = ("init_seed", "order_seed", "both_seeds")
#: Factors that change which training data a model sees.
DATA_FACTORS = ("subset_seed",)
#: Factors that change the architecture, so their models cannot share initial weights.
ARCH_FACTORS = ("width",)
#: Factors of one kind perturb training through the same mechanism (and, but for
#: width, start every population from the replicate's initial weights), so a
#: replicate's idiosyncrasies can move them together: the groups the calibration's
#: ``clustered`` null lets share noise.
FACTOR_KINDS: dict[str, tuple[str, ...]] = {
    "seeds": SEED_FACTORS,
    "optimiser": ("lr", "batch_size"),
    "regularisation": ("weight_decay", "label_smoothing", "mixup_alpha", "dropout"),
    "training data": ("augment", *DATA_FACTORS),
    "architecture": ARCH_FACTORS,
}


def shares_initialisation(factor: str) -> bool:
    """Whether the models of one population of ``factor`` start from the same
    initial weights: the factor sets neither the initialisation seed nor the
    architecture (9 of the 12 protocol factors). Their RM is then smaller than a
    fresh seed's for that reason alone, and their noise shares the replicate's
    initialisation."""
    check_choice("factor", factor, FACTORS)
    return "init_seed" not in FACTORS[factor].fields and factor not in ARCH_FACTORS


def factor_group(factor: str) -> str:
    """``"seeds"`` (only seeds differ), ``"data"`` (different training data) or
    ``"hyperparameters"`` (a recipe setting differs, seeds held fixed)."""
    check_choice("factor", factor, FACTORS)
    if factor in SEED_FACTORS:
        return "seeds"
    if factor in DATA_FACTORS:
        return "data"
    return "hyperparameters"


def need_columns(table: pd.DataFrame, cols: Sequence[str]) -> None:
    """Refuse a table without ``cols``, naming the missing ones and what it has."""
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise KeyError(f"the table has no column(s) {', '.join(missing)}; "
                       f"columns: {', '.join(map(str, table.columns))}")


def block_matrix(table: pd.DataFrame, value: str = "rm", blocks: Sequence[str] = BLOCK,
                 treatment: str = "factor") -> pd.DataFrame:
    """Blocks x treatments matrix of ``value`` (rows: e.g. (data set, replicate);
    columns: factors, in order of first appearance). Every cell must be filled
    exactly once: the Friedman test and the paired bootstrap need complete blocks."""
    need_columns(table, [*blocks, treatment, value])
    dup = table.duplicated([*blocks, treatment])
    if dup.any():
        raise ValueError(f"more than one row per ({', '.join(blocks)}, {treatment}); "
                         f"e.g. {table.loc[dup, [*blocks, treatment]].iloc[0].to_dict()}")
    order = list(dict.fromkeys(table[treatment]))
    m = table.pivot_table(index=list(blocks), columns=treatment, values=value,
                          aggfunc="first", dropna=False, sort=False)[order]
    if m.isna().any().any():
        bad = m.columns[m.isna().any()].tolist()
        raise ValueError(f"incomplete blocks: {value!r} is missing for {treatment}(s) "
                         f"{', '.join(map(str, bad))} in some block")
    return m
