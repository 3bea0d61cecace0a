"""Tree math used by transforms: one traversal per update, clear errors on mismatch.

``map_unzip`` is the traversal every transform makes; the switches of its fast paths
(``TRACE_LEAF_FUNCTION_ONCE``, ``COMPILE_EAGER_LEAF_FUNCTIONS``,
``INLINE_NESTED_FUNCTIONS``, ``FOLD_EAGER_SCALING``) are here. Their machinery has
modules of its own: ``eager_kernels`` (compiled kernels of eager updates), ``folds``
(an eager chain's elementwise blocks in one kernel), ``layout`` (arrays on Explicit mesh
axes); ``tree_checks`` holds the checks that name a leaf at fault (structure, dtypes,
shapes), ``norms`` the global norm and ``paths`` ``tree_get``/``tree_set``."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from gradtx import check, eager_kernels, layout, numerics, tree_checks
from gradtx.folds import (
    LeafFold,
    any_half,
    elementwise,
    fold_tree_name,
    folded_fn,
    joins_alike,
    scaling,
    scaling_from_state,
    take_request,
    updates_from_first_map,
)

# The helpers the docs name for users (a custom block's map and, from gradtx.folds, its
# marks: docs/protocol.md); the rest serve the transforms (importable, not promised).
__all__ = [
    "LeafFold",
    "elementwise",
    "map_leaves",
    "map_unzip",
    "scaling",
    "scaling_from_state",
    "updates_from_first_map",
]

_is_none = lambda x: x is None  # noqa: E731  (used as is_leaf everywhere)


def _as_array(leaf: Any) -> Any:
    """A Python float or complex as a JAX array (weakly typed, as under ``jit``), and a
    NumPy array or scalar of floats or complex numbers as the JAX array ``jit`` makes of
    it (``numerics.canonical``'s dtype: a float64 array is float32 unless x64 is on;
    read as it is, it made every transform ask JAX for float64, which warns at each
    request, and ran op by op at every update); others unchanged (bools and ints are
    static flags of the per-leaf functions, masks say)."""
    if type(leaf) in (float, complex):
        return jnp.asarray(leaf)
    if isinstance(leaf, np.ndarray | np.generic) and leaf.dtype.kind in "fc":
        return jnp.asarray(leaf)
    return leaf


def as_arrays(leaves: list) -> list:
    """``_as_array`` of each leaf: ``leaves`` itself where none is a Python float or
    complex or a NumPy value (their types read in a C loop: per leaf in Python ~0.25 ms
    a tree of 1,000)."""
    kinds = set(map(type, leaves))
    if float in kinds or complex in kinds or any(issubclass(k, _NUMPY_VALUES) for k in kinds):
        return [_as_array(x) for x in leaves]
    return leaves


_NUMPY_VALUES = (np.ndarray, np.generic)


def zeros_like(tree: Any, dtype: Any = None, *, real: bool = False) -> Any:
    """A tree of zeros shaped like ``tree``; ``None`` leaves stay ``None``.

    Works on concrete arrays, ``jax.ShapeDtypeStruct`` and Flax ``nnx.State`` trees.

    Args:
        tree: the parameters (or any tree of array-likes).
        dtype: the dtype of every leaf; ``None`` keeps each leaf's own dtype.
        real: for complex leaves, use the matching real dtype (second moments of
            complex parameters are real).
    """
    tree_checks.check_inexact(tree, "parameter")

    def zeros(x):
        zeros_dtype = jnp.dtype(dtype) if dtype is not None else numerics.leaf_dtype(x)
        if real:
            zeros_dtype = numerics.real_dtype(zeros_dtype)
        # zeros_like, not zeros(shape): it keeps the leaf's sharding (eagerly, on abstract
        # leaves, and under jit with explicit mesh axes), so state is sharded like params.
        return jnp.zeros_like(x, dtype=zeros_dtype)

    return jax.tree.map(zeros, tree)


def full_like(tree: Any, fill_value: Any, dtype: Any = None) -> Any:
    """A tree shaped like ``tree`` filled with ``fill_value`` (leaf dtypes kept by default),
    each leaf an array of its own."""
    tree_checks.check_inexact(tree, "parameter")

    def fill(x: Any) -> Any:
        filled = jnp.full_like(
            x, fill_value, dtype if dtype is not None else numerics.leaf_dtype(x)
        )
        # a 0-d leaf filled with a 0-d array of its dtype (a hyperparameter the state
        # also holds) is that array's buffer (the array itself, or for a leaf committed
        # to a device a new array over it): a state holding one buffer twice, which a
        # jitted step donating the state refuses ("donate the same buffer twice")
        if not jnp.ndim(filled) and layout.concrete_array(fill_value):
            return jnp.copy(filled)
        return filled

    return jax.tree.map(fill, tree)


def own_array(array: Any, given: Any) -> Any:
    """``array`` (made from ``given``, a value a caller passed in), or a copy where it is
    the caller's concrete array itself: a state holding a caller's array loses it to a
    jitted step that donates the state (later reads fail: "Array has been deleted"),
    and one array held in two places is refused by such a step ("donate the same
    buffer twice"). Traced values are left alone (a jitted step's outputs are buffers
    of their own)."""
    if array is given and layout.concrete_array(given):
        return jnp.copy(array)
    return array


def map_unzip(
    fn: Callable[..., tuple],
    tree: Any,
    *rest: Any,
    outputs: int,
    names: Sequence[str] = (),
    updates_first: bool = False,
) -> tuple:
    """Applies a per-leaf ``fn`` returning ``outputs`` values; returns ``outputs`` trees.

    This is the one traversal a transform makes: ``fn(g, m, v) -> (u, m, v)`` reads
    like the paper's equations for one array, and ``map_unzip`` lifts it to the tree.
    The first tree sets the structure (``None`` subtrees are skipped); every other tree
    must match it, leaf for leaf and shape for shape, or a ValueError names the first
    path that differs. Leaves of the first tree must be floating or complex.

    Args:
        fn: a per-leaf function taking one leaf of each tree (array, or a Python value
            for non-array leaves such as mask bools) and returning a tuple of
            ``outputs`` arrays (or one array when ``outputs=1``).
        tree: the tree that sets the structure (the updates, usually).
        *rest: trees of the same structure (state fields, params, a mask).
        outputs: the number of values ``fn`` returns, an int >= 1.
        names: what the trees of ``rest`` are, in order, for the error that names a tree
            not matching ``tree`` (``("the params", "the state")``); a tree left unnamed
            is "the state".
        updates_first: the first output is what the transform's update returns as its
            updates, leaf for leaf: a ``chain`` may then ask for it scaled by the step
            size of the scaling after the transform (``FOLD_EAGER_SCALING``; the
            transform's ``update`` is marked with ``updates_from_first_map``).

    Returns:
        A tuple of ``outputs`` trees with the structure of ``tree``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import tree
        >>> doubled, squared = tree.map_unzip(lambda x: (2 * x, x * x), {"a": jnp.ones(2)},
        ...                                   outputs=2)
        >>> doubled["a"].tolist(), squared["a"].tolist()
        ([2.0, 2.0], [1.0, 1.0])
    """
    # outputs=0 would drop every result and return (): refused, as documented
    outputs = check.positive_int("outputs", outputs)
    results, treedef = _map_flat(fn, tree, rest, names, updates_first)
    if outputs == 1:
        return (treedef.unflatten([r[0] if isinstance(r, tuple) else r for r in results]),)
    return tuple(treedef.unflatten([r[i] for r in results]) for i in range(outputs))


def _map_flat(
    fn: Callable[..., Any],
    tree: Any,
    rest: Sequence[Any],
    names: Sequence[str],
    updates_first: bool = False,
):
    """``map_unzip``'s traversal: ``fn``'s result for each leaf of ``tree`` (in
    ``jax.tree.leaves`` order) and ``tree``'s treedef. Each tree is flattened once: an
    eager update pays for every flattening (a dict of 1,000 entries sorts its keys each
    time, ~0.3 ms), so a matching tree of ``rest`` gives its leaves from the flattening
    that compares its structure."""
    leaves, treedef = jax.tree.flatten(tree)
    # the map of a transform's updates, asked by a chain to run the elementwise blocks
    # next to the transform (FOLD_EAGER_SCALING)
    request = take_request(tree) if updates_first else None
    # the trees in the order the blocks read them (the one before first), each checked
    # against ``tree`` as that block's own map checks it
    before = [] if request is None or request.before is None else [request.before]
    after = [] if request is None else request.after
    named = [(other, names[i] if i < len(names) else "the state") for i, other in enumerate(rest)]
    read = [
        (other, fold_tree_name(fold, i)) for fold in before for i, other in enumerate(fold.trees)
    ]
    read += named
    read += [
        (other, fold_tree_name(fold, i)) for fold in after for i, other in enumerate(fold.trees)
    ]
    flat = []
    for other, name in read:
        other_leaves, other_treedef = jax.tree.flatten(other)
        if other_treedef != treedef:
            tree_checks.check_same_structure(tree, other, "the updates", name)
        flat.append(other_leaves)
    if not leaves:
        return [], treedef
    # Python floats as leaves (params = {"scale": 0.5}) become arrays, as under jit
    leaves = as_arrays(leaves)
    flat = [as_arrays(leaves_of) for leaves_of in flat]
    # a state laid out otherwise than its updates on Explicit mesh axes: alike, so that
    # a function's selects take them (a ShardingTypeError otherwise)
    leaves, *flat = layout.layouts_aligned([leaves, *flat])
    count_before = sum(len(fold.trees) for fold in before)
    flat_before, flat_rest = flat[:count_before], flat[count_before : count_before + len(rest)]
    flat_after = flat[count_before + len(rest) :]
    if request is None:
        return run_leaves(fn, tree, list(zip(leaves, *flat_rest, strict=True))), treedef
    arity = 1 + len(rest)
    folds = (
        arity,
        None if not before else (before[0].fn, count_before),
        tuple((fold.fn, len(fold.trees)) for fold in after),
    )
    arg_tuples = list(zip(leaves, *flat_rest, *flat_before, *flat_after, strict=True))
    if not (COMPILE_EAGER_LEAF_FUNCTIONS and all(isinstance(x, jax.Array) for x in leaves)):
        # op by op (or traced): the joined functions' operations as their passes make them
        return run_leaves(fn, tree, arg_tuples, folds), treedef
    functions = [fn, *(fold.fn for fold in before), *(fold.fn for fold in after)]
    # a block that reads half-precision state (a bfloat16 second moment of float32
    # updates): inside one kernel XLA computed it on the function before it otherwise
    # than on that function's output read from memory (RMSprop with weight decay or
    # clipping before it: ~4% of the elements an ulp apart)
    if joins_alike(arg_tuples, functions) and not (before and any_half(flat_rest)):
        groups, splits = eager_kernels.group_by_signature(arg_tuples, own=arity)
        if groups is not None and not splits:
            tree_checks.check_leaves(tree, arg_tuples, [indices[0] for _, indices in groups])
            return eager_kernels.eager_kernel(fn, folds)(arg_tuples, groups), treedef
    # Where the blocks' arguments would split the leaves into other kernel calls than
    # the block's own (a mask's flags, params of another dtype: XLA compiles a call of
    # one leaf otherwise than one of several), carry tracers or have other shardings
    # (``joins_alike``), or the block reads half-precision state after a function
    # before it, each block's function makes its own pass
    if before:
        before_args = zip(leaves, *flat_before, strict=True)
        leaves = run_leaves(before[0].fn, tree, list(before_args))
    results = run_leaves(fn, tree, list(zip(leaves, *flat_rest, strict=True)))
    start = 0
    for fold in after:
        trees = flat_after[start : start + len(fold.trees)]
        start += len(fold.trees)
        firsts = [r[0] if isinstance(r, tuple) else r for r in results]
        new = run_leaves(fold.fn, tree, list(zip(firsts, *trees, strict=True)))
        results = [
            (n, *r[1:]) if isinstance(r, tuple) else n for n, r in zip(new, results, strict=True)
        ]
    return results, treedef


def run_leaves(fn: Callable, tree: Any, arg_tuples: list[tuple], folds: tuple | None = None):
    """``fn`` (with ``folds``: ``folded_fn``) over each leaf's argument tuple: traced,
    in eager kernels or op by op (``_map_flat``)."""
    if arg_tuples and isinstance(arg_tuples[0][0], jax.core.Tracer):
        tree_checks.check_leaves(tree, arg_tuples)
        fn = fn if folds is None else folded_fn(fn, *folds)
        if TRACE_LEAF_FUNCTION_ONCE:
            fn = _traced_once_per_signature(fn)
        return [fn(*args) for args in arg_tuples]
    if COMPILE_EAGER_LEAF_FUNCTIONS and all(isinstance(args[0], jax.Array) for args in arg_tuples):
        groups = eager_kernels.group_by_signature(arg_tuples)
        # The leaves of a group share shapes, dtypes and flags, and the groups come in
        # the order of their first leaves: checking those finds the first wrong leaf.
        tree_checks.check_leaves(tree, arg_tuples, groups and [indices[0] for _, indices in groups])
        return eager_kernels.eager_kernel(fn, folds)(arg_tuples, groups)
    tree_checks.check_leaves(tree, arg_tuples)
    fn = fn if folds is None else folded_fn(fn, *folds)
    return [fn(*args) for args in arg_tuples]


def map_leaves(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``jax.tree.map(fn, tree, *rest)`` for array math, ``None`` leaves of ``tree`` kept.

    Unlike ``map_unzip`` it checks nothing (the caller has) and leaves any dtype alone;
    outside a trace it runs ``fn`` in the eager kernels of ``map_unzip``
    (``COMPILE_EAGER_LEAF_FUNCTIONS``) when every argument is an array. ``apply_updates``
    uses it: an eager ``params + updates`` of 1,000 leaves is otherwise 1,000 dispatches.

    Args:
        fn: a function of one leaf of each tree, returning one value.
        tree: the tree that sets the structure; its ``None`` leaves stay ``None``.
        *rest: trees with ``tree``'s structure (or finer: subtrees at its leaves).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import tree
        >>> tree.map_leaves(lambda p, u: p + u, {"a": jnp.ones(2), "b": None},
        ...                 {"a": jnp.ones(2), "b": None})["a"].tolist()
        [2.0, 2.0]
    """
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_none)
    flat_rest = [treedef.flatten_up_to(other) for other in rest]
    return treedef.unflatten(map_leaves_flat(fn, [leaves, *flat_rest]))


def map_leaves_flat(
    fn: Callable[..., Any],
    flat_trees: Sequence[list],
    check: Callable[[list[tuple], list[int] | None], None] | None = None,
) -> list:
    """``map_leaves`` on trees flattened by the caller (``None`` leaves of the first
    kept, ``is_leaf=lambda x: x is None``): the results in leaf order. ``check``, if
    given, is called before the math with the argument tuples of the leaves that are not
    ``None`` and the indices among them to check: the first leaf of each group of one
    signature (shapes, dtypes, shardings) on the eager path, whose groups come in the
    order of their first leaves (so the first wrong leaf is found), or ``None`` for all.
    ``apply_updates`` flattens its two trees once for its checks and this. NumPy
    values of floats become JAX arrays first, as in ``map_unzip`` (``as_arrays``)."""
    flat_trees = [as_arrays(flat) for flat in flat_trees]
    leaves = flat_trees[0]
    present = [i for i, leaf in enumerate(leaves) if leaf is not None]
    if len(present) == len(leaves):
        arg_tuples = list(zip(*flat_trees, strict=True))
    else:
        arg_tuples = [tuple(flat[i] for flat in flat_trees) for i in present]
    eager = COMPILE_EAGER_LEAF_FUNCTIONS and all(
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
        for args in arg_tuples
        for x in args
    )
    if eager and arg_tuples:
        groups = eager_kernels.group_by_signature(arg_tuples)
        if check is not None:
            check(arg_tuples, None if groups is None else [indices[0] for _, indices in groups])
        results = eager_kernels.eager_kernel(fn)(arg_tuples, groups)
    else:
        if check is not None:
            check(arg_tuples, None)
        results = [fn(*args) for args in arg_tuples]
    out = [None] * len(leaves)
    for i, result in zip(present, results, strict=True):
        out[i] = result
    return out


TRACE_LEAF_FUNCTION_ONCE = True
"""Whether ``map_unzip``, inside a trace (``jit``, ``grad``...), traces its per-leaf
function once per distinct leaf signature (shapes, dtypes and static flags) instead of
once per leaf. The compiled program is the same (XLA inlines the calls; the results are
bitwise equal, as ``tests/test_performance_equivalence.py`` checks); tracing Adam's
step for 1,000 leaves of one shape becomes ~3x faster."""

COMPILE_EAGER_LEAF_FUNCTIONS = True
"""Whether ``map_unzip``, outside any trace (an un-jitted ``update``), runs its per-leaf
function in compiled kernels instead of dispatching each of its operations: one kernel
call per ``eager_kernels.EagerKernels.leaves_per_call`` (32) leaves of one signature
(shapes, dtypes, static flags). The kernel is compiled at the second call with the same
per-leaf code
and the same non-array values in its closure (the first call runs op by op, so a
one-off update never waits for a compilation) and reused from then on; the closure's
arrays (hyperparameters, bias corrections, schedule values) and NumPy scalars (from a
state restored to the host: ``-lr`` of a NumPy ``lr``) are its arguments, so an update
at a later step, or from a restored state, reuses it. ``norms.global_norm`` computes its
per-leaf sums as one vector per kernel call and adds them in one more, in the leaves'
order, and ``map_leaves`` (``apply_updates``) uses the same kernels. An eager Adam
update of 1,000 leaves becomes ~6x faster than op by op (docs/performance.md). The
numbers are those of op-by-op execution within float32 rounding, bitwise for most
transforms; where XLA fuses ``a * b + c`` into one rounding
they are the numbers of the jitted step instead
(``tests/test_performance_equivalence.py``). Per-leaf code that receives a new
non-array object in its closure at every call (a fresh local function, say) runs op by
op, as its keys are never seen twice (a code remembers its newest
``eager_kernels.EagerKernels.max_keys_per_code`` keys seen once); a code keeps its newest
``eager_kernels.EagerKernels.max_kernels_per_code`` kernels (a sweep that builds each trial's
optimizer with new Python-float hyperparameters compiles new kernels for it and drops
the oldest: the code was left op by op for good after 16 keys, for every optimizer
sharing it, and eager Adam on 1,000 leaves took 2-3x as long after a 20-trial
learning-rate sweep of ``compat.torch.adamw``); while two kernels of one code
compiled at a second sight have not been called again, a new key of that code waits
(op by op) for them to be (a Python float new at every update, seen twice in it by one
transform placed twice in a chain, compiled 16 kernels used once: 6.6 s for 50 updates
of 100 leaves where op by op took 0.9 s; now 2 kernels and 0.65 s). Code that reads
array values in Python (which works eagerly but cannot compile) runs op by op too. Only
plain functions are compiled: a bound method, ``functools.partial``, ufunc or callable
object runs op by op. Every array in the closure is an argument of every kernel call: a
per-leaf function that reads ``state.count`` hands each call every leaf of ``state``
(1,000 moments, say); read such fields into a local before defining it."""


def _jaxlib_folds_nested_operands_wrongly(version: str) -> bool:
    """Whether jaxlib ``version`` is one whose XLA:CPU puts the elements of an operand
    of a nested computation in the wrong order where that operand is an array known at
    compile time in a transposed layout (``c.T`` of a closed-over ``c``, or the gradient
    of a loss whose parameters and data are all closed over, passed to a nested
    ``jax.jit``): 0.5.3 to 0.8.1, bisected; 0.5.1 and 0.8.2 are right (README)."""
    release = tuple(map(int, re.findall(r"\d+", version)[:3]))
    return (0, 5, 3) <= release < (0, 8, 2)


INLINE_NESTED_FUNCTIONS = _jaxlib_folds_nested_operands_wrongly(jaxlib.__version__)
"""Whether the functions gradtx jits and calls inside a trace (``nested_jit``: the
per-leaf functions of ``TRACE_LEAF_FUNCTION_ONCE``, ``trace_once``'s, ``flatten``'s
gathering and slicing, ``quantized_state``'s codes) are inlined into the caller's
program (``jax.jit(..., inline=True)``: still traced once) instead of called as nested
computations. On by default only with jaxlib 0.5.3 to 0.8.1, whose XLA:CPU
miscompiles such a call where an argument is a transposed array known at compile time
(``jax.jit(lambda s: jax.jit(f)(c.T, s))`` for a closed-over ``c``: its constant
folding puts the elements of ``c.T`` in the wrong order; a ``lax.fori_loop`` over
``c.T`` alike). Gradients of closed-over parameters and data are such arrays: a jitted
Adam update of them was 5.3 times too large there and 8-bit Adam's parameters 39 off
after two steps; inlined, they are right. Elsewhere it is off: on jax 0.10.2 inlining
costs Adam's step on 1,000 leaves 0.2 s of tracing and lowering and ~0.7 s of
compilation."""


class nested_jit:  # a decorator, named like jax.jit
    """``jax.jit(fn, **options)`` for a function that may be called inside a trace: there
    it is inlined into the caller's program where ``INLINE_NESTED_FUNCTIONS`` says (read
    at each call), and called as a nested computation otherwise; outside a trace it is
    the jitted function either way. ``lower`` lowers the one a call would run."""

    def __init__(self, fn: Callable[..., Any], **options: Any):
        self._called = jax.jit(fn, **options)
        self._inlined = jax.jit(fn, inline=True, **options)
        functools.update_wrapper(self, fn)

    def _jitted(self) -> Any:
        return self._inlined if INLINE_NESTED_FUNCTIONS else self._called

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._jitted()(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self._jitted().lower(*args, **kwargs)


def _traced_once_per_signature(fn: Callable[..., tuple]) -> Callable[..., tuple]:
    """``fn`` as a ``jax.jit`` function, so that its jaxpr is cached per signature for the
    duration of one ``map_unzip``; non-array arguments (per-leaf static flags such as
    mask booleans or None) are passed as static arguments."""
    by_static_positions: dict[tuple[int, ...], Callable[..., tuple]] = {}

    def call(*args):
        static = tuple(i for i, x in enumerate(args) if not eager_kernels.is_array(x))
        if not all(isinstance(args[i], Hashable) for i in static):
            return fn(*args)
        if static not in by_static_positions:
            by_static_positions[static] = nested_jit(fn, static_argnums=static)
        return by_static_positions[static](*args)

    return call


def trace_once(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``fn(*args)`` as a function of no arguments that one trace shares: its calls (the
    ``jax.eval_shape`` giving a ``lax.cond`` branch's dtypes, then the branch) run one
    ``jax.jit`` function, traced once (JAX's trace cache). The array leaves of ``args``
    are that function's arguments; the other leaves (a Python number, a string or a
    model's function in ``params``) stay in its closure as they are, as in ``fn(*args)``
    unjitted: a string is no JAX type, and an int a per-leaf static flag."""
    leaves, treedef = jax.tree.flatten(args)
    positions = [i for i, x in enumerate(leaves) if eager_kernels.is_array(x)]
    statics = [None if eager_kernels.is_array(x) else x for x in leaves]

    @nested_jit
    def on_arrays(arrays: list) -> Any:
        merged = list(statics)
        for i, x in zip(positions, arrays, strict=True):
            merged[i] = x
        return fn(*treedef.unflatten(merged))

    arrays = [leaves[i] for i in positions]
    return lambda: on_arrays(arrays)


FOLD_EAGER_SCALING = True
"""Whether an un-jitted ``chain`` runs its elementwise blocks inside the eager kernels of
a block with state next to them: the blocks after it (``scale``, the learning rate of
every named optimizer, constant, injected or a schedule's value; ``add_decayed_weights``)
and the one right before it (``add_decayed_weights``: PyTorch's L2;
``clip_by_global_norm``'s product), where that block's
updates are the first output of its per-leaf map (``scale_by_adam``, ``trace``... and
``add_decayed_weights``; see ``updates_from_first_map``) and where XLA computes the
joined functions as it computes their own passes (no product is read by a sum, nor by
another product but the learning rate right after the block; complex updates take no
block before another; a map whose kernel calls the joined arguments would split, a
mask's flags, or that holds tracers runs the blocks as their own passes). The chain
asks each elementwise block for its per-leaf function (``elementwise``: the scalars it
needs, a schedule's value, computed first), and the block's map applies the one
before to its updates and the ones after to its first output, in order: one output
array per leaf and per block fewer (7-12 us each on XLA:CPU). An eager ``gtx.adam``
update on 1,000 leaves makes three arrays a leaf, not four; ``gtx.adamw`` three, not
five; the issue's chain (``clip_by_global_norm``, ``scale_by_adam``,
``add_decayed_weights``, an injected learning rate) three, not six (the clipping's
product folded before Adam, which reads its updates in products only:
``takes_product_before``). Only float32, float64 and complex updates fold
(a half-precision update is rounded to its dtype between the blocks, and inside one
kernel XLA may drop that rounding), no block before one that reads half-precision
state (a bfloat16 moment), and nothing where the leaves lie on several devices: the
numbers are those of the separate passes, bit for bit
(``tests/test_performance_equivalence.py``). Under ``jit`` nothing changes (XLA fuses
the blocks' loops itself)."""


def cast(tree: Any, dtype: Any) -> Any:
    """Casts every leaf to ``dtype`` (``None`` keeps each leaf's dtype)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def cast_like(tree: Any, like: Any) -> Any:
    """Casts every leaf of ``tree`` to the dtype of the matching leaf of ``like``; a leaf
    already of that dtype is returned as it is (a typed PRNG key has no ``astype``)."""

    def cast(x: Any, y: Any) -> Any:
        dtype = getattr(y, "dtype", None)  # a typed PRNG key's too
        dtype = jnp.result_type(y) if dtype is None else dtype
        if isinstance(x, jax.Array) and x.dtype == dtype:
            return x  # (jnp.asarray of each leaf: 75 ms an eager update on 2,000 leaves)
        x = jnp.asarray(x)
        return x if x.dtype == dtype else x.astype(dtype)

    return jax.tree.map(cast, tree, like)


def zeros_like_in_dtypes_of(tree: Any, like: Any) -> Any:
    """Zeros shaped like ``tree`` (the gradients) in the dtypes of the matching leaves of
    ``like`` (the updates an inner transform returns, their ``jax.eval_shape``, or
    dtypes): the updates of a step that a wrapper skips (``apply_if_finite``,
    ``multi_steps``). Made from ``tree``'s leaves, they keep their sharding (explicit mesh
    axes) and their varying manual axes (``shard_map``), which ``lax.cond`` compares
    between its branches; ``jnp.zeros(shape, dtype)`` has neither. Un-jitted they are made
    in the eager kernels (``map_leaves``), 32 leaves a call."""
    zeros = map_leaves(_zeros_like, tree)

    def in_dtype(zero: Any, y: Any) -> Any:
        dtype = numerics.leaf_dtype(y)
        return zero if zero.dtype == dtype else zero.astype(dtype)

    return jax.tree.map(in_dtype, zeros, like)


def _zeros_like(x: jax.Array) -> jax.Array:
    return jnp.zeros_like(x)
