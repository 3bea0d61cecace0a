"""Routing updates by leaf: ``masked``, ``partition`` (parameter groups) and ``freeze``.

A routed transform sees a copy of the tree in which the leaves it does not own are
``None``. ``None`` is an empty subtree to JAX, so the inner transform builds state only
for the leaves it owns (an Adam on the weights of a big model keeps no moments for its
embeddings), and nested wrappers compose: an inner mask simply sees more ``None`` leaves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

from gradtx import check, layout, masks, paths, tree, tree_checks
from gradtx.core import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    TransformLike,
    _update_with_extra_args,
)


class MaskedState(NamedTuple):
    """The state of ``masked`` (and of ``freeze`` with a mask).

    Attributes:
        inner_state: the inner transform's state, built from the params with the
            masked-out leaves replaced by None (so it holds the masked-in leaves only).
    """

    inner_state: OptState


class PartitionState(NamedTuple):
    """The state of ``partition``.

    Attributes:
        inner_states: a dict from group label to that group's state, built from the
            params with the other groups' leaves replaced by None.
    """

    inner_states: dict[str, OptState]


def _flat_prefix(prefix: Any, full: Any, what: str) -> tuple[Any, list]:
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


def _select(full: Any, keep: list[bool], treedef: Any, updates: Any = None) -> Any:
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


def _merge(treedef: Any, parts: list[tuple[list[bool], Any]], fallback: list) -> Any:
    """One tree taking each subtree from the part that owns it, else from ``fallback``."""
    merged = list(fallback)
    for keep, part in parts:
        for index, subtree in enumerate(treedef.flatten_up_to(part)):
            if keep[index]:
                merged[index] = subtree
    return treedef.unflatten(merged)


def _as_flags(mask_tree: Any, full: Any) -> tuple[Any, list[bool]]:
    treedef, _ = _flat_prefix(mask_tree, full, "the mask")
    return treedef, masks.mask_flags(mask_tree)


def _has_no_leaves(params: Any) -> bool:
    """Whether there is nothing to route: a tree without leaves goes to the inner
    transforms as it is, whatever the mask or labels. That is a group that owns nothing
    (``()``) inside another ``masked`` or ``partition``, and the leafless placeholder
    that ``optax.tree.map_params`` gives ``init`` to find the copies of the params in a
    state (``optax.masked`` passes it down unmasked too)."""
    return params is not None and not jax.tree.leaves(params)


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
        if _has_no_leaves(params):
            return MaskedState(inner.init(params))
        mask_tree = mask(params) if mask_is_function else mask
        treedef, keep = _as_flags(mask_tree, params)
        return MaskedState(inner.init(_select(params, keep, treedef)))

    def update(updates, state, params=None, **extra):
        check.leaves_apart("masked", "put flatten inside it: masked(flatten(tx), mask)")
        check.state_of("masked", state, MaskedState)
        if _has_no_leaves(updates):
            _, inner_state = inner_update(updates, state.inner_state, params, **extra)
            return updates, MaskedState(inner_state)
        mask_tree = mask(updates) if mask_is_function else mask
        treedef, keep = _as_flags(mask_tree, updates)
        if mask_compatible_extra_args:  # as Optax: the extra trees shaped like the updates
            structure = jax.tree.structure(updates)
            extra = {
                name: _select(value, keep, treedef)
                if jax.tree.structure(value) == structure
                else value
                for name, value in extra.items()
            }
        inner_updates, inner_state = inner_update(
            _select(updates, keep, treedef),
            state.inner_state,
            _select(params, keep, treedef, updates),
            **extra,
        )
        fallback = treedef.flatten_up_to(updates)
        if masked_leaves == "zero":  # zeros for the masked-out leaves only, in one pass
            zeros = _zeros_like_subtree([s for s, k in zip(fallback, keep, strict=True) if not k])
            zeros = iter(zeros)
            fallback = [s if k else next(zeros) for s, k in zip(fallback, keep, strict=True)]
        return _merge(treedef, [(keep, inner_updates)], fallback), MaskedState(inner_state)

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


def _labels_from_patterns(patterns: Mapping[str, str], full: Any) -> Any:
    compiled = []
    for pattern, value in patterns.items():
        try:
            compiled.append((re.compile(pattern), value))
        except re.error as error:
            raise ValueError(f"labels: invalid path pattern {pattern!r}: {error}") from None

    def label(path, leaf):
        del leaf
        name = jax.tree_util.keystr(path)
        for regex, value in compiled:
            if regex.search(name):
                return value
        raise ValueError(
            f"partition: the parameter at {name} matches none of the label patterns "
            f"{list(patterns)}; add a catch-all pattern such as r'.*'"
        )

    # a Flax nnx.Variable is matched at its own path: nnx.Optimizer's init sees
    # "['dense']['bias'].value" where its update sees "['dense']['bias']", and a pattern
    # ending in "bias'\]$" must pick the same leaves in both (or the groups' states
    # would not fit their updates)
    return jax.tree_util.tree_map_with_path(label, full, is_leaf=check.is_flax_variable)


def _is_pattern_dict(labels: Any, full: Any) -> bool:
    """A dict of labels is read as path patterns unless its keys are the params' keys."""
    if not isinstance(labels, Mapping):
        return False
    if not all(isinstance(v, str) for v in labels.values()):
        return False
    if not isinstance(full, Mapping):
        return True
    if set(labels) == set(full):
        return False
    if set(labels) < set(full):  # a label tree missing keys, or patterns? Not guessed.
        missing = sorted(map(str, set(full) - set(labels)))
        raise ValueError(
            f"labels: the keys {sorted(map(str, labels))} are all top-level keys of the "
            f"params, which also have {missing}; as a label tree, give those a label too; "
            f"as path patterns (searched in every path: {sorted(map(str, labels))[0]!r} "
            f"would also match a key it is a part of), write one that is not a bare key, "
            f"such as r\"^\\['name'\\]\" for one key exactly"
        )
    return True


def _resolve_labels(labels: Any, full: Any, names: list[str]) -> tuple[Any, list]:
    if _is_pattern_dict(labels, full):
        label_tree = _labels_from_patterns(labels, full)
    else:
        is_function = masks.is_function_of_params(labels, masks.LABEL_LEAVES)
        label_tree = labels(full) if is_function else labels
    treedef, _ = _flat_prefix(label_tree, full, "the labels")
    flat = treedef.flatten_up_to(label_tree)
    unknown = sorted({str(label) for label in flat if label not in names})
    if unknown:
        raise ValueError(
            f"partition: labels {unknown} have no transform; transforms are given for {names}"
        )
    return treedef, flat


_FLATTEN_EACH_GROUP = (
    "flatten each group's transform instead: partition({'a': flatten(tx), ...}, labels)"
)


def partition(
    transforms: Mapping[str, TransformLike],
    labels: Any,
) -> GradientTransformation:
    r"""A different transform for each group of parameters (PyTorch's parameter groups).

    Each leaf gets a label; the transform of that label updates it, seeing only its own
    group (the other leaves are ``None``), so each group has its own state.

    Args:
        transforms: label -> transform (e.g. optimizers with their own learning rate and
            weight decay). A label no leaf carries is allowed (its state is empty; its
            transform sees ``None`` leaves, or ``()`` when the labels are one string).
        labels: one of

            - a tree of label strings with the structure of the params (or a prefix);
            - a function returning that tree, called with the params in ``init`` and
              with the updates in ``update`` (a callable tree of labels, built from an
              Equinox module with ``jax.tree.map``, is a tree, not a function);
            - a dict ``{path regex: label}``: each leaf's path, as
              ``jax.tree_util.keystr`` prints it (``"['dense']['bias']"``), is searched
              (``re.search``) with the patterns in order and the first match wins; a
              leaf matching none is an error. A Flax ``nnx.Variable`` is matched at its
              own path (``"['dense']['bias']"``, without the ``.value`` of its array),
              the path its array has in ``nnx.Optimizer``'s ``update``. (A dict whose
              keys are exactly the params' top-level keys is read as a label tree
              instead; one whose keys are some of them only is a ValueError: a label
              tree missing keys, or bare keys as patterns, which would also match
              longer keys.)

    State: ``PartitionState(inner_states)``, a dict label -> that group's state.
    ``reset_group`` re-initializes one group.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.partition(
        ...     {"decay": gtx.chain(gtx.add_decayed_weights(0.1), gtx.scale(-1.0)),
        ...      "no_decay": gtx.scale(-1.0)},
        ...     {r"bias": "no_decay", r".*": "decay"})
        >>> params = {"kernel": jnp.ones(1), "bias": jnp.ones(1)}
        >>> updates, _ = tx.update({"kernel": jnp.ones(1), "bias": jnp.ones(1)},
        ...                        tx.init(params), params)
        >>> [round(float(updates[k][0]), 6) for k in ("kernel", "bias")]
        [-1.1, -1.0]
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(f"transforms must be a non-empty dict label -> transform, got {transforms}")
    if isinstance(labels, Mapping) and not labels:
        raise ValueError(
            "labels must give every parameter a label: a tree of label strings like the "
            "params, a function returning one, or a dict {path regex: label}; got an empty "
            "dict"
        )
    if masks.is_function_of_params(labels, masks.LABEL_LEAVES):
        check.takes_one_argument("labels", labels, "the params")
    names = list(transforms)
    update_fns = {
        name: _update_with_extra_args(t, f"transforms[{name!r}]") for name, t in transforms.items()
    }

    def init(params):
        check.leaves_apart("partition", _FLATTEN_EACH_GROUP)
        if _has_no_leaves(params):
            return PartitionState({name: t.init(params) for name, t in transforms.items()})
        treedef, flat = _resolve_labels(labels, params, names)
        return PartitionState(
            {
                name: t.init(_select(params, [label == name for label in flat], treedef))
                for name, t in transforms.items()
            }
        )

    def update(updates, state, params=None, **extra):
        check.leaves_apart("partition", _FLATTEN_EACH_GROUP)
        check.state_of("partition", state, PartitionState)
        if _has_no_leaves(updates):
            new_states = {
                name: update_fn(updates, state.inner_states[name], params, **extra)[1]
                for name, update_fn in update_fns.items()
            }
            return updates, PartitionState(new_states)
        treedef, flat = _resolve_labels(labels, updates, names)
        parts, new_states = [], {}
        for name, update_fn in update_fns.items():
            keep = [label == name for label in flat]
            group_updates, new_states[name] = update_fn(
                _select(updates, keep, treedef),
                state.inner_states[name],
                _select(params, keep, treedef, updates),
                **extra,
            )
            parts.append((keep, group_updates))
        merged = _merge(treedef, parts, treedef.flatten_up_to(updates))
        return merged, PartitionState(new_states)

    return GradientTransformation(init, update)


def reset_group(
    partitioned: GradientTransformation, state: OptState, label: str, params: Params
) -> OptState:
    """``state`` with the group ``label`` of its ``partition`` re-initialized (its moments,
    counts... as at init); everything else in ``state`` is returned as it was. The fresh
    arrays lie where those they replace did (their devices, layout and memory: a ZeRO-1
    layout or a state kept in host memory is kept).

    The partition may sit inside a chain or a wrapper (``chain(clip_by_global_norm(1.0),
    partition(...))``, ``multi_steps(partition(...), k)``): ``state`` may be that chain's
    or wrapper's state, holding exactly one ``PartitionState`` (as ``has_updated`` finds
    the ``MultiStepsState``), and ``partitioned`` either the ``partition`` itself or the
    transform holding it. With the transform holding it, its whole state is initialized
    once to take the group's (pass the ``partition`` itself to build only its own).
    In Flax's ``nnx.Optimizer.opt_state``, which holds the arrays in ``OptArray``
    variables, the group's fresh arrays go into its variables, so
    ``optimizer.opt_state = gtx.reset_group(tx, optimizer.opt_state, label, params)``
    keeps its graph (a jitted step does not retrace).

    Args:
        partitioned: the transform returned by ``partition``, or one holding exactly
            one (a chain, a wrapper).
        state: its current state: a ``PartitionState``, or a state holding exactly one
            (none or several is a TypeError).
        label: the group to reset, one of the labels of the partition (another is a
            ValueError).
        params: the current params (the group's init may read them).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.partition({"a": gtx.scale_by_adam(), "b": gtx.scale_by_adam()},
        ...                    {"x": "a", "y": "b"})
        >>> params = {"x": jnp.zeros(1), "y": jnp.zeros(1)}
        >>> _, state = tx.update({"x": jnp.ones(1), "y": jnp.ones(1)}, tx.init(params))
        >>> state = gtx.reset_group(tx, state, "a", params)
        >>> int(state.inner_states["a"].count), int(state.inner_states["b"].count)
        (0, 1)

    Reference: none in Optax (``optax.multi_transform`` has no reset); PyTorch users
    do it by clearing ``optimizer.state`` for a group's parameters.
    """
    current = _the_partition_state(state, "state")
    if label not in current.inner_states:
        raise ValueError(f"no group {label!r}; the groups are {list(current.inner_states)}")
    fresh = _the_partition_state(partitioned.init(params), "partitioned's init")
    if set(fresh.inner_states) != set(current.inner_states):
        raise ValueError(
            f"partitioned has the groups {list(fresh.inner_states)}, the state "
            f"{list(current.inner_states)}: pass the transform this state belongs to"
        )
    held = current.inner_states[label]
    # in nnx.Optimizer's opt_state, the fresh arrays go into the OptArrays of the old ones
    group = paths.in_variables_of(held, _placed_like(fresh.inner_states[label], held))
    reset = PartitionState({**current.inner_states, label: group})
    return jax.tree.map(
        lambda x: reset if x is current else x, state, is_leaf=lambda x: x is current
    )


def _placed_like(fresh: Any, held: Any) -> Any:
    """``fresh``'s arrays on the devices and in the memory of those of ``held`` that they
    replace (a state kept in host memory, moments laid out otherwise than their
    parameters: ``layout.placed_like``), leaf by leaf in order where both have as many
    leaves of the same shapes (the arrays of Flax variables read out of them)."""
    fresh_leaves, treedef = jax.tree.flatten(fresh, is_leaf=check.is_flax_variable)
    held_leaves = jax.tree.leaves(held, is_leaf=check.is_flax_variable)
    held_leaves = [check.flax_variable_value(x) for x in held_leaves]
    shapes = lambda leaves: [getattr(x, "shape", None) for x in leaves]  # noqa: E731
    if shapes([check.flax_variable_value(x) for x in fresh_leaves]) != shapes(held_leaves):
        return fresh
    placed = [
        x if check.is_flax_variable(x) else layout.placed_like(x, old)
        for x, old in zip(fresh_leaves, held_leaves, strict=True)
    ]
    return treedef.unflatten(placed)


def _the_partition_state(state: Any, what: str) -> PartitionState:
    """``state`` itself if it is a ``PartitionState``, else the one it holds (not those
    inside that one); none or several is a TypeError naming ``what``."""
    if isinstance(state, PartitionState):
        return state
    is_node = lambda x: isinstance(x, PartitionState)  # noqa: E731
    found = [x for x in jax.tree.leaves(state, is_leaf=is_node) if is_node(x)]
    if len(found) != 1:
        raise TypeError(
            f"reset_group expects a PartitionState or a state holding exactly one as "
            f"{what}, got {type(state).__name__} holding {len(found)}"
        )
    return found[0]
