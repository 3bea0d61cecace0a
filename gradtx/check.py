"""Hyperparameter validation at the door: clear errors naming the argument and range.

Every check lets a traced value through unchecked (injected hyperparameters are arrays
inside ``jit``). A schedule (a callable, checked when evaluated) is let through where
the argument takes one (``schedule=True``) and while ``schedules_allowed()`` is active
(``schedule_injection`` and the optimizers, which evaluate schedules before the
transform sees them); anywhere else it is a TypeError naming the argument, so that a
schedule handed to a transform that takes a number fails where the mistake is made.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_SCHEDULES_ALLOWED = contextvars.ContextVar("gradtx_schedules_allowed", default=False)


@contextlib.contextmanager
def schedules_allowed() -> Iterator[None]:
    """Within this block every check lets schedules through (they are evaluated, and
    their values checked by the transform, at each step)."""
    token = _SCHEDULES_ALLOWED.set(True)
    try:
        yield
    finally:
        _SCHEDULES_ALLOWED.reset(token)


def _is_schedule(value: Any) -> bool:
    return callable(value) and not isinstance(value, type)


def _concrete(name: str, value: Any, schedule: bool) -> np.ndarray | None:
    """The value as a NumPy array, or None when it cannot be checked now."""
    if _is_schedule(value):
        if schedule or _SCHEDULES_ALLOWED.get():
            return None
        raise TypeError(
            f"{name} must be a number here, got a schedule ({value!r}); to schedule it, "
            f"build the transform with gtx.schedule_injection(transform)(..., "
            f"{name}=schedule), or use an optimizer (gtx.adam, gtx.sgd, ...), whose "
            f"numeric hyperparameters all take schedules"
        )
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except Exception:  # an abstract value (ShapeDtypeStruct, ...): nothing to check
        return None


def _fail(name: str, value: Any, expected: str):
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def number(name: str, value: Any, *, schedule: bool = False) -> None:
    """Real number (or, with ``schedule=True``, a schedule): a scalar, not NaN, not a
    string. An array of several values is refused: it would broadcast against the
    leaves (one b1 per element) or fail inside jnp at the first update. A traced value's
    shape is known: one with a shape (a schedule returning a vector, under ``jit``) is
    refused as well."""
    if isinstance(value, jax.core.Tracer) and value.ndim:
        _fail(name, value, f"a scalar (a number or a 0-d array), not shape {value.shape}")
    array = _concrete(name, value, schedule)
    if array is None:
        return
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        _fail(name, value, "a real number or a schedule")
    if array.ndim:
        _fail(name, value, "a scalar (a number or a 0-d array)")
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
    schedule: bool = False,
) -> None:
    """``low <= value <= high`` (ends inclusive unless told otherwise)."""
    number(name, value, schedule=schedule)
    array = _concrete(name, value, schedule)
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


def at_least(name: str, value: Any, bound_name: str, bound: Any) -> None:
    """``value >= bound`` for a pair of hyperparameters (an upper bound and the lower
    bound it must not fall below), checked whenever both are concrete: Python and NumPy
    numbers and concrete JAX arrays alike. A traced value or a schedule (where
    ``schedules_allowed()``) is let through, like in the other checks."""
    array = _concrete(name, value, False)
    bound_array = _concrete(bound_name, bound, False)
    if array is None or bound_array is None:
        return
    if np.any(array < bound_array):
        _fail(name, value, f">= {bound_name} ({bound!r})")


def unit_interval(name: str, value: Any, *, schedule: bool = False) -> None:
    """A decay rate or momentum: ``0 <= value < 1``."""
    in_range(name, value, 0.0, 1.0, high_inclusive=False, schedule=schedule)


def non_negative(name: str, value: Any, *, schedule: bool = False) -> None:
    """``value >= 0``."""
    in_range(name, value, 0.0, None, schedule=schedule)


def positive(name: str, value: Any, *, schedule: bool = False) -> None:
    """``value > 0``."""
    in_range(name, value, 0.0, None, low_inclusive=False, schedule=schedule)


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
