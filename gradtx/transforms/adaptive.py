"""Adaptive preconditioners: Adam and its family, RMSProp, Adagrad, Adadelta, Rprop."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation, Updates


class ScaleByAdamState(NamedTuple):
    count: jax.Array  # int32, saturating
    mu: Updates  # first moment, in mu_dtype (default: the parameter dtype)
    nu: Updates  # second moment, in nu_dtype (default: the parameter's real dtype)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Adam's preconditioner (Kingma & Ba, 2015, Algorithm 1).

    With t counting updates from 1::

        m_t = b1 * m_{t-1} + (1 - b1) * g
        v_t = b2 * v_{t-1} + (1 - b2) * |g|^2
        m_hat = m_t / (1 - b1^t)             (nesterov: b1 * m_t / (1 - b1^(t+1))
                                                        + (1 - b1) * g / (1 - b1^t))
        v_hat = v_t / (1 - b2^t)
        u = m_hat / (sqrt(v_hat + eps_root) + eps)

    Multiply by ``-learning_rate`` afterwards (``scale_by_learning_rate``). The math
    runs in at least float32 and the moments are stored in their dtypes.

    PyTorch's Adam is the same map (it adds eps to ``sqrt(v_t)/sqrt(1 - b2^t)``, as
    here); Keras adds eps to the raw ``sqrt(v_t)`` (see ``gradtx.compat.keras``).

    Args:
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0 (useful when differentiating
            through the optimizer).
        mu_dtype: dtype of the first moment (e.g. ``jnp.bfloat16`` to save memory);
            None keeps the parameter dtype.
        nu_dtype: dtype of the second moment; None keeps the parameter's real dtype.
        nesterov: use Nesterov momentum (Dozat, 2016: NAdam, in Optax's form).

    State: ``ScaleByAdamState(count, mu, nu)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_adam()
        >>> updates, state = tx.update(jnp.array([0.1, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 4) for u in updates]  # the first step is sign(g)
        [1.0, -1.0]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization".
    """
    check.unit_interval("b1", b1)
    check.unit_interval("b2", b2)
    check.non_negative("eps", eps)
    check.non_negative("eps_root", eps_root)
    check.dtype_or_none("mu_dtype", mu_dtype)
    check.dtype_or_none("nu_dtype", nu_dtype)

    def init(params):
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=tree.zeros_like(params, mu_dtype),
            nu=tree.zeros_like(params, nu_dtype, real=True),
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        count = numerics.safe_increment(state.count)

        def leaf(g, m, v):
            dtype = numerics.compute_dtype(g.dtype)
            g_ = g.astype(dtype)
            m_new = b1 * m.astype(dtype) + (1 - b1) * g_
            v_new = b2 * v.astype(numerics.real_dtype(dtype)) + (1 - b2) * numerics.abs_sq(g_)
            bias_correction1 = numerics.bias_correction(b1, count, dtype)
            if nesterov:
                next_correction = numerics.bias_correction(
                    b1, numerics.safe_increment(count), dtype
                )
                m_hat = b1 * m_new / next_correction + (1 - b1) * g_ / bias_correction1
            else:
                m_hat = m_new / bias_correction1
            v_hat = v_new / numerics.bias_correction(b2, count, dtype)
            u = m_hat / (jnp.sqrt(v_hat + eps_root) + eps)
            return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

        updates, mu, nu = tree.map_unzip(leaf, updates, state.mu, state.nu, outputs=3)
        return updates, ScaleByAdamState(count, mu, nu)

    return GradientTransformation(init, update)
