"""``flatten``: run a transform on one concatenated vector instead of many leaves."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, eager_kernels, layout, numerics, tree, tree_checks
from gradtx.core import GradientTransformation, TransformLike, _update_with_extra_args


def _ravel(leaves: list) -> jax.Array:
    if not leaves:
        return jnp.zeros([0], jnp.float32)
    return _concatenate(leaves)


@tree.nested_jit
def _concatenate(leaves: list) -> jax.Array:
    # jitted so that an eager update runs one program, not a reshape per leaf
    # promoted from the dtypes, not the arrays: a weakly typed float32 leaf (made from a
    # Python float) must not take the bfloat16 of the others (optax.flatten does)
    dtype = numerics.result_type(*[x.dtype for x in leaves])
    return jnp.concatenate([jnp.ravel(layout.gathered(x)).astype(dtype) for x in leaves])


def _shape_and_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
    # The attributes where a leaf has them: jnp.shape and jnp.result_type cost ~5 us a
    # leaf, 5 ms per eager update of 1,000 leaves. The dtype as JAX computes in it
    # (float64 is float32 unless x64 is on), as jnp.result_type gives it.
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return jnp.shape(x), jnp.result_type(x)
    return tuple(shape), jax.dtypes.canonicalize_dtype(dtype)


def _layout(like: list) -> tuple[tuple, tuple[int, ...], int]:
    """Each leaf's (shape, dtype), where it starts in the vector, and the vector's size."""
    shapes = tuple(_shape_and_dtype(x) for x in like)
    # Python ints (a ShapeDtypeStruct keeps NumPy integers as given), or JAX's symbolic
    # sizes where jax.export traces a shape-polymorphic step
    sizes = [math.prod(int(d) if isinstance(d, np.integer) else d for d in s) for s, _ in shapes]
    starts = tuple(itertools.accumulate(sizes[:-1], initial=0)) if like else ()
    return shapes, starts, sum(sizes)


def _unravel(vector: jax.Array, like: list) -> list:
    shapes, starts, size = _layout(like)
    if isinstance(size, int) and size <= _OFFSETS_MAX:
        return _slices(vector, starts, shapes)  # the starts fit the int32 they are passed as
    pieces = jnp.split(vector, starts[1:])  # static starts: any size
    return [
        _as_leaf(piece.reshape(shape), dtype)
        for piece, (shape, dtype) in zip(pieces, shapes, strict=True)
    ]


_OFFSETS_MAX = numerics.INT32_MAX
"""The most elements whose start offsets fit int32 (tests lower it to reach the other path)."""


# The starts are never negative, so the slices need no wrap-around arithmetic (half the
# compile time of 1,000 runtime-offset slices); the option exists from jax 0.5.3 on.
_NON_NEGATIVE_STARTS = (
    {"allow_negative_indices": False}
    if "allow_negative_indices" in inspect.signature(jax.lax.dynamic_slice).parameters
    else {}
)


@functools.partial(tree.nested_jit, static_argnums=2)
def _slices(vector: jax.Array, starts: tuple, shapes: tuple) -> list:
    # The starts are arguments, not constants: XLA:CPU compiles one kernel per distinct
    # fusion, and slices at constant offsets are all distinct (~8 ms each to compile,
    # ~10 s for 1,000 leaves at an eager update's first call; docs/performance.md).
    # Inside a jitted step the starts are constants again and this is a plain slice,
    # unless they come from the state (``offsets_in_state``).
    slice_at = functools.partial(jax.lax.dynamic_slice, **_NON_NEGATIVE_STARTS)
    return [
        _as_leaf(slice_at(vector, (start,), (math.prod(shape),)).reshape(shape), dtype)
        for start, (shape, dtype) in zip(starts, shapes, strict=True)
    ]


def _as_leaf(piece: jax.Array, dtype: np.dtype) -> jax.Array:
    # A real leaf's piece of a complex vector (a tree of real and complex leaves) is its
    # real part: JAX deprecates casting complex to real (a ValueError to come).
    if jnp.iscomplexobj(piece) and not jnp.issubdtype(dtype, jnp.complexfloating):
        piece = jnp.real(piece)
    return piece.astype(dtype)


@functools.partial(tree.nested_jit, static_argnums=(2, 3, 4))
def _slices_at_state_starts(
    vector: jax.Array, starts: tuple, last_start: int, shapes: tuple, runs: tuple
) -> tuple[list, jax.Array]:
    # The starts are state, so a state zeroed or scaled by tree-wide code would slice
    # the wrong places: check the last start (one scalar comparison) and return NaN
    # pieces if it is off, plus the verdict for an eager update to raise on.
    valid = starts[-1] == last_start
    leaf_starts = [
        start + j * math.prod(shapes[first][0])
        for start, (first, count) in zip(starts, runs, strict=True)
        for j in range(count)
    ]
    pieces = _slices(vector, leaf_starts, shapes)
    return [jnp.where(valid, piece, jnp.nan).astype(piece.dtype) for piece in pieces], valid


_LEAVES_PER_START = 16


def _grouped_by_shape(leaves: list) -> list[int]:
    """The leaf indices grouped by shape and dtype (groups in the order of their first
    leaf, tree order within a group): ``offsets_in_state`` lays the vector out in this
    order, so that the leaves of one shape are consecutive and share starts (``_runs``)
    even where a model alternates shapes (a kernel, a bias, a kernel...)."""
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(leaves):
        groups.setdefault(_shape_and_dtype(x), []).append(i)
    return [i for indices in groups.values() for i in indices]


def _runs(shapes: tuple) -> tuple[tuple[int, int], ...]:
    """``(first leaf, leaf count)`` of each run of up to ``_LEAVES_PER_START`` consecutive
    leaves of one shape and dtype, in the order given (``_grouped_by_shape``'s):
    ``offsets_in_state`` keeps one start per run. Every scalar in the state is one more
    buffer each step passes in and out (~1.9 us apiece on XLA:CPU), while leaf ``j`` of
    a run, sliced at ``start + j * size``, shares its kernel with leaf ``j`` of every
    run of its shape: at most ``_LEAVES_PER_START`` kernels per shape
    (docs/performance.md)."""
    runs: list[list[int]] = []
    for i, shape_and_dtype in enumerate(shapes):
        if runs and shapes[runs[-1][0]] == shape_and_dtype and runs[-1][1] < _LEAVES_PER_START:
            runs[-1][1] += 1
        else:
            runs.append([i, 1])
    return tuple((first, count) for first, count in runs)


class _EagerInner:
    """An un-jitted flatten's gathering and inner update as one compiled program.

    Eagerly, concatenating the leaves, the inner transform's kernels on the vector and
    the params' concatenation (which XLA drops when the inner transform does not read
    them) are otherwise separate calls, each writing a model-sized array: one program
    takes 1,000 leaves of 4,096 through Adam in 13-28 ms instead of 36-63
    (docs/performance.md). Like the eager kernels (``tree.COMPILE_EAGER_LEAF_FUNCTIONS``,
    which also switches this off), the first call runs op by op, so a one-off update
    never waits for a compiler, and an inner transform that reads values in Python
    stays op by op."""

    def __init__(self, inner_update: Any) -> None:
        self.calls = 0
        self.op_by_op = False

        def gather_and_update(leaves, inner_state, param_leaves, extra):
            flat_params = None if param_leaves is None else _concatenate(param_leaves)
            return inner_update(_concatenate(leaves), inner_state, flat_params, **extra)

        self.compiled = jax.jit(gather_and_update)

    def __call__(self, leaves: list, inner_state: Any, param_leaves: Any, extra: dict) -> Any:
        """The inner update's ``(vector, state)``, or None where it runs op by op."""
        eager = tree.COMPILE_EAGER_LEAF_FUNCTIONS and not self.op_by_op and leaves
        if not eager or not all(_is_concrete(x) for x in (*leaves, *(param_leaves or ()))):
            return None
        self.calls += 1
        if self.calls == 1:
            return None
        try:
            return self.compiled(leaves, inner_state, param_leaves, extra)
        except (*eager_kernels.NEEDS_CONCRETE_VALUES, TypeError):
            # code that reads values in Python, or a non-array argument (a string passed
            # as an extra keyword): op by op from now on, where a real error recurs
            self.op_by_op = True
            return None


def _is_concrete(x: Any) -> bool:
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


class FlattenState(NamedTuple):
    """The state of ``flatten(inner, offsets_in_state=True)`` (without it, the state is
    the inner state itself).

    Attributes:
        inner: the inner transform's state, for the one vector of all leaves.
        starts: a tuple of int32 scalars, one per run of leaves (``_runs``): the offset
            in the vector where the run begins.
    """

    inner: Any
    starts: tuple


def flatten(inner: TransformLike, offsets_in_state: bool = False) -> GradientTransformation:
    """Runs ``inner`` on all leaves concatenated into one vector.

    The updates (and params) are raveled and concatenated in tree order into a vector of
    their promoted dtype; ``inner`` sees that vector; its result is split and reshaped
    back into the tree, each leaf in its own dtype. For an elementwise ``inner`` (Adam,
    momentum, clipping by value...) the result is the same as without ``flatten``; for
    one that reduces over a leaf it now reduces over everything, and ``add_noise`` draws
    the vector's noise with one key instead of one per leaf (same distribution, other
    numbers). The math on many small leaves then runs as one kernel instead of one per
    leaf, at the price of gathering the leaves and slicing the result back. The vector
    hides the leaves: pass ``params`` to ``update`` and each update's shape is checked
    against its parameter's (updates of other shapes but the same total size would
    otherwise take each other's state).

    When it pays (XLA:CPU, docs/performance.md): a jitted step over many small leaves
    (1,000 leaves of 4,096: about half the per-leaf step time), and un-jitted updates
    of such trees, which from the second call gather and update in one compiled
    program (Adam on those leaves: 0.08-0.10x Optax's eager time). Not on large leaves,
    where the gathered vectors are temporaries the size of the model that the step
    allocates anew each time (GPT-2-small shapes: 3x slower). Its state is one vector per
    state field, not a tree shaped like the params, so it is not sharded like them: on
    a mesh the leaves are gathered into a replicated vector (explicitly, by a reshard to
    ``P()``, on ``jax.make_mesh``'s Explicit axes) and every device holds the whole state.

    Compile time: XLA:CPU compiles one kernel per distinct fusion, and a slice at a
    constant offset is distinct from every other, so by default a jitted step compiles
    one kernel per leaf (1,000 leaves of 4,096: 12 s, about twice the per-leaf step).
    With ``offsets_in_state=True`` the vector holds the leaves grouped by shape and dtype
    (groups in the order of their first leaf, tree order within) and the state also
    holds where they start in it: one int32 scalar per run of up to 16 leaves of a
    group, leaf ``j`` of a run starting ``j`` leaf sizes after it. The offsets are then
    inputs of the step and the slices of one leaf shape share a few kernels: the same
    numbers, compiled in 2.5 s instead of 11 s on 1,000 leaves of 4,096 and stepping as
    fast as the default (13.6-13.8 ms against 13.6-14.0; one start per leaf was 15-40%
    slower, every state scalar being one more buffer in and out of the step). It is an
    option because it changes the state's structure and, where shapes alternate, the
    order of the vector the inner transform sees. Those starts are layout, not
    statistics: code that rescales or zeroes every state leaf would move them, so the
    update checks them and gives NaN updates (under ``jit``) or raises (eagerly) when
    they are off.

    Routing by leaf cannot run on the vector: ``masked``, ``partition``, ``freeze`` with
    a mask and a transform's ``mask=`` (``adamw``'s) inside ``flatten`` are a ValueError
    naming both (a mask function, called with the vector, picked all of it or none); put
    ``flatten`` inside them instead (``masked(flatten(tx), mask)``).

    Args:
        inner: the transform to run on the vector; its state is for the vector.
        offsets_in_state: keep the leaves' start offsets in the state (state
            ``FlattenState(inner, starts)`` instead of ``inner``'s state) for a faster
            compilation; needs fewer than 2**31 elements in all, and concrete shapes
            (the default also takes the symbolic dimensions of a shape-polymorphic
            ``jax.export``).

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
        >>> fast = gtx.flatten(gtx.scale_by_adam(), offsets_in_state=True)
        >>> [int(start) for start in fast.init(grads).starts]
        [0, 2]
    """
    check.boolean("offsets_in_state", offsets_in_state)
    inner_update = _update_with_extra_args(inner, "inner")
    eager_inner = _EagerInner(inner_update)

    def update_vector(leaves, inner_state, param_leaves, extra):
        with check.inside_flatten():  # a mask or labels by leaf in inner: a clear error
            result = eager_inner(leaves, inner_state, param_leaves, extra)
            if result is not None:
                return result
            flat_params = None if param_leaves is None else _ravel(param_leaves)
            return inner_update(_ravel(leaves), inner_state, flat_params, **extra)

    def init(params):
        tree_checks.check_inexact(params, "parameter")
        leaves = jax.tree.leaves(params)
        if offsets_in_state:
            leaves = [leaves[i] for i in _grouped_by_shape(leaves)]
        with check.inside_flatten():
            if any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):  # an abstract init
                inner_state = inner.init(jax.eval_shape(_ravel, leaves))
            else:
                inner_state = inner.init(_ravel(leaves))
        if not offsets_in_state:
            return inner_state
        shapes, starts, size = _layout(leaves)
        if not isinstance(size, int):
            raise ValueError(
                f"flatten(offsets_in_state=True) keeps the leaves' offsets in the state as "
                f"int32 values, which needs concrete shapes, but the params have {size} "
                "elements in all (a symbolic shape of jax.export); use offsets_in_state=False"
            )
        if size > _OFFSETS_MAX:
            raise ValueError(
                f"flatten(offsets_in_state=True) keeps int32 offsets, but the params have "
                f"{size} elements in all (at most {_OFFSETS_MAX}); use offsets_in_state=False"
            )
        runs = _runs(shapes)
        return FlattenState(
            inner_state, tuple(jnp.asarray(starts[first], jnp.int32) for first, _ in runs)
        )

    def update(updates, state, params=None, **extra):
        leaves, treedef = jax.tree.flatten(updates)
        tree_checks.check_inexact_leaves(updates, leaves, "the update")  # named, not the vector
        param_leaves = None
        if params is not None:
            tree_checks.check_same_structure(updates, params, "the updates", "the params")
            param_leaves = jax.tree.leaves(params)
            # The vector hides the leaves: updates of other shapes but the same total
            # size would take each other's state elements silently.
            shape = lambda x: x.shape if hasattr(x, "shape") else np.shape(x)  # noqa: E731
            for index, (u, p) in enumerate(zip(leaves, param_leaves, strict=True)):
                if shape(u) != shape(p):  # attribute reads: 0.2 ms an update of 1,000
                    raise ValueError(
                        f"flatten: at {tree_checks.leaf_path(updates, index) or 'the root'} the "
                        f"update has shape {list(np.shape(u))}, the parameter "
                        f"{list(np.shape(p))}"
                    )
        if not offsets_in_state:
            new_vector, state = update_vector(leaves, state, param_leaves, extra)
            return treedef.unflatten(_unravel(new_vector, leaves)), state
        order = _grouped_by_shape(leaves)
        leaves = [leaves[i] for i in order]
        if param_leaves is not None:
            param_leaves = [param_leaves[i] for i in order]
        shapes, starts, _ = _layout(leaves)
        runs = _runs(shapes)
        if not isinstance(state, FlattenState) or len(state.starts) != len(runs):
            raise ValueError(
                "flatten(offsets_in_state=True) expects its FlattenState with one start per "
                f"run of leaves ({len(runs)} runs of up to {_LEAVES_PER_START} leaves of one "
                f"shape and dtype, {len(leaves)} leaves), got {_describe(state)}"
            )
        new_vector, inner_state = update_vector(leaves, state.inner, param_leaves, extra)
        if not leaves:
            return treedef.unflatten([]), FlattenState(inner_state, state.starts)
        last_start = starts[runs[-1][0]]
        pieces, valid = _slices_at_state_starts(new_vector, state.starts, last_start, shapes, runs)
        if not isinstance(valid, jax.core.Tracer) and not bool(valid):
            raise ValueError(
                f"flatten state starts do not match the leaves: the last run of leaves starts "
                f"at {last_start}, the state says {int(state.starts[-1])}. The starts are "
                "layout, not statistics: keep them out of code that rescales or zeroes the "
                "state (re-run init instead)"
            )
        in_tree_order = [None] * len(order)
        for i, piece in zip(order, pieces, strict=True):
            in_tree_order[i] = piece
        return treedef.unflatten(in_tree_order), FlattenState(inner_state, state.starts)

    return GradientTransformation(init, update)


def _describe(state: Any) -> str:
    if isinstance(state, FlattenState):
        return f"a FlattenState with {len(state.starts)} starts"
    return f"a {type(state).__name__}"
