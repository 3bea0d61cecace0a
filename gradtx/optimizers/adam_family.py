"""The Adam family: Adam, AdamW, AMSGrad, AdaMax, AdaMaxW, Nadam, NAdamW and RAdam.

Each is the chain of building blocks that defines it, wrapped by ``schedule_injection``
(see ``gradtx.optimizers``); arguments, defaults and numbers follow Optax's functions of
the same name.
"""

from __future__ import annotations

from typing import Any

from gradtx.core import GradientTransformation, ScalarOrSchedule, chain
from gradtx.schedules.injection import schedule_injection
from gradtx.transforms.adam import (
    amsgrad_max,
    scale_by_adam,
    scale_by_adamax,
)
from gradtx.transforms.rectified import scale_by_radam
from gradtx.transforms.regularize import add_decayed_weights
from gradtx.transforms.scaling import scale_by_learning_rate


@schedule_injection
def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, 2015): ``scale_by_adam`` then ``-learning_rate``.

    ::

        m_t = b1 m_{t-1} + (1 - b1) g;   v_t = b2 v_{t-1} + (1 - b2) g^2
        p  <- p - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)

    Same numbers as ``optax.adam`` and as ``torch.optim.Adam`` without weight decay
    (PyTorch's ``weight_decay`` is L2: use ``gradtx.compat.torch.adam``). Keras adds
    eps to the raw ``sqrt(v_t)``: use ``gradtx.compat.keras.adam``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: second-moment decay in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (None: the parameter dtype).
        nu_dtype: dtype of the second moment (None: the parameter's real dtype). For
            float16 parameters pass ``jnp.float32``: a float16 second moment of
            gradients below ~1e-3 underflows to 0, and one of gradients above 256
            overflows.
        nesterov: NAdam's Nesterov momentum (see ``nadam``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.adam(0.1)
        >>> params = {"w": jnp.array([1.0, -1.0])}
        >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
        >>> gtx.apply_updates(params, updates)["w"].tolist()
        [0.8999999761581421, -0.8999999761581421]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization".
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov
        ),
        scale_by_learning_rate(learning_rate),
    )


@schedule_injection(static_args=("mask",))
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nu_dtype: Any = None,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    ::

        m_t, v_t, m_hat, v_hat as in ``adam``
        p <- p - lr * (m_hat / (sqrt(v_hat + eps_root) + eps) + weight_decay * p)

    The chain: ``scale_by_adam``, ``add_decayed_weights(weight_decay, mask)``,
    ``scale_by_learning_rate``. The decay is added *after* Adam's preconditioner, so
    it is not rescaled by ``1 / sqrt(v_hat)``; putting ``add_decayed_weights`` first
    would be Adam with L2 regularization (see ``docs/optimizers.md``). The decay is
    multiplied by the learning rate, as in Optax and PyTorch (the paper multiplies it
    by the schedule multiplier only). The paper's Algorithm 2, with alpha the step
    size, lam the decay and eta a schedule multiplier, ``p <- p - eta(t) * (alpha *
    m_hat / (sqrt(v_hat) + eps) + lam * p)``, is ``adamw(lambda t: alpha * eta(t),
    weight_decay=lam / alpha)`` (to rounding), or exactly the chain ``scale_by_adam(),
    scale(alpha), add_decayed_weights(lam), scale_by_learning_rate(eta)``. Same numbers
    as ``optax.adamw``; ``torch.optim.AdamW`` computes ``p * (1 - lr wd)`` first, the
    same map, but defaults to ``weight_decay=1e-2``. Keras' AdamW adds eps to the raw
    ``sqrt(v_t)``: ``gradtx.compat.keras.adamw``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: second-moment decay in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (None: the parameter dtype).
        nu_dtype: dtype of the second moment (None: the parameter's real dtype). For
            float16 parameters pass ``jnp.float32``: a float16 second moment of
            gradients below ~1e-3 underflows to 0, and one of gradients above 256
            overflows.
        weight_decay: decoupled decay coefficient, >= 0 (a number or a schedule).
        mask: which leaves to decay: a tree of bools like the params or a function of
            the params (e.g. no decay on biases and norms). Static.
        nesterov: NAdam's Nesterov momentum (see ``nadamw``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.adamw(0.1, weight_decay=0.5)
        >>> params = jnp.array([2.0])
        >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]  # -0.1 * (sign(g) + 0.5 * 2)
        [-0.2]

    Reference: Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization".
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@schedule_injection
def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AMSGrad (Reddi, Kale & Kumar, 2018): Adam with a non-decreasing denominator.

    ::

        m_t, v_t as in ``adam``
        v_max_t = max(v_max_{t-1}, v_t / (1 - b2^t))
        p <- p - lr * (m_t / (1 - b1^t)) / (sqrt(v_max_t + eps_root) + eps)

    The chain: ``amsgrad_max``, ``scale_by_learning_rate``. Same numbers as
    ``optax.amsgrad``. PyTorch's ``Adam(amsgrad=True)`` keeps the maximum of the raw
    ``v_t`` and divides it by the current ``1 - b2^t``: ``gradtx.compat.torch.adam``
    with ``amsgrad=True``. Without bias corrections (``bias_correction_mu=False,
    bias_correction_nu=False``) this is the paper's Algorithm 2.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: second-moment decay in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (None: the parameter dtype).
        nu_dtype: dtype of the second moment and its running maximum (None: the
            parameter's real dtype); for float16 parameters pass ``jnp.float32``.
        bias_correction_mu: divide the first moment by ``1 - b1^t``.
        bias_correction_nu: divide the second moment by ``1 - b2^t`` before the maximum.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.amsgrad(0.1)
        >>> updates, _ = tx.update(jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 6) for u in updates]  # the first step is -lr * sign(g)
        [-0.1, 0.1]

    Reference: Reddi, Kale & Kumar, 2018, "On the Convergence of Adam and Beyond".
    """
    return chain(
        amsgrad_max(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            bias_correction_mu=bias_correction_mu,
            bias_correction_nu=bias_correction_nu,
        ),
        scale_by_learning_rate(learning_rate),
    )


@schedule_injection
def adamax(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AdaMax (Kingma & Ba, 2015, sec. 7): Adam with the infinity norm.

    ::

        m_t = b1 m_{t-1} + (1 - b1) g;   u_t = max(b2 u_{t-1}, |g| + eps)
        p <- p - lr * (m_t / (1 - b1^t)) / u_t

    The chain: ``scale_by_adamax``, ``scale_by_learning_rate``. Same numbers as
    ``optax.adamax`` and PyTorch's Adamax. Keras adds eps after the maximum:
    ``gradtx.compat.keras.adamax``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: decay of the infinity norm in [0, 1).
        eps: added to ``|g|`` inside the maximum, >= 0.
        nu_dtype: dtype of the infinity norm (None: the parameter's real dtype); for
            bfloat16 parameters pass ``jnp.float32`` (a bfloat16 norm cannot decay).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.adamax(0.1, eps=0.0)
        >>> updates, _ = tx.update(jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 6) for u in updates]  # the first step is -lr * sign(g)
        [-0.1, 0.1]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", sec. 7.
    """
    return chain(
        scale_by_adamax(b1, b2, eps, nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate)
    )


@schedule_injection(static_args=("mask",))
def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AdaMax with decoupled weight decay (Loshchilov & Hutter's decay on Kingma &
    Ba's AdaMax), as ``optax.adamaxw``.

    ::

        m_t, u_t as in ``adamax``
        p <- p - lr * ((m_t / (1 - b1^t)) / u_t + weight_decay * p)

    The chain: ``scale_by_adamax``, ``add_decayed_weights(weight_decay, mask)``,
    ``scale_by_learning_rate``: the decay is added after the preconditioner, as in
    ``adamw``. Same numbers as ``optax.adamaxw``. Keras' Adamax takes
    ``weight_decay`` decoupled too, but adds eps after the maximum and applies the
    decay before the step: ``gradtx.compat.keras.adamax(weight_decay=...)``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: decay of the infinity norm in [0, 1).
        eps: added to ``|g|`` inside the maximum, >= 0.
        weight_decay: decoupled decay coefficient, >= 0 (a number or a schedule).
        mask: which leaves to decay: a tree of bools like the params or a function of
            the params. Static.
        nu_dtype: dtype of the infinity norm (None: the parameter's real dtype).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.adamaxw(0.1, eps=0.0, weight_decay=0.5)
        >>> params = jnp.array([2.0])
        >>> updates, _ = tx.update(jnp.array([3.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]  # -0.1 * (sign(g) + 0.5 * 2)
        [-0.2]

    Reference: Kingma & Ba, 2015, sec. 7; Loshchilov & Hutter, 2019, "Decoupled Weight
    Decay Regularization".
    """
    return chain(
        scale_by_adamax(b1, b2, eps, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@schedule_injection
def nadam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    nesterov: bool = True,
) -> GradientTransformation:
    r"""NAdam (Dozat, 2016): Adam with Nesterov momentum, in Optax's form.

    ::

        m_t, v_t, v_hat as in ``adam``
        m_hat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)
        p <- p - lr * m_hat / (sqrt(v_hat + eps_root) + eps)

    The look-ahead replaces the bias-corrected momentum by the one of the next step
    plus the current gradient's share. The chain: ``scale_by_adam(nesterov=True)``,
    ``scale_by_learning_rate``; same numbers as ``optax.nadam`` (``nesterov=False`` is
    ``adam``, kept for Optax's signature). PyTorch's NAdam multiplies b1 by a momentum
    schedule ``mu_t = b1 (1 - 0.5 * 0.96^(0.004 t))`` and Keras by ``0.96^t``: use
    ``gradtx.compat.torch.nadam`` / ``gradtx.compat.keras.nadam``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: second-moment decay in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (None: the parameter dtype).
        nu_dtype: dtype of the second moment (None: the parameter's real dtype). For
            float16 parameters pass ``jnp.float32``: a float16 second moment of
            gradients below ~1e-3 underflows to 0, and one of gradients above 256
            overflows.
        nesterov: the Nesterov look-ahead (True; False gives ``adam``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.nadam(0.1)
        >>> updates, _ = tx.update(jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 6) for u in updates]  # -0.1 * (0.9 * 0.1 / 0.19 + 0.1 / 0.1)
        [-0.147368, 0.147368]

    Reference: Dozat, 2016, "Incorporating Nesterov Momentum into Adam".
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov
        ),
        scale_by_learning_rate(learning_rate),
    )


@schedule_injection(static_args=("mask",))
def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nu_dtype: Any = None,
    nesterov: bool = True,
) -> GradientTransformation:
    r"""NAdamW: NAdam (Dozat, 2016) with decoupled weight decay (Loshchilov & Hutter).

    ::

        m_hat, v_hat as in ``nadam``
        p <- p - lr * (m_hat / (sqrt(v_hat + eps_root) + eps) + weight_decay * p)

    The chain: ``scale_by_adam(nesterov=True)``, ``add_decayed_weights(weight_decay,
    mask)``, ``scale_by_learning_rate``; same numbers as ``optax.nadamw``. PyTorch's
    ``NAdam(decoupled_weight_decay=True)`` uses its momentum schedule (see ``nadam``):
    ``gradtx.compat.torch.nadam``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: second-moment decay in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (None: the parameter dtype).
        nu_dtype: dtype of the second moment (None: the parameter's real dtype). For
            float16 parameters pass ``jnp.float32``: a float16 second moment of
            gradients below ~1e-3 underflows to 0, and one of gradients above 256
            overflows.
        weight_decay: decoupled decay coefficient, >= 0 (a number or a schedule).
        mask: which leaves to decay (a tree of bools or a function of the params). Static.
        nesterov: the Nesterov look-ahead (True; False gives ``adamw``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.nadamw(0.1, weight_decay=0.5)
        >>> params = jnp.array([2.0])
        >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]  # -0.1 * (1.473684 + 0.5 * 2)
        [-0.247368]

    Reference: Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; Loshchilov &
    Hutter, 2019, "Decoupled Weight Decay Regularization".
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@schedule_injection(static_args=("threshold",))
def radam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""RAdam (Liu et al., 2020): Adam whose adaptive step is rectified by ``r_t``
    while the variance of ``v_hat`` is intractable, plain momentum before that.

    ::

        m_t, v_t, rho_t, r_t as in ``scale_by_radam``
        p <- p - lr * r_t (m_t / bc1) / (sqrt(v_t / bc2 + eps_root) + eps)  if rho_t >= threshold
        p <- p - lr * m_t / bc1                                              otherwise

    The chain: ``scale_by_radam``, ``scale_by_learning_rate``. Same numbers as
    ``optax.radam`` (to the rounding of ``rho_t``, which gradtx computes without
    cancellation). ``scale_by_radam``'s docstring gives the paper's form (``rho_t >
    4``, no eps); PyTorch's RAdam is ``gradtx.compat.torch.radam``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: second-moment decay in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        threshold: rectify once ``rho_t`` reaches it, >= 4 (Optax's 5). Static.
        nesterov: NAdam's Nesterov momentum (Optax's option).
        nu_dtype: dtype of the second moment (None: the parameter's real dtype).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.radam(0.1)
        >>> updates, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 6) for u in updates]  # rho_1 = 1: momentum, -lr * g
        [-0.05, 0.2]

    Reference: Liu, Jiang, He, Chen, Liu, Gao & Han, 2020, "On the Variance of the
    Adaptive Learning Rate and Beyond".
    """
    return chain(
        scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )
