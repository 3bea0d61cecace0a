"""Scaling transforms: multiply updates by a constant, a learning rate or a schedule."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, folds, numerics, tree
from gradtx.core import EmptyState, GradientTransformation, ScalarOrSchedule, Schedule


def _scale_leaves(updates, step_size):
    # the per-leaf function a chain folds into the block before (tree.FOLD_EAGER_SCALING)
    (scaled,) = tree.map_unzip(folds.scaled_leaf(step_size), updates, outputs=1)
    return scaled


def scale(step_size: float | jax.Array) -> GradientTransformation:
    """Multiplies every update by a constant: ``u <- step_size * u``.

    Args:
        step_size: any real number (negative to descend).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale(-0.1)
        >>> tx.update(jnp.array([1.0, 2.0]), tx.init(jnp.zeros(2)))[0].tolist()
        [-0.10000000149011612, -0.20000000298023224]

    Reference: ``optax.scale`` (same map; here the product is taken in at least float32
    and rounded once to the leaf dtype).
    """
    check.number("step_size", step_size)
    return _scale(step_size)


def _scale(step_size: float | jax.Array) -> GradientTransformation:
    """``scale`` for a step size its caller has checked (``scale_by_learning_rate``
    checks the rate; checking ``-rate`` again would read a value computed at this update
    back to the host, which waits for the device: see ``scale_by_learning_rate``)."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del params, extra
        return _scale_leaves(updates, step_size), state

    # a chain may fold it into the transform before it (tree.FOLD_EAGER_SCALING)
    return GradientTransformation(init, tree.scaling(update, step_size))


class ScaleByScheduleState(NamedTuple):
    """The state of ``scale_by_schedule`` (and of a scheduled ``scale_by_learning_rate``).

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1; the schedule is evaluated
            at it.
    """

    count: jax.Array


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiplies updates by ``step_size_fn(t)``, t counting updates from 0.

    The state holds the int32 count (saturating at the int32 maximum).

    Args:
        step_size_fn: a schedule ``step -> value`` (see ``gradtx.schedules``); its
            values must be finite real scalars: one that is not is a ValueError at an
            un-jitted update (under ``jit`` only its shape can be checked).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_schedule(lambda t: 1.0 / (1 + t))
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.ones(1), state)
        >>> u, state = tx.update(jnp.ones(1), state)
        >>> u.tolist()
        [0.5]

    Reference: ``optax.scale_by_schedule`` (same map and count).
    """
    if not callable(step_size_fn):
        raise TypeError(f"step_size_fn must be a schedule (a callable), got {step_size_fn!r}")
    check.schedule_arity("step_size_fn", step_size_fn)

    def checked_step_size(count):
        step_size = step_size_fn(count)
        # A concrete value (an un-jitted update) is checked, as in the optimizers: a NaN
        # or a vector (which would broadcast against the leaves) fails here, named.
        check.number("step_size_fn's value", step_size)
        return step_size

    return _scale_by_schedule(checked_step_size, "scale_by_schedule")


def _scale_by_schedule(step_size_fn: Schedule, owner: str) -> GradientTransformation:
    """``scale_by_schedule`` for a schedule that checks its own values; ``owner`` names
    the public transform in the error for a state that is not its own."""

    def init(params):
        del params
        return ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of(owner, state, ScaleByScheduleState)
        step_size, state = step_size_and_state(state)
        return _scale_leaves(updates, step_size), state

    def step_size_and_state(state):
        return step_size_fn(state.count), ScaleByScheduleState(numerics.safe_increment(state.count))

    def folded_step(state):
        # an eager update's step size, for a chain folding it into the transform before
        # it (tree.FOLD_EAGER_SCALING); other states go through update
        if isinstance(state, ScaleByScheduleState) and folds.concrete_counter(state.count):
            return step_size_and_state(state)
        return None

    return GradientTransformation(init, tree.scaling_from_state(update, folded_step))


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiplies updates by ``-learning_rate`` (a constant or a schedule).

    Descending is the default: ``u <- -lr * u``; ``flip_sign=False`` ascends.

    Args:
        learning_rate: a non-negative number, or a schedule ``step -> value`` whose
            values must be >= 0 too: a negative value is a ValueError at an un-jitted
            update (under ``jit`` the value is traced and cannot be checked), as in the
            optimizers.
        flip_sign: negate the step (gradient descent), the default.

    State: ``ScaleByScheduleState(count)`` (t for the schedule, from 0) when
    ``learning_rate`` is a schedule, else ``EmptyState()``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_learning_rate(0.5)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0].tolist()
        [-1.0]

    Reference: ``optax.scale_by_learning_rate`` (same map; here a negative rate is an
    error).
    """
    check.boolean("flip_sign", flip_sign)
    sign = -1 if flip_sign else 1
    if callable(learning_rate):
        check.schedule_arity("learning_rate", learning_rate)

        def step_size(count):
            value = jnp.asarray(learning_rate(count))
            # As in the optimizers (schedule_injection): a concrete value (an un-jitted
            # update) is checked, so that a negative schedule cannot ascend unnoticed.
            check.non_negative("learning_rate", value)
            return sign * value

        return _scale_by_schedule(step_size, "scale_by_learning_rate")
    check.non_negative("learning_rate", learning_rate)
    # The rate is checked, not the step it gives: an optimizer rebuilds this transform at
    # every update from the rate held in its state, and reading ``-rate``, computed at
    # that update, back to the host would make every un-jitted update wait for the device.
    return _scale(sign * learning_rate)
