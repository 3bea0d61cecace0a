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


# Anchored at the path's end: nnx.Optimizer calls init with an nnx.State of Variables
# ("['hidden']['kernel'].value") and update with their arrays ("['hidden']['kernel']");
# a Variable is matched at its own path (at init these patterns matched no leaf: a
# ValueError from nnx.Optimizer(model, tx, ...)).
KERNELS_AND_BIASES = {r"\['kernel'\]$": "kernels", r"\['bias'\]$": "biases"}


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


@pytest.mark.parametrize("case", list(CASES))
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


@pytest.mark.parametrize("case", list(CASES))
def test_nnx_optimizer_with_gradtx_follows_the_optax_run(nnx_0_11, case, data):
    make_gradtx, make_optax = CASES[case]
    assert_same_training(train_nnx(make_gradtx(), data), train_nnx(make_optax(), data))


def test_nnx_optimizer_state_holds_the_gradtx_state_and_its_hyperparameters(nnx_0_11, data):
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


def test_nnx_optimizer_carries_a_quantized_state_across_updates(nnx_0_11, data):
    """nnx.Optimizer stores its state by path: a QuantizedArray (codes, absmax) where
    the params have a leaf came back from the second update as a {codes, absmax}
    mapping, which the wrapper did not read (a structure error); it reads it and gives
    it back in that form. Wrappers that combine the old and the new inner state met the
    mapping form on one side and QuantizedArray on the other: quantized_state alone (in
    a group of a partition), inside multi_steps, and inside apply_if_finite, in one
    program. The run follows the same transform driven by hand on the model's state."""
    quantized = lambda: gtx.quantized_state(gtx.adam(0.01), min_size=16, block_size=8)  # noqa: E731
    tx = gtx.apply_if_finite(
        gtx.partition(
            {"kernels": quantized(), "biases": gtx.multi_steps(quantized(), every_k=2)},
            KERNELS_AND_BIASES,
        ),
        max_consecutive_errors=3,
    )
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


def traced_nnx_training(tx):
    """An NnxMLP, its nnx.Optimizer around ``tx``, an nnx.jit training step returning
    the gradients, and the list that step appends to at each trace."""
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    traces = []

    @nnx.jit
    def train_step(model, optimizer, x, y):
        traces.append(None)
        grads = nnx.grad(lambda m: cross_entropy(m(x), y))(model)
        optimizer.update(model, grads)
        return grads

    return model, optimizer, train_step, traces


def test_set_hyperparams_on_an_nnx_optimizers_opt_state_keeps_its_variables(nnx_0_11, data):
    """nnx.Optimizer keeps the injected hyperparameters in OptArray variables: the new
    learning rate goes into them (the state is rebuilt from its leaves), so the jitted
    step runs on without retracing and takes the new value."""
    tx = gtx.partition({"kernels": gtx.adam(0.05), "biases": gtx.sgd(0.1)}, KERNELS_AND_BIASES)
    model, optimizer, train_step, traces = traced_nnx_training(tx)
    x, y = data
    train_step(model, optimizer, x[0], y[0])

    def variables(tree):
        return jax.tree.map(type, tree, is_leaf=lambda v: isinstance(v, nnx.Variable))

    before = variables(optimizer.opt_state)
    for t, lr in enumerate([0.0, 0.02], start=1):
        optimizer.opt_state = gtx.set_hyperparams(
            optimizer.opt_state, path="kernels", learning_rate=lr
        )
        assert variables(optimizer.opt_state) == before
        held = gtx.get_hyperparams(optimizer.opt_state, path="kernels")["learning_rate"]
        assert float(held[...] if isinstance(held, nnx.Variable) else held) == pytest.approx(lr)
        kernel = np.asarray(model.hidden.kernel[...])
        train_step(model, optimizer, x[t], y[t])
        moved = np.abs(np.asarray(model.hidden.kernel[...]) - kernel).max()
        assert (moved == 0) == (lr == 0)
    assert len(traces) == 1


def test_an_nnx_training_step_with_a_quantized_state_compiles_once(nnx_0_11, data):
    """nnx.Optimizer's init held each QuantizedArray in an OptVariable as the NamedTuple,
    which a step under nnx.jit gives back as an nnx.State mapping: the state changed
    structure and the second step traced and compiled the training step again. The
    init holds it as that mapping; a reset group (reset_group) comes back so too."""
    tx = gtx.partition(
        {
            "kernels": gtx.quantized_state(gtx.adam(0.05), min_size=16, block_size=8),
            "biases": gtx.sgd(0.1),
        },
        KERNELS_AND_BIASES,
    )
    model, optimizer, train_step, traces = traced_nnx_training(tx)
    x, y = data
    for t in range(3):
        train_step(model, optimizer, x[t], y[t])
    params = nnx.state(model, nnx.Param)
    optimizer.opt_state = gtx.reset_group(tx, optimizer.opt_state, "kernels", params)
    train_step(model, optimizer, x[3], y[3])
    assert len(traces) == 1
    mu = gtx.tree_get(optimizer.opt_state, "mu")["hidden"]["kernel"]
    value = mu.get_value() if hasattr(type(mu), "get_value") else mu.value  # flax < 0.12.1
    assert isinstance(mu, nnx.Variable) and isinstance(value, nnx.State)


def test_has_updated_reads_nnx_optimizers_state(nnx_0_11):
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


# .value: the older flax's accessor that the message gives (deprecated from flax 0.12.8)
@pytest.mark.filterwarnings("ignore:'.value' access is now deprecated:DeprecationWarning")
def test_tx_update_by_hand_on_an_nnx_optimizers_opt_state_says_to_pass_arrays(nnx_0_11):
    """The opt_state of nnx.Optimizer keeps the arrays in OptArray variables; passed to
    tx.update as it is, Adam's injected b1 (an OptArray, which is callable) was read as
    a schedule: 'b1 must be a number here, got a schedule'. It is a structure error
    naming the Variables and the fix."""
    if not hasattr(nnx, "as_pure"):
        pytest.skip("this test needs nnx.as_pure (flax >= 0.12.7)")
    model = NnxMLP(nnx.Rngs(0))
    tx = gtx.adam(0.01)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    with pytest.raises(ValueError, match=r"\['hidden'\]\['kernel'\]\.value.*nnx\.as_pure"):
        tx.update(params, optimizer.opt_state, params)
    updates, _ = tx.update(params, nnx.as_pure(optimizer.opt_state), params)  # the fix
    # the message's fix for flax < 0.12.7, which has no nnx.as_pure
    older_fix = jax.tree.map(
        lambda v: v.value, optimizer.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable)
    )
    np.testing.assert_array_equal(
        tx.update(params, older_fix, params)[0]["hidden"]["kernel"], updates["hidden"]["kernel"]
    )
    np.testing.assert_allclose(
        updates["hidden"]["kernel"], -0.01 * np.sign(params["hidden"]["kernel"]), rtol=1e-5
    )


def test_nnx_optimizer_with_value_and_has_updated_resumes_from_orbax_bit_for_bit(
    nnx_0_11, data, tmp_path
):
    """The patterns NNX users combine: a wrapper (multi_steps) around a chain that reads
    value= (reduce_on_plateau) through optimizer.update(model, grads, value=loss),
    has_updated on optimizer.opt_state, and nnx.state(optimizer) saved with Orbax and
    restored into a fresh nnx.Optimizer built under nnx.eval_shape: the resumed run
    equals the uninterrupted one bit for bit (the same transforms driven by hand are
    checked against Optax and NumPy elsewhere)."""
    import orbax.checkpoint as ocp

    if not hasattr(nnx, "as_pure"):
        pytest.skip("this test needs nnx.as_pure (flax >= 0.12.7)")
    tx = gtx.multi_steps(
        gtx.chain(gtx.adam(0.05), gtx.reduce_on_plateau(factor=0.5, patience=0)), every_k=2
    )

    x, y = data
    steps, saved_at = 6, 3  # saved between two micro-batches

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        optimizer.update(model, grads, value=loss)
        return loss, gtx.has_updated(optimizer.opt_state)

    def fresh():
        model = NnxMLP(nnx.Rngs(0))
        # the same tx (static in the graph): the resumed run reuses the compiled step
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    model, optimizer = fresh()
    flags = []
    for t in range(steps):
        flags.append(bool(train_step(model, optimizer, x[t], y[t])[1]))
        if t + 1 == saved_at:
            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(tmp_path / "checkpoint", nnx.state((model, optimizer)))
    assert flags == [False, True] * (steps // 2)
    scale = gtx.tree_get(nnx.as_pure(optimizer.opt_state), "scale")
    assert float(scale) < 1  # the losses reached reduce_on_plateau

    abstract = nnx.state(nnx.eval_shape(fresh))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "checkpoint", abstract)
    resumed_model, resumed_optimizer = fresh()
    nnx.update((resumed_model, resumed_optimizer), restored)
    for t in range(saved_at, steps):
        train_step(resumed_model, resumed_optimizer, x[t], y[t])
    uninterrupted = jax.tree.leaves(nnx.as_pure(nnx.state((model, optimizer))))
    resumed = jax.tree.leaves(nnx.as_pure(nnx.state((resumed_model, resumed_optimizer))))
    for leaf, expected in zip(resumed, uninterrupted, strict=True):
        np.testing.assert_array_equal(leaf, expected)


def test_reset_group_and_tree_set_on_an_nnx_optimizers_opt_state_keep_its_variables(nnx_0_11, data):
    """nnx.Optimizer keeps the state's arrays in OptArray variables. reset_group gave the
    group back as bare arrays: assigned to optimizer.opt_state, the next update was a
    ValueError ('Cannot set key count on immutable node of type InjectState'); tree_set
    was a structure error ('.value is in the current ...'). The new arrays go into the
    old variables: the jitted step runs on without retracing, and the reset group's
    next step is Adam's first, -lr * g / (|g| + eps)."""
    tx = gtx.partition(
        {"kernels": gtx.adam(0.05), "biases": gtx.chain(gtx.add_noise(0.01), gtx.sgd(0.1))},
        KERNELS_AND_BIASES,
    )
    model, optimizer, train_step, traces = traced_nnx_training(tx)
    x, y = data

    for t in range(2):
        train_step(model, optimizer, x[t], y[t])

    def variables(tree):
        return jax.tree.map(type, tree, is_leaf=lambda v: isinstance(v, nnx.Variable))

    before = variables(optimizer.opt_state)
    params = nnx.state(model, nnx.Param)
    optimizer.opt_state = gtx.reset_group(tx, optimizer.opt_state, "kernels", params)
    key = jax.random.key_data(jax.random.key(7))
    optimizer.opt_state = gtx.tree_set(optimizer.opt_state, rng_key=key)
    assert variables(optimizer.opt_state) == before
    np.testing.assert_array_equal(gtx.tree_get(optimizer.opt_state, "rng_key")[...], key)

    kernel = np.asarray(model.hidden.kernel[...])
    grads = train_step(model, optimizer, x[2], y[2])
    g = np.asarray(grads["hidden"]["kernel"][...])
    np.testing.assert_allclose(
        model.hidden.kernel[...] - kernel, -0.05 * g / (np.abs(g) + 1e-8), rtol=1e-4, atol=1e-7
    )
    assert len(traces) == 1
