"""The fast paths give the numbers of the plain path, for every optimizer.

- Tracing the per-leaf function once per leaf signature (``tree.TRACE_LEAF_FUNCTION_ONCE``,
  on by default) compiles the same program: parameters and state are bitwise equal.
- ``gtx.flatten`` (every leaf in one vector, the opt-in bucketing) runs the same
  elementwise math in another order of leaves: equal within float32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import tree
from tests import zoo


def _params(rng):
    # several leaves of one shape (traced once), others of their own shapes
    return {
        "blocks": [jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(3)],
        "bias": jnp.asarray(rng.normal(size=5), jnp.float32),
        "scalar": jnp.asarray(rng.normal(), jnp.float32),
    }


def _run(tx, params, grads_seq):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    state = tx.init(params)
    for grads in grads_seq:
        params, state = step(params, state, grads)
    return params, state


def _grads(rng, params, steps=2):
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(steps)
    ]


@pytest.mark.parametrize("name", zoo.ALL)
def test_fast_paths_give_the_numbers_of_the_plain_path(name, rng, monkeypatch):
    params = _params(rng)
    grads_seq = _grads(rng, params)
    fast = _run(zoo.make(name, 1e-2), params, grads_seq)
    bucketed_params, _ = _run(gtx.flatten(zoo.make(name, 1e-2)), params, grads_seq)
    monkeypatch.setattr(tree, "TRACE_LEAF_FUNCTION_ONCE", False)
    plain = _run(zoo.make(name, 1e-2), params, grads_seq)
    # traced once per leaf signature: the same program, bitwise the same numbers
    assert jax.tree.structure(fast) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # flatten: the same elementwise math on one vector, equal to float32 rounding
    for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(bucketed_params), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_static_per_leaf_flags_still_reach_the_leaf_function(rng):
    # masks hand map_unzip a boolean per leaf; traced once per (signature, flag)
    params = _params(rng)
    mask = {"blocks": [True, False, True], "bias": False, "scalar": True}
    tx = gtx.chain(gtx.add_decayed_weights(0.5, mask=mask), gtx.scale(-1.0))
    grads = jax.tree.map(jnp.zeros_like, params)
    new_params, _ = _run(tx, params, [grads])
    np.testing.assert_array_equal(new_params["blocks"][1], params["blocks"][1])
    np.testing.assert_allclose(new_params["blocks"][0], 0.5 * params["blocks"][0], rtol=1e-6)
    np.testing.assert_allclose(new_params["scalar"], 0.5 * params["scalar"], rtol=1e-6)
