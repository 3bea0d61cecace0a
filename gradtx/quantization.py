"""Block-wise 8-bit quantization of arrays (Dettmers et al., 2022, "8-bit Optimizers via
Block-wise Quantization"): the dynamic quantization map, each element's code found in
per-bucket thresholds of that map, and ``quantize_blockwise``/``dequantize_blockwise``.
``quantized_state`` (gradtx.wrappers.quantized) keeps an optimizer's state so."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, layout, tree


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
        >>> from gradtx import quantization
        >>> table = jnp.asarray(quantization.dynamic_quantization_map())
        >>> q = quantization.quantize_blockwise(jnp.array([0.5, -2.0, 3.0]), table, block_size=2)
        >>> q.codes.dtype, q.codes.shape, q.absmax.tolist()
        (dtype('uint8'), (3,), [2.0, 3.0])
        >>> values = quantization.dequantize_blockwise(q, table, block_size=2)
        >>> [round(float(v), 4) for v in values]
        [0.4953, -1.9859, 3.0]
    """

    codes: jax.Array
    absmax: jax.Array


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
        >>> from gradtx.quantization import dynamic_quantization_map
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
def code_buckets(signed: bool) -> np.ndarray:
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
    to the last), from the bucket rows ``code_buckets`` made for the map: 4 lookups
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
    rows ``code_buckets`` made for ``table`` (a dynamic map), finds each element's code
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
quantize_compiled = tree.nested_jit(quantize_blockwise, static_argnums=2)
dequantize_compiled = tree.nested_jit(dequantize_blockwise, static_argnums=2)
quantize_unless_equal_compiled = tree.nested_jit(_quantize_unless_equal, static_argnums=3)
