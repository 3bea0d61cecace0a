"""Where arrays live on Explicit mesh axes (``jax.make_mesh``'s default): a sharding read
from an array's type, arrays of one leaf laid out alike where a select or a ``lax.cond``
takes no mixed layouts, and a leaf gathered where it must be one vector. On one device
and on Auto meshes everything here leaves arrays as they are (XLA's partitioner lays
them out), but ``placed_like``: a value put into a state where a concrete array was, on
that array's devices and in its memory."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_SHARDING = operator.attrgetter("sharding")


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


def placed_like(x: Any, old: Any) -> Any:
    """``x``, a new value for a state's leaf (``tree_set``, ``set_hyperparams``), on the
    devices and in the memory of ``old``, the concrete array it replaces, where ``old`` is
    committed to them: a value made here lands uncommitted on the default device, so an
    optimizer state kept in host memory (``memory_kind="pinned_host"``, moved to the
    device inside the step) would hold one leaf in device memory, which a jitted step
    that donates the state reads as a fatal error of jaxlib 0.10.2 ("PjRtBuffer's memory
    kind does not match sharding's memory kind": the process aborts) and one that does
    not donates compiles again for. A sharding over devices of other processes is taken
    only where it replicates the value (each process sets the same one); traced values
    and arrays placed alike are left as they are."""
    if not (concrete_array(x) and concrete_array(old)):
        return x
    if not getattr(old, "committed", getattr(old, "_committed", False)):
        return x
    sharding = old.sharding
    if x.sharding == sharding or not (
        sharding.is_fully_addressable or sharding.is_fully_replicated
    ):
        return x
    # a copy first: put on a sharding of the same devices, x itself would come back as a
    # new array over its own buffer, which the caller (or another leaf given the same
    # value) still holds, and a jitted step donating the state refuses or deletes
    return jax.device_put(jnp.copy(x), sharding)


def concrete_array(x: Any) -> bool:
    """Whether ``x`` is a ``jax.Array`` with a value (not a tracer)."""
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


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
    ndim = len(values[0].shape)
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
    alike = [
        i
        for i, x in enumerate(arrays)
        if isinstance(x, jax.Array | np.ndarray) and getattr(x, "shape", None) == shape
    ]
    target = _joined_sharding([arrays[i] for i in alike]) if shape is not None else None
    if target is None:
        return arrays
    out = list(arrays)
    for i in alike:
        out[i] = _laid_out_in(arrays[i], target)
    return tuple(out)


def layouts_aligned(columns: list[list]) -> list[list]:
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


def varying_manual_axes(x: Any) -> frozenset:
    """The ``shard_map`` axes over which ``x`` varies (its value differs between the
    shards: a slice of a parameter sharded over that axis); empty outside ``shard_map``,
    for a replicated value, and under ``check_vma=False``, which types nothing. The type
    says it (``jax.typeof(x).manual_axis_type.varying``; ``.vma`` in older JAX)."""
    aval = jax.typeof(x) if hasattr(jax, "typeof") else None
    manual = getattr(aval, "manual_axis_type", None)
    varying = getattr(manual, "varying", None) if manual is not None else getattr(aval, "vma", None)
    return frozenset(varying or ())
