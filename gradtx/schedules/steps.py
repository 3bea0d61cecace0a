"""Step handling shared by the schedules: integer steps in, float32 values out.

A schedule is a pure function ``step -> value``. The step is a Python int, a NumPy
integer or an int32 array (traced inside ``jit``, or a whole range of steps at once for
plotting); the value is float32 of the same shape. Integer arithmetic on the step is kept
to operations that cannot overflow int32 (subtracting a non-negative offset from a
non-negative step, clipping, division and remainder by a positive constant); anything
that multiplies the step runs in float32 after clipping.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, numerics


def as_step(step: Any) -> jax.Array:
    """The step as an int32 array in ``[0, int32 max]``.

    Negative steps become 0 (the value before training); larger ones (a Python int, or
    int64 with x64 enabled) become the int32 maximum, where the optimizers' saturating
    counters stop, rather than wrapping around. Raises TypeError for a floating step: a
    schedule counts updates, and truncating ``2.5`` to ``2`` would hide a bug.
    """
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        step = min(max(int(step), 0), numerics.INT32_MAX)
    step = jnp.asarray(step)
    if not jnp.issubdtype(step.dtype, jnp.integer):
        raise TypeError(
            f"a schedule's step must be an integer (an int or an int32 array), got dtype "
            f"{step.dtype.name}"
        )
    if jnp.iinfo(step.dtype).max > numerics.INT32_MAX:
        step = jnp.minimum(step, numerics.INT32_MAX)
    return jnp.maximum(step, 0).astype(jnp.int32)


def as_value(value: Any) -> jax.Array:
    """A schedule's result as float32."""
    return jnp.asarray(value).astype(jnp.float32)


def check_count(name: str, value: Any, *, minimum: int = 1) -> int:
    """A number of steps: an integer in ``[minimum, int32 max]`` (the int32 cap is
    ``check.positive_int``'s and ``check.non_negative_int``'s), returned as a Python
    ``int`` (a concrete 0-d integer array is taken as the number it holds)."""
    if minimum >= 1:
        return check.positive_int(name, value)
    return check.non_negative_int(name, value)


def as_tuple(name: str, values: Any, expected: str) -> tuple:
    """``values`` (a list, a tuple, any iterable but a string) as a tuple; anything
    else is a TypeError naming the argument and what was expected."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be {expected}, got {values!r}")
    try:
        return tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be {expected}, got {values!r}") from None


def increasing_boundaries(name: str, boundaries: Any) -> tuple[int, ...]:
    """Boundaries as a tuple of non-negative ints, strictly increasing."""
    try:
        values = tuple(boundaries)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of non-negative integers, got {boundaries!r}"
        ) from None
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(
                f"{name} must be a sequence of non-negative integers, got {boundaries!r}"
            )
        check_count(name, value, minimum=0)
    if any(later <= earlier for earlier, later in zip(values, values[1:], strict=False)):
        raise ValueError(f"{name} must be strictly increasing, got {list(values)}")
    return tuple(int(v) for v in values)
