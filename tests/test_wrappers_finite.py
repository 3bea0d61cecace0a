"""apply_if_finite: skip exactly the steps whose gradients hold NaN or Inf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx


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


def test_a_finite_step_resets_the_consecutive_count():
    tx = gtx.apply_if_finite(gtx.identity(), max_consecutive_errors=5)
    state = tx.init(jnp.zeros(1))
    for g in (jnp.nan, jnp.nan, 1.0):
        _, state = tx.update(jnp.array([g]), state)
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 2


def test_max_consecutive_errors_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="max_consecutive_errors"):
        gtx.apply_if_finite(gtx.identity(), max_consecutive_errors=-1)
