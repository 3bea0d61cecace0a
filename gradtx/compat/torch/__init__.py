"""PyTorch's optimizers as gradtx chains: ``torch.optim`` argument names, defaults and numbers.

Each function returns a ``named_chain`` of gradtx blocks that reproduces
``torch.optim.<Name>`` step for step (checked against PyTorch 2.13 on recorded
trajectories: float64 within 1e-10, float32 within 1e-5). The chain shows PyTorch's
conventions: ``weight_decay`` is L2 (the decay term is added to the gradient, first in
the chain) except in ``adamw`` and with ``decoupled_weight_decay=True`` (after the
preconditioner); ``maximize`` negates the gradient before anything else; the learning
rate multiplies the step last, outside every buffer; a complex parameter is optimized
as its real and imaginary parts (PyTorch's ``view_as_real``: Adam's second moment per
part, not of ``|g|^2`` as in ``gradtx.adam`` and Optax). ``lr`` is a number (a 0-d
PyTorch tensor, as PyTorch takes it, is read as a Python float; PyTorch computes some
step sizes in a float32 tensor's dtype, see docs/conventions.md) or a gradtx
schedule: its value at step t (t from 0) is the learning rate of the t-th
``optimizer.step()``, as with a scheduler stepped after each optimizer step (see
``gradtx.compat.torch.lr_scheduler``).

These are plain chains, not ``schedule_injection`` optimizers: PyTorch computes with its
hyperparameters as Python doubles, and injecting them would round them to float32.
Wrap one in ``gradtx.schedule_injection`` if you need ``get_hyperparams``.

``load_state_dict`` turns a PyTorch optimizer ``state_dict()`` into the matching gradtx
state, so a run started in PyTorch continues here on the same trajectory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, numerics, tree
from gradtx.compat import _validate
from gradtx.compat.torch import lr_scheduler
from gradtx.compat.torch.state_dict import load_plateau_state, load_state_dict
from gradtx.core import EmptyState, GradientTransformation, ScalarOrSchedule, named_chain
from gradtx.schedules.injection import InjectState
from gradtx.transforms.adam import (
    amsgrad_max,
    scale_by_adam,
    scale_by_adamax,
)
from gradtx.transforms.adaptive import (
    scale_by_adadelta,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
)
from gradtx.transforms.averaging_sgd import averaged_sgd
from gradtx.transforms.momentum import trace
from gradtx.transforms.nadam_schedule import scale_by_nadam_schedule
from gradtx.transforms.rectified import scale_by_radam
from gradtx.transforms.regularize import add_decayed_weights
from gradtx.transforms.scaling import scale, scale_by_learning_rate

__all__ = [
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "clip_grad_norm",
    "load_plateau_state",
    "load_state_dict",
    "lr_scheduler",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
]


def _is_zero(value: Any) -> bool:
    """True only for a Python or NumPy number equal to 0, the static case where PyTorch
    skips a term. Arrays (hyperparameters injected by ``schedule_injection`` arrive as
    float32 arrays, traced or not) count as non-zero, so the chain keeps one structure."""
    return isinstance(value, int | float | np.number) and value == 0


def _concrete_nonzero(value: Any) -> bool:
    """True for a value known now (not traced, not a schedule) that is not 0."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return False
    return bool(np.any(np.asarray(value) != 0))


def _check_lr(lr: ScalarOrSchedule) -> ScalarOrSchedule:
    """``lr`` checked, and a 0-d PyTorch tensor (PyTorch takes ``lr`` as one) as a Python
    float: the blocks (and a jitted update) would otherwise compute with the tensor."""
    if callable(lr):
        check.schedule_arity("lr", lr)  # PyTorch's name, before the blocks see it
        return lr
    check.non_negative("lr", lr)
    return _plain(lr)


def _is_schedule(value: Any) -> bool:
    return callable(value) and not isinstance(value, type)


def _plain(value: Any) -> Any:
    """A 0-d PyTorch tensor (PyTorch takes betas as tensors) as a Python float; anything
    else unchanged."""
    if hasattr(value, "detach") and hasattr(value, "item"):
        return float(value.item())
    return value


def _check_flags(**flags: Any) -> None:
    """PyTorch's flags (maximize, amsgrad, ...) are True or False: PyTorch reads any
    value by its truth, so ``maximize="no"`` would ascend."""
    for name, value in flags.items():
        check.boolean(name, value)


def _check_betas(betas: Any) -> tuple[Any, Any]:
    b1, b2 = (_plain(b) for b in _validate.pair("betas", betas, "(beta1, beta2)"))
    check.unit_interval("betas[0]", b1, schedule=True)
    check.unit_interval("betas[1]", b2, schedule=True)
    return b1, b2


_BETAS = {"b1": "betas[0]", "b2": "betas[1]"}


def _with_schedules(
    factory: Any, labels: dict[str, str], **arguments: Any
) -> GradientTransformation:
    """``factory(**arguments)``, where the arguments named in ``labels`` may be schedules
    (PyTorch's ``cycle_momentum`` sets ``momentum`` or ``betas[0]`` before each step).

    Each schedule is evaluated at every update in its own dtype (float64 with
    ``jax_enable_x64``, as PyTorch's doubles; ``schedule_injection`` would round it to
    float32), and ``factory`` is built with the values. The state is an ``InjectState``
    around ``factory``'s (``get_hyperparams`` reads the values; ``load_state_dict`` sets
    its step). Values of a schedule at step 0 are checked under the PyTorch names in
    ``labels``. Without a schedule this is ``factory(**arguments)``.
    """
    schedules = {name: arguments[name] for name in labels if _is_schedule(arguments[name])}
    if not schedules:
        return factory(**arguments)
    fixed = {name: value for name, value in arguments.items() if name not in schedules}

    def values_at(count):
        return {name: jnp.asarray(schedule(count)) for name, schedule in schedules.items()}

    def init(params):
        count = jnp.zeros([], jnp.int32)
        values = values_at(count)
        for name, value in values.items():
            check.unit_interval(labels[name], value)
        return InjectState(count, values, factory(**fixed, **values).init(params))

    def update(updates, state, params=None, **extra):
        check.state_of(getattr(factory, "__name__", "this optimizer"), state, InjectState)
        values = values_at(state.count)
        inner = factory(**fixed, **values)
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra)
        return updates, InjectState(numerics.safe_increment(state.count), values, inner_state)

    return GradientTransformation(init, update)


def _real_pairs(x: Any) -> Any:
    """A complex array as PyTorch's ``view_as_real``: its real and imaginary parts along
    a new last axis; any other leaf unchanged."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.complexfloating):
        return x
    if isinstance(x, jax.ShapeDtypeStruct):  # abstract init: keep its sharding, if named
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            spec = (*sharding.spec, *[None] * (len(x.shape) - len(sharding.spec)), None)
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
        elif not isinstance(sharding, jax.sharding.SingleDeviceSharding):
            sharding = None
        return jax.ShapeDtypeStruct((*x.shape, 2), jnp.finfo(dtype).dtype, sharding=sharding)
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)


def _nan_as_zero(g: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(g), jnp.zeros_like(g), g)


def _nan_gradients_as_zero(inner: GradientTransformation) -> GradientTransformation:
    """``inner`` given 0 where a gradient is NaN, as PyTorch's Rprop reads one:
    ``torch.sign(nan)`` is 0 (``jnp.sign(nan)`` is NaN), so that element takes no step and
    keeps its step size, and the next step's sign product is 0 either way (PyTorch keeps
    the NaN as its ``prev``, gradtx a sign of 0). The state is ``inner``'s."""

    def update(updates, state, params=None, **extra):
        return inner.update(tree.map_leaves(_nan_as_zero, updates), state, params, **extra)

    return GradientTransformation(inner.init, update)


def _complex_as_real_pairs(tx: GradientTransformation) -> GradientTransformation:
    """``tx`` with every complex leaf seen as a real array of (real, imaginary) pairs, as
    ``torch.optim`` does (``view_as_real``): Adam's second moment, RMSprop's square
    average and Rprop's signs are per part, not of ``|g|^2``. Real leaves pass through,
    and the state is ``tx``'s (a complex parameter's buffers have a last axis of 2)."""

    def init(params):
        return tx.init(jax.tree.map(_real_pairs, params))

    def update(updates, state, params=None, **extra):
        leaves = jax.tree.leaves(updates)
        if not any(_real_pairs(x) is not x for x in leaves if hasattr(x, "dtype")):
            return tx.update(updates, state, params, **extra)
        pairs = jax.tree.map(_real_pairs, updates)
        new_pairs, state = tx.update(pairs, state, jax.tree.map(_real_pairs, params), **extra)

        def back(update, pair):
            if _real_pairs(update) is update:  # a real leaf
                return pair
            return jax.lax.complex(pair[..., 0], pair[..., 1]).astype(update.dtype)

        return jax.tree.map(back, updates, new_pairs), state

    return GradientTransformation(init, update)


def _chain(
    core: list[tuple[str, GradientTransformation]],
    lr: ScalarOrSchedule,
    weight_decay: Any,
    *,
    maximize: bool,
    decoupled: bool = False,
) -> GradientTransformation:
    """``maximize -> [L2 decay] -> core -> [decoupled decay] -> -lr``, PyTorch's order."""
    _check_flags(maximize=maximize)
    check.non_negative("weight_decay", weight_decay)
    blocks: list[tuple[str, GradientTransformation]] = []
    if maximize:
        blocks.append(("maximize", scale(-1.0)))
    decay = [] if _is_zero(weight_decay) else [("weight_decay", add_decayed_weights(weight_decay))]
    blocks += ([] if decoupled else decay) + core + (decay if decoupled else [])
    blocks.append(("learning_rate", scale_by_learning_rate(lr)))
    return _complex_as_real_pairs(named_chain(*blocks))


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
    lr = _check_lr(lr)
    _check_flags(nesterov=nesterov, maximize=maximize)
    momentum = _plain(momentum)
    check.unit_interval("momentum", momentum, schedule=True)
    check.in_range("dampening", dampening, 0.0, 1.0)
    if nesterov and (_is_zero(momentum) or _concrete_nonzero(dampening)):
        raise ValueError("nesterov=True requires momentum > 0 and dampening = 0 (as in PyTorch)")
    core = []
    if not _is_zero(momentum):
        damp = None if _is_zero(dampening) else dampening
        momentum_tx = _with_schedules(
            trace, {"decay": "momentum"}, decay=momentum, nesterov=nesterov, dampening=damp
        )
        core.append(("momentum", momentum_tx))
    return _chain(core, lr, weight_decay, maximize=maximize)


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
    lr = _check_lr(lr)
    _check_flags(amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
    b1, b2 = _check_betas(betas)
    if amsgrad:
        adam_tx = _with_schedules(
            amsgrad_max, _BETAS, b1=b1, b2=b2, eps=eps, correct_after_max=True
        )
    else:
        adam_tx = _with_schedules(scale_by_adam, _BETAS, b1=b1, b2=b2, eps=eps)
    core = [("adam", adam_tx)]
    return _chain(core, lr, weight_decay, maximize=maximize, decoupled=decoupled_weight_decay)


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
    lr = _check_lr(lr)
    # finite: an infinite decay makes every rate after the first 0 or NaN (PyTorch
    # takes inf, and its second step divides by it)
    _validate.number("lr_decay", lr_decay, 0.0)
    if not _is_zero(lr_decay):
        base = lr

        def lr(step):
            rate = base(step) if callable(base) else base
            return rate / (1 + jnp.asarray(step).astype(jnp.result_type(float)) * lr_decay)

    core = [("adagrad", scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=False))]
    return _chain(core, lr, weight_decay, maximize=maximize)


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
    lr = _check_lr(lr)
    _check_flags(centered=centered, maximize=maximize)
    check.unit_interval("alpha", alpha)
    momentum = _plain(momentum)
    check.unit_interval("momentum", momentum, schedule=True)
    core = [("rmsprop", scale_by_rms(alpha, eps, 0.0, eps_in_sqrt=False, centered=centered))]
    if not _is_zero(momentum):
        core.append(("momentum", _with_schedules(trace, {"decay": "momentum"}, decay=momentum)))
    return _chain(core, lr, weight_decay, maximize=maximize)


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
    lr = _check_lr(lr)
    return _chain([("adadelta", scale_by_adadelta(rho, eps))], lr, weight_decay, maximize=maximize)


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
    lr = _check_lr(lr)
    b1, b2 = _check_betas(betas)
    core = [("adamax", _with_schedules(scale_by_adamax, _BETAS, b1=b1, b2=b2, eps=eps))]
    return _chain(core, lr, weight_decay, maximize=maximize)


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
    lr = _check_lr(lr)
    _check_flags(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    b1, b2 = _check_betas(betas)
    nadam_tx = _with_schedules(
        scale_by_nadam_schedule, _BETAS, b1=b1, b2=b2, eps=eps, momentum_decay=momentum_decay
    )
    core = [("nadam", nadam_tx)]
    return _chain(core, lr, weight_decay, maximize=maximize, decoupled=decoupled_weight_decay)


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
    lr = _check_lr(lr)
    _check_flags(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    b1, b2 = _check_betas(betas)
    radam_tx = _with_schedules(
        scale_by_radam,
        _BETAS,
        b1=b1,
        b2=b2,
        eps=eps,
        strict_threshold=True,
        eps_before_bias_correction=True,
    )
    core = [("radam", radam_tx)]
    return _chain(core, lr, weight_decay, maximize=maximize, decoupled=decoupled_weight_decay)


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
    _check_flags(maximize=maximize)
    initial = float(lr(0)) if callable(lr) else lr
    check.positive("lr", initial)
    initial = _plain(initial)  # a 0-d PyTorch tensor, as PyTorch takes it, as a float
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
            _nan_gradients_as_zero(
                scale_by_rprop(
                    initial, eta_minus, eta_plus, min_step, max_step, clip_every_step=True
                )
            ),
        ),
        ("descend", scale(-1.0)),
    ]
    return _complex_as_real_pairs(named_chain(*blocks))


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
    lr = _check_lr(lr)
    _check_flags(maximize=maximize)
    check.non_negative("weight_decay", weight_decay)
    blocks = [("maximize", scale(-1.0))] if maximize else []
    if not _is_zero(weight_decay):
        blocks.append(("weight_decay", add_decayed_weights(weight_decay)))
    blocks.append(("asgd", averaged_sgd(lr, lambd, alpha, t0)))
    return _complex_as_real_pairs(named_chain(*blocks))


def _norm_as_pytorch(x: jax.Array, order: float, axis: tuple[int, ...] | None = None) -> jax.Array:
    """``torch.linalg.vector_norm(x, order)``: accumulated in at least float32, returned in
    the real dtype of ``x``."""
    norm = jnp.linalg.vector_norm(x.astype(numerics.compute_dtype(x.dtype)), ord=order, axis=axis)
    return norm.astype(numerics.real_dtype(x.dtype))


def clip_grad_norm(
    max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> GradientTransformation:
    r"""``torch.nn.utils.clip_grad_norm_`` as a transform, first in the chain.

    ::

        n = || (||g_1||_p, ..., ||g_k||_p) ||_p          (the leaves' norms, then theirs)
        g <- g * min(1, max_norm / (n + 1e-6))

    PyTorch's eps of 1e-6 makes it differ from ``gtx.clip_by_global_norm`` (``max_norm /
    n`` when ``n >= max_norm``) by ``1e-6 / n`` relative whenever it clips, and it scales
    slightly below ``max_norm / n`` just under the threshold: 2e-7 at ``n = 5``, 2e-2 at
    ``n = 5e-5``. Use it where a PyTorch recipe calls ``clip_grad_norm_`` before
    ``optimizer.step()``: ``gtx.chain(tc.clip_grad_norm(1.0), tc.adamw(...))``.
    ``clip_grad_value_(parameters, v)`` is ``gtx.clip(v)``. As in PyTorch, each norm is
    accumulated in at least float32 and rounded to its input's dtype (a float16 norm
    past 65504 is inf, and every update 0; a float16 gradient of 300 is clipped), and
    the coefficient is rounded as PyTorch's ``max_norm / (n + 1e-6)``, which is
    ``(n + 1e-6).reciprocal() * max_norm``.

    Args:
        max_norm: the largest norm, >= 0.
        norm_type: p of the p-norm, a number or ``float('inf')``, as in PyTorch.
        error_if_nonfinite: PyTorch raises when the norm is NaN or infinite; a jitted step
            cannot, so True is a ValueError (``gtx.apply_if_finite`` skips such steps).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.clip_grad_norm(1.0)
        >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
        >>> [round(float(x[0]), 6) for x in (u["a"], u["b"])]  # 3 and 4 times 1 / 5.000001
        [0.6, 0.8]

    Reference: PyTorch's ``torch.nn.utils.clip_grad_norm_``.
    """
    check.non_negative("max_norm", max_norm, allow_inf=True)
    check.number("norm_type", norm_type, allow_inf=True)
    _check_flags(error_if_nonfinite=error_if_nonfinite)
    if error_if_nonfinite:
        raise ValueError(
            "error_if_nonfinite=True: a jitted step cannot raise on a non-finite norm; "
            "wrap the optimizer in gtx.apply_if_finite(tx, max_consecutive_errors) to "
            "skip such steps, or pass error_if_nonfinite=False (PyTorch's default)"
        )
    order = float(norm_type)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del params, extra
        leaves = [u for u in jax.tree.leaves(updates) if u is not None]
        if not leaves:
            return updates, state
        tree.check_inexact_leaves(updates, leaves, "the update")

        # Each norm accumulates in at least float32 and is rounded to its input's dtype, as
        # PyTorch's are: |g|^2 in float16 overflows from |g| = 256 (every update 0).
        def leaf_norm(u):  # over every axis, without a ravel (which would gather a
            # sharded leaf); un-jitted in the eager kernels, 32 leaves a call
            return _norm_as_pytorch(u, order, axis=tuple(range(u.ndim)))

        # norms of leaves of several dtypes stacked in their common dtype, cast explicitly
        norms = numerics.promote(*tree.map_leaves(leaf_norm, leaves))
        total = _norm_as_pytorch(jnp.stack(norms), order)
        # PyTorch's ``max_norm / tensor`` is ``tensor.reciprocal() * max_norm``, two
        # roundings: in float16/bfloat16 the one division was a unit in the last place off
        coefficient = jnp.minimum(jnp.reciprocal(total + 1e-6) * max_norm, 1.0)

        def leaf(u):
            dtype = numerics.compute_dtype(u.dtype)
            return (u.astype(dtype) * coefficient.astype(dtype)).astype(u.dtype)

        return tree.map_leaves(leaf, updates), state

    return GradientTransformation(init, update)
