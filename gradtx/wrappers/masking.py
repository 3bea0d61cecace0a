"""Routing updates by leaf with a mask: ``masked``, ``freeze`` and ``set_to_zero``.

A routed transform sees a copy of the tree in which the leaves it does not own are
``None``. ``None`` is an empty subtree to JAX, so the inner transform builds state only
for the leaves it owns (an Adam on the weights of a big model keeps no moments for its
embeddings), and nested wrappers compose: an inner mask simply sees more ``None`` leaves. Parameter
groups (``partition``, ``reset_group``) route the same way, in ``partition``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from gradtx import check, masks, tree
from gradtx.core import (
    EmptyState,
    GradientTransformation,
    OptState,
    TransformLike,
    _update_with_extra_args,
)

# partition's state was a class of this module until it had one of its own: states
# pickled then name it here (docs/protocol.md: a state pickles).
from gradtx.wrappers.partition import PartitionState  # noqa: F401


class MaskedState(NamedTuple):
    """The state of ``masked`` (and of ``freeze`` with a mask).

    Attributes:
        inner_state: the inner transform's state, built from the params with the
            masked-out leaves replaced by None (so it holds the masked-in leaves only).
    """

    inner_state: OptState


def _as_flags(mask_tree: Any, full: Any) -> tuple[Any, list[bool]]:
    treedef, _ = masks.flat_prefix(mask_tree, full, "the mask")
    return treedef, masks.mask_flags(mask_tree)


def _zeros_like_subtree(subtree: Any) -> Any:
    # in the eager kernels (map_leaves): a jnp.zeros_like per leaf was 2 operations per
    # frozen leaf of an un-jitted update (2,000 for set_to_zero on 1,000 leaves)
    return tree.map_leaves(tree._zeros_like, subtree)


def masked(
    inner: TransformLike,
    mask: Any,
    *,
    masked_leaves: str = "pass",
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Applies ``inner`` only to the leaves where ``mask`` is True.

    Leaves whose mask is False pass through unchanged (``masked_leaves="pass"``) or
    become zero (``masked_leaves="zero"``). ``inner`` sees the params and updates with
    the masked-out leaves replaced by ``None`` (by an empty tuple ``()`` when the whole
    tree is masked out, so a transform that needs the params still gets them), so its
    state exists for the masked-in leaves only; masks nest (``masked(masked(tx, m2), m1)``).

    Args:
        inner: the transform to apply where the mask is True.
        mask: a tree of bools with the structure of the params (or a prefix of it:
            one bool for a whole subtree), or a function returning one; the function
            is called with the params in ``init`` and with the updates in ``update``
            (they share structure and shapes). A bool is a Python or NumPy bool or a
            0-d boolean array (JAX or NumPy), as Optax takes them. Masks are static: a
            traced bool (computed from values, or any array a mask function makes,
            under ``jit``: return Python bools such as ``p.ndim > 1``) is a TypeError. A
            callable tree of bools (``jax.tree.map(lambda p: p.ndim > 1, model)`` on an
            Equinox module) is a tree, not a function, as in Optax.
        masked_leaves: ``"pass"`` (unchanged) or ``"zero"``.
        mask_compatible_extra_args: whether the extra keyword arguments of ``update``
            that have the structure of the updates (a per-leaf value such as
            ``grad_scale={"w": ..., "b": ...}`` for a transform that reads one) are
            masked as the updates are, so that ``inner`` sees them with the same
            leaves ``None``; other extra arguments (``value=loss``) pass unchanged.
            False (the default) passes every extra argument unchanged. As Optax's.

    State: ``MaskedState(inner_state)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.masked(gtx.scale(-0.1), {"w": True, "b": False})
        >>> grads = {"w": jnp.ones(2), "b": jnp.ones(1)}
        >>> updates, _ = tx.update(grads, tx.init(grads))
        >>> updates["w"].tolist(), updates["b"].tolist()
        ([-0.10000000149011612, -0.10000000149011612], [1.0])

        An inner transform reading a per-leaf extra argument sees it masked too:

        >>> import jax
        >>> def scale_by_extra():
        ...     def update(updates, state, params=None, *, factor, **extra):
        ...         return jax.tree.map(lambda u, f: u * f, updates, factor), state
        ...     return gtx.GradientTransformation(lambda params: gtx.EmptyState(), update)
        >>> tx = gtx.masked(scale_by_extra(), {"w": True, "b": False},
        ...                 mask_compatible_extra_args=True)
        >>> factor = {"w": jnp.full(2, 3.0), "b": jnp.full(1, 5.0)}
        >>> updates, _ = tx.update(grads, tx.init(grads), factor=factor)
        >>> updates["w"].tolist(), updates["b"].tolist()
        ([3.0, 3.0], [1.0])

    Reference: ``optax.masked`` (the same map with ``masked_leaves="pass"``).
    """
    check.one_of("masked_leaves", masked_leaves, ("pass", "zero"))
    check.boolean("mask_compatible_extra_args", mask_compatible_extra_args)
    mask_compatible_extra_args = bool(mask_compatible_extra_args)
    masks.check_mask(mask)
    # a callable tree of bools (a mask built from an Equinox module) is a tree
    mask_is_function = masks.is_function_of_params(mask, masks.MASK_LEAVES)
    inner_update = _update_with_extra_args(inner, "inner")

    def init(params):
        check.leaves_apart("masked", "put flatten inside it: masked(flatten(tx), mask)")
        if masks.has_no_leaves(params):
            return MaskedState(inner.init(params))
        mask_tree = mask(params) if mask_is_function else mask
        treedef, keep = _as_flags(mask_tree, params)
        return MaskedState(inner.init(masks.select(params, keep, treedef)))

    def update(updates, state, params=None, **extra):
        check.leaves_apart("masked", "put flatten inside it: masked(flatten(tx), mask)")
        check.state_of("masked", state, MaskedState)
        if masks.has_no_leaves(updates):
            _, inner_state = inner_update(updates, state.inner_state, params, **extra)
            return updates, MaskedState(inner_state)
        mask_tree = mask(updates) if mask_is_function else mask
        treedef, keep = _as_flags(mask_tree, updates)
        if mask_compatible_extra_args:  # as Optax: the extra trees shaped like the updates
            structure = jax.tree.structure(updates)
            extra = {
                name: masks.select(value, keep, treedef)
                if jax.tree.structure(value) == structure
                else value
                for name, value in extra.items()
            }
        inner_updates, inner_state = inner_update(
            masks.select(updates, keep, treedef),
            state.inner_state,
            masks.select(params, keep, treedef, updates),
            **extra,
        )
        fallback = treedef.flatten_up_to(updates)
        if masked_leaves == "zero":  # zeros for the masked-out leaves only, in one pass
            zeros = _zeros_like_subtree([s for s, k in zip(fallback, keep, strict=True) if not k])
            zeros = iter(zeros)
            fallback = [s if k else next(zeros) for s, k in zip(fallback, keep, strict=True)]
        return masks.merge(treedef, [(keep, inner_updates)], fallback), MaskedState(inner_state)

    return GradientTransformation(init, update)


def set_to_zero() -> GradientTransformation:
    """Replaces every update by zeros; keeps no state (a frozen parameter group).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.set_to_zero()
        >>> tx.update(jnp.ones(2), tx.init(jnp.ones(2)))[0].tolist()
        [0.0, 0.0]

    Reference: ``optax.set_to_zero`` (same map).
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del params, extra
        return _zeros_like_subtree(updates), state

    return GradientTransformation(init, update)


def freeze(mask: Any = None) -> GradientTransformation:
    """Stops the updates of the leaves where ``mask`` is True (their update is zero).

    Args:
        mask: as in ``masked``; None freezes every leaf (useful as a parameter group in
            ``partition``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.chain(gtx.scale(-0.1), gtx.freeze({"encoder": True, "head": False}))
        >>> grads = {"encoder": jnp.ones(1), "head": jnp.ones(1)}
        >>> updates, _ = tx.update(grads, tx.init(grads))
        >>> updates["encoder"].tolist(), updates["head"].tolist()
        ([0.0], [-0.10000000149011612])

    Reference: ``optax.transforms.freeze`` (same map; Optax's also takes a single bool,
    which is a TypeError here: pass None to freeze everything).
    """
    if mask is None:
        return set_to_zero()
    return masked(set_to_zero(), mask)
