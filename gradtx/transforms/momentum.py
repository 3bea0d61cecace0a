"""Momentum: the heavy-ball buffer, Nesterov's accelerated gradient, moving averages."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation, Updates


class TraceState(NamedTuple):
    """The state of ``trace`` (without ``dampening``).

    Attributes:
        trace: the momentum buffer, a tree like the params in ``accumulator_dtype``
            (None: the parameter dtype), initially 0.
    """

    trace: Updates


class DampenedTraceState(NamedTuple):
    """The state of ``trace(dampening=...)``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (the first update is not
            dampened).
        trace: the momentum buffer, a tree like the params in ``accumulator_dtype``
            (None: the parameter dtype), initially 0.
    """

    count: jax.Array
    trace: Updates


def trace(
    decay: float | jax.Array,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    dampening: float | jax.Array | None = None,
) -> GradientTransformation:
    r"""Heavy-ball momentum: a buffer of past gradients decayed by ``decay``.

    ::

        b_t = g_t + decay * b_{t-1}            (b_0 = 0)
        u_t = b_t                              (nesterov=False: Polyak's heavy ball)
        u_t = g_t + decay * b_t                (nesterov=True: see nesterov_lookahead)

    The buffer holds raw gradients; multiply by ``-learning_rate`` afterwards in the
    chain. Same numbers as ``optax.trace`` and as PyTorch's SGD momentum with
    ``dampening=0`` (PyTorch sets ``b_1 = g_1``, which is the same since ``b_0 = 0``).
    Keras puts the learning rate inside the buffer (``v = mu v - lr g``); that is the
    same map only while the learning rate is constant (see ``gradtx.compat.keras``).

    With ``dampening`` given (PyTorch's SGD), the gradient entering the buffer is
    scaled by ``1 - dampening`` except on the first update::

        b_1 = g_1;   b_t = decay * b_{t-1} + (1 - dampening) * g_t   (t > 1)

    Args:
        decay: the momentum coefficient, in [0, 1).
        nesterov: return ``g_t + decay * b_t`` (Nesterov's momentum, Sutskever et al.
            2013 form) instead of ``b_t``.
        accumulator_dtype: dtype of the buffer (e.g. ``jnp.bfloat16`` to save
            memory); None keeps the parameter dtype. The buffer is updated in the wider
            of it and the compute dtype (at least float32): a float64 buffer for
            float32 gradients accumulates in float64. Updates keep the gradient dtype.
        dampening: PyTorch's dampening, in [0, 1]; None (the default) is Optax's
            form. Giving it adds a step count to the state.

    State: ``TraceState(trace)``, or ``DampenedTraceState(count, trace)`` with
    ``dampening``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.trace(0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> u.tolist()  # 1 + 0.5 * 1
        [1.5]

    Reference: Polyak, 1964, "Some methods of speeding up the convergence of iteration
    methods"; Qian, 1999, "On the momentum term in gradient descent learning algorithms".
    """
    check.unit_interval("decay", decay)
    check.dtype_or_none("accumulator_dtype", accumulator_dtype)
    check.boolean("nesterov", nesterov)
    dampened = dampening is not None
    if dampened:
        check.in_range("dampening", dampening, 0.0, 1.0)

    def init(params):
        buffer = tree.zeros_like(params, accumulator_dtype)
        if dampened:
            return DampenedTraceState(count=jnp.zeros([], jnp.int32), trace=buffer)
        return TraceState(trace=buffer)

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("trace", state, DampenedTraceState if dampened else TraceState)
        # read here, not in `leaf`: a closure holding `state` hands every leaf of the
        # buffer to each eager kernel call as an argument (1,000 on 1,000 leaves)
        count = state.count if dampened else None

        def leaf(g, b):
            # A buffer wider than the update (accumulator_dtype=float64 for float32
            # updates) accumulates in its own precision, not rounded to the update's at
            # every step; a narrower one (bfloat16) in the compute dtype (float32).
            dtype = numerics.promote_types(numerics.compute_dtype(g.dtype), b.dtype)
            mu = numerics.factor(decay, dtype)
            g_ = g.astype(dtype)
            if dampened:
                g_in = jnp.where(count == 0, g_, (1 - numerics.factor(dampening, dtype)) * g_)
                b_new = mu * b.astype(dtype) + g_in
            else:
                b_new = g_ + mu * b.astype(dtype)
            b_new = numerics.as_stored(b_new, b.dtype, g.dtype)
            u = g_ + mu * b_new if nesterov else b_new
            return u.astype(g.dtype), b_new.astype(b.dtype)

        updates, buffer = tree.map_unzip(leaf, updates, state.trace, outputs=2, updates_first=True)
        if dampened:
            return updates, DampenedTraceState(numerics.safe_increment(state.count), buffer)
        return updates, TraceState(trace=buffer)

    return GradientTransformation(
        init, tree.updates_from_first_map(update, returns_product=False, takes_sum_before=True)
    )


def nesterov_lookahead(
    decay: float | jax.Array, *, accumulator_dtype: Any = None
) -> GradientTransformation:
    r"""Nesterov's accelerated gradient, in the form of Sutskever et al. (2013).

    Sutskever, Martens, Dahl & Hinton write Nesterov's method as a momentum step that
    evaluates the gradient at the look-ahead point ``theta + mu v``::

        v_{t+1}     = mu v_t - lr grad f(theta_t + mu v_t)
        theta_{t+1} = theta_t + v_{t+1}

    which needs the gradient at a point other than the parameters. Reparametrise on the
    look-ahead point ``phi_t = theta_t + mu v_t`` (so ``g_t = grad f(phi_t)`` is the
    ordinary gradient of the parameters the model holds)::

        phi_{t+1} = theta_{t+1} + mu v_{t+1} = phi_t - mu v_t + (1 + mu) v_{t+1}
                  = phi_t + mu^2 v_t - (1 + mu) lr g_t

    and write the velocity as a buffer of raw gradients, ``v_t = -lr b_t`` (exact
    while lr is constant)::

        b_{t+1}   = mu b_t + g_t
        phi_{t+1} = phi_t - lr (mu^2 b_t + (1 + mu) g_t) = phi_t - lr (g_t + mu b_{t+1})

    That is ``trace(decay, nesterov=True)`` followed by ``-lr``: this function returns
    exactly that transform, so the two are interchangeable in a chain (and in a
    checkpoint). With ``v_0 = 0``, ``phi_0 = theta_0``: the iterates are the look-ahead
    points of the original method. PyTorch's ``SGD(nesterov=True)`` is the same map.

    It is momentum on whatever reaches it: after ``scale_by_adam`` it puts a heavy-ball
    buffer on Adam's direction (steps up to ``1 / (1 - decay)`` times larger), which is
    not NAdam. NAdam is ``scale_by_adam(nesterov=True)`` (Optax's form, a constant
    momentum) or ``scale_by_nadam_schedule`` (Dozat's momentum schedule: PyTorch, Keras).

    Args:
        decay: the momentum coefficient ``mu``, in [0, 1).
        accumulator_dtype: dtype of the buffer; None keeps the parameter dtype.

    State: ``TraceState(trace)``, the buffer ``b``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.nesterov_lookahead(0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> u.tolist()  # g + mu * (mu * 0 + g)
        [1.5]

    Reference: Nesterov, 1983, "A method for solving the convex programming problem
    with convergence rate O(1/k^2)"; Sutskever, Martens, Dahl & Hinton, 2013, "On the
    importance of initialization and momentum in deep learning" (eq. 3-4).
    """
    return trace(decay, nesterov=True, accumulator_dtype=accumulator_dtype)


class EmaState(NamedTuple):
    """The state of ``ema``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (read by the debiasing).
        ema: the moving average (not debiased), a tree like the params in
            ``accumulator_dtype`` (None: the parameter dtype), initially 0.
    """

    count: jax.Array
    ema: Updates


def ema(
    decay: float | jax.Array, debias: bool = True, accumulator_dtype: Any = None
) -> GradientTransformation:
    r"""An exponential moving average of the updates (momentum in its averaging form).

    With t counting updates from 1 and ``e_0 = 0``::

        e_t = decay * e_{t-1} + (1 - decay) * g_t
        u_t = e_t / (1 - decay^t)        (debias=True)
        u_t = e_t                        (debias=False)

    ``trace`` sums (``b = g + decay * b``, a factor ``1 / (1 - decay)`` larger in the
    long run); ``ema`` averages. Adam's first moment is ``ema(b1)``. Same numbers as
    ``optax.ema``.

    Args:
        decay: the decay of the average, in [0, 1).
        debias: divide by ``1 - decay^t`` so that early averages are not biased to 0.
        accumulator_dtype: dtype of the average; None keeps the parameter dtype. It
            is updated in the wider of this dtype and the compute dtype (at least
            float32); updates keep the gradient dtype.

    State: ``EmaState(count, ema)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.ema(0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([2.0]), state)
        >>> u, state = tx.update(jnp.array([4.0]), state)
        >>> u.tolist()  # (0.25 * 2 + 0.5 * 4) / (1 - 0.25)
        [3.3333332538604736]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization"
    (Algorithm 1: the moving average of the gradient and its debiasing); ``optax.ema``
    (same map). Averaging the parameters instead (Polyak & Juditsky, 1992):
    ``average_params``, ``ema_params``.
    """
    check.unit_interval("decay", decay)
    check.dtype_or_none("accumulator_dtype", accumulator_dtype)
    check.boolean("debias", debias)

    def init(params):
        return EmaState(
            count=jnp.zeros([], jnp.int32), ema=tree.zeros_like(params, accumulator_dtype)
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("ema", state, EmaState)
        count = numerics.safe_increment(state.count)

        def leaf(g, e):
            # A wider accumulator_dtype accumulates in its own precision (see trace).
            dtype = numerics.promote_types(numerics.compute_dtype(g.dtype), e.dtype)
            rho = numerics.factor(decay, dtype)
            e_new = rho * e.astype(dtype) + (1 - rho) * g.astype(dtype)
            e_new = numerics.as_stored(e_new, e.dtype, g.dtype)
            correction = numerics.bias_correction(decay, count, dtype).astype(dtype)
            u = e_new / correction if debias else e_new
            return u.astype(g.dtype), e_new.astype(e.dtype)

        updates, average = tree.map_unzip(leaf, updates, state.ema, outputs=2, updates_first=True)
        return updates, EmaState(count, average)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update, returns_product=debias, takes_sum_before=True, takes_product_before=True
        ),
    )
