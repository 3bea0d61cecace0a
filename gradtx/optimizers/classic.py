"""The optimizers before Adam: SGD, Adagrad, RMSprop, Adadelta and Rprop.

SGD comes with momentum, Nesterov's momentum or gradient noise (``noisy_sgd``). Each is
the chain of building blocks that defines it, wrapped by ``schedule_injection`` (see
``gradtx.optimizers``); arguments, defaults and numbers follow Optax's functions of the
same name.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from gradtx import check
from gradtx.core import GradientTransformation, ScalarOrSchedule, chain, identity
from gradtx.schedules.injection import schedule_injection
from gradtx.transforms.adaptive import (
    scale_by_adadelta,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
)
from gradtx.transforms.momentum import trace
from gradtx.transforms.noise import add_noise
from gradtx.transforms.regularize import add_decayed_weights
from gradtx.transforms.scaling import scale, scale_by_learning_rate


def _switched_on(value: Any) -> bool:
    """Whether a float argument that switches a block on (momentum, weight decay) does.

    Decided from the Python (or NumPy) value when the optimizer is built: None and 0
    switch the block off (no state, no hyperparameter). A schedule or a JAX array,
    concrete or traced, switches it on: an injector around the optimizer
    (``schedule_injection(gtx.sgd)``, ``optax.inject_hyperparams``) passes its values as
    float32 arrays, concrete in ``init`` and traced in a jitted ``update``, and both must
    build the same chain (a block with a zero coefficient is the identity).
    """
    if value is None:
        return False
    if callable(value) or isinstance(value, jax.Array | jax.core.Tracer):
        return True
    return bool(np.any(np.asarray(value) != 0))


def _check_nesterov_has_momentum(nesterov: bool, momentum: Any) -> None:
    # Optax silently drops nesterov=True without momentum; PyTorch raises. gradtx raises.
    check.boolean("nesterov", nesterov)
    if nesterov and not _switched_on(momentum):
        raise ValueError(f"nesterov=True needs a momentum in (0, 1), got momentum={momentum!r}")


# The private chains below annotate their float hyperparameters: schedule_injection
# injects an argument passed as a Python int (sgd(1), weight_decay=1) only where the
# factory declares it a float, and these factories have no float defaults to show it.


@schedule_injection
def _sgd_chain(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None,
    nesterov: bool,
    weight_decay: ScalarOrSchedule | None,
    accumulator_dtype: Any,
) -> GradientTransformation:
    if momentum is not None:  # a schedule's value, checked under its own name (not trace's)
        check.unit_interval("momentum", momentum, schedule=True)
    return chain(
        add_decayed_weights(weight_decay) if weight_decay is not None else identity(),
        trace(momentum, nesterov, accumulator_dtype=accumulator_dtype)
        if momentum is not None
        else identity(),
        scale_by_learning_rate(learning_rate),
    )


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = 0.0,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    weight_decay: ScalarOrSchedule = 0.0,
) -> GradientTransformation:
    r"""Stochastic gradient descent, with optional momentum and L2 weight decay.

    ::

        g <- g + weight_decay * p                   (L2: before the momentum)
        b <- momentum * b + g                       (b_0 = 0)
        p <- p - lr * b                             (heavy ball, Polyak 1964)
        p <- p - lr * (g + momentum * b)            (nesterov: Sutskever et al. 2013)

    The chain: ``add_decayed_weights(weight_decay)``, ``trace(momentum, nesterov)``,
    ``scale_by_learning_rate(learning_rate)``. ``momentum=0`` (or None, Optax's default)
    builds no momentum buffer and ``weight_decay=0`` no decay term: that choice is made
    from the Python values when the optimizer is built. Same numbers as ``optax.sgd``
    (which has no weight decay).

    ``weight_decay`` is L2 regularization, PyTorch's convention: it is added to the
    gradient and so passes through the momentum buffer. This is ``torch.optim.SGD``
    with ``dampening=0``; for ``dampening`` use ``gradtx.compat.torch.sgd``. Keras puts
    the learning rate inside the buffer (``v = mu v - lr g``), which differs while the
    learning rate changes, and its ``weight_decay`` is decoupled: use
    ``gradtx.compat.keras.sgd``.

    Args:
        learning_rate: a non-negative number or a schedule.
        momentum: the momentum coefficient in [0, 1) (a number or a schedule); 0 or
            None for none.
        nesterov: Nesterov's momentum (see ``nesterov_lookahead``); needs a momentum.
        weight_decay: L2 coefficient, >= 0 (a number or a schedule).
        accumulator_dtype: dtype of the momentum buffer; None keeps the parameter dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.sgd(0.1, momentum=0.9)
        >>> params = jnp.array([1.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     updates, state = tx.update(jnp.array([1.0]), state, params)
        ...     params = gtx.apply_updates(params, updates)
        >>> [round(float(p), 6) for p in params]  # 1 - 0.1 * 1 - 0.1 * 1.9
        [0.71]

    Reference: Robbins & Monro, 1951, "A Stochastic Approximation Method"; Polyak,
    1964; Sutskever, Martens, Dahl & Hinton, 2013, "On the importance of
    initialization and momentum in deep learning".
    """
    if momentum is not None:
        check.unit_interval("momentum", momentum, schedule=True)
    _check_nesterov_has_momentum(nesterov, momentum)
    check.non_negative("weight_decay", weight_decay, schedule=True)
    # checked with or without a momentum buffer: sgd(0.1, 0.0, False, 1e-4), written
    # when weight_decay came fourth, must not pass silently
    check.dtype_or_none("accumulator_dtype", accumulator_dtype)
    return _sgd_chain(
        learning_rate,
        momentum=momentum if _switched_on(momentum) else None,
        nesterov=nesterov,
        weight_decay=weight_decay if _switched_on(weight_decay) else None,
        accumulator_dtype=accumulator_dtype,
    )


@schedule_injection
def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    r"""Adagrad (Duchi, Hazan & Singer, 2011): steps scaled by the root sum of squares.

    ::

        s_t = s_{t-1} + g^2       (s_0 = initial_accumulator_value)
        p  <- p - lr * g / sqrt(s_t + eps)

    The chain: ``scale_by_rss``, ``scale_by_learning_rate``. Same numbers as
    ``optax.adagrad`` and Keras' Adagrad. The paper starts from ``s_0 = 0`` and adds
    its delta outside the square root, ``p <- p - lr * g / (delta + sqrt(s_t))``: the
    chain ``scale_by_rss(0.0, delta, eps_in_sqrt=False)``, ``scale_by_learning_rate``.
    So does PyTorch (``eps=1e-10``), which also decays the learning rate as
    ``lr / (1 + (t - 1) lr_decay)``: use ``gradtx.compat.torch.adagrad``.

    Args:
        learning_rate: a non-negative number or a schedule.
        initial_accumulator_value: starting value of the sum, >= 0.
        eps: added inside the square root, >= 0.
        accumulator_dtype: dtype of the sum (None: the parameter's real dtype); for
            float16 parameters pass ``jnp.float32`` (a float16 sum overflows).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.adagrad(1.0, initial_accumulator_value=0.0, eps=0.0)
        >>> updates, _ = tx.update(jnp.array([-3.0]), tx.init(jnp.zeros(1)))
        >>> updates.tolist()  # the first step is -lr * sign(g)
        [1.0]

    Reference: Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization".
    """
    return chain(
        scale_by_rss(initial_accumulator_value, eps, accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


@schedule_injection
def _rmsprop_chain(
    learning_rate: ScalarOrSchedule,
    decay: float,
    eps: float,
    initial_scale: float,
    eps_in_sqrt: bool,
    centered: bool,
    momentum: ScalarOrSchedule | None,
    nesterov: bool,
    bias_correction: bool,
    nu_dtype: Any,
) -> GradientTransformation:
    if momentum is not None:  # a schedule's value, checked under its own name (not trace's)
        check.unit_interval("momentum", momentum, schedule=True)
    return chain(
        scale_by_rms(
            decay,
            eps,
            initial_scale,
            eps_in_sqrt=eps_in_sqrt,
            centered=centered,
            bias_correction=bias_correction,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov) if momentum is not None else identity(),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""RMSProp (Tieleman & Hinton, 2012), optionally centered (Graves, 2013).

    ::

        v_t = decay v_{t-1} + (1 - decay) g^2                (v_0 = initial_scale)
        m_t = decay m_{t-1} + (1 - decay) g                  (centered)
        d_t = g / sqrt(v_t - m_t^2 + eps)                    (m_t = 0 unless centered;
                                                              eps_in_sqrt=False: / (sqrt(.) + eps))
        p  <- p - lr d_t                                     (no momentum)
        b_t = momentum b_{t-1} - lr d_t;  p <- p + b_t       (momentum; nesterov:
                                                              p <- p - lr d_t + momentum b_t)

    The chain: ``scale_by_rms``, ``scale_by_learning_rate``, ``trace(momentum)``, as in
    ``optax.rmsprop`` (same numbers; ``momentum`` None or 0 builds no buffer). PyTorch
    defaults to ``decay=0.99`` (its ``alpha``) and adds eps outside the square root
    (``rmsprop(lr, decay=0.99, eps_in_sqrt=False)``); its momentum buffer holds
    ``d_t`` before the learning rate, the same map while the learning rate is constant:
    ``gradtx.compat.torch.rmsprop``. Keras puts the learning rate inside the momentum
    buffer too: ``gradtx.compat.keras.rmsprop``.

    Args:
        learning_rate: a non-negative number or a schedule.
        decay: decay of the moving averages, in [0, 1).
        eps: added to the denominator, >= 0.
        initial_scale: initial value of ``v``, >= 0.
        eps_in_sqrt: eps inside the square root (else outside).
        centered: divide by the estimated standard deviation (Graves, 2013).
        momentum: momentum coefficient in [0, 1) (a number or a schedule); None or 0
            for none.
        nesterov: Nesterov's momentum; needs a momentum.
        bias_correction: divide the moving averages by ``1 - decay^t``.
        nu_dtype: dtype of the moving average of ``g^2`` (None: the parameter's real
            dtype); for float16 parameters pass ``jnp.float32``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.rmsprop(0.1, decay=0.75, eps=0.0)
        >>> updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> [round(float(u), 6) for u in updates]  # -0.1 * 2 / sqrt(0.25 * 4)
        [-0.2]

    Reference: Tieleman & Hinton, 2012, "Lecture 6.5 - RMSProp", COURSERA: Neural
    Networks for Machine Learning; Graves, 2013, "Generating Sequences With Recurrent
    Neural Networks".
    """
    if momentum is not None:
        check.unit_interval("momentum", momentum, schedule=True)
    _check_nesterov_has_momentum(nesterov, momentum)
    return _rmsprop_chain(
        learning_rate,
        decay=decay,
        eps=eps,
        initial_scale=initial_scale,
        eps_in_sqrt=eps_in_sqrt,
        centered=centered,
        momentum=momentum if _switched_on(momentum) else None,
        nesterov=nesterov,
        bias_correction=bias_correction,
        nu_dtype=nu_dtype,
    )


@schedule_injection(static_args=("weight_decay_mask",))
def _adadelta_chain(
    learning_rate: ScalarOrSchedule,
    rho: float,
    eps: float,
    weight_decay: ScalarOrSchedule | None,
    weight_decay_mask: Any,
) -> GradientTransformation:
    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask)
        if weight_decay is not None
        else identity(),
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(learning_rate),
    )


def adadelta(
    learning_rate: ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
) -> GradientTransformation:
    r"""Adadelta (Zeiler, 2012): a step in the units of the parameters, no tuning of lr.

    ::

        g <- g + weight_decay * p                                  (L2, before)
        E[g^2]_t  = rho E[g^2]_{t-1} + (1 - rho) g^2
        d_t       = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g
        E[dx^2]_t = rho E[dx^2]_{t-1} + (1 - rho) d_t^2
        p <- p - lr d_t

    The chain: ``add_decayed_weights``, ``scale_by_adadelta``, ``scale_by_learning_rate``
    (``weight_decay=0`` builds no decay term). Same numbers as ``optax.adadelta``, except
    that the learning rate defaults to 1.0 (the paper's method), where Optax's default
    None does not descend. PyTorch's Adadelta is the same (lr=1.0, rho=0.9, eps=1e-6,
    L2 weight decay); Keras defaults to ``learning_rate=0.001, rho=0.95, eps=1e-7``
    and decouples its weight decay: ``gradtx.compat.keras.adadelta``. Zeiler's
    experiments use ``rho=0.95, eps=1e-6``; ``rho=0.9`` is Optax's and PyTorch's.
    With a learning rate other than 1, ``E[dx^2]`` averages the unscaled ``d_t``, not
    the applied ``lr d_t`` (as Optax and PyTorch do; the paper has no learning rate).

    Args:
        learning_rate: a non-negative number or a schedule; 1.0 is the paper's method.
        rho: decay of the moving averages, in [0, 1).
        eps: added inside the square roots, > 0.
        weight_decay: L2 coefficient, >= 0 (a number or a schedule).
        weight_decay_mask: which leaves to decay (see ``add_decayed_weights``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.adadelta(rho=0.0, eps=1.0)
        >>> updates, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
        >>> [round(float(u), 6) for u in updates]  # -sqrt(0 + 1) / sqrt(9 + 1) * 3
        [-0.948683]

    Reference: Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method".
    """
    check.non_negative("weight_decay", weight_decay, schedule=True)
    return _adadelta_chain(
        learning_rate,
        rho=rho,
        eps=eps,
        weight_decay=weight_decay if _switched_on(weight_decay) else None,
        weight_decay_mask=weight_decay_mask,
    )


@schedule_injection
def rprop(
    learning_rate: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> GradientTransformation:
    r"""Rprop (Riedmiller & Braun, 1993), iRprop- form: a per-element step on the sign.

    ::

        s   = sign(g_t) sign(g_{t-1})
        d_t = clip(d_{t-1} * (eta_plus if s > 0 else eta_minus), min_step_size,
                   max_step_size)  where s != 0;  d_0 = learning_rate
        p  <- p - d_t sign(g_t)    (no step, and g_t forgotten, where s < 0)

    The chain: ``scale_by_rprop``, ``scale(-1)``. ``optax.rprop`` (0.2.8) applies each
    update one step late (see ``scale_by_rprop``); otherwise the numbers are the same.
    Full-batch only: the sign of a noisy minibatch gradient flips at random.
    ``learning_rate`` is the initial step size, read once by ``init`` (a number, not
    a schedule). PyTorch's Rprop also clips the step size on the first step and
    defaults to ``min_step_size=1e-6, max_step_size=50`` as here:
    ``gradtx.compat.torch.rprop``.

    Args:
        learning_rate: the initial step size, > 0.
        eta_minus: factor on a sign change, in (0, 1].
        eta_plus: factor while the sign holds, >= 1.
        min_step_size: lower bound of the step sizes, >= 0.
        max_step_size: upper bound of the step sizes, >= min_step_size.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.rprop(0.1)
        >>> updates, _ = tx.update(jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 6) for u in updates]
        [-0.1, 0.1]

    Reference: Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP Algorithm"; Igel & Hüsken, 2000.
    """
    return chain(
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size),
        scale(-1.0),
    )


@schedule_injection
def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: float = 0.01,
    gamma: float = 0.55,
    seed: int = 0,
    *,
    key: jax.Array | int | None = None,
) -> GradientTransformation:
    r"""SGD on gradients with annealed Gaussian noise (Neelakantan et al., 2015).

    With t counting updates from 0::

        p <- p - lr * (g + n_t),   n_t ~ N(0, eta / (1 + t)^gamma)

    The chain: ``add_noise(eta, gamma, seed, key=key)``, ``scale_by_learning_rate``, as
    ``optax.noisy_sgd``. The key lives in the state and is split at every update
    (``add_noise``), so the draws differ from Optax's for the same key; the
    distribution is the same.

    Args:
        learning_rate: a non-negative number or a schedule.
        eta: the noise variance at step 0, >= 0 (the paper tries 0.01, 0.3 and 1.0).
        gamma: the variance's decay exponent, >= 0 (the paper's 0.55).
        seed: the seed of the noise's PRNG key, an int.
        key: the PRNG key instead of its seed, as Optax's ``key`` (keyword-only here): a
            typed key (``jax.random.key(s)``), a raw one (``jax.random.PRNGKey(s)``) or
            an int; each gives the noise of ``seed=s`` (``add_noise``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.noisy_sgd(0.1, eta=0.0)
        >>> updates, _ = tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 6) for u in updates]  # no noise: plain SGD
        [-0.1, 0.2]

    Reference: Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, 2015,
    "Adding Gradient Noise Improves Learning for Very Deep Networks".
    """
    return chain(add_noise(eta, gamma, seed, key=key), scale_by_learning_rate(learning_rate))
