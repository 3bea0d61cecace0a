"""Schedules that rise and fall: cyclical learning rates, 1cycle, the transformer's
warmup ("noam") and warmup-stable-decay."""

from __future__ import annotations

import math

import jax.numpy as jnp

from gradtx import check, numerics
from gradtx.core import Schedule
from gradtx.schedules.steps import as_step, as_value, check_count


def cyclical(
    base_value: float,
    max_value: float,
    step_size_up: int,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> Schedule:
    """Cyclical learning rate (Smith, 2017): a triangle wave between two values::

        T    = step_size_up + step_size_down;   k = floor(t / T);   p = t mod T
        x    = p / step_size_up                   if p <= step_size_up
               (T - p) / step_size_down           otherwise
        v(t) = base_value + (max_value - base_value) * x * a(t)

    with the amplitude ``a = 1`` (``'triangular'``), ``a = 2^-k`` (``'triangular2'``:
    halved every cycle) or ``a = gamma^t`` (``'exp_range'``, t the iteration, as in the
    paper). Smith's own equations, ``cycle = floor(1 + t / (2 s))``, ``x = |t / s - 2
    cycle + 1|`` and ``v = base + (max - base) * max(0, 1 - x) * a``, are this with
    ``step_size_up = step_size_down = s``; separate up and down lengths are PyTorch's.
    Same numbers as PyTorch's ``CyclicLR(base_lr, max_lr, step_size_up, step_size_down,
    mode, gamma)`` (its momentum cycling is a separate schedule: pass the mirrored values
    to the momentum, as ``gradtx.compat.torch.lr_scheduler.cyclic_momentum`` does).

    Args:
        base_value: the value at the bottom of each cycle.
        max_value: the value at the top of the first cycle.
        step_size_up: steps from bottom to top, a positive integer.
        step_size_down: steps from top to bottom, a positive integer (default: the
            same as ``step_size_up``).
        mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``.
        gamma: the per-step decay of the amplitude in ``'exp_range'``, in (0, 1].

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.cyclical(0.0, 1.0, step_size_up=2, mode="triangular2")
        >>> schedule(jnp.arange(9)).tolist()
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.25, 0.5, 0.25, 0.0]

    Reference: Smith, 2017, "Cyclical Learning Rates for Training Neural Networks".
    """
    check.number("base_value", base_value)
    check.number("max_value", max_value)
    step_size_up = check_count("step_size_up", step_size_up)
    if step_size_down is None:
        step_size_down = step_size_up
    step_size_down = check_count("step_size_down", step_size_down)
    check.one_of("mode", mode, ("triangular", "triangular2", "exp_range"))
    check.in_range("gamma", gamma, 0.0, 1.0, low_inclusive=False)
    cycle_steps = step_size_up + step_size_down
    check_count("step_size_up + step_size_down", cycle_steps)

    def schedule(step):
        t = as_step(step)
        cycle, position = t // cycle_steps, t % cycle_steps
        rising = position.astype(jnp.float32) / step_size_up
        falling = (cycle_steps - position).astype(jnp.float32) / step_size_down
        height = jnp.where(position <= step_size_up, rising, falling)
        if mode == "triangular":
            amplitude = 1.0
        elif mode == "triangular2":
            amplitude = jnp.exp2(-cycle.astype(jnp.float32))
        else:
            amplitude = numerics.power(gamma, t.astype(jnp.float32))
        return as_value(base_value + (max_value - base_value) * height * amplitude)

    return schedule


def one_cycle(
    total_steps: int,
    max_value: float,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """The 1cycle policy (Smith & Topin, 2019): up to ``max_value``, then far below the
    start, by cosine or linear annealing between phase ends::

        initial = max_value / div_factor;   final = initial / final_div_factor
        two phases:   initial -> max_value   over steps [0, pct_start * total_steps - 1]
                      max_value -> final      up to step total_steps - 1
        three phases: initial -> max_value   over [0, pct_start * total_steps - 1]
                      max_value -> initial   up to 2 * pct_start * total_steps - 2
                      initial -> final       up to total_steps - 1

    Within a phase from step s0 to s1, ``x = (t - s0) / (s1 - s0)`` and the value is
    ``end + (start - end) * (1 + cos(pi x)) / 2`` (``'cos'``) or ``start + (end -
    start) * x`` (``'linear'``). Same numbers as PyTorch's ``OneCycleLR`` (with its
    momentum cycling left to a separate schedule). PyTorch raises past
    ``total_steps``; this schedule stays at ``final``.

    The defaults (two cosine phases, ``div_factor=25``, ``final_div_factor=1e4``) are
    PyTorch's, after fast.ai's, not the paper's. The paper's 1cycle (Smith & Topin, 2019;
    Smith, 2018, "A disciplined approach to neural network hyper-parameters: Part 1")
    is ``three_phase=True, anneal_strategy='linear'``: a linear rise and a symmetric
    linear fall back to ``initial``, then the final "annihilation" several orders of
    magnitude below it. Its momentum, cycled inversely from 0.95 down to 0.85 and back,
    is not offered here: pass ``gradtx.compat.torch.lr_scheduler.one_cycle_momentum``
    (the same phases) as the optimizer's momentum.

    Args:
        total_steps: length of the cycle, a positive integer.
        max_value: the peak value.
        pct_start: the fraction of the steps spent rising, in (0, 1) (a Python number:
            it places the phases). Every phase needs a step: ``pct_start * total_steps
            > 1``, and with ``three_phase`` also ``2 * pct_start * total_steps <
            total_steps + 1``; otherwise a ValueError (``total_steps=1`` never fits).
            PyTorch's ``OneCycleLR`` takes such phases (``lr_scheduler.one_cycle_lr``).
        anneal_strategy: ``'cos'`` or ``'linear'``.
        div_factor: ``initial = max_value / div_factor``, > 0.
        final_div_factor: ``final = initial / final_div_factor``, > 0.
        three_phase: come back down to ``initial`` before annealing to ``final``
            (the paper's shape; fast.ai's, the default, has two phases).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.one_cycle(5, 1.0, pct_start=0.6, anneal_strategy="linear",
        ...                                div_factor=4.0, final_div_factor=2.5)
        >>> [round(v, 6) for v in schedule(jnp.arange(5)).tolist()]
        [0.25, 0.625, 1.0, 0.55, 0.1]

    Reference: Smith & Topin, 2019, "Super-Convergence: Very Fast Training of Neural
    Networks Using Large Learning Rates".
    """
    total_steps = check_count("total_steps", total_steps)
    check.number("max_value", max_value)
    check.in_range("pct_start", pct_start, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check.one_of("anneal_strategy", anneal_strategy, ("cos", "linear"))
    check.positive("div_factor", div_factor)
    check.positive("final_div_factor", final_div_factor)
    check.boolean("three_phase", three_phase)
    initial = max_value / div_factor
    final = initial / final_div_factor
    # Phase ends are PyTorch's float expressions, so its steps fall into the same phases.
    rise_end = float(pct_start * total_steps) - 1
    if three_phase:
        phases = [
            (0.0, rise_end, initial, max_value),
            (rise_end, float(2 * pct_start * total_steps) - 2, max_value, initial),
        ]
        phases.append((phases[-1][1], float(total_steps - 1), initial, final))
    else:
        phases = [
            (0.0, rise_end, initial, max_value),
            (rise_end, float(total_steps - 1), max_value, final),
        ]
    for begin, end, _, _ in phases:
        if not end > begin:
            raise ValueError(
                f"pct_start={pct_start!r} and total_steps={total_steps!r} leave a phase of "
                f"one_cycle with no steps (phase from step {begin} to {end}); raise "
                f"total_steps or move pct_start away from 0 and 1"
            )

    def anneal(t, begin, end, start_value, end_value):
        # t - begin and end - t from integer differences: in float32 a step above 2**24
        # rounds to up to 128 steps, which put the last step of a one-step final phase
        # (three_phase, pct_start=0.5, 1.3e9 steps) at the second phase's end: max_value
        # instead of the final value
        first, last = math.floor(begin), math.floor(end)
        done = (t - first).astype(jnp.float32) - (begin - first)
        left = (last - t).astype(jnp.float32) + (end - last)
        return numerics.anneal_fractions(
            done / (end - begin), left / (end - begin), start_value, end_value, anneal_strategy
        )

    def schedule(step):
        t = jnp.minimum(as_step(step), total_steps - 1)
        value = anneal(t, *phases[-1])
        for phase in reversed(phases[:-1]):
            value = jnp.where(t <= math.floor(phase[1]), anneal(t, *phase), value)
        return as_value(value)

    return schedule


def noam(d_model: int, warmup_steps: int, factor: float = 1.0) -> Schedule:
    """The transformer's learning rate (Vaswani et al., 2017, eq. 3), "noam"::

        s    = t + 1
        v(t) = factor * d_model^-0.5 * min(s^-0.5, s * warmup_steps^-1.5)

    It rises linearly for ``warmup_steps`` steps, peaks at ``factor / sqrt(d_model *
    warmup_steps)``, then decays as ``1 / sqrt(s)``. The paper counts steps from 1,
    hence ``s = t + 1``. With ``d_model=512``, ``warmup_steps=4000`` and ``factor=1``
    the rate grows by 1.7e-7 a step to a peak of about 7e-4 at step 4000 (2e-3 for
    ``d_model=64``): a short run with the paper's settings spends most of its steps far
    below a usual Adam rate, which is why a copied "noam" schedule often trains too
    slowly.

    Args:
        d_model: the model width, a positive integer.
        warmup_steps: steps of warmup, a positive integer.
        factor: multiplies the whole schedule, > 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.noam(d_model=4, warmup_steps=4)
        >>> schedule(jnp.array([0, 3, 15])).tolist()
        [0.0625, 0.25, 0.125]

    Reference: Vaswani et al., 2017, "Attention Is All You Need", sec. 5.3.
    """
    d_model = check_count("d_model", d_model)
    warmup_steps = check_count("warmup_steps", warmup_steps)
    check.positive("factor", factor)

    def schedule(step):
        s = as_step(step).astype(jnp.float32) + 1
        rise = s * float(warmup_steps) ** -1.5
        return as_value(factor * float(d_model) ** -0.5 * jnp.minimum(s**-0.5, rise))

    return schedule


def warmup_stable_decay(
    peak_value: float,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    init_value: float = 0.0,
    end_value: float = 0.0,
    decay_shape: str = "linear",
) -> Schedule:
    """Warmup-stable-decay ("trapezoidal"; Hägele et al., 2024): linear warmup, a long
    constant phase, then a short cooldown::

        W = warmup_steps, S = stable_steps, D = decay_steps
        v(t) = init_value + (peak_value - init_value) * t / W        for t < W
        x    = clip(t - W - S, 0, D) / D                              for t >= W
        v(t) = end_value + (peak_value - end_value) * f(x)

    with the cooldown shape ``f(x) = 1 - x`` (``'linear'``), ``(1 + cos(pi x)) / 2``
    (``'cosine'``) or ``1 - sqrt(x)`` (``'1-sqrt'``, the paper's best). The stable phase
    lets a run be extended, or checkpoints branched into cooldowns, without committing
    to a length up front as a cosine schedule does. The paper sizes the cooldown as a
    fraction of the run (10-20% of its steps); here it is a number of steps: ``D =
    round(fraction * total_steps)``, ``S = total_steps - W - D``.

    Args:
        peak_value: the value of the stable phase.
        warmup_steps: steps of linear warmup, a non-negative integer.
        stable_steps: steps at ``peak_value``, a non-negative integer.
        decay_steps: steps of cooldown, a positive integer.
        init_value: the value at step 0 (unused when ``warmup_steps=0``: step 0 is
            then at ``peak_value``).
        end_value: the value from ``W + S + D`` on.
        decay_shape: ``'linear'``, ``'cosine'`` or ``'1-sqrt'``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.warmup_stable_decay(1.0, 2, 2, 4, decay_shape="1-sqrt")
        >>> [round(v, 4) for v in schedule(jnp.arange(10)).tolist()]
        [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.2929, 0.134, 0.0, 0.0]

    Reference: Hägele et al., 2024, "Scaling Laws and Compute-Optimal Training Beyond
    Fixed Training Durations".
    """
    check.number("peak_value", peak_value)
    warmup_steps = check_count("warmup_steps", warmup_steps, minimum=0)
    stable_steps = check_count("stable_steps", stable_steps, minimum=0)
    decay_steps = check_count("decay_steps", decay_steps)
    check.number("init_value", init_value)
    check.number("end_value", end_value)
    check.one_of("decay_shape", decay_shape, ("linear", "cosine", "1-sqrt"))
    decay_begin = warmup_steps + stable_steps
    if decay_begin > numerics.INT32_MAX:
        raise ValueError(
            f"warmup_steps + stable_steps must be at most {numerics.INT32_MAX} (int32), got "
            f"{decay_begin}"
        )

    def schedule(step):
        t = as_step(step)
        s = jnp.clip(t - decay_begin, 0, decay_steps)
        # x and 1 - x each computed directly, exact at both ends: under jit 1 - (1 - x)
        # was 6e-8 in the stable phase, and 1 - sqrt(6e-8) put it 2.4e-4 below the peak
        x, left = numerics.fraction_done(s, decay_steps), numerics.fraction_left(s, decay_steps)
        # peak * f(x) + end * (1 - f(x)), each weight computed directly: end + (peak -
        # end) * f cancels near the peak when |end| >> |peak|
        if decay_shape == "linear":
            remaining, gone = left, x
        elif decay_shape == "cosine":
            remaining, gone = numerics.half_cosine_left(left), numerics.half_cosine_left(x)
        else:  # 1 - sqrt(x), without its cancellation near x = 1
            remaining, gone = left / (1 + jnp.sqrt(x)), jnp.sqrt(x)
        value = peak_value * remaining + end_value * gone
        if warmup_steps > 0:
            # init * (1 - t / W) + peak * t / W, both weights direct: no cancellation
            # where |init| >> |peak| (a warmup down from 1.2 to 5e-4 was 2e-4 off)
            rising = jnp.minimum(t, warmup_steps)
            warmup = init_value * numerics.fraction_left(rising, warmup_steps)
            warmup = warmup + peak_value * numerics.fraction_done(rising, warmup_steps)
            value = jnp.where(t < warmup_steps, warmup, value)
        return as_value(value)

    return schedule
