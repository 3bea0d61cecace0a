"""``flatten``: run a transform on one concatenated vector instead of many leaves."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import tree
from gradtx.core import GradientTransformation, _update_with_extra_args


def _ravel(leaves: list) -> jax.Array:
    if not leaves:
        return jnp.zeros([0], jnp.float32)
    dtype = jnp.result_type(*leaves)
    return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])


def _unravel(vector: jax.Array, like: list) -> list:
    sizes = [int(np.prod(jnp.shape(x))) for x in like]
    pieces = jnp.split(vector, np.cumsum(sizes)[:-1]) if like else []
    return [
        piece.reshape(jnp.shape(x)).astype(jnp.result_type(x))
        for piece, x in zip(pieces, like, strict=True)
    ]


def flatten(inner: GradientTransformation) -> GradientTransformation:
    """Runs ``inner`` on all leaves concatenated into one vector.

    The updates (and params) are raveled and concatenated in tree order into a vector of
    their promoted dtype; ``inner`` sees that vector; its result is split and reshaped
    back into the tree, each leaf in its own dtype. For an elementwise ``inner`` (Adam,
    momentum, clipping by value...) the result is the same as without ``flatten``; for
    one that reduces over a leaf it now reduces over everything. Many small leaves then
    cost one kernel each instead of one per leaf, at the price of a concatenation.

    Args:
        inner: the transform to run on the vector; its state is for the vector.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.flatten(gtx.scale_by_adam())
        >>> grads = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[3.0]])}
        >>> state = tx.init(grads)
        >>> state.mu.shape
        (3,)
        >>> updates, state = tx.update(grads, state)
        >>> [round(float(x), 4) for x in updates["a"]], updates["b"].shape
        ([1.0, -1.0], (1, 1))
    """
    inner_update = _update_with_extra_args(inner)

    def init(params):
        tree.check_inexact(params, "parameter")
        leaves = jax.tree.leaves(params)
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):  # an abstract init
            return inner.init(jax.eval_shape(_ravel, leaves))
        return inner.init(_ravel(leaves))

    def update(updates, state, params=None, **extra):
        leaves, treedef = jax.tree.flatten(updates)
        flat_params = None
        if params is not None:
            tree.check_same_structure(updates, params, "the updates", "the params")
            flat_params = _ravel(jax.tree.leaves(params))
        new_vector, state = inner_update(_ravel(leaves), state, flat_params, **extra)
        return treedef.unflatten(_unravel(new_vector, leaves)), state

    return GradientTransformation(init, update)
