"""PyTorch's step, exponential, linear, constant and polynomial schedulers, and SequentialLR.

``StepLR``, ``MultiStepLR``, ``ExponentialLR``, ``LinearLR``, ``ConstantLR`` and
``PolynomialLR`` as gradtx schedules, and ``SequentialLR``, which joins schedules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import jax.numpy as jnp

from gradtx import check, numerics
from gradtx.compat import _validate
from gradtx.compat.torch.lr_scheduler._step import as_float
from gradtx.core import Schedule


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``StepLR``: ``lr_t = base_lr * gamma^floor(t / step_size)``.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        step_size: steps between two decays, a positive integer.
        gamma: the factor per decay, >= 0 (above 1 it grows, as PyTorch lets it).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> lr_scheduler.step_lr(1.0, step_size=2, gamma=0.5)(jnp.arange(5)).tolist()
        [1.0, 1.0, 0.5, 0.5, 0.25]

    Reference: PyTorch's ``torch.optim.lr_scheduler.StepLR``.
    """
    check.non_negative("base_lr", base_lr)
    step_size = check.positive_int("step_size", step_size)
    check.non_negative("gamma", gamma)

    def schedule(step):
        t, real = as_float(step)
        # a float exponent: ``x ** n`` with a concrete integer n (an un-jitted update) reads
        # n back to the host (waiting for the device) and compiles a new kernel per n, and
        # gives other roundings than under jit
        return base_lr * jnp.asarray(gamma, real.dtype) ** (t // step_size).astype(real.dtype)

    return schedule


def multistep_lr(base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``MultiStepLR``: ``lr_t = base_lr * gamma^(number of milestones <= t)``.

    A milestone listed twice counts twice, and the order of the milestones does not
    matter, as in PyTorch (which keeps them in a ``Counter``).

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        milestones: the steps at which the rate is multiplied by ``gamma``, a sequence
            of non-negative integers (a float milestone, which PyTorch's step count
            never equals, is refused).
        gamma: the factor per milestone, >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> lr_scheduler.multistep_lr(1.0, [1, 3], gamma=0.5)(jnp.arange(5)).tolist()
        [1.0, 0.5, 0.5, 0.25, 0.25]

    Reference: PyTorch's ``torch.optim.lr_scheduler.MultiStepLR``.
    """
    check.non_negative("base_lr", base_lr)
    check.non_negative("gamma", gamma)
    counts = Counter(_validate.step_counts("milestones", milestones))

    def schedule(step):
        t, real = as_float(step)
        passed = sum(n * (t >= m).astype(jnp.int32) for m, n in sorted(counts.items()))
        # a float exponent, as in step_lr
        return base_lr * jnp.asarray(gamma, real.dtype) ** jnp.asarray(passed, real.dtype)

    return schedule


def exponential_lr(base_lr: float, gamma: float) -> Schedule:
    """``ExponentialLR``: ``lr_t = base_lr * gamma^t``.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        gamma: the factor per step, >= 0 (above 1 it grows, as PyTorch lets it).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> lr_scheduler.exponential_lr(1.0, gamma=0.5)(jnp.arange(3)).tolist()
        [1.0, 0.5, 0.25]

    Reference: PyTorch's ``torch.optim.lr_scheduler.ExponentialLR``.
    """
    check.non_negative("base_lr", base_lr)
    check.non_negative("gamma", gamma)

    def schedule(step):
        _, t = as_float(step)
        return base_lr * jnp.asarray(gamma, t.dtype) ** t

    return schedule


def linear_lr(
    base_lr: float,
    start_factor: float = 1.0 / 3,
    end_factor: float = 1.0,
    total_iters: int = 5,
) -> Schedule:
    """``LinearLR``: the factor goes linearly from ``start_factor`` to ``end_factor``.

    ``lr_t = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)``.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        start_factor: the factor at step 0, in (0, 1].
        end_factor: the factor from ``total_iters`` on, in [0, 1].
        total_iters: the steps of the ramp, a positive integer.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> schedule = lr_scheduler.linear_lr(1.0, start_factor=0.5, total_iters=2)
        >>> schedule(jnp.arange(4)).tolist()
        [0.5, 0.75, 1.0, 1.0]

    Reference: PyTorch's ``torch.optim.lr_scheduler.LinearLR``.
    """
    check.non_negative("base_lr", base_lr)
    check.in_range("start_factor", start_factor, 0.0, 1.0, low_inclusive=False)
    check.in_range("end_factor", end_factor, 0.0, 1.0)
    total_iters = check.positive_int("total_iters", total_iters)

    def schedule(step):
        _, t = as_float(step)
        # from the end: exactly end_factor at t = n under jit too, where start + (end -
        # start) * t / n can fuse into an fma that overshoots the end
        remaining = numerics.fraction_left(jnp.minimum(t, total_iters), total_iters)
        return base_lr * (end_factor + (start_factor - end_factor) * remaining)

    return schedule


def constant_lr(base_lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """``ConstantLR``: ``base_lr * factor`` for the first ``total_iters`` steps, then ``base_lr``.

    With ``total_iters=0`` PyTorch sets ``base_lr * factor`` at construction and never
    restores ``base_lr`` (it multiplies back only when its step count equals
    ``total_iters``, which it passes before the first check): so does this.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        factor: the factor of the first ``total_iters`` steps, in [0, 1].
        total_iters: how many steps use ``base_lr * factor``, an integer >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> lr_scheduler.constant_lr(1.0, factor=0.5, total_iters=2)(jnp.arange(4)).tolist()
        [0.5, 0.5, 1.0, 1.0]

    Reference: PyTorch's ``torch.optim.lr_scheduler.ConstantLR``.
    """
    check.non_negative("base_lr", base_lr)
    check.in_range("factor", factor, 0.0, 1.0)
    total_iters = check.non_negative_int("total_iters", total_iters)

    # PyTorch's total_iters=0 keeps base_lr * factor: see above
    restored = base_lr * (factor if total_iters == 0 else 1.0)

    def schedule(step):
        t, _ = as_float(step)
        return jnp.where(t < total_iters, base_lr * factor, restored).astype(jnp.result_type(float))

    return schedule


def polynomial_lr(base_lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """``PolynomialLR``: ``lr_t = base_lr * (1 - min(t, total_iters) / total_iters)^power``.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        total_iters: the steps to reach 0, a positive integer.
        power: the power of the polynomial, >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> lr_scheduler.polynomial_lr(1.0, total_iters=2)(jnp.arange(4)).tolist()
        [1.0, 0.5, 0.0, 0.0]

    Reference: PyTorch's ``torch.optim.lr_scheduler.PolynomialLR``.
    """
    check.non_negative("base_lr", base_lr)
    total_iters = check.positive_int("total_iters", total_iters)
    check.non_negative("power", power)

    def schedule(step):
        _, t = as_float(step)
        remaining = numerics.fraction_left(jnp.minimum(t, total_iters), total_iters)
        return base_lr * remaining**power

    return schedule


def sequential_lr(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """``SequentialLR``: ``schedules[i]`` from ``milestones[i-1]`` on, restarted at 0 there.

    ``lr_t = schedules[i](t - milestones[i-1])`` with ``i`` the number of milestones
    ``<= t``. Give each schedule PyTorch's ``base_lr`` (the optimizer's initial lr).

    Args:
        schedules: a sequence of ``len(milestones) + 1`` schedules (callables).
        milestones: the steps at which the next schedule takes over, non-decreasing
            non-negative integers.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> warmup = lr_scheduler.linear_lr(1.0, start_factor=0.5, total_iters=2)
        >>> decay = lr_scheduler.exponential_lr(1.0, gamma=0.5)
        >>> lr_scheduler.sequential_lr([warmup, decay], [2])(jnp.arange(5)).tolist()
        [0.5, 0.75, 1.0, 0.5, 0.25]

    Reference: PyTorch's ``torch.optim.lr_scheduler.SequentialLR``.
    """
    if isinstance(schedules, str | bytes | dict) or not hasattr(schedules, "__iter__"):
        raise TypeError(f"schedules must be a sequence of schedules, got {schedules!r}")
    schedules = list(schedules)
    milestones = _validate.step_counts("milestones", milestones)
    if len(schedules) != len(milestones) + 1:
        raise ValueError(
            f"sequential_lr needs len(milestones) + 1 = {len(milestones) + 1} schedules, "
            f"got {len(schedules)}"
        )
    if sorted(milestones) != milestones or any(m < 0 for m in milestones):
        raise ValueError(f"milestones must be non-decreasing non-negative ints: {milestones}")
    for index, schedule in enumerate(schedules):
        if not callable(schedule):
            raise TypeError(f"schedules[{index}] must be a schedule (a callable)")

    def schedule(step):
        t, _ = as_float(step)
        value = schedules[0](t).astype(jnp.result_type(float))
        for milestone, later in zip(milestones, schedules[1:], strict=True):
            shifted = later(jnp.maximum(t - milestone, 0)).astype(value.dtype)
            value = jnp.where(t >= milestone, shifted, value)
        return value

    return schedule
