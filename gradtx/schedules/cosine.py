"""Cosine schedules: cosine decay, linear warmup then cosine decay, and SGDR restarts."""

from __future__ import annotations

import math

import jax.numpy as jnp

from gradtx import check, numerics
from gradtx.core import Schedule
from gradtx.schedules.steps import as_step, as_value, check_count


def _half_cosine_of_steps(done, total):
    """``(1 + cos(pi * done / total)) / 2`` for integer steps ``0 <= done <= total``, from
    the steps left (``numerics.half_cosine_left``: no cancellation near the end)."""
    return numerics.half_cosine_left(numerics.fraction_left(done, total))


def cosine_decay(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """Cosine decay from ``init_value`` to ``alpha * init_value``, then constant::

        c(t) = (1 + cos(pi * min(t, decay_steps) / decay_steps)) / 2
        v(t) = init_value * ((1 - alpha) * c(t)^exponent + alpha)

    The equation of Optax's ``cosine_decay_schedule`` and Keras' ``CosineDecay`` (in
    float32 within a few ulps of the peak, closer to float64 near the end: see
    docs/schedules.md); for
    t <= T_max, PyTorch's ``CosineAnnealingLR(T_max=decay_steps, eta_min=alpha *
    init_value)``. Past ``decay_steps`` this schedule (like Optax and Keras) stays at
    its end value, whereas PyTorch's cosine is periodic and climbs back up; use
    ``sgdr`` for restarts.

    Args:
        init_value: the value at step 0.
        decay_steps: steps of the decay, a positive integer.
        alpha: the final value as a fraction of ``init_value``, in [0, 1].
        exponent: raises the cosine factor to this power, > 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.cosine_decay(1.0, decay_steps=4)
        >>> [round(v, 4) for v in schedule(jnp.arange(6)).tolist()]
        [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]

    Reference: Loshchilov & Hutter, 2017, "SGDR: Stochastic Gradient Descent with Warm
    Restarts".
    """
    check.number("init_value", init_value)
    decay_steps = check_count("decay_steps", decay_steps)
    check.in_range("alpha", alpha, 0.0, 1.0)
    check.positive("exponent", exponent)

    def schedule(step):
        factor = _half_cosine_of_steps(jnp.minimum(as_step(step), decay_steps), decay_steps)
        factor = factor**exponent
        return as_value(init_value * ((1 - alpha) * factor + alpha))

    return schedule


def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to
    ``end_value``::

        W = warmup_steps, D = decay_steps - warmup_steps
        v(t) = init_value + (peak_value - init_value) * t / W               for t < W
        v(t) = end_value + (peak_value - end_value)
               * ((1 + cos(pi * min(t - W, D) / D)) / 2)^exponent           for t >= W

    ``decay_steps`` counts the whole schedule, warmup included (Optax's convention).
    The equation of Optax's ``warmup_cosine_decay_schedule`` (float32: see
    docs/schedules.md).

    Args:
        init_value: the value at step 0 (unused when ``warmup_steps=0``: step 0 is then
            at ``peak_value``).
        peak_value: the value at the end of the warmup.
        warmup_steps: steps of linear warmup, a non-negative integer (0: no warmup).
        decay_steps: total length of warmup and decay, an integer > ``warmup_steps``.
        end_value: the value from ``decay_steps`` on.
        exponent: raises the cosine factor to this power, > 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.warmup_cosine_decay(0.0, 1.0, warmup_steps=2, decay_steps=4)
        >>> [round(v, 4) for v in schedule(jnp.arange(6)).tolist()]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]

    Reference: Loshchilov & Hutter, 2017, "SGDR: Stochastic Gradient Descent with Warm
    Restarts" (the cosine); ``optax.warmup_cosine_decay_schedule`` (the same equation).
    """
    check.number("init_value", init_value)
    check.number("peak_value", peak_value)
    warmup_steps = check_count("warmup_steps", warmup_steps, minimum=0)
    decay_steps = check_count("decay_steps", decay_steps)
    check.number("end_value", end_value)
    check.positive("exponent", exponent)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"decay_steps must be greater than warmup_steps={warmup_steps} (it counts the "
            f"warmup too), got {decay_steps!r}"
        )
    cosine_steps = decay_steps - warmup_steps

    def schedule(step):
        t = as_step(step)
        since_peak = jnp.clip(t - warmup_steps, 0, cosine_steps)
        # peak * c + end * (1 - c), each weight computed directly: end + (peak - end) * c
        # cancels near the peak when |end| >> |peak| (0.8% off the peak itself)
        left = numerics.fraction_left(since_peak, cosine_steps)
        done = numerics.fraction_done(since_peak, cosine_steps)
        factor = numerics.half_cosine_left(left) ** exponent
        if not numerics.is_traced(exponent) and exponent == 1:
            complement = numerics.half_cosine_left(done)  # 1 - c = sin(pi x / 2)^2
        else:  # 1 - c^exponent: as written where it is >= 1/2, else from 1 - c
            # log1p(-1) = -inf once the cosine has ended, where this branch is not taken:
            # kept out of it, or a gradient with respect to a traced exponent is NaN there
            gone = jnp.where(factor < 0.5, 0, numerics.half_cosine_left(done))
            near_peak = -jnp.expm1(exponent * jnp.log1p(-gone))
            complement = jnp.where(factor < 0.5, 1 - factor, near_peak)
        value = peak_value * factor + end_value * complement
        if warmup_steps > 0:
            # init * (1 - t / W) + peak * t / W, both weights direct: no cancellation
            # where |init| >> |peak| (a warmup down from 1.2 to 5e-4 was 2e-4 off)
            rising = jnp.minimum(t, warmup_steps)
            warmup = init_value * numerics.fraction_left(rising, warmup_steps)
            warmup = warmup + peak_value * numerics.fraction_done(rising, warmup_steps)
            value = jnp.where(t < warmup_steps, warmup, value)
        return as_value(value)

    return schedule


def _restart_starts(first_period: int, period_mult: int) -> list[int]:
    """The first step of every restart that begins within the int32 range."""
    starts, start, period = [0], first_period, first_period * period_mult
    while start <= numerics.INT32_MAX:
        starts.append(start)
        start, period = start + period, period * period_mult
    return starts


_MAX_TABULATED_RESTARTS = 2**16


def _fractional_restarts(first_period: int, ratio: float) -> tuple[list, list, int | None]:
    """The restarts of a fractional ``period_mult`` that begin within the int32 range
    (the first ``_MAX_TABULATED_RESTARTS``): restart i starts at the real ``s_i = T_0
    (m^i - 1) / (m - 1)``, computed in double; its first step is the first integer at or
    after ``s_i`` (a start within rounding of an integer begins there: 10 * (1.2^2 - 1)
    / 0.2 is 22 in exact arithmetic, not 22.000000000000004). Returns the first steps
    and lengths, and the first step past the table (None when the table holds every
    restart)."""

    def start_of(i):
        return first_period * (ratio**i - 1) / (ratio - 1)

    def first_step(start):
        return math.ceil(start - 1e-12 * max(start, 1.0))

    begins, periods = [], []
    for i in range(_MAX_TABULATED_RESTARTS):
        start = start_of(i)
        if start > numerics.INT32_MAX:
            return begins, periods, None
        begins.append(first_step(start))
        periods.append(first_period * ratio**i)
    end = start_of(_MAX_TABULATED_RESTARTS)
    return begins, periods, first_step(end) if end <= numerics.INT32_MAX else None


def sgdr(
    init_value: float,
    first_period: int,
    period_mult: float = 1,
    min_value: float = 0.0,
    peak_decay: float = 1.0,
) -> Schedule:
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter, 2017)::

        restart i lasts T_i = first_period * period_mult^i steps;
        t_cur = steps since restart i began
        v(t) = min_value + (init_value - min_value) * peak_decay^i
               * (1 + cos(pi * t_cur / T_i)) / 2

    Same numbers as PyTorch's ``CosineAnnealingWarmRestarts(T_0=first_period,
    T_mult=period_mult, eta_min=min_value)`` (``peak_decay=1``) and Keras'
    ``CosineDecayRestarts(init_value, first_decay_steps=first_period, t_mul=period_mult,
    m_mul=peak_decay, alpha=min_value / init_value)``. An integer ``period_mult`` finds
    the restart with exact integer arithmetic. A fractional one (Keras allows 1.5, say)
    makes periods of ``T_0 m^i`` real steps: restart i begins at the first step at or
    after ``T_0 (m^i - 1) / (m - 1)``, from a table computed in double precision (for
    the first 65,536 restarts: every one below 2**31 steps when ``period_mult`` >=
    1.0002; later ones from the closed form ``i = floor(log(1 + t (m - 1) / T_0) / log
    m)`` in float32). Keras computes that closed form in float32 at every step and can
    put a restart a step late (``first_decay_steps=10, t_mul=1.2``: 0.0 at step 22,
    where the third period begins at 1.0); ``gradtx.compat.keras.cosine_decay_restarts``
    reproduces Keras op for op.

    ``t_cur`` and the periods count steps (updates). The paper counts them in epochs and
    advances ``T_cur`` by a fraction at each batch: the same curve, with ``first_period``
    = its ``T_0`` times the steps per epoch (PyTorch's scheduler stepped each batch
    likewise). A period ends one step before its restart, just above ``min_value``; the
    value at ``T_cur = T_i`` itself, ``min_value``, is never used (nor in PyTorch).

    Args:
        init_value: the value at the start of the first restart.
        first_period: length of the first restart, a positive integer.
        period_mult: each restart is this many times longer than the last, a Python
            number >= 1 (static: it decides where the restarts fall).
        min_value: the value every restart decays towards.
        peak_decay: each restart starts this many times lower than the last, >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import schedules
        >>> schedule = schedules.sgdr(1.0, first_period=2, period_mult=2)
        >>> [round(v, 4) for v in schedule(jnp.arange(7)).tolist()]
        [1.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0]

    Reference: Loshchilov & Hutter, 2017, "SGDR: Stochastic Gradient Descent with Warm
    Restarts".
    """
    check.number("init_value", init_value)
    first_period = check_count("first_period", first_period)
    check.in_range("period_mult", period_mult, 1.0, None)
    check.number("min_value", min_value)
    check.non_negative("peak_decay", peak_decay)
    period_mult = float(period_mult)

    # restart_position(t) gives the restart and the fraction of its period left, from
    # the integer steps left where they are exact: the cosine from the end, without the
    # cancellation of 1 + cos(pi x) (numerics.half_cosine_left)
    if period_mult == 1.0:

        def restart_position(t):
            restart = t // first_period
            return restart, numerics.fraction_left(t - restart * first_period, first_period)

    elif period_mult.is_integer():
        starts = _restart_starts(first_period, int(period_mult))
        periods = [first_period * int(period_mult) ** i for i in range(len(starts))]
        # the last period may end past int32: its steps left are counted from int32 max
        ends = [min(s + p, numerics.INT32_MAX) for s, p in zip(starts, periods, strict=True)]
        past_ends = [s + p - e for s, p, e in zip(starts, periods, ends, strict=True)]

        def restart_position(t):
            restart = jnp.zeros_like(t)
            for start in starts[1:]:
                restart = restart + (t >= start).astype(jnp.int32)
            steps_left = (jnp.asarray(ends, jnp.int32)[restart] - t).astype(jnp.float32)
            steps_left = steps_left + jnp.asarray(past_ends, jnp.float32)[restart]
            return restart, steps_left / jnp.asarray(periods, jnp.float32)[restart]

    else:
        ratio = period_mult
        begins, periods, table_end = _fractional_restarts(first_period, ratio)

        def start_of(restart):
            return first_period * (ratio**restart - 1) / (ratio - 1)

        # restart i ends at the real s_{i+1}: steps left = (an integer step near it - t)
        # + the remainder, both exact in float32 where they are small
        real_ends = [start_of(i + 1) for i in range(len(begins))]
        anchors = [min(math.floor(end), numerics.INT32_MAX) for end in real_ends]
        past_anchors = [end - anchor for end, anchor in zip(real_ends, anchors, strict=True)]

        def start_of_float32(restart):
            # m^i - 1 as expm1(i log m), log m in double: float32(m)^i carries the
            # rounding of m i times (a start 180 steps off at m = 1.00001, i = 67,000)
            return first_period * jnp.expm1(restart * math.log(ratio)) / (ratio - 1)

        def closed_form(t):
            t = t.astype(jnp.float32)
            guess = jnp.floor(jnp.log1p(t * (ratio - 1) / first_period) / math.log(ratio))
            # log rounding may put a step at a boundary into the neighbouring restart
            guess = jnp.where(t < start_of_float32(guess), guess - 1, guess)
            restart = jnp.where(t >= start_of_float32(guess + 1), guess + 1, guess)
            period = first_period * jnp.exp(restart * math.log(ratio))
            fraction = (t - start_of_float32(restart)) / period
            return restart.astype(jnp.int32), 1 - fraction

        def restart_position(t):
            table = jnp.asarray(begins, jnp.int32)
            restart = (jnp.searchsorted(table, t, side="right") - 1).astype(jnp.int32)
            steps_left = (jnp.asarray(anchors, jnp.int32)[restart] - t).astype(jnp.float32)
            steps_left = steps_left + jnp.asarray(past_anchors, jnp.float32)[restart]
            left = jnp.clip(steps_left / jnp.asarray(periods, jnp.float32)[restart], 0, 1)
            if table_end is None:
                return restart, left
            late_restart, late_left = closed_form(t)
            late = t >= table_end
            return jnp.where(late, late_restart, restart), jnp.where(late, late_left, left)

    def schedule(step):
        restart, left = restart_position(as_step(step))
        peak = numerics.power(peak_decay, restart.astype(jnp.float32))
        cosine = numerics.half_cosine_left(left)
        return as_value(min_value + (init_value - min_value) * peak * cosine)

    return schedule
