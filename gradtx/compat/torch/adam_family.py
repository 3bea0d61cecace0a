"""PyTorch's Adam family as gradtx chains: Adam, AdamW, Adamax, NAdam and RAdam."""

from __future__ import annotations

from gradtx.compat.torch.chains import (
    BETAS,
    check_betas,
    check_flags,
    check_lr,
    torch_chain,
    with_schedules,
)
from gradtx.core import GradientTransformation, ScalarOrSchedule
from gradtx.transforms.adam import (
    amsgrad_max,
    scale_by_adam,
    scale_by_adamax,
)
from gradtx.transforms.nadam_schedule import scale_by_nadam_schedule
from gradtx.transforms.rectified import scale_by_radam


def adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[ScalarOrSchedule, ScalarOrSchedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.Adam``: eps outside the root of the bias-corrected ``v``; L2 decay.

    ::

        g <- g + weight_decay * p                       (unless decoupled_weight_decay)
        m_t = b1 m + (1 - b1) g;   v_t = b2 v + (1 - b2) g^2
        v_t <- max(v_max, v_t)                          (amsgrad: max of the raw v)
        p <- p * (1 - lr * weight_decay)                (decoupled_weight_decay)
        p <- p - lr / (1 - b1^t) * m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps)

    Chain: ``scale_by_adam`` (or ``amsgrad_max(correct_after_max=True)``: Optax's
    ``amsgrad`` takes the maximum of the bias-corrected ``v`` instead).

    Args:
        lr: learning rate, >= 0, or a schedule.
        betas: ``(b1, b2)``, each in [0, 1) or a schedule (PyTorch's ``cycle_momentum``
            sets ``betas[0]``: ``lr_scheduler.one_cycle_momentum``/``cyclic_momentum``).
        eps: added outside the square root, >= 0.
        weight_decay: L2 penalty (decoupled with ``decoupled_weight_decay``), >= 0.
        amsgrad: PyTorch's AMSGrad.
        maximize: ascend instead of descending.
        decoupled_weight_decay: AdamW's decay (Loshchilov & Hutter, 2019).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.adam(lr=0.1)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 4) for u in updates]
        [-0.1]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization"; Reddi, Kale
    & Kumar, 2018, "On the Convergence of Adam and Beyond"; PyTorch's ``torch.optim.Adam``.
    """
    lr = check_lr(lr)
    check_flags(amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
    b1, b2 = check_betas(betas)
    if amsgrad:
        adam_tx = with_schedules(amsgrad_max, BETAS, b1=b1, b2=b2, eps=eps, correct_after_max=True)
    else:
        adam_tx = with_schedules(scale_by_adam, BETAS, b1=b1, b2=b2, eps=eps)
    core = [("adam", adam_tx)]
    return torch_chain(core, lr, weight_decay, maximize=maximize, decoupled=decoupled_weight_decay)


def adamw(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[ScalarOrSchedule, ScalarOrSchedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.AdamW``: ``adam(..., decoupled_weight_decay=True)``, wd=1e-2.

    ::

        p <- p * (1 - lr * weight_decay) - lr / (1 - b1^t) * m_t / (sqrt(v_t) /
             sqrt(1 - b2^t) + eps)

    Chain: ``scale_by_adam``, ``add_decayed_weights(weight_decay)``,
    ``scale_by_learning_rate(lr)``. Optax's ``adamw`` defaults to ``weight_decay=1e-4``.

    Args:
        lr: learning rate, >= 0, or a schedule.
        betas: ``(b1, b2)``, each in [0, 1) or a schedule (PyTorch's ``cycle_momentum``
            sets ``betas[0]``: ``lr_scheduler.one_cycle_momentum``/``cyclic_momentum``).
        eps: added outside the square root, >= 0.
        weight_decay: decoupled decay, ``p <- p (1 - lr wd)``, >= 0 (default 1e-2).
        amsgrad: PyTorch's AMSGrad, True or False.
        maximize: ascend instead of descending, True or False.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.adamw(lr=0.1, weight_decay=0.5)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 4) for u in updates]  # -0.1 * (1 + 0.5 * 1)
        [-0.15]

    Reference: Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization"; PyTorch's
    ``torch.optim.AdamW``.
    """
    return adam(
        lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True
    )


def adamax(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[ScalarOrSchedule, ScalarOrSchedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.Adamax``: eps inside the maximum.

    ::

        g <- g + weight_decay * p
        m_t = b1 m + (1 - b1) g;   u_t = max(b2 u, |g| + eps)
        p <- p - lr / (1 - b1^t) * m_t / u_t

    Chain: ``scale_by_adamax(b1, b2, eps)``. Keras adds eps after the maximum.

    Args:
        lr: learning rate, >= 0, or a schedule.
        betas: ``(b1, b2)``, each in [0, 1) or a schedule (PyTorch's ``cycle_momentum``
            sets ``betas[0]``: ``lr_scheduler.one_cycle_momentum``/``cyclic_momentum``).
        eps: added to ``|g|`` inside the maximum, >= 0.
        weight_decay: L2 penalty, >= 0.
        maximize: ascend instead of descending.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.adamax(lr=0.1, eps=0.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.1]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", sec. 7;
    PyTorch's ``torch.optim.Adamax``.
    """
    lr = check_lr(lr)
    b1, b2 = check_betas(betas)
    core = [("adamax", with_schedules(scale_by_adamax, BETAS, b1=b1, b2=b2, eps=eps))]
    return torch_chain(core, lr, weight_decay, maximize=maximize)


def nadam(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[ScalarOrSchedule, ScalarOrSchedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    *,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.NAdam``: Dozat's momentum schedule ``mu_t = b1 (1 - 0.5 * 0.96^(t psi))``.

    ::

        g <- g + weight_decay * p          (p <- p (1 - lr wd) if decoupled_weight_decay)
        P_t = mu_1 ... mu_t
        p <- p - lr * ((1 - mu_t) g / (1 - P_t) + mu_{t+1} m_t / (1 - P_t mu_{t+1}))
                    / (sqrt(v_t / (1 - b2^t)) + eps)

    Chain: ``scale_by_nadam_schedule(b1, b2, eps, momentum_decay)``. Optax's ``nadam``
    has no schedule; Keras' ``Nadam`` is ``momentum_decay=1``.

    Args:
        lr: learning rate, >= 0, or a schedule.
        betas: ``(b1, b2)``, each in [0, 1) or a schedule (PyTorch's ``cycle_momentum``
            sets ``betas[0]``: ``lr_scheduler.one_cycle_momentum``/``cyclic_momentum``).
        eps: added outside the square root, >= 0.
        weight_decay: L2 penalty (decoupled with ``decoupled_weight_decay``), >= 0.
        momentum_decay: ``psi``, >= 0.
        decoupled_weight_decay: NAdamW's decay.
        maximize: ascend instead of descending.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.nadam(lr=0.1)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 4) for u in updates]
        [-0.1056]

    Reference: Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; PyTorch's
    ``torch.optim.NAdam``.
    """
    lr = check_lr(lr)
    check_flags(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    b1, b2 = check_betas(betas)
    nadam_tx = with_schedules(
        scale_by_nadam_schedule, BETAS, b1=b1, b2=b2, eps=eps, momentum_decay=momentum_decay
    )
    core = [("nadam", nadam_tx)]
    return torch_chain(core, lr, weight_decay, maximize=maximize, decoupled=decoupled_weight_decay)


def radam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[ScalarOrSchedule, ScalarOrSchedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.RAdam``: rectify when ``rho_t > 5``, eps on the raw ``sqrt(v)``.

    ::

        rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
        p <- p - lr * r_t * m_t / (1 - b1^t) * sqrt(1 - b2^t) / (sqrt(v_t) + eps)   (rho_t > 5)
        p <- p - lr * m_t / (1 - b1^t)                                            (otherwise)

    Chain: ``scale_by_radam(b1, b2, eps, strict_threshold=True,
    eps_before_bias_correction=True)``; Optax rectifies at ``rho_t >= 5`` with eps on the
    bias-corrected root.

    Args:
        lr: learning rate, >= 0, or a schedule.
        betas: ``(b1, b2)``, each in [0, 1) or a schedule (PyTorch's ``cycle_momentum``
            sets ``betas[0]``: ``lr_scheduler.one_cycle_momentum``/``cyclic_momentum``).
        eps: added to the raw square root, >= 0.
        weight_decay: L2 penalty (decoupled with ``decoupled_weight_decay``), >= 0.
        decoupled_weight_decay: decoupled decay (``p *= 1 - lr * wd``).
        maximize: ascend instead of descending.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.radam(lr=0.1)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]  # no rectification yet: -lr * m_hat
        [-0.2]

    Reference: Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond";
    PyTorch's ``torch.optim.RAdam``.
    """
    lr = check_lr(lr)
    check_flags(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    b1, b2 = check_betas(betas)
    radam_tx = with_schedules(
        scale_by_radam,
        BETAS,
        b1=b1,
        b2=b2,
        eps=eps,
        strict_threshold=True,
        eps_before_bias_correction=True,
    )
    core = [("radam", radam_tx)]
    return torch_chain(core, lr, weight_decay, maximize=maximize, decoupled=decoupled_weight_decay)
