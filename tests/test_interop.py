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


def test_flax_nnx_optimizer_takes_a_gradtx_optimizer_as_tx(nnx_0_11):
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


def test_set_hyperparams_on_an_nnx_optimizer_keeps_its_variables_and_takes_effect(nnx_0_11):
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


def test_gradtx_optimizers_in_optax_wrappers_follow_the_optax_only_program():
    """What an Optax user does next, gradtx members against the same program in Optax:
    optax.MultiSteps (and has_updated, Optax's and gradtx's), inject_hyperparams with a
    schedule (the learning rate a user logs), multi_transform. One jitted program over
    the cases; float32 rounding apart (bias corrections, docs/optimizers.md)."""
    schedule = optax.linear_schedule(0.1, 0.01, 3)
    multi_steps = {lib: optax.MultiSteps(lib.adam(0.1), 2) for lib in (gtx, optax)}
    cases = {
        "multi_steps": lambda lib: multi_steps[lib].gradient_transformation(),
        "inject": lambda lib: optax.inject_hyperparams(lib.adam)(learning_rate=schedule, b1=0.8),
        "multi_transform": lambda lib: optax.multi_transform(
            {"adam": lib.adam(0.1), "sgd": lib.sgd(0.1, momentum=0.9)}, {"w": "adam", "b": "sgd"}
        ),
    }
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([0.1, 0.2])}
    grads = [jax.tree.map(lambda p, i=i: jnp.sin((i + 1) * p + i), params) for i in range(4)]

    @jax.jit
    def train(params):
        out = {}
        for name, make in cases.items():
            for lib in (gtx, optax):
                tx, p = make(lib), params
                state, updated = tx.init(p), []
                for g in grads:
                    updates, state = tx.update(g, state, p)
                    p = optax.apply_updates(p, updates)
                    if name == "multi_steps" and lib is gtx:
                        updated.append(
                            (multi_steps[gtx].has_updated(state), gtx.has_updated(state))
                        )
                out[name, lib.__name__] = p, state, updated
        return out

    out = train(params)
    for name in cases:
        gradtx_params, optax_params = out[name, "gradtx"][0], out[name, "optax"][0]
        for a, b in zip(jax.tree.leaves(gradtx_params), jax.tree.leaves(optax_params), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(out["multi_steps", "gradtx"][2], [[0, 0], [1, 1], [0, 0], [1, 1]])
    state = out["inject", "gradtx"][1]
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.01)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.01)
    with pytest.raises(KeyError, match="multiple values"):  # the wrapper's and gradtx's (docs)
        optax.tree_utils.tree_get(state, "learning_rate")


def test_quantized_state_keeps_optax_copies_of_params_and_gradients_exact():
    """optax.MultiSteps' gradient sum and schedule-free's z were quantized to 8 bits
    (SGD's params 7e-3 and 3e-2 off in 24 steps); with a stateless inner optimizer the
    wrapper now changes nothing."""
    params = {"w": jnp.linspace(-1.0, 1.0, 64)}
    grads = [{"w": jnp.sin(jnp.arange(64.0) * (i + 1))} for i in range(4)]
    makers = (
        lambda: optax.MultiSteps(optax.sgd(0.1), 2).gradient_transformation(),
        lambda: optax.contrib.schedule_free(optax.sgd(0.1), 0.1),
    )

    def quantized(make):
        return gtx.quantized_state(make(), block_size=16, min_size=16)

    for make in makers:
        state = jax.eval_shape(quantized(make).init, params)
        is_quantized = lambda x: isinstance(x, gtx.QuantizedArray)  # noqa: E731
        assert not any(map(is_quantized, jax.tree.leaves(state, is_leaf=is_quantized)))
    trained = jax.jit(
        lambda p: [(run(quantized(make), grads, p), run(make(), grads, p)) for make in makers]
    )(params)
    for with_8_bits, without in trained:  # XLA fuses the two differently: an ulp apart
        np.testing.assert_allclose(with_8_bits["w"], without["w"], rtol=0, atol=1e-6)


def test_gradtx_errors_name_an_optax_transform_or_schedule_factory_given_by_mistake():
    with pytest.raises(TypeError, match="factory must be a function.*not what it returned"):
        gtx.schedule_injection(optax.adam(0.1))
    with pytest.raises(TypeError, match="learning_rate returned .*not a number"):
        gtx.adam(optax.constant_schedule).init({"w": jnp.zeros(2)})
    # Optax injects integers too: traced under jit, a count is refused with the way out
    tx = optax.inject_hyperparams(gtx.apply_if_finite)(gtx.adam(0.1), 2)
    params = {"w": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"static_args=\('max_consecutive_errors',\)"):
        jax.jit(tx.update)(params, tx.init(params), params)


def test_optax_wrappers_forward_value_to_a_gradtx_transform_handed_as_extra_args():
    """Optax's wrappers pass extra arguments only to an optax.GradientTransformationExtraArgs:
    a plain gradtx reduce_on_plateau inside optax.MultiSteps never sees value= (an error
    saying what to do); handed over as one, it follows gradtx's own multi_steps."""

    def plateau_adam():
        return gtx.chain(gtx.adam(0.1), gtx.reduce_on_plateau(factor=0.5, patience=0))

    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    with pytest.raises(ValueError, match=r"GradientTransformationExtraArgs\(\*tx\)"):
        tx = optax.MultiSteps(plateau_adam(), 2).gradient_transformation()
        tx.update(params, tx.init(params), params, value=jnp.array(1.0))

    def train(tx, p):
        state = tx.init(p)
        for i in range(6):
            grads = jax.tree.map(lambda x, i=i: jnp.cos(x + i), p)
            updates, state = tx.update(grads, state, p, value=jnp.array(1.0))
            p = optax.apply_updates(p, updates)
        return p

    handed = optax.GradientTransformationExtraArgs(*plateau_adam())
    optax_wrapped, gradtx_wrapped = jax.jit(
        lambda p: (
            train(optax.MultiSteps(handed, 2).gradient_transformation(), p),
            train(gtx.multi_steps(plateau_adam(), 2), p),
        )
    )(params)
    np.testing.assert_allclose(optax_wrapped["w"], gradtx_wrapped["w"], rtol=1e-6)
