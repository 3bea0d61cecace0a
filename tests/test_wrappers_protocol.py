"""Every wrapper and regularizer keeps the protocol: jit, chain, abstract init, fixed state
structure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from tests.zoo import WRAPPERS as BUILDERS


def _params():
    return {"w": jnp.array([[1.0, -2.0], [0.5, 0.25]]), "b": jnp.array([0.1, -0.3])}


def _avals(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_works_under_jit_in_a_chain_and_keeps_its_state_structure(name):
    tx = gtx.chain(gtx.clip_by_global_norm(10.0), BUILDERS[name]())
    params = _params()
    state = tx.init(params)
    before = _avals(state)
    assert jax.tree.structure(jax.eval_shape(tx.init, params)) == jax.tree.structure(state)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    assert _avals(tx.init(abstract)) == before  # init on ShapeDtypeStructs (restore, sharding)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(lambda p: 0.5 * p + 0.1, params)
        updates, state = tx.update(grads, state, params, value=jnp.asarray(1.0))
        return gtx.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
        assert _avals(state) == before
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    assert step._cache_size() == 1  # one compilation for all steps
    assert not np.allclose(params["w"], _params()["w"])


@pytest.mark.parametrize("name", ["masked", "multi_steps", "lookahead", "apply_if_finite"])
def test_sits_inside_an_optax_chain(name):
    tx = optax.chain(optax.clip(5.0), BUILDERS[name]())
    params = _params()
    updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


INJECTED = {
    "add_l1": lambda: gtx.schedule_injection(gtx.add_l1)(strength=lambda t: 0.01 * t),
    "proximal_l1": lambda: gtx.schedule_injection(gtx.proximal_l1)(strength=0.01),
    "max_norm": lambda: gtx.schedule_injection(gtx.max_norm)(max_value=1.0, axis=0),
    "add_noise": lambda: gtx.schedule_injection(gtx.add_noise)(eta=0.01, gamma=0.55),
    "local_gain": lambda: gtx.schedule_injection(gtx.scale_by_local_gain)(increase=0.1),
    "swats": lambda: gtx.schedule_injection(gtx.swats)(learning_rate=0.1, b1=0.8),
    "ema_params": lambda: gtx.schedule_injection(gtx.ema_params)(decay=0.9),
    "lookahead": lambda: gtx.schedule_injection(gtx.lookahead)(
        gtx.scale(-0.1), sync_period=2, slow_step_size=0.5
    ),
}


@pytest.mark.parametrize("name", sorted(INJECTED))
def test_float_hyperparameters_may_arrive_as_traced_float32_scalars(name):
    tx = INJECTED[name]()
    params = _params()
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(params, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert len(gtx.get_hyperparams(state)) >= 1
