"""``flatten``: run a transform on one concatenated vector instead of many leaves."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import tree
from gradtx.core import GradientTransformation, _update_with_extra_args


def _ravel(leaves: list) -> jax.Array:
    if not leaves:
        return jnp.zeros([0], jnp.float32)
    return _concatenate(leaves)


@jax.jit
def _concatenate(leaves: list) -> jax.Array:
    # jitted so that an eager update runs one program, not a reshape per leaf
    dtype = jnp.result_type(*leaves)
    return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])


def _unravel(vector: jax.Array, like: list) -> list:
    shapes = tuple((jnp.shape(x), jnp.result_type(x)) for x in like)
    sizes = [math.prod(shape) for shape, _ in shapes]
    starts = tuple(int(start) for start in np.cumsum([0, *sizes[:-1]])) if like else ()
    if sum(sizes) <= _INT32_MAX:  # the starts fit the int32 they are passed as
        return _slices(vector, starts, shapes)
    pieces = jnp.split(vector, np.cumsum(sizes)[:-1])  # static starts: any size
    return [
        piece.reshape(shape).astype(dtype)
        for piece, (shape, dtype) in zip(pieces, shapes, strict=True)
    ]


_INT32_MAX = 2**31 - 1


@functools.partial(jax.jit, static_argnums=2)
def _slices(vector: jax.Array, starts: tuple, shapes: tuple) -> list:
    # The starts are arguments, not constants: XLA:CPU compiles one kernel per distinct
    # fusion, and slices at constant offsets are all distinct (~8 ms each to compile,
    # ~10 s for 1,000 leaves at an eager update's first call; docs/performance.md).
    # Inside a jitted step the starts are constants again and this is a plain slice.
    return [
        jax.lax.dynamic_slice(vector, (start,), (math.prod(shape),)).reshape(shape).astype(dtype)
        for start, (shape, dtype) in zip(starts, shapes, strict=True)
    ]


def flatten(inner: GradientTransformation) -> GradientTransformation:
    """Runs ``inner`` on all leaves concatenated into one vector.

    The updates (and params) are raveled and concatenated in tree order into a vector of
    their promoted dtype; ``inner`` sees that vector; its result is split and reshaped
    back into the tree, each leaf in its own dtype. For an elementwise ``inner`` (Adam,
    momentum, clipping by value...) the result is the same as without ``flatten``; for
    one that reduces over a leaf it now reduces over everything. The math on many small
    leaves then runs as one kernel instead of one per leaf, at the price of gathering
    the leaves and slicing the result back.

    When it pays (XLA:CPU, docs/performance.md): a jitted step over many small leaves
    (1,000 leaves of 4,096: about half the per-leaf step time). Not on large leaves,
    where the gathered vectors are temporaries the size of the model that the step
    allocates anew each time (GPT-2-small shapes: 3x slower), and its compile time
    grows by one kernel per leaf (each slice has its own offset: 1,000 leaves 12 s
    against 6 s per leaf). Its state is one vector per state field, not a tree shaped
    like the params, so it is not sharded like them.

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
