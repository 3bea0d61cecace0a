"""Joining schedules end to end."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from gradtx import check
from gradtx.core import Schedule
from gradtx.schedules.steps import as_step, as_tuple, as_value, increasing_boundaries


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules[i]`` from ``boundaries[i-1]`` to ``boundaries[i]``, each
    restarting its count at its boundary::

        v(t) = schedules[0](t)                               for t < boundaries[0]
        v(t) = schedules[i](t - boundaries[i-1])             for boundaries[i-1] <= t
                                                               < boundaries[i]

    Same numbers as Optax's ``join_schedules``. Any function ``step -> value`` may be
    joined, Optax schedules included.

    Args:
        schedules: ``len(boundaries) + 1`` schedules.
        boundaries: strictly increasing non-negative integer steps.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> warmup = schedules.linear(0.0, 1.0, transition_steps=2)
        >>> decay = schedules.step_decay(1.0, step_size=2, gamma=0.5)
        >>> schedules.join([warmup, decay], [2])(jnp.arange(7)).tolist()
        [0.0, 0.5, 1.0, 1.0, 0.5, 0.5, 0.25]

    Reference: ``optax.join_schedules`` (same numbers).
    """
    schedules = as_tuple("schedules", schedules, "a sequence of len(boundaries) + 1 schedules")
    boundaries = increasing_boundaries("boundaries", boundaries)
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(
            f"schedules must have len(boundaries) + 1 = {len(boundaries) + 1} entries, got "
            f"{len(schedules)}"
        )
    for index, schedule in enumerate(schedules):
        if not callable(schedule):
            raise ValueError(f"schedules[{index}] must be a schedule (callable), got {schedule!r}")
        check.schedule_arity(f"schedules[{index}]", schedule)

    def joined(step):
        t = as_step(step)
        value = as_value(schedules[0](t))
        for boundary, schedule in zip(boundaries, schedules[1:], strict=True):
            # before its boundary a schedule sees step 0, never a negative count
            local = jnp.maximum(t - boundary, 0)
            value = jnp.where(t < boundary, value, as_value(schedule(local)))
        return value

    return joined
