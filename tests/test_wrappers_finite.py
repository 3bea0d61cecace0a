"""apply_if_finite: skip exactly the steps whose gradients hold NaN or Inf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx import eager_kernels, tree
from tests.compilations import bytes_and_copies, compiled_step, count_eager_operations


def test_skips_exactly_the_non_finite_steps_and_keeps_the_inner_state(rng):
    grads = [rng.normal(size=3).astype(np.float32) for _ in range(6)]
    grads[1] = np.array([1.0, np.nan, 0.0], np.float32)
    grads[4] = np.array([np.inf, 0.0, 0.0], np.float32)
    tx = gtx.apply_if_finite(gtx.adam(0.1), max_consecutive_errors=3)
    params = jnp.zeros(3)
    state = tx.init(params)
    step = jax.jit(tx.update)
    # the reference: Adam over the finite gradients only
    reference = optax.adam(0.1)
    ref_params, ref_state = jnp.zeros(3), reference.init(jnp.zeros(3))
    ref_step = jax.jit(reference.update)
    for t, g in enumerate(grads):
        updates, state = step(jnp.asarray(g), state, params)
        params = gtx.apply_updates(params, updates)
        if t in (1, 4):
            np.testing.assert_array_equal(updates, np.zeros(3))
            assert not bool(state.last_finite)
        else:
            ref_updates, ref_state = ref_step(jnp.asarray(g), ref_state, ref_params)
            ref_params = optax.apply_updates(ref_params, ref_updates)
            assert bool(state.last_finite)
        np.testing.assert_allclose(params, ref_params, rtol=1e-5, atol=1e-7)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
    assert int(state.total_notfinite) == 2
    assert int(state.notfinite_count) == 0
    assert int(gtx.tree_get(state, "count", path="inner_state.count")) == 4


def test_after_max_consecutive_errors_the_update_is_applied_and_the_counter_resets():
    tx = gtx.apply_if_finite(gtx.scale(-1.0), max_consecutive_errors=2)
    state = tx.init(jnp.zeros(1))
    applied, counts = [], []
    for _ in range(6):
        updates, state = tx.update(jnp.array([jnp.nan]), state)
        applied.append(bool(jnp.isnan(updates[0])))
        counts.append(int(state.notfinite_count))
    assert applied == [False, False, True, False, False, True]
    assert counts == [1, 2, 0, 1, 2, 0]
    assert int(state.total_notfinite) == 6


def test_one_non_finite_leaf_skips_the_whole_step():
    tx = gtx.apply_if_finite(gtx.scale(-1.0), max_consecutive_errors=3)
    grads = {"finite": jnp.ones(2), "not": jnp.array([0.0, jnp.nan])}
    state = tx.init(jax.tree.map(jnp.zeros_like, grads))
    for step in (tx.update, jax.jit(tx.update)):
        updates, new_state = step(grads, state)
        for leaf in jax.tree.leaves(updates):
            np.testing.assert_array_equal(leaf, np.zeros(2))
        assert not bool(new_state.last_finite) and int(new_state.total_notfinite) == 1


def _to_float32():
    """An inner transform whose updates are float32 whatever the gradients' dtype."""
    return gtx.GradientTransformation(
        lambda params: (),
        lambda updates, state, params=None: (tree.cast(updates, jnp.float32), state),
    )


@pytest.mark.parametrize("jit", [False, True])
def test_the_zero_updates_of_a_skipped_step_take_the_inner_updates_dtype(jit):
    tx = gtx.apply_if_finite(_to_float32(), max_consecutive_errors=3)
    step = jax.jit(tx.update) if jit else tx.update
    bad = jnp.array([1.0, jnp.nan], jnp.bfloat16)
    updates, _ = step(bad, tx.init(jnp.zeros(2, jnp.bfloat16)))
    assert updates.dtype == jnp.float32
    np.testing.assert_array_equal(updates, np.zeros(2))


def test_a_finite_step_resets_the_consecutive_count():
    tx = gtx.apply_if_finite(gtx.identity(), max_consecutive_errors=5)
    state = tx.init(jnp.zeros(1))
    for g in (jnp.nan, jnp.nan, 1.0):
        _, state = tx.update(jnp.array([g]), state)
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 2


def test_last_finite_and_total_notfinite_are_those_of_optax():
    """Only the consecutive count differs from Optax's (it restarts after an applied
    non-finite step); last_finite is whether this step's updates were finite."""
    tx = gtx.apply_if_finite(gtx.scale(-1.0), max_consecutive_errors=1)
    reference = optax.apply_if_finite(optax.scale(-1.0), max_consecutive_errors=1)
    state, ref_state = tx.init(jnp.zeros(1)), reference.init(jnp.zeros(1))
    step = jax.jit(tx.update)
    for g in (1.0, jnp.nan, jnp.nan, jnp.inf, 2.0, jnp.nan):
        _, state = step(jnp.array([g]), state)
        _, ref_state = reference.update(jnp.array([g]), ref_state)
        assert bool(state.last_finite) == bool(ref_state.last_finite)
        assert int(state.total_notfinite) == int(ref_state.total_notfinite)


def test_max_consecutive_errors_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="max_consecutive_errors"):
        gtx.apply_if_finite(gtx.identity(), max_consecutive_errors=-1)


def test_a_jitted_donated_step_copies_no_state_and_moves_what_optaxs_moves():
    """Under jit the skip is a lax.cond, as in Optax. It was a select of the new against
    the old state: XLA recomputed the new moments inside the fused parameter update from
    the old ones, which the in-place select overwrote, so it copied every donated state
    buffer first (Adam on one 1M leaf: 66 bytes/param against Optax's 54, 1.3x its step)."""
    params = {"w": jnp.ones((256, 256)), "b": jnp.ones(256)}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    ours = compiled_step(gtx.apply_if_finite(gtx.adam(0.1), 2), gtx.apply_updates, params, grads)
    theirs = compiled_step(
        optax.apply_if_finite(optax.adam(0.1), 2), optax.apply_updates, params, grads
    )
    (our_bytes, our_copies), (their_bytes, _) = bytes_and_copies(ours), bytes_and_copies(theirs)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert our_copies <= 1, our_copies  # a scalar at most, never a moment (2 per leaf)
    assert our_bytes / n <= their_bytes / n + 0.5, (our_bytes / n, their_bytes / n)


def test_a_jitted_step_on_an_explicit_mesh_keeps_the_updates_sharding():
    if not hasattr(jax, "set_mesh"):
        pytest.skip("the explicit mesh of this test needs jax.set_mesh (JAX >= 0.7.1)")
    # jax.make_mesh's axes are Explicit: shardings are part of the types a lax.cond
    # compares. Zeros made with jnp.zeros(shape, dtype) have none, so the skip branch's
    # float32[4,2] differed from the applied branch's float32[4@d,2]: a TypeError.
    mesh = jax.make_mesh((1,), ("d",))
    with jax.set_mesh(mesh):
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
        params = {"w": jax.device_put(jnp.ones((4, 2)), sharding)}
        tx = gtx.apply_if_finite(gtx.adam(0.1), 2)
        update = jax.jit(tx.update)
        state = tx.init(params)
        for grads in (params, jax.tree.map(lambda p: p * jnp.nan, params)):
            updates, state = update(grads, state, params)
            # JAX <= 0.8.1 leaves the spec unpadded: PartitionSpec("d")
            spec = updates["w"].sharding.spec
            assert spec in (jax.sharding.PartitionSpec("d"), jax.sharding.PartitionSpec("d", None))
    assert int(state.total_notfinite) == 1


@pytest.mark.parametrize("jit", [False, True])
def test_an_inner_state_leaf_keeps_its_dtype(jit):
    # an inner update that promotes its int32 state (+ 0.5): the state is cast back, as
    # in multi_steps; under jit the cond's branches disagreed (a TypeError), eagerly the
    # select made the leaf float32
    inner = gtx.GradientTransformation(
        lambda params: {"count": jnp.zeros([], jnp.int32)},
        lambda updates, state, params=None: (updates, {"count": state["count"] + 1.5}),
    )
    tx = gtx.apply_if_finite(inner, 2)
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(jnp.zeros(2))
    for grads in (jnp.ones(2), jnp.full(2, jnp.nan), jnp.ones(2)):
        _, state = update(grads, state)
        assert state.inner_state["count"].dtype == jnp.int32
    assert int(state.inner_state["count"]) == 2


def test_eager_updates_dispatch_no_operation_per_leaf(monkeypatch):
    """Un-jitted, the finiteness flags and the select run in the eager kernels (a call per
    32 leaves): operations per leaf (131 per update on 64 leaves) took Adam on 1,000
    leaves from ~40 to 210-400 ms an update; 90-100 ms now."""
    # no other test's kernels
    monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
    params = {f"w{i:02d}": jnp.ones(8) for i in range(64)}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    tx = gtx.apply_if_finite(gtx.adam(0.1), 2)
    state = tx.init(params)
    for _ in range(3):  # the kernels compile at a function's second sight
        _, state = tx.update(grads, state, params)
    with count_eager_operations() as count:
        tx.update(grads, state, params)
    assert count[0] < len(params), count[0]


def test_a_jitted_update_traces_the_inner_update_once():
    """The skip branch needs the dtypes of the inner updates: a jax.eval_shape of the
    inner update and then the cond's branch traced it twice per compilation (Adam on
    1,000 leaves: 2.2 s to trace the wrapped step, 1.7 s now; Adam alone 0.6 s)."""
    traces = []

    def update(updates, state, params=None):
        traces.append(1)
        return gtx.adam(0.1).update(updates, state, params)

    tx = gtx.apply_if_finite(gtx.GradientTransformation(gtx.adam(0.1).init, update), 2)
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    jax.jit(tx.update).trace(params, tx.init(params), params)
    assert len(traces) == 1


def test_a_jitted_update_takes_params_with_leaves_that_are_not_arrays():
    # A model's params closed over by the jitted step may hold a string or a Python int
    # the inner transform never reads; jitting the inner update over all of params (to
    # trace it once) made the string a TypeError. optax.apply_if_finite takes them.
    seen = []

    def update(updates, state, params=None):
        seen.append((params["activation"], params["depth"]))
        return gtx.adam(0.1).update(updates, state, params)

    tx = gtx.apply_if_finite(gtx.GradientTransformation(gtx.adam(0.1).init, update), 2)
    weights = {"w": jnp.array([1.0, -2.0, 3.0])}
    params = dict(weights, activation="relu", depth=2)
    step = jax.jit(lambda g, s: tx.update(g, s, params))
    updates, state = step({"w": jnp.array([0.5, np.nan, 1.0])}, tx.init(weights))
    np.testing.assert_array_equal(updates["w"], np.zeros(3, np.float32))  # skipped
    grads = {"w": jnp.array([0.5, -1.0, 1.0])}
    updates, state = step(grads, state)
    adam = gtx.adam(0.1)
    expected, _ = jax.jit(adam.update)(grads, adam.init(weights), weights)
    np.testing.assert_array_equal(updates["w"], expected["w"])
    reference = optax.apply_if_finite(optax.adam(0.1), 2)  # takes these params too
    jax.jit(lambda g, s: reference.update(g, s, params))(grads, reference.init(weights))
    assert seen == [("relu", 2)]
