"""PyTorch's CyclicLR and OneCycleLR (with their momentum cycles) as gradtx schedules."""

from __future__ import annotations

import jax.numpy as jnp

from gradtx import check, numerics
from gradtx.compat import _validate
from gradtx.compat.torch.lr_scheduler._step import as_float
from gradtx.core import Schedule


def _cyclic_wave(
    start: float,
    peak: float,
    step_size_up: int,
    step_size_down: int | None,
    mode: str,
    gamma: float,
) -> Schedule:
    """CyclicLR's wave from ``start`` to ``peak`` and back, in PyTorch's operation order."""
    step_size_up = check.positive_int("step_size_up", step_size_up)
    down = step_size_up if step_size_down is None else step_size_down
    down = check.positive_int("step_size_down", down)
    check.one_of("mode", mode, ("triangular", "triangular2", "exp_range"))
    # checked in every mode (only 'exp_range' reads it), so that a mistake is not
    # carried silently into a later switch of mode; > 0 (a negative gamma gives
    # alternating signs, NaN powers), above 1 allowed as in PyTorch (growing cycles)
    _validate.number("gamma", gamma, 0.0, low_inclusive=False)
    total = float(step_size_up + down)
    ratio = step_size_up / total

    def schedule(step):
        whole, t = as_float(step)
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
    total_steps = check.positive_int("total_steps", total_steps)
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
        _, t = as_float(step)
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
