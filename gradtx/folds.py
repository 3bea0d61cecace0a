"""Eager folds: an un-jitted ``chain`` runs its elementwise blocks (a learning rate, weight
decay, a clipping's factor) inside the per-leaf kernels of the block with state next to
them (``tree.FOLD_EAGER_SCALING``), one output array a leaf and a block fewer. The marks
here say which blocks may: ``updates_from_first_map`` for a block whose per-leaf map
gives its updates, ``elementwise`` (and ``scaling``) for the blocks that fold into it."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import operator
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import numerics


class LeafFold(NamedTuple):
    """An elementwise block's update as a per-leaf function (``elementwise``).

    Attributes:
        fn: ``fn(u, *leaves) -> u``, the block's update of one leaf ``u`` given the
            matching leaves of ``trees`` (array or static flag).
        trees: trees with the updates' structure that ``fn`` reads (the params, a mask).
        names: what ``trees`` are, for the error that names one not matching the
            updates (``tree.map_unzip``'s ``names``).
        state: the state the block's update returns.
    """

    fn: Callable[..., Any]
    trees: tuple = ()
    names: tuple = ()
    state: Any = None


class _FoldRequest:
    """A chain's request to the first ``tree.map_unzip(..., updates_first=True)`` of a block
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


def take_request(updates: Any) -> _FoldRequest | None:
    """The chain's pending request (``folded_into_first_map``) where it is for ``updates``
    (that very tree) and no map has answered it yet, now answered; else None."""
    request = _FOLD_REQUEST.get()
    if request is None or request.answered or request.updates is not updates:
        return None
    request.answered = True
    return request


@contextlib.contextmanager
def folded_into_first_map(updates: Any, before: LeafFold | None, after: list[LeafFold]):
    """Asks the first ``tree.map_unzip(updates, ..., updates_first=True)`` run inside the block
    to apply ``before`` to each leaf of ``updates`` before its function and each of
    ``after`` to its first output (``tree.FOLD_EAGER_SCALING``); yields the request, whose
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
    """Whether an un-jitted chain may fold blocks over ``updates`` (``tree.FOLD_EAGER_SCALING``):
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
    ``tree.map_unzip(updates, ..., updates_first=True)`` it always makes (once; their
    structure and dtypes it may read anywhere) and returns, leaf for leaf, that map's
    first output as its updates: a chain may then run the elementwise blocks next to it
    inside that map's eager kernels (``tree.FOLD_EAGER_SCALING``). The update must not change
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
            not; nor does the NAdam schedule's sum of two products, where LLVM's choice
            of the one to contract into a fused multiply-add changed with the sum
            joined). False is safe.
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
    ``add_decayed_weights``' sum), of the block after it (``tree.FOLD_EAGER_SCALING``).
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


_HALF_PRECISION = frozenset(map(jnp.dtype, ("bfloat16", "float16")))


def any_half(flat: list[list]) -> bool:
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


def joins_alike(arg_tuples: list[tuple], functions: list[Callable]) -> bool:
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


def fold_tree_name(fold: LeafFold, i: int) -> str:
    return fold.names[i] if i < len(fold.names) else "the state"


def folded_fn(fn: Callable, arity: int, before: Any, after: Sequence) -> Callable:
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
