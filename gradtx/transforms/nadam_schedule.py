"""NAdam with Dozat's momentum schedule, as PyTorch and Keras implement it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation, Updates


class ScaleByNadamScheduleState(NamedTuple):
    """The state of ``scale_by_nadam_schedule``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1.
        mu_product: ``prod_{s<=t} mu_s``, a scalar in the widest real compute dtype of
            the params (at least float32; float32 for no params), initially 1.
        mu: first moment, a tree like the params in their dtype, initially 0.
        nu: second moment, a tree like the params in their real dtype (or ``nu_dtype``),
            initially 0.
    """

    count: jax.Array
    mu_product: jax.Array
    mu: Updates
    nu: Updates


def _widest_float_dtype(params) -> jnp.dtype:
    dtypes = [numerics.compute_dtype(numerics.real_dtype(x.dtype)) for x in jax.tree.leaves(params)]
    return numerics.result_type(*dtypes) if dtypes else jnp.dtype(jnp.float32)


def scale_by_nadam_schedule(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    *,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""NAdam's preconditioner with the momentum schedule of Dozat (2016).

    With t counting updates from 1 and ``psi = momentum_decay``::

        mu_t  = b1 * (1 - 0.5 * 0.96^(t * psi))
        P_t   = mu_1 * mu_2 * ... * mu_t                    (kept in the state)
        m_t   = b1 * m_{t-1} + (1 - b1) * g
        v_t   = b2 * v_{t-1} + (1 - b2) * |g|^2
        m_hat = mu_{t+1} * m_t / (1 - P_t * mu_{t+1}) + (1 - mu_t) * g / (1 - P_t)
        u     = m_hat / (sqrt(v_t / (1 - b2^t)) + eps)

    Multiply by ``-learning_rate`` afterwards. ``momentum_decay=4e-3`` is
    ``torch.optim.NAdam``; ``momentum_decay=1.0`` gives Keras' ``Nadam`` (which uses
    ``0.96^t``). Optax's ``nadam`` (``scale_by_adam(nesterov=True)``) has no schedule:
    it is the limit ``momentum_decay -> 0`` with ``b1`` in place of ``mu_t``, up to the
    bias correction.

    Args:
        b1: base momentum, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added outside the square root, >= 0.
        momentum_decay: ``psi`` above, >= 0 (PyTorch 4e-3, Keras 1.0).
        nu_dtype: dtype of the second moment; None keeps the parameter's real dtype.
            For float16 parameters pass ``jnp.float32`` (a float16 ``(1 - b2) g^2``
            underflows for gradients ~1e-3). A wider moment accumulates in its own
            precision.

    State: ``ScaleByNadamScheduleState(count, mu_product, mu, nu)``. ``mu_product``
    is a scalar in the widest float dtype of the parameters (at least float32), as
    PyTorch keeps it in its default dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_nadam_schedule()
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 3) for u in updates]  # (1 - mu_1) g / (1 - P_1) + mu_2 m_1 / ...
        [1.056, -1.056]

    Reference: Dozat, 2016, "Incorporating Nesterov Momentum into Adam".
    """
    check.unit_interval("b1", b1)
    check.unit_interval("b2", b2)
    check.non_negative("eps", eps)
    check.non_negative("momentum_decay", momentum_decay)
    b1, b2, eps = map(numerics.python_number, (b1, b2, eps))
    check.dtype_or_none("nu_dtype", nu_dtype)

    def momentum_at(step, dtype):
        psi = numerics.hyperparameter(momentum_decay, dtype)
        # b1 in dtype: a traced float64 b1 (under x64) would widen the float32 mu_product
        # carried in the state, which a lax.scan over steps refuses
        return numerics.hyperparameter(b1, dtype) * (
            1 - 0.5 * jnp.asarray(0.96, dtype) ** (step.astype(dtype) * psi)
        )

    def init(params):
        return ScaleByNadamScheduleState(
            count=jnp.zeros([], jnp.int32),
            mu_product=jnp.ones([], _widest_float_dtype(params)),
            mu=tree.zeros_like(params),
            nu=tree.zeros_like(params, nu_dtype, real=True),
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_nadam_schedule", state, ScaleByNadamScheduleState)
        count = numerics.safe_increment(state.count)
        product_dtype = numerics.leaf_dtype(state.mu_product)  # a Python float too, as under jit
        mu_product = state.mu_product * momentum_at(count, product_dtype)

        def leaf(g, m, v):
            dtype = numerics.compute_dtype(g.dtype)
            real = numerics.real_dtype(dtype)
            g_ = g.astype(dtype)
            beta1 = numerics.factor(b1, numerics.result_type(b1, dtype))  # as in Adam
            m_new = beta1 * m.astype(dtype) + (1 - beta1) * g_
            v_dtype = numerics.promote_types(real, v.dtype)
            g_squared = numerics.abs_sq(g.astype(numerics.promote_types(dtype, v_dtype)))
            v_new = b2 * v.astype(v_dtype) + (1 - b2) * g_squared
            m_new = numerics.as_stored(m_new, m.dtype, g.dtype)
            v_new = numerics.as_stored(v_new, v.dtype, g.dtype)
            mu_t = momentum_at(count, real)
            mu_next = momentum_at(numerics.safe_increment(count), real)
            product = mu_product.astype(real)
            # the real momentum factors cast to complex moments explicitly (strict
            # promotion refuses float32 * complex64), each where promotion would cast it
            next_weight, next_product = mu_next.astype(dtype), 1 - product * mu_next
            gradient_weight, product_left = (1 - mu_t).astype(dtype), 1 - product
            m_hat = next_weight * m_new / next_product.astype(dtype) + (
                gradient_weight * g_ / product_left.astype(dtype)
            )
            v_hat = v_new / numerics.bias_correction(b2, count, real)
            m_hat, denominator = numerics.promote(m_hat, jnp.sqrt(v_hat) + eps)
            u = m_hat / denominator
            return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

        updates, mu, nu = tree.map_unzip(
            leaf, updates, state.mu, state.nu, outputs=3, updates_first=True
        )
        return updates, ScaleByNadamScheduleState(count, mu_product, mu, nu)

    return GradientTransformation(
        init,
        # its momentum term is a sum of two products (``m_hat``), and which of them LLVM
        # contracts into a fused multiply-add changed with weight decay's sum joined to
        # the kernel, before or after it (1-3% of the elements an ulp off the separate
        # passes): a scaling after it is the only block that joins
        tree.updates_from_first_map(update, returns_product=True, takes_sum_before=False),
    )
