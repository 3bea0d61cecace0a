"""Adaptive preconditioners: Adam and its family, RMSProp, Adagrad, Adadelta, Rprop."""

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
        for path, leaf in jax.tree_util.tree_leaves_with_path(zeros):
            if jnp.iscomplexobj(leaf):
                raise TypeError(
                    f"scale_by_rprop needs real parameters; {jax.tree_util.keystr(path)} is "
                    f"{leaf.dtype.name} (the sign of a complex number is undefined)"
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
