"""PyTorch's learning-rate schedulers as gradtx schedules (``torch.optim.lr_scheduler``).

Each function returns a schedule ``step -> lr`` whose value at step t (t from 0) is the
learning rate PyTorch uses for the t-th ``optimizer.step()`` when ``scheduler.step()``
follows every optimizer step (PyTorch applies the value at 0 in the scheduler's
constructor). Pass it as ``lr`` to a ``gradtx.compat.torch`` optimizer, or to any gradtx
optimizer. PyTorch computes most schedulers by a recursion on the previous lr; these are
the closed forms of the same sequences (equal up to rounding, checked against PyTorch
2.13 on recorded sequences).

The values are computed in the default float dtype (float64 when ``jax_enable_x64`` is
on, as PyTorch's Python doubles), so float64 runs match PyTorch to 1e-10; the schedules
of ``gradtx.schedules`` return float32. The periodic ones (``cyclic_lr``,
``cyclic_momentum``, ``cosine_annealing_lr``) take the position in the period from the
integer step, so float32 keeps its precision up to step 2**31 - 1.

The step is clamped into ``[0, 2**31 - 1]`` as in ``gradtx.schedules``: past it (a Python
int, or int64 under x64) is where the int32 counters stop, and a negative step, which
PyTorch never takes, is step 0 rather than an extrapolation.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from gradtx import check, numerics
from gradtx.compat import _validate
from gradtx.core import GradientTransformation, Schedule
from gradtx.schedules.plateau import reduce_on_plateau
from gradtx.schedules.steps import as_step

__all__ = [
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "cyclic_momentum",
    "exponential_lr",
    "linear_lr",
    "multistep_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "polynomial_lr",
    "reduce_lr_on_plateau",
    "sequential_lr",
    "step_lr",
]


def _as_float(step) -> tuple[jax.Array, jax.Array]:
    """The step as an int32 array in ``[0, 2**31 - 1]`` (``gradtx.schedules``' rule: a
    Python int or int64 past it is the last step the int32 counters reach, a negative
    step is step 0) and as a float in the default float dtype."""
    step = as_step(step)
    return step, step.astype(jnp.result_type(float))


def _positive_int(name: str, value) -> int:
    return check.positive_int(name, value)


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
    step_size = _positive_int("step_size", step_size)
    check.non_negative("gamma", gamma)

    def schedule(step):
        t, real = _as_float(step)
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
        t, real = _as_float(step)
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
        _, t = _as_float(step)
        return base_lr * jnp.asarray(gamma, t.dtype) ** t

    return schedule


def cosine_annealing_lr(base_lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:  # noqa: N803
    """``CosineAnnealingLR``: ``lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2``.

    Periodic past ``T_max`` (it rises back to ``base_lr`` at ``2 T_max``), as PyTorch's
    recursion is; Keras' ``CosineDecay`` and ``gradtx.schedules.cosine_decay`` hold
    ``eta_min`` instead.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        T_max: the steps from ``base_lr`` down to ``eta_min`` (half a period), a
            positive integer.
        eta_min: the lowest rate, >= 0 (above ``base_lr`` the wave is upside down, as
            in PyTorch).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> values = lr_scheduler.cosine_annealing_lr(1.0, T_max=2)(jnp.arange(5))
        >>> [round(v, 6) for v in values.tolist()]
        [1.0, 0.5, 0.0, 0.5, 1.0]

    Reference: PyTorch's ``torch.optim.lr_scheduler.CosineAnnealingLR``.
    """
    check.non_negative("base_lr", base_lr)
    T_max = _positive_int("T_max", T_max)
    _validate.number("eta_min", eta_min, 0.0)

    def schedule(step):
        whole, t = _as_float(step)
        if 2 * T_max <= numerics.INT32_MAX:
            # one period of the cosine, from the integer step: float32 rounds a step past
            # 2**24, and pi * t / T_max was a random phase at step 2e9
            t = (whole % (2 * T_max)).astype(t.dtype)
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(math.pi * t / T_max)) / 2

    return schedule


def cosine_annealing_warm_restarts(
    base_lr: float,
    T_0: int,  # noqa: N803
    T_mult: int = 1,  # noqa: N803
    eta_min: float = 0.0,
) -> Schedule:
    """``CosineAnnealingWarmRestarts`` (SGDR) stepped once per optimizer step.

    The i-th period lasts ``T_i = T_0 * T_mult^i`` steps; inside it, with ``T_cur`` the
    steps since its start, ``lr = eta_min + (base_lr - eta_min) (1 + cos(pi T_cur /
    T_i)) / 2``.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        T_0: the length of the first period, a positive integer.
        T_mult: the factor of each period's length over the previous one's, a
            positive integer.
        eta_min: the lowest rate, >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> values = lr_scheduler.cosine_annealing_warm_restarts(1.0, T_0=2, T_mult=2)
        >>> [round(v, 6) for v in values(jnp.arange(7)).tolist()]
        [1.0, 0.5, 1.0, 0.853553, 0.5, 0.146447, 1.0]

    Reference: Loshchilov & Hutter, 2017, "SGDR: Stochastic Gradient Descent with Warm
    Restarts"; PyTorch's ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``.
    """
    check.non_negative("base_lr", base_lr)
    T_0 = _positive_int("T_0", T_0)
    T_mult = _positive_int("T_mult", T_mult)
    _validate.number("eta_min", eta_min, 0.0)
    starts, lengths = [0], [T_0]
    while starts[-1] + lengths[-1] <= 2**31 - 1:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(lengths[-1] * T_mult)
        if T_mult == 1:
            break

    def schedule(step):
        t, _ = _as_float(step)
        float_dtype = jnp.result_type(float)
        if T_mult == 1:
            t_cur, t_i = t % T_0, jnp.asarray(T_0)
        else:
            # every restart that begins in the int32 range; the last one's length may
            # not fit in int32, so lengths are floats
            index = jnp.searchsorted(jnp.asarray(starts), t, side="right") - 1
            t_cur = t - jnp.asarray(starts)[index]
            t_i = jnp.asarray(lengths, float_dtype)[index]
        fraction = t_cur.astype(float_dtype) / t_i.astype(float_dtype)
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(math.pi * fraction)) / 2

    return schedule


def _cyclic_wave(
    start: float,
    peak: float,
    step_size_up: int,
    step_size_down: int | None,
    mode: str,
    gamma: float,
) -> Schedule:
    """CyclicLR's wave from ``start`` to ``peak`` and back, in PyTorch's operation order."""
    step_size_up = _positive_int("step_size_up", step_size_up)
    down = step_size_up if step_size_down is None else step_size_down
    down = _positive_int("step_size_down", down)
    check.one_of("mode", mode, ("triangular", "triangular2", "exp_range"))
    # checked in every mode (only 'exp_range' reads it), so that a mistake is not
    # carried silently into a later switch of mode; > 0 (a negative gamma gives
    # alternating signs, NaN powers), above 1 allowed as in PyTorch (growing cycles)
    _validate.number("gamma", gamma, 0.0, low_inclusive=False)
    total = float(step_size_up + down)
    ratio = step_size_up / total

    def schedule(step):
        whole, t = _as_float(step)
        if step_size_up + down <= jnp.iinfo(whole.dtype).max:
            # PyTorch's cycle = floor(1 + t / total) and x = 1 + t / total - cycle, from
            # the integer step: in float32 a step past 2**24 rounds, and x came out 10x
            # off at step 1.6e9 (float64 loses 2e-7 of x there too)
            cycle = (whole // (step_size_up + down) + 1).astype(t.dtype)
            x = (whole % (step_size_up + down)).astype(t.dtype) / total
        else:  # a cycle longer than the step's integer type counts: all in the first
            cycle, x = jnp.ones_like(t), t / total
        scale_factor = jnp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        height = (peak - start) * scale_factor
        if mode == "triangular":
            return start + height * 1.0
        if mode == "triangular2":
            return start + height * (1 / (2.0 ** (cycle - 1)))
        return start + height * jnp.asarray(gamma, t.dtype) ** t

    return schedule


def _no_cycle_momentum(scheduler: str, cycle_momentum: bool, momentum_schedule: str) -> None:
    check.boolean("cycle_momentum", cycle_momentum)
    if cycle_momentum:
        raise ValueError(
            f"cycle_momentum=True: {scheduler} gives the learning rate only; PyTorch's "
            f"{scheduler} also cycles the momentum by default, which is a second schedule "
            f"here: pass lr_scheduler.{momentum_schedule}(...) as the optimizer's "
            f"betas[0] (Adam, AdamW, NAdam, RAdam, Adamax) or momentum (SGD, RMSprop)"
        )


def cyclic_lr(
    base_lr: float,
    max_lr: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    *,
    cycle_momentum: bool = False,
) -> Schedule:
    """``CyclicLR`` (Smith, 2017): triangular cycles between ``base_lr`` and ``max_lr``.

    With ``L = step_size_up + step_size_down``, ``cycle = floor(1 + t / L)`` and ``x = 1 +
    t / L - cycle``, the height rises as ``x / r`` for ``x <= r = step_size_up / L`` and
    falls as ``(x - 1) / (r - 1)`` after; it is scaled by 1 (``'triangular'``),
    ``1 / 2^(cycle - 1)`` (``'triangular2'``) or ``gamma^t`` (``'exp_range'``).

    PyTorch's ``CyclicLR`` also cycles the momentum by default (``cycle_momentum=True``,
    between 0.8 and 0.9, inversely to the learning rate): that is ``cyclic_momentum``
    with the same steps, passed as the optimizer's ``betas[0]`` or ``momentum``. This
    schedule is the learning rate only; ``cycle_momentum=True`` is a ValueError saying so.

    Args:
        base_lr: the lowest rate, at the start of each cycle, >= 0.
        max_lr: the rate at the top of each cycle, >= 0 (below ``base_lr`` the wave is
            upside down, as in PyTorch).
        step_size_up: steps from the bottom to the top, a positive integer.
        step_size_down: steps from the top back down, a positive integer; None (the
            default) is ``step_size_up``.
        mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``.
        gamma: the per-step factor of the height in ``'exp_range'``, > 0 (PyTorch
            takes above 1 too: growing cycles); checked in every mode.
        cycle_momentum: False; True (PyTorch's default) is a ValueError pointing to
            ``cyclic_momentum``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> values = lr_scheduler.cyclic_lr(0.0, 1.0, step_size_up=2)(jnp.arange(6))
        >>> [round(v, 6) for v in values.tolist()]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.5]

    Reference: Smith, 2017, "Cyclical Learning Rates for Training Neural Networks";
    PyTorch's ``torch.optim.lr_scheduler.CyclicLR``.
    """
    check.non_negative("base_lr", base_lr)
    check.non_negative("max_lr", max_lr)
    _no_cycle_momentum("CyclicLR", cycle_momentum, "cyclic_momentum")
    return _cyclic_wave(base_lr, max_lr, step_size_up, step_size_down, mode, gamma)


def cyclic_momentum(
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
) -> Schedule:
    """The momentum ``CyclicLR`` sets with ``cycle_momentum=True`` (its default).

    The wave of ``cyclic_lr`` upside down: from ``max_momentum`` at the start of a cycle
    to ``base_momentum`` where the learning rate peaks, ``max_momentum - (max_momentum -
    base_momentum) * height``. Pass it as ``betas[0]`` of ``adam``/``adamw``/``nadam``/
    ``radam``/``adamax`` or as ``momentum`` of ``sgd``/``rmsprop`` (PyTorch sets whichever
    the optimizer has), with the ``cyclic_lr`` of the same steps as ``lr``.

    Args:
        step_size_up, step_size_down, mode, gamma: as ``cyclic_lr`` (the same steps).
        base_momentum: the momentum where the learning rate peaks, in [0, 1).
        max_momentum: the momentum at the start of each cycle, in [0, 1).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> from gradtx.compat.torch import lr_scheduler
        >>> momentum = lr_scheduler.cyclic_momentum(step_size_up=2)
        >>> [round(v, 6) for v in momentum(jnp.arange(5)).tolist()]
        [0.9, 0.85, 0.8, 0.85, 0.9]
        >>> tx = tc.sgd(lr_scheduler.cyclic_lr(0.01, 0.1, step_size_up=2), momentum=momentum)

    Reference: Smith, 2017, "Cyclical Learning Rates for Training Neural Networks"; PyTorch's
    ``torch.optim.lr_scheduler.CyclicLR``.
    """
    check.unit_interval("base_momentum", base_momentum)
    check.unit_interval("max_momentum", max_momentum)
    return _cyclic_wave(max_momentum, base_momentum, step_size_up, step_size_down, mode, gamma)


def _one_cycle_phases(
    total_steps: int,
    pct_start: float,
    anneal_strategy: str,
    values: tuple[float, float, float, float],
    three_phase: bool,
) -> Schedule:
    """OneCycleLR's phases through ``values = (start, peak, back, end)``: ``start ->
    peak -> end``, or ``start -> peak -> back -> end`` with ``three_phase``."""
    total_steps = _positive_int("total_steps", total_steps)
    check.in_range("pct_start", pct_start, 0.0, 1.0)
    check.one_of("anneal_strategy", anneal_strategy, ("cos", "linear"))
    check.boolean("three_phase", three_phase)
    start, peak, back, end = values
    if three_phase:
        phases = [
            (float(pct_start * total_steps) - 1, start, peak),
            (float(2 * pct_start * total_steps) - 2, peak, back),
            (total_steps - 1.0, back, end),
        ]
    else:
        phases = [
            (float(pct_start * total_steps) - 1, start, peak),
            (total_steps - 1.0, peak, end),
        ]

    def schedule(step):
        _, t = _as_float(step)
        t = jnp.minimum(t, total_steps - 1.0)
        value = jnp.zeros_like(t)
        for index in reversed(range(len(phases))):
            end_step, first, last = phases[index]
            begin = phases[index - 1][0] if index > 0 else 0.0
            here = t <= end_step if index < len(phases) - 1 else jnp.ones_like(t, bool)
            annealed = numerics.anneal(t, begin, end_step, first, last, anneal_strategy)
            value = jnp.where(here, annealed, value)
        return value

    return schedule


def one_cycle_lr(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
    *,
    cycle_momentum: bool = False,
) -> Schedule:
    """``OneCycleLR`` (Smith & Topin, 2019): warm up to ``max_lr``, then anneal far below.

    From ``initial = max_lr / div_factor`` to ``max_lr`` over the first ``pct_start *
    total_steps - 1`` steps, then down to ``initial / final_div_factor`` at ``total_steps
    - 1``; ``three_phase`` comes back to ``initial`` at ``2 pct_start total_steps - 2``
    before the final phase. Phases interpolate by cosine (``'cos'``) or linearly
    (``'linear'``). PyTorch raises past ``total_steps``; this schedule holds the final
    value.

    PyTorch's ``OneCycleLR`` also cycles the momentum by default (``cycle_momentum=True``:
    from 0.95 down to 0.85 while the learning rate rises, and back): that is
    ``one_cycle_momentum`` with the same steps, passed as the optimizer's ``betas[0]``
    or ``momentum``. Without it the recorded 200-step runs leave PyTorch's trajectory
    by 5e-2 of the largest parameter (AdamW) and 0.17 (SGD). This schedule is the
    learning rate only; ``cycle_momentum=True`` is a ValueError saying so.

    Args:
        max_lr: the peak rate, >= 0.
        total_steps: the length of the schedule, a positive integer (PyTorch's
            ``epochs * steps_per_epoch`` is that product).
        pct_start: the fraction of the steps spent rising, in [0, 1].
        anneal_strategy: ``'cos'`` or ``'linear'``.
        div_factor: ``max_lr / initial``, > 0.
        final_div_factor: ``initial / final``, > 0.
        three_phase: True or False; True comes back to ``initial`` before the final
            phase.
        cycle_momentum: False; True (PyTorch's default) is a ValueError pointing to
            ``one_cycle_momentum``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> schedule = lr_scheduler.one_cycle_lr(1.0, total_steps=5, pct_start=0.4,
        ...                                      anneal_strategy="linear", div_factor=4.0,
        ...                                      final_div_factor=1.0)
        >>> [round(v, 6) for v in schedule(jnp.arange(5)).tolist()]
        [0.25, 1.0, 0.75, 0.5, 0.25]

    Reference: Smith & Topin, 2019, "Super-Convergence: Very Fast Training of Neural
    Networks Using Large Learning Rates"; PyTorch's ``torch.optim.lr_scheduler.OneCycleLR``.
    """
    check.non_negative("max_lr", max_lr)
    check.positive("div_factor", div_factor)
    check.positive("final_div_factor", final_div_factor)
    _no_cycle_momentum("OneCycleLR", cycle_momentum, "one_cycle_momentum")
    initial = max_lr / div_factor
    minimum = initial / final_div_factor
    values = (initial, max_lr, initial, minimum)
    return _one_cycle_phases(total_steps, pct_start, anneal_strategy, values, three_phase)


def one_cycle_momentum(
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    three_phase: bool = False,
) -> Schedule:
    """The momentum ``OneCycleLR`` sets with ``cycle_momentum=True`` (its default).

    The phases of ``one_cycle_lr`` with the momentum moving against the learning rate:
    from ``max_momentum`` down to ``base_momentum`` where the learning rate peaks, then
    back up to ``max_momentum`` (``three_phase``: back at the end of the second phase,
    and held through the third). Pass it as ``betas[0]`` of ``adam``/``adamw``/``nadam``/
    ``radam``/``adamax`` or as ``momentum`` of ``sgd``/``rmsprop`` (PyTorch sets whichever
    the optimizer has), with the ``one_cycle_lr`` of the same steps as ``lr``.

    Args:
        total_steps, pct_start, anneal_strategy, three_phase: as ``one_cycle_lr``
            (the same steps).
        base_momentum: the momentum where the learning rate peaks, in [0, 1).
        max_momentum: the momentum at the start and the end, in [0, 1).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> from gradtx.compat.torch import lr_scheduler
        >>> momentum = lr_scheduler.one_cycle_momentum(5, pct_start=0.4,
        ...                                            anneal_strategy="linear")
        >>> [round(v, 6) for v in momentum(jnp.arange(5)).tolist()]
        [0.95, 0.85, 0.883333, 0.916667, 0.95]
        >>> tx = tc.adamw(lr_scheduler.one_cycle_lr(1e-3, 5, pct_start=0.4,
        ...                                         anneal_strategy="linear"),
        ...               betas=(momentum, 0.999))

    Reference: Smith & Topin, 2019, "Super-Convergence: Very Fast Training of Neural
    Networks Using Large Learning Rates"; PyTorch's ``torch.optim.lr_scheduler.OneCycleLR``.
    """
    check.unit_interval("base_momentum", base_momentum)
    check.unit_interval("max_momentum", max_momentum)
    values = (max_momentum, base_momentum, max_momentum, max_momentum)
    return _one_cycle_phases(total_steps, pct_start, anneal_strategy, values, three_phase)


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
    total_iters = _positive_int("total_iters", total_iters)

    def schedule(step):
        _, t = _as_float(step)
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
        t, _ = _as_float(step)
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
    total_iters = _positive_int("total_iters", total_iters)
    check.non_negative("power", power)

    def schedule(step):
        _, t = _as_float(step)
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
        t, _ = _as_float(step)
        value = schedules[0](t).astype(jnp.result_type(float))
        for milestone, later in zip(milestones, schedules[1:], strict=True):
            shifted = later(jnp.maximum(t - milestone, 0)).astype(value.dtype)
            value = jnp.where(t >= milestone, shifted, value)
        return value

    return schedule


def reduce_lr_on_plateau(
    lr: float,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
    *,
    require_value: bool = True,
) -> GradientTransformation:
    """``ReduceLROnPlateau`` with PyTorch's arguments, as a transform to chain after ``lr``.

    ``chain(gradtx.compat.torch.sgd(lr), reduce_lr_on_plateau(lr, ...))`` scales every
    step by ``lr_now / lr``; update it with ``value=metric``. It is
    ``gradtx.schedules.reduce_on_plateau`` with ``min_scale = min_lr / lr`` and ``eps /
    lr`` (PyTorch compares learning rates, the transform compares scales). The scale
    used by an update already reflects the metric passed with it: pass the metric
    PyTorch's ``scheduler.step(metric)`` received before that optimizer step. For
    PyTorch's usual loop, ``scheduler.step(val_loss)`` after each epoch, build it with
    ``require_value=False`` and pass the epoch's ``value=val_loss`` with the first update
    of the next epoch (the updates without a value keep the state); tested against
    PyTorch 2.13, float64 within 1e-10 over 60 epochs. To continue a PyTorch run, put
    ``gradtx.compat.torch.load_plateau_state(scheduler.state_dict(), lr)`` in this
    transform's place in the state ``load_state_dict`` returns. Scaling the updates is
    PyTorch's changed ``lr`` for every optimizer whose ``lr`` multiplies its step (SGD,
    Adam and the rest), not for Rprop, which reads ``lr`` once as its initial step size
    (PyTorch's plateau then changes nothing: leave it out), nor ASGD, whose step size is
    a nonlinear function of ``lr`` (0.13 and 0.057 off PyTorch over 30 epochs). A
    reduction here lasts: beside PyTorch's ``CosineAnnealingWarmRestarts``, ``CyclicLR``
    or ``OneCycleLR``, which set the rate from their base at every step, PyTorch's
    lasts one step, and ``SequentialLR`` drops it at its next milestone (no gradtx
    equivalent; docs/conventions.md, "Whole recipes").

    Args:
        lr: the optimizer's learning rate, > 0.
        mode: ``'min'`` (the metric should fall) or ``'max'``.
        factor: the rate is multiplied by it at a reduction, in [0, 1).
        patience: bad epochs tolerated; the reduction comes at the next one, an
            integer >= 0.
        threshold: the improvement that counts, >= 0.
        threshold_mode: ``'rel'`` (``best * (1 -+ threshold)``) or ``'abs'``
            (``best -+ threshold``).
        cooldown: epochs after a reduction before bad epochs count again, an integer
            >= 0.
        min_lr: the rate is never reduced below it, >= 0.
        eps: a reduction smaller than eps (in learning rate) is skipped, >= 0.
        require_value: True or False; False lets updates come without ``value`` (they
            keep the state).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> from gradtx.compat import torch as tc
        >>> tx = gtx.chain(tc.sgd(0.1), tc.lr_scheduler.reduce_lr_on_plateau(0.1, patience=0))
        >>> params = jnp.zeros(1)
        >>> state = tx.init(params)
        >>> u, state = tx.update(jnp.ones(1), state, params, value=1.0)
        >>> u, state = tx.update(jnp.ones(1), state, params, value=2.0)
        >>> [round(float(x), 6) for x in u]
        [-0.01]

    Reference: PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau``.
    """
    check.positive("lr", lr)
    check.non_negative("min_lr", min_lr)
    check.non_negative("eps", eps)
    check.boolean("require_value", require_value)
    return reduce_on_plateau(
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_scale=min_lr / lr,
        mode=mode,
        eps=eps / lr,
        require_value=require_value,
    )
