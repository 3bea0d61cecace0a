"""What every ``torch.optim`` chain shares: argument reading, block order, complex pairs.

PyTorch's reading of its arguments (0-d tensors as floats, flags, betas, schedules of
momentum), its order of blocks (``torch_chain``) and its view of a complex parameter as
real pairs. Used by ``adam_family`` and ``classic``; the package docstring states the
conventions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, numerics, tree
from gradtx.compat import _validate
from gradtx.compat._validate import is_zero
from gradtx.core import GradientTransformation, ScalarOrSchedule, named_chain
from gradtx.schedules.injection import InjectState
from gradtx.transforms.regularize import add_decayed_weights
from gradtx.transforms.scaling import scale, scale_by_learning_rate


def concrete_nonzero(value: Any) -> bool:
    """True for a value known now (not traced, not a schedule) that is not 0."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return False
    return bool(np.any(np.asarray(value) != 0))


def check_lr(lr: ScalarOrSchedule) -> ScalarOrSchedule:
    """``lr`` checked, and a 0-d PyTorch tensor (PyTorch takes ``lr`` as one) as a Python
    float: the blocks (and a jitted update) would otherwise compute with the tensor."""
    if callable(lr):
        check.schedule_arity("lr", lr)  # PyTorch's name, before the blocks see it
        return lr
    check.non_negative("lr", lr)
    return plain(lr)


def plain(value: Any) -> Any:
    """A 0-d PyTorch tensor (PyTorch takes betas as tensors) as a Python float; anything
    else unchanged."""
    if hasattr(value, "detach") and hasattr(value, "item"):
        return float(value.item())
    return value


def check_flags(**flags: Any) -> None:
    """PyTorch's flags (maximize, amsgrad, ...) are True or False: PyTorch reads any
    value by its truth, so ``maximize="no"`` would ascend."""
    for name, value in flags.items():
        check.boolean(name, value)


def check_betas(betas: Any) -> tuple[Any, Any]:
    b1, b2 = (plain(b) for b in _validate.pair("betas", betas, "(beta1, beta2)"))
    check.unit_interval("betas[0]", b1, schedule=True)
    check.unit_interval("betas[1]", b2, schedule=True)
    return b1, b2


BETAS = {"b1": "betas[0]", "b2": "betas[1]"}


def with_schedules(
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
    schedules = {name: arguments[name] for name in labels if check.is_schedule(arguments[name])}
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


def nan_gradients_as_zero(inner: GradientTransformation) -> GradientTransformation:
    """``inner`` given 0 where a gradient is NaN, as PyTorch's Rprop reads one:
    ``torch.sign(nan)`` is 0 (``jnp.sign(nan)`` is NaN), so that element takes no step and
    keeps its step size, and the next step's sign product is 0 either way (PyTorch keeps
    the NaN as its ``prev``, gradtx a sign of 0). The state is ``inner``'s."""

    def update(updates, state, params=None, **extra):
        return inner.update(tree.map_leaves(_nan_as_zero, updates), state, params, **extra)

    return GradientTransformation(inner.init, update)


def complex_as_real_pairs(tx: GradientTransformation) -> GradientTransformation:
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


def torch_chain(
    core: list[tuple[str, GradientTransformation]],
    lr: ScalarOrSchedule,
    weight_decay: Any,
    *,
    maximize: bool,
    decoupled: bool = False,
) -> GradientTransformation:
    """``maximize -> [L2 decay] -> core -> [decoupled decay] -> -lr``, PyTorch's order."""
    check_flags(maximize=maximize)
    check.non_negative("weight_decay", weight_decay)
    blocks: list[tuple[str, GradientTransformation]] = []
    if maximize:
        blocks.append(("maximize", scale(-1.0)))
    decay = [] if is_zero(weight_decay) else [("weight_decay", add_decayed_weights(weight_decay))]
    blocks += ([] if decoupled else decay) + core + (decay if decoupled else [])
    blocks.append(("learning_rate", scale_by_learning_rate(lr)))
    return complex_as_real_pairs(named_chain(*blocks))
