"""Adam and its family: Adam (with Nesterov's momentum, NAdam), AMSGrad's maximum of the
second moments, AdaMax's infinity norm."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation, Updates


class ScaleByAdamState(NamedTuple):
    """The state of ``scale_by_adam``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1.
        mu: first moment (moving average of g), a tree like the params in ``mu_dtype``
            (None: the parameter dtype), initially 0.
        nu: second moment (moving average of |g|^2), a tree like the params in
            ``nu_dtype`` (None: the parameter's real dtype), initially 0.
    """

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    nesterov: bool = False,
    eps_before_bias_correction: bool = False,
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
        eps: added to the denominator outside the square root, >= 0 (with 0, an
            element whose gradients have all been 0 gives 0 / 0 = NaN).
        eps_root: added inside the square root, >= 0 (useful when differentiating
            through the optimizer).
        mu_dtype: dtype of the first moment (e.g. ``jnp.bfloat16`` to save memory);
            None keeps the parameter dtype. A moment is updated in the wider of its
            dtype and the compute dtype (at least float32): a float64 moment for
            float32 gradients accumulates in float64. Updates keep the gradient dtype.
        nu_dtype: dtype of the second moment; None keeps the parameter's real dtype.
        nesterov: use Nesterov momentum (Dozat, 2016: NAdam, in Optax's form).
        eps_before_bias_correction: Keras' "epsilon hat": add eps to the raw
            ``sqrt(v_t + eps_root)``, i.e. ``u = m_hat * sqrt(1 - b2^t) / (sqrt(v_t +
            eps_root) + eps)`` (the efficient form of Kingma & Ba, sec. 2); the
            effective eps is then larger early in training.

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
    b1, b2, eps, eps_root = map(numerics.python_number, (b1, b2, eps, eps_root))
    check.dtype_or_none("mu_dtype", mu_dtype)
    check.dtype_or_none("nu_dtype", nu_dtype)
    check.boolean("nesterov", nesterov)
    check.boolean("eps_before_bias_correction", eps_before_bias_correction)

    def init(params):
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=tree.zeros_like(params, mu_dtype),
            nu=tree.zeros_like(params, nu_dtype, real=True),
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_adam", state, ScaleByAdamState)
        count = numerics.safe_increment(state.count)
        # The scalar corrections are the same for every leaf of a dtype: computed once
        # per dtype here, not once per leaf (an eager update of many leaves is
        # dominated by dispatching such small ops).
        compute_dtypes = {numerics.compute_dtype(d) for d in numerics.leaf_dtypes(updates)}
        moment_dtypes = numerics.leaf_dtypes(state.mu) | numerics.leaf_dtypes(state.nu)
        corrections = {
            dtype: (
                numerics.bias_correction(b1, count, dtype),
                numerics.bias_correction(b2, count, dtype),
                numerics.bias_correction(b1, numerics.safe_increment(count), dtype)
                if nesterov
                else None,
            )
            for dtype in {
                numerics.real_dtype(numerics.promote_types(c, d))
                for c in compute_dtypes
                for d in moment_dtypes | {c}
            }
        }

        def leaf(g, m, v):
            dtype = numerics.compute_dtype(g.dtype)
            # A moment stored wider than the update (mu_dtype=float64 for float32
            # updates) is accumulated in its own precision, not rounded to the update's
            # at every step; a narrower one (bfloat16) in the compute dtype.
            m_dtype = numerics.promote_types(dtype, m.dtype)
            v_dtype = numerics.promote_types(numerics.real_dtype(dtype), v.dtype)
            bias_correction1, _, next_correction = corrections[numerics.real_dtype(m_dtype)]
            bias_correction2 = corrections[v_dtype][1]
            g_ = g.astype(m_dtype)
            # a b1 array wider than the moment (float64 under x64) widens the moment's
            # arithmetic, as implicit promotion did: cast to the common dtype, not narrowed
            beta1 = numerics.factor(b1, numerics.result_type(b1, m_dtype))
            m_new = beta1 * m.astype(m_dtype) + (1 - beta1) * g_
            g_squared = numerics.abs_sq(g.astype(numerics.promote_types(dtype, v_dtype)))
            v_new = b2 * v.astype(v_dtype) + (1 - b2) * g_squared
            m_new = numerics.as_stored(m_new, m.dtype, g.dtype)
            v_new = numerics.as_stored(v_new, v.dtype, g.dtype)
            # real corrections and denominators cast explicitly to the complex moment's
            # dtype (as promotion would): strict promotion refuses complex64 / float32
            bias_correction1 = bias_correction1.astype(m_dtype)
            if nesterov:
                next_correction = next_correction.astype(m_dtype)
                m_hat = beta1 * m_new / next_correction + (1 - beta1) * g_ / bias_correction1
            else:
                m_hat = m_new / bias_correction1
            if eps_before_bias_correction:
                m_hat, scale = numerics.promote(m_hat, jnp.sqrt(bias_correction2))
                m_hat, denominator = numerics.promote(
                    m_hat * scale, jnp.sqrt(v_new + eps_root) + eps
                )
            else:
                m_hat, denominator = numerics.promote(
                    m_hat, jnp.sqrt(v_new / bias_correction2 + eps_root) + eps
                )
            u = m_hat / denominator
            return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

        updates, mu, nu = tree.map_unzip(
            leaf, updates, state.mu, state.nu, outputs=3, updates_first=True
        )
        return updates, ScaleByAdamState(count, mu, nu)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update,
            returns_product=numerics.is_constant_zero(eps),
            takes_sum_before=not nesterov,
            takes_product_before=not nesterov,
        ),
    )


class ScaleByAmsgradState(NamedTuple):
    """The state of ``amsgrad_max``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1.
        mu: first moment, a tree like the params in ``mu_dtype`` (None: the parameter
            dtype), initially 0.
        nu: second moment, a tree like the params in ``nu_dtype`` (None: the
            parameter's real dtype), initially 0.
        nu_max: running maximum of the second moment (of ``nu / (1 - b2^t)``, or of
            ``nu`` itself with ``correct_after_max=True``), like ``nu``, initially 0.
    """

    count: jax.Array
    mu: Updates
    nu: Updates
    nu_max: Updates


def amsgrad_max(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    correct_after_max: bool = False,
    eps_before_bias_correction: bool = False,
) -> GradientTransformation:
    r"""AMSGrad's preconditioner (Reddi, Kale & Kumar, 2018): Adam whose denominator
    never decreases.

    With t counting updates from 1::

        m_t     = b1 * m_{t-1} + (1 - b1) * g
        v_t     = b2 * v_{t-1} + (1 - b2) * |g|^2
        m_hat   = m_t / (1 - b1^t)                  (bias_correction_mu)
        v_max_t = max(v_max_{t-1}, v_t / (1 - b2^t))  (bias_correction_nu)
        u       = m_hat / (sqrt(v_max_t + eps_root) + eps)

    A drop-in replacement for ``scale_by_adam`` in a chain: it keeps its own moments, so
    it goes where ``scale_by_adam`` was (chained after it, it would precondition Adam's
    output a second time). Adam's effective step ``lr / sqrt(v_hat)`` can grow again
    after a burst of large gradients has decayed out of ``v``; the running maximum
    keeps it non-increasing, which is what the convergence proof of Reddi et al. needs.

    Same numbers as ``optax.scale_by_amsgrad`` (the maximum of the bias-corrected
    second moment). PyTorch's ``Adam(amsgrad=True)`` takes the maximum of the raw
    ``v_t`` and divides it by the current ``1 - b2^t`` (see ``gradtx.compat.torch``).
    The paper's Algorithm 2 has no bias correction and no eps: ``bias_correction_mu=False,
    bias_correction_nu=False, eps=0``.

    Args:
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0 (with 0, an
            element whose gradients have all been 0 gives 0 / 0 = NaN).
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment; None keeps the parameter dtype. It is
            updated in the wider of this dtype and the compute dtype (at least float32).
        nu_dtype: dtype of the second moment and of its running maximum; None keeps the
            parameter's real dtype. For float16 parameters pass ``jnp.float32``: a
            float16 ``(1 - b2) |g|^2`` of gradients ~1e-3 underflows to 0.
        bias_correction_mu: divide the first moment by ``1 - b1^t``.
        bias_correction_nu: divide the second moment by ``1 - b2^t`` before the maximum.
        correct_after_max: take the maximum of the raw ``v_t`` and divide it by the
            current ``1 - b2^t`` afterwards (PyTorch's and Keras' AMSGrad):
            ``v_max_t = max(v_max_{t-1}, v_t)``, ``u = m_hat / (sqrt(v_max_t / (1 -
            b2^t) + eps_root) + eps)``. It moves the bias correction of the second
            moment, so it needs ``bias_correction_nu=True`` (else a ValueError).
        eps_before_bias_correction: add eps to the raw ``sqrt(v_max_t + eps_root)``
            (Keras' "epsilon hat"): ``u = m_hat * sqrt(1 - b2^t) / (sqrt(v_max_t +
            eps_root) + eps)``. Needs ``correct_after_max=True`` (else a ValueError):
            only then is the maximum taken of the raw ``v_t``, before the correction.

    State: ``ScaleByAmsgradState(count, mu, nu, nu_max)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.amsgrad_max(b2=0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([4.0]), state)
        >>> u, state = tx.update(jnp.array([0.0]), state)
        >>> float(state.nu_max[0])  # Adam's v_hat dropped to 5.33; the maximum stays
        16.0

    Reference: Reddi, Kale & Kumar, 2018, "On the Convergence of Adam and Beyond".
    """
    check.unit_interval("b1", b1)
    check.unit_interval("b2", b2)
    check.non_negative("eps", eps)
    check.non_negative("eps_root", eps_root)
    b1, b2, eps, eps_root = map(numerics.python_number, (b1, b2, eps, eps_root))
    check.dtype_or_none("mu_dtype", mu_dtype)
    check.dtype_or_none("nu_dtype", nu_dtype)
    check.boolean("bias_correction_mu", bias_correction_mu)
    check.boolean("bias_correction_nu", bias_correction_nu)
    check.boolean("correct_after_max", correct_after_max)
    check.boolean("eps_before_bias_correction", eps_before_bias_correction)
    # Either combination would leave a switch without effect: refused, never ignored.
    if correct_after_max and not bias_correction_nu:
        raise ValueError(
            "correct_after_max=True needs bias_correction_nu=True, got "
            "bias_correction_nu=False: correct_after_max moves the bias correction of "
            "v_t after the maximum, and without it there is none to move; for the "
            "maximum of the raw v_t uncorrected (the paper's Algorithm 2) pass "
            "bias_correction_nu=False alone"
        )
    if eps_before_bias_correction and not correct_after_max:
        raise ValueError(
            "eps_before_bias_correction=True needs correct_after_max=True, got "
            "correct_after_max=False: eps goes on the raw sqrt(v_max_t) before the "
            "division by sqrt(1 - b2^t), and only with correct_after_max is the maximum "
            "taken of the raw v_t (otherwise of v_t / (1 - b2^t), already corrected)"
        )

    def init(params):
        return ScaleByAmsgradState(
            count=jnp.zeros([], jnp.int32),
            mu=tree.zeros_like(params, mu_dtype),
            nu=tree.zeros_like(params, nu_dtype, real=True),
            nu_max=tree.zeros_like(params, nu_dtype, real=True),
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("amsgrad_max", state, ScaleByAmsgradState)
        count = numerics.safe_increment(state.count)

        def leaf(g, m, v, v_max):
            dtype = numerics.compute_dtype(g.dtype)
            # Moments stored wider than the update (float64 for float32 updates)
            # accumulate in their own precision, not rounded to the update's each step.
            m_dtype = numerics.promote_types(dtype, m.dtype)
            real = numerics.promote_types(numerics.real_dtype(dtype), v.dtype)
            beta1 = numerics.factor(b1, m_dtype)
            beta2 = numerics.hyperparameter(b2, real)
            g_ = g.astype(numerics.promote_types(dtype, real))
            m_new = beta1 * m.astype(m_dtype) + (1 - beta1) * g.astype(m_dtype)
            v_new = beta2 * v.astype(real) + (1 - beta2) * numerics.abs_sq(g_)
            m_new = numerics.as_stored(m_new, m.dtype, g.dtype)
            v_new = numerics.as_stored(v_new, v.dtype, g.dtype)
            m_hat = (
                m_new / numerics.bias_correction(b1, count, m_dtype).astype(m_dtype)
                if bias_correction_mu
                else m_new
            )
            if correct_after_max:
                v_max_new = jnp.maximum(v_max.astype(real), v_new)
                v_max_new = numerics.as_stored(v_max_new, v_max.dtype, g.dtype)
                correction = numerics.bias_correction(b2, count, real)
                root = numerics.hyperparameter(eps_root, real)
                if eps_before_bias_correction:
                    denominator = (jnp.sqrt(v_max_new + root) + eps) / jnp.sqrt(correction)
                else:
                    denominator = jnp.sqrt(v_max_new / correction + root) + eps
                m_hat, denominator = numerics.promote(m_hat, denominator)
                u = m_hat / denominator
            else:
                v_eff = (
                    v_new / numerics.bias_correction(b2, count, real)
                    if bias_correction_nu
                    else v_new
                )
                v_max_new = jnp.maximum(v_max.astype(real), v_eff)
                v_max_new = numerics.as_stored(v_max_new, v_max.dtype, g.dtype)
                denominator = jnp.sqrt(v_max_new + numerics.hyperparameter(eps_root, real))
                denominator = denominator + numerics.hyperparameter(eps, real)
                m_hat, denominator = numerics.promote(m_hat, denominator)
                u = m_hat / denominator
            return (
                u.astype(g.dtype),
                m_new.astype(m.dtype),
                v_new.astype(v.dtype),
                v_max_new.astype(v_max.dtype),
            )

        updates, mu, nu, nu_max = tree.map_unzip(
            leaf, updates, state.mu, state.nu, state.nu_max, outputs=4, updates_first=True
        )
        return updates, ScaleByAmsgradState(count, mu, nu, nu_max)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update,
            returns_product=numerics.is_constant_zero(eps),
            takes_sum_before=True,
            takes_product_before=True,
        ),
    )


class ScaleByAdamaxState(NamedTuple):
    """The state of ``scale_by_adamax``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1.
        mu: first moment, a tree like the params in their dtype, initially 0.
        nu: exponentially weighted infinity norm, a tree like the params in
            ``nu_dtype`` (None: the parameter's real dtype), initially 0.
    """

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_in_max: bool = True,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AdaMax's preconditioner (Kingma & Ba, 2015, sec. 7): Adam with the infinity norm.

    With t counting updates from 1::

        m_t = b1 * m_{t-1} + (1 - b1) * g
        u_t = max(b2 * u_{t-1}, |g| + eps)
        update = (m_t / (1 - b1^t)) / u_t

    The infinity norm needs no bias correction. Same numbers as ``optax.scale_by_adamax``
    and PyTorch's ``Adamax`` (eps inside the maximum); Keras adds eps after the maximum
    (see ``gradtx.compat.keras``). The paper's Algorithm 2 has no eps,
    ``u_t = max(b2 * u_{t-1}, |g|)``: ``eps=0`` (either ``eps_in_max``).

    Args:
        b1: decay of the first moment, in [0, 1).
        b2: decay of the infinity norm, in [0, 1).
        eps: added to ``|g|`` inside the maximum, >= 0 (keeps the first division finite).
        eps_in_max: False gives Keras' form, ``u_t = max(b2 * u_{t-1}, |g|)`` and
            ``update = (m_t / (1 - b1^t)) / (u_t + eps)``.
        nu_dtype: dtype of the infinity norm; None keeps the parameter's real dtype. For
            bfloat16 parameters pass ``jnp.float32``: ``b2 * u`` rounds back to ``u``
            in bfloat16, so the norm never decays after a large gradient.

    State: ``ScaleByAdamaxState(count, mu, nu)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_adamax(eps=0.0)
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 4) for u in updates]  # the first step is sign(g)
        [1.0, -1.0]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", sec. 7.
    """
    check.unit_interval("b1", b1)
    check.unit_interval("b2", b2)
    check.non_negative("eps", eps)
    check.dtype_or_none("nu_dtype", nu_dtype)
    check.boolean("eps_in_max", eps_in_max)
    b1, b2, eps = map(numerics.python_number, (b1, b2, eps))

    def init(params):
        return ScaleByAdamaxState(
            count=jnp.zeros([], jnp.int32),
            mu=tree.zeros_like(params),
            nu=tree.zeros_like(params, nu_dtype, real=True),
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_adamax", state, ScaleByAdamaxState)
        count = numerics.safe_increment(state.count)

        def leaf(g, m, u):
            dtype = numerics.compute_dtype(g.dtype)
            # a norm stored wider than the compute dtype is updated in its own precision
            real = numerics.promote_types(numerics.real_dtype(dtype), u.dtype)
            beta1 = numerics.factor(b1, dtype)
            g_ = g.astype(dtype)
            m_new = beta1 * m.astype(dtype) + (1 - beta1) * g_
            epsilon = numerics.hyperparameter(eps, real)
            u_new = jnp.maximum(
                numerics.hyperparameter(b2, real) * u.astype(real),
                jnp.abs(g_) + epsilon if eps_in_max else jnp.abs(g_),
            )
            m_new = numerics.as_stored(m_new, m.dtype, g.dtype)
            u_new = numerics.as_stored(u_new, u.dtype, g.dtype)
            m_hat = m_new / numerics.bias_correction(b1, count, dtype).astype(dtype)
            denominator = u_new if eps_in_max else u_new + epsilon
            m_hat, denominator = numerics.promote(m_hat, denominator)
            return (
                (m_hat / denominator).astype(g.dtype),
                m_new.astype(m.dtype),
                u_new.astype(u.dtype),
            )

        updates, mu, nu = tree.map_unzip(
            leaf, updates, state.mu, state.nu, outputs=3, updates_first=True
        )
        return updates, ScaleByAdamaxState(count, mu, nu)

    return GradientTransformation(
        init,
        tree.updates_from_first_map(
            update, returns_product=False, takes_sum_before=True, takes_product_before=True
        ),
    )
