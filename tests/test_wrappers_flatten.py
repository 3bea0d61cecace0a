"""flatten: one concatenated vector gives the same result as the per-leaf transform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradtx as gtx


def _tree(rng):
    return {
        "a": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
        "b": [
            jnp.asarray(rng.normal(size=4), jnp.float32),
            jnp.asarray(rng.normal(size=()), jnp.float32),
        ],
    }


def test_flatten_gives_the_same_trajectory_as_the_unflattened_transform(rng):
    inner = gtx.chain(gtx.scale_by_adam(), gtx.add_decayed_weights(0.1), gtx.scale(-0.1))
    plain, flat = inner, gtx.flatten(inner)
    params = flat_params = _tree(rng)
    state, flat_state = plain.init(params), flat.init(flat_params)
    plain_step, flat_step = jax.jit(plain.update), jax.jit(flat.update)
    for _ in range(3):
        grads = _tree(rng)
        updates, state = plain_step(grads, state, params)
        flat_updates, flat_state = flat_step(grads, flat_state, flat_params)
        params = gtx.apply_updates(params, updates)
        flat_params = gtx.apply_updates(flat_params, flat_updates)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(flat_params), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_flatten_state_is_one_vector_and_leaf_dtypes_come_back():
    tx = gtx.flatten(gtx.scale_by_adam())
    params = {"half": jnp.zeros((2, 2), jnp.bfloat16), "full": jnp.zeros(3, jnp.float32)}
    state = tx.init(params)
    assert state.mu.shape == (7,) and state.mu.dtype == jnp.float32
    grads = {"half": jnp.ones((2, 2), jnp.bfloat16), "full": -jnp.ones(3, jnp.float32)}
    updates, _ = tx.update(grads, state)
    assert updates["half"].dtype == jnp.bfloat16 and updates["half"].shape == (2, 2)
    np.testing.assert_allclose(updates["full"], -np.ones(3), rtol=1e-5)
