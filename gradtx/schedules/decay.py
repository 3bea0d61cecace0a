"""Decaying schedules: constant, linear, polynomial, exponential, inverse-time, power,
step and piecewise-constant.

Every schedule here is a pure function ``step -> value`` with t counting updates from 0
(the value used by the update at step t, as in Optax and Keras; PyTorch's schedulers give
the same numbers once its lr before the first ``scheduler.step()`` is taken as t = 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from gradtx import check, numerics
from gradtx.core import Schedule
from gradtx.schedules.steps import (
    as_step,
    as_tuple,
    as_value,
    check_count,
    increasing_boundaries,
)


def constant(value: float) -> Schedule:
    """The same value at every step: ``v(t) = value``.

    Args:
        value: any real number.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedules.constant(0.5)(jnp.arange(3)).tolist()
        [0.5, 0.5, 0.5]

    Reference: ``optax.constant_schedule`` (same value; here a float32 array of the
    step's shape, where Optax returns ``value`` itself).
    """
    check.number("value", value)

    def schedule(step):
        return jnp.full(as_step(step).shape, value, jnp.float32)

    return schedule


def polynomial(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial annealing from ``init_value`` to ``end_value``::

        s    = clip(t - transition_begin, 0, transition_steps)
        v(t) = (init_value - end_value) * (1 - s / transition_steps)^power + end_value

    The value is ``init_value`` until ``transition_begin`` and ``end_value`` from
    ``transition_begin + transition_steps`` on. The equation of Optax's
    ``polynomial_schedule``; with ``end_value=0`` and ``transition_begin=0``, PyTorch's
    ``PolynomialLR(total_iters=transition_steps, power=power)`` (which keeps the final
    value 0 afterwards too). Exactly ``init_value`` and ``end_value`` at the ends; a
    rising schedule (``|end_value| > |init_value|``) is computed as ``init_value +
    (end_value - init_value) * (1 - (1 - s / T)^power)``, the same number without the
    cancellation of the form above near a small start.

    Args:
        init_value: the value before and at the start of the transition.
        end_value: the value at and after its end.
        power: the exponent, > 0 (1 is linear).
        transition_steps: length of the transition, a positive integer.
        transition_begin: steps held at ``init_value`` first, a non-negative integer.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.polynomial(1.0, 0.0, power=2.0, transition_steps=4)
        >>> schedule(jnp.arange(6)).tolist()
        [1.0, 0.5625, 0.25, 0.0625, 0.0, 0.0]

    Reference: ``optax.polynomial_schedule`` (the same equation); PyTorch's
    ``torch.optim.lr_scheduler.PolynomialLR``.
    """
    check.number("init_value", init_value)
    check.number("end_value", end_value)
    check.positive("power", power)
    transition_steps = check_count("transition_steps", transition_steps)
    transition_begin = check_count("transition_begin", transition_begin, minimum=0)

    def schedule(step):
        progress = jnp.clip(as_step(step) - transition_begin, 0, transition_steps)
        remaining = numerics.fraction_left(progress, transition_steps)
        done = numerics.fraction_done(progress, transition_steps)
        # (init - end) * left^power + end cancels where |end| >> |init| (1.6e-5 off init
        # at step 0 of a 73x linear warmup): a rising schedule is anchored at init (traced
        # values, which cannot choose a branch, take the general form)
        if not numerics.is_traced(power) and power == 1:
            return as_value(init_value * remaining + end_value * done)
        if not numerics.is_traced(init_value, end_value) and abs(init_value) < abs(end_value):
            # 1 - left^power, from whichever of done and left is the more precise
            # (log(0) at the end, where the value is end_value: kept out, or a gradient with
            # respect to a traced power is NaN there)
            safe_left = jnp.where(remaining == 0, 1, remaining)
            log_left = jnp.where(done < 0.5, jnp.log1p(-done), jnp.log(safe_left))
            risen = -jnp.expm1(power * log_left)
            value = init_value + (end_value - init_value) * risen
            return as_value(jnp.where(remaining == 0, end_value, value))
        return as_value((init_value - end_value) * remaining**power + end_value)

    return schedule


def linear(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear interpolation from ``init_value`` to ``end_value``::

        s    = clip(t - transition_begin, 0, transition_steps)
        v(t) = init_value + (end_value - init_value) * s / transition_steps

    The equation of Optax's ``linear_schedule``; PyTorch's ``LinearLR`` is this with
    ``init_value = base_lr * start_factor`` and ``end_value = base_lr * end_factor``.

    Args:
        init_value: the value before and at the start of the transition.
        end_value: the value at and after its end.
        transition_steps: length of the transition, a positive integer.
        transition_begin: steps held at ``init_value`` first, a non-negative integer.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedules.linear(0.0, 1.0, transition_steps=4)(jnp.arange(6)).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]

    Reference: ``optax.linear_schedule`` (the same equation); PyTorch's
    ``torch.optim.lr_scheduler.LinearLR``.
    """
    return polynomial(init_value, end_value, 1.0, transition_steps, transition_begin)


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Exponential decay, continuous or in stairs::

        p    = max(t - transition_begin, 0) / transition_steps     (floored if staircase)
        v(t) = init_value * decay_rate^p

    then bounded by ``end_value`` when given: from below if ``decay_rate < 1``, from
    above if it is > 1. The equation of Optax's ``exponential_decay`` and Keras'
    ``ExponentialDecay(init_value, decay_steps=transition_steps, decay_rate)``; PyTorch's
    ``ExponentialLR(gamma)`` is ``transition_steps=1, decay_rate=gamma``. Optax and
    Keras raise ``float32(decay_rate)``, whose rounding compounds with the exponent
    (``0.99994^1e4`` 2.2e-4 low); here it is corrected (``numerics.power``), as in
    PyTorch's double precision.

    Args:
        init_value: the value up to ``transition_begin``.
        transition_steps: steps for one factor of ``decay_rate``, a positive integer.
        decay_rate: the factor per ``transition_steps``, > 0.
        transition_begin: steps held at ``init_value`` first, a non-negative integer.
        staircase: decay in whole factors every ``transition_steps`` steps.
        end_value: an optional bound the value never passes.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.exponential_decay(1.0, transition_steps=2, decay_rate=0.5,
        ...                                        staircase=True)
        >>> schedule(jnp.arange(6)).tolist()
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]

    Reference: ``optax.exponential_decay`` (the same equation); Keras'
    ``keras.optimizers.schedules.ExponentialDecay``.
    """
    check.number("init_value", init_value)
    transition_steps = check_count("transition_steps", transition_steps)
    check.positive("decay_rate", decay_rate)
    transition_begin = check_count("transition_begin", transition_begin, minimum=0)
    check.boolean("staircase", staircase)
    if end_value is not None:
        check.number("end_value", end_value)

    def schedule(step):
        elapsed = jnp.maximum(as_step(step) - transition_begin, 0)
        if staircase:
            exponent = (elapsed // transition_steps).astype(jnp.float32)
        else:
            exponent = elapsed.astype(jnp.float32) / transition_steps
        value = init_value * numerics.power(decay_rate, exponent)
        if end_value is not None:
            value = jnp.where(
                jnp.asarray(decay_rate) < 1,
                jnp.maximum(value, end_value),
                jnp.minimum(value, end_value),
            )
        return as_value(value)

    return schedule


def inverse_time_decay(
    init_value: float, decay_steps: int, decay_rate: float, staircase: bool = False
) -> Schedule:
    """Inverse-time decay::

        p    = t / decay_steps     (floored if staircase)
        v(t) = init_value / (1 + decay_rate * p)

    Same numbers as Keras' ``InverseTimeDecay``.

    Args:
        init_value: the value at step 0.
        decay_steps: the step unit of the decay, a positive integer.
        decay_rate: how fast the value falls, >= 0.
        staircase: decay in whole units of ``decay_steps``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.inverse_time_decay(1.0, decay_steps=1, decay_rate=1.0)
        >>> schedule(jnp.arange(4)).tolist()
        [1.0, 0.5, 0.3333333432674408, 0.25]

    Reference: Keras' ``keras.optimizers.schedules.InverseTimeDecay`` (same numbers).
    """
    check.number("init_value", init_value)
    decay_steps = check_count("decay_steps", decay_steps)
    check.non_negative("decay_rate", decay_rate)
    check.boolean("staircase", staircase)

    def schedule(step):
        t = as_step(step)
        if staircase:
            p = (t // decay_steps).astype(jnp.float32)
        else:
            p = t.astype(jnp.float32) / decay_steps
        return as_value(init_value / (1 + decay_rate * p))

    return schedule


def power_decay(init_value: float, steps: int, power: float = 1.0) -> Schedule:
    """Power scheduling::

        v(t) = init_value / (1 + t / steps)^power

    The value halves (for ``power=1``) after ``steps`` steps, thirds after ``2 * steps``,
    and so on: it falls quickly, then more and more slowly. This is the "power
    scheduling" of Géron, *Hands-On Machine Learning*, ch. 11 (with ``c = power``, ``s =
    steps``); ``power=1`` is Keras' ``InverseTimeDecay(decay_rate=1)``.

    Args:
        init_value: the value at step 0.
        steps: the step unit, a positive integer.
        power: the exponent, >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedules.power_decay(1.0, steps=2, power=2.0)(jnp.array([0, 2, 6])).tolist()
        [1.0, 0.25, 0.0625]

    Reference: Géron, 2019, *Hands-On Machine Learning with Scikit-Learn, Keras and
    TensorFlow*, ch. 11 ("power scheduling").
    """
    check.number("init_value", init_value)
    steps = check_count("steps", steps)
    check.non_negative("power", power)

    def schedule(step):
        t = as_step(step).astype(jnp.float32)
        return as_value(init_value / (1 + t / steps) ** power)

    return schedule


def step_decay(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """Multiplies the value by ``gamma`` every ``step_size`` steps::

        v(t) = init_value * gamma^floor(t / step_size)

    Same numbers as PyTorch's ``StepLR(step_size, gamma)`` (``gamma=0.5`` halves the
    value every ``step_size`` steps).

    Args:
        init_value: the value for the first ``step_size`` steps.
        step_size: steps between decays, a positive integer.
        gamma: the factor per decay, >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedules.step_decay(1.0, step_size=2, gamma=0.5)(jnp.arange(5)).tolist()
        [1.0, 1.0, 0.5, 0.5, 0.25]

    Reference: PyTorch's ``torch.optim.lr_scheduler.StepLR`` (same numbers).
    """
    check.number("init_value", init_value)
    step_size = check_count("step_size", step_size)
    check.non_negative("gamma", gamma)

    def schedule(step):
        decays = (as_step(step) // step_size).astype(jnp.float32)
        return as_value(init_value * numerics.power(gamma, decays))

    return schedule


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """A constant value on each interval between boundaries::

        v(t) = values[i]   for boundaries[i-1] <= t < boundaries[i]

    (``values[0]`` before the first boundary, ``values[-1]`` from the last one on). With
    ``values[i] = init * gamma^i`` this is PyTorch's ``MultiStepLR(milestones=boundaries,
    gamma)``; Keras' ``PiecewiseConstantDecay`` switches one step later (its value
    changes after ``t > boundary``, not at ``t == boundary``).

    Args:
        boundaries: strictly increasing non-negative integer steps.
        values: ``len(boundaries) + 1`` real numbers.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.piecewise_constant([2, 4], [1.0, 0.5, 0.25])
        >>> schedule(jnp.arange(6)).tolist()
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]

    Reference: PyTorch's ``torch.optim.lr_scheduler.MultiStepLR`` (same numbers with
    ``values[i] = init * gamma^i``).
    """
    boundaries = increasing_boundaries("boundaries", boundaries)
    values = as_tuple("values", values, "a sequence of len(boundaries) + 1 real numbers")
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"values must have len(boundaries) + 1 = {len(boundaries) + 1} entries, got "
            f"{len(values)}"
        )
    for index, value in enumerate(values):
        check.number(f"values[{index}]", value)

    def schedule(step):
        t = as_step(step)
        index = jnp.zeros_like(t)
        for boundary in boundaries:
            index = index + (t >= boundary).astype(jnp.int32)
        return as_value(jnp.asarray(values, jnp.float32)[index])

    return schedule
