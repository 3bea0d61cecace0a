"""``quantized_state``: 8-bit block-wise optimizer state (Dettmers et al., 2022)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, layout, tree
from gradtx.core import GradientTransformation, OptState, TransformLike, _update_with_extra_args


class QuantizedArray(NamedTuple):
    """One state leaf in 8 bits (``quantized_state``): ``value = table[codes] * absmax``
    block by block, ``table`` the signed or unsigned ``dynamic_quantization_map``.

    Attributes:
        codes: uint8, the shape of the state leaf: indices into the quantization map.
        absmax: float32 vector of ``ceil(n / block_size)`` entries (n the leaf's
            elements): the largest |value| of each block of the raveled leaf (the
            blocks are the same on any mesh; ``quantized_state`` says how they are
            sharded).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.wrappers import quantized
        >>> table = jnp.asarray(quantized.dynamic_quantization_map())
        >>> q = quantized.quantize_blockwise(jnp.array([0.5, -2.0, 3.0]), table, block_size=2)
        >>> q.codes.dtype, q.codes.shape, q.absmax.tolist()
        (dtype('uint8'), (3,), [2.0, 3.0])
        >>> values = quantized.dequantize_blockwise(q, table, block_size=2)
        >>> [round(float(v), 4) for v in values]
        [0.4953, -1.9859, 3.0]
    """

    codes: jax.Array
    absmax: jax.Array


class QuantizedState(NamedTuple):
    """The state of ``quantized_state``.

    Attributes:
        inner_state: the inner transform's state with each floating leaf of at least
            ``min_size`` elements (not a scalar, not under an ``exact_fields`` field)
            replaced by a ``QuantizedArray``; the other leaves as they are.
    """

    inner_state: OptState


def dynamic_quantization_map(signed: bool = True) -> np.ndarray:
    """The 256 values of the 8-bit dynamic (tree) quantization data type, sorted.

    Dettmers (2016) and Dettmers et al. (2022, sec. 2): after the sign bit, the leading
    zero bits of a code give a decimal exponent ``10^-e`` (e = 0..6) and the bits after
    the first one are a linear fraction in [0.1, 1]; values near zero get few fraction
    bits and a small exponent, values near 1 many fraction bits. ``signed=False`` uses
    the sign bit for one more fraction bit (for non-negative state such as Adam's second
    moment). With exponent e, a signed map has ``2^(6-e)`` values (midpoints of the
    fraction grid) of each sign, an unsigned one ``2^(7-e)``; 0 and 1 complete the 256.
    This is the construction of ``bitsandbytes.functional.create_dynamic_map``::

        for b in 0..6:                    (e = 6 - b)
            n     = 2^b (signed) or 2^(b+1) (unsigned)
            edges = linspace(0.1, 1, n + 1)
            mids  = (edges[:-1] + edges[1:]) / 2 * 10^(b-6)
            table += mids  (and -mids if signed)
        table = sort(table + [0, 1])           (127 * 2 + 2 = 254 + 2 = 256 values)

    computed in float64 and rounded to float32 (bitsandbytes' linspace runs in float32).

    Args:
        signed: a Python or NumPy bool; True (the default) for state of either sign
            (values in [-0.993, 1]), False for non-negative state (values in [0, 1]).
            Anything else is a TypeError.

    Returns:
        A sorted float32 NumPy array of 256 values, read-only (cached, shared).

    Example:
        >>> from gradtx.wrappers.quantized import dynamic_quantization_map
        >>> table = dynamic_quantization_map(signed=True)
        >>> table.shape, round(float(table[0]), 6), float(table[127]), float(table[-1])
        ((256,), -0.992969, 0.0, 1.0)

    Reference: Dettmers, 2016, "8-Bit Approximations for Parallelism in Deep Learning"
    (the dynamic data type); Dettmers, Lewis, Shleifer & Zettlemoyer, 2022, "8-bit
    Optimizers via Block-wise Quantization" (its unsigned variant, sec. 2).
    """
    # checked before the cache, which would take 1 (or an unhashable array) for True
    check.boolean("signed", signed)
    return _dynamic_quantization_map(bool(signed))


@functools.cache
def _dynamic_quantization_map(signed: bool) -> np.ndarray:
    values = [0.0, 1.0]
    for exponent_bits in range(7):
        fraction_items = 2 ** (exponent_bits + (0 if signed else 1))
        edges = np.linspace(0.1, 1.0, fraction_items + 1)
        midpoints = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (exponent_bits - 6)
        values.extend(midpoints)
        if signed:
            values.extend(-midpoints)
    table = np.sort(np.asarray(values, np.float32))
    table.setflags(write=False)  # cached: shared by every caller
    return table


# The largest block_size quantized_state takes: one absmax per 16M elements is already
# far past the point where blocks buy precision (the paper uses 2048).
MAX_BLOCK_SIZE = 2**24


def _blocks(flat: jax.Array, block_size: int) -> jax.Array:
    """``flat`` zero-padded to whole blocks, shaped ``[number of blocks, block_size]``.

    A leaf smaller than a block is one block of its own size: the same single absmax
    and codes as padding it to ``block_size``, without allocating the padding."""
    block_size = max(min(block_size, flat.size), 1)
    padding = -flat.size % block_size
    return jnp.pad(flat, (0, padding)).reshape(-1, block_size)


def _block_view(shape: tuple[int, ...], block_size: int) -> tuple[int, int, tuple[int, ...]] | None:
    """``(axis, groups, view)``: ``shape`` as ``shape[:axis] + (blocks, block)``, one
    block of the raveled leaf per row of the last axis. Axis ``axis`` falls into
    ``groups`` runs of consecutive indices, each a whole number of blocks, and the axes
    before it stay as they are: a reshape to ``view`` keeps a partitioning of those axes
    and of ``axis`` into whole groups, so a leaf sharded so is quantized shard by shard,
    with no gather. The last such axis, so that as many axes as can stay whole do; None
    where the leaf is not a whole number of blocks (it is then raveled and padded)."""
    size = math.prod(shape)
    block = max(min(block_size, size), 1)
    if size % block or not shape:  # (a 0-d leaf: one block of one element, raveled)
        return None
    inner = 1  # the elements of shape[axis + 1:]
    for axis in range(len(shape) - 1, -1, -1):
        # the fewest indices of this axis that hold whole blocks; at axis 0 always a
        # divisor of shape[0], since block divides shape[0] * inner
        rows = block // math.gcd(block, inner)
        if shape[axis] % rows == 0:
            blocks = shape[axis] * inner // block
            # (a unit axis of blocks is left out: XLA:CPU reduced such a view slower)
            view = (*shape[:axis], *((blocks,) if blocks != 1 else ()), block)
            return axis, shape[axis] // rows, view
        inner *= shape[axis]
    raise AssertionError("unreachable: axis 0 holds whole blocks")


def _view_sharding(
    sharding: Any, shape: tuple[int, ...], axis: int, groups: int, view: tuple[int, ...]
) -> Any:
    """The sharding of ``_block_view``'s view of a leaf whose type carries the explicit
    ``sharding``: the leaf's partitioning of the axes up to ``axis``. None where the
    view would split a shard: an axis after ``axis`` is partitioned, or the ``groups``
    of ``axis`` are not a whole number per shard."""
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    if any(entry is not None for entry in spec[axis + 1 :]):
        return None
    names = () if spec[axis] is None else jax.tree.leaves(spec[axis])
    if groups % math.prod(sharding.mesh.shape[name] for name in names):
        return None
    kept = spec[: len(view) - 1]  # without axis where the view leaves its unit axis out
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*kept, None))


# JAX 0.5.x has Explicit mesh axes but reshapes them by other rules (a view of a leaf
# failed there): it ravels every leaf, gathered where it is sharded explicitly.
_RESHAPE_TAKES_SHARDING = "out_sharding" in inspect.signature(jnp.reshape).parameters


def _as_blocks(x: jax.Array, block_size: int) -> tuple[jax.Array, Any]:
    """``x`` with one block of its raveled elements per row of its last axis, and how to
    put an array of that shape back into ``x``'s shape and sharding: the view of
    ``_block_view`` where it exists and keeps ``x``'s explicit sharding (no gather), else
    ``x`` raveled (gathered where it is sharded explicitly) and zero-padded."""
    shape = jnp.shape(x)
    found = _block_view(shape, block_size) if _RESHAPE_TAKES_SHARDING else None
    sharding = layout.explicit_sharding(x)
    if found is not None:
        axis, groups, view = found
        if sharding is None:
            return jnp.reshape(x, view), lambda y: jnp.reshape(y, shape)
        view_sharding = _view_sharding(sharding, shape, axis, groups, view)
        if view_sharding is not None:
            return (
                jnp.reshape(x, view, out_sharding=view_sharding),
                lambda y: jnp.reshape(y, shape, out_sharding=sharding),
            )
    flat = jnp.ravel(layout.gathered(x))
    return _blocks(flat, block_size), lambda y: jnp.reshape(y.reshape(-1)[: flat.size], shape)


# The float32 line cut into 2**14 buckets by the top 14 bits of a key ordered as the
# floats. For each dynamic map, the 255 decision thresholds between its codes are
# counted below each bucket once, here, and a bucket holds at most 3 of them (checked
# where the counts are made): an element's code is its bucket's count plus its
# comparisons with the thresholds inside the bucket.
_BUCKET_SHIFT = 18
_THRESHOLDS_PER_BUCKET = 3


def _ordered_keys(bits: Any) -> Any:
    """float32 bit patterns (uint32) as keys ordered as the floats (-0 just below +0)."""
    return bits ^ ((bits >> 31) * np.uint32(0x7FFFFFFF) | np.uint32(0x80000000))


def _float_of_key(key: int) -> np.float32:
    """The float32 whose ``_ordered_keys`` is ``key``."""
    bits = key ^ 0x80000000 if key & 0x80000000 else key ^ 0xFFFFFFFF
    return np.uint32(bits).view(np.float32)


def _threshold(lower: np.float32, upper: np.float32) -> np.float32:
    """The smallest float32 x in [lower, upper] nearer ``upper`` than ``lower`` as float32
    arithmetic measures it (``x - lower > upper - x``; a tie goes to ``lower``). Both
    differences are monotone in x, so every x below it is nearer ``lower``."""
    low = int(_ordered_keys(np.asarray(lower).view(np.uint32)))  # nearer lower
    high = int(_ordered_keys(np.asarray(upper).view(np.uint32)))  # nearer upper
    while high - low > 1:
        middle = (low + high) // 2
        x = _float_of_key(middle)
        if x - lower <= upper - x:
            low = middle
        else:
            high = middle
    return _float_of_key(high)


@functools.cache
def _code_buckets(signed: bool) -> np.ndarray:
    """One column per bucket (float32, ``[1 + _THRESHOLDS_PER_BUCKET, 2**14]``): how
    many decision thresholds of the map lie below the bucket's first float, then
    those inside it, then the largest float32 (a NaN or an infinity would trip
    ``jax.debug_nans`` or ``debug_infs``). The code nearest a float32 x is the number of
    thresholds <= x; a float past the map's last code (1.0) counts padding too, and
    takes the last code as it should once the count is capped at 255."""
    table = dynamic_quantization_map(signed)
    thresholds = np.array(
        [_threshold(a, b) for a, b in zip(table[:-1], table[1:], strict=True)], np.float32
    )
    # no threshold is zero or subnormal: a subnormal x, which a CPU may compare as zero,
    # and both zeros, whatever their bucket, count the same thresholds
    assert np.all(np.abs(thresholds) >= np.finfo(np.float32).tiny) and thresholds[-1] <= 1
    keys = _ordered_keys(thresholds.view(np.uint32))
    assert np.all(np.diff(keys.astype(np.int64)) > 0)
    assert np.bincount(keys >> _BUCKET_SHIFT).max() <= _THRESHOLDS_PER_BUCKET
    starts = np.arange(2 ** (32 - _BUCKET_SHIFT), dtype=np.uint64) << _BUCKET_SHIFT
    below = np.searchsorted(keys, starts.astype(np.uint32), side="left")
    rows = np.full((1 + _THRESHOLDS_PER_BUCKET, starts.size), np.finfo(np.float32).max, np.float32)
    rows[0] = below
    for k in range(_THRESHOLDS_PER_BUCKET):
        inside = below + k < np.append(below[1:], thresholds.size)
        rows[1 + k, inside] = thresholds[below[inside] + k]
    rows.setflags(write=False)  # cached: shared by every caller
    return rows


def _lookup(table: jax.Array, indices: jax.Array) -> jax.Array:
    """``table[indices]`` for unsigned indices known to be in bounds (a bare gather),
    partitioned like ``indices`` where their type carries an explicit sharding."""
    sharding = layout.explicit_sharding(indices)
    if sharding is None:
        return table.at[indices].get(mode="promise_in_bounds")
    return table.at[indices].get(mode="promise_in_bounds", out_sharding=sharding)


def _nearest_codes(values: jax.Array, rows: jax.Array) -> jax.Array:
    """The index of the map value nearest each of ``values`` (a tie to the smaller, NaN
    to the last), from the bucket rows ``_code_buckets`` made for the map: 4 lookups
    and 3 comparisons per element, where a binary search takes 8 steps of a loop and
    two more lookups pick the nearer neighbour. The same codes for every float32."""
    flat = rows.reshape(-1)
    bucket = _ordered_keys(jax.lax.bitcast_convert_type(values, jnp.uint32)) >> _BUCKET_SHIFT

    def row(k: int) -> jax.Array:
        return _lookup(flat, bucket + np.uint32(k * rows.shape[1]))

    count = row(0)
    for k in range(1, rows.shape[0]):
        count = count + (row(k) <= values)
    return jnp.where(values != values, 255, jnp.minimum(count, 255).astype(jnp.int32))


def quantize_blockwise(
    x: jax.Array, table: jax.Array, block_size: int, buckets: jax.Array | None = None
) -> QuantizedArray:
    """Block-wise absmax quantization of ``x`` to the nearest value of ``table``.

    ``x`` is raveled and cut into blocks of ``block_size`` elements; each block is
    divided by its largest magnitude (its absmax, stored in float32), so that it lies
    in [-1, 1], and each element becomes the index of the nearest value of the sorted
    256-entry ``table`` (ties go to the smaller value). An outlier then only costs
    precision in its own block (Dettmers et al., 2022, sec. 2.1). ``buckets``, the
    rows ``_code_buckets`` made for ``table`` (a dynamic map), finds each element's code
    with 4 lookups instead of a binary search: the same codes (quantizing 4M elements on
    a CPU: 128 -> 4.3 ms). The blocks are taken from a view of ``x`` that keeps its
    leading axes where its size is a whole number of blocks, so that a leaf sharded
    over them is not gathered (``quantized_state`` says when).
    """
    blocks, unblock = _as_blocks(x, block_size)
    blocks = blocks.astype(jnp.float32)
    absmax = jnp.max(_magnitudes(blocks), axis=-1)
    return _quantized_blocks(blocks, absmax, unblock, table, buckets)


def _magnitudes(blocks: jax.Array) -> jax.Array:
    """``|blocks|`` with 0 for NaN: a block's absmax is that of its numbers, and a NaN
    element takes the last code (``_nearest_codes``). XLA:CPU's vectorized maximum
    skipped a NaN at most places of a block but gave -inf at its last element (every
    value of the block then inf or NaN), and a reduction of two operands kept it."""
    return jnp.where(blocks != blocks, np.float32(0), jnp.abs(blocks))


def _quantized_blocks(
    blocks: jax.Array, absmax: jax.Array, unblock: Any, table: jax.Array, buckets: Any
) -> QuantizedArray:
    """``quantize_blockwise``'s codes and absmax from the float32 ``blocks`` of ``x``
    and their absmax."""
    normalized = blocks / jnp.where(absmax > 0, absmax, 1.0)[..., None]
    if buckets is None:
        above = jnp.clip(jnp.searchsorted(table, normalized), 1, table.size - 1)
        lower, upper = table[above - 1], table[above]
        nearest = jnp.where(normalized - lower <= upper - normalized, above - 1, above)
    else:
        nearest = _nearest_codes(normalized, buckets)
    # absmax is replicated where the leaf's type carries a sharding (4 / block_size
    # bytes a parameter): its blocks may lie across the leaf's partitioned axes
    return QuantizedArray(unblock(nearest.astype(jnp.uint8)), jnp.ravel(layout.gathered(absmax)))


def _quantize_unless_equal(
    x: jax.Array, before: jax.Array, table: jax.Array, block_size: int, buckets: jax.Array
) -> tuple[QuantizedArray, jax.Array]:
    """``quantize_blockwise(x, table, block_size, buckets)`` and whether ``x`` equals
    ``before`` (of its shape), each block's absmax and equality taken in one pass over
    both (a reduction of two operands): comparing the whole leaf in a pass of its own
    made XLA:CPU keep the dequantized moments and the new ones as buffers, 4.5 -> 2.0
    parameter-sized temporaries for 8-bit Adam and ~37 -> ~20 ms a step on 4M."""
    raw, unblock = _as_blocks(x, block_size)
    blocks = raw.astype(jnp.float32)
    before_blocks, _ = _as_blocks(before, block_size)
    if before_blocks.shape != blocks.shape:  # laid out otherwise (explicit shardings)
        absmax = jnp.max(_magnitudes(blocks), axis=-1)
        return _quantized_blocks(blocks, absmax, unblock, table, buckets), jnp.all(x == before)
    # compared in their own dtypes (float64 moments under x64 are not rounded first)
    absmax, equal = _absmax_and_equal(blocks, raw == before_blocks)
    return _quantized_blocks(blocks, absmax, unblock, table, buckets), jnp.all(equal)


@jax.custom_jvp
def _absmax_and_equal(blocks: jax.Array, equal: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each block's absmax (``_magnitudes``) and whether all its ``equal`` flags hold, in
    one reduction of the two; its derivative is the absmax's as ``jnp.max`` gives it
    (JAX has none for a reduction of two operands)."""
    return jax.lax.reduce(
        (_magnitudes(blocks), equal),
        (np.float32(-np.inf), True),
        lambda a, b: (jax.lax.max(a[0], b[0]), a[1] & b[1]),
        (blocks.ndim - 1,),
    )


@_absmax_and_equal.defjvp
def _absmax_and_equal_jvp(primals, tangents):
    blocks, equal = primals
    outputs = _absmax_and_equal(blocks, equal)
    _, absmax_tangent = jax.jvp(
        lambda b: jnp.max(_magnitudes(b), axis=-1), (blocks,), (tangents[0],)
    )
    return outputs, (absmax_tangent, np.zeros(outputs[1].shape, jax.dtypes.float0))


def dequantize_blockwise(quantized: QuantizedArray, table: jax.Array, block_size: int) -> jax.Array:
    """The float32 values ``table[code] * absmax`` of a ``QuantizedArray`` made with
    ``quantize_blockwise(x, table, block_size)``, in the shape of ``x``."""
    codes, absmax = quantized
    blocks, unblock = _as_blocks(codes, block_size)
    scales = jnp.reshape(layout.gathered(absmax), blocks.shape[:-1])
    return unblock(_lookup(table, blocks) * scales[..., None])


# One compiled program per leaf shape where quantized_state quantizes or dequantizes
# outside a trace (an un-jitted init, the first un-jitted update, which the eager
# kernels run op by op): op by op, each of their ~30 operations compiled on its own, ~0.7
# s a leaf shape. Inside a trace (jit, the eager kernels) the calls are inlined.
_quantize_compiled = tree.nested_jit(quantize_blockwise, static_argnums=2)
_dequantize_compiled = tree.nested_jit(dequantize_blockwise, static_argnums=2)
_quantize_unless_equal_compiled = tree.nested_jit(_quantize_unless_equal, static_argnums=3)


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
    """``dequantize_blockwise`` of a leaf's codes and absmax with its table."""

    def dequantize(codes: jax.Array, absmax: jax.Array, table: jax.Array) -> jax.Array:
        return _dequantize_compiled(QuantizedArray(codes, absmax), table, block_size)

    return dequantize


def _requantize_with(block_size: int) -> Any:
    """A leaf's new value quantized with its table; its old codes and absmax where the
    inner update left it as it was."""

    def requantize(new, before, old_codes, old_absmax, table, buckets) -> QuantizedArray:
        # A leaf the inner update left as it was keeps its codes: quantizing the
        # dequantized values again is not the identity (the signed map has 1 but not -1,
        # so a block led by a negative value shrinks by 0.7% each time), and multi_steps
        # leaves the state alone on every accumulating micro-step.
        fresh, unchanged = _quantize_unless_equal_compiled(new, before, table, block_size, buckets)
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
                jnp.asarray(_code_buckets(signed)),
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
            return _quantize_compiled(leaf, table, block_size, buckets)

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
