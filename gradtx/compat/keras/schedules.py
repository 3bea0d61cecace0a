"""Keras 3's learning-rate schedules (``keras.optimizers.schedules``) as gradtx schedules.

Keras' argument names and values; each schedule's value at step t is what Keras'
optimizer uses for its t-th update (t from 0). Computed in the default float dtype
(float32, or float64 under x64, as Keras follows floatx), with one Keras quirk kept:
on its JAX backend ``keras.ops.floor`` and ``keras.ops.cos`` return float32 even for
float64 inputs, so the staircases, the restarts of ``CosineDecayRestarts`` and the
cosines are float32 values in float64 runs too (``_floor``, ``_cos``). A float64
floor would put some restarts of ``CosineDecayRestarts`` a step off Keras' (its
``log(8) / log(2)``, computed under ``jit`` as ``log(8) * (1 / log(2))``, is
2.9999999999999996 in float64, 3.0 in float32; ``log(243) / log(3)`` is
4.999999999999999 in float64 even eagerly).

An integer step is clamped into ``[0, 2**31 - 1]`` as in ``gradtx.schedules`` (Keras'
``iterations`` are int32: its optimizers never reach a step past that, nor a negative one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from gradtx import check, numerics
from gradtx.compat import _validate
from gradtx.core import Schedule
from gradtx.schedules.steps import as_step, increasing_boundaries

__all__ = [
    "cosine_decay",
    "cosine_decay_restarts",
    "exponential_decay",
    "inverse_time_decay",
    "piecewise_constant_decay",
    "polynomial_decay",
]


def _learning_rate(name: str, value) -> None:
    """A learning rate: a finite real scalar >= 0 (not a schedule, not a string)."""
    _validate.number(name, value, 0.0)


def _decay_steps(name: str, value) -> None:
    """A number of steps > 0, finite; Keras takes a float too (``t / decay_steps``)."""
    _validate.number(name, value, 0.0, low_inclusive=False)


def _clamped(step) -> jnp.ndarray:
    """An integer step clamped into ``[0, 2**31 - 1]`` as ``gradtx.schedules`` take it
    (a Python int past int32 is not an OverflowError, int64 under x64 stops where the
    int32 counters and Keras' int32 ``iterations`` do); a float step as it is."""
    if isinstance(step, int | np.integer) or jnp.issubdtype(jnp.result_type(step), jnp.integer):
        return as_step(step)
    return jnp.asarray(step)


def _step(step) -> jnp.ndarray:
    """The step in the default float dtype (float32, float64 under x64), as Keras casts it."""
    return _clamped(step).astype(jnp.result_type(float))


def _floor(x: jnp.ndarray) -> jnp.ndarray:
    """``keras.ops.floor`` on the JAX backend: computed and returned in float32."""
    return jnp.floor(x.astype(jnp.float32))


def _cos(x: jnp.ndarray) -> jnp.ndarray:
    """``keras.ops.cos`` on the JAX backend: computed and returned in float32."""
    return jnp.cos(x.astype(jnp.float32))


def exponential_decay(
    initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False
) -> Schedule:
    """``ExponentialDecay``: ``lr * decay_rate^(t / decay_steps)`` (floored if staircase).

    Args:
        initial_learning_rate: the value at step 0, >= 0.
        decay_steps: the steps over which the value is multiplied by ``decay_rate``,
            a number > 0.
        decay_rate: the factor per ``decay_steps``, >= 0 (above 1 it grows; a negative
            one would make fractional powers NaN).
        staircase: True or False; True floors ``t / decay_steps`` (a step every
            ``decay_steps``).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> kc.exponential_decay(1.0, 2, 0.5, staircase=True)(jnp.arange(4)).tolist()
        [1.0, 1.0, 0.5, 0.5]

    Reference: Keras' ``keras.optimizers.schedules.ExponentialDecay``.
    """
    _learning_rate("initial_learning_rate", initial_learning_rate)
    _decay_steps("decay_steps", decay_steps)
    _validate.number("decay_rate", decay_rate, 0.0)
    check.boolean("staircase", staircase)

    def schedule(step):
        t = _step(step)
        p = _floor(t / decay_steps) if staircase else t / decay_steps
        return initial_learning_rate * jnp.asarray(decay_rate, t.dtype) ** p

    return schedule


def inverse_time_decay(
    initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False
) -> Schedule:
    """``InverseTimeDecay``: ``lr / (1 + decay_rate * t / decay_steps)`` (floored if staircase).

    Args:
        initial_learning_rate: the value at step 0, >= 0.
        decay_steps: the unit of ``t`` in the formula, a number > 0.
        decay_rate: >= 0 (a negative one would cross 0 and give negative or infinite
            rates).
        staircase: True or False; True floors ``t / decay_steps``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> kc.inverse_time_decay(1.0, 1, 1.0)(jnp.arange(4)).tolist()
        [1.0, 0.5, 0.3333333432674408, 0.25]

    Reference: Keras' ``keras.optimizers.schedules.InverseTimeDecay``.
    """
    _learning_rate("initial_learning_rate", initial_learning_rate)
    _decay_steps("decay_steps", decay_steps)
    _validate.number("decay_rate", decay_rate, 0.0)
    check.boolean("staircase", staircase)

    def schedule(step):
        t = _step(step)
        p = _floor(t / decay_steps) if staircase else t / decay_steps
        return initial_learning_rate / (1 + jnp.asarray(decay_rate, t.dtype) * p)

    return schedule


def piecewise_constant_decay(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """``PiecewiseConstantDecay``: ``values[0]`` while ``t <= boundaries[0]``, and so on.

    Keras switches after the boundary (``t > boundary``), one step later than
    ``gradtx.schedules.piecewise_constant`` and PyTorch's ``MultiStepLR``.

    Args:
        boundaries: strictly increasing step numbers, non-negative integers.
        values: ``len(boundaries) + 1`` learning rates, each >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> kc.piecewise_constant_decay([1, 2], [1.0, 0.5, 0.25])(jnp.arange(4)).tolist()
        [1.0, 1.0, 0.5, 0.25]

    Reference: Keras' ``keras.optimizers.schedules.PiecewiseConstantDecay``.
    """
    boundaries = list(increasing_boundaries("boundaries", boundaries))
    if isinstance(values, str | bytes | dict) or not hasattr(values, "__iter__"):
        raise TypeError(f"values must be a sequence of learning rates, got {values!r}")
    values = list(values)
    for index, value in enumerate(values):
        _learning_rate(f"values[{index}]", value)
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"values must have len(boundaries) + 1 = {len(boundaries) + 1} entries, got "
            f"{len(values)}"
        )

    def schedule(step):
        step = _clamped(step)
        value = jnp.full(step.shape, values[0], jnp.result_type(float))
        for boundary, later in zip(boundaries, values[1:], strict=True):
            value = jnp.where(step > boundary, later, value)
        return value

    return schedule


def polynomial_decay(
    initial_learning_rate: float,
    decay_steps: int,
    end_learning_rate: float = 0.0001,
    power: float = 1.0,
    cycle: bool = False,
) -> Schedule:
    """``PolynomialDecay``: ``(lr - end) * (1 - t / decay_steps)^power + end``.

    ``t`` is clipped at ``decay_steps``; with ``cycle`` the horizon grows instead to the
    next multiple of ``decay_steps`` (``decay_steps * ceil(t / decay_steps)``, 1 at t=0).

    Args:
        initial_learning_rate: the value at step 0, >= 0.
        decay_steps: the steps to reach ``end_learning_rate``, a number > 0.
        end_learning_rate: the value from ``decay_steps`` on, >= 0 (above
            ``initial_learning_rate`` the schedule rises to it).
        power: the power of the polynomial, >= 0 (a negative one is infinite at the
            end).
        cycle: True or False; True restarts the decay at every multiple of
            ``decay_steps``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> schedule = kc.polynomial_decay(1.0, 2, end_learning_rate=0.0)
        >>> schedule(jnp.arange(4)).tolist()
        [1.0, 0.5, 0.0, 0.0]

    Reference: Keras' ``keras.optimizers.schedules.PolynomialDecay``.
    """
    _learning_rate("initial_learning_rate", initial_learning_rate)
    _decay_steps("decay_steps", decay_steps)
    _learning_rate("end_learning_rate", end_learning_rate)
    _validate.number("power", power, 0.0)
    check.boolean("cycle", cycle)

    def schedule(step):
        t = _step(step)
        horizon = jnp.asarray(decay_steps, t.dtype)
        if cycle:
            # ceil(t / decay_steps) in integers: exact where a float division can land
            # just above a whole number and skip to the next cycle (and without t +
            # decay_steps - 1, which passes int32's maximum near the saturated counter).
            whole = _clamped(step)
            ceil = whole // decay_steps + (whole % decay_steps > 0).astype(whole.dtype)
            horizon = horizon * jnp.maximum(ceil, 1).astype(t.dtype)
        else:
            t = jnp.minimum(t, horizon)
        remaining = numerics.fraction_left(t, horizon)  # Keras' 1 - t / horizon
        return (initial_learning_rate - end_learning_rate) * remaining**power + end_learning_rate

    return schedule


def cosine_decay(
    initial_learning_rate: float,
    decay_steps: int,
    alpha: float = 0.0,
    warmup_target: float | None = None,
    warmup_steps: int = 0,
) -> Schedule:
    """``CosineDecay``, with its optional linear warmup.

    Without warmup: ``lr * ((1 - alpha) * (1 + cos(pi * min(t, decay_steps) /
    decay_steps)) / 2 + alpha)``, held at its end value (PyTorch's CosineAnnealingLR
    is periodic instead). With ``warmup_target``: linear from ``initial_learning_rate``
    to ``warmup_target`` over ``warmup_steps``, then the decay from ``warmup_target``.

    Args:
        initial_learning_rate: the value at step 0, >= 0.
        decay_steps: the length of the cosine, a number > 0.
        alpha: the final value as a fraction of the decay's start, in [0, 1].
        warmup_target: None (no warmup, Keras' default) or the value the warmup
            reaches, >= 0.
        warmup_steps: the warmup's length, a number >= 0; only with ``warmup_target``
            (Keras ignores it without one).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> [round(v, 6) for v in kc.cosine_decay(1.0, 2)(jnp.arange(4)).tolist()]
        [1.0, 0.5, 0.0, 0.0]

    Reference: Keras' ``keras.optimizers.schedules.CosineDecay``.
    """
    _learning_rate("initial_learning_rate", initial_learning_rate)
    _decay_steps("decay_steps", decay_steps)
    _validate.number("alpha", alpha, 0.0, 1.0)
    _validate.number("warmup_steps", warmup_steps, 0.0)
    if warmup_target is None:
        if warmup_steps != 0:
            raise ValueError(
                f"warmup_steps={warmup_steps!r} needs a warmup_target (Keras ignores it "
                f"without; here it would do nothing)"
            )
    else:
        _learning_rate("warmup_target", warmup_target)

    def decayed(t, start):
        fraction = t / decay_steps
        cosine = 0.5 * (1.0 + _cos(jnp.asarray(math.pi, t.dtype) * fraction))  # float32
        return jnp.asarray(start, t.dtype) * ((1 - alpha) * cosine + alpha)

    def schedule(step):
        t = _step(step)
        if warmup_target is None:
            return decayed(jnp.minimum(t, decay_steps), initial_learning_rate)
        t = jnp.minimum(t, decay_steps + warmup_steps)
        warmup = (warmup_target - initial_learning_rate) * (
            t / warmup_steps
        ) + initial_learning_rate
        return jnp.where(t < warmup_steps, warmup, decayed(t - warmup_steps, warmup_target))

    return schedule


def cosine_decay_restarts(
    initial_learning_rate: float,
    first_decay_steps: int,
    t_mul: float = 2.0,
    m_mul: float = 1.0,
    alpha: float = 0.0,
) -> Schedule:
    """``CosineDecayRestarts`` (SGDR): cosine periods growing by ``t_mul``, peaks by ``m_mul``.

    With ``f = t / first_decay_steps``, the period index is ``i = floor(log(1 - f (1 -
    t_mul)) / log(t_mul))`` (``floor(f)`` when ``t_mul = 1``) and the fraction of it done
    ``(f - (1 - t_mul^i) / (1 - t_mul)) / t_mul^i``; the value is ``lr * ((1 - alpha) *
    m_mul^i * (1 + cos(pi * fraction)) / 2 + alpha)``. Computed with Keras' operations,
    the float32 floor and cosine included (see the module docstring).

    Args:
        initial_learning_rate: the value at step 0, >= 0.
        first_decay_steps: the length of the first period, a number > 0.
        t_mul: the growth of the periods' lengths, >= 1 (below 1 the periods shrink to
            nothing and Keras' formula is NaN from their sum on).
        m_mul: the factor of each period's peak over the previous one's, >= 0.
        alpha: the floor as a fraction of ``initial_learning_rate``, in [0, 1].

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> values = kc.cosine_decay_restarts(1.0, 2, t_mul=1.0, m_mul=0.5)(jnp.arange(5))
        >>> [round(v, 6) for v in values.tolist()]
        [1.0, 0.5, 0.5, 0.25, 0.25]

    Reference: Loshchilov & Hutter, 2017, "SGDR: Stochastic Gradient Descent with Warm
    Restarts"; Keras' ``keras.optimizers.schedules.CosineDecayRestarts``.
    """
    _learning_rate("initial_learning_rate", initial_learning_rate)
    _decay_steps("first_decay_steps", first_decay_steps)
    _validate.number("t_mul", t_mul, 1.0)
    _validate.number("m_mul", m_mul, 0.0)
    _validate.number("alpha", alpha, 0.0, 1.0)

    def schedule(step):
        fraction = _step(step) / first_decay_steps
        dtype = fraction.dtype
        if t_mul == 1.0:
            restart = _floor(fraction)
            fraction = fraction - restart
        else:
            growth = jnp.asarray(t_mul, dtype)
            restart = _floor(jnp.log(1.0 - fraction * (1.0 - growth)) / jnp.log(growth))
            done = (1.0 - growth**restart) / (1.0 - growth)
            fraction = (fraction - done) / growth**restart
        peak = jnp.asarray(m_mul, dtype) ** restart
        cosine = 0.5 * peak * (1.0 + _cos(jnp.asarray(math.pi, dtype) * fraction))
        value = (1 - jnp.asarray(alpha, dtype)) * cosine + jnp.asarray(alpha, dtype)
        return jnp.asarray(initial_learning_rate, dtype) * value

    return schedule
