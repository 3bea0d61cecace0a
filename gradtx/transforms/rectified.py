"""RAdam's rectification of the adaptive learning rate (Liu et al., 2020)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation, Updates

# -B_2k / (2k)! for k = 1..7, the coefficients of y^2k in 1 - y / expm1(y) - y / 2
_EVEN_SERIES = (
    -1 / 12,
    1 / 720,
    -1 / 30240,
    1 / 1209600,
    -1 / 47900160,
    691 / 1307674368000,
    -1 / 74724249600,
)


def _one_minus_y_over_expm1(y: jax.Array) -> jax.Array:
    """``g(y) = 1 - y / (exp(y) - 1)`` for ``y >= 0`` to float rounding relative to g:
    by its series below 0.5 (``y/2 - y^2/12 + y^4/720 - ...``, the Bernoulli numbers),
    where the direct form cancels; 1 at ``y = inf``. The series runs to ``y^14``: its
    first omitted term is 2e-17 of g at 0.5 (cut after ``y^8``, 8.7e-11 in float64)."""
    small = y < 0.5
    ys = jnp.where(small, y, 0)
    y2 = ys * ys
    even = jnp.zeros_like(y2)
    for coefficient in reversed(_EVEN_SERIES):  # Horner's form in y^2
        even = (even + coefficient) * y2
    series = ys / 2 + even
    yl = jnp.where(small | jnp.isinf(y), 1, y)
    direct = jnp.where(jnp.isinf(y), 1, 1 - yl / jnp.expm1(yl))
    return jnp.where(small, series, direct)


class ScaleByRadamState(NamedTuple):
    """The state of ``scale_by_radam``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1.
        mu: first moment, a tree like the params in their dtype, initially 0.
        nu: second moment, a tree like the params in their real dtype (or
            ``nu_dtype``), initially 0.
    """

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    strict_threshold: bool = False,
    eps_before_bias_correction: bool = False,
    nu_dtype: Any = None,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Rectified Adam's preconditioner (Liu et al., 2020, Algorithm 2).

    With t counting updates from 1, ``bc1 = 1 - b1^t``, ``bc2 = 1 - b2^t``::

        m_t     = b1 * m_{t-1} + (1 - b1) * g;   v_t = b2 * v_{t-1} + (1 - b2) * |g|^2
        rho_inf = 2 / (1 - b2) - 1
        rho_t   = rho_inf - 2 t b2^t / bc2
        r_t     = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        u = r_t * (m_t / bc1) / (sqrt(v_t / bc2 + eps_root) + eps)   if rho_t >= threshold
        u = m_t / bc1                                                  otherwise

    ``nesterov=True`` puts NAdam's momentum in place of ``m_t / bc1`` in both cases,
    ``b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g / bc1``, as Optax's
    ``scale_by_radam(nesterov=True)`` (and ``scale_by_adam(nesterov=True)`` here).

    Multiply by ``-learning_rate`` afterwards. The defaults are Optax's
    ``scale_by_radam``. The paper's Algorithm 2 rectifies where ``rho_t > 4`` and has
    no eps: ``threshold=4.0, strict_threshold=True, eps=0.0`` (with b2 = 0.999 it
    rectifies from step 5, where ``rho_5 = 4.996``; Optax and PyTorch from step 6).
    The authors' code, like Optax, rectifies where ``rho_t >= 5``. PyTorch's ``RAdam``
    rectifies only when ``rho_t > 5`` and adds eps to the raw ``sqrt(v_t)``:
    ``strict_threshold=True, eps_before_bias_correction=True``
    (``gradtx.compat.torch.radam``).

    Args:
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1). With 0, ``rho_inf = rho_t = 1``:
            never rectified, the update is ``m_t / bc1`` (as in Optax).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        threshold: rectify once ``rho_t`` reaches it (the paper: ``rho_t > 4``, with
            ``strict_threshold=True``; Optax and PyTorch 5), >= 4 (``r_t`` is not real
            below 4).
        strict_threshold: rectify only when ``rho_t > threshold`` (PyTorch).
        eps_before_bias_correction: the denominator is ``(sqrt(v_t) + eps) / sqrt(bc2)``
            instead of ``sqrt(v_t / bc2) + eps`` (PyTorch).
        nu_dtype: dtype of the second moment; None keeps the parameter's real dtype.
            For float16 parameters pass ``jnp.float32``: squared gradients below ~6e-8
            underflow in float16 (gradients ~1e-5 gave 6x too large updates). A wider
            moment (float64 for float32 gradients) accumulates in its own precision.
        nesterov: Nesterov momentum in NAdam's form (Optax's option).

    State: ``ScaleByRadamState(count, mu, nu)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_radam()
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 4) for u in updates]  # rho_1 = 1: plain momentum
        [0.5, -2.0]

    Reference: Liu, Jiang, He, Chen, Liu, Gao & Han, 2020, "On the Variance of the
    Adaptive Learning Rate and Beyond".
    """
    check.unit_interval("b1", b1)
    check.unit_interval("b2", b2)
    check.non_negative("eps", eps)
    check.non_negative("eps_root", eps_root)
    b1, b2, eps, eps_root = map(numerics.python_number, (b1, b2, eps, eps_root))
    check.in_range("threshold", threshold, 4.0, None)
    check.boolean("strict_threshold", strict_threshold)
    check.boolean("eps_before_bias_correction", eps_before_bias_correction)
    check.boolean("nesterov", nesterov)
    check.dtype_or_none("nu_dtype", nu_dtype)

    def init(params):
        return ScaleByRadamState(
            count=jnp.zeros([], jnp.int32),
            mu=tree.zeros_like(params),
            nu=tree.zeros_like(params, nu_dtype, real=True),
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_radam", state, ScaleByRadamState)
        count = numerics.safe_increment(state.count)

        def rectification(real):
            """(bc1, bc2, r_t, whether to rectify, 1 - b1^(t+1) where nesterov):
            scalars of the step, in ``real``."""
            t = count.astype(real)
            # rho_t is the difference of two numbers near rho_inf (2e7 for b2 = 1 - 1e-7),
            # which cancels in float32 (rho_t off by 1e-4 relative at b2 = 0.999, by 2
            # at 1 - 1e-7, moving the step at which rectification starts). Written with
            # x = -log(b2) (in double precision for a Python float b2: the float32
            # rounding of b2 alone moves rho_t by 1e-2 early on) and g(y) = 1 - y /
            # expm1(y): rho_t = 1 + 2 (g(t x) - g(x)) / x, rho_inf = 1 + 2 / expm1(x),
            # without a difference of large numbers. b2 = 0 gives x = inf, rho = 1.
            if isinstance(b2, (int, float)):
                x = -math.log(b2) if b2 > 0 else math.inf
            else:  # an injected float32 b2: its log in the step's precision (float64
                # under x64; the float32 log moved rho_t by 1e-7, float64 runs by 1e-8)
                x = -jnp.log(jnp.asarray(b2, real))
            x = jnp.asarray(x, real)
            bias_correction2 = -jnp.expm1(-t * x)  # 1 - b2^t
            rho_inf = 1 + 2 / jnp.expm1(x)
            rho_t = 1 + 2 * (_one_minus_y_over_expm1(t * x) - _one_minus_y_over_expm1(x)) / x
            rho_t = jnp.where(jnp.isinf(x), 1, rho_t)
            # r_t is real for rho_t >= 4 (then rho_inf > 4 too). Below, the branch not
            # taken gets rho_t = 5, rho_inf = 6, so that it and its derivative stay finite
            # (a NaN there is a NaN meta-gradient through jnp.where: b2 <= 0.6 gives
            # rho_inf <= 4). Not a clamp of rho_t: r_t at rho_t = 4.0002 is its own.
            defined = rho_t >= 4
            rho_safe = jnp.where(defined, rho_t, 5)
            rho_inf_safe = jnp.where(defined, rho_inf, 6)
            rect = jnp.sqrt(
                (rho_safe - 4)
                * (rho_safe - 2)
                * rho_inf_safe
                / ((rho_inf_safe - 4) * (rho_inf_safe - 2) * rho_safe)
            )
            rectify = rho_t > threshold if strict_threshold else rho_t >= threshold
            next_correction = (
                numerics.bias_correction(b1, numerics.safe_increment(count), real)
                if nesterov
                else None
            )
            bias_correction1 = numerics.bias_correction(b1, count, real)
            return bias_correction1, bias_correction2, rect, rectify, next_correction

        # The same for every leaf of a dtype: computed once per dtype, not once per leaf
        # (per leaf, XLA compiled 200 leaves of 4,096 in 2x Optax's time).
        scalars = {
            real: rectification(real)
            for real in {
                numerics.real_dtype(numerics.compute_dtype(d))
                for d in numerics.leaf_dtypes(updates)
            }
        }

        def leaf(g, m, v):
            dtype = numerics.compute_dtype(g.dtype)
            real = numerics.real_dtype(dtype)
            bias_correction1, bias_correction2, rect, rectify, next_correction = scalars[real]
            g_ = g.astype(dtype)
            beta1 = numerics.factor(b1, numerics.result_type(b1, dtype))  # as in Adam
            m_new = beta1 * m.astype(dtype) + (1 - beta1) * g_
            v_dtype = numerics.promote_types(real, v.dtype)
            g_squared = numerics.abs_sq(g.astype(numerics.promote_types(dtype, v_dtype)))
            v_new = b2 * v.astype(v_dtype) + (1 - b2) * g_squared
            m_new = numerics.as_stored(m_new, m.dtype, g.dtype)
            v_new = numerics.as_stored(v_new, v.dtype, g.dtype)
            if nesterov:
                m_hat = beta1 * m_new / next_correction.astype(dtype) + (
                    1 - beta1
                ) * g_ / bias_correction1.astype(dtype)
            else:
                m_hat = m_new / bias_correction1.astype(dtype)
            if eps_before_bias_correction:
                denom = (jnp.sqrt(v_new + eps_root) + eps) / jnp.sqrt(bias_correction2)
            else:
                denom = jnp.sqrt(v_new / bias_correction2 + eps_root) + eps
            # real factors cast explicitly to complex moments (strict promotion)
            rect, m_hat = numerics.promote(rect, m_hat)
            rectified, denom = numerics.promote(rect * m_hat, denom)
            u = jnp.where(rectify, rectified / denom, m_hat)
            return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

        updates, mu, nu = tree.map_unzip(
            leaf, updates, state.mu, state.nu, outputs=3, updates_first=True
        )
        return updates, ScaleByRadamState(count, mu, nu)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update, returns_product=True, takes_sum_before=True, takes_product_before=not nesterov
        ),
    )
