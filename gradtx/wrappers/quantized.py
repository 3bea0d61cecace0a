"""``quantized_state``: 8-bit block-wise optimizer state (Dettmers et al., 2022)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, layout, tree
from gradtx.core import GradientTransformation, OptState, TransformLike, _update_with_extra_args
from gradtx.quantization import (
    MAX_BLOCK_SIZE,
    QuantizedArray,
    code_buckets,
    dequantize_compiled,
    dynamic_quantization_map,
    quantize_compiled,
    quantize_unless_equal_compiled,
)


class QuantizedState(NamedTuple):
    """The state of ``quantized_state``.

    Attributes:
        inner_state: the inner transform's state with each floating leaf of at least
            ``min_size`` elements (not a scalar, not under an ``exact_fields`` field)
            replaced by a ``QuantizedArray``; the other leaves as they are.
    """

    inner_state: OptState


def _path_names(path: tuple) -> set[str]:
    names = set()
    for key in path:
        for attribute in ("name", "key"):
            value = getattr(key, attribute, None)
            if isinstance(value, str):
                names.add(value)
    return names


def _is_stored_quantized_array(node: Any) -> bool:
    return isinstance(node, Mapping) and set(node) == set(QuantizedArray._fields)


def _fields(node: Any) -> list[tuple[str, Any]] | None:
    """``(name, value)`` of a NamedTuple's fields or of a dataclass's pytree fields (a
    user's ``flax.struct.dataclass`` state); None for another node."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return [(name, getattr(node, name)) for name in node._fields]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return [
            (field.name, getattr(node, field.name))
            for field in dataclasses.fields(node)
            if field.metadata.get("pytree_node", True)  # flax's static fields are not state
        ]
    return None


# Optax's states that hold copies of the parameters or of the gradients, which their
# types cannot declare: MultiSteps' accumulator, schedule-free's z, the initial params of
# optax.contrib's parameter-free optimizers, SAM's cache. Rounded to 8 bits, MultiSteps'
# sum moved SGD's params by 7e-3 and schedule-free's z by 3e-2 in 24 steps.
_OPTAX_EXACT_FIELDS = {
    "MultiStepsState": ("acc_grads",),
    "ScheduleFreeState": ("z",),
    "SAMState": ("cache",),
    "DoGState": ("init_params",),
    "DoWGState": ("init_params",),
    "MadgradState": ("x0",),
    "MechanicState": ("x0",),
    "ProdigyState": ("params0",),
    "COCOBState": ("init_particles",),
}


def _optax_exact_fields(state_type: type) -> tuple[str, ...]:
    if not state_type.__module__.startswith("optax."):
        return ()
    return _OPTAX_EXACT_FIELDS.get(state_type.__name__, ())


def _exact_leaves(state: Any) -> list:
    """The leaves of the fields that a state's type declares as copies of the parameters
    or of the gradients (``exact_fields``: lookahead's slow weights, multi_steps'
    accumulator, the parameter averages; Optax's alike, ``_OPTAX_EXACT_FIELDS``), which
    8 bits would round."""
    found: list = []
    fields = _fields(state)
    if fields is not None:
        exact = getattr(type(state), "exact_fields", ()) or _optax_exact_fields(type(state))
        for name, child in fields:
            if name in exact:
                found.extend(jax.tree.leaves(child))
            else:
                found.extend(_exact_leaves(child))
    elif isinstance(state, Mapping):
        for child in state.values():
            found.extend(_exact_leaves(child))
    elif isinstance(state, list | tuple):
        for child in state:
            found.extend(_exact_leaves(child))
    return found


def _in_the_form_of(received: Any, new: QuantizedArray) -> Any:
    """``new`` in the container ``received`` came in: a ``{"codes", "absmax"}`` mapping
    from Flax's ``nnx.Optimizer`` is given back as the same mapping, so a wrapper
    around this one (``multi_steps``, ``apply_if_finite``), which combines the old and
    the new state, meets one structure."""
    if not _is_stored_quantized_array(received):
        return new
    paths, treedef = jax.tree_util.tree_flatten_with_path(received)
    return treedef.unflatten([getattr(new, path[0].key) for path, _ in paths])


# the metadata by which Flax lays out a Variable's value on a mesh (flax 0.12 names it
# out_sharding; earlier releases sharding or sharding_names)
_FLAX_SHARDING_METADATA = ("out_sharding", "sharding", "sharding_names", "optimizer_sharding")


def _as_nnx_gives_back(state: Any) -> Any:
    """``state`` with each ``QuantizedArray`` that a Flax ``nnx.Variable`` holds (an init
    from ``nnx.Optimizer``, given the params' Variables) held as the ``nnx.State``
    mapping that a step under ``nnx.jit`` gives back, and without the parameter's
    partitioning in the Variable's metadata. As the NamedTuple, the state changed
    structure at the first step and the second step compiled the training step again;
    with the partitioning, Flax laid out codes and absmax by it, which absmax, a vector
    of blocks, need not divide (a ValueError when the optimizer was made): the codes
    and absmax keep the layout this wrapper gives them."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return state

    def held(leaf: Any) -> Any:
        value = check.flax_variable_value(leaf)
        if check.is_flax_variable(leaf) and isinstance(value, QuantizedArray):
            metadata = leaf.get_metadata()
            unpartitioned = {k: None for k in _FLAX_SHARDING_METADATA if k in metadata}
            return leaf.replace(nnx.State(value._asdict()), **unpartitioned)
        return leaf

    return jax.tree.map(held, state, is_leaf=check.is_flax_variable)


def _state_names(node: Any) -> set[str]:
    """Every NamedTuple or dataclass field and string dict key in a state, empty subtrees
    included."""
    names: set[str] = set()
    fields = _fields(node)
    if fields is not None:
        children = fields
    elif isinstance(node, Mapping):
        children = list(node.items())
    elif isinstance(node, list | tuple):
        children = [(None, child) for child in node]
    else:
        return names
    for name, child in children:
        if isinstance(name, str):
            names.add(name)
        names |= _state_names(child)
    return names


def _field_names(name: str, value: Any) -> frozenset[str]:
    """``value`` as a set of field names: a collection of strings, not one string."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be a collection of field names such as ('nu',), got {value!r}"
        )
    names = tuple(value)
    for field in names:
        if not isinstance(field, str):
            raise TypeError(f"{name} must hold field names (strings), got {field!r} in {names!r}")
    return frozenset(names)


_UNSIGNED_FIELDS = ("nu", "nu_max", "sum_of_squares", "e_g", "e_x")


def _dequantize_with(block_size: int) -> Any:
    """``quantization.dequantize_blockwise`` of a leaf's codes and absmax with its table."""

    def dequantize(codes: jax.Array, absmax: jax.Array, table: jax.Array) -> jax.Array:
        return dequantize_compiled(QuantizedArray(codes, absmax), table, block_size)

    return dequantize


def _requantize_with(block_size: int) -> Any:
    """A leaf's new value quantized with its table; its old codes and absmax where the
    inner update left it as it was."""

    def requantize(new, before, old_codes, old_absmax, table, buckets) -> QuantizedArray:
        # A leaf the inner update left as it was keeps its codes: quantizing the
        # dequantized values again is not the identity (the signed map has 1 but not -1,
        # so a block led by a negative value shrinks by 0.7% each time), and multi_steps
        # leaves the state alone on every accumulating micro-step.
        fresh, unchanged = quantize_unless_equal_compiled(new, before, table, block_size, buckets)
        # laid out as they came in on an Explicit mesh (a partitioning the user or a
        # restore gave the state), where this update gathers or replicates them
        return QuantizedArray(
            jnp.where(unchanged, old_codes, layout.laid_out_like(fresh.codes, old_codes)),
            jnp.where(unchanged, old_absmax, layout.laid_out_like(fresh.absmax, old_absmax)),
        )

    return requantize


def quantized_state(
    inner: TransformLike,
    *,
    block_size: int = 2048,
    min_size: int = 4096,
    unsigned_fields: Iterable[str] = _UNSIGNED_FIELDS,
) -> GradientTransformation:
    r"""Keeps the large floating leaves of ``inner``'s state in 8 bits, block-wise.

    8-bit optimizers (Dettmers, Lewis, Shleifer & Zettlemoyer, 2022): every floating
    state leaf with at least ``min_size`` elements is stored as uint8 codes into the
    dynamic quantization map (``dynamic_quantization_map``) plus one float32 absmax per
    block of ``block_size`` elements. Each update::

        s      = table[codes] * absmax            (dequantize, float32)
        u, s'  = inner.update(g, s, params)       (the inner algorithm, unchanged)
        codes, absmax = quantize(s')              (per block: s' / max|s'|, nearest code)

    For Adam that is about 2 bytes of state per parameter (1 byte for m, 1 for v, and
    4 / block_size for the scales) instead of 8. Leaves under a field named in
    ``unsigned_fields`` (second moments, which are never negative) use the unsigned map
    and its extra bit of precision, as the paper does for Adam's second state. Scalar
    (0-d) leaves, such as step counters and injected hyperparameters, are never
    quantized, whatever ``min_size``; nor are leaves smaller than ``min_size`` (biases,
    norms: bitsandbytes' default threshold is 4096) or complex leaves: they stay as
    they are, so ``get_hyperparams`` and ``set_hyperparams`` work through the wrapper.

    Wrap transforms whose state is moment-like (running averages that tolerate a
    relative error of ~1%): the Adam family, RMSProp, momentum. Fields that a state type
    declares exact (its ``exact_fields``: ``lookahead``'s slow weights, ``multi_steps``'
    gradient accumulator, the averages of ``ema_params``, ``average_params``,
    ``averaged_sgd`` and Keras' ``use_ema``) are kept as they are, wherever they sit:
    rounded to 8 bits they moved the params by 4.5e-2 (``lookahead``) and 1.9e-2
    (``multi_steps``) in 12 steps. A state of your own that holds copies of the
    parameters needs the same declaration (a class attribute ``exact_fields`` of its
    NamedTuple or ``flax.struct.dataclass``); Optax's are known by name
    (``optax.MultiSteps``' accumulator, ``optax.contrib.schedule_free``'s ``z``, the
    initial params of ``optax.contrib``'s DoG, Prodigy, Mechanic, MADGRAD and COCOB,
    SAM's cache). The paper's stable embedding layer is a model change and not part of
    this wrapper.

    Sharded parameters (FSDP, ZeRO): the blocks are runs of the raveled leaf, whatever
    the mesh, so a state restores onto another mesh. A leaf partitioned over its leading
    axes so that each shard holds whole blocks (a ``(4096, 768)`` kernel sharded
    ``P("data")`` over 8 devices: 512 rows, 192 blocks of 2048 a shard; in general the
    partitioned axes come before the axis where the blocks start and end, and that axis
    splits into whole runs of them) keeps its state sharded: its codes are laid out like
    the parameter, each device quantizes its own shard, and no step gathers the leaf,
    on an Explicit mesh or an Auto one (there XLA's partitioner decides, and jitted
    ``init`` lays out its constants replicated, as Adam's: give the state's
    ``out_shardings``). On an Explicit mesh absmax is replicated (4 / block_size bytes
    a parameter), and a leaf whose blocks cross its shards (partitioned over a later
    axis, or shards that end inside a block) is gathered, its codes replicated: ~2
    bytes of Adam state a parameter on each device, where the sharded float32 state is
    8 / n on n devices. A state laid out otherwise (by you, a restore) keeps that layout
    through updates; ``nnx.Optimizer``, which lays out each state leaf by its
    parameter's partitioning metadata, leaves codes and absmax as this wrapper lays them
    out (absmax, a vector of blocks, need not divide the parameter's partitioning).
    With a 1-ulp difference in a moment between the partitioned and
    the one-device program (XLA may fuse them differently), an element at a decision
    threshold takes the neighbouring code, as any float32 rounding of the moments
    would.

    The codes have no NaN: a NaN moment element (from a NaN gradient) is stored as its
    block's absmax, so the state is finite again from the next step where the
    unquantized one stays NaN in that element. The step that met the NaN gives a NaN
    update either way; wrap the optimizer in ``apply_if_finite`` to skip such steps.

    Args:
        inner: the transform whose state is quantized (e.g. ``gtx.adam(1e-3)``).
        block_size: elements per block sharing one absmax, an int in [1, 2**24] (the
            paper uses 2048; smaller blocks are more precise and cost 4 / block_size
            bytes each).
        min_size: leaves with fewer elements are kept in their own dtype, an int >= 0
            (0 or 1: every non-empty floating leaf except scalars is quantized).
        unsigned_fields: state field (NamedTuple or dataclass) or dict key names whose
            leaves are non-negative, a collection of strings such as ``("nu",)``; a
            single string is a TypeError
            (it would otherwise be read as its characters), and a name beyond the
            defaults that no field of the inner state has is a ValueError at init (a
            typo would otherwise leave the second moment on the signed map).

    State: ``QuantizedState(inner_state)``, the inner state with each quantized leaf
    replaced by ``QuantizedArray(codes, absmax)`` (a ``{"codes", "absmax"}`` mapping
    is read as one too: Flax's ``nnx.Optimizer`` stores the state by path and gives it
    back in that form, so an init given the params' ``nnx.Variable``s holds it as that
    ``nnx.State`` from the start, and a training step compiles once). Its blocks need
    concrete shapes: a shape-polymorphic
    ``jax.export`` (symbolic parameter dimensions) is a ValueError naming the leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.quantized_state(gtx.adam(1e-3), min_size=0)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([0.5, -1.0, 2.0])}, state, params)
        >>> [round(float(u), 6) for u in updates["w"]]
        [-0.001, 0.001, -0.001]
        >>> gtx.tree_get(state, "mu")["w"].codes.dtype
        dtype('uint8')

    Reference: Dettmers, Lewis, Shleifer & Zettlemoyer, 2022, "8-bit Optimizers via
    Block-wise Quantization" (ICLR).
    """
    if isinstance(block_size, int | np.integer) and block_size > MAX_BLOCK_SIZE:
        raise ValueError(
            f"block_size must be at most {MAX_BLOCK_SIZE} (one absmax per block; the paper "
            f"uses 2048), got {block_size!r}"
        )
    block_size = check.positive_int("block_size", block_size)
    min_size = check.non_negative_int("min_size", min_size)
    unsigned_fields = _field_names("unsigned_fields", unsigned_fields)
    # names beyond the defaults (which cover several optimizers) must be in the state
    checked_fields = unsigned_fields - set(_UNSIGNED_FIELDS)
    inner_update = _update_with_extra_args(inner, "inner")

    # The tables are made into arrays at each init and update, not here: an array held by
    # the transform would tie it to a device and start the XLA backend when it is built
    # (before jax.distributed.initialize, which then refuses to run), and keep device
    # buffers alive as long as the transform (a jit cache that holds it as a static).
    def device_tables() -> dict[bool, tuple[jax.Array, jax.Array]]:
        return {
            signed: (
                jnp.asarray(dynamic_quantization_map(signed)),
                jnp.asarray(code_buckets(signed)),
            )
            for signed in (True, False)
        }

    def is_quantized(path: tuple, leaf: Any) -> bool:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            return False
        # Scalars (counters, injected hyperparameters) are never quantized: a
        # hyperparameter must read back as the number it was set to.
        shape = jnp.shape(leaf)
        if not all(isinstance(d, int | np.integer) for d in shape):
            raise ValueError(
                f"quantized_state needs concrete shapes (whether a state leaf is quantized "
                f"depends on its size, its blocks on its shape), but the state leaf at "
                f"{jax.tree_util.keystr(path) or 'the root'} has shape {shape} (a symbolic "
                "shape of a shape-polymorphic jax.export)"
            )
        return len(shape) > 0 and int(np.prod(shape)) >= max(min_size, 1)

    def signed(path: tuple) -> bool:
        return not (_path_names(path) & unsigned_fields)

    def quantize_tree(inner_state: OptState) -> OptState:
        exact = {id(leaf) for leaf in _exact_leaves(inner_state)}
        tables = device_tables()

        def quantize(path, leaf):
            if id(leaf) in exact or not is_quantized(path, leaf):
                return leaf
            table, buckets = tables[signed(path)]
            return quantize_compiled(leaf, table, block_size, buckets)

        return jax.tree_util.tree_map_with_path(quantize, inner_state)

    def init(params):
        inner_state = inner.init(params)
        if checked_fields:
            present = _state_names(inner_state)
            unknown = sorted(checked_fields - present)
            if unknown:
                raise ValueError(
                    f"unsigned_fields names {unknown}, which no field of the inner state "
                    f"has (its fields and keys: {sorted(present)})"
                )
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(inner_state)):
            return QuantizedState(_as_nnx_gives_back(jax.eval_shape(quantize_tree, inner_state)))
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(inner_state)):
            # Under jit the inner init's moments are constants (zeros), and XLA folded
            # their quantization element by element on the host: 16 s to compile 8-bit
            # Adam's init on six GPT-2-sized leaves. Tied to the params, they are not
            # constants.
            inner_state = jax.lax.optimization_barrier((inner_state, params))[0]
        return QuantizedState(_as_nnx_gives_back(quantize_tree(inner_state)))

    def update(updates, state, params=None, **extra):
        check.state_of("quantized_state", state, QuantizedState)
        is_node = lambda x: isinstance(x, QuantizedArray) or _is_stored_quantized_array(x)  # noqa: E731
        flat, treedef = jax.tree_util.tree_flatten_with_path(state.inner_state, is_leaf=is_node)

        def stored(leaf):  # a QuantizedArray, also as Flax's nnx.Optimizer gives it back
            if _is_stored_quantized_array(leaf):
                return QuantizedArray(leaf["codes"], leaf["absmax"])
            return leaf

        # The quantized leaves in the eager kernels (tree.map_leaves, 32 leaves a call,
        # the table an argument of each): op by op, un-jitted 8-bit Adam took ~90x the
        # time of Adam on 1,000 leaves.
        chosen = [i for i, (_, leaf) in enumerate(flat) if is_node(leaf)]
        old = [stored(flat[i][1]) for i in chosen]
        tables = device_tables() if chosen else {}
        leaf_tables = [tables[signed(flat[i][0])][0] for i in chosen]
        leaf_buckets = [tables[signed(flat[i][0])][1] for i in chosen]
        given = [leaf for _, leaf in flat]
        values = tree.map_leaves(
            _dequantize_with(block_size),
            [q.codes for q in old],
            [q.absmax for q in old],
            leaf_tables,
        )
        for i, value in zip(chosen, values, strict=True):
            given[i] = value
        updates, new_inner = inner_update(updates, treedef.unflatten(given), params, **extra)
        new_leaves = treedef.flatten_up_to(new_inner)

        kept = tree.map_leaves(
            _requantize_with(block_size),
            [new_leaves[i] for i in chosen],
            [given[i] for i in chosen],
            [q.codes for q in old],
            [q.absmax for q in old],
            leaf_tables,
            leaf_buckets,
        )
        requantized = list(new_leaves)
        for i, leaf in zip(chosen, kept, strict=True):
            requantized[i] = _in_the_form_of(flat[i][1], leaf)
        return updates, QuantizedState(treedef.unflatten(requantized))

    return GradientTransformation(init, update)
