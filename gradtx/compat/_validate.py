"""Argument checks shared by the PyTorch and Keras layers, under those libraries' names.

Thin additions to ``gradtx.check`` for what only the compatibility layers take: a
number that may not be a schedule (a Keras schedule's ``initial_learning_rate``), a
pair (``betas``, ``etas``), a list of step counts (``milestones``); and ``is_zero``, the
static zero with which both libraries leave a term out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtx import check


def number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """A finite real scalar in the range (``check.in_range``); a callable is refused
    here, where the argument takes no schedule."""
    if callable(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    check.in_range(
        name, value, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive
    )


def pair(name: str, value: Any, what: str) -> tuple[Any, Any]:
    """Two values (a tuple, a list, an array of 2), as PyTorch unpacks ``betas``."""
    if isinstance(value, str | bytes | dict) or callable(value):
        raise TypeError(f"{name} must be a pair {what}, got {value!r}")
    try:
        values = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a pair {what}, got {value!r}") from None
    if len(values) != 2:
        raise ValueError(f"{name} must be a pair {what}, got {len(values)} values: {value!r}")
    return values[0], values[1]


def step_counts(name: str, value: Any) -> list[int]:
    """A sequence of non-negative integers within int32 (step numbers), as a list of
    ints; a whole float (``2.0``) counts as its integer, as PyTorch compares it."""
    expected = f"{name} must be a sequence of non-negative integers"
    if isinstance(value, str | bytes | dict) or not hasattr(value, "__iter__"):
        raise TypeError(f"{expected}, got {value!r}")
    try:
        values = list(value)
    except TypeError:  # a 0-d array
        raise TypeError(f"{expected}, got {value!r}") from None
    counts = []
    for index, item in enumerate(values):
        # an element of a JAX array or PyTorch tensor is a 0-d array: its number
        if not isinstance(item, bool | int | float | np.generic) and hasattr(item, "__array__"):
            array = np.asarray(item)
            if array.ndim == 0:
                item = array[()]
        # a whole float (2.0) is the step PyTorch's integer count meets; 1.9 never is
        if isinstance(item, float | np.floating) and float(item).is_integer():
            item = int(item)
        if isinstance(item, bool | np.bool_) or not isinstance(item, int | np.integer):
            raise TypeError(f"{expected}, got {value!r} ({name}[{index}] = {item!r})")
        check.non_negative_int(f"{name}[{index}]", item)
        counts.append(int(item))
    return counts


def is_zero(value: Any) -> bool:
    """True only for a Python or NumPy number equal to 0, the static case where PyTorch
    skips a term. Arrays (hyperparameters injected by ``schedule_injection`` arrive as
    float32 arrays, traced or not) count as non-zero, so the chain keeps one structure."""
    return isinstance(value, int | float | np.number) and value == 0
