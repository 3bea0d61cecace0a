"""PyTorch's SGD, Adagrad, RMSprop, Adadelta, Rprop and ASGD as gradtx chains."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from gradtx import check
from gradtx.compat import _validate
from gradtx.compat._validate import is_zero
from gradtx.compat.torch.chains import (
    check_flags,
    check_lr,
    complex_as_real_pairs,
    concrete_nonzero,
    nan_gradients_as_zero,
    plain,
    torch_chain,
    with_schedules,
)
from gradtx.core import GradientTransformation, ScalarOrSchedule, named_chain
from gradtx.transforms.adaptive import (
    scale_by_adadelta,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
)
from gradtx.transforms.averaging_sgd import averaged_sgd
from gradtx.transforms.momentum import trace
from gradtx.transforms.regularize import add_decayed_weights
from gradtx.transforms.scaling import scale


def sgd(
    lr: ScalarOrSchedule = 1e-3,
    momentum: ScalarOrSchedule = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.SGD``: L2 decay, an undampened first momentum step, lr outside.

    ::

        g <- g + weight_decay * p
        b_1 = g;   b_t = momentum * b_{t-1} + (1 - dampening) * g      (momentum != 0)
        g <- g + momentum * b_t  if nesterov  else  b_t
        p <- p - lr * g

    Chain: ``add_decayed_weights(weight_decay)``, ``trace(momentum, nesterov,
    dampening=...)``, ``scale_by_learning_rate(lr)``. Keras' SGD puts lr inside the
    buffer (``gradtx.compat.keras.sgd``).

    Args:
        lr: learning rate, >= 0, or a schedule.
        momentum: momentum factor, in [0, 1), or a schedule of it (PyTorch's
            ``cycle_momentum``: ``lr_scheduler.one_cycle_momentum``/``cyclic_momentum``).
        dampening: dampening of the gradient entering the buffer, in [0, 1].
        weight_decay: L2 penalty, >= 0.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
        maximize: ascend instead of descending.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.sgd(lr=0.1, momentum=0.9)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.2]

    Reference: Polyak, 1964, "Some methods of speeding up the convergence of iteration
    methods"; Sutskever, Martens, Dahl & Hinton, 2013, "On the importance of initialization
    and momentum in deep learning"; PyTorch's ``torch.optim.SGD``.
    """
    lr = check_lr(lr)
    check_flags(nesterov=nesterov, maximize=maximize)
    momentum = plain(momentum)
    check.unit_interval("momentum", momentum, schedule=True)
    check.in_range("dampening", dampening, 0.0, 1.0)
    if nesterov and (is_zero(momentum) or concrete_nonzero(dampening)):
        raise ValueError("nesterov=True requires momentum > 0 and dampening = 0 (as in PyTorch)")
    core = []
    if not is_zero(momentum):
        damp = None if is_zero(dampening) else dampening
        momentum_tx = with_schedules(
            trace, {"decay": "momentum"}, decay=momentum, nesterov=nesterov, dampening=damp
        )
        core.append(("momentum", momentum_tx))
    return torch_chain(core, lr, weight_decay, maximize=maximize)


def adagrad(
    lr: ScalarOrSchedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.Adagrad``: ``s_0 = 0``, eps outside the root, decaying lr.

    ::

        g <- g + weight_decay * p
        s_t = s_{t-1} + g^2
        p <- p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s_t) + eps)

    Chain: ``scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=False)``. Keras
    and Optax start from ``s_0 = 0.1`` and put eps inside the root.

    Args:
        lr: learning rate, >= 0, or a schedule.
        lr_decay: the learning rate at step t (from 0) is ``lr / (1 + t * lr_decay)``,
            >= 0 and finite.
        weight_decay: L2 penalty, >= 0.
        initial_accumulator_value: ``s_0``, >= 0.
        eps: added outside the square root, >= 0.
        maximize: ascend instead of descending.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.adagrad(lr=0.1)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.1]

    Reference: Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization"; PyTorch's ``torch.optim.Adagrad``.
    """
    lr = check_lr(lr)
    # finite: an infinite decay makes every rate after the first 0 or NaN (PyTorch
    # takes inf, and its second step divides by it)
    _validate.number("lr_decay", lr_decay, 0.0)
    if not is_zero(lr_decay):
        base = lr

        def lr(step):
            rate = base(step) if callable(base) else base
            return rate / (1 + jnp.asarray(step).astype(jnp.result_type(float)) * lr_decay)

    core = [("adagrad", scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=False))]
    return torch_chain(core, lr, weight_decay, maximize=maximize)


def rmsprop(
    lr: ScalarOrSchedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: ScalarOrSchedule = 0.0,
    centered: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.RMSprop``: eps outside the root, the momentum buffer before lr.

    ::

        g <- g + weight_decay * p
        v_t = alpha v + (1 - alpha) g^2;   a_t = alpha a + (1 - alpha) g   (centered)
        d = sqrt(v_t - a_t^2) + eps  (centered)  else  sqrt(v_t) + eps
        b_t = momentum * b + g / d;   p <- p - lr * b_t      (p <- p - lr g / d if momentum = 0)

    Chain: ``scale_by_rms(alpha, eps, eps_in_sqrt=False, centered)``, ``trace(momentum)``.
    Keras uses ``rho=0.9``, eps inside the root and lr inside the buffer.

    Args:
        lr: learning rate, >= 0, or a schedule.
        alpha: decay of the averages, in [0, 1).
        eps: added outside the square root, >= 0.
        weight_decay: L2 penalty, >= 0.
        momentum: momentum factor, in [0, 1), or a schedule of it (PyTorch's
            ``cycle_momentum``: ``lr_scheduler.one_cycle_momentum``/``cyclic_momentum``).
        centered: divide by the estimated standard deviation of g.
        maximize: ascend instead of descending.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.rmsprop(lr=0.01, alpha=0.75, eps=0.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]  # -0.01 * 2 / sqrt(0.25 * 4)
        [-0.02]

    Reference: Tieleman & Hinton, 2012, Lecture 6.5 "RMSProp"; Graves, 2013, "Generating
    Sequences With Recurrent Neural Networks"; PyTorch's ``torch.optim.RMSprop``.
    """
    lr = check_lr(lr)
    check_flags(centered=centered, maximize=maximize)
    check.unit_interval("alpha", alpha)
    momentum = plain(momentum)
    check.unit_interval("momentum", momentum, schedule=True)
    core = [("rmsprop", scale_by_rms(alpha, eps, 0.0, eps_in_sqrt=False, centered=centered))]
    if not is_zero(momentum):
        core.append(("momentum", with_schedules(trace, {"decay": "momentum"}, decay=momentum)))
    return torch_chain(core, lr, weight_decay, maximize=maximize)


def adadelta(
    lr: ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.Adadelta``: Zeiler's rule times ``lr`` (default 1).

    ::

        g <- g + weight_decay * p
        E[g^2]_t = rho E[g^2] + (1 - rho) g^2
        d = sqrt(E[dx^2] + eps) / sqrt(E[g^2]_t + eps) * g
        E[dx^2]_t = rho E[dx^2] + (1 - rho) d^2
        p <- p - lr * d

    Chain: ``scale_by_adadelta(rho, eps)``. Keras uses ``lr=0.001, rho=0.95, eps=1e-7``.

    Args:
        lr: learning rate, >= 0, or a schedule.
        rho: decay of the averages, in [0, 1).
        eps: added inside both square roots, > 0.
        weight_decay: L2 penalty, >= 0.
        maximize: ascend instead of descending.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.adadelta(rho=0.0, eps=1.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([3.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]  # -sqrt(0 + 1) / sqrt(9 + 1) * 3
        [-0.948683]

    Reference: Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method"; PyTorch's
    ``torch.optim.Adadelta``.
    """
    lr = check_lr(lr)
    return torch_chain(
        [("adadelta", scale_by_adadelta(rho, eps))], lr, weight_decay, maximize=maximize
    )


def rprop(
    lr: float | Any = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.Rprop``: step sizes clipped on every step, the first one included.

    ::

        s = sign(g_t * g_{t-1});   d_t = clip(d_{t-1} * (eta+ if s > 0, eta- if s < 0,
        1 if s = 0), *step_sizes);   g_t <- 0 where s < 0;   p <- p - sign(g_t) * d_t

    with ``d_0 = lr``. Chain: ``scale_by_rprop(lr, *etas, *step_sizes,
    clip_every_step=True)`` then ``scale(-1)``. An element whose gradient is NaN takes no
    step and keeps its step size, as in PyTorch (``torch.sign(nan)`` is 0; gradtx's
    ``rprop`` and Optax's make the parameter NaN). The learning rate is only the initial
    step size: a schedule is read once, at step 0 (PyTorch reads the group's lr when
    the state is created and never again).

    Args:
        lr: initial step size, > 0, or a schedule (evaluated at 0).
        etas: ``(eta_minus, eta_plus)``, ``0 < eta_minus < 1 < eta_plus`` (PyTorch's
            check: ``eta_plus = 1`` is a ValueError here too).
        step_sizes: ``(min_step_size, max_step_size)``, ``0 <= min <= max``.
        maximize: ascend instead of descending, True or False.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.rprop(lr=0.1)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.1]

    Reference: Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP Algorithm"; PyTorch's ``torch.optim.Rprop``.
    """
    check_flags(maximize=maximize)
    initial = float(lr(0)) if callable(lr) else lr
    check.positive("lr", initial)
    initial = plain(initial)  # a 0-d PyTorch tensor, as PyTorch takes it, as a float
    eta_minus, eta_plus = _validate.pair("etas", etas, "(eta_minus, eta_plus)")
    min_step, max_step = _validate.pair("step_sizes", step_sizes, "(min_step, max_step)")
    # torch.optim.Rprop: 0 < eta_minus < 1 < eta_plus
    check.in_range("etas[0]", eta_minus, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check.in_range("etas[1]", eta_plus, 1.0, None, low_inclusive=False)
    check.non_negative("step_sizes[0]", min_step)
    check.non_negative("step_sizes[1]", max_step, allow_inf=True)
    check.at_least("step_sizes[1]", max_step, "step_sizes[0]", min_step)
    blocks = [("maximize", scale(-1.0))] if maximize else []
    blocks += [
        (
            "rprop",
            nan_gradients_as_zero(
                scale_by_rprop(
                    initial, eta_minus, eta_plus, min_step, max_step, clip_every_step=True
                )
            ),
        ),
        ("descend", scale(-1.0)),
    ]
    return complex_as_real_pairs(named_chain(*blocks))


def asgd(
    lr: ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""``torch.optim.ASGD``: decaying step size ``eta_k`` and an average of the iterates.

    ::

        g <- g + weight_decay * p
        eta_k = lr / (1 + lambd * lr * k)^alpha;   p <- p * (1 - lambd * eta_k) - eta_k * g
        ax <- average of the iterates from step t0 on

    Chain: ``averaged_sgd(lr, lambd, alpha, t0)`` (which applies the learning rate
    itself); the average is ``state["asgd"].average``.

    Reference: Polyak & Juditsky, 1992, "Acceleration of Stochastic Approximation by
    Averaging"; PyTorch's ``torch.optim.ASGD``.

    Args:
        lr: learning rate, >= 0, or a schedule.
        lambd: decay term, >= 0.
        alpha: power of the step-size decay, >= 0.
        t0: the step from which averaging starts, >= 0.
        weight_decay: L2 penalty, >= 0.
        maximize: ascend instead of descending.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.asgd(lr=0.1, lambd=0.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates]
        [-0.2]
    """
    lr = check_lr(lr)
    check_flags(maximize=maximize)
    check.non_negative("weight_decay", weight_decay)
    blocks = [("maximize", scale(-1.0))] if maximize else []
    if not is_zero(weight_decay):
        blocks.append(("weight_decay", add_decayed_weights(weight_decay)))
    blocks.append(("asgd", averaged_sgd(lr, lambd, alpha, t0)))
    return complex_as_real_pairs(named_chain(*blocks))
