"""Keras 3's optimizers and learning-rate schedules as gradtx chains and schedules.

Each optimizer takes ``keras.optimizers.<Name>``'s argument names and defaults and
returns a ``named_chain`` of gradtx blocks that reproduces Keras 3 step for step
(checked against Keras 3.15 on its JAX backend: float64 within 1e-10, float32 within
1e-5). Keras' conventions, visible in the chains:

- ``weight_decay`` is decoupled on every optimizer: ``p <- p - p * wd * lr`` before the
  step (``add_decoupled_weight_decay`` at the end of the chain);
- SGD and RMSprop put the learning rate inside the momentum buffer
  (``scale_by_learning_rate`` before ``trace``);
- Adam adds eps to the raw ``sqrt(v)`` ("epsilon hat"), eps is inside the square root
  in RMSprop and Adagrad, after the maximum in Adamax, and eps defaults to 1e-7;
- Nadam uses the momentum schedule ``mu_t = b1 (1 - 0.5 * 0.96^t)``.

``learning_rate`` is a number or a schedule ``step -> value`` evaluated, as Keras does,
at the number of updates made so far (t from 0). The schedules
(``gradtx.compat.keras.schedules``, re-exported here) take Keras' names and compute in
the default float dtype (float64 under x64, as Keras' do with floatx float64, except
``CosineDecay``, which Keras computes in float32 whatever its floatx).
These are plain chains (hyperparameters as Python doubles, as Keras casts them); wrap
one in ``gradtx.schedule_injection`` if you need ``get_hyperparams``.

Every optimizer also takes the options of ``keras.optimizers.Optimizer``, keyword only,
applied in Keras' order: ``loss_scale_factor`` (the gradients are divided by it),
``gradient_accumulation_steps`` (``multi_steps``: the mean gradient of k calls makes
one update; as in Keras the learning-rate schedule, weight decay's included, reads the
call count, so update s uses ``lr(k s + k - 1)``, and the bias corrections count
updates), one of ``clipnorm`` (each array's l2 norm), ``global_clipnorm`` and
``clipvalue`` (Keras' formulas), and ``exclude_from_weight_decay``, a list of patterns
searched (``re.search``) in each leaf's path as ``jax.tree_util.keystr`` prints it
(``"['dense']['bias']"``): Keras' ``optimizer.exclude_from_weight_decay(var_names=...)``.
``use_ema=True`` keeps Keras' moving average of the parameters in ``state["ema"].average``
(the first update's params, then ``ema_momentum * average + (1 - ema_momentum) * p``;
``gradtx.ema_params`` debiases instead), and ``ema_overwrite_frequency=N`` moves the
params to it after every N-th update; evaluate with the average, as Keras'
``finalize_variable_values`` does. With ``gradient_accumulation_steps=k`` Keras' average
moves at every call, updating or not (it is ``p`` through the first update, then blends
at each call; the overwrite happens at every call of each N-th group of k), so the
``ema`` block sits outside ``multi_steps`` there, its count counting calls (Keras'
``iteration``). Keras computes in the variables' dtype, gradtx
in at least float32: float16/bfloat16 runs differ (Keras' bfloat16 Adam does not move,
as ``bfloat16(0.999) == 1``).
"""

from __future__ import annotations

from gradtx import check
from gradtx.compat._validate import is_zero
from gradtx.compat.keras.callbacks import (
    ReduceLROnPlateau,
    ReduceLROnPlateauState,
    reduce_lr_on_plateau,
)
from gradtx.compat.keras.options import Core, KerasEmaState, core_chain, keras_optimizer
from gradtx.compat.keras.schedules import (
    cosine_decay,
    cosine_decay_restarts,
    exponential_decay,
    inverse_time_decay,
    piecewise_constant_decay,
    polynomial_decay,
)
from gradtx.core import GradientTransformation, ScalarOrSchedule
from gradtx.transforms.adam import (
    amsgrad_max,
    scale_by_adam,
    scale_by_adamax,
)
from gradtx.transforms.adaptive import (
    scale_by_adadelta,
    scale_by_rms,
    scale_by_rss,
)
from gradtx.transforms.momentum import trace
from gradtx.transforms.nadam_schedule import scale_by_nadam_schedule
from gradtx.transforms.scaling import scale_by_learning_rate

__all__ = [
    "KerasEmaState",
    "ReduceLROnPlateau",
    "ReduceLROnPlateauState",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "cosine_decay",
    "cosine_decay_restarts",
    "exponential_decay",
    "inverse_time_decay",
    "nadam",
    "piecewise_constant_decay",
    "polynomial_decay",
    "reduce_lr_on_plateau",
    "rmsprop",
    "sgd",
]


def _momentum(momentum: float, nesterov: bool = False) -> list[tuple[str, GradientTransformation]]:
    return [] if is_zero(momentum) else [("momentum", trace(momentum, nesterov))]


@keras_optimizer
def sgd(
    learning_rate: ScalarOrSchedule = 0.01,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float | None = None,
) -> Core:
    r"""``keras.optimizers.SGD``: the learning rate inside the momentum buffer.

    ::

        p <- p - p * weight_decay * lr
        v <- momentum * v - lr * g
        p <- p + v                       (nesterov: p <- p + momentum * v - lr * g)

    Chain: ``scale_by_learning_rate(lr)``, ``trace(momentum, nesterov)``. The same map
    as PyTorch's SGD while lr is constant; with a schedule, the buffer keeps the past
    learning rates.

    Args:
        learning_rate: a number >= 0 or a schedule ``step -> value`` (t from 0).
        momentum: the momentum factor, in [0, 1); 0 (the default) is plain SGD.
        nesterov: True or False; Nesterov momentum.
        weight_decay: Keras' decoupled decay ``p <- p - p * wd * lr``, >= 0; None (the
            default) or 0 is none.
        clipnorm, clipvalue, global_clipnorm, loss_scale_factor,
            gradient_accumulation_steps, exclude_from_weight_decay, use_ema,
            ema_momentum, ema_overwrite_frequency: Keras' base options, keyword only
            (see the module docstring).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> tx = kc.sgd(learning_rate=0.1, momentum=0.9)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.2]

    Reference: Polyak, 1964; Sutskever, Martens, Dahl & Hinton, 2013, "On the importance of
    initialization and momentum in deep learning"; Keras' ``keras.optimizers.SGD``.
    """
    blocks = [("learning_rate", scale_by_learning_rate(learning_rate))]
    return core_chain(blocks + _momentum(momentum, nesterov), learning_rate, weight_decay)


@keras_optimizer
def rmsprop(
    learning_rate: ScalarOrSchedule = 0.001,
    rho: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-7,
    centered: bool = False,
    weight_decay: float | None = None,
) -> Core:
    r"""``keras.optimizers.RMSprop``: eps inside the root, lr inside the momentum buffer.

    ::

        v = rho v + (1 - rho) g^2;   a = rho a + (1 - rho) g             (centered)
        d = lr * g / sqrt(v - a^2 + eps)  (centered)  else  lr * g / sqrt(v + eps)
        b = momentum * b + d;  p <- p - b              (p <- p - d if momentum = 0)

    Chain: ``scale_by_rms(rho, epsilon, eps_in_sqrt=True, centered)``,
    ``scale_by_learning_rate(lr)``, ``trace(momentum)``.

    Args:
        learning_rate: a number >= 0 or a schedule ``step -> value`` (t from 0).
        rho: the decay of the average of g^2, in [0, 1) (PyTorch's ``alpha``).
        momentum: the momentum factor, in [0, 1).
        epsilon: added inside the square root, >= 0 (PyTorch's ``eps``, outside).
        centered: True or False; divide by the estimated standard deviation of g.
        weight_decay: Keras' decoupled decay ``p <- p - p * wd * lr``, >= 0; None (the
            default) or 0 is none.
        clipnorm, clipvalue, global_clipnorm, loss_scale_factor,
            gradient_accumulation_steps, exclude_from_weight_decay, use_ema,
            ema_momentum, ema_overwrite_frequency: Keras' base options, keyword only
            (see the module docstring).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> tx = kc.rmsprop(learning_rate=0.01, rho=0.75, epsilon=0.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.02]

    Reference: Tieleman & Hinton, 2012, Lecture 6.5 "RMSProp"; Keras'
    ``keras.optimizers.RMSprop``.
    """
    blocks = [
        ("rmsprop", scale_by_rms(rho, epsilon, 0.0, eps_in_sqrt=True, centered=centered)),
        ("learning_rate", scale_by_learning_rate(learning_rate)),
    ]
    return core_chain(blocks + _momentum(momentum), learning_rate, weight_decay)


@keras_optimizer
def adam(
    learning_rate: ScalarOrSchedule = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    weight_decay: float | None = None,
) -> Core:
    r"""``keras.optimizers.Adam``: eps added to the raw ``sqrt(v)`` ("epsilon hat").

    ::

        alpha_t = lr * sqrt(1 - b2^t) / (1 - b1^t)
        v_t <- max(v_max, v_t)                                    (amsgrad)
        p <- p - alpha_t * m_t / (sqrt(v_t) + eps)

    Chain: ``scale_by_adam(b1, b2, eps, eps_before_bias_correction=True)`` (or
    ``amsgrad_max(correct_after_max=True, eps_before_bias_correction=True)``), then
    ``-lr``. PyTorch and Optax add eps to ``sqrt(v_t / (1 - b2^t))``.

    Args:
        learning_rate: a number >= 0 or a schedule ``step -> value`` (t from 0).
        beta_1: the decay of the first moment, in [0, 1) (PyTorch's ``betas[0]``).
        beta_2: the decay of the second moment, in [0, 1) (PyTorch's ``betas[1]``).
        epsilon: added to the raw ``sqrt(v)``, >= 0.
        amsgrad: True or False; the maximum of the past second moments.
        weight_decay: Keras' decoupled decay ``p <- p - p * wd * lr``, >= 0; None (the
            default) or 0 is none.
        clipnorm, clipvalue, global_clipnorm, loss_scale_factor,
            gradient_accumulation_steps, exclude_from_weight_decay, use_ema,
            ema_momentum, ema_overwrite_frequency: Keras' base options, keyword only
            (see the module docstring).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> tx = kc.adam(learning_rate=0.1)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 4) for u in updates]
        [-0.1]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization"; Keras'
    ``keras.optimizers.Adam``.
    """
    return _adam(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay)


def _adam(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay) -> Core:
    if amsgrad:
        core = amsgrad_max(
            beta_1, beta_2, epsilon, correct_after_max=True, eps_before_bias_correction=True
        )
    else:
        core = scale_by_adam(beta_1, beta_2, epsilon, eps_before_bias_correction=True)
    blocks = [("adam", core), ("learning_rate", scale_by_learning_rate(learning_rate))]
    return core_chain(blocks, learning_rate, weight_decay)


@keras_optimizer
def adamw(
    learning_rate: ScalarOrSchedule = 0.001,
    weight_decay: float = 0.004,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
) -> Core:
    r"""``keras.optimizers.AdamW``: Keras' ``adam`` with ``weight_decay=0.004``.

    The decay is Keras' decoupled one, ``p <- p - p * wd * lr``, as on every Keras
    optimizer (PyTorch's AdamW defaults to 1e-2, Optax's to 1e-4).

    Args:
        learning_rate: a number >= 0 or a schedule ``step -> value`` (t from 0).
        weight_decay: Keras' decoupled decay ``p <- p - p * wd * lr``, >= 0 (not None).
        beta_1: the decay of the first moment, in [0, 1).
        beta_2: the decay of the second moment, in [0, 1).
        epsilon: added to the raw ``sqrt(v)``, >= 0.
        amsgrad: True or False; the maximum of the past second moments.
        clipnorm, clipvalue, global_clipnorm, loss_scale_factor,
            gradient_accumulation_steps, exclude_from_weight_decay, use_ema,
            ema_momentum, ema_overwrite_frequency: Keras' base options, keyword only
            (see the module docstring).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> tx = kc.adamw(learning_rate=0.1, weight_decay=0.5)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 4) for u in updates]
        [-0.15]

    Reference: Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization"; Keras'
    ``keras.optimizers.AdamW``.
    """
    if weight_decay is None:  # Keras' AdamW refuses it too
        raise ValueError("weight_decay must be a number >= 0 for AdamW, got None")
    return _adam(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay)


@keras_optimizer
def adagrad(
    learning_rate: ScalarOrSchedule = 0.001,
    initial_accumulator_value: float = 0.1,
    epsilon: float = 1e-7,
    weight_decay: float | None = None,
) -> Core:
    r"""``keras.optimizers.Adagrad``: ``s_0 = 0.1``, eps inside the root.

    ::

        s_t = s_{t-1} + g^2;   p <- p - lr * g / sqrt(s_t + eps)

    Chain: ``scale_by_rss(initial_accumulator_value, epsilon)`` then ``-lr``.

    Args:
        learning_rate: a number >= 0 or a schedule ``step -> value`` (t from 0).
        initial_accumulator_value: ``s_0``, >= 0 (PyTorch's default is 0).
        epsilon: added inside the square root, >= 0 (PyTorch's ``eps``, outside).
        weight_decay: Keras' decoupled decay ``p <- p - p * wd * lr``, >= 0; None (the
            default) or 0 is none.
        clipnorm, clipvalue, global_clipnorm, loss_scale_factor,
            gradient_accumulation_steps, exclude_from_weight_decay, use_ema,
            ema_momentum, ema_overwrite_frequency: Keras' base options, keyword only
            (see the module docstring).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> tx = kc.adagrad(learning_rate=0.1, initial_accumulator_value=0.0, epsilon=0.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.1]

    Reference: Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization"; Keras' ``keras.optimizers.Adagrad``.
    """
    blocks = [
        ("adagrad", scale_by_rss(initial_accumulator_value, epsilon)),
        ("learning_rate", scale_by_learning_rate(learning_rate)),
    ]
    return core_chain(blocks, learning_rate, weight_decay)


@keras_optimizer
def adadelta(
    learning_rate: ScalarOrSchedule = 0.001,
    rho: float = 0.95,
    epsilon: float = 1e-7,
    weight_decay: float | None = None,
) -> Core:
    r"""``keras.optimizers.Adadelta``: Zeiler's rule with Keras' defaults.

    ::

        E[g^2]_t = rho E[g^2] + (1 - rho) g^2
        d = sqrt(E[dx^2] + eps) / sqrt(E[g^2]_t + eps) * g;  p <- p - lr * d

    Chain: ``scale_by_adadelta(rho, epsilon)`` then ``-lr`` (PyTorch: lr=1, rho=0.9,
    eps=1e-6).

    Args:
        learning_rate: a number >= 0 or a schedule ``step -> value`` (t from 0).
        rho: the decay of both averages, in [0, 1).
        epsilon: added inside both square roots, > 0 (at 0 the first step is 0).
        weight_decay: Keras' decoupled decay ``p <- p - p * wd * lr``, >= 0; None (the
            default) or 0 is none.
        clipnorm, clipvalue, global_clipnorm, loss_scale_factor,
            gradient_accumulation_steps, exclude_from_weight_decay, use_ema,
            ema_momentum, ema_overwrite_frequency: Keras' base options, keyword only
            (see the module docstring).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> tx = kc.adadelta(learning_rate=1.0, rho=0.0, epsilon=1.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([3.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]  # -sqrt(0 + 1) / sqrt(9 + 1) * 3
        [-0.948683]

    Reference: Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method"; Keras'
    ``keras.optimizers.Adadelta``.
    """
    check.positive("epsilon", epsilon)  # 0 would never move: sqrt(0 + 0) / sqrt(g^2)
    blocks = [
        ("adadelta", scale_by_adadelta(rho, epsilon)),
        ("learning_rate", scale_by_learning_rate(learning_rate)),
    ]
    return core_chain(blocks, learning_rate, weight_decay)


@keras_optimizer
def adamax(
    learning_rate: ScalarOrSchedule = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    weight_decay: float | None = None,
) -> Core:
    r"""``keras.optimizers.Adamax``: eps added after the maximum.

    ::

        u_t = max(b2 u, |g|);   p <- p - lr * m_t / ((1 - b1^t) (u_t + eps))

    Chain: ``scale_by_adamax(b1, b2, epsilon, eps_in_max=False)`` then ``-lr``.

    Args:
        learning_rate: a number >= 0 or a schedule ``step -> value`` (t from 0).
        beta_1: the decay of the first moment, in [0, 1).
        beta_2: the decay of the infinity norm, in [0, 1).
        epsilon: added after the maximum, >= 0 (PyTorch's ``eps``, inside it).
        weight_decay: Keras' decoupled decay ``p <- p - p * wd * lr``, >= 0; None (the
            default) or 0 is none.
        clipnorm, clipvalue, global_clipnorm, loss_scale_factor,
            gradient_accumulation_steps, exclude_from_weight_decay, use_ema,
            ema_momentum, ema_overwrite_frequency: Keras' base options, keyword only
            (see the module docstring).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> tx = kc.adamax(learning_rate=0.1, epsilon=0.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.1]

    Reference: Kingma & Ba, 2015, sec. 7; Keras' ``keras.optimizers.Adamax``.
    """
    blocks = [
        ("adamax", scale_by_adamax(beta_1, beta_2, epsilon, eps_in_max=False)),
        ("learning_rate", scale_by_learning_rate(learning_rate)),
    ]
    return core_chain(blocks, learning_rate, weight_decay)


@keras_optimizer
def nadam(
    learning_rate: ScalarOrSchedule = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    weight_decay: float | None = None,
) -> Core:
    r"""``keras.optimizers.Nadam``: Dozat's schedule ``mu_t = b1 (1 - 0.5 * 0.96^t)``.

    Chain: ``scale_by_nadam_schedule(b1, b2, epsilon, momentum_decay=1.0)`` then
    ``-lr`` (PyTorch's NAdam uses ``0.96^(t * 0.004)``).

    Args:
        learning_rate: a number >= 0 or a schedule ``step -> value`` (t from 0).
        beta_1: the decay of the first moment, in [0, 1) (the ``b1`` of ``mu_t``).
        beta_2: the decay of the second moment, in [0, 1).
        epsilon: added outside the square root, >= 0.
        weight_decay: Keras' decoupled decay ``p <- p - p * wd * lr``, >= 0; None (the
            default) or 0 is none.
        clipnorm, clipvalue, global_clipnorm, loss_scale_factor,
            gradient_accumulation_steps, exclude_from_weight_decay, use_ema,
            ema_momentum, ema_overwrite_frequency: Keras' base options, keyword only
            (see the module docstring).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import keras as kc
        >>> tx = kc.nadam(learning_rate=0.1)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 4) for u in updates]
        [-0.1063]

    Reference: Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; Keras'
    ``keras.optimizers.Nadam``.
    """
    blocks = [
        ("nadam", scale_by_nadam_schedule(beta_1, beta_2, epsilon, momentum_decay=1.0)),
        ("learning_rate", scale_by_learning_rate(learning_rate)),
    ]
    return core_chain(blocks, learning_rate, weight_decay)
