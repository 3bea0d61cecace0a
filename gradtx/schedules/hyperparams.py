"""``get_hyperparams`` and ``set_hyperparams``: the injected hyperparameters of a state.

They find every ``InjectState`` (``schedule_injection``'s) wherever it sits inside a
state, nested in chains and wrappers, read its values, or set them between steps as
float32 scalars on the devices of the values they replace, compiling nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, layout, paths, tree
from gradtx.core import OptState
from gradtx.schedules.injection import InjectState, as_float32


class _Injected(NamedTuple):
    """An InjectState found inside a state: its path (printed, and as pieces for
    ``paths.path_matches``), its count and hyperparameters (rebuilt from the state's
    leaves; its inner state is not), and where its leaves start among the state's
    (``jax.tree.leaves`` order)."""

    where: str
    pieces: tuple[str, ...]
    count: Any
    hyperparams: dict[str, Any]
    start: int


_LOCATED: dict = {}
"""Where ``_locate`` found the InjectStates of a state, by the state's structure."""


def _injected_states(state: OptState) -> tuple[list[_Injected], list, Any]:
    """Every InjectState inside ``state`` (nested ones too), the state's leaves and its
    structure. Where they sit is found once per structure (``paths.remembered``)."""
    leaves, structure = jax.tree.flatten(state)
    located = paths.remembered(_LOCATED, structure, (), lambda: (_locate(state), True))
    found = []
    for where, pieces, start, head in located:
        count, hyperparams = head.unflatten(leaves[start : start + head.num_leaves])
        found.append(_Injected(where, pieces, count, hyperparams, start))
    return found, leaves, structure


def _locate(state: OptState) -> list[tuple[str, tuple[str, ...], int, Any]]:
    """(printed path, its pieces, index of its first leaf, the structure of its count and
    hyperparameters) of every InjectState inside ``state``, outer ones before those in
    their ``inner_state``."""
    found = []

    def visit(prefix: tuple[str, ...], subtree: Any, start: int) -> None:
        flat, _ = jax.tree_util.tree_flatten_with_path(
            subtree, is_leaf=lambda x: isinstance(x, InjectState)
        )
        for path, leaf in flat:
            if not isinstance(leaf, InjectState):
                start += 1
                continue
            here = (*prefix, *(jax.tree_util.keystr((key,)) for key in path))
            head = jax.tree.structure((leaf.count, leaf.hyperparams))
            found.append(("".join(here), here, start, head))
            visit((*here, ".inner_state"), leaf.inner_state, start + head.num_leaves)
            start += jax.tree.structure(leaf).num_leaves

    visit((), state, 0)
    return found


def _none_found(injected: list, path: str | None) -> str:
    if not injected:
        return (
            "no injected hyperparameters in this state; build the transform with "
            "gradtx.schedule_injection"
        )
    places = ", ".join(i.where or "the root" for i in injected)
    return f"no injected transform under the path {path!r}; the state has them at {places}"


def get_hyperparams(state: OptState, *, path: str | None = None) -> dict[str, jax.Array]:
    """The current hyperparameters of the injected transform inside ``state``.

    Every optimizer in gradtx is injected, so ``get_hyperparams(state)["learning_rate"]``
    works on all of them, wherever the optimizer sits inside chains and wrappers.

    Args:
        state: an optimizer state holding at least one ``InjectState`` (none is a
            ValueError).
        path: None (every injected transform), ``""`` (the root's), or where several
            injected transforms hold the same name (parameter groups with their own
            learning rate, say), the one to read: a key or field name on its state path
            (``"decay"``, ``"0"``) or whole pieces of it (``"['decay']"``), never a part
            of a name. A name held by several of those picked is a ValueError listing
            the paths; a path that is not a string is a TypeError.

    Returns:
        A dict from name to float32 scalar array.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> state = gtx.adam(1e-3).init({"w": jnp.zeros(2)})
        >>> round(float(gtx.get_hyperparams(state)["learning_rate"]), 6)
        0.001

    Reference: the ``hyperparams`` of ``optax.inject_hyperparams``' state (here found
    wherever it sits in the state).
    """
    injected, _, _ = _injected_states(state)
    found = [(i.where, i.hyperparams) for i in injected if paths.path_matches(i.pieces, path)]
    if not found:
        raise ValueError(_none_found(injected, path))
    merged: dict[str, jax.Array] = {}
    owner: dict[str, str] = {}
    for where, one in found:
        for name, value in one.items():
            if name in merged:
                raise ValueError(
                    f"hyperparameter {name!r} is held by several injected transforms "
                    f"(at {owner[name] or 'the root'} and {where or 'the root'}); pass "
                    f"path= with a key of the one to read (path='' for the root)"
                )
            # an array, also where nnx.Optimizer keeps it in an OptArray variable (an
            # abstract state's ShapeDtypeStruct stays one)
            if not isinstance(value, jax.Array | jax.ShapeDtypeStruct | np.ndarray):
                value = jnp.asarray(value)
            merged[name], owner[name] = value, where
    return merged


def set_hyperparams(state: OptState, *, path: str | None = None, **values: Any) -> OptState:
    """A new state with the named hyperparameters set, in every injected transform that
    holds them (optionally only those ``path`` picks, as in ``get_hyperparams``).

    The values become float32 scalars, so changing them between steps compiles nothing,
    each on the devices and in the memory of the value it replaces (a state kept in host
    memory, ``memory_kind="pinned_host"``, stays there: docs/examples.md).
    A hyperparameter given as a schedule (or traced, inside a jitted step) is recomputed
    from it at the next update (``schedule_injection``); set the ones given as numbers.
    So is a value that an enclosing injector passes in (a gradtx optimizer wrapped in
    ``schedule_injection`` again): set it at the enclosing one (``path=""`` for the
    root) or everywhere (no ``path=``), not at the inner one alone. A NaN, or an
    infinite or negative ``learning_rate``, is a ValueError here (a value known here: a
    traced one, inside ``jit`` or ``vmap``, is not checked); a transform's own ranges
    (``b1`` in [0, 1), say) are checked by its next un-jitted update, not under ``jit``
    or ``vmap``. For a batch of states (``jax.vmap(tx.init)``: an ensemble, a sweep over
    learning rates), map it: ``jax.vmap(lambda s, lr: gtx.set_hyperparams(s,
    learning_rate=lr))(states, lrs)``; a value set on the batch itself is a ValueError
    (it would replace the batch's values by one scalar, and the next vmapped step fail).
    So is one set on the replicas of ``jax.pmap(tx.init)``: set it inside a pmap with
    the training step's ``axis_name``, ``jax.pmap(lambda s: gtx.set_hyperparams(s,
    learning_rate=lr), axis_name="batch")(states)``, whose output is laid out as the
    step's (through ``jax.vmap`` and a ``jnp.full`` made on one device, the next pmapped
    step compiles again).

    Args:
        state: an optimizer state holding at least one ``InjectState`` (none is a
            ValueError).
        path: which injected transforms to set, as in ``get_hyperparams``; None sets
            every one that holds the name.
        **values: name=value, each a real scalar (a number or a 0-d array; an array
            with a shape, a NaN or a non-number is an error); a name that no picked
            transform holds is a ValueError listing the available ones.

    Returns:
        The state with the same structure and dtypes (the values cast to float32).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> state = gtx.adam(1e-3).init({"w": jnp.zeros(2)})
        >>> state = gtx.set_hyperparams(state, learning_rate=1e-4)
        >>> round(float(gtx.get_hyperparams(state)["learning_rate"]), 6)
        0.0001
    """
    injected, leaves, structure = _injected_states(state)
    targets = [i for i in injected if paths.path_matches(i.pieces, path)]
    if not targets:
        raise ValueError(_none_found(injected, path))
    unknown = set(values)
    # What holds for every hyperparameter is checked here, where the value is set (the
    # transform's own ranges are checked by its next un-jitted update, not under jit).
    for name, value in values.items():
        if value is not None and np.ndim(value):
            raise ValueError(
                f"hyperparameter {name} must be a scalar, got shape {np.shape(value)}; for "
                f"a batch of states, jax.vmap(lambda s, v: gtx.set_hyperparams(s, "
                f"name=v))(states, values)"
            )
        # inf where the transform takes it (clip_by_global_norm's max_norm); its own
        # ranges are checked by its next un-jitted update
        check.number(name, value, allow_inf=True)
    if "learning_rate" in values:
        check.non_negative("learning_rate", values["learning_rate"])
    converted = {name: as_float32(name, value) for name, value in values.items()}

    leaves = list(leaves)
    for target in targets:
        hyperparams = target.hyperparams
        # the leaf of each hyperparameter among the state's: after the count's, in the
        # order of the dict's keys (a Flax variable holding it is one leaf too)
        first = target.start + len(jax.tree.leaves(target.count))
        index = {}
        for offset, (key_path, _) in enumerate(jax.tree_util.tree_leaves_with_path(hyperparams)):
            index[key_path[0].key] = first + offset
        for name, value in converted.items():
            if name not in hyperparams:
                continue
            old = hyperparams[name]
            shape = tuple(getattr(old, "shape", ()))
            if shape:
                # a batch of states (jax.vmap(tx.init)): the scalar would replace the
                # batch's values, and the next vmapped step fail
                raise ValueError(
                    f"hyperparameter {name} is stored with shape {list(shape)} at "
                    f"{target.where or 'the root'}: a batch of states (jax.vmap(tx.init)) "
                    f"or replicas (jax.pmap(tx.init)), not one state; set each state's "
                    f"value with jax.vmap(lambda s, v: gtx.set_hyperparams(s, {name}=v))("
                    f"states, values) (values = jnp.full({shape}, value) for the same "
                    f"one), or for replicas jax.pmap(lambda s: gtx.set_hyperparams(s, "
                    f"{name}=value))(states)"
                )
            # an array of its own in each injected state it goes to, on the devices and
            # in the memory of the value it replaces (put into the Flax variable that
            # holds it, if one does, when the state is rebuilt from its leaves)
            placed = layout.placed_like(value.astype(old.dtype), check.flax_variable_value(old))
            leaves[index[name]] = tree.own_array(placed, value)
            unknown.discard(name)
    if unknown:
        available = sorted({n for i in injected for n in i.hyperparams})
        raise ValueError(
            f"no injected hyperparameter named {sorted(unknown)}; available: {available}"
        )
    return structure.unflatten(leaves)
