"""Regularizers: weight decay (L2 or decoupled, by chain position), and friends."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import EmptyState, GradientTransformation, Params, ScalarOrSchedule


class AddDecayedWeightsState(NamedTuple):
    count: jax.Array  # int32, saturating: the schedule of weight_decay reads it


def resolve_mask(mask: Any, params: Params, updates: Any) -> Any:
    """The mask as a tree of Python bools with the structure of ``updates``.

    ``mask`` is None (everything), a tree of bools with the structure of the params, or
    a function ``params -> tree of bools``. Masks are static: a traced bool is an error.
    """
    treedef = jax.tree.structure(updates)
    if mask is None:
        return treedef.unflatten([True] * treedef.num_leaves)
    mask_tree = mask(params) if callable(mask) else mask
    if jax.tree.structure(mask_tree) != treedef:
        tree.check_same_structure(updates, mask_tree, "the updates", "the mask")
    flat = treedef.flatten_up_to(mask_tree)
    for value in flat:
        if not isinstance(value, bool | jnp.bool_):
            raise TypeError(f"mask leaves must be Python bools (masks are static), got {value!r}")
    return treedef.unflatten([bool(m) for m in flat])


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    r"""Adds ``weight_decay * params`` to the updates: ``u <- u + wd * p``.

    Where it sits in a chain is the algorithm:

    - **before** the preconditioner (``chain(add_decayed_weights(wd), scale_by_adam(),
      scale_by_learning_rate(lr))``) it is L2 regularization: the decay term is added
      to the gradient and then rescaled by Adam (PyTorch's ``Adam(weight_decay=...)``);
    - **after** it (``chain(scale_by_adam(), add_decayed_weights(wd),
      scale_by_learning_rate(lr))``) it is decoupled weight decay, AdamW
      (Loshchilov & Hutter, 2019): every weight shrinks by ``lr * wd * p`` per step.

    Args:
        weight_decay: a non-negative number or a schedule ``step -> value`` (e.g. the
            decay rate halved at given steps).
        mask: None (decay every leaf), a tree of bools like the params, or a function
            ``params -> tree of bools``; leaves whose mask is False pass unchanged.

    The state holds a step count when ``weight_decay`` is a schedule, else nothing.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.add_decayed_weights(0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> tx.update(jnp.zeros(2), tx.init(params), params)[0].tolist()
        [0.10000000149011612, -0.20000000298023224]

    Reference: Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization".
    """
    scheduled = callable(weight_decay)
    if not scheduled:
        check.non_negative("weight_decay", weight_decay)
    if mask is not None and not callable(mask) and isinstance(mask, bool):
        raise TypeError("mask must be a tree of bools or a function of params, not a bool")

    def init(params):
        del params
        if scheduled:
            return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError(
                "add_decayed_weights needs the parameters: call update(updates, state, params)"
            )
        decay = weight_decay(state.count) if scheduled else weight_decay

        def leaf(u, p, keep):
            if not keep:
                return u
            return (u + numerics.hyperparameter(decay, u.dtype) * p).astype(u.dtype)

        mask_tree = resolve_mask(mask, params, updates)
        (decayed,) = tree.map_unzip(leaf, updates, params, mask_tree, outputs=1)
        new_state = (
            AddDecayedWeightsState(numerics.safe_increment(state.count)) if scheduled else state
        )
        return decayed, new_state

    return GradientTransformation(init, update)
