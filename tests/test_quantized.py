"""quantized_state: 8-bit block-wise optimizer state against its definition (Dettmers et
al., 2022) and against fp32 Adam."""

from __future__ import annotations

import gc

import jax
import jax.export
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import eager_kernels
from gradtx import quantization as blockwise
from gradtx.quantization import dequantize_blockwise, quantize_blockwise
from gradtx.wrappers import quantized as quantized_wrapper
from tests.compilations import compiled_step, count_compilations
from tests.reference import quantization


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_is_the_papers_data_type(signed):
    table = gtx.dynamic_quantization_map(signed)
    np.testing.assert_array_equal(table, quantization.dynamic_map(signed))
    assert table.shape == (256,) and table.dtype == np.float32
    assert np.all(np.diff(table) > 0), "256 distinct values, sorted"
    assert table[-1] == 1.0 and 0.0 in table
    if signed:
        assert table[0] < -0.99
        np.testing.assert_allclose(np.sort(-table[table < 0]), table[(table > 0) & (table < 1)])
    else:
        assert table[0] == 0.0
    # dynamic: relative resolution ~1-10% over six decades, not a linear grid
    assert np.min(np.abs(table[table != 0])) < 1e-6


# (7, 50): 350 elements, raveled and padded; the others a whole number of blocks, taken
# from a view that keeps the leading axes: (3, 8, 16, 8) from axis 2, (640,) and
# (24, 40) from axis 0, (5, 7) one block smaller than block_size; a 0-d leaf is one
# block of one element, and an empty one has no blocks (an AssertionError and a
# TypeError of a reshape before)
@pytest.mark.parametrize(
    "shape", [(7, 50), (3, 8, 16, 8), (640,), (24, 40), (5, 7), (), (0,), (4, 0, 3)]
)
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_picks_the_nearest_code_of_each_block_normalized_by_its_absmax(rng, signed, shape):
    block_size = 64
    size = int(np.prod(shape))
    scales = np.logspace(-6, 1, size, dtype=np.float32)[rng.permutation(size)].reshape(shape)
    x = rng.standard_normal(shape).astype(np.float32) * scales
    if not signed:
        x = np.abs(x)
    flat = x.reshape(-1)  # a view: the zeros land in x
    flat[:3] = 0.0
    flat[128:192] = 0.0  # a whole block of zeros: its absmax is 0 and every code decodes to 0
    table = gtx.dynamic_quantization_map(signed)
    codes, absmax = quantize_blockwise(jnp.asarray(x), jnp.asarray(table), block_size)
    want_codes, want_absmax = quantization.quantize(x, table, block_size)
    assert codes.dtype == jnp.uint8 and codes.shape == x.shape
    np.testing.assert_array_equal(absmax, want_absmax)
    np.testing.assert_array_equal(codes, want_codes)
    restored = dequantize_blockwise((codes, absmax), jnp.asarray(table), block_size)
    np.testing.assert_array_equal(
        restored, quantization.dequantize(want_codes, want_absmax, table, block_size)
    )


def test_blocks_are_read_from_a_view_that_keeps_as_many_leading_axes_as_can_stay_whole():
    """quantized_state quantizes a leaf sharded over its leading axes shard by shard
    (tests/test_sharding.py) when the view of its blocks keeps those axes: the last axis
    that falls into runs of whole blocks (groups), and the shape regrouped before it."""
    view = blockwise._block_view
    assert view((4096, 768), 2048) == (0, 512, (1536, 2048))  # 8 rows hold 3 blocks
    assert view((64, 4096), 2048) == (1, 2, (64, 2, 2048))
    assert view((8, 48, 32), 256) == (1, 6, (8, 6, 256))
    assert view((2048, 2048), 2048) == (1, 1, (2048, 2048))  # no unit axis of blocks
    assert view((5, 7), 2048) == (0, 1, (35,))  # a leaf smaller than a block
    assert view((5000,), 2048) is None and view((3, 1000), 2048) is None  # padded
    assert view((), 2048) is None and view((0,), 2048) == (0, 0, (0, 1))


@pytest.mark.parametrize("signed", [True, False])
def test_the_bucketed_lookup_gives_the_codes_of_the_binary_search_for_every_float(rng, signed):
    """quantized_state finds each element's code from per-bucket rows of the map's
    decision thresholds (quantize_blockwise's ``buckets``) instead of jnp.searchsorted
    and a comparison of the two neighbours: the same codes on random bit patterns
    (subnormals, infinities, NaNs of either sign and both zeros among them), the map's
    values, the midpoints between codes, the thresholds, each of these 1 to 3 floats
    away, and normalized values. Counting the codes below each bucket and comparing the
    two neighbours (3 and 2 lookups), 8-bit Adam compiled in 4.8-5.9 s on 100 leaves of
    4,096 (3.0-3.3 s now) and stepped in 6.7-7.2 ms (4.4-5.5 ms)."""
    table = gtx.dynamic_quantization_map(signed)
    buckets = blockwise.code_buckets(signed)
    thresholds = np.sort(buckets[1:][buckets[1:] < np.finfo(np.float32).max])
    assert thresholds.size == table.size - 1  # each threshold in one bucket, once
    # each is the first float32 that NumPy's float32 arithmetic finds nearer the upper
    # of two neighbouring codes (the float below it: nearer the lower, or a tie)
    lower, upper = table[:-1], table[1:]
    below = np.nextafter(thresholds, np.float32(-np.inf))
    assert np.all((lower < thresholds) & (thresholds <= upper))
    assert np.all(thresholds - lower > upper - thresholds)
    assert np.all(below - lower <= upper - below)
    mids = (table[1:] + table[:-1]) / 2
    near = []
    for anchors in (table, mids, thresholds):
        up = down = anchors
        for _ in range(3):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
            near += [up, down]
    nans = np.uint32([0x7FC00000, 0xFFC00000, 0xFF800001, 0xFFFFFFFF, 0x7F800001])
    values = np.concatenate(
        [
            rng.integers(0, 2**32, size=200_000, dtype=np.uint64)
            .astype(np.uint32)
            .view(np.float32),
            table,
            mids,
            thresholds,
            *near,
            nans.view(np.float32),
            np.float32([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-38, -1e-38, -2.0, 2.0]),
            (rng.uniform(-1.0, 1.0, 100_000) * 10.0 ** rng.integers(-9, 1)).astype(np.float32),
        ]
    )
    assert values.dtype == np.float32

    def binary_search(values):  # quantize_blockwise's own path for any sorted table
        above = jnp.clip(jnp.searchsorted(jnp.asarray(table), values), 1, table.size - 1)
        lower, upper = jnp.asarray(table)[above - 1], jnp.asarray(table)[above]
        return jnp.where(values - lower <= upper - values, above - 1, above)

    expected = np.asarray(jax.jit(binary_search)(jnp.asarray(values)))
    lookup = jax.jit(blockwise._nearest_codes)
    actual = np.asarray(lookup(jnp.asarray(values), jnp.asarray(buckets)))
    np.testing.assert_array_equal(actual, expected)
    assert expected.max() == 255 and expected.min() == 0


def test_round_trip_error_is_at_most_half_a_gap_of_the_map_times_the_block_absmax(rng):
    block_size = 256
    x = rng.standard_normal(3000).astype(np.float32)
    x[5] = 40.0  # an outlier only coarsens its own block
    table = gtx.dynamic_quantization_map(True)
    quantized = quantize_blockwise(jnp.asarray(x), jnp.asarray(table), block_size)
    restored = np.asarray(dequantize_blockwise(quantized, jnp.asarray(table), block_size))
    scales = np.repeat(np.asarray(quantized.absmax), block_size)[: x.size]
    normalized = x / scales
    # half the gap of the map around each normalized value bounds the error; below the
    # map's smallest value (-0.993: the signed map has no -1) the distance to it does
    above = np.clip(np.searchsorted(table, normalized), 1, 255)
    bound = (table[above] - table[above - 1]) / 2
    bound = np.where(normalized < table[0], table[0] - normalized, bound)
    assert np.all(np.abs(restored - x) <= bound * scales * (1 + 1e-5))
    # the largest element of each block is exact (1.0 is in the map)
    for start in range(0, x.size, block_size):
        block = x[start : start + block_size]
        i = start + np.argmax(np.abs(block))
        if x[i] > 0:
            assert restored[i] == x[i]
    relative = np.abs(restored - x) / np.abs(x)
    outside_outlier_block = np.arange(x.size) >= block_size
    assert np.median(relative[outside_outlier_block]) < 0.02


def test_adam_state_takes_two_bytes_per_parameter_and_keeps_small_leaves():
    params = {"w": jnp.zeros((64, 128)), "b": jnp.zeros(10)}
    tx = gtx.quantized_state(gtx.adam(1e-3))
    state = tx.init(params)
    mu, nu = gtx.tree_get(state, "mu"), gtx.tree_get(state, "nu")
    assert isinstance(mu["w"], gtx.QuantizedArray) and isinstance(nu["w"], gtx.QuantizedArray)
    assert mu["w"].codes.dtype == jnp.uint8 and mu["w"].codes.shape == (64, 128)
    assert mu["w"].absmax.shape == (4,) and mu["w"].absmax.dtype == jnp.float32
    assert mu["b"].dtype == jnp.float32  # 10 < min_size: kept in float32
    moment_bytes = sum(x.nbytes for x in jax.tree.leaves((mu["w"], nu["w"])))
    assert moment_bytes / params["w"].size == pytest.approx(2 + 2 * 4 / 2048)
    assert gtx.get_hyperparams(state)["learning_rate"] == pytest.approx(1e-3)


def test_state_structure_and_dtypes_never_change_and_jit_compiles_once(rng):
    params = {"w": jnp.asarray(rng.normal(size=(50, 100)), jnp.float32)}
    tx = gtx.quantized_state(gtx.adamw(1e-2, weight_decay=1e-2), block_size=256)
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    before = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for _ in range(3):
        grads = {"w": jnp.asarray(rng.normal(size=(50, 100)), jnp.float32)}
        params, state = step(params, state, grads)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == before
    assert len(traces) == 1
    abstract = tx.init(jax.eval_shape(lambda: params))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == before


def test_second_moment_uses_the_unsigned_map_and_first_moment_the_signed_one(rng):
    g = jnp.asarray(rng.normal(size=5000), jnp.float32)
    tx = gtx.quantized_state(gtx.scale_by_adam(), block_size=512)
    _, state = tx.update(g, tx.init(g))
    mu, nu = state.inner_state.mu, state.inner_state.nu
    signed, unsigned = gtx.dynamic_quantization_map(True), gtx.dynamic_quantization_map(False)
    np.testing.assert_array_equal(
        mu.codes, quantization.quantize(0.1 * np.asarray(g), signed, 512)[0]
    )
    want_nu = np.float32(1 - 0.999) * np.asarray(g) ** 2
    np.testing.assert_array_equal(nu.codes, quantization.quantize(want_nu, unsigned, 512)[0])


def test_adam_with_8bit_state_follows_the_numpy_reference_and_tracks_fp32_adam(rng):
    n, steps, lr = 6000, 30, 1e-2
    target = rng.standard_normal(n).astype(np.float32)
    p0 = np.zeros(n, np.float32)
    # a fixed gradient sequence (noise around a mean), so that every run sees the same
    grads = rng.standard_normal((steps, n)).astype(np.float32) + target
    tx8 = gtx.quantized_state(gtx.adam(lr), block_size=2048)
    tx32 = gtx.adam(lr)
    step8, step32 = jax.jit(tx8.update), jax.jit(tx32.update)
    p8 = p32 = jnp.asarray(p0)
    s8, s32 = tx8.init(p8), tx32.init(p32)
    trajectory = []
    for g in grads:
        u8, s8 = step8(jnp.asarray(g), s8, p8)
        u32, s32 = step32(jnp.asarray(g), s32, p32)
        p8, p32 = gtx.apply_updates(p8, u8), gtx.apply_updates(p32, u32)
        trajectory.append(np.asarray(p8))
    want = quantization.adam_8bit(grads, p0, float(np.float32(lr)), block_size=2048)
    # the same algorithm; float32 rounding can flip a code at a tie of two map values
    np.testing.assert_allclose(np.stack(trajectory), want, rtol=1e-4, atol=1e-6)
    # 8-bit Adam moves where fp32 Adam moves: 30 steps of ~lr each, within a few percent
    moved8, moved32 = np.asarray(p8), np.asarray(p32)
    assert np.linalg.norm(moved8 - moved32) / np.linalg.norm(moved32) < 0.05
    assert np.corrcoef(moved8, moved32)[0, 1] > 0.998


def test_hyperparameters_are_checked_when_the_wrapper_is_built():
    with pytest.raises(ValueError, match="block_size"):
        gtx.quantized_state(gtx.adam(1e-3), block_size=0)
    with pytest.raises(ValueError, match="min_size"):
        gtx.quantized_state(gtx.adam(1e-3), min_size=-1)


@pytest.mark.parametrize("min_size", [0, 1])
def test_scalars_are_never_quantized_so_hyperparameters_stay_readable_and_settable(min_size):
    tx = gtx.quantized_state(gtx.adam(1e-3, b1=0.8), min_size=min_size)
    params = {"w": jnp.ones(3), "b": jnp.ones(1)}
    state = tx.init(params)
    hyperparams = gtx.get_hyperparams(state)
    assert hyperparams["learning_rate"].dtype == jnp.float32
    assert float(hyperparams["learning_rate"]) == np.float32(1e-3)
    assert float(hyperparams["b1"]) == np.float32(0.8)
    counts = [x for x in jax.tree.leaves(state) if x.dtype == jnp.int32]
    assert counts and all(x.shape == () for x in counts)
    # every leaf of one or more elements and dimensions is quantized, the (1,) bias too
    assert isinstance(gtx.tree_get(state, "mu")["b"], gtx.QuantizedArray)
    state = gtx.set_hyperparams(state, learning_rate=1e-4)
    updates, state = jax.jit(tx.update)({"w": jnp.ones(3), "b": jnp.ones(1)}, state, params)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == np.float32(1e-4)
    # Adam's first step is -lr * sign(g): the learning rate set above, unrounded
    np.testing.assert_allclose(updates["w"], np.full(3, -1e-4), rtol=1e-6)


def test_unsigned_fields_must_be_a_collection_of_names_not_one_string():
    with pytest.raises(TypeError, match=r"unsigned_fields must be a collection .*got 'nu'"):
        gtx.quantized_state(gtx.scale_by_adam(), unsigned_fields="nu")
    with pytest.raises(TypeError, match=r"unsigned_fields must hold field names .*got 1"):
        gtx.quantized_state(gtx.scale_by_adam(), unsigned_fields=("nu", 1))


def test_unsigned_fields_that_the_state_lacks_are_named_at_init():
    """A typo ('nuu') was ignored: nu stayed on the signed map, silently."""
    params = {"w": jnp.ones(5000)}
    with pytest.raises(ValueError, match=r"unsigned_fields names \['nuu'\], which no field"):
        gtx.quantized_state(gtx.adam(0.1), unsigned_fields=("nuu",)).init(params)
    gtx.quantized_state(gtx.adam(0.1), unsigned_fields=("nu",)).init(params)
    gtx.quantized_state(gtx.sgd(0.1, momentum=0.9)).init(params)  # the default names
    # the defaults spelled out (Adam has no nu_max), and a state with no leaves, pass
    defaults = ["nu", "nu_max", "sum_of_squares", "e_g", "e_x"]
    gtx.quantized_state(gtx.adam(0.1), unsigned_fields=defaults).init(params)
    gtx.quantized_state(gtx.adam(0.1), unsigned_fields=("nu",)).init({"w": None})
    # a one-name tuple is the spelling that works: nu, never negative, uses the unsigned map
    g = jnp.linspace(0.1, 1.0, 8)
    tx = gtx.quantized_state(gtx.scale_by_adam(), min_size=0, unsigned_fields=("nu",))
    _, state = tx.update(g, tx.init(g), g)
    want_nu = np.float32(1 - 0.999) * np.asarray(g) ** 2
    unsigned = gtx.dynamic_quantization_map(False)
    np.testing.assert_array_equal(
        state.inner_state.nu.codes, quantization.quantize(want_nu, unsigned, 2048)[0]
    )


@pytest.mark.parametrize(
    "outer, inner",
    [
        (
            lambda q: gtx.quantized_state(gtx.lookahead(gtx.adam(1e-2), sync_period=3), **q),
            lambda q: gtx.lookahead(gtx.quantized_state(gtx.adam(1e-2), **q), sync_period=3),
        ),
        (
            lambda q: gtx.quantized_state(gtx.multi_steps(gtx.adam(1e-2), every_k=2), **q),
            lambda q: gtx.multi_steps(gtx.quantized_state(gtx.adam(1e-2), **q), every_k=2),
        ),
    ],
    ids=["lookahead", "multi_steps"],
)
def test_copies_of_params_or_gradients_stay_exact_in_either_nesting(outer, inner):
    """quantized_state(lookahead(adam)) stored the slow weights in 8 bits (4.5e-2 off
    the unquantized run in 12 steps; the other nesting 1.2e-3), and
    quantized_state(multi_steps(adam)) the gradient accumulator (1.9e-2): their state
    types declare those fields exact, so both nestings are the same optimizer."""
    q = dict(min_size=256, block_size=64)
    params = {"w": jnp.linspace(-1.0, 1.0, 64 * 16).reshape(64, 16)}
    runs = []
    for tx in (outer(q), inner(q)):
        p, state = params, tx.init(params)
        step = jax.jit(tx.update)
        for t in range(12):
            grads = {"w": jnp.sin(3 * p["w"] + t)}
            updates, state = step(grads, state, p)
            p = gtx.apply_updates(p, updates)
        runs.append(p["w"])
    np.testing.assert_allclose(runs[0], runs[1], rtol=0, atol=1e-6)


def test_a_leaf_the_inner_update_leaves_alone_keeps_its_codes():
    """Quantizing dequantized values again is not the identity (the signed map has 1 but
    not -1: a block led by a negative value shrank by 0.7% each time), and multi_steps
    leaves its inner state alone on every accumulating micro-step."""
    tx = gtx.quantized_state(gtx.multi_steps(gtx.adam(0.1), every_k=3), min_size=0, block_size=8)
    params = {"w": jnp.zeros(16)}
    grads = {"w": -jnp.linspace(1.0, 2.0, 16)}  # negative: each block led by a negative m
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(3):  # one real step
        _, state = update(grads, state, params)
    after_real = gtx.tree_get(state, "mu")["w"]
    for _ in range(2):  # accumulating: Adam's state is not touched
        _, state = update(grads, state, params)
    mu = gtx.tree_get(state, "mu")["w"]
    np.testing.assert_array_equal(mu.codes, after_real.codes)
    np.testing.assert_array_equal(mu.absmax, after_real.absmax)


def test_a_leaf_the_inner_update_changes_in_one_element_is_quantized_again():
    """Codes are kept only where no element of the leaf changed."""
    inner = gtx.GradientTransformation(
        lambda params: {"mu": jnp.linspace(1.0, 1.5, 16)},
        lambda updates, state, params=None: (updates, {"mu": state["mu"].at[0].set(2.0)}),
    )
    tx = gtx.quantized_state(inner, min_size=0, block_size=8)
    _, state = jax.jit(tx.update)(jnp.zeros(16), tx.init(jnp.zeros(16)))
    np.testing.assert_allclose(gtx.tree_get(state, "mu").absmax, [2.0, 1.5], rtol=1e-6)


def test_the_cached_quantization_map_is_read_only():
    table = gtx.dynamic_quantization_map()
    with pytest.raises(ValueError, match="read-only"):
        table[0] = 0.0
    assert gtx.dynamic_quantization_map()[0] == table[0]


def test_building_the_wrapper_holds_no_device_arrays():
    """The two quantization tables were device arrays made when the wrapper was built:
    building it started the XLA backend (jax.distributed.initialize, called after,
    refused to run) and every wrapper held 2 device buffers for as long as it lived (a
    jit cache holding it as a static argument: 2 more live arrays per sweep trial)."""
    gc.collect()
    before = len(jax.live_arrays())
    transforms = [gtx.quantized_state(gtx.adam(1e-3), min_size=1) for _ in range(5)]
    gc.collect()
    assert len(jax.live_arrays()) == before, len(jax.live_arrays()) - before  # was 10
    # the tables are made where a state is: its abstract init makes no array either
    state = jax.eval_shape(transforms[0].init, {"w": jax.ShapeDtypeStruct((8,), jnp.float32)})
    assert gtx.tree_get(state, "mu")["w"].codes.dtype == jnp.uint8


def test_eager_updates_quantize_in_the_eager_kernels(monkeypatch):
    """Un-jitted, each moment leaf was dequantized and requantized op by op (8-bit Adam on
    1,000 leaves of 4,096: 3.7 s an update, Adam alone ~40 ms; 190 ms in the kernels, the
    same numbers bitwise): after the kernels compile, no leaf is quantized in Python."""
    # no other test's kernels
    monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
    params = {f"w{i:02d}": jnp.linspace(-1.0, 1.0, 64) * (i + 1) for i in range(10)}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    tx = gtx.quantized_state(gtx.adam(0.1), block_size=16, min_size=1)
    state = tx.init(params)
    for _ in range(2):  # the kernels compile at a function's second sight
        _, state = tx.update(grads, state, params)
    calls = []
    quantize = blockwise.quantize_compiled  # what the per-leaf function calls
    monkeypatch.setattr(
        quantized_wrapper, "quantize_compiled", lambda *a, **k: calls.append(1) or quantize(*a, **k)
    )
    eager, _ = tx.update(grads, state, params)
    assert not calls, len(calls)  # one per moment leaf: 20
    jitted, _ = jax.jit(tx.update)(grads, state, params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_an_eager_init_compiles_one_program_per_leaf_shape_and_a_jitted_one_folds_nothing(
    monkeypatch,
):
    """An un-jitted init quantized op by op, each of ~30 operations compiled on its own
    for each leaf shape (95 compilations for 3 shapes here; ~0.7 s a shape), and the
    first un-jitted update, which the eager kernels run op by op, likewise. Under jit,
    XLA folded the quantization of the init's zero moments on the host (16 s to compile
    8-bit Adam's init on six GPT-2-sized leaves): the codes came out as a folded uint8
    constant broadcast. The numbers are the same either way (the NumPy reference tests)."""
    # no other test's kernels
    monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
    tx = gtx.quantized_state(gtx.adam(0.1), block_size=64, min_size=1)
    params = {"a": jnp.ones((48, 40)), "b": jnp.ones((3, 96)), "c": jnp.ones(200)}
    with count_compilations() as compiled:
        state = tx.init(params)
    assert len(compiled) <= 3 * 3  # a quantizer per shape and map, the inner init's few
    with count_compilations() as compiled:
        tx.update(jax.tree.map(lambda p: 0.5 * p, params), state, params)
    assert len(compiled) <= 60  # Adam's own operations, op by op (73 before)
    hlo = jax.jit(tx.init).lower(params).compile().as_text()
    assert "u8[] constant" not in hlo


def test_symbolic_shapes_of_a_polymorphic_export_are_refused_naming_the_leaf():
    """Whether a leaf is quantized depends on its size, its blocks on its shape: with
    jax.export's symbolic dimensions neither is known (was JAX's 'Symbolic dimension
    used in a context that requires a constant', naming no leaf)."""
    (n,) = jax.export.symbolic_shape("n")
    params = {"w": jax.ShapeDtypeStruct((n, 8), jnp.float32)}
    tx = gtx.quantized_state(gtx.scale_by_adam(), min_size=8)
    with pytest.raises(ValueError, match=r"concrete shapes.*at \.mu\['w'\] has shape \(n, 8\)"):
        jax.eval_shape(tx.init, params)


@pytest.mark.parametrize("inner, moments", [("adam", 2), ("sgd momentum", 1)])
def test_a_donated_step_holds_only_the_new_moments_as_temporaries(inner, moments):
    """A jitted donated step holds the new float32 moments, which the block-wise absmax
    reads before they are quantized, and nothing else parameter-sized: the absmax and
    the check that the inner update changed the leaf are one reduction of two operands
    (``_quantize_unless_equal``). With the check a pass of its own XLA wrote out the
    dequantized moments and the comparison's operands too: 8-bit Adam held 4.5
    parameter-sized float32 trees (peak 2.8x params + grads + state) and took ~37 ms a
    step on one leaf of 4M, now 2.0 (1.8x) and ~20 ms."""
    if tuple(int(x) for x in jax.__version__.split(".")[:2]) < (0, 10):
        pytest.skip("measured with XLA:CPU of jax 0.10")
    params = {"w": jnp.ones((256, 256), jnp.float32)}
    grads = {"w": jnp.full((256, 256), 0.5, jnp.float32)}
    opt = gtx.adam(0.1) if inner == "adam" else gtx.sgd(0.1, momentum=0.9)
    compiled = compiled_step(gtx.quantized_state(opt), gtx.apply_updates, params, grads)
    temporaries = compiled.memory_analysis().temp_size_in_bytes / params["w"].nbytes
    assert round(temporaries, 1) == moments, temporaries


@pytest.mark.parametrize("place", [0, 5, 2047])
def test_a_nan_moment_element_is_stored_as_its_blocks_absmax_wherever_it_lies(place):
    """As documented: a NaN gradient makes that step's update NaN, and its moment
    element is stored as its block's absmax (the last code), the state finite again.
    The block's absmax was a maximum that skipped the NaN at most places of a block on
    XLA:CPU but gave -inf at its last, so the whole block's state became inf or NaN."""
    g = np.linspace(-1.0, 1.0, 4096, dtype=np.float32)
    g[place] = np.nan
    tx = gtx.quantized_state(gtx.scale_by_adam(), block_size=2048)
    state = tx.init(jnp.zeros(4096))
    step = jax.jit(tx.update)
    updates, state = step(jnp.asarray(g), state)
    assert np.isnan(np.asarray(updates)[place])
    mu, nu = state.inner_state.mu, state.inner_state.nu
    finite = np.delete(g[:2048], place)
    # the first block's absmax is that of its numbers: 0.1 * max |g| there, (1 - b2) * g^2
    np.testing.assert_allclose(mu.absmax[0], 0.1 * np.max(np.abs(finite)), rtol=1e-6)
    np.testing.assert_allclose(nu.absmax[0], 0.001 * np.max(finite**2), rtol=1e-5)
    assert mu.codes[place] == 255 and nu.codes[place] == 255
    updates, state = step(jnp.ones(4096), state)
    assert np.all(np.isfinite(np.asarray(updates)))


def test_gradients_flow_through_an_update_as_through_the_two_reductions(monkeypatch):
    """The absmax and the check of an unchanged leaf are one reduction of two operands,
    for which JAX has no derivative: ``jax.grad`` through an update raised a TypeError
    (meta-gradients through optimizers, ``tests/test_hypergradients.py``). Its
    derivative is now the absmax's, as ``jnp.max`` gives it: the derivatives of the
    two reductions taken apart."""
    table = jnp.asarray(gtx.dynamic_quantization_map(True))
    buckets = jnp.asarray(blockwise.code_buckets(True))
    x = jnp.linspace(-1.0, 1.0, 300, dtype=jnp.float32)

    def absmax_sum(quantize):
        return jax.grad(lambda x: jnp.sum(quantize(x).absmax * jnp.arange(1.0, 6.0)))(x)

    joined = absmax_sum(
        lambda x: blockwise._quantize_unless_equal(x, jnp.zeros(300), table, 64, buckets)[0]
    )
    alone = absmax_sum(lambda x: quantize_blockwise(x, table, 64, buckets))
    np.testing.assert_array_equal(joined, alone)
    assert np.count_nonzero(np.asarray(joined)) == 5

    def loss(lr):  # two steps of 8-bit Adam, then the parameters' distance to 1
        tx = gtx.quantized_state(gtx.adam(lr), min_size=1, block_size=64)
        params = jnp.sin(jnp.arange(528.0)).reshape(16, 33)
        state = tx.init(params)
        for k in (1.0, 0.5):
            updates, state = tx.update(k * jnp.cos(params) - 1, state, params)
            params = gtx.apply_updates(params, updates)
        return jnp.sum((params - 1.0) ** 2)

    meta_gradient = jax.jit(jax.grad(loss))(0.01)

    def apart(blocks, equal):
        return jnp.max(blockwise._magnitudes(blocks), axis=-1), jnp.all(equal, axis=-1)

    monkeypatch.setattr(blockwise, "_absmax_and_equal", apart)
    np.testing.assert_allclose(meta_gradient, jax.jit(jax.grad(loss))(0.01), rtol=1e-6)
    assert np.isfinite(meta_gradient) and meta_gradient != 0


def test_float64_moments_are_compared_in_float64():
    """Under x64, a float64 state leaf that the inner update changed by less than float32
    resolves is quantized again (its float32 rounding compared equal)."""
    table = jnp.asarray(gtx.dynamic_quantization_map(True))
    buckets = jnp.asarray(blockwise.code_buckets(True))
    with jax.enable_x64(True):
        before = jnp.asarray(np.linspace(-1, 0.5, 4096), jnp.float32)
        new = before.astype(jnp.float64) * (1 + 1e-12)
        _, unchanged = blockwise._quantize_unless_equal(new, before, table, 2048, buckets)
        assert not unchanged
        _, unchanged = blockwise._quantize_unless_equal(
            before.astype(jnp.float64), before, table, 2048, buckets
        )
        assert unchanged
