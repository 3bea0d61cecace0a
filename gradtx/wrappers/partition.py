"""Parameter groups: ``partition`` routes each group of leaves to its own transform, and
``reset_group`` starts one group's state afresh.

Each group's transform sees the tree with the other groups' leaves ``None`` (see
``masking``), so it builds state for its own leaves only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

from gradtx import check, layout, masks, paths
from gradtx.core import (
    GradientTransformation,
    OptState,
    Params,
    TransformLike,
    _update_with_extra_args,
)


class PartitionState(NamedTuple):
    """The state of ``partition``.

    Attributes:
        inner_states: a dict from group label to that group's state, built from the
            params with the other groups' leaves replaced by None.
    """

    inner_states: dict[str, OptState]


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
    treedef, _ = masks.flat_prefix(label_tree, full, "the labels")
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
        if masks.has_no_leaves(params):
            return PartitionState({name: t.init(params) for name, t in transforms.items()})
        treedef, flat = _resolve_labels(labels, params, names)
        return PartitionState(
            {
                name: t.init(masks.select(params, [label == name for label in flat], treedef))
                for name, t in transforms.items()
            }
        )

    def update(updates, state, params=None, **extra):
        check.leaves_apart("partition", _FLATTEN_EACH_GROUP)
        check.state_of("partition", state, PartitionState)
        if masks.has_no_leaves(updates):
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
                masks.select(updates, keep, treedef),
                state.inner_states[name],
                masks.select(params, keep, treedef, updates),
                **extra,
            )
            parts.append((keep, group_updates))
        merged = masks.merge(treedef, parts, treedef.flatten_up_to(updates))
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
