"""jit: the same numbers as eager execution, and no recompilation between steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from tests import zoo
from tests.compilations import count_cache_hits, count_compilations


def loss(params):
    return jnp.sum((params["w"] - jnp.array([1.0, -2.0, 0.5])) ** 2) + params["b"] ** 2


def make_step(tx):
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    return step


@pytest.mark.parametrize("name", zoo.ALL)
def test_jit_matches_eager_and_a_second_call_compiles_nothing(name):
    tx = zoo.make(name, 0.05)
    params = {"w": jnp.zeros(3), "b": jnp.array(1.0, jnp.float32)}
    step = make_step(tx)
    jitted = jax.jit(step)
    eager_params, eager_state = params, tx.init(params)
    jit_params, jit_state = params, tx.init(params)
    for call in range(3):
        if call == 0:
            jit_params, jit_state = jitted(jit_params, jit_state)
        else:
            with count_compilations() as compiled:
                jit_params, jit_state = jitted(jit_params, jit_state)
            assert compiled == [], f"call {call + 1} of the jitted step compiled"
        eager_params, eager_state = step(eager_params, eager_state)
    for ours, eager in zip(jax.tree.leaves(jit_params), jax.tree.leaves(eager_params), strict=True):
        np.testing.assert_allclose(ours, eager, rtol=1e-6, atol=1e-7)
    for ours, eager in zip(jax.tree.leaves(jit_state), jax.tree.leaves(eager_state), strict=True):
        np.testing.assert_allclose(ours, eager, rtol=1e-6, atol=1e-7)


def test_the_suites_compilation_count_sees_a_program_the_persistent_cache_serves():
    """The suite runs with JAX's persistent compilation cache (conftest.py): a program
    compiled again, which the cache serves, still counts (JAX times its retrieval as a
    backend compilation), or a test that a step compiles nothing could not see a
    recompilation."""
    assert jax.config.jax_compilation_cache_dir

    def compile_a_new_step():
        tx = gtx.adam(0.1)
        params = {"w": jnp.zeros(3), "b": jnp.array(1.0, jnp.float32)}
        return jax.jit(make_step(tx))(params, tx.init(params))  # a new function each time

    compile_a_new_step()
    with count_compilations() as compiled, count_cache_hits() as hits:
        compile_a_new_step()
    assert len(compiled) == 1 and hits == [1]


def distinct_buffers(tree) -> bool:
    leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
    return len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)


@pytest.mark.parametrize("committed", [False, True])
@pytest.mark.parametrize("name", zoo.ALL)
def test_the_params_and_an_eager_init_hold_no_buffer_twice(name, committed):
    """A jitted step that donates the params and the state refuses a buffer given twice
    ("Attempt to donate the same buffer twice"): the state of a 0-d leaf filled with a
    hyperparameter that the state also holds was that array's buffer (Adagrad's
    accumulator, RMSprop's initial scale, Rprop's step sizes): the array itself, or,
    for params committed to a device (``device_put``, a restore), a new array over it."""
    tx = zoo.make(name, 0.05)
    params = {"w": jnp.zeros(3), "b": jnp.array(1.0, jnp.float32)}
    if committed:
        params = jax.device_put(params, jax.devices()[0])
    assert distinct_buffers((params, tx.init(params)))


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "rprop"])
def test_a_step_donating_the_params_and_the_state_runs(name):
    tx = zoo.make(name, 0.05)
    params = {"w": jnp.zeros(3), "b": jnp.array(1.0, jnp.float32)}
    params = jax.device_put(params, jax.devices()[0])  # committed, as a restore gives them
    step = jax.jit(make_step(tx), donate_argnums=(0, 1))
    expected, _ = jax.jit(make_step(tx))(params, tx.init(params))
    actual, _ = step(jax.tree.map(jnp.copy, params), tx.init(params))
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", zoo.ALL)
def test_changing_the_learning_rate_between_jitted_steps_compiles_nothing(name):
    tx = zoo.make(name, 0.05)
    params = {"w": jnp.zeros(3), "b": jnp.array(1.0, jnp.float32)}
    jitted = jax.jit(make_step(tx))
    params, state = jitted(params, tx.init(params))
    state = gtx.set_hyperparams(state, learning_rate=0.0)
    with count_compilations() as compiled:
        frozen, state = jitted(params, state)
        state = gtx.set_hyperparams(state, learning_rate=0.01)
        moved, state = jitted(frozen, state)
    assert compiled == []
    if name != "rprop":  # rprop's learning_rate is only its initial step size
        np.testing.assert_array_equal(frozen["w"], params["w"])  # lr = 0: no step
    assert not np.array_equal(moved["w"], frozen["w"])
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.01)


@pytest.mark.parametrize("name", zoo.ALL)
def test_update_returns_a_state_of_exactly_the_types_init_made(name):
    """Same structure, shapes, dtypes and weak types: the state passes through
    ``lax.cond`` (whose branches must agree) and a loop carry unchanged."""
    tx = zoo.make(name, 0.05)
    params = {"w": jnp.zeros(3), "b": jnp.zeros((), jnp.bfloat16)}
    grads = {"w": jnp.ones(3), "b": jnp.ones((), jnp.bfloat16)}
    state = tx.init(params)

    def maybe_update(state, skip):
        return jax.lax.cond(skip, lambda s: s, lambda s: tx.update(grads, s, params)[1], state)

    after = jax.eval_shape(maybe_update, state, False)
    typeof = getattr(jax, "typeof", None) or jax.api_util.shaped_abstractify  # JAX < 0.5.3
    assert jax.tree.map(typeof, after) == jax.tree.map(typeof, state)
