"""The int32 step counter saturates at its maximum, and updates stay finite there."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import numerics
from tests import zoo

INT32_MAX = np.iinfo(np.int32).max


def counters_set_to(state, value):
    """The state with every int32 scalar (every step counter, injected or not) = value."""

    def set_counter(leaf):
        if leaf.dtype == jnp.int32 and leaf.shape == ():
            return jnp.asarray(value, jnp.int32)
        return leaf

    return jax.tree.map(set_counter, state)


def counters(state):
    return [int(x) for x in jax.tree.leaves(state) if x.dtype == jnp.int32 and x.shape == ()]


def test_safe_increment_counts_then_stops_at_the_int32_maximum():
    count = jnp.asarray(INT32_MAX - 2, jnp.int32)
    seen = []
    for _ in range(4):
        count = numerics.safe_increment(count)
        seen.append(int(count))
    assert seen == [INT32_MAX - 1, INT32_MAX, INT32_MAX, INT32_MAX]
    assert count.dtype == jnp.int32


def test_safe_increment_saturates_inside_jit():
    counts = jax.jit(jax.vmap(numerics.safe_increment))(
        jnp.array([0, INT32_MAX - 1, INT32_MAX], jnp.int32)
    )
    assert counts.tolist() == [1, INT32_MAX, INT32_MAX]


@pytest.mark.parametrize("name", zoo.ALL)
def test_counters_saturate_and_updates_stay_finite_at_the_int32_maximum(name, rng):
    tx = zoo.make(name, 1e-2)
    params = jnp.asarray(rng.normal(size=4), jnp.float32)
    grads = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    state = tx.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(counters_set_to(state, 0))
    state = counters_set_to(state, INT32_MAX - 1)

    @jax.jit
    def run(params, state):
        def step(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            return (gtx.apply_updates(params, updates), state), updates

        return jax.lax.scan(step, (params, state), grads)

    (params, state), updates = run(params, state)
    assert counters(state) and all(c == INT32_MAX for c in counters(state))
    assert np.all(np.isfinite(updates)) and np.all(np.isfinite(params))
    assert np.any(updates != 0)


def test_adam_at_the_saturated_count_has_no_bias_correction_left():
    """With t = 2**31 - 1, 1 - b^t is 1: the update is m / (sqrt(v) + eps) exactly."""
    tx = gtx.scale_by_adam()
    m = jnp.array([0.5, -0.25], jnp.float32)
    v = jnp.array([0.04, 0.01], jnp.float32)
    state = gtx.ScaleByAdamState(jnp.asarray(INT32_MAX, jnp.int32), m, v)
    g = jnp.array([1.0, 2.0], jnp.float32)
    updates, state = tx.update(g, state)
    m_new = 0.9 * np.asarray(m) + 0.1 * np.asarray(g)
    v_new = 0.999 * np.asarray(v) + 0.001 * np.asarray(g) ** 2
    np.testing.assert_allclose(updates, m_new / (np.sqrt(v_new) + 1e-8), rtol=1e-6)
    assert int(state.count) == INT32_MAX


def test_apply_if_finite_counts_skipped_updates_without_wrapping():
    # notfinite_count + 1 wrapped to -2**31 at the maximum: never above
    # max_consecutive_errors again, so a stuck run would skip for ever
    tx = gtx.apply_if_finite(gtx.sgd(0.1), INT32_MAX - 1)
    state = tx.init(jnp.zeros(2))
    state = state._replace(notfinite_count=jnp.asarray(INT32_MAX, jnp.int32))
    updates, state = tx.update(jnp.array([jnp.nan, 1.0]), state)
    assert int(state.notfinite_count) == 0  # still INT32_MAX > INT32_MAX - 1: applied
    np.testing.assert_array_equal(np.isnan(updates), [True, False])
