"""The transform protocol: ``GradientTransformation``, chains and ``apply_updates``.

A gradient transformation is a pair of pure functions, ``init(params) -> state`` and
``update(updates, state, params=None, **extra) -> (updates, state)``. It is structurally
the same as Optax's ``GradientTransformation`` on purpose: transforms of either library
sit inside the other's ``chain``, and Flax accepts a gradtx optimizer as ``tx``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import folds, numerics, tree, tree_checks

Params = Any
"""A pytree of arrays (``None`` leaves allowed) holding the model's parameters."""
Updates = Any
"""A pytree with the structure of the parameters: gradients going in, steps coming out."""
OptState = Any
"""A pytree of arrays: the state of a transform. Its structure never changes."""
Schedule = Callable[[Any], Any]
"""A pure function ``step -> value``; ``step`` is an int or a traced int32 array."""
ScalarOrSchedule = float | jax.Array | Schedule


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra: Any
    ) -> tuple[Updates, OptState]: ...


class TransformLike(Protocol):
    """What ``chain``, ``named_chain`` and the wrappers accept as a transform: any object
    with ``init`` and ``update`` (a gradtx ``GradientTransformation``, or an Optax one,
    whose plain ``update`` takes no ``**extra``: it is called without them).

    A structural type: Optax's ``GradientTransformation`` is another ``NamedTuple``
    class, which a type checker would not take where gradtx's is annotated.
    """

    @property
    def init(self) -> Callable[..., Any]: ...

    @property
    def update(self) -> Callable[..., Any]: ...


class GradientTransformation(NamedTuple):
    """A gradient transformation: the pair ``(init, update)``.

    ``init(params)`` builds the state from concrete arrays, ``jax.ShapeDtypeStruct``s or
    Flax ``nnx.State`` trees. ``update(updates, state, params=None, **extra)`` returns the
    transformed updates and the new state; extra keyword arguments (``value=loss`` for a
    plateau schedule, say) are passed on to children and ignored where unused.

    Attributes:
        init: ``init(params) -> state``; ``params`` is a tree of floating or complex
            arrays (or ``jax.ShapeDtypeStruct``s), the state a tree of arrays.
        update: ``update(updates, state, params=None, **extra) -> (updates, state)``;
            ``updates`` has the structure of the params, ``state`` is what ``init`` or
            the last ``update`` returned (same structure and dtypes), ``params`` the
            current params (required by some transforms, a ValueError without them).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale(0.5)
        >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
        >>> updates["w"].tolist()
        [0.5, 0.5]
    """

    init: TransformInitFn
    update: TransformUpdateFn


class EmptyState(NamedTuple):
    """The state of a transform that keeps none."""


def _accepts_extra_args(update: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _update_with_extra_args(transform: Any, argument: str | None = None) -> TransformUpdateFn:
    """``transform.update``, made to accept (and drop) extra keyword arguments if it does not.

    Optax's plain ``GradientTransformation.update`` takes no ``**extra``; this lets one sit
    in a gradtx chain next to a transform that needs ``value=loss``. ``argument`` names
    the argument ``transform`` was given as (a wrapper's ``inner``); without it the error
    is worded for ``chain``.
    """
    if not (hasattr(transform, "init") and hasattr(transform, "update")):
        if argument is not None:
            raise TypeError(
                f"{argument} must be a gradient transformation (an object with init and "
                f"update), got {transform!r}"
            )
        raise TypeError(
            f"chain expects gradient transformations (objects with init and update), "
            f"got {transform!r}"
        )
    update = transform.update
    if _accepts_extra_args(update):
        return update

    def update_dropping_extra(updates, state, params=None, **extra):
        del extra
        return update(updates, state, params)

    return update_dropping_extra


def identity() -> GradientTransformation:
    """The transform that returns its updates unchanged and keeps no state.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.identity()
        >>> tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))[0].tolist()
        [1.0, 1.0]
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del params, extra
        return updates, state

    return GradientTransformation(init, update)


def chain(*transforms: TransformLike) -> GradientTransformation:
    """Applies transforms one after another; the state is the tuple of their states.

    ``chain(a, b).update(g, (sa, sb))`` computes ``u, sa = a.update(g, sa)`` then
    ``u, sb = b.update(u, sb)``. Extra keyword arguments reach every transform that
    accepts them. Optax transforms may be chained too. Un-jitted, the elementwise blocks
    next to a block with state that allows it (a learning rate, a schedule's value and
    weight decay after it; weight decay before it) run inside
    that block's eager kernels: the same numbers, a pass over the leaves fewer for each
    (``tree.FOLD_EAGER_SCALING``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.chain(gtx.clip(1.0), gtx.scale(-0.1))
        >>> updates, _ = tx.update(jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 6) for u in updates]
        [-0.1, 0.05]
    """
    update_fns = tuple(_update_with_extra_args(t) for t in transforms)
    blocks = _foldable_blocks(transforms)

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None, **extra):
        if not isinstance(state, tuple) or len(state) != len(update_fns):
            raise ValueError(
                f"chain of {len(update_fns)} transforms got a state that is not a tuple of "
                f"{len(update_fns)} states: {type(state).__name__} (update takes the state "
                f"init returned: were state and params swapped?)"
            )
        return _update_in_turn(update_fns, blocks, updates, list(state), params, extra)

    return GradientTransformation(init, update)


def _foldable_blocks(transforms: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """For each transform of a chain: its ``folds.first_map_of`` (whether its updates are
    its first map's first output, and whether that output may be a product) and its
    ``folds.leaf_fold_of`` (if it is an elementwise block), each None where it has none."""
    first_maps = [folds.first_map_of(t.update) for t in transforms]
    return first_maps, [folds.leaf_fold_of(t.update) for t in transforms]


def _update_in_turn(update_fns, blocks, updates, states, params, extra):
    """The updates of ``update_fns`` applied one after another, and their new states in a
    list; eagerly, elementwise blocks next to a block of ``_foldable_blocks`` run inside
    its per-leaf kernels (``_update_folded``)."""
    i = 0
    while i < len(update_fns):
        folded = tree.FOLD_EAGER_SCALING and _update_folded(
            i, update_fns, blocks, updates, states, params, extra
        )
        if folded:
            updates, i = folded
        else:
            updates, states[i] = update_fns[i](updates, states[i], params, **extra)
            i += 1
    return updates, tuple(states)


def _update_folded(i, update_fns, blocks, updates, states, params, extra):
    """Un-jitted, on float32, float64 or complex updates (``tree.FOLD_EAGER_SCALING``):
    the block at ``i`` (or right after an elementwise block at ``i``) whose updates are
    its first map's first output, run with that elementwise block before it and the
    elementwise blocks after it inside that map (``folds.folded_into_first_map``): their
    per-leaf functions come from their states first (a global norm, a schedule's
    value). Two functions join only where XLA computes them as their own passes do
    (see ``tree.updates_from_first_map``): a product is read by no sum, and by no other
    product but the scaling right after the block, or the block after a product by a
    scalar computed at the update (clipping's) where it reads its updates in products
    only. Returns the updates after the last
    block run and the index after it, the blocks' new states set in ``states``; None
    where nothing folds (the block at ``i`` then runs as it is)."""
    first_maps, leaf_folds = blocks
    n = len(update_fns)
    next_has_map = i + 1 < n and first_maps[i + 1] is not None
    if first_maps[i] is None and not (leaf_folds[i] is not None and next_has_map):
        return None
    kind = folds.fold_kind(updates)
    if kind is None:
        return None
    before, block = None, i
    # before the block only a function that returns no product (weight decay's sum)
    # where the block takes a sum, or a product by a scalar computed at the update
    # (clipping's factor) where the block takes such a product
    # (``tree.updates_from_first_map``)
    if leaf_folds[i] is not None and next_has_map and kind == "real":
        _, returns_product, _, value_scaling = leaf_folds[i]
        _, takes_sum, takes_product = first_maps[i + 1]
        if (takes_sum and not returns_product) or (takes_product and value_scaling):
            before, block = i, i + 1
    if first_maps[block] is None:
        return None
    after = block + 1
    while after < n and leaf_folds[after] is not None:
        after += 1
    if before is None and after == block + 1:
        return None
    before_fold = None
    if before is not None:
        before_fold = leaf_folds[before][0](updates, states[before], params, extra, True)
        # a tree not like the updates: the block before says so in its own pass, first
        if before_fold is None or not folds.all_like(updates, before_fold.trees):
            return None
    after_folds = []
    product = first_maps[block][0]
    for j in range(block + 1, after):
        leaf_fold, returns_product, scaling, _ = leaf_folds[j]
        if product and not (scaling and j == block + 1):
            break
        # the updates stand in for the ones the block will return: same structure, dtypes
        fold = leaf_fold(updates, states[j], params, extra, False)
        if fold is None:
            break
        after_folds.append(fold)
        product = returns_product
    if before_fold is None and not after_folds:
        return None
    with folds.folded_into_first_map(updates, before_fold, after_folds) as request:
        new_updates, block_state = update_fns[block](updates, states[block], params, **extra)
    if not request.answered:  # no map over its updates: the blocks run one by one
        return None
    states[block] = block_state
    if before_fold is not None:
        states[before] = before_fold.state
    for j, fold in enumerate(after_folds, start=block + 1):
        states[j] = fold.state
    return new_updates, block + 1 + len(after_folds)


def named_chain(*transforms: tuple[str, TransformLike]) -> GradientTransformation:
    """A chain whose state is a dict keyed by the name given to each transform.

    Names make ablations and introspection readable (``state["adam"].mu``) and keep a
    checkpoint meaningful when a transform is swapped for another of the same role.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.named_chain(("clip", gtx.clip(1.0)), ("lr", gtx.scale(-0.1)))
        >>> sorted(tx.init(jnp.zeros(2)))
        ['clip', 'lr']
    """
    names = [name for name, _ in transforms]
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"named_chain expects (str, transform) pairs, got name {name!r}")
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"named_chain names must be unique, got duplicates {duplicated}")
    update_fns = tuple((name, _update_with_extra_args(t)) for name, t in transforms)
    blocks = _foldable_blocks([t for _, t in transforms])

    def init(params):
        return {name: t.init(params) for name, t in transforms}

    def update(updates, state, params=None, **extra):
        if not isinstance(state, Mapping):  # None (update before init), the pair update returned
            raise ValueError(
                f"named_chain of {names} got a state that is not a dict of their states: "
                f"{type(state).__name__}"
            )
        missing = [name for name in names if name not in state]
        if missing:
            raise ValueError(
                f"named_chain state has no entry for {missing} (its keys: {list(state)}; "
                f"were state and params swapped?)"
            )
        functions = [update_fn for _, update_fn in update_fns]
        states = [state[name] for name in names]
        updates, new_states = _update_in_turn(functions, blocks, updates, states, params, extra)
        return updates, dict(zip(names, new_states, strict=True))

    return GradientTransformation(init, update)


def _check_applicable(params: Params, pairs: list[tuple], indices: list[int] | None) -> None:
    """Shapes equal, and no complex update of a real or floating update of an integer
    parameter, for the ``(parameter, update)`` pairs at ``indices`` (all if ``None``;
    ``tree.map_leaves_flat`` passes one pair per group of equal shapes and dtypes on an
    eager step), ``pairs`` being those of the leaves of ``params`` in order (attribute
    reads only: this runs on every eager step)."""
    for index in range(len(pairs)) if indices is None else indices:
        p, u = pairs[index]
        if u is None:
            continue
        p_shape, u_shape = _shape_of(p), _shape_of(u)
        p_kind, u_kind = _kind_of(p), _kind_of(u)
        problem = None
        if isinstance(u, jax.ShapeDtypeStruct) or isinstance(p, jax.ShapeDtypeStruct):
            role = "update" if isinstance(u, jax.ShapeDtypeStruct) else "parameter"
            path = tree_checks.leaf_path(params, index) or "the root"
            raise TypeError(
                f"apply_updates: at {path}, the {role} is a jax.ShapeDtypeStruct, a shape and "
                f"dtype without values (jax.eval_shape(gtx.apply_updates, params, updates) "
                f"gives the result's)"
            )
        if "x" in (p_kind, u_kind):  # a model's function or name left in the tree
            role, leaf = ("parameter", p) if p_kind == "x" else ("update", u)
            path = tree_checks.leaf_path(params, index) or "the root"
            raise TypeError(
                f"apply_updates: at {path}, the {role} is a {type(leaf).__name__}, not an "
                f"array (keep only a model's arrays: eqx.filter(model, eqx.is_array))"
            )
        if p_shape != u_shape:
            problem = f"the update has shape {list(u_shape)}, the parameter {list(p_shape)}"
        elif u_kind == "c" and p_kind != "c":
            problem = "the update is complex, the parameter real (its imaginary part would be lost)"
        elif u_kind in "fc" and p_kind == "i":
            problem = "the update is floating, the parameter an integer (it would be truncated)"
        elif u_kind == "i" and p_kind in "fc":
            problem = (
                f"the update has dtype {jnp.dtype(u.dtype).name}, the parameter is "
                f"floating (a mask or a count passed as the updates?)"
            )
        elif u_kind == "0" and p_kind != "i":
            problem = (
                "the update is float0 (jax.grad's gradient of an integer leaf), the "
                "parameter floating"
            )
        if problem:
            path = tree_checks.leaf_path(params, index) or "the root"
            raise ValueError(f"apply_updates: at {path}, {problem}")


def _shape_of(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else np.shape(x)


def _kind_of(x: Any) -> str:
    """'c' complex, 'f' real floating (bfloat16 and float8 too, whose NumPy kind is 'V'),
    '0' float0 (the tangent of an integer), 'i' integer, bool or any other dtype, 'x'
    not an array or a Python number (a function, a string)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None and not isinstance(x, int | float | complex):
        return "x"
    return _kind(dtype if dtype is not None else np.result_type(x))


@functools.cache
def _kind(dtype: np.dtype) -> str:
    if dtype == jax.dtypes.float0:
        return "0"
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return "c"
    if jnp.issubdtype(dtype, jnp.floating):
        return "f"
    return "i"


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns ``params + updates``, each leaf in its parameter's own dtype.

    ``None`` leaves in ``params`` stay ``None``. The sum is computed in the promoted dtype
    and cast back, so float32 updates applied to bfloat16 parameters keep bfloat16. An
    update whose shape differs from its parameter's (it would broadcast and change the
    parameter's shape), a complex update of a real parameter (its imaginary part would be
    dropped), a floating update of an integer parameter (truncated) or an integer or bool
    update of a floating one (a mask passed as the updates) is a ValueError naming the
    leaf; Optax applies them silently. A ``float0`` update (the gradient
    ``jax.grad(..., allow_int=True)`` gives an integer or bool leaf, which ``masked``
    passes on and ``freeze`` keeps) leaves its parameter unchanged; Optax's
    ``apply_updates`` raises inside JAX on it. A leaf that is not an array or a number
    (a model's activation function) or a ``jax.ShapeDtypeStruct`` is a TypeError naming
    it.

    Args:
        params: a tree of arrays (``None`` leaves allowed).
        updates: a tree of the same structure (a different one is a ValueError naming
            the first differing path), each leaf of its parameter's shape.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> p = gtx.apply_updates({"w": jnp.ones(2, jnp.bfloat16)}, {"w": jnp.full(2, 0.5)})
        >>> p["w"].dtype, p["w"].tolist()
        (dtype(bfloat16), [1.5, 1.5])
    """
    # Each tree is flattened once, for the checks and the sum (an eager step pays for
    # every flattening: a dict of 1,000 entries sorts its keys each time, ~0.3 ms). The
    # structures with None as a leaf and the places of the Nones equal is the same test
    # as the structures with None as an empty subtree equal.
    flat_params, treedef = jax.tree.flatten(params, is_leaf=_is_none)
    flat_updates, updates_treedef = jax.tree.flatten(updates, is_leaf=_is_none)
    if updates_treedef != treedef or [p is None for p in flat_params] != [
        u is None for u in flat_updates
    ]:
        tree_checks.check_same_structure(params, updates, "params", "updates")

    def check(pairs, indices):
        _check_applicable(params, pairs, indices)

    def add(p, u):
        p = jnp.asarray(p)
        if getattr(u, "dtype", None) == jax.dtypes.float0:
            # jax.grad(..., allow_int=True) gives integer leaves float0 gradients, and
            # masked or freeze passes them on: float0 is a zero that no operation takes
            return p
        return jnp.asarray(p + u).astype(p.dtype)

    return treedef.unflatten(tree.map_leaves_flat(add, [flat_params, flat_updates], check))


def param_after_update(p: jax.Array, u: jax.Array, dtype: Any = None) -> jax.Array:
    """One leaf of ``apply_updates``: ``p + u`` in their promoted dtype, rounded to the
    parameter's dtype (the parameter the model then holds), given in ``dtype`` (None: the
    parameter's).

    For the transforms that read the params after the step (a parameter average, the
    fast weights of ``lookahead``): a float16 or bfloat16 iterate is rounded before
    they use it, as it is in the model, and the sum is the one ``apply_updates``
    computes, bit for bit. Times ``numerics.unshared(1)`` (exact), so that XLA does not
    share it with ``apply_updates``' sum: a bfloat16 rounding shared so was a buffer of
    its own, as large as the params in float32 (``chain(sgd, average_params())``,
    ``ema_params``, ASGD with bfloat16 params), and each loop now rounds its own.
    """
    added = numerics.promote_types(p.dtype, u.dtype)  # apply_updates' promoted sum
    total = (p.astype(added) + u.astype(added)) * numerics.unshared(1, added)
    new = total.astype(p.dtype)
    if dtype is None:
        return new
    new = new.astype(dtype)
    if jnp.dtype(p.dtype) == jnp.bfloat16 and jnp.dtype(dtype) != jnp.bfloat16:
        # XLA:CPU may drop a round trip through bfloat16 inside a loop (its excess
        # precision); a bfloat16 has float32's exponents: the rounding, made explicit
        new = jax.lax.reduce_precision(new, exponent_bits=8, mantissa_bits=7)
    return new


def _is_none(x: Any) -> bool:
    return x is None
