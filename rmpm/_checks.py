"""Argument checks that give one clear message naming the parameter and what is allowed."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}={value!r} is not allowed; choose one of: {listed}")
    return value


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                *, integer: bool = False, lo_open: bool = False) -> Any:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name}={value!r} must be an integer")
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{name}={value!r} must be a number")
    if value != value:  # NaN
        raise ValueError(f"{name} must not be NaN")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name}={value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ValueError(f"{name}={value!r} must be <= {hi}")
    return value


def check_keys(name: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown {name}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def check_names(name: str, value: str | Sequence[str] | None,
                allowed: Sequence[str]) -> list[str]:
    """A list parameter: ``None`` means all of ``allowed``, a single string means a list
    of one; every entry must be in ``allowed``, none twice."""
    allowed = list(allowed)
    if value is None:
        return allowed
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ValueError(f"{name}={value!r} is empty; give None (all) or some of: "
                         f"{', '.join(map(repr, allowed))}")
    for v in items:
        check_choice(name, v, allowed)
    if len(set(items)) != len(items):
        raise ValueError(f"{name}={value!r} names an entry twice")
    return items
