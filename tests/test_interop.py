"""Interoperability without adapters: Optax chains, Flax TrainState and nnx.Optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from tests import zoo

GRADS = [{"w": jnp.array([0.5, -1.0, 2.0])}, {"w": jnp.array([-0.25, 0.75, 1.5])}]


def run(tx, grads_sequence, params):
    state = tx.init(params)
    for grads in grads_sequence:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_optax_transform_inside_gradtx_chain_matches_optax_adam():
    params = {"w": jnp.zeros(3)}
    mixed = gtx.chain(optax.scale_by_adam(), gtx.scale_by_learning_rate(0.1))
    reference = optax.adam(0.1)
    np.testing.assert_allclose(
        run(mixed, GRADS, params)["w"], run(reference, GRADS, params)["w"], rtol=1e-6
    )


def test_optax_transform_in_gradtx_chain_receives_no_unexpected_extra_args():
    # optax.scale_by_adam's update takes no **extra; value= reaches only those that do.
    tx = gtx.chain(optax.scale_by_adam(), gtx.scale(-0.1))
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.zeros(3)}), value=1.0)
    np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-5)


def test_gradtx_transform_inside_optax_chain_matches_optax_adamw():
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    mixed = optax.chain(
        gtx.scale_by_adam(),
        optax.add_decayed_weights(1e-2),
        gtx.scale_by_learning_rate(0.1),
    )
    reference = optax.adamw(0.1, weight_decay=1e-2)
    # float32: Optax's bias corrections 1 - float32(b)^t are up to 6e-6 relative off the
    # exact value, gradtx's within ~1e-7 (numerics.bias_correction)
    np.testing.assert_allclose(
        run(mixed, GRADS, params)["w"], run(reference, GRADS, params)["w"], rtol=2e-5
    )
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        grads64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), GRADS)
        np.testing.assert_allclose(
            run(mixed, grads64, params64)["w"], run(reference, grads64, params64)["w"], rtol=1e-12
        )


def test_gradtx_optimizer_inside_optax_chain_with_extra_args():
    tx = optax.chain(optax.clip_by_global_norm(1.0), gtx.adam(0.1))
    state = tx.init({"w": jnp.zeros(3)})
    updates, state = tx.update({"w": jnp.array([3.0, 0.0, 4.0])}, state, value=jnp.array(1.0))
    np.testing.assert_allclose(updates["w"], [-0.1, 0.0, -0.1], rtol=1e-5, atol=1e-7)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.1)


def test_optax_apply_if_finite_wraps_a_gradtx_optimizer():
    tx = optax.apply_if_finite(gtx.adam(0.1), max_consecutive_errors=2)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
    np.testing.assert_array_equal(updates["w"], [0.0, 0.0])
    updates, state = tx.update({"w": jnp.array([1.0, 1.0])}, state, params)
    np.testing.assert_allclose(updates["w"], [-0.1, -0.1], rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_flax_train_state_takes_a_gradtx_optimizer_as_tx(name):
    from flax.training import train_state

    params = {"w": jnp.array([1.0, -2.0])}

    def apply_fn(variables, x):
        return jnp.dot(variables["params"]["w"], x)

    state = train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=zoo.make(name, 0.1))

    @jax.jit
    def train_step(state, x):
        def loss(p):
            return state.apply_fn({"params": p}, x) ** 2

        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    x = jnp.array([1.0, 1.0])
    new_state = train_step(state, x)
    expected = run(zoo.make(name, 0.1), [{"w": 2 * (-1.0) * x}], params)
    np.testing.assert_allclose(new_state.params["w"], expected["w"], rtol=1e-6)
    assert int(new_state.step) == 1
    new_state = train_step(new_state, x)
    assert int(new_state.step) == 2


def test_flax_nnx_optimizer_takes_a_gradtx_optimizer_as_tx():
    from flax import nnx

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, zoo.require("adamw")(0.05, weight_decay=1e-2), wrt=nnx.Param)
    x = jnp.ones((4, 3))
    y = jnp.zeros((4, 1))

    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    kernel_before = np.asarray(model.kernel[...])
    grads = jax.grad(lambda k: jnp.mean((x @ k + model.bias[...] - y) ** 2))(kernel_before)
    first_loss = train_step(model, optimizer)
    # First AdamW step: -lr * (sign(g) + wd * p), elementwise.
    expected = kernel_before - 0.05 * (np.sign(grads) + 1e-2 * kernel_before)
    np.testing.assert_allclose(model.kernel[...], expected, rtol=1e-5, atol=1e-7)
    for _ in range(5):
        loss = train_step(model, optimizer)
    assert float(loss) < float(first_loss)


def test_set_hyperparams_on_an_nnx_optimizer_keeps_its_variables_and_takes_effect():
    from flax import nnx

    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, gtx.adam(0.05), wrt=nnx.Param)
    x = jnp.ones((4, 2))

    @nnx.jit
    def train_step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    train_step(model, optimizer)
    before = jax.tree.map(type, optimizer.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    optimizer.opt_state = gtx.set_hyperparams(optimizer.opt_state, learning_rate=0.0)
    after = jax.tree.map(type, optimizer.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    assert after == before  # the OptArray containers are kept
    learning_rate = gtx.get_hyperparams(optimizer.opt_state)["learning_rate"]
    assert isinstance(learning_rate, jax.Array) and float(learning_rate) == 0.0  # no OptArray
    kernel = np.asarray(model.kernel[...])
    train_step(model, optimizer)
    np.testing.assert_array_equal(model.kernel[...], kernel)  # lr = 0: no step


MAP_PARAMS_CASES = {
    "masked": lambda: gtx.masked(gtx.scale_by_adam(), {"w": True, "b": False}),
    "masked by a function": lambda: gtx.masked(
        gtx.scale_by_adam(), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
    "partition": lambda: gtx.partition(
        {"adam": gtx.adam(0.1), "momentum": gtx.sgd(0.1, momentum=0.9)},
        {"w": "adam", "b": "momentum"},
    ),
    "partition by path patterns": lambda: gtx.partition(
        {"adam": gtx.adam(0.1), "momentum": gtx.sgd(0.1, momentum=0.9)},
        {r"\['w'\]": "adam", r".*": "momentum"},
    ),
    "adamw with a mask": lambda: gtx.adamw(0.1, mask={"w": True, "b": False}),
}


@pytest.mark.parametrize("name", sorted(MAP_PARAMS_CASES))
def test_optax_tree_map_params_maps_the_params_copies_in_masked_and_partition_states(name):
    """optax.tree.map_params (partition specs for a state) gives ``init`` a leafless
    placeholder; masked and partition refused it ("the mask is not a prefix of the
    updates' structure"). As with optax.masked's MaskedNode, masked-out leaves (None
    here) are skipped with ``is_leaf``."""
    tx = MAP_PARAMS_CASES[name]()
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    state = tx.init(params)
    specs = optax.tree.map_params(
        tx,
        lambda leaf, spec: None if leaf is None else spec,
        state,
        {"w": "spec of w", "b": "spec of b"},
        transform_non_params=lambda _: "not a param",
        is_leaf=lambda leaf: leaf is None,
    )
    assert jax.tree.structure(specs) == jax.tree.structure(jax.tree.map(lambda _: "", state))
    expected = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            f"spec of {path[-1].key}"
            if x.shape != () and isinstance(path[-1], jax.tree_util.DictKey)
            else "not a param"
        ),
        state,
    )
    assert specs == expected
