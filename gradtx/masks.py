"""Masks and labels: which leaves a block or a wrapper touches (``masked``,
``partition``, the ``mask=`` of the regularizers), given as a tree shaped like the params
or as a function of the params, read as static Python values when the step is traced;
and the routing of subtrees by a mask or labels that is a prefix of the params
(``flat_prefix``, ``select``, ``merge``)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from gradtx import check, paths, tree_checks
from gradtx.core import Params

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


def resolve_mask(mask: Any, params: Params, updates: Any) -> Any:
    """The mask as a tree of Python bools with the structure of ``updates``.

    ``mask`` is None (everything), a tree of bools with the structure of the params, or
    a function ``params -> tree of bools`` (a callable tree of bools, such as a mask
    built from an Equinox module, is a tree). A bool is a Python or NumPy bool or a 0-d
    boolean array (``mask_flags``). Masks are static: a traced bool is an error.
    """
    treedef = jax.tree.structure(updates)
    if mask is None or treedef.num_leaves == 0:
        # no leaves (a group that owns nothing in a ``partition``): nothing to mask
        return treedef.unflatten([True] * treedef.num_leaves)
    check.leaves_apart("a transform's mask=", "pass no mask, and put flatten in a masked")
    mask_tree = mask(params) if is_function_of_params(mask, MASK_LEAVES) else mask
    if jax.tree.structure(mask_tree) != treedef:
        tree_checks.check_same_structure(updates, mask_tree, "the updates", "the mask")
    return treedef.unflatten(mask_flags(mask_tree, treedef))


def check_mask(mask: Any) -> None:
    """A mask as ``resolve_mask`` and ``masked`` take it, checked where the transform is
    built: not a bare bool, and a function that can take the params."""
    if isinstance(mask, MASK_LEAVES) or is_bool_scalar_array(mask):
        raise TypeError(
            f"mask must be a tree of bools or a function of params, not a bool, got {mask!r}"
        )
    if is_function_of_params(mask, MASK_LEAVES):
        check.takes_one_argument("mask", mask, "the params")


def flat_prefix(prefix: Any, full: Any, what: str) -> tuple[Any, list]:
    """``prefix``'s treedef and the subtrees of ``full`` at its leaves.

    A mask or label tree may be a prefix of the params (``{"encoder": False, ...}``
    covers every leaf under ``encoder``).
    """
    treedef = jax.tree.structure(prefix)
    try:
        return treedef, treedef.flatten_up_to(full)
    except (ValueError, TypeError) as error:
        difference = _prefix_difference(prefix, full, "")
        detail = difference or str(error)
        raise ValueError(f"{what} is not a prefix of the updates' structure: {detail}") from None


def _prefix_difference(prefix: Any, full: Any, path: str) -> str | None:
    """Where ``prefix`` stops being a prefix of ``full``: the first container whose keys,
    type or length differ (a leaf of ``prefix`` covers any subtree of ``full``)."""
    children = paths.named_children(prefix)
    if children is None:
        return None
    where = path or "the root"
    full_children = paths.named_children(full)
    if full_children is None or type(full) is not type(prefix):
        return f"at {where} it has a {type(prefix).__name__} where the updates have {full!r}"
    names = [piece for piece, _, _ in children]
    full_names = [piece for piece, _, _ in full_children]
    if sorted(names) != sorted(full_names):
        missing = sorted(set(full_names) - set(names))
        extra = sorted(set(names) - set(full_names))
        return f"at {where} the updates have {', '.join(missing) or 'nothing'} that it lacks" + (
            f" and it has {', '.join(extra)} that the updates lack" if extra else ""
        )
    full_by_name = {piece: child for piece, _, child in full_children}
    for piece, _, child in children:
        found = _prefix_difference(child, full_by_name[piece], path + piece)
        if found:
            return found
    return None


def select(full: Any, keep: list[bool], treedef: Any, updates: Any = None) -> Any:
    """``full`` with every subtree not kept replaced by None (an empty subtree); given
    ``updates``, ``full`` is the params and a structure that differs is named."""
    if full is None:
        return None
    if updates is not None and jax.tree.structure(full) != jax.tree.structure(updates):
        tree_checks.check_same_structure(updates, full, "the updates", "the params")
    subtrees = treedef.flatten_up_to(full)
    selected = treedef.unflatten([s if k else None for s, k in zip(subtrees, keep, strict=True)])
    # A group that owns nothing at the root (a mask function returning False, labels
    # returning another group's label) would see None, which to a transform means "no
    # params given": add_decayed_weights or lookahead would refuse them. An empty tuple
    # is as empty (no leaves) and is not None.
    return () if selected is None else selected


def merge(treedef: Any, parts: list[tuple[list[bool], Any]], fallback: list) -> Any:
    """One tree taking each subtree from the part that owns it, else from ``fallback``."""
    merged = list(fallback)
    for keep, part in parts:
        for index, subtree in enumerate(treedef.flatten_up_to(part)):
            if keep[index]:
                merged[index] = subtree
    return treedef.unflatten(merged)


def has_no_leaves(params: Any) -> bool:
    """Whether there is nothing to route: a tree without leaves goes to the inner
    transforms as it is, whatever the mask or labels. That is a group that owns nothing
    (``()``) inside another ``masked`` or ``partition``, and the leafless placeholder
    that ``optax.tree.map_params`` gives ``init`` to find the copies of the params in a
    state (``optax.masked`` passes it down unmasked too)."""
    return params is not None and not jax.tree.leaves(params)
