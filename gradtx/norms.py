"""The global norm of a tree (``clip_by_global_norm``, Keras' ``global_clipnorm``,
PyTorch's ``clip_grad_norm_``): each leaf's sum of squares in at least float32, added in
the leaves' order as Optax adds them; eagerly in a few compiled calls."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import eager_kernels, numerics, tree, tree_checks


def global_norm(values: Any) -> jax.Array:
    """The l2 norm of all leaves together, accumulated in at least float32: each leaf's
    sum of squares, then their sum in the leaves' order (``sum_in_order``). Eagerly,
    from the second call on, compiled kernels give each call's sums as one vector and
    one more adds them in that order (``_eager_sum_of_squares``)."""
    # tree.map_unzip's traversal without building the tree of sums (one flattening, not three)
    leaves = jax.tree.leaves(values)
    total = _eager_sum_of_squares(values, leaves)
    if total is not None:
        return jnp.sqrt(total)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    arg_tuples = [(x,) for x in tree.as_arrays(leaves)]
    squares = tree.run_leaves(_leaf_sum_of_squares, values, arg_tuples)
    return jnp.sqrt(sum_in_order(squares))


def _leaf_sum_of_squares(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    dtype = numerics.compute_dtype(numerics.real_dtype(x.dtype))
    return jnp.sum(numerics.abs_sq(x.astype(numerics.compute_dtype(x.dtype))).astype(dtype))


def _eager_sum_of_squares(values: Any, leaves: list) -> jax.Array | None:
    """``global_norm``'s sum of squares of an eager update's leaves
    (``tree.COMPILE_EAGER_LEAF_FUNCTIONS``), or None where it takes the path of traced
    or first calls (``tree.run_leaves`` and ``sum_in_order``). The leaves' sums come as
    one vector per kernel call (``eager_kernels.EagerKernels.leaves_per_call`` leaves of
    one signature), not as one scalar array each (~7 us an output on XLA:CPU), and one
    call adds them in the leaves' order: the same sums of the same squares, added in the
    same order."""
    if not (tree.COMPILE_EAGER_LEAF_FUNCTIONS and len(leaves) > 2):
        return None
    # concrete arrays only (a tracer's type is no jax.Array subclass, though it is an
    # instance), their types read in a C loop
    if not all(issubclass(kind, jax.Array) for kind in set(map(type, leaves))):
        return None
    key = ("global_norm",)
    # compiled at the second call, as the kernels are
    if key not in eager_kernels.KERNELS.seen_once:
        eager_kernels.KERNELS.seen_once.add(key)
        return None
    arg_tuples = [(x,) for x in leaves]
    groups = eager_kernels.group_by_signature(arg_tuples)
    tree_checks.check_leaves(values, arg_tuples, [indices[0] for _, indices in groups])
    vectors, positions, step = [], [], eager_kernels.KERNELS.leaves_per_call
    for _, indices in groups:
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
            vectors.append(_stacked_sums_of_squares([leaves[i] for i in chunk]))
            positions.extend(chunk)
    dtype = numerics.result_type(*{v.dtype: v for v in vectors}.values())
    # the position of each leaf's sum in the vectors' concatenation; None where they
    # come in the leaves' order (one signature)
    order = None
    if len(groups) > 1:
        order = np.empty(len(leaves), np.int32)
        order[positions] = np.arange(len(leaves), dtype=np.int32)
    return _add_stacked_in_order(vectors, order, np.dtype(dtype))


@jax.jit
def _stacked_sums_of_squares(leaves: list) -> jax.Array:
    return jnp.stack([_leaf_sum_of_squares(x) for x in leaves])


@functools.partial(jax.jit, static_argnums=2)
def _add_stacked_in_order(vectors: list, order: Any, dtype: Any) -> jax.Array:
    """``0 + values[0] + values[1] + ...`` left to right, ``values`` being the
    concatenation of ``vectors`` cast to ``dtype`` and taken in ``order``."""
    values = jnp.concatenate([v.astype(dtype) for v in vectors])
    if order is not None:
        values = values[order]
    return jax.lax.fori_loop(0, values.shape[0], lambda i, t: t + values[i], jnp.zeros([], dtype))


def sum_in_order(values: list, dtype: Any = None) -> jax.Array:
    """``values[0] + values[1] + ...`` left to right (as Optax sums a global norm), in
    ``dtype`` (default: their common dtype), each value cast to it before its addition.
    Eagerly (``tree.COMPILE_EAGER_LEAF_FUNCTIONS``) the additions run in compiled chunks of
    ``eager_kernels.EagerKernels.leaves_per_call`` values from the second call on: one dispatch per
    value costs ~10 us, and one jitted sum of 1,000 scalars ~1.4 s to compile. The
    additions are the same, in the same order, so the result is too."""
    if dtype is None:
        dtype = numerics.result_type(*{v.aval: v for v in values}.values())  # one of each kind
    eager = tree.COMPILE_EAGER_LEAF_FUNCTIONS and not any(
        isinstance(v, jax.core.Tracer) or not isinstance(v, jax.Array) for v in values
    )
    kernel = None
    if eager and len(values) > 2:
        key = ("sum_in_order",)
        kernel = eager_kernels.KERNELS.kernels.get(key)
        if kernel is None and key in eager_kernels.KERNELS.seen_once:  # compiled at the second call
            kernel = jax.jit(_add_in_order)
            with eager_kernels.KERNELS.lock:
                eager_kernels.KERNELS.kernels[key] = kernel
        eager_kernels.KERNELS.seen_once.add(key)
    if kernel is None:
        return sum(v.astype(dtype) for v in values)
    total = jnp.zeros([], dtype)
    step = eager_kernels.KERNELS.leaves_per_call
    for start in range(0, len(values), step):
        total = kernel(total, values[start : start + step])
    return total


def _add_in_order(total: jax.Array, values: list) -> jax.Array:
    for value in values:
        total = total + value.astype(total.dtype)
    return total
