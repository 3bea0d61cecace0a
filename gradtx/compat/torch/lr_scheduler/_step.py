"""The step as PyTorch's schedulers read it, shared by the scheduler modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradtx.schedules.steps import as_step


def as_float(step) -> tuple[jax.Array, jax.Array]:
    """The step as an int32 array in ``[0, 2**31 - 1]`` (``gradtx.schedules``' rule: a
    Python int or int64 past it is the last step the int32 counters reach, a negative
    step is step 0) and as a float in the default float dtype."""
    step = as_step(step)
    return step, step.astype(jnp.result_type(float))
