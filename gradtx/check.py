"""Hyperparameter validation at the door: clear errors naming the argument and range.

Every check accepts a schedule (a callable, checked when evaluated) and a traced value
(injected hyperparameters are arrays inside ``jit``), which it lets through unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(value: Any) -> np.ndarray | None:
    """The value as a NumPy array, or None when it cannot be checked now."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except Exception:  # an abstract value (ShapeDtypeStruct, ...): nothing to check
        return None


def _fail(name: str, value: Any, expected: str):
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def number(name: str, value: Any) -> None:
    """Real number (or schedule): not NaN, not a string."""
    array = _concrete(value)
    if array is None:
        return
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        _fail(name, value, "a real number or a schedule")
    if np.any(np.isnan(array)):
        _fail(name, value, "a real number (not NaN)")


def in_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """``low <= value <= high`` (ends inclusive unless told otherwise)."""
    number(name, value)
    array = _concrete(value)
    if array is None:
        return
    ok = np.ones(array.shape, bool)
    if low is not None:
        ok &= array >= low if low_inclusive else array > low
    if high is not None:
        ok &= array <= high if high_inclusive else array < high
    if not np.all(ok):
        left = ("[" if low_inclusive else "(") + (str(low) if low is not None else "-inf")
        right = (str(high) if high is not None else "inf") + ("]" if high_inclusive else ")")
        _fail(name, value, f"in {left}, {right}")


def unit_interval(name: str, value: Any) -> None:
    """A decay rate or momentum: ``0 <= value < 1``."""
    in_range(name, value, 0.0, 1.0, high_inclusive=False)


def non_negative(name: str, value: Any) -> None:
    """``value >= 0``."""
    in_range(name, value, 0.0, None)


def positive(name: str, value: Any) -> None:
    """``value > 0``."""
    in_range(name, value, 0.0, None, low_inclusive=False)


def positive_int(name: str, value: Any) -> None:
    """A Python (or NumPy) integer ``>= 1``; booleans are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        _fail(name, value, "a positive integer")


def non_negative_int(name: str, value: Any) -> None:
    """A Python (or NumPy) integer ``>= 0``; booleans are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        _fail(name, value, "a non-negative integer")


def one_of(name: str, value: Any, options: Iterable[Any]) -> None:
    """``value`` is one of ``options``."""
    options = tuple(options)
    if value not in options:
        _fail(name, value, "one of " + ", ".join(repr(o) for o in options))


def dtype_or_none(name: str, value: Any) -> None:
    """A floating dtype, or None."""
    if value is None:
        return
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        _fail(name, value, "a floating dtype or None")
    if not jnp.issubdtype(dtype, jnp.inexact):
        _fail(name, value, "a floating dtype or None")
