"""Per-coordinate step sizes from past gradients, before Adam: RMSProp (and its centred
variant), Adagrad's sum of squares, Adadelta, Rprop's signs."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree, tree_checks
from gradtx.core import GradientTransformation, Updates

# The Adam family's states were classes of this module until it had one of its own:
# states pickled then name them here (docs/protocol.md: a state pickles).
from gradtx.transforms.adam import (  # noqa: F401
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByAmsgradState,
)


class ScaleByRmsState(NamedTuple):
    """The state of ``scale_by_rms`` (not centered).

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (read by
            ``bias_correction``).
        nu: moving average of |g|^2, a tree like the params in ``nu_dtype`` (None: the
            parameter's real dtype), initially ``initial_scale``.
    """

    count: jax.Array
    nu: Updates


class ScaleByStddevState(NamedTuple):
    """The state of ``scale_by_rms(centered=True)``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (read by
            ``bias_correction``).
        mu: moving average of g, a tree like the params in their dtype, initially 0.
        nu: moving average of |g|^2, a tree like the params in ``nu_dtype`` (None: the
            parameter's real dtype), initially ``initial_scale``.
    """

    count: jax.Array
    mu: Updates
    nu: Updates


def _full_real_like(params, value, dtype=None):
    """``value`` in every leaf, in ``dtype`` (None: the parameter's real dtype)."""
    return tree.full_like(tree.zeros_like(params, dtype, real=True), value)


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    centered: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""RMSProp's preconditioner (Tieleman & Hinton, 2012), optionally centered (Graves, 2013).

    With t counting updates from 1 and ``v_0 = initial_scale``::

        v_t = decay * v_{t-1} + (1 - decay) * |g|^2
        m_t = decay * m_{t-1} + (1 - decay) * g          (centered only; m_0 = 0)
        s   = v_t - |m_t|^2   if centered else v_t       (bias_correction: v_t and m_t
                                                            first divided by 1 - decay^t)
        u   = g / sqrt(s + eps)      (eps_in_sqrt)
        u   = g / (sqrt(s) + eps)    (otherwise)

    The lecture divides by ``sqrt(v_t)`` with no eps (``eps=0``); Graves adds it
    inside the root (his ``decay=0.95, eps=1e-4``). Centered RMSProp divides by an
    estimate of the standard deviation of g instead of its root mean square. Same
    numbers as ``optax.scale_by_rms`` and (centered) ``optax.scale_by_stddev``, except
    that ``s`` is clipped at 0 where rounding makes ``v_t - |m_t|^2`` negative (Optax
    returns NaN there). PyTorch's RMSprop uses ``decay=0.99`` and eps outside the root;
    Keras ``decay=0.9`` and eps inside.
    ``scale_by_rms(b2, eps_in_sqrt=False, bias_correction=True)`` is Adam with b1=0.

    Args:
        decay: decay of the moving averages, in [0, 1).
        eps: added to the denominator, >= 0.
        initial_scale: initial value of ``v``, >= 0 (PyTorch 0, TF1 1).
        eps_in_sqrt: add eps inside the square root (else outside).
        centered: subtract the squared moving average of g (Graves, 2013).
        bias_correction: divide the averages by ``1 - decay^t``.
        nu_dtype: dtype of the moving average of ``|g|^2``; None keeps the parameter's
            real dtype. For float16 parameters pass ``jnp.float32``: a float16
            ``(1 - decay) |g|^2`` of gradients ~3e-4 underflows to 0.

    State: ``ScaleByRmsState(count, nu)``, or ``ScaleByStddevState(count, mu, nu)``
    when centered.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_rms(decay=0.75, eps=0.0)
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> updates.tolist()  # 2 / sqrt(0.25 * 4)
        [2.0]

    Reference: Tieleman & Hinton, 2012, "Lecture 6.5 - RMSProp", COURSERA: Neural
    Networks for Machine Learning; Graves, 2013, "Generating Sequences With Recurrent
    Neural Networks" (eq. 38-45).
    """
    check.unit_interval("decay", decay)
    check.non_negative("eps", eps)
    check.non_negative("initial_scale", initial_scale)
    check.dtype_or_none("nu_dtype", nu_dtype)
    check.boolean("eps_in_sqrt", eps_in_sqrt)
    check.boolean("bias_correction", bias_correction)
    check.boolean("centered", centered)

    def init(params):
        count = jnp.zeros([], jnp.int32)
        nu = _full_real_like(params, initial_scale, nu_dtype)
        if centered:
            return ScaleByStddevState(count, tree.zeros_like(params), nu)
        return ScaleByRmsState(count, nu)

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_rms", state, ScaleByStddevState if centered else ScaleByRmsState)
        count = numerics.safe_increment(state.count)

        def leaf(g, v, m=None):
            # an average stored wider than the compute dtype is updated in its own precision
            dtype = numerics.compute_dtype(numerics.promote_types(g.dtype, v.dtype))
            real = numerics.real_dtype(dtype)
            rho = numerics.hyperparameter(decay, dtype)
            g_ = g.astype(dtype)
            v_new = rho * v.astype(real) + (1 - rho) * numerics.abs_sq(g_)
            v_new = numerics.as_stored(v_new, v.dtype, g.dtype)
            correction = numerics.bias_correction(decay, count, dtype) if bias_correction else 1
            s = v_new / correction
            if centered:
                rho_ = numerics.factor(rho, dtype)
                m_new = rho_ * m.astype(dtype) + (1 - rho_) * g_
                m_new = numerics.as_stored(m_new, m.dtype, g.dtype)
                m_hat, m_correction = numerics.promote(m_new, correction)
                # Rounding can push the variance estimate below zero (constant g).
                s = jnp.maximum(s - numerics.abs_sq(m_hat / m_correction), 0)
            epsilon = numerics.hyperparameter(eps, real)
            denominator = jnp.sqrt(s + epsilon) if eps_in_sqrt else jnp.sqrt(s) + epsilon
            g_, denominator = numerics.promote(g_, denominator)
            u = (g_ / denominator).astype(g.dtype)
            if centered:
                return u, v_new.astype(v.dtype), m_new.astype(m.dtype)
            return u, v_new.astype(v.dtype)

        if centered:
            updates, nu, mu = tree.map_unzip(
                leaf, updates, state.nu, state.mu, outputs=3, updates_first=True
            )
            return updates, ScaleByStddevState(count, mu, nu)
        updates, nu = tree.map_unzip(leaf, updates, state.nu, outputs=2, updates_first=True)
        return updates, ScaleByRmsState(count, nu)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update,
            returns_product=eps_in_sqrt or numerics.is_constant_zero(eps),
            takes_sum_before=True,
            takes_product_before=True,
        ),
    )


class ScaleByRssState(NamedTuple):
    """The state of ``scale_by_rss``.

    Attributes:
        sum_of_squares: ``initial_accumulator_value`` plus the sum of |g|^2 so far, a
            tree like the params in ``accumulator_dtype`` (None: the parameter's real
            dtype).
    """

    sum_of_squares: Updates


def scale_by_rss(
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    eps_in_sqrt: bool = True,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    r"""Adagrad's preconditioner (Duchi, Hazan & Singer, 2011): the root sum of squares.

    With ``s_0 = initial_accumulator_value``::

        s_t = s_{t-1} + |g|^2
        u   = g / sqrt(s_t + eps)      (0 where s_t = 0)

    Same numbers as ``optax.scale_by_rss`` (and Keras' Adagrad). The paper's diagonal
    form, ``H_t = delta I + diag(s_t)^(1/2)`` with ``s_0 = 0``, adds delta outside the
    square root: ``scale_by_rss(0.0, delta, eps_in_sqrt=False)``. That is also
    PyTorch's Adagrad (eps=1e-10, see ``gradtx.compat.torch``).

    Args:
        initial_accumulator_value: starting value of the sum, >= 0.
        eps: added inside the square root, >= 0.
        eps_in_sqrt: False adds eps outside, ``u = g / (sqrt(s_t) + eps)`` (the paper,
            PyTorch).
        accumulator_dtype: dtype of the sum; None keeps the parameter's real dtype. For
            float16 parameters pass ``jnp.float32``: a float16 sum passes 65,504 after
            655 steps of |g| = 10, and the steps stop.

    State: ``ScaleByRssState(sum_of_squares)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([3.0]), state)
        >>> u, state = tx.update(jnp.array([4.0]), state)
        >>> u.tolist()  # 4 / sqrt(9 + 16)
        [0.800000011920929]

    Reference: Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization".
    """
    check.non_negative("initial_accumulator_value", initial_accumulator_value)
    check.non_negative("eps", eps)
    check.dtype_or_none("accumulator_dtype", accumulator_dtype)
    check.boolean("eps_in_sqrt", eps_in_sqrt)

    def init(params):
        return ScaleByRssState(
            _full_real_like(params, initial_accumulator_value, accumulator_dtype)
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_rss", state, ScaleByRssState)

        def leaf(g, s):
            dtype = numerics.compute_dtype(g.dtype)
            # a sum stored wider than the compute dtype accumulates in its own precision
            real = numerics.promote_types(numerics.real_dtype(dtype), s.dtype)
            g_ = g.astype(numerics.promote_types(dtype, real))
            s_new = numerics.as_stored(s.astype(real) + numerics.abs_sq(g_), s.dtype, g.dtype)
            # s_t = 0 only where every gradient so far was 0 (and s_0 = 0): no step. The
            # unused branch gets s = 1, not 0: the derivative of sqrt at 0 is inf, and
            # jnp.where's 0 cotangent times inf is a NaN meta-gradient (differentiating
            # through the optimizer) wherever a gradient is 0, a dead ReLU unit's say.
            epsilon = numerics.hyperparameter(eps, real)
            stepped = s_new > 0
            s_safe = jnp.where(stepped, s_new, 1)
            if eps_in_sqrt:
                scaling = jnp.where(stepped, jax.lax.rsqrt(s_safe + epsilon), 0)
            else:
                scaling = jnp.where(stepped, 1 / (jnp.sqrt(s_safe) + epsilon), 0)
            scaling, g_ = numerics.promote(scaling, g_)
            return (scaling * g_).astype(g.dtype), s_new.astype(s.dtype)

        updates, sum_of_squares = tree.map_unzip(
            leaf, updates, state.sum_of_squares, outputs=2, updates_first=True
        )
        return updates, ScaleByRssState(sum_of_squares)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update, returns_product=True, takes_sum_before=True, takes_product_before=True
        ),
    )


class ScaleByAdadeltaState(NamedTuple):
    """The state of ``scale_by_adadelta``.

    Attributes:
        e_g: moving average of |g|^2, a tree like the params in their real dtype,
            initially 0.
        e_x: moving average of |update|^2, like ``e_g``, initially 0.
    """

    e_g: Updates
    e_x: Updates


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> GradientTransformation:
    r"""Adadelta's preconditioner (Zeiler, 2012, Algorithm 1).

    ::

        E[g^2]_t  = rho * E[g^2]_{t-1} + (1 - rho) * |g|^2
        u_t       = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g
        E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * |u_t|^2

    The ratio of RMS values gives the update the units of the parameters, so the
    paper uses no learning rate (``adadelta``'s default learning rate is 1). Same
    numbers as ``optax.scale_by_adadelta`` and PyTorch's Adadelta; Keras defaults to
    ``rho=0.95, eps=1e-7``.

    Args:
        rho: decay of the moving averages, in [0, 1).
        eps: added inside both square roots, > 0 (with 0 the first update, and every
            one after it, would be 0).

    State: ``ScaleByAdadeltaState(e_g, e_x)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_adadelta(rho=0.0, eps=1.0)
        >>> updates, state = tx.update(jnp.array([0.0, 3.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 6) for u in updates]  # sqrt(0 + 1) / sqrt(g^2 + 1) * g
        [0.0, 0.948683]

    Reference: Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method".
    """
    check.unit_interval("rho", rho)
    check.positive("eps", eps)

    def init(params):
        return ScaleByAdadeltaState(
            e_g=tree.zeros_like(params, real=True), e_x=tree.zeros_like(params, real=True)
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_adadelta", state, ScaleByAdadeltaState)

        def leaf(g, e_g, e_x):
            dtype = numerics.compute_dtype(g.dtype)
            real = numerics.real_dtype(dtype)
            decay = numerics.hyperparameter(rho, real)
            epsilon = numerics.hyperparameter(eps, real)
            g_ = g.astype(dtype)
            e_g_new = decay * e_g.astype(real) + (1 - decay) * numerics.abs_sq(g_)
            e_g_new = numerics.as_stored(e_g_new, e_g.dtype, g.dtype)

            def scaled(epsilon):
                scaling = jnp.sqrt(e_x.astype(real) + epsilon) / jnp.sqrt(e_g_new + epsilon)
                return scaling.astype(dtype) * g_

            u = scaled(epsilon)
            # u again for E[dx^2], from an eps XLA cannot merge with the first: each
            # output computes its square roots, none is a buffer of its own
            again = scaled(numerics.unshared(epsilon, real))
            e_x_new = decay * e_x.astype(real) + (1 - decay) * numerics.abs_sq(again)
            return u.astype(g.dtype), e_g_new.astype(e_g.dtype), e_x_new.astype(e_x.dtype)

        updates, e_g, e_x = tree.map_unzip(
            leaf, updates, state.e_g, state.e_x, outputs=3, updates_first=True
        )
        return updates, ScaleByAdadeltaState(e_g, e_x)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update, returns_product=True, takes_sum_before=True, takes_product_before=True
        ),
    )


class ScaleByRpropState(NamedTuple):
    """The state of ``scale_by_rprop`` (real parameters only).

    Attributes:
        step_sizes: per-element step size, a tree like the params in their dtype,
            initially ``learning_rate``.
        previous_sign: sign of the last gradient (-1, 0 or 1; 0 after a sign change),
            a tree like the params in their dtype, initially 0.
    """

    step_sizes: Updates
    previous_sign: Updates


def scale_by_rprop(
    learning_rate: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
    *,
    clip_every_step: bool = False,
) -> GradientTransformation:
    r"""Rprop's step (Riedmiller & Braun, 1993), in the iRprop- form of Igel & Hüsken.

    Only the sign of the gradient is used; each element has its own step size, grown
    while the gradient keeps its sign and shrunk when it flips. With ``s = sign(g_t) *
    sign(g_{t-1})`` and ``d_0 = learning_rate``::

        d_t = clip(d_{t-1} * eta_plus,  min_step_size, max_step_size)   if s > 0
        d_t = clip(d_{t-1} * eta_minus, min_step_size, max_step_size)   if s < 0
        d_t = d_{t-1}                                                   if s = 0
        g_t <- 0                                                        if s < 0
        u_t = d_t * sign(g_t)

    After a sign change the step is skipped and the gradient forgotten (so the next
    step does not shrink again). Negate afterwards (``rprop`` chains ``scale(-1)``).
    The papers bound growth by ``max_step_size`` and shrinking by ``min_step_size``
    only; clipping both ways is the same while ``learning_rate`` is within the bounds.
    Optax's ``scale_by_rprop`` (0.2.8) computes the same step sizes but returns the
    previous step's update (one step late, and 0 on the first step; google-deepmind/
    optax pull request 1725); gradtx returns the current one, as the paper and
    PyTorch do. PyTorch's Rprop also clips ``d`` on the first step (see
    ``gradtx.compat.torch``).

    Args:
        learning_rate: the initial step size, > 0 (a number: it is read once, by
            ``init``; rescaling it later does not change the step sizes).
        eta_minus: factor applied when the gradient changes sign, in (0, 1].
        eta_plus: factor applied when it keeps its sign, >= 1.
        min_step_size: lower bound of the step sizes, >= 0.
        max_step_size: upper bound of the step sizes, >= min_step_size.
        clip_every_step: also clip ``d_t`` when ``s = 0`` (the first step included), as
            PyTorch does.

    State: ``ScaleByRpropState(step_sizes, previous_sign)``. Real parameters only
    (the sign of a complex number is not defined).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_rprop(0.1)
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([3.0, -1.0]), state)
        >>> u, state = tx.update(jnp.array([2.0, 5.0]), state)
        >>> [round(float(x), 6) for x in u]  # grown by 1.2; skipped after the flip
        [0.12, 0.0]

    Reference: Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP Algorithm"; Igel & Hüsken, 2000, "Improving
    the Rprop Learning Algorithm".
    """
    if callable(learning_rate):
        raise TypeError(
            "scale_by_rprop's learning_rate is the initial step size, read once by init; "
            "a schedule would be ignored after step 0, so pass a number"
        )
    check.positive("learning_rate", learning_rate)
    check.in_range("eta_minus", eta_minus, 0.0, 1.0, low_inclusive=False)
    check.in_range("eta_plus", eta_plus, 1.0, None)
    check.non_negative("min_step_size", min_step_size)
    check.non_negative("max_step_size", max_step_size, allow_inf=True)  # inf: no bound
    check.at_least("max_step_size", max_step_size, "min_step_size", min_step_size)
    check.boolean("clip_every_step", clip_every_step)

    def init(params):
        zeros = tree.zeros_like(params)
        tree_checks.check_real(
            zeros, "parameter", "scale_by_rprop", "the sign of a complex number is undefined"
        )
        return ScaleByRpropState(
            step_sizes=tree.full_like(zeros, learning_rate),
            previous_sign=zeros,
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_rprop", state, ScaleByRpropState)

        def leaf(g, d, previous):
            dtype = numerics.compute_dtype(g.dtype)
            sign = jnp.sign(g.astype(dtype))
            agreement = sign * previous.astype(dtype)
            factor = jnp.where(
                agreement > 0,
                numerics.hyperparameter(eta_plus, dtype),
                numerics.hyperparameter(eta_minus, dtype),
            )
            grown_or_shrunk = jnp.clip(
                d.astype(dtype) * factor,
                numerics.hyperparameter(min_step_size, dtype),
                numerics.hyperparameter(max_step_size, dtype),
            )
            unchanged = d.astype(dtype)
            if clip_every_step:
                unchanged = jnp.clip(
                    unchanged,
                    numerics.hyperparameter(min_step_size, dtype),
                    numerics.hyperparameter(max_step_size, dtype),
                )
            d_new = jnp.where(agreement == 0, unchanged, grown_or_shrunk)
            sign = jnp.where(agreement < 0, 0, sign)
            return (
                (d_new * sign).astype(g.dtype),
                d_new.astype(d.dtype),
                sign.astype(previous.dtype),
            )

        updates, step_sizes, previous_sign = tree.map_unzip(
            leaf, updates, state.step_sizes, state.previous_sign, outputs=3, updates_first=True
        )
        return updates, ScaleByRpropState(step_sizes, previous_sign)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update, returns_product=True, takes_sum_before=True, takes_product_before=True
        ),
    )
