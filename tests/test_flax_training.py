"""Flax integration: TrainState (linen) and nnx.Optimizer train a model with gradtx
optimizers, chains and parameter groups, and follow the Optax run of the same algorithm."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import gradtx as gtx

STEPS = 15


def schedule(count):
    """A warmup then a decay, the same function for gradtx and Optax."""
    count = jnp.asarray(count, jnp.float32)
    return 0.05 * jnp.minimum((count + 1) / 5, 5 / (count + 1))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(jnp.tanh(nn.Dense(8)(x)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS, 16, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=(STEPS, 16)).astype(np.int32)
    return x, y


def cross_entropy(logits, labels):
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def train_linen(tx, data):
    """Trains the MLP with a TrainState: returns (params, losses)."""
    x, y = data
    params = MLP().init(jax.random.key(0), x[0])["params"]
    state = train_state.TrainState.create(apply_fn=MLP().apply, params=params, tx=tx)

    @jax.jit
    def train_step(state, x, y):
        def loss_fn(params):
            return cross_entropy(state.apply_fn({"params": params}, x), y)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for t in range(STEPS):
        state, loss = train_step(state, x[t], y[t])
        losses.append(float(loss))
    assert int(state.step) == STEPS
    return state.params, losses


def assert_same_training(gradtx_run, optax_run):
    (params, losses), (expected_params, expected_losses) = gradtx_run, optax_run
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    leaves, expected_leaves = jax.tree.leaves(params), jax.tree.leaves(expected_params)
    for leaf, expected in zip(leaves, expected_leaves, strict=True):
        np.testing.assert_allclose(leaf, expected, rtol=1e-5, atol=1e-5)
    assert losses[-1] < losses[0]


KERNELS_AND_BIASES = {r"kernel": "kernels", r"bias": "biases"}


def optax_labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "kernels" if "kernel" in jax.tree_util.keystr(path) else "biases", params
    )


CASES = {
    "adamw_with_schedule": (
        lambda: gtx.adamw(schedule, weight_decay=1e-2),
        lambda: optax.adamw(schedule, weight_decay=1e-2),
    ),
    "chain": (
        lambda: gtx.chain(
            gtx.clip_by_global_norm(0.5),
            gtx.scale_by_adam(b2=0.99),
            gtx.add_decayed_weights(1e-2),
            gtx.scale_by_learning_rate(schedule),
        ),
        lambda: optax.chain(
            optax.clip_by_global_norm(0.5),
            optax.scale_by_adam(b2=0.99),
            optax.add_decayed_weights(1e-2),
            optax.scale_by_learning_rate(schedule),
        ),
    ),
    "parameter_groups": (
        lambda: gtx.partition(
            {
                "kernels": gtx.adamw(0.02, weight_decay=1e-2),
                "biases": gtx.sgd(0.1, momentum=0.9, nesterov=True),
            },
            KERNELS_AND_BIASES,
        ),
        lambda: optax.multi_transform(
            {
                "kernels": optax.adamw(0.02, weight_decay=1e-2),
                "biases": optax.sgd(0.1, momentum=0.9, nesterov=True),
            },
            optax_labels,
        ),
    ),
}


@pytest.mark.parametrize("case", ["adamw_with_schedule", "chain"])
def test_linen_train_state_with_gradtx_follows_the_optax_run(case, data):
    make_gradtx, make_optax = CASES[case]
    assert_same_training(train_linen(make_gradtx(), data), train_linen(make_optax(), data))


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def train_nnx(tx, data):
    x, y = data
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, x[t], y[t])) for t in range(STEPS)]
    assert int(optimizer.step[...]) == STEPS
    return nnx.state(model, nnx.Param), losses


@pytest.mark.parametrize("case", ["parameter_groups"])
def test_nnx_optimizer_with_gradtx_follows_the_optax_run(case, data):
    make_gradtx, make_optax = CASES[case]
    assert_same_training(train_nnx(make_gradtx(), data), train_nnx(make_optax(), data))


def test_nnx_optimizer_state_holds_the_gradtx_state_and_its_hyperparameters(data):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, gtx.adamw(schedule, weight_decay=1e-2), wrt=nnx.Param)
    grads = nnx.state(model, nnx.Param)
    optimizer.update(model, grads)
    optimizer.update(model, grads)
    opt_state = nnx.to_pure_dict(nnx.state(optimizer, nnx.optimizer.OptState))
    hyperparams = opt_state["opt_state"]["hyperparams"]
    # The injected learning rate is the schedule's value at the last update (count 1).
    np.testing.assert_allclose(hyperparams["learning_rate"], schedule(1), rtol=1e-6)
    assert int(opt_state["opt_state"]["count"]) == 2


QUANTIZED = {
    "alone": lambda q: q,
    # wrappers that combine the old and the new inner state met the mapping form on one
    # side and QuantizedArray on the other (a structure error at the second update)
    "in_multi_steps": lambda q: gtx.multi_steps(q, every_k=2),
    "in_apply_if_finite": lambda q: gtx.apply_if_finite(q, max_consecutive_errors=3),
}


@pytest.mark.parametrize("wrap", sorted(QUANTIZED))
def test_nnx_optimizer_carries_a_quantized_state_across_updates(wrap, data):
    """nnx.Optimizer stores its state by path: a QuantizedArray (codes, absmax) where
    the params have a leaf came back from the second update as a {codes, absmax}
    mapping, which the wrapper did not read (a structure error); it reads it and gives
    it back in that form. The run follows the same transform driven by hand on the
    model's state."""
    tx = QUANTIZED[wrap](gtx.quantized_state(gtx.adam(0.01), min_size=16, block_size=8))
    trained = train_nnx(tx, data)

    x, y = data
    graphdef, params = nnx.split(NnxMLP(nnx.Rngs(0)), nnx.Param)

    @jax.jit
    def step(params, opt_state, x, y):
        loss_fn = lambda p: cross_entropy(nnx.merge(graphdef, p)(x), y)  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return gtx.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for t in range(STEPS):
        params, opt_state, loss = step(params, opt_state, x[t], y[t])
        losses.append(float(loss))
    assert_same_training(trained, (params, losses))


def test_has_updated_reads_nnx_optimizers_state():
    """nnx.Optimizer keeps the counters in OptArray variables: has_updated compared one
    with an int and raised TypeError."""
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, gtx.multi_steps(gtx.adam(0.01), every_k=2), wrt=nnx.Param)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    flags = []
    for _ in range(4):
        optimizer.update(model, grads)
        flags.append(bool(gtx.has_updated(optimizer.opt_state)))
    assert flags == [False, True, False, True]
