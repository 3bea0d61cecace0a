"""Fields of a state by name: ``tree_get`` and ``tree_set`` (as ``optax.tree_utils``
reads and writes them), and the path patterns that pick a wrapper's inner state."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, layout
from gradtx.tree import own_array
from gradtx.tree_checks import check_same_structure

__all__ = ["tree_get", "tree_set"]


def named_children(node: Any) -> list[tuple[str, Any, Any]] | None:
    """``(path piece, key, child)`` for a NamedTuple, dict, list, tuple or other pytree
    node; None for a leaf.

    Only NamedTuple fields and dict keys are names ``tree_get`` can find; list and tuple
    positions are walked through (a chain's state is a tuple) but are not names, nor are
    the children of other pytree nodes (a dataclass such as Flax's ``TrainState``, an
    Equinox module: walked through, as Optax's ``tree_get`` walks them). Flax
    ``nnx.Variable``s are leaves here (their arrays are the values found).
    """
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return [(f".{name}", name, getattr(node, name)) for name in node._fields]
    if isinstance(node, dict):
        return [(f"[{key!r}]", key, value) for key, value in node.items()]
    if isinstance(node, list | tuple):
        return [(f"[{index}]", None, value) for index, value in enumerate(node)]
    if node is None or isinstance(node, jax.Array | np.ndarray) or check.is_flax_variable(node):
        return None
    flat, _ = _one_level(node)
    if flat == [((), node)]:  # a leaf
        return None
    return [(jax.tree_util.keystr(path), None, child) for path, child in flat]


def _one_level(node: Any) -> tuple[list, Any]:
    """The children of a pytree node with their keys, and the node's structure above
    them (to rebuild it from new children)."""
    flat, structure = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    return flat, structure


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


REMEMBERED_STRUCTURES = 64
"""How many tree structures ``remembered`` keeps answers for, per cache."""


def remembered(
    cache: dict, structure: Any, key: tuple, compute: Callable[[], tuple[Any, bool]]
) -> Any:
    """The answer of ``compute()`` (which returns it and whether it may be kept), kept in
    ``cache`` for trees of ``structure`` (a ``PyTreeDef``) and ``key``: what a walk of a
    state finds (where its injected hyperparameters or a named field sit) depends on its
    structure alone, which a state keeps from step to step, so the walk of its every
    node (3-8 ms on 1,000 leaves) is made once per structure, and later calls cost a
    flatten (~0.3 ms). A structure that cannot be hashed or compared (a custom node's
    unhashable data, or an array as its data, which JAX's equality refuses with a
    ValueError) is walked each time."""
    try:
        found = cache.get((structure, *key))
    except (TypeError, ValueError):
        return compute()[0]
    if found is None:
        found, keep = compute()
        if keep:
            if len(cache) >= REMEMBERED_STRUCTURES:
                cache.clear()
            cache[(structure, *key)] = found
    return found


_NAMED: dict = {}
"""``_find_named``'s answers, by tree structure, name and path."""

# the dicts, lists and tuples named_children walks that are pytree nodes: the structure
# says what they hold (an unregistered dict or list subclass is a leaf whose keys it does
# not record); other pytree nodes are walked as the structure records them
_NODE_TYPES = (dict, list, tuple, collections.OrderedDict, collections.defaultdict)


def _find_named(tree: Any, name: str, path: str | None) -> list[tuple[str, ...]]:
    """The paths (as pieces: ``(".inner_state", "[0]", ".mu")``) of every ``name`` field."""
    structure = jax.tree.structure(tree)
    return remembered(_NAMED, structure, (name, path), lambda: _walk_named(tree, name, path))


def _walk_named(tree: Any, name: str, path: str | None) -> tuple[list[tuple[str, ...]], bool]:
    found = []
    by_structure = True

    def visit(prefix: tuple[str, ...], node: Any) -> None:
        nonlocal by_structure
        children = named_children(node)
        if children is None:
            return
        if isinstance(node, dict | list | tuple) and type(node) not in _NODE_TYPES:
            by_structure = by_structure and hasattr(node, "_fields")
        for piece, key, child in children:
            here = (*prefix, piece)
            if key == name and path_matches(here, path):
                found.append(here)
            visit(here, child)

    visit((), tree)
    return found, by_structure


def _replace_at(node: Any, pieces: tuple[str, ...], value: Any) -> Any:
    if not pieces:
        return value
    piece, rest = pieces[0], pieces[1:]
    for index, (child_piece, key, child) in enumerate(named_children(node)):
        if child_piece == piece:
            new_child = _replace_at(child, rest, value)
            if isinstance(node, tuple) and hasattr(node, "_fields"):
                return node._replace(**{key: new_child})
            if isinstance(node, dict):
                return {**node, key: new_child}
            if isinstance(node, list | tuple):
                items = list(node)
                items[index] = new_child
                return type(node)(items)
            flat, structure = _one_level(node)
            children = [child for _, child in flat]
            children[index] = new_child
            return structure.unflatten(children)
    raise AssertionError(f"path piece {piece} vanished")  # _find_named produced it


def _lookup(tree: Any, name: str, path: str | None, fresh: bool = False) -> tuple[str, ...]:
    check_path(path)
    find = (lambda *args: _walk_named(*args)[0]) if fresh else _find_named
    if path == "":  # the root's: the one nearest the top (a nested injection's outer one)
        found = find(tree, name, None)
        nearest = min((len(pieces) for pieces in found), default=0)
        found = [pieces for pieces in found if len(pieces) == nearest]
    else:
        found = find(tree, name, path)
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

    Searches nested states (chains, named chains, wrappers, injected hyperparameters),
    and whatever pytree holds them (a Flax ``TrainState``, whose fields are walked
    through but are not names), for ``name`` (``"count"``, ``"mu"``,
    ``"learning_rate"``...). Raises KeyError when no
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
    return _found(tree, name, path)[1]


class _Stale(LookupError):
    """A remembered path that this tree does not have: dict keys that compare equal but
    print otherwise (``1`` and ``True``, ``"a"`` and ``np.str_("a")``) give equal
    structures."""


def _found(tree: Any, name: str, path: str | None) -> tuple[tuple[str, ...], Any]:
    """The path of the one ``name`` field (``_lookup``) and its value; walked afresh where
    the remembered path is not this tree's."""
    pieces = _lookup(tree, name, path)
    try:
        return pieces, _at(tree, pieces)
    except _Stale:
        pieces = _lookup(tree, name, path, fresh=True)
        return pieces, _at(tree, pieces)


def _at(tree: Any, pieces: tuple[str, ...]) -> Any:
    node = tree
    for piece in pieces:
        children = named_children(node) or []
        node = next((child for p, _, child in children if p == piece), _Stale)
        if node is _Stale:
            raise _Stale(piece)
    return node


def tree_set(tree: Any, *, path: str | None = None, **values: Any) -> Any:
    """A copy of ``tree`` with the named fields (found as ``tree_get`` finds them) replaced.

    Each new value must have the structure and leaf shapes of the old one; array leaves
    are cast to the old leaf's dtype, so a state keeps its structure and dtypes (a
    jit-compiled step does not recompile), and a caller's array already of that dtype
    is copied, so that the state holds arrays of its own (a jitted step donating the
    state deletes them, and refuses one held twice), on the devices and in the memory of
    the array it replaces where that one is committed to them (a state kept in host
    memory, ``memory_kind="pinned_host"``, stays there). Errors as ``tree_get``. In Flax's
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
        pieces, held = _found(tree, name, path)
        found = "".join(pieces)
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
                return own_array(layout.placed_like(new_leaf, old_leaf), given)
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
            return layout.placed_like(new_leaf.astype(old_leaf.dtype), old_leaf)

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
