"""tree_get / tree_set: named fields found anywhere in a nested optimizer state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from tests.compilations import count_compilations


def _state():
    tx = gtx.named_chain(
        ("clip", gtx.clip_by_global_norm(1.0)),
        ("adam", gtx.scale_by_adam()),
        ("lr", gtx.scale_by_schedule(lambda t: 0.1)),
    )
    return tx.init({"w": jnp.zeros(2), "b": jnp.zeros(1)})


def test_tree_get_finds_a_field_of_a_nested_named_tuple():
    state = _state()
    assert gtx.tree_get(state, "mu") is state["adam"].mu
    assert gtx.tree_get(state, "nu")["w"].shape == (2,)


def test_tree_get_finds_dict_keys_such_as_injected_hyperparameters():
    state = gtx.chain(gtx.adam(0.01), gtx.identity()).init({"w": jnp.zeros(2)})
    assert float(gtx.tree_get(state, "learning_rate")) == pytest.approx(0.01)


def test_tree_get_absent_name_is_a_key_error_and_ambiguous_name_lists_the_paths():
    state = _state()
    with pytest.raises(KeyError, match="'velocity'"):
        gtx.tree_get(state, "velocity")
    with pytest.raises(ValueError, match=r"\['adam'\]\.count.*\['lr'\]\.count"):
        gtx.tree_get(state, "count")
    assert gtx.tree_get(state, "count", path="['lr']") is state["lr"].count


def test_tree_set_replaces_one_field_and_keeps_dtypes_and_structure():
    state = _state()
    new = gtx.tree_set(state, mu={"w": np.ones(2), "b": np.full(1, 2.0)})
    assert jax.tree.structure(new) == jax.tree.structure(state)
    np.testing.assert_array_equal(new["adam"].mu["w"], [1.0, 1.0])
    assert new["adam"].mu["b"].dtype == jnp.float32
    np.testing.assert_array_equal(state["adam"].mu["w"], [0.0, 0.0])  # the original is intact
    new = gtx.tree_set(new, path="['adam']", count=7)
    assert int(new["adam"].count) == 7 and new["adam"].count.dtype == jnp.int32
    assert int(new["lr"].count) == 0


def test_tree_set_rejects_a_value_of_another_shape_or_structure():
    state = _state()
    with pytest.raises(ValueError, match="shape"):
        gtx.tree_set(state, nu={"w": np.ones(3), "b": np.ones(1)})
    with pytest.raises(ValueError, match="structure"):
        gtx.tree_set(state, nu={"w": np.ones(2)})
    with pytest.raises(KeyError):
        gtx.tree_set(state, velocity=1.0)


def test_tree_set_works_on_a_partitioned_state():
    tx = gtx.partition({"a": gtx.scale_by_adam(), "b": gtx.identity()}, {"x": "a", "y": "b"})
    state = tx.init({"x": jnp.zeros(1), "y": jnp.zeros(1)})
    state = gtx.tree_set(state, count=3)
    assert int(state.inner_states["a"].count) == 3


def test_tree_set_of_a_python_number_between_jitted_steps_compiles_nothing():
    # jnp.asarray(1e-4) is weakly typed float32 and jit keys its cache on weak types:
    # setting the injected learning rate to a Python number recompiled the step.
    tx = gtx.adam(1e-3)
    params = {"w": jnp.ones(2)}

    @jax.jit
    def step(params, state):
        updates, state = tx.update(params, state, params)
        return gtx.apply_updates(params, updates), state

    params, state = step(params, tx.init(params))
    with count_compilations() as compiled:
        for lr in [1e-4, 2e-4]:
            state = gtx.tree_set(state, learning_rate=lr)
            assert not gtx.get_hyperparams(state)["learning_rate"].weak_type
            params, state = step(params, state)
    assert compiled == []
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(2e-4)


def test_tree_set_of_a_typed_key_into_a_raw_key_or_number_is_a_clear_type_error():
    # A typed key has no astype: this was "NotImplementedError: Cannot call abstract
    # method astype", naming neither the field nor what to give.
    state = gtx.add_noise().init({"w": jnp.ones(2)})  # a raw uint32 key
    with pytest.raises(TypeError, match=r"\.rng_key is a uint32 array.*key_data"):
        gtx.tree_set(state, rng_key=jax.random.split(jax.random.key(1)))
    with pytest.raises(TypeError, match=r"\.count is a int32 array.*give a int32 value"):
        gtx.tree_set(gtx.scale_by_adam().init(jnp.zeros(2)), count=jax.random.key(1))
    state = gtx.tree_set(state, rng_key=jax.random.key_data(jax.random.key(1)))
    assert state.rng_key.dtype == jnp.uint32


def test_tree_set_stores_arrays_of_the_states_own():
    """A jitted step that donates the state deletes the arrays it holds and refuses one
    held twice: tree_set kept the caller's array where its dtype matched (a learning
    rate read afterwards: "Array has been deleted"; params set as Adam's mu; one array
    set as mu and nu)."""
    params = {"w": jnp.zeros(3)}
    tx = gtx.adam(0.1)
    rate, moment = jnp.float32(1e-2), jnp.ones(3)
    state = gtx.tree_set(tx.init(params), learning_rate=rate)
    state = gtx.tree_set(state, mu={"w": moment}, nu={"w": moment})
    leaves = jax.tree.leaves((params, rate, moment, state))
    assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)

    def step(params, state):
        updates, state = tx.update(params, state, params)
        return gtx.apply_updates(params, updates), state

    jax.jit(step, donate_argnums=(0, 1))(jax.tree.map(jnp.copy, params), state)
    assert float(rate) == pytest.approx(1e-2) and float(moment[0]) == 1.0


class Config(dict):
    """A dict subclass JAX does not know: a leaf to it, a dict to ``tree_get``."""


def test_trees_of_one_structure_are_searched_alike_but_for_what_their_leaves_hold():
    """Where a name sits is found once per tree structure (a state keeps its own from
    step to step); a dict subclass JAX does not know is a leaf whose keys the structure
    does not record, so a tree holding one is searched each time."""
    state = _state()
    other = jax.tree.map(lambda x: x + 1, state)  # the same structure, other arrays
    assert gtx.tree_get(state, "mu") is state["adam"].mu
    assert gtx.tree_get(other, "mu") is other["adam"].mu
    first = {"opt": _state(), "config": Config(alpha=jnp.ones(1))}
    second = {"opt": _state(), "config": Config(beta=jnp.ones(1))}
    assert jax.tree.structure(first) == jax.tree.structure(second)
    assert gtx.tree_get(first, "alpha") is first["config"]["alpha"]
    with pytest.raises(KeyError, match="'alpha'"):
        gtx.tree_get(second, "alpha")


class Unhashable:
    """A pytree node whose auxiliary data cannot be hashed (a list)."""

    def __init__(self, children, data):
        self.children, self.data = children, data


jax.tree_util.register_pytree_node(
    Unhashable, lambda node: (node.children, node.data), lambda d, c: Unhashable(c, d)
)


@pytest.mark.parametrize("data", [["meta"], np.arange(3)], ids=["list", "array"])
def test_a_state_under_a_node_with_unhashable_data_is_found(data):
    """Where a structure cannot be hashed or compared, it is searched each time: jax
    0.10 hashes a structure without its nodes' data (a release that hashes it raises
    TypeError) and compares that data with ==, a ValueError for an array (which JAX
    says not to use as a node's data, but an un-jitted loop can hold)."""
    tx = gtx.adam(0.1)
    for lr in (0.2, 0.3, 0.4):
        state = Unhashable([tx.init({"w": jnp.zeros(2)})], data)  # a new one each time
        state = gtx.set_hyperparams(state, learning_rate=lr)
        assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(lr)


def test_fields_are_found_through_other_pytree_nodes_such_as_flaxs_train_state():
    """Optax's tree_get walks through every pytree node; a Flax TrainState (a dataclass)
    holding the state was a KeyError here."""
    from flax.training import train_state

    params = {"w": jnp.zeros(2)}
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=gtx.adam(0.1))
    assert gtx.tree_get(state, "mu") is state.opt_state.inner_state[0].mu
    state = gtx.tree_set(state, learning_rate=0.5)
    assert isinstance(state, train_state.TrainState)
    assert float(gtx.tree_get(state, "learning_rate")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\.opt_state\.count, \.opt_state\.inner_state"):
        gtx.tree_get(state, "count")  # a dataclass's field is on the path, not a name
    with pytest.raises(KeyError, match="'step'"):
        gtx.tree_get(state, "step")
    assert gtx.tree_get(state, "count", path="inner_state") is state.opt_state.inner_state[0].count
    updates = {"w": jnp.ones(2)}
    state = state.apply_gradients(grads=updates)  # the rebuilt TrainState still trains
    assert int(state.step) == 1


@pytest.mark.parametrize(
    "first, second", [(1, True), (0, np.int64(0)), ("a", np.str_("a"))], ids=repr
)
def test_dict_keys_equal_but_printed_otherwise_are_found_in_each_tree(first, second):
    """Keys that compare equal give equal tree structures but other paths: the path
    remembered for the first tree was not the second's (a StopIteration)."""
    trees = [{key: gtx.scale_by_adam().init(jnp.zeros(2))} for key in (first, second)]
    assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
    for tree, key in zip(trees, (first, second), strict=True):
        assert gtx.tree_get(tree, "mu") is tree[key].mu
        new = gtx.tree_set(tree, mu=jnp.full(2, 5.0))
        np.testing.assert_array_equal(new[key].mu, [5.0, 5.0])
