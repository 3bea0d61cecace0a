"""Tree math used by transforms: one traversal per update, clear errors on mismatch."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
import operator
import re
import threading
import types
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from gradtx import check, numerics

# The helpers the docs name for users; the rest serve the transforms (importable, but
# not promised).
__all__ = ["map_leaves", "map_unzip", "tree_get", "tree_set"]

_is_none = lambda x: x is None  # noqa: E731  (used as is_leaf everywhere)


def _leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def _describe(leaf: Any) -> str:
    if leaf is None:
        return "None"
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return f"{jnp.dtype(leaf.dtype).name}{list(leaf.shape)}"
    return type(leaf).__name__


def check_same_structure(reference: Any, other: Any, reference_name: str, other_name: str):
    """Raises ValueError naming the first path where two trees differ in structure.

    Costs one treedef comparison when they match, so it is cheap enough to run on every
    (traced) update.
    """
    if jax.tree.structure(reference) == jax.tree.structure(other):
        return
    ref_paths = _leaves_with_paths(reference)
    other_paths = _leaves_with_paths(other)
    ref_names = [path for path, _ in ref_paths]
    other_names = [path for path, _ in other_paths]
    ref_set, other_set = set(ref_names), set(other_names)
    only_ref = [path for path in ref_names if path not in other_set]
    only_other = [path for path in other_names if path not in ref_set]
    if only_ref or only_other:  # leaves missing or added: name them, not a position
        sides = ((only_ref, reference_name, other_name), (only_other, other_name, reference_name))
        parts = [
            f"{', '.join(path or 'the root' for path in paths)} "
            f"{'is' if len(paths) == 1 else 'are'} in {here}, not in {there}"
            for paths, here, there in sides
            if paths
        ]
        raise ValueError(
            f"the structure of {other_name} differs from {reference_name}: {'; '.join(parts)}"
            + _variables_hint(only_ref, only_other)
        )
    for (ref_path, ref_leaf), (other_path, other_leaf) in zip(ref_paths, other_paths, strict=False):
        if ref_path != other_path or (ref_leaf is None) != (other_leaf is None):
            raise ValueError(
                f"the structure of {other_name} differs from {reference_name}: first "
                f"difference at {ref_path or 'the root'} ({reference_name}: "
                f"{ref_path or 'root'} = {_describe(ref_leaf)}; {other_name}: "
                f"{other_path or 'root'} = {_describe(other_leaf)})"
            )
    if len(ref_paths) != len(other_paths):
        longer, name = (ref_paths, reference_name)
        if len(other_paths) > len(ref_paths):
            longer, name = (other_paths, other_name)
        extra_path = longer[min(len(ref_paths), len(other_paths))][0]
        raise ValueError(
            f"the structure of {other_name} differs from {reference_name}: first difference "
            f"at {extra_path or 'the root'}, which only {name} has"
        )
    raise ValueError(
        f"the structure of {other_name} differs from {reference_name} in its containers "
        f"({jax.tree.structure(reference)} vs {jax.tree.structure(other)})"
    )


def _variables_hint(only_ref: list[str], only_other: list[str]) -> str:
    """A hint where the two sides differ only by Flax ``nnx.Variable``s around the leaves
    on one side (paths ending in ``.value``): ``nnx.Optimizer.opt_state`` passed to
    ``tx.update`` by hand, or a mask built with ``jax.tree.map`` over ``nnx.state``."""
    strip = lambda paths: sorted(p.removesuffix(".value") for p in paths)  # noqa: E731
    if not only_ref or strip(only_ref) != strip(only_other):
        return ""
    return (
        " (one holds Flax nnx.Variables where the other holds their bare values; "
        "nnx.Optimizer.update passes arrays: give nnx.as_pure(...) of the one with "
        "Variables, e.g. nnx.as_pure(optimizer.opt_state); before flax 0.12.7, "
        "jax.tree.map(lambda v: v.value, opt_state, "
        "is_leaf=lambda v: isinstance(v, nnx.Variable)))"
    )


def leaf_dtype(leaf: Any) -> np.dtype:
    """A leaf's dtype; a Python number has the dtype JAX gives it (``jnp.asarray``:
    float32, or float64 under x64), the one it has under ``jit``."""
    return jnp.dtype(leaf.dtype) if hasattr(leaf, "dtype") else jnp.result_type(leaf)


def _as_array(leaf: Any) -> Any:
    """A Python float or complex as a JAX array (weakly typed, as under ``jit``); others
    unchanged (bools and ints are static flags of the per-leaf functions, masks say;
    NumPy scalars such as ``np.float64``, a subclass of float, stay NumPy values as NumPy
    arrays do: the transforms read their dtype as it is)."""
    return jnp.asarray(leaf) if type(leaf) in (float, complex) else leaf


def _as_arrays(leaves: list) -> list:
    """``_as_array`` of each leaf: ``leaves`` itself where none is a Python float or
    complex (their types read in a C loop: per leaf in Python ~0.25 ms a tree of 1,000)."""
    kinds = set(map(type, leaves))
    if float in kinds or complex in kinds:
        return [_as_array(x) for x in leaves]
    return leaves


def check_inexact(tree: Any, what: str) -> None:
    """Raises TypeError naming the first leaf whose dtype is not floating or complex."""
    for path, leaf in _leaves_with_paths(tree):
        if leaf is None:
            continue
        if not hasattr(leaf, "dtype") and not isinstance(leaf, int | float | complex):
            # a model's non-array field (an activation function, a name): jnp.result_type
            # would raise from inside JAX, or read a string as a dtype name
            raise TypeError(
                f"{what} at {path or 'the root'} is a {type(leaf).__name__}, not an array; "
                f"gradient transformations need floating or complex array leaves. Keep "
                f"only a model's arrays (e.g. eqx.filter(model, eqx.is_array), or "
                f"nnx.split(model, nnx.Param))."
            )
        dtype = leaf_dtype(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            # float0's NumPy name is "void"
            name = "float0" if dtype == jax.dtypes.float0 else dtype.name
            raise TypeError(
                f"{what} at {path or 'the root'} has dtype {name}; gradient "
                f"transformations need floating or complex leaves. Mask integer "
                f"leaves out (e.g. gradtx.masked or gradtx.partition with freeze)."
            )


def zeros_like(tree: Any, dtype: Any = None, *, real: bool = False) -> Any:
    """A tree of zeros shaped like ``tree``; ``None`` leaves stay ``None``.

    Works on concrete arrays, ``jax.ShapeDtypeStruct`` and Flax ``nnx.State`` trees.

    Args:
        tree: the parameters (or any tree of array-likes).
        dtype: the dtype of every leaf; ``None`` keeps each leaf's own dtype.
        real: for complex leaves, use the matching real dtype (second moments of
            complex parameters are real).
    """
    check_inexact(tree, "parameter")

    def zeros(x):
        zeros_dtype = jnp.dtype(dtype) if dtype is not None else leaf_dtype(x)
        if real:
            zeros_dtype = numerics.real_dtype(zeros_dtype)
        # zeros_like, not zeros(shape): it keeps the leaf's sharding (eagerly, on abstract
        # leaves, and under jit with explicit mesh axes), so state is sharded like params.
        return jnp.zeros_like(x, dtype=zeros_dtype)

    return jax.tree.map(zeros, tree)


def full_like(tree: Any, fill_value: Any, dtype: Any = None) -> Any:
    """A tree shaped like ``tree`` filled with ``fill_value`` (leaf dtypes kept by default),
    each leaf an array of its own."""
    check_inexact(tree, "parameter")

    def fill(x: Any) -> Any:
        filled = jnp.full_like(x, fill_value, dtype if dtype is not None else leaf_dtype(x))
        # a 0-d leaf filled with a 0-d array of its dtype (a hyperparameter the state
        # also holds) is that array's buffer (the array itself, or for a leaf committed
        # to a device a new array over it): a state holding one buffer twice, which a
        # jitted step donating the state refuses ("donate the same buffer twice")
        if not jnp.ndim(filled) and _concrete_array(fill_value):
            return jnp.copy(filled)
        return filled

    return jax.tree.map(fill, tree)


def _concrete_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def own_array(array: Any, given: Any) -> Any:
    """``array`` (made from ``given``, a value a caller passed in), or a copy where it is
    the caller's concrete array itself: a state holding a caller's array loses it to a
    jitted step that donates the state (later reads fail: "Array has been deleted"),
    and one array held in two places is refused by such a step ("donate the same
    buffer twice"). Traced values are left alone (a jitted step's outputs are buffers
    of their own)."""
    if array is given and _concrete_array(given):
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
    request = _FOLD_REQUEST.get() if updates_first else None
    if request is not None and (request.answered or request.updates is not tree):
        request = None
    if request is not None:
        request.answered = True
    # the trees in the order the blocks read them (the one before first), each checked
    # against ``tree`` as that block's own map checks it
    before = [] if request is None or request.before is None else [request.before]
    after = [] if request is None else request.after
    named = [(other, names[i] if i < len(names) else "the state") for i, other in enumerate(rest)]
    read = [
        (other, _fold_tree_name(fold, i)) for fold in before for i, other in enumerate(fold.trees)
    ]
    read += named
    read += [
        (other, _fold_tree_name(fold, i)) for fold in after for i, other in enumerate(fold.trees)
    ]
    flat = []
    for other, name in read:
        other_leaves, other_treedef = jax.tree.flatten(other)
        if other_treedef != treedef:
            check_same_structure(tree, other, "the updates", name)
        flat.append(other_leaves)
    if not leaves:
        return [], treedef
    # Python floats as leaves (params = {"scale": 0.5}) become arrays, as under jit
    leaves = _as_arrays(leaves)
    flat = [_as_arrays(leaves_of) for leaves_of in flat]
    # a state laid out otherwise than its updates on Explicit mesh axes: alike, so that
    # a function's selects take them (a ShardingTypeError otherwise)
    leaves, *flat = _layouts_aligned([leaves, *flat])
    count_before = sum(len(fold.trees) for fold in before)
    flat_before, flat_rest = flat[:count_before], flat[count_before : count_before + len(rest)]
    flat_after = flat[count_before + len(rest) :]
    if request is None:
        return _run_leaves(fn, tree, list(zip(leaves, *flat_rest, strict=True))), treedef
    arity = 1 + len(rest)
    folds = (
        arity,
        None if not before else (before[0].fn, count_before),
        tuple((fold.fn, len(fold.trees)) for fold in after),
    )
    arg_tuples = list(zip(leaves, *flat_rest, *flat_before, *flat_after, strict=True))
    if not (COMPILE_EAGER_LEAF_FUNCTIONS and all(isinstance(x, jax.Array) for x in leaves)):
        # op by op (or traced): the joined functions' operations as their passes make them
        return _run_leaves(fn, tree, arg_tuples, folds), treedef
    functions = [fn, *(fold.fn for fold in before), *(fold.fn for fold in after)]
    # a block that reads half-precision state (a bfloat16 second moment of float32
    # updates): inside one kernel XLA computed it on the function before it otherwise
    # than on that function's output read from memory (RMSprop with weight decay or
    # clipping before it: ~4% of the elements an ulp apart)
    if _joins_alike(arg_tuples, functions) and not (before and _any_half(flat_rest)):
        groups, splits = _group_by_signature(arg_tuples, own=arity)
        if groups is not None and not splits:
            _check_leaves(tree, arg_tuples, [indices[0] for _, indices in groups])
            return _eager_kernel(fn, folds)(arg_tuples, groups), treedef
    # Where the blocks' arguments would split the leaves into other kernel calls than
    # the block's own (a mask's flags, params of another dtype: XLA compiles a call of
    # one leaf otherwise than one of several), carry tracers or have other shardings
    # (``_joins_alike``), or the block reads half-precision state after a function
    # before it, each block's function makes its own pass
    if before:
        before_args = zip(leaves, *flat_before, strict=True)
        leaves = _run_leaves(before[0].fn, tree, list(before_args))
    results = _run_leaves(fn, tree, list(zip(leaves, *flat_rest, strict=True)))
    start = 0
    for fold in after:
        trees = flat_after[start : start + len(fold.trees)]
        start += len(fold.trees)
        firsts = [r[0] if isinstance(r, tuple) else r for r in results]
        new = _run_leaves(fold.fn, tree, list(zip(firsts, *trees, strict=True)))
        results = [
            (n, *r[1:]) if isinstance(r, tuple) else n for n, r in zip(new, results, strict=True)
        ]
    return results, treedef


_HALF_PRECISION = frozenset(map(jnp.dtype, ("bfloat16", "float16")))


def _any_half(flat: list[list]) -> bool:
    """Whether any of the leaves of ``flat`` (lists of arrays and static flags) is a
    bfloat16 or float16 array (their dtypes read in a C loop where all are arrays)."""
    for leaves in flat:
        try:
            dtypes = set(map(_DTYPE, leaves))
        except AttributeError:  # a static flag (a mask's bool) among them
            dtypes = {getattr(x, "dtype", None) for x in leaves}
        if not _HALF_PRECISION.isdisjoint(dtypes):
            return True
    return False


def _joins_alike(arg_tuples: list[tuple], functions: list[Callable]) -> bool:
    """Whether one kernel of the joined ``functions`` computes what their passes do, as
    far as their arguments say: no tracer among them or in the functions' closures
    (``jax.jvp`` over the params or a hyperparameter: the joined tangents reassociate;
    apart, the traced block's outputs take the traced path), and on several devices,
    the leaves on one device, the same for all, as are the arrays the joined blocks'
    functions hold (a clipping's factor, a learning rate): XLA partitions a joined
    program over several devices otherwise than the passes (leaves on four devices,
    replicated or some split, gave ~1% of the elements an ulp apart for every fold)."""
    if _any_tracer(itertools.chain.from_iterable(arg_tuples)):
        return False
    held = []
    for function in functions:
        cells = getattr(function, "__closure__", None) or ()
        try:
            values = jax.tree.leaves([cell.cell_contents for cell in cells])
        except ValueError:  # a cell not yet assigned
            return False
        if any(isinstance(x, jax.core.Tracer) for x in values):
            return False
        if function is not functions[0]:  # (the block's own are in its own kernels)
            held += [x for x in values if isinstance(x, jax.Array)]
    if jax.device_count() > 1:
        for args in arg_tuples:
            sharding = args[0].sharding
            if any(isinstance(x, jax.Array) and x.sharding != sharding for x in args[1:]):
                return False
        shardings = {args[0].sharding for args in arg_tuples}  # (a few objects)
        devices = {frozenset(sharding.device_set) for sharding in shardings}
        if len(devices) > 1 or any(len(d) > 1 for d in devices):
            return False
        if any(frozenset(x.sharding.device_set) not in devices for x in held):
            return False
    return True


def _fold_tree_name(fold: LeafFold, i: int) -> str:
    return fold.names[i] if i < len(fold.names) else "the state"


def _run_leaves(fn: Callable, tree: Any, arg_tuples: list[tuple], folds: tuple | None = None):
    """``fn`` (with ``folds``: ``_folded_fn``) over each leaf's argument tuple: traced,
    in eager kernels or op by op (``_map_flat``)."""
    if arg_tuples and isinstance(arg_tuples[0][0], jax.core.Tracer):
        _check_leaves(tree, arg_tuples)
        fn = fn if folds is None else _folded_fn(fn, *folds)
        if TRACE_LEAF_FUNCTION_ONCE:
            fn = _traced_once_per_signature(fn)
        return [fn(*args) for args in arg_tuples]
    if COMPILE_EAGER_LEAF_FUNCTIONS and all(isinstance(args[0], jax.Array) for args in arg_tuples):
        groups = _group_by_signature(arg_tuples)
        # The leaves of a group share shapes, dtypes and flags, and the groups come in
        # the order of their first leaves: checking those finds the first wrong leaf.
        _check_leaves(tree, arg_tuples, groups and [indices[0] for _, indices in groups])
        return _eager_kernel(fn, folds)(arg_tuples, groups)
    _check_leaves(tree, arg_tuples)
    fn = fn if folds is None else _folded_fn(fn, *folds)
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
    ``apply_updates`` flattens its two trees once for its checks and this."""
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
        groups = _group_by_signature(arg_tuples)
        if check is not None:
            check(arg_tuples, None if groups is None else [indices[0] for _, indices in groups])
        results = _eager_kernel(fn)(arg_tuples, groups)
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
call per ``_EagerKernels.leaves_per_call`` (32) leaves of one signature (shapes, dtypes,
static flags). The kernel is compiled at the second call with the same per-leaf code
and the same non-array values in its closure (the first call runs op by op, so a
one-off update never waits for a compilation) and reused from then on; the closure's
arrays (hyperparameters, bias corrections, schedule values) and NumPy scalars (from a
state restored to the host: ``-lr`` of a NumPy ``lr``) are its arguments, so an update
at a later step, or from a restored state, reuses it. ``global_norm`` computes its
per-leaf sums as one vector per kernel call and adds them in one more, in the leaves'
order, and ``map_leaves`` (``apply_updates``) uses the same kernels. An eager Adam
update of 1,000 leaves becomes ~6x faster than op by op (docs/performance.md). The
numbers are those of op-by-op execution within float32 rounding, bitwise for most
transforms; where XLA fuses ``a * b + c`` into one rounding
they are the numbers of the jitted step instead
(``tests/test_performance_equivalence.py``). Per-leaf code that receives a new
non-array object in its closure at every call (a fresh local function, say) runs op by
op, as its keys are never seen twice (a code remembers its newest
``_EagerKernels.max_keys_per_code`` keys seen once); a code keeps its newest
``_EagerKernels.max_kernels_per_code`` kernels (a sweep that builds each trial's
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
        static = tuple(i for i, x in enumerate(args) if not _is_array(x))
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
    positions = [i for i, x in enumerate(leaves) if _is_array(x)]
    statics = [None if _is_array(x) else x for x in leaves]

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


class LeafFold(NamedTuple):
    """An elementwise block's update as a per-leaf function (``elementwise``).

    Attributes:
        fn: ``fn(u, *leaves) -> u``, the block's update of one leaf ``u`` given the
            matching leaves of ``trees`` (array or static flag).
        trees: trees with the updates' structure that ``fn`` reads (the params, a mask).
        names: what ``trees`` are, for the error that names one not matching the
            updates (``map_unzip``'s ``names``).
        state: the state the block's update returns.
    """

    fn: Callable[..., Any]
    trees: tuple = ()
    names: tuple = ()
    state: Any = None


class _FoldRequest:
    """A chain's request to the first ``map_unzip(..., updates_first=True)`` of a block
    over ``updates`` (that very tree: a map over any other tree, user code run inside
    the block, is not asked): apply ``before`` to its first argument and each of
    ``after`` to its first output, in order; ``answered`` once that map has."""

    __slots__ = ("after", "answered", "before", "updates")

    def __init__(self, updates: Any, before: LeafFold | None, after: list[LeafFold]) -> None:
        self.updates = updates
        self.before = before
        self.after = after
        self.answered = False


_FOLD_REQUEST: contextvars.ContextVar[_FoldRequest | None] = contextvars.ContextVar(
    "gradtx_fold_request", default=None
)


@contextlib.contextmanager
def folded_into_first_map(updates: Any, before: LeafFold | None, after: list[LeafFold]):
    """Asks the first ``map_unzip(updates, ..., updates_first=True)`` run inside the block
    to apply ``before`` to each leaf of ``updates`` before its function and each of
    ``after`` to its first output (``FOLD_EAGER_SCALING``); yields the request, whose
    ``answered`` says whether it did. ``chain`` uses it, on float32, float64 or complex
    updates outside any trace (``fold_kind``)."""
    request = _FoldRequest(updates, before, after)
    token = _FOLD_REQUEST.set(request)
    try:
        yield request
    finally:
        _FOLD_REQUEST.reset(token)


def all_like(updates: Any, trees: Sequence[Any]) -> bool:
    """Whether every tree of ``trees`` has the structure of ``updates``."""
    if not trees:  # (no flattening: ~0.3 ms for a dict of 1,000 entries)
        return True
    treedef = jax.tree.structure(updates)
    return all(jax.tree.structure(other) == treedef for other in trees)


def fold_kind(updates: Any) -> str | None:
    """Whether an un-jitted chain may fold blocks over ``updates`` (``FOLD_EAGER_SCALING``):
    ``"real"`` for concrete float32 or float64 arrays, ``"complex"`` where complex64 or
    complex128 ones are among them (no block folds before another there: complex
    arithmetic is sums of products, which one kernel contracted otherwise than two for
    the issue's chain), else None."""
    leaves = jax.tree.leaves(updates)
    # by their types and dtypes, each read in a C loop (per leaf in Python: ~0.5 ms of
    # an eager update on 1,000 leaves)
    kinds = set(map(type, leaves))
    if not all(issubclass(k, jax.Array) for k in kinds) or _any_tracer(kinds, types=True):
        return None
    dtypes = set(map(_DTYPE, leaves))
    if not dtypes <= _FOLDABLE:
        return None
    return "complex" if any(dtype.kind == "c" for dtype in dtypes) else "real"


_FOLDABLE = frozenset(map(np.dtype, ("float32", "float64", "complex64", "complex128")))
_DTYPE = operator.attrgetter("dtype")


def _any_tracer(values: Any, types: bool = False) -> bool:
    """Whether any of ``values`` (or, with ``types``, of the types ``values``) is a
    tracer, from the set of their types (read in a C loop, not one isinstance a value)."""
    kinds = values if types else set(map(type, values))
    return any(issubclass(kind, jax.core.Tracer) for kind in kinds)


# The marks are kept here, by function, not as attributes of the functions:
# ``functools.wraps`` copies a function's attributes to the wrapper it decorates, which
# may change the updates after the wrapped one (clip them, log them), and a chain
# folding that wrapper's scaling, or folding a scaling into it, skipped what it did.
_FIRST_MAP_UPDATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LEAF_FOLDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# Where the kernels of two blocks become one, XLA:CPU may compute differently from the
# two passes: LLVM contracts a product and the sum that reads it into one fused
# multiply-add rounded once (weight decay added to a product, or to a quotient XLA
# computes as a product; a clipped update in ``trace``'s sum), and XLA reassociates
# products by scalars (``(u * 0.3) * lr`` as ``u * (0.3 * lr)``; a clipped update
# divided by a scalar in Adam's Nesterov term): 7-58% of elements an ulp apart. An
# optimization barrier between them does not last to code generation. So the blocks
# say whether their functions return products, and a chain joins two only where
# neither can happen (``core._update_folded``): before a block only a function that
# returns no product (weight decay's sum) where the block takes a sum, or a product by
# a scalar computed at the update (``clip_by_global_norm``'s factor, no constant) where
# the block reads its updates in products only; after one that returns a product only
# the scaling right after it (its learning rate: a product of arrays times a scalar).


def updates_from_first_map(
    update: Callable[..., Any],
    *,
    returns_product: bool = True,
    takes_sum_before: bool = False,
    takes_product_before: bool = False,
) -> Callable[..., Any]:
    """Marks a transform's ``update`` that reads its updates only as the first tree of a
    ``map_unzip(updates, ..., updates_first=True)`` it always makes (once; their
    structure and dtypes it may read anywhere) and returns, leaf for leaf, that map's
    first output as its updates: a chain may then run the elementwise blocks next to it
    inside that map's eager kernels (``FOLD_EAGER_SCALING``). The update must not change
    those updates after the map. The mark is the function's own: a function wrapping it
    (``functools.wraps`` included) is not marked.

    Args:
        update: the transform's update function.
        returns_product: the map's first output may be a product, or a quotient that
            XLA computes as one (by a scalar, or by a square root: ``x * rsqrt(y)``);
            only a scaling may then follow inside the kernels (Adam's quotient by
            ``sqrt(v) + eps`` is none; Adagrad's product is one). True is safe.
        takes_sum_before: an elementwise block that returns a sum (weight decay, L2)
            may run before the map's function inside its kernels: XLA computes the
            function on that sum as on the sum read from memory (Adam's Nesterov term,
            whose quotients by scalars XLA makes products and repeats the sum in, does
            not). False is safe.
        takes_product_before: a product of each update by a scalar computed at the
            update (``clip_by_global_norm``'s factor: an array, never a constant) may
            run before the map's function inside its kernels: the function reads its
            updates only as factors of products (a square, a product by a constant),
            in ``abs`` or ``sign``, never as a term of a sum (LLVM would contract the
            factor's product and that sum into one fused multiply-add: ``trace``, weight
            decay) nor as a dividend of a scalar (XLA merges that quotient with the
            factor's product: Adam's Nesterov term). Checked bitwise for each block that
            says so (``tests/test_performance_equivalence.py``). False is safe.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> from gradtx import tree
        >>> def sign_of():  # a custom block: u = sign(g)
        ...     def update(updates, state, params=None, **extra):
        ...         (signs,) = tree.map_unzip(jnp.sign, updates, outputs=1, updates_first=True)
        ...         return signs, state
        ...     return gtx.GradientTransformation(
        ...         lambda params: gtx.EmptyState(),
        ...         tree.updates_from_first_map(update, returns_product=False),
        ...     )
        >>> tx = gtx.chain(sign_of(), gtx.scale(-0.5))  # one eager pass: -0.5 * sign(g)
        >>> tx.update(jnp.array([2.0, -3.0]), tx.init(jnp.zeros(2)))[0].tolist()
        [-0.5, 0.5]
    """
    _FIRST_MAP_UPDATES[update] = (returns_product, takes_sum_before, takes_product_before)
    return update


def first_map_of(update: Callable[..., Any]) -> tuple[bool, bool, bool] | None:
    """``(returns_product, takes_sum_before, takes_product_before)`` of an ``update``
    itself marked with ``updates_from_first_map``, else None."""
    try:
        return _FIRST_MAP_UPDATES.get(update)
    except TypeError:  # a callable without weak references (a builtin) or unhashable
        return None


def elementwise(
    update: Callable[..., Any],
    leaf_fold: Callable[..., LeafFold | None],
    *,
    returns_product: bool = True,
    scaling: bool = False,
    value_scaling: bool = False,
) -> Callable[..., Any]:
    """Marks the ``update`` of an elementwise block: one that returns, leaf for leaf, a
    function of each update leaf and the matching leaves of other trees, and a state.
    ``leaf_fold(updates, state, params, extra, values)`` returns that function, those
    trees and that state as a ``LeafFold``, computed as ``update`` computes them, or None
    where it cannot before the update (a traced state, a state not the block's own: the
    update then runs as it is). ``values`` says whether ``updates`` are the block's own
    updates or stand-ins with their structure and dtypes only (the block's updates are
    those of the block before it, not computed yet): a block whose function needs their
    values returns None then. A chain may run the block inside the eager kernels of the
    block before it and, where the function returns no product (``returns_product``:
    ``add_decayed_weights``' sum), of the block after it (``FOLD_EAGER_SCALING``).
    ``scaling``: the function is ``scaled_leaf``'s (a product by a step size and
    nothing else), which may follow a block that returns a product. ``value_scaling``:
    the function is a product by one scalar that ``leaf_fold`` computes from the
    updates' values at each update (``clip_by_global_norm``'s factor, an array, so never
    a constant XLA could merge with the next block's), which may run before a block
    that takes a product before it (``updates_from_first_map``)."""
    _LEAF_FOLDS[update] = (leaf_fold, returns_product, scaling, value_scaling)
    return update


def leaf_fold_of(update: Callable[..., Any]) -> tuple[Callable, bool, bool, bool] | None:
    """``(leaf_fold, returns_product, scaling, value_scaling)`` of an elementwise block's
    ``update`` (``elementwise``), else None."""
    try:
        return _LEAF_FOLDS.get(update)
    except TypeError:  # a callable without weak references (a builtin) or unhashable
        return None


def scaled_leaf(step_size: Any) -> Callable[[Any], Any]:
    """The per-leaf function of a scaling (``scale``): ``u -> step_size * u``
    (``numerics.scaled``)."""

    def leaf(u):
        return numerics.scaled(u, step_size)

    return leaf


def scaling(update: Callable[..., Any], step_size: Any) -> Callable[..., Any]:
    """Marks a stateless scaling's ``update`` (``scale``) that multiplies the updates by
    ``step_size`` (``scaled_leaf``) and does nothing else (``elementwise``)."""

    def leaf_fold(updates, state, *_):
        return LeafFold(scaled_leaf(step_size), state=state)

    return elementwise(update, leaf_fold, scaling=True)


def scaling_from_state(
    update: Callable[..., Any], step_size_and_state: Callable[[Any], tuple | None]
) -> Callable[..., Any]:
    """Marks the ``update`` of a scaling whose step size its state gives
    (``scale_by_schedule``): it multiplies the updates by a step size
    (``scaled_leaf``) and changes nothing else. ``step_size_and_state(state)`` returns
    that step size and the state the update would return, computed as the update
    computes them, or None where it cannot (``elementwise``)."""

    def leaf_fold(updates, state, *_):
        try:
            step = step_size_and_state(state)
        except Exception:  # a bad value: the update says so, in its turn
            return None
        return None if step is None else LeafFold(scaled_leaf(step[0]), state=step[1])

    return elementwise(update, leaf_fold, scaling=True)


def concrete_counter(count: Any) -> bool:
    """Whether ``count`` is a step counter an eager update reads: a 0-d array, not a
    tracer (``elementwise`` blocks with a schedule use it)."""
    concrete = isinstance(count, jax.Array) and not isinstance(count, jax.core.Tracer)
    return concrete and not count.ndim


def _folded_fn(fn: Callable, arity: int, before: Any, after: Sequence) -> Callable:
    """``fn`` of ``arity`` arguments with the leaf folds of a chain (``_FoldRequest``):
    a function of ``fn``'s arguments followed by the extra leaves of ``before`` and of
    each of ``after`` (``(fn, count)`` pairs, or ``before`` None)."""

    def folded(*args):
        main, extra = list(args[:arity]), args[arity:]
        if before is not None:
            before_fn, count = before
            main[0] = before_fn(main[0], *extra[:count])
            extra = extra[count:]
        result = fn(*main)
        first, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, None)
        for after_fn, count in after:
            first = after_fn(first, *extra[:count])
            extra = extra[count:]
        return first if rest is None else (first, *rest)

    return folded


class _EagerKernels:
    """The compiled per-leaf kernels of eager updates (``COMPILE_EAGER_LEAF_FUNCTIONS``).

    A kernel is keyed by the per-leaf function's code and the values of its closure that
    are not arrays or NumPy scalars (``_KERNEL_ARGUMENTS``), each with its type (so
    ``1``, ``1.0`` and ``True`` are different keys). One call of a kernel runs up to
    ``leaves_per_call`` leaves of one signature (shapes, dtypes, static flags): an eager
    update of many small leaves costs a few dispatches, not one per leaf. Eager updates
    may run in several threads at once: ``lock`` guards every change to ``kernels`` and
    ``waiting`` (two threads evicting the oldest kernel together would otherwise delete
    one key twice, a KeyError in an update).
    """

    max_kernels = 512  # oldest dropped first
    # Keys of one code seen once, waiting for the second sight that compiles them; the
    # oldest is forgotten past this many (a closure value new at every call is never
    # seen twice: its code runs op by op, and remembers no more than these).
    max_keys_per_code = 16
    # Kernels of one code, the oldest dropped past this many: a sweep builds a new
    # optimizer (new Python-float hyperparameters, so new keys) per trial, and each
    # kernel holds its compiled programs (~0.75 MB each on XLA:CPU).
    max_kernels_per_code = 16
    # Kernels of one code compiled but not yet called again: a closure value new at every
    # update and seen twice in it (one transform twice in a chain or a partition, with a
    # Python float from the step) would otherwise compile a kernel used once per update.
    max_unused_kernels_per_code = 2
    leaves_per_call = 32

    def __init__(self) -> None:
        self.kernels: dict[Hashable, Callable[..., list]] = {}
        self.seen_once: set[Hashable] = set()
        # code -> its keys in seen_once, oldest first
        self.waiting: dict[Any, dict[Hashable, None]] = {}
        self.keys_per_code: dict[Any, int] = {}  # code -> keys seen (a record, no limit)
        self.op_by_op_codes: set[Any] = set()  # code that reads values in Python
        self.unused: dict[Any, set[Hashable]] = {}  # code -> keys of kernels not reused yet
        self.joined: dict[tuple, tuple] = {}  # a joined signature's one tuple, as its code
        self.lock = threading.Lock()


_EAGER = _EagerKernels()


def _function_key(fn: Callable, floats: bool = False) -> tuple[tuple, Any, tuple, list] | None:
    """A per-leaf function as part of an eager kernel's key: ``(key, closure_def,
    dynamic, dynamic_values)``, its closure's arrays and NumPy scalars (and, with
    ``floats``, Python floats) at positions ``dynamic`` of the flattened closure being
    the kernel's arguments; None where it cannot be cached (see
    ``COMPILE_EAGER_LEAF_FUNCTIONS``)."""
    if type(fn) is not types.FunctionType:
        # A bound method, functools.partial, ufunc or callable object: its code alone
        # (rebuilt below from code and closure) would lose the bound values.
        return None
    code = fn.__code__
    if code in _EAGER.op_by_op_codes:
        return None
    try:
        cell_contents = [cell.cell_contents for cell in fn.__closure__ or ()]
    except ValueError:  # a cell not yet assigned
        return None
    values, closure_def = jax.tree.flatten(cell_contents)
    # NumPy scalars too: arithmetic on a state restored to the host (jax.device_get,
    # pickle) gives them where the state on device gives arrays (-lr, count == 0); as
    # constants of the key they would compile a kernel per value, unlike those arrays.
    dynamic = tuple(
        i
        for i, x in enumerate(values)
        # (but 1 and -1: XLA compiles a product by those constants as the identity and a
        # negation, which keep subnormals and flip a NaN's sign where a product does not)
        if isinstance(x, _KERNEL_ARGUMENTS) or (floats and type(x) is float and abs(x) != 1)
    )
    static = tuple(_static_key(x) for i, x in enumerate(values) if i not in dynamic)
    key = (code, closure_def, dynamic, static, fn.__defaults__, fn.__kwdefaults__)
    return key, closure_def, dynamic, [values[i] for i in dynamic]


def _eager_kernel(fn: Callable[..., tuple], folds: tuple | None = None) -> Callable[..., list]:
    """A function of the per-leaf argument tuples and their ``_group_by_signature``
    returning ``fn``'s results in leaf order: through a cached compiled kernel whose
    closure arrays are arguments, or ``fn`` leaf by leaf when it cannot be cached (see
    ``COMPILE_EAGER_LEAF_FUNCTIONS``). ``folds``: ``(arity, before, after)`` of a chain's
    elementwise blocks run with ``fn`` (``_folded_fn``; ``FOLD_EAGER_SCALING``), each
    argument tuple holding their extra leaves after ``fn``'s ``arity`` arguments."""
    if folds is None:
        fns, layout, leaf_fn = [fn], None, fn
    else:
        arity, before, after = folds
        fns = [fn, *([before[0]] if before is not None else []), *(f for f, _ in after)]
        layout = (arity, None if before is None else before[1], tuple(n for _, n in after))
        leaf_fn = _folded_fn(fn, arity, before, after)
    op_by_op = lambda arg_tuples, groups=None: [leaf_fn(*args) for args in arg_tuples]  # noqa: E731
    # The folds' Python floats are arguments: a schedule's value, new at every update,
    # would otherwise make a new kernel key each time, and the block's kernel with the
    # folds would never compile (the block alone did). As a constant or an argument a
    # float multiplies or adds the same way (XLA merges no product of the folds' with
    # another: see updates_from_first_map)
    parts = [_function_key(f, floats=k > 0) for k, f in enumerate(fns)]
    if any(part is None for part in parts):
        return op_by_op
    code = fn.__code__
    if layout is not None:
        # the joined functions' budget of keys and kernels is their own, not the block's
        # (a third joined variant of one block was left op by op at its second call)
        joined = (code, tuple(f.__code__ for f in fns[1:]), layout)
        code = _EAGER.joined.setdefault(joined, joined)
    key = (code, *parts[0][0][1:], tuple(part[0] for part in parts[1:]), layout)
    try:
        kernel = _EAGER.kernels.get(key)
    except TypeError:  # an unhashable value in the closure
        return op_by_op
    if kernel is None:
        if key not in _EAGER.seen_once:
            with _EAGER.lock:
                _EAGER.seen_once.add(key)
                waiting = _EAGER.waiting.setdefault(code, {})
                waiting[key] = None
                if len(waiting) > _EAGER.max_keys_per_code:
                    forgotten = next(iter(waiting))
                    del waiting[forgotten]
                    _EAGER.seen_once.discard(forgotten)
            _EAGER.keys_per_code[code] = _EAGER.keys_per_code.get(code, 0) + 1
            return op_by_op
        if len(_EAGER.unused.get(code, ())) >= _EAGER.max_unused_kernels_per_code:
            return op_by_op  # compiled at the next call, once those kernels are reused
        # keep_unused: a leaf's output that reads no argument (the zeros of a frozen leaf)
        # would otherwise run on the default device alone: gathered there from a leaf
        # sharded over Auto mesh axes (a pmap output), an error on Explicit ones
        kernel = jax.jit(
            _leaves_kernel(fns, [part[1:3] for part in parts], layout),
            static_argnums=1,
            keep_unused=True,
        )
        with _EAGER.lock:
            _EAGER.seen_once.discard(key)
            _EAGER.waiting.get(code, {}).pop(key, None)
            same_code = [k for k in _EAGER.kernels if k[0] is code]
            if len(same_code) >= _EAGER.max_kernels_per_code:
                _drop_kernel(same_code[0])
            if len(_EAGER.kernels) >= _EAGER.max_kernels:
                _drop_kernel(next(iter(_EAGER.kernels)))
            _EAGER.kernels[key] = kernel
            _EAGER.unused.setdefault(code, set()).add(key)
    elif key in _EAGER.unused.get(code, ()):
        with _EAGER.lock:
            _EAGER.unused[code].discard(key)
    dynamic_values = tuple(value for part in parts for value in part[3])

    def run(arg_tuples, groups):
        if groups is None:  # an unhashable non-array argument
            return op_by_op(arg_tuples)
        results = [None] * len(arg_tuples)
        step = _EAGER.leaves_per_call
        try:
            for statics, indices in groups:
                only_arrays = all(s is None for s in statics)
                for start in range(0, len(indices), step):
                    chunk = indices[start : start + step]
                    if only_arrays:
                        arrays = [arg_tuples[i] for i in chunk]
                    else:
                        arrays = [_arrays(arg_tuples[i], statics) for i in chunk]
                    for i, result in zip(
                        chunk, kernel(dynamic_values, statics, arrays), strict=True
                    ):
                        results[i] = result
        except NEEDS_CONCRETE_VALUES:
            # Per-leaf code that reads values in Python (``float(x)``, ``if x > 0``) runs
            # eagerly but cannot be compiled: leave that code op by op from now on.
            with _EAGER.lock:
                _EAGER.kernels.pop(key, None)
                _EAGER.unused.get(code, set()).discard(key)
                _EAGER.op_by_op_codes.update(f.__code__ for f in fns)
            return op_by_op(arg_tuples)
        return results

    return run


def _drop_kernel(key: Hashable) -> None:
    """Removes a kernel from ``_EAGER`` (its caller holds ``_EAGER.lock``)."""
    del _EAGER.kernels[key]
    _EAGER.unused.get(key[0], set()).discard(key)


_KERNEL_ARGUMENTS = (jax.Array, np.ndarray, np.number, np.bool_)
"""The closure values an eager kernel takes as arguments; the others are part of its key."""


def _static_key(x: Any) -> Hashable:
    """A closure value as part of a kernel's key: with its type (``1``, ``1.0`` and
    ``True`` are equal in Python) and, for floats, its signs (``0.0 == -0.0``, and a
    kernel compiled with one would return the other's zeros)."""
    if isinstance(x, float | np.floating):
        return type(x), x, math.copysign(1.0, x)
    if isinstance(x, complex | np.complexfloating):
        return type(x), x, math.copysign(1.0, x.real), math.copysign(1.0, x.imag)
    return type(x), x


NEEDS_CONCRETE_VALUES = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)
"""The errors of traced code that reads array values in Python (``float(x)``, ``if x >
0``): code that runs eagerly but cannot compile. The eager kernels catch them and go
back to running such code op by op."""


def _group_by_signature(arg_tuples: list[tuple], own: int | None = None) -> Any:
    """Leaf indices grouped by the abstract values (shape, dtype, weak type) and
    shardings of their array arguments and the values of the others (static per-leaf
    flags), each group with its statics: for every argument, ``None`` for an array or
    ``(value, type)`` for a static value (the type keeps ``1`` and ``True`` apart in
    jit's cache). The groups come in the order of their first leaves. ``None`` if a
    static value cannot be hashed. With ``own``: the groups and whether the arguments
    after the first ``own`` split them (the groups of the first ``own`` arguments are
    fewer), ``(None, True)`` for ``None``."""
    # An array holds its abstract value and sharding, and the arrays of a tree share a
    # few of those objects (each output position of a kernel has its own sharding
    # object): they are read one argument position at a time in C loops (``map``) and
    # numbered by id, each distinct object hashed and compared by value once (Python
    # __hash__/__eq__), not once per leaf: per leaf in Python this cost ~2.5 ms of an
    # eager chain update on 1,000 leaves. The ids are those of live objects, so no two
    # can be equal: ``arg_tuples`` holds the arguments, and a concrete array holds its
    # aval and sharding. A position holding other values (static flags, NumPy arrays,
    # tracers, whose aval may be built anew at each read) is numbered by value per leaf.
    if not arg_tuples:
        return [] if own is None else ([], False)
    by_value: dict[Hashable, int] = {}  # avals, shardings, signatures -> their numbers
    columns = []  # for each argument position, a number per leaf
    own_columns = None
    for position, column in enumerate(zip(*arg_tuples, strict=True)):
        if position == own:
            own_columns = len(columns)
        try:
            parts = (list(map(_AVAL, column)), list(map(_SHARDING, column)))
        except AttributeError:  # not only concrete arrays
            try:
                numbers = [by_value.setdefault(_signature(x), len(by_value)) for x in column]
            except TypeError:  # an unhashable static value
                return None if own is None else (None, True)
            if len(set(numbers)) > 1:  # a position of one value splits no leaves
                columns.append(numbers)
            continue
        for objects in parts:
            ids = list(map(id, objects))
            distinct = dict(zip(ids, objects, strict=True))
            number = {i: by_value.setdefault(x, len(by_value)) for i, x in distinct.items()}
            if len(set(number.values())) > 1:
                columns.append(list(map(number.__getitem__, ids)))
    by_key: dict[tuple, list[int]] = {}
    keys = list(zip(*columns, strict=True))
    if not columns:  # one signature: no loop over the leaves in Python
        by_key[()] = list(range(len(arg_tuples)))
    elif len(set(keys)) == 1:
        by_key[keys[0]] = list(range(len(keys)))
    else:
        for i, key in enumerate(keys):
            by_key.setdefault(key, []).append(i)
    groups = []
    for indices in by_key.values():
        statics = tuple(None if _is_array(x) else (x, type(x)) for x in arg_tuples[indices[0]])
        groups.append((statics, indices))
    if own is None:
        return groups
    if own_columns is None:  # no argument after the first ``own``
        return groups, False
    return groups, len({key[:own_columns] for key in by_key}) != len(groups)


_AVAL = operator.attrgetter("aval")
_SHARDING = operator.attrgetter("sharding")


def _signature(x: Any) -> Hashable:
    if isinstance(x, jax.core.Tracer):  # a state traced while the updates are not
        return x.aval
    if isinstance(x, jax.Array):
        # the sharding too: one jitted call cannot take arrays committed to different
        # devices (leaves placed on devices by hand), and a kernel compiles per sharding
        return x.aval, x.sharding
    if isinstance(x, np.ndarray):
        return (np.ndarray, x.shape, x.dtype)
    return (type(x), x)


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _arrays(args: tuple, statics: tuple) -> tuple:
    return tuple(x for x, s in zip(args, statics, strict=True) if s is None)


def _leaves_kernel(fns: list[Callable], closures: list[tuple], layout: Any) -> Callable[..., list]:
    """``fns[0]`` (with the folds of ``layout``, ``_eager_kernel``) rebuilt as
    ``g(closure_arrays, statics, leaves) -> [fn(*args) for each leaf]``: the same code,
    each function's closure arrays (``closures``: its ``(closure_def, dynamic)``) taken
    in turn from the first argument and every other closure value kept (the arrays are
    not kept: the kernel outlives this call, and they may be large); ``leaves`` holds
    each leaf's array arguments and ``statics`` the others (``(value, type)``, or
    ``None`` where an array goes)."""
    rebuilders = [_rebuilder(f, *closure) for f, closure in zip(fns, closures, strict=True)]

    def kernel(dynamic_values, statics, leaves):
        rebuilt, start = [], 0
        for rebuild, (_, dynamic) in zip(rebuilders, closures, strict=True):
            rebuilt.append(rebuild(dynamic_values[start : start + len(dynamic)]))
            start += len(dynamic)
        leaf_fn = rebuilt[0]
        if layout is not None:
            arity, before_count, after_counts = layout
            folds = iter(rebuilt[1:])
            before = None if before_count is None else (next(folds), before_count)
            after = [(next(folds), count) for count in after_counts]
            leaf_fn = _folded_fn(leaf_fn, arity, before, after)
        results = []
        for arrays in leaves:
            arrays = iter(arrays)
            results.append(leaf_fn(*[next(arrays) if s is None else s[0] for s in statics]))
        return results

    return kernel


def _rebuilder(fn: Callable, closure_def: Any, dynamic: tuple[int, ...]) -> Callable:
    """A function of ``fn``'s closure arrays (at positions ``dynamic`` of its flattened
    closure) returning ``fn`` with them: its code, its other closure values."""
    values = jax.tree.leaves([cell.cell_contents for cell in fn.__closure__ or ()])
    values = [None if i in dynamic else value for i, value in enumerate(values)]
    code, globals_, name, defaults, kwdefaults = (
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__kwdefaults__
    )  # fmt: skip

    def rebuild(dynamic_values):
        merged = list(values)
        for position, value in zip(dynamic, dynamic_values, strict=True):
            merged[position] = value
        cells = tuple(types.CellType(c) for c in jax.tree.unflatten(closure_def, merged))
        rebuilt_fn = types.FunctionType(code, globals_, name, defaults, cells or None)
        rebuilt_fn.__kwdefaults__ = kwdefaults
        return rebuilt_fn

    return rebuild


def _check_leaves(tree: Any, arg_tuples: list[tuple], indices: list[int] | None = None) -> None:
    """Checks the leaves at ``indices`` (default: all): floating or complex updates, and
    the shape of the update in every other array argument."""
    # Attribute reads and a cached dtype test, not jnp.result_type/jnp.shape: this runs
    # on every leaf of every eager update, where those helpers cost ~10 us a leaf.
    for i in range(len(arg_tuples)) if indices is None else indices:
        leaf, *others = arg_tuples[i]
        if isinstance(leaf, jax.ShapeDtypeStruct):
            raise TypeError(
                f"the update at {leaf_path(tree, i) or 'the root'} is a jax.ShapeDtypeStruct, "
                f"a shape and dtype without values: jax.eval_shape(tx.update, updates, state, "
                f"params) gives the shapes of an update's results"
            )
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not _is_inexact(dtype):
            # a leaf without a dtype is a Python number (floats are arrays by now) or
            # not an array at all: check_inexact names it
            if dtype is not None or not isinstance(leaf, float | complex):
                check_inexact(tree, "the update")
        shape = _shape(leaf)
        for other in others:
            if isinstance(other, bool) or other is None:  # static per-leaf flags
                continue
            if isinstance(other, jax.ShapeDtypeStruct):
                raise TypeError(
                    f"the state (or the params) passed with the update at "
                    f"{leaf_path(tree, i) or 'the root'} is a {numerics.ABSTRACT_STATE}"
                )
            if _shape(other) != shape:
                path = leaf_path(tree, i)
                raise ValueError(
                    f"shape mismatch at {path or 'the root'}: the update has shape "
                    f"{list(shape)} but the state (or the params) passed with it has "
                    f"{list(_shape(other))}"
                )


def explicit_sharding(x: Any, *, replicated: bool = False) -> Any:
    """The ``NamedSharding`` that ``x``'s type carries where it is partitioned over a mesh
    with ``AxisType.Explicit`` axes (``jax.make_mesh``'s default), or, with
    ``replicated=True``, laid out on such a mesh at all; None for other arrays (Auto
    meshes, one device, JAX before 0.5.3), whose layout XLA's partitioner decides, and
    for what is not an array."""
    # JAX before 0.5.3 has no jax.typeof and no Explicit axes
    typeof = getattr(jax, "typeof", None)
    axis_type = getattr(jax.sharding, "AxisType", None)
    if typeof is None or axis_type is None:
        return None
    try:
        sharding = getattr(typeof(x), "sharding", None)
    except TypeError:  # not an array
        return None
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    if spec is None or mesh is None:
        return None
    if not replicated and all(axis is None for axis in spec):
        return None
    if axis_type.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return None
    return sharding


def _reshard(x: Any, sharding: Any) -> Any:
    reshard = getattr(jax.sharding, "reshard", None)
    if reshard is None:  # JAX 0.5.3 to 0.6.x keep it in jax.experimental.shard
        from jax.experimental.shard import reshard
    return reshard(x, sharding)


def gathered(x: Any) -> Any:
    """``x`` replicated where its type carries an explicit sharding
    (``explicit_sharding``), so that it can be raveled or concatenated with leaves
    sharded otherwise; on other arrays (Auto meshes, one device) ``x`` itself, which
    XLA's partitioner gathers where needed. Only for what must see a whole leaf as one
    vector (``flatten``, ``quantized_state`` where its blocks cross the shards)."""
    sharding = explicit_sharding(x)
    if sharding is None:
        return x
    # On the leaf's own mesh, not a bare P(): that needs a mesh context (jax.set_mesh)
    # and was a ValueError for a jitted or eager step outside one (a restored state).
    return _reshard(x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))


def laid_out_like(x: Any, like: Any) -> Any:
    """``x`` resharded to the layout of ``like`` where both lie on Explicit mesh axes and
    their layouts differ (a state leaf given back as it came in, whatever layout the
    update computed it in: the partitioning a user or Flax chose for it); else ``x``."""
    target = explicit_sharding(like, replicated=True)
    current = explicit_sharding(x, replicated=True)
    if target is None or current is None or current.spec == target.spec:
        return x
    return _reshard(x, target)


def _laid_out_in(x: Any, sharding: Any) -> Any:
    current = explicit_sharding(x, replicated=True)
    return x if current is None or current.spec == sharding.spec else _reshard(x, sharding)


def _joined_sharding(values: Sequence[Any]) -> Any:
    """The layout of ``values`` (arrays or their ``jax.eval_shape``, of one shape) as
    JAX lays out ``a + b``, where two or more lie on Explicit mesh axes in different
    layouts: every axis partitioned in one of them partitioned so (a replicated array
    is then sliced, with no communication); None where they agree, where fewer than two
    lie on such axes, and where two partition an axis otherwise (JAX's own error then)."""
    shardings = [explicit_sharding(x, replicated=True) for x in values]
    shardings = [s for s in shardings if s is not None]
    if len(shardings) < 2 or any(_has_reductions(s.spec) for s in shardings):
        return None
    ndim = len(_shape(values[0]))
    specs = [tuple(s.spec) + (None,) * (ndim - len(s.spec)) for s in shardings]
    if all(spec == specs[0] for spec in specs):
        return None
    meshes = {getattr(s.mesh, "abstract_mesh", s.mesh) for s in shardings}
    joined = []
    for entries in zip(*specs, strict=True):
        named = {entry for entry in entries if entry is not None}
        if len(named) > 1:
            return None
        joined.append(named.pop() if named else None)
    names = jax.tree.leaves(joined)
    if len(meshes) > 1 or len(names) != len(set(names)):
        return None
    return jax.sharding.NamedSharding(shardings[0].mesh, jax.sharding.PartitionSpec(*joined))


def _has_reductions(spec: Any) -> bool:
    # unreduced or reduced mesh axes, which a spec rebuilt from its entries would lose
    return bool(getattr(spec, "unreduced", None) or getattr(spec, "reduced", None))


def laid_out_alike(*arrays: Any) -> tuple:
    """``arrays`` (one leaf's parameter, gradient and state) laid out alike where they
    lie on Explicit mesh axes in different layouts (``_joined_sharding``: a replicated
    array sliced like a partitioned one), so that a select (``jnp.where``), which takes
    no mixed layouts, reads them as arithmetic does (``a + b`` mixes them: JAX gives
    the partitioned layout): a state laid out otherwise than its parameters (replicated,
    by a restore, or partitioned ZeRO-style where the parameters are replicated). Arrays
    of other shapes than the first, and everything on one device, are left as they are."""
    if jax.device_count() == 1 or len(arrays) < 2:
        return arrays
    shape = getattr(arrays[0], "shape", None)
    alike = [i for i, x in enumerate(arrays) if _is_array(x) and getattr(x, "shape", None) == shape]
    target = _joined_sharding([arrays[i] for i in alike]) if shape is not None else None
    if target is None:
        return arrays
    out = list(arrays)
    for i in alike:
        out[i] = _laid_out_in(arrays[i], target)
    return tuple(out)


def _layouts_aligned(columns: list[list]) -> list[list]:
    """``columns`` (a list per argument of a per-leaf function, an entry per leaf) with
    each leaf's arguments ``laid_out_alike``; ``columns`` itself where no argument lies
    on Explicit mesh axes (the common case, found from the few sharding objects of
    concrete arrays: on 1,000 leaves the alignment itself took ~8 ms an eager update on
    a host of several devices)."""
    if jax.device_count() == 1 or len(columns) < 2 or not _any_explicit(columns):
        return columns
    rows = list(zip(*columns, strict=True))
    aligned = [laid_out_alike(*row) for row in rows]
    if all(map(_same_objects, aligned, rows)):
        return columns
    return [list(column) for column in zip(*aligned, strict=True)]


def _same_objects(a: tuple, b: tuple) -> bool:
    return all(x is y for x, y in zip(a, b, strict=True))


def _any_explicit(columns: list[list]) -> bool:
    """Whether an array of ``columns`` lies on Explicit mesh axes: a concrete array's
    sharding object read in a C loop, each distinct one inspected once; a tracer's (its
    type holds it) read per array, at trace time."""
    for column in columns:
        try:
            objects = list(map(_SHARDING, column))
        except AttributeError:  # tracers, NumPy arrays, static flags
            if any(map(_on_explicit_axes, column)):
                return True
            continue
        if any(map(_explicit_axes, dict(zip(map(id, objects), objects, strict=True)).values())):
            return True
    return False


def _on_explicit_axes(x: Any) -> bool:
    if isinstance(x, jax.core.Tracer):
        return explicit_sharding(x, replicated=True) is not None
    return isinstance(x, jax.Array) and _explicit_axes(x.sharding)


def _explicit_axes(sharding: Any) -> bool:
    axis_type = getattr(jax.sharding, "AxisType", None)
    mesh = getattr(sharding, "mesh", None)
    return axis_type is not None and axis_type.Explicit in tuple(getattr(mesh, "axis_types", ()))


def cond(predicate: Any, true_fun: Callable[[], Any], false_fun: Callable[[], Any]) -> Any:
    """``jax.lax.cond(predicate, true_fun, false_fun)`` of two functions of no arguments,
    whose results may lay out a leaf otherwise (a skipped step passes its state through
    as it came in, the other branch gives it as the step computes it: a state laid out
    otherwise than its parameters on Explicit mesh axes): each such leaf comes from both
    branches in the layout that joins theirs (``_joined_sharding``; ``lax.cond`` compares
    the branches' types, shardings included, a TypeError otherwise). On one device
    ``jax.lax.cond`` itself."""
    if jax.device_count() == 1:
        return jax.lax.cond(predicate, true_fun, false_fun)
    true_shapes, treedef = jax.tree.flatten(jax.eval_shape(true_fun))
    false_shapes, false_treedef = jax.tree.flatten(jax.eval_shape(false_fun))
    if false_treedef != treedef:  # lax.cond's own error, which names both structures
        return jax.lax.cond(predicate, true_fun, false_fun)
    targets = [_joined_sharding(pair) for pair in zip(true_shapes, false_shapes, strict=True)]
    if all(target is None for target in targets):
        return jax.lax.cond(predicate, true_fun, false_fun)

    def laid_out(fun: Callable[[], Any]) -> Callable[[], Any]:
        def branch():
            leaves = treedef.flatten_up_to(fun())
            return treedef.unflatten(
                [
                    x if t is None else _laid_out_in(x, t)
                    for x, t in zip(leaves, targets, strict=True)
                ]
            )

        return branch

    return jax.lax.cond(predicate, laid_out(true_fun), laid_out(false_fun))


def leaf_path(tree: Any, index: int) -> str:
    """The printed path of the ``index``-th leaf of ``tree`` (``jax.tree.leaves`` order,
    which skips ``None``)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.keystr(flat[index][0])


def varying_manual_axes(x: Any) -> frozenset:
    """The ``shard_map`` axes over which ``x`` varies (its value differs between the
    shards: a slice of a parameter sharded over that axis); empty outside ``shard_map``,
    for a replicated value, and under ``check_vma=False``, which types nothing. The type
    says it (``jax.typeof(x).manual_axis_type.varying``; ``.vma`` in older JAX)."""
    aval = jax.typeof(x) if hasattr(jax, "typeof") else None
    manual = getattr(aval, "manual_axis_type", None)
    varying = getattr(manual, "varying", None) if manual is not None else getattr(aval, "vma", None)
    return frozenset(varying or ())


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else jnp.shape(x)


MASK_LEAVES = (bool, np.bool_)
"""The leaves of a mask tree (a callable whose leaves are all these is a tree); a 0-d
boolean array (``is_bool_scalar_array``) is one too."""


def is_bool_scalar_array(leaf: Any) -> bool:
    """Whether ``leaf`` is a 0-d boolean array (JAX or NumPy, traced or not), as
    ``jax.tree.map(lambda p: jnp.asarray(p.ndim > 1), params)`` gives."""
    dtype, shape = getattr(leaf, "dtype", None), getattr(leaf, "shape", None)
    if isinstance(leaf, type) or dtype is None or shape is None:
        return False
    try:
        return tuple(shape) == () and np.dtype(dtype) == np.bool_
    except TypeError:
        return False


def mask_flags(mask_tree: Any, treedef: Any = None) -> list[bool]:
    """The leaves of a mask tree as Python bools, in ``jax.tree.leaves`` order (in
    ``treedef.flatten_up_to`` order if given).

    A leaf is a Python or NumPy bool or a concrete 0-d boolean array (JAX or NumPy), as
    ``optax.masked`` takes them (Optax reads each with ``if``); a traced bool or any other
    leaf is a TypeError naming its path: a mask decides which leaves have state, so it
    must be known when the step is traced.
    """
    leaves = jax.tree.leaves(mask_tree) if treedef is None else treedef.flatten_up_to(mask_tree)
    flags = []
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, MASK_LEAVES) or (
            is_bool_scalar_array(leaf) and not isinstance(leaf, jax.core.Tracer)
        ):
            flags.append(bool(leaf))
            continue
        # the path only for the error: naming every leaf took 1.2 ms per eager update of
        # a 1,000-leaf mask
        where = _mask_leaf_place(mask_tree, len(leaves), index)
        if isinstance(leaf, jax.core.Tracer):
            raise TypeError(
                f"mask leaf at {where} is a traced value ({leaf.aval}): a mask decides the "
                f"state's structure, so it must be static; compute it as Python bools from "
                f"the params' shapes or paths (p.ndim > 1), not from their values, and not "
                f"as arrays, which jit traces even when made from constants "
                f"(jnp.asarray(p.ndim > 1))"
            )
        raise TypeError(
            f"mask leaves must be bools (Python or NumPy bools, or 0-d boolean arrays; a "
            f"mask decides the state's structure, so it is static), got {leaf!r} at {where}"
        )
    return flags


def _mask_leaf_place(mask_tree: Any, count: int, index: int) -> str:
    """The path of the ``index``-th of ``count`` mask leaves (its number where the leaves
    were taken up to a treedef that does not match the mask's own)."""
    named = jax.tree_util.tree_flatten_with_path(mask_tree)[0]
    if len(named) == count:
        return jax.tree_util.keystr(named[index][0]) or "the root"
    return f"leaf {index}"


LABEL_LEAVES = (str, int, np.integer)
"""The leaves of a label tree (``partition``'s labels)."""


def is_function_of_params(value: Any, leaf_types: tuple[type, ...]) -> bool:
    """Whether a mask or labels argument is a function of the params (else a tree).

    A callable is a function unless it is a pytree whose leaves are all ``leaf_types``:
    an Equinox module defines ``__call__``, so the mask
    ``jax.tree.map(lambda p: p.ndim > 1, model)`` is callable and still a tree of bools.
    ``optax.masked`` reads that mask as a tree too, but draws the line elsewhere: it
    calls a callable only when its leaves are all callable, so a mask function with data
    fields (an Equinox module with an ``int`` field and a ``__call__``) is a tree there
    and a function here. A callable pytree with no leaves, or with leaves that no
    mask or label tree may hold (float arrays, say), is called here. For masks
    (``leaf_types`` holding ``bool``), a 0-d boolean array is a tree leaf too, as
    ``optax.masked`` reads it.
    """
    if not callable(value):
        return False
    leaves = jax.tree.leaves(value)
    bools = bool in leaf_types
    return not (
        leaves
        and all(
            isinstance(leaf, leaf_types) or (bools and is_bool_scalar_array(leaf))
            for leaf in leaves
        )
    )


@functools.cache
def _is_inexact(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def global_norm(tree: Any) -> jax.Array:
    """The l2 norm of all leaves together, accumulated in at least float32: each leaf's
    sum of squares, then their sum in the leaves' order (``_sum_in_order``). Eagerly,
    from the second call on, compiled kernels give each call's sums as one vector and
    one more adds them in that order (``_eager_sum_of_squares``)."""
    # map_unzip's traversal without building the tree of sums (one flattening, not three)
    leaves = jax.tree.leaves(tree)
    total = _eager_sum_of_squares(tree, leaves)
    if total is not None:
        return jnp.sqrt(total)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    squares = _run_leaves(_leaf_sum_of_squares, tree, [(x,) for x in _as_arrays(leaves)])
    return jnp.sqrt(_sum_in_order(squares))


def _leaf_sum_of_squares(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    dtype = numerics.compute_dtype(numerics.real_dtype(x.dtype))
    return jnp.sum(numerics.abs_sq(x.astype(numerics.compute_dtype(x.dtype))).astype(dtype))


def _eager_sum_of_squares(tree: Any, leaves: list) -> jax.Array | None:
    """``global_norm``'s sum of squares of an eager update's leaves
    (``COMPILE_EAGER_LEAF_FUNCTIONS``), or None where it takes the path of traced or
    first calls (``_map_flat`` and ``_sum_in_order``). The leaves' sums come as one vector
    per kernel call (``_EagerKernels.leaves_per_call`` leaves of one signature), not as
    one scalar array each (~7 us an output on XLA:CPU), and one call adds them in the
    leaves' order: the same sums of the same squares, added in the same order."""
    if not (COMPILE_EAGER_LEAF_FUNCTIONS and len(leaves) > 2):
        return None
    # concrete arrays only (a tracer's type is no jax.Array subclass, though it is an
    # instance), their types read in a C loop
    if not all(issubclass(kind, jax.Array) for kind in set(map(type, leaves))):
        return None
    key = ("global_norm",)
    if key not in _EAGER.seen_once:  # compiled at the second call, as the kernels are
        _EAGER.seen_once.add(key)
        return None
    arg_tuples = [(x,) for x in leaves]
    groups = _group_by_signature(arg_tuples)
    _check_leaves(tree, arg_tuples, [indices[0] for _, indices in groups])
    vectors, positions, step = [], [], _EAGER.leaves_per_call
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


def _sum_in_order(values: list, dtype: Any = None) -> jax.Array:
    """``values[0] + values[1] + ...`` left to right (as Optax sums a global norm), in
    ``dtype`` (default: their common dtype), each value cast to it before its addition.
    Eagerly (``COMPILE_EAGER_LEAF_FUNCTIONS``) the additions run in compiled chunks of
    ``_EagerKernels.leaves_per_call`` values from the second call on: one dispatch per
    value costs ~10 us, and one jitted sum of 1,000 scalars ~1.4 s to compile. The
    additions are the same, in the same order, so the result is too."""
    if dtype is None:
        dtype = numerics.result_type(*{v.aval: v for v in values}.values())  # one of each kind
    eager = COMPILE_EAGER_LEAF_FUNCTIONS and not any(
        isinstance(v, jax.core.Tracer) or not isinstance(v, jax.Array) for v in values
    )
    kernel = None
    if eager and len(values) > 2:
        key = ("_sum_in_order",)
        kernel = _EAGER.kernels.get(key)
        if kernel is None and key in _EAGER.seen_once:  # compiled at the second call
            kernel = jax.jit(_add_in_order)
            with _EAGER.lock:
                _EAGER.kernels[key] = kernel
        _EAGER.seen_once.add(key)
    if kernel is None:
        return sum(v.astype(dtype) for v in values)
    total = jnp.zeros([], dtype)
    step = _EAGER.leaves_per_call
    for start in range(0, len(values), step):
        total = kernel(total, values[start : start + step])
    return total


def _add_in_order(total: jax.Array, values: list) -> jax.Array:
    for value in values:
        total = total + value.astype(total.dtype)
    return total


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
        dtype = leaf_dtype(y)
        return zero if zero.dtype == dtype else zero.astype(dtype)

    return jax.tree.map(in_dtype, zeros, like)


def _zeros_like(x: jax.Array) -> jax.Array:
    return jnp.zeros_like(x)


def _named_children(node: Any) -> list[tuple[str, Any, Any]] | None:
    """``(path piece, key, child)`` for a NamedTuple, dict, list or tuple; None for a leaf.

    Only NamedTuple fields and dict keys are names ``tree_get`` can find; list and tuple
    positions are walked through (a chain's state is a tuple) but are not names.
    """
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return [(f".{name}", name, getattr(node, name)) for name in node._fields]
    if isinstance(node, dict):
        return [(f"[{key!r}]", key, value) for key, value in node.items()]
    if isinstance(node, list | tuple):
        return [(f"[{index}]", None, value) for index, value in enumerate(node)]
    return None


def check_path(path: Any) -> None:
    """``path=`` is a string or None: a TypeError naming it otherwise."""
    if path is not None and not isinstance(path, str):
        hint = (
            f' (a position is written as a string: path="{path}")'
            if isinstance(path, int) and not isinstance(path, bool)
            else ""
        )
        raise TypeError(
            f'path must be a string, such as "[\'decay\']", "0" or "inner_state", or '
            f"None, got {path!r}{hint}"
        )


def path_matches(pieces: Sequence[str], path: str | None) -> bool:
    """Whether a state path (its pieces: ``(".inner_states", "['decay']", ".mu")``) is
    one that ``path=`` picks: consecutive whole pieces of it, as printed
    (``"['decay']"``, ``"['decay'].inner_state"``, ``"inner_state[0].count"``; a
    leading field needs no dot), or a key name (``"decay"``; ``"0"`` for a position in
    a chain or an integer key); ``""`` is the root. Never a part of a name: ``"a"`` does
    not pick ``.inner_states``."""
    check_path(path)
    if path is None:
        return True
    if path == "":  # the root only (a state that is itself the injected transform's)
        return not pieces
    if path.startswith(("[", ".")):
        candidates = [path]
    else:  # a name: a field, a string key, or a position / integer key ("0")
        candidates = [f".{path}", f"[{path!r}]"] + ([f"[{path}]"] if path.isdigit() else [])
    for start in range(len(pieces)):
        joined = ""
        for piece in pieces[start:]:
            joined += piece
            if joined in candidates:
                return True
            if len(joined) >= max(map(len, candidates)):
                break
    return False


def _find_named(tree: Any, name: str, path: str | None) -> list[tuple[str, ...]]:
    """The paths (as pieces: ``(".inner_state", "[0]", ".mu")``) of every ``name`` field."""
    found = []

    def visit(prefix: tuple[str, ...], node: Any) -> None:
        children = _named_children(node)
        if children is None:
            return
        for piece, key, child in children:
            here = (*prefix, piece)
            if key == name and path_matches(here, path):
                found.append(here)
            visit(here, child)

    visit((), tree)
    return found


def _replace_at(node: Any, pieces: tuple[str, ...], value: Any) -> Any:
    if not pieces:
        return value
    piece, rest = pieces[0], pieces[1:]
    for child_piece, key, child in _named_children(node):
        if child_piece == piece:
            new_child = _replace_at(child, rest, value)
            if isinstance(node, tuple) and hasattr(node, "_fields"):
                return node._replace(**{key: new_child})
            if isinstance(node, dict):
                return {**node, key: new_child}
            index = int(piece[1:-1])
            items = list(node)
            items[index] = new_child
            return type(node)(items)
    raise AssertionError(f"path piece {piece} vanished")  # _find_named produced it


def _lookup(tree: Any, name: str, path: str | None) -> tuple[str, ...]:
    check_path(path)
    if path == "":  # the root's: the one nearest the top (a nested injection's outer one)
        found = _find_named(tree, name, None)
        nearest = min((len(pieces) for pieces in found), default=0)
        found = [pieces for pieces in found if len(pieces) == nearest]
    else:
        found = _find_named(tree, name, path)
    where = f" under the path {path!r}" if path is not None else ""
    if not found:
        raise KeyError(f"no field or key named {name!r}{where} in this tree")
    if len(found) > 1:
        raise ValueError(
            f"{name!r} is ambiguous{where}: found at "
            f"{', '.join(''.join(pieces) for pieces in found)}; pass path= with a key of "
            f"the one you mean"
        )
    return found[0]


def tree_get(tree: Any, name: str, *, path: str | None = None) -> Any:
    """The value of the one NamedTuple field or dict key called ``name`` inside ``tree``.

    Searches nested states (chains, named chains, wrappers, injected hyperparameters) for
    ``name`` (``"count"``, ``"mu"``, ``"learning_rate"``...). Raises KeyError when no
    field has that name and ValueError, listing the paths, when several do; ``path``
    picks one: a key or field name on the way (``"decay"``, ``"0"``) or whole pieces of
    the printed path (``"[0]"``, ``"['decay']"``), never a part of a name; ``""`` picks
    the one nearest the root (the outer one of a nested injection).

    Args:
        tree: any tree (an optimizer state, usually).
        name: a NamedTuple field name or dict key; list and tuple positions are not
            names.
        path: None (search everywhere), ``""`` (the nearest the root), or a string as
            above; another type is a TypeError.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.chain(gtx.scale_by_adam(), gtx.scale(-0.1))
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> _, state = tx.update({"w": jnp.array([1.0, -2.0])}, state)
        >>> [round(x, 6) for x in gtx.tree_get(state, "mu")["w"].tolist()]  # (1 - b1) g
        [0.1, -0.2]

    Reference: ``optax.tree_utils.tree_get``, with differences: a missing name is a
    KeyError (Optax returns ``default``), several are a ValueError (Optax: KeyError),
    ``path`` replaces Optax's ``filtering`` function, and a NamedTuple's class name is
    not a name here.
    """
    node = tree
    for piece in _lookup(tree, name, path):
        node = next(child for p, _, child in _named_children(node) if p == piece)
    return node


def tree_set(tree: Any, *, path: str | None = None, **values: Any) -> Any:
    """A copy of ``tree`` with the named fields (found as ``tree_get`` finds them) replaced.

    Each new value must have the structure and leaf shapes of the old one; array leaves
    are cast to the old leaf's dtype, so a state keeps its structure and dtypes (a
    jit-compiled step does not recompile), and a caller's array already of that dtype
    is copied, so that the state holds arrays of its own (a jitted step donating the
    state deletes them, and refuses one held twice). Errors as ``tree_get``. In Flax's
    ``nnx.Optimizer.opt_state``, which holds the arrays in ``OptArray`` variables, the
    new arrays go into those variables (give arrays, not variables), so
    ``optimizer.opt_state = gtx.tree_set(optimizer.opt_state, ...)`` keeps its graph.

    Args:
        tree: any tree (an optimizer state, usually).
        path: picks among several fields of one name, as in ``tree_get``.
        **values: name=new value; a different structure or leaf shape is a ValueError.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> state = gtx.scale_by_adam().init(jnp.zeros(2))
        >>> state = gtx.tree_set(state, count=jnp.asarray(10))
        >>> int(state.count), state.count.dtype
        (10, dtype('int32'))

    Reference: ``optax.tree_utils.tree_set``, with differences: the new values are
    checked and cast to the old dtypes, or copied (Optax stores them as given:
    ``count=2.`` becomes a Python float), several fields of one name are a ValueError,
    and ``path`` replaces Optax's ``filtering``.
    """
    for name, value in values.items():
        pieces = _lookup(tree, name, path)
        found = "".join(pieces)
        held = tree_get(tree, name, path=path)
        # nnx.Optimizer's opt_state keeps the arrays in Variables: the new value is
        # checked against their arrays and put into them (a bare array in their place
        # changes the graph, and its next update cannot write into a NamedTuple)
        old = jax.tree.map(check.flax_variable_value, held, is_leaf=check.is_flax_variable)
        check_same_structure(old, value, f"the current {name!r}", f"the new {name!r}")

        def conform(old_leaf, new_leaf, found=found):
            if not hasattr(old_leaf, "dtype"):
                return new_leaf
            given, new_leaf = new_leaf, jnp.asarray(new_leaf)
            if new_leaf.shape != jnp.shape(old_leaf):
                raise ValueError(
                    f"tree_set: {found} has shape {list(jnp.shape(old_leaf))}, the new value "
                    f"has shape {list(new_leaf.shape)}"
                )
            # A Python number becomes a weakly typed array; a jitted step keys its cache on
            # weak types too, so it is made strong like the leaf it replaces (astype).
            old_weak = getattr(old_leaf, "weak_type", False)
            new_weak = getattr(new_leaf, "weak_type", False)  # typed PRNG keys have none
            if new_leaf.dtype == old_leaf.dtype and (old_weak or not new_weak):
                # an array of the state's own, not the caller's (a donated step deletes it)
                return own_array(new_leaf, given)
            if jax.dtypes.issubdtype(old_leaf.dtype, jax.dtypes.extended):
                # a typed PRNG key casts to nothing: the new key must be of its kind
                raise TypeError(
                    f"tree_set: {found} is a {old_leaf.dtype} array, the new value is "
                    f"{new_leaf.dtype}: give a key of the same kind (jax.random.key)"
                )
            if jax.dtypes.issubdtype(new_leaf.dtype, jax.dtypes.extended):
                raise TypeError(
                    f"tree_set: {found} is a {old_leaf.dtype} array, the new value a "
                    f"{new_leaf.dtype} key, which casts to no other dtype: give a "
                    f"{old_leaf.dtype} value (a raw key is jax.random.key_data of the key)"
                )
            return new_leaf.astype(old_leaf.dtype)

        new = in_variables_of(held, jax.tree.map(conform, old, value))
        tree = _replace_at(tree, pieces, new)
    return tree


def in_variables_of(old: Any, new: Any) -> Any:
    """``new`` with each array put in the Flax ``nnx.Variable`` that holds its place in
    ``old`` (``new`` itself where ``old`` holds none): ``nnx.Optimizer`` keeps the state's
    arrays in ``OptArray`` variables, and a bare array in their place changes the graph
    (its next update cannot write into a NamedTuple: 'Cannot set key ... on immutable
    node'). A Variable in ``new`` (an ``init`` given the params' Variables) gives its
    array."""
    if not any(map(check.is_flax_variable, jax.tree.leaves(old, is_leaf=check.is_flax_variable))):
        return new

    def put(old_leaf: Any, new_leaf: Any) -> Any:
        if not check.is_flax_variable(old_leaf):
            return new_leaf
        return old_leaf.replace(check.flax_variable_value(new_leaf))

    return jax.tree.map(put, old, new, is_leaf=check.is_flax_variable)
