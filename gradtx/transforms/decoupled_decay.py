"""Decoupled weight decay applied after the learning rate, as Keras and PyTorch do it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation, ScalarOrSchedule
from gradtx.masks import check_mask, resolve_mask


class DecoupledWeightDecayState(NamedTuple):
    """The state of ``add_decoupled_weight_decay``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (the schedules of
            ``weight_decay`` and ``learning_rate`` read it).
    """

    count: jax.Array


def add_decoupled_weight_decay(
    weight_decay: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    mask: Any = None,
) -> GradientTransformation:
    r"""Shrinks the weights by ``lr * wd * p`` in the final step: ``u <- u - lr_t * wd_t * p``.

    Put it at the **end** of a chain, after the learning rate has been applied. It is the
    decoupled weight decay that Keras applies on every optimizer (``p -= p * wd * lr``
    before the step) and that PyTorch's ``AdamW`` and ``decoupled_weight_decay=True``
    apply (``p *= 1 - lr * wd``). Where the learning rate sits outside every buffer,
    ``chain(..., add_decayed_weights(wd), scale_by_learning_rate(lr))`` is the same map;
    this block is for chains where the learning rate is inside a buffer (Keras' SGD and
    RMSprop with momentum), so the decay cannot go through the buffer. The decay is
    multiplied by the whole learning rate, as in those libraries; Loshchilov & Hutter's
    Algorithm 2 multiplies it by the schedule multiplier eta_t alone, not by the step
    size alpha (pass ``learning_rate=eta`` for that form).

    With t counting updates from 0, on the leaves the mask selects (others unchanged)::

        u <- u - (lr(t) * wd(t)) * p        (in at least float32, cast to u's dtype)

    Args:
        weight_decay: a non-negative number or a schedule ``step -> value``.
        learning_rate: a non-negative number or a schedule, the one the chain uses.
        mask: None (decay every leaf), a tree of bools like the params, or a function
            ``params -> tree of bools``.

    State: ``DecoupledWeightDecayState(count)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.add_decoupled_weight_decay(0.5, learning_rate=0.1)
        >>> params = jnp.array([2.0])
        >>> [round(float(u), 6) for u in tx.update(jnp.zeros(1), tx.init(params), params)[0]]
        [-0.1]

    Reference: Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization".
    """
    for name, value in (("weight_decay", weight_decay), ("learning_rate", learning_rate)):
        if callable(value):
            check.schedule_arity(name, value)
        else:
            check.non_negative(name, value)
    check_mask(mask)

    def init(params):
        del params
        return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError(
                "add_decoupled_weight_decay needs the parameters: call "
                "update(updates, state, params)"
            )
        check.state_of("add_decoupled_weight_decay", state, DecoupledWeightDecayState)
        decay = weight_decay(state.count) if callable(weight_decay) else weight_decay
        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
        # A schedule's concrete value (an un-jitted update) is checked, as in the
        # optimizers: a negative one would grow the weights, a NaN poison them.
        if callable(weight_decay):
            check.non_negative("weight_decay", decay)
        if callable(learning_rate):
            check.non_negative("learning_rate", rate)

        def leaf(u, p, keep):
            if not keep:
                return u
            dtype = numerics.compute_dtype(u.dtype)
            shrink = numerics.factor(rate, dtype) * numerics.factor(decay, dtype)
            return (u.astype(dtype) - p.astype(dtype) * shrink).astype(u.dtype)

        mask_tree = resolve_mask(mask, params, updates)
        (decayed,) = tree.map_unzip(
            leaf, updates, params, mask_tree, outputs=1, names=("the params",)
        )
        return decayed, DecoupledWeightDecayState(numerics.safe_increment(state.count))

    return GradientTransformation(init, update)
