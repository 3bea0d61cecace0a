"""Checks of the trees a transform is given: structure, leaf dtypes and shapes.

Each raises where the mistake is made, naming the path of the first leaf at fault
(``check_same_structure``, ``check_inexact``, ``check_leaves``, ``check_real``); the
cheap tests run on every update, the walks that name a leaf only when one fails.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from gradtx import numerics


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
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
    ref_paths = leaves_with_paths(reference)
    other_paths = leaves_with_paths(other)
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


def check_inexact(tree: Any, what: str) -> None:
    """Raises TypeError naming the first leaf whose dtype is not floating or complex, or
    is a float of fewer than 16 bits (``numerics.is_narrow_float``)."""
    for path, leaf in leaves_with_paths(tree):
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
        dtype = numerics.leaf_dtype(leaf)
        if numerics.is_narrow_float(dtype):
            raise TypeError(
                f"{what} at {path or 'the root'} has dtype {dtype.name}; gradient "
                f"transformations do not run in floats of fewer than 16 bits (no update "
                f"of such a parameter or moment would survive rounding). Keep the "
                f"parameters in float32 or bfloat16 and cast them to {dtype.name} where "
                f"the model computes."
            )
        if not jnp.issubdtype(dtype, jnp.inexact):
            # float0's NumPy name is "void"; a NumPy leaf's own dtype (int64, not int32)
            own = jnp.dtype(leaf.dtype) if hasattr(leaf, "dtype") else dtype
            name = "float0" if own == jax.dtypes.float0 else own.name
            raise TypeError(
                f"{what} at {path or 'the root'} has dtype {name}; gradient "
                f"transformations need floating or complex leaves. Mask integer "
                f"leaves out (e.g. gradtx.masked or gradtx.partition with freeze)."
            )


def check_leaves(tree: Any, arg_tuples: list[tuple], indices: list[int] | None = None) -> None:
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


def leaf_path(tree: Any, index: int) -> str:
    """The printed path of the ``index``-th leaf of ``tree`` (``jax.tree.leaves`` order,
    which skips ``None``)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.keystr(flat[index][0])


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else jnp.shape(x)


def check_inexact_leaves(tree: Any, leaves: list, what: str) -> None:
    """``check_inexact(tree, what)`` where one of ``tree``'s ``leaves`` is not an array of
    a dtype transforms run in: a cached test of each leaf's dtype first (~0.1 ms on
    1,000 leaves), the walk that names the leaf only then. For a wrapper that hides the
    leaves from its inner transform (``flatten``'s vector)."""
    for leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not _is_inexact(dtype):
            check_inexact(tree, what)
            return


def check_real(tree: Any, what: str, owner: str, why: str) -> None:
    """Raises TypeError naming the first complex leaf of ``tree`` (the ``what``, e.g.
    "update", at its path) for ``owner``, a transform that needs real values, and
    ``why``: a cached test of each leaf's dtype first (0.46 ms on a dict of 1,000
    leaves, most of it flattening), the walk that names the leaf only then."""
    for leaf in jax.tree.leaves(tree):
        dtype = getattr(leaf, "dtype", None)
        if isinstance(leaf, complex) or (dtype is not None and _is_complex(dtype)):
            break
    else:
        return
    for path, leaf in leaves_with_paths(tree):
        if isinstance(leaf, complex) or (leaf is not None and jnp.iscomplexobj(leaf)):
            dtype = "complex" if isinstance(leaf, complex) else jnp.dtype(leaf.dtype).name
            raise TypeError(
                f"{owner} needs real {what}s; the {what} at {path or 'the root'} is {dtype} ({why})"
            )


@functools.cache
def _is_complex(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.complexfloating))


@functools.cache
def _is_inexact(dtype: Any) -> bool:
    """Floating or complex, and not a float of fewer than 16 bits (``check_inexact``
    names a leaf of either)."""
    return bool(jnp.issubdtype(dtype, jnp.inexact)) and not numerics.is_narrow_float(dtype)
