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


def memories():
    """Shardings of the first device's pinned host memory and of its own, where it has a
    pinned host memory (JAX's offloading of optimizer state); else a skip."""
    from jax.sharding import SingleDeviceSharding

    device = jax.devices()[0]
    kinds = {memory.kind for memory in getattr(device, "addressable_memories", list)()}
    if "pinned_host" not in kinds:
        pytest.skip(f"{device} has no pinned_host memory (its memories: {sorted(kinds)})")
    return (
        SingleDeviceSharding(device, memory_kind="pinned_host"),
        SingleDeviceSharding(device, memory_kind="device"),
    )


def offloading_step(tx, host, device):
    """The training step of JAX's optimizer-state offloading: the state stays in host
    memory between steps and is moved to the device for the update. It donates the
    params with the state: donating the state alone aborts the process in jaxlib 0.10.2
    (XLA:CPU aliases a donated host buffer to the device output of the params' shape;
    Optax's alike)."""

    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, jax.device_put(state, device), params)
        return gtx.apply_updates(params, updates), jax.device_put(state, host)

    return jax.jit(step, out_shardings=(device, host), donate_argnums=(0, 1))


def memory_kinds(tree) -> set:
    return {leaf.sharding.memory_kind for leaf in jax.tree.leaves(tree)}


HOST_MEMORY_OPTIMIZERS = {
    "adam": lambda: gtx.adam(0.05),
    "rprop": lambda: gtx.rprop(0.05),  # selects on the sign of its state
    "quantized_adam": lambda: gtx.quantized_state(gtx.adam(0.05), block_size=2, min_size=2),
    "multi_steps": lambda: gtx.multi_steps(gtx.adamw(0.05), 2),  # lax.cond
    "lookahead": lambda: gtx.lookahead(gtx.sgd(0.05, momentum=0.9), 2, 0.5),
    "clip_adamw": lambda: gtx.chain(gtx.clip_by_global_norm(1.0), gtx.adamw(0.05)),
}


@pytest.mark.parametrize("name", HOST_MEMORY_OPTIMIZERS)
def test_a_state_kept_in_host_memory_steps_as_one_on_the_device(name):
    host, device = memories()
    tx = HOST_MEMORY_OPTIMIZERS[name]()
    params = {"w": jnp.array([0.5, 0.25, -1.0]), "b": jnp.array(2.0, jnp.float32)}
    expected, state = params, tx.init(params)
    plain = jax.jit(make_step(tx))
    for _ in range(3):
        expected, state = plain(expected, state)
    step = offloading_step(tx, host, device)
    actual, state = jax.device_put((params, tx.init(params)), (device, host))
    for _ in range(3):
        actual, state = step(actual, state)
    assert memory_kinds(state) == {"pinned_host"}
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_value_set_in_a_state_in_host_memory_stays_there():
    """``set_hyperparams``, ``tree_set`` and ``reset_group`` put their new arrays where
    the arrays they replace were: made on the device, a learning rate in a state kept in
    host memory made the offloading step compile again, or, where it donates the state,
    aborted the process (jaxlib 0.10.2: "PjRtBuffer's memory kind does not match
    sharding's memory kind")."""
    host, device = memories()
    tx = gtx.partition(
        {"a": gtx.adam(0.05), "b": gtx.sgd(0.05, momentum=0.9)}, {"w": "a", "b": "b"}
    )
    params = {"w": jnp.array([0.5, 0.25, -1.0]), "b": jnp.array(2.0, jnp.float32)}
    step = offloading_step(tx, host, device)
    params, state = jax.device_put((params, tx.init(params)), (device, host))
    for _ in range(2):  # the second takes the first one's committed params
        params, state = step(params, state)
    changes = {
        "set_hyperparams": lambda state: gtx.set_hyperparams(state, learning_rate=0.01),
        "tree_set": lambda state: gtx.tree_set(
            state, path=".inner_states['a'].inner_state[0]", count=jnp.asarray(0)
        ),
        "reset_group": lambda state: gtx.reset_group(tx, state, "a", params),
    }
    for how, change in changes.items():
        state = change(state)
        assert memory_kinds(state) == {"pinned_host"}, how
        with count_compilations() as compiled:
            params, state = step(params, state)
        assert compiled == [], how
    assert memory_kinds(state) == {"pinned_host"}


def test_values_put_on_the_states_sharding_are_buffers_of_their_own():
    """On a sharding of the same device (a one-device mesh), ``jax.device_put`` gives the
    value back as a new array over its own buffer: the learning rate set in both of
    Adam's injections was one buffer (a donating step: "donate the same buffer twice"),
    and a caller's moments given to ``tree_set`` were deleted by the step."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    tx = gtx.chain(gtx.adam(0.05), gtx.adam(0.05))  # two injections holding learning_rate
    params = jax.device_put({"w": jnp.zeros(3), "b": jnp.array(1.0)}, NamedSharding(mesh, P()))
    state = jax.device_put(tx.init(params), NamedSharding(mesh, P()))
    state = gtx.set_hyperparams(state, learning_rate=0.5)
    mine = {"w": jnp.ones(3), "b": jnp.array(2.0)}
    state = gtx.tree_set(state, path="[0].inner_state[0]", mu=mine)
    assert distinct_buffers((params, state))
    step = jax.jit(make_step(tx), donate_argnums=(0, 1))
    params, state = step(params, state)
    assert not any(x.is_deleted() for x in jax.tree.leaves(mine))
    np.testing.assert_array_equal(mine["w"], np.ones(3))
