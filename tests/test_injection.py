"""schedule_injection (issue 3): hyperparameters as constants or schedules in the state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from tests import zoo
from tests.compilations import count_compilations


def halving(t):
    return 0.5 ** jnp.asarray(t, jnp.float32)


def test_a_schedule_is_evaluated_at_each_update_counting_from_zero():
    tx = gtx.schedule_injection(gtx.scale)(step_size=lambda t: 1.0 + jnp.asarray(t, jnp.float32))
    state = tx.init(jnp.zeros(2))
    for t in range(4):
        updates, state = tx.update(jnp.array([1.0, -2.0]), state)
        np.testing.assert_allclose(updates, [1.0 + t, -2.0 * (1.0 + t)])
        assert float(gtx.get_hyperparams(state)["step_size"]) == 1.0 + t


def test_a_learning_rate_schedule_scales_the_plain_adam_step():
    injected = gtx.adam(halving)
    # The injected optimizer computes with the float32 values it stores.
    plain = gtx.scale_by_adam(b1=float(np.float32(0.9)), b2=float(np.float32(0.999)))
    params = {"w": jnp.zeros(3)}
    injected_state, plain_state = injected.init(params), plain.init(params)
    rng = np.random.default_rng(0)
    for t in range(5):
        grads = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
        injected_updates, injected_state = injected.update(grads, injected_state, params)
        plain_updates, plain_state = plain.update(grads, plain_state, params)
        np.testing.assert_allclose(injected_updates["w"], -(0.5**t) * plain_updates["w"], rtol=1e-6)


def test_any_float_hyperparameter_may_be_a_schedule():
    b1_schedule = lambda t: jnp.where(t < 2, 0.0, 0.9)  # noqa: E731
    tx = gtx.adam(0.1, b1=b1_schedule)
    state = tx.init(jnp.zeros(1))
    seen = []
    for g in [1.0, -1.0, 1.0]:
        _, state = tx.update(jnp.array([g]), state)
        seen.append(float(gtx.get_hyperparams(state)["b1"]))
    assert seen == [0.0, 0.0, pytest.approx(0.9)]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_hyperparameters_live_in_the_state_as_float32_whatever_the_parameter_dtype(dtype):
    tx = gtx.adam(1e-3)
    params = {"w": jnp.zeros(3, dtype)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(3, dtype)}, state, params)
    hyperparams = gtx.get_hyperparams(state)
    assert set(hyperparams) == {"learning_rate", "b1", "b2", "eps", "eps_root"}
    for value in hyperparams.values():
        assert value.dtype == jnp.float32 and value.shape == ()


def test_hyperparameters_stay_float32_for_float64_parameters(x64):
    tx = gtx.adam(1e-3)
    params = jnp.zeros(3, jnp.float64)
    state = tx.init(params)
    updates, state = tx.update(jnp.ones(3, jnp.float64), state, params)
    assert updates.dtype == jnp.float64
    assert all(v.dtype == jnp.float32 for v in gtx.get_hyperparams(state).values())


def test_integer_boolean_and_dtype_arguments_are_static():
    tx = gtx.adam(1e-3, nesterov=True, mu_dtype=jnp.bfloat16)
    state = tx.init(jnp.zeros(2))
    assert "nesterov" not in gtx.get_hyperparams(state)
    assert "mu_dtype" not in gtx.get_hyperparams(state)
    assert state.inner_state[0].mu.dtype == jnp.bfloat16

    def repeat_scale(factor, times=2, negate=False):
        del times
        return gtx.scale(-factor if negate else factor)

    injected = gtx.schedule_injection(repeat_scale)(0.5, times=3, negate=True)
    state = injected.init(jnp.zeros(1))
    assert set(gtx.get_hyperparams(state)) == {"factor"}
    updates, _ = injected.update(jnp.ones(1), state)
    np.testing.assert_allclose(updates, [-0.5])


def test_an_integer_value_for_a_float_hyperparameter_is_injected():
    state = gtx.adam(1).init(jnp.zeros(2))
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == 1.0
    state = gtx.set_hyperparams(state, learning_rate=2)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == 2.0


def test_an_integer_for_an_unannotated_argument_with_a_float_default_is_injected():
    """A factory declares an argument a float by its default as well as by annotation."""

    def scaled(rate=0.5, times=1):
        return gtx.scale(rate * times)

    state = gtx.schedule_injection(scaled)(rate=2, times=3).init(jnp.zeros(1))
    hyperparams = gtx.get_hyperparams(state)
    assert list(hyperparams) == ["rate"]  # times: an int default, static
    assert hyperparams["rate"].dtype == jnp.float32 and float(hyperparams["rate"]) == 2.0


def test_an_integer_learning_rate_or_weight_decay_is_injected_in_sgd_rmsprop_and_adadelta():
    params = jnp.array([2.0, -1.0])
    grads = jnp.array([0.5, -3.0])
    # sgd(1) with the learning rate set to 0.5 afterwards: -0.5 g
    state = gtx.set_hyperparams(gtx.sgd(1).init(params), learning_rate=0.5)
    updates, _ = gtx.sgd(1).update(grads, state, params)
    np.testing.assert_allclose(updates, -0.5 * np.asarray(grads))
    # sgd(0.1, weight_decay=1), the decay set to 2: -0.1 (g + 2 p)
    tx = gtx.sgd(0.1, weight_decay=1)
    state = gtx.set_hyperparams(tx.init(params), weight_decay=2.0)
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(updates, -0.1 * (np.asarray(grads) + 2 * np.asarray(params)))
    # rmsprop(0.1, initial_scale=1): held in the state (init reads it: v_0 = 1)
    tx = gtx.rmsprop(0.1, initial_scale=1)
    state = tx.init(params)
    assert float(gtx.get_hyperparams(state)["initial_scale"]) == 1.0
    updates, _ = tx.update(grads, state, params)
    v = 0.9 * 1.0 + 0.1 * np.asarray(grads, np.float64) ** 2
    np.testing.assert_allclose(updates, -0.1 * np.asarray(grads) / np.sqrt(v + 1e-8), rtol=1e-6)
    # adadelta(learning_rate=2), set to 1: the paper's step
    state = gtx.set_hyperparams(gtx.adadelta(2).init(params), learning_rate=1.0)
    updates, _ = gtx.adadelta(2).update(grads, state, params)
    g = np.asarray(grads, np.float64)
    expected = -np.sqrt(1e-6) / np.sqrt(0.1 * g**2 + 1e-6) * g
    np.testing.assert_allclose(updates, expected, rtol=1e-6)


SWITCHES = {"momentum", "weight_decay"}  # 0 builds no block, so no hyperparameter


@pytest.mark.parametrize("name", zoo.ALL)
def test_every_float_hyperparameter_of_every_optimizer_is_injected_when_given_an_integer(name):
    """Each hyperparameter the optimizer stores is stored too when given as a Python int
    (1 where its range allows, else 0), and set_hyperparams reaches it."""
    params = jnp.zeros(2)
    stored = gtx.get_hyperparams(_injected(name, learning_rate=0.5).init(params))
    for key in stored:
        for value in (1, 0):
            if value == 0 and key in SWITCHES:
                continue
            try:
                tx = _injected(name, **{"learning_rate": 0.5, key: value})
            except ValueError:  # outside the argument's range: the next integer
                continue
            state = tx.init(params)
            assert float(gtx.get_hyperparams(state).get(key, np.nan)) == value, (key, value)
            state = gtx.set_hyperparams(state, **{key: 0.25 + value})
            assert float(gtx.get_hyperparams(state)[key]) == 0.25 + value, (key, value)
            break
        else:  # only momentum has no integer value but 0 (no block)
            assert key == "momentum", f"{name}: no integer accepted for {key}"


def test_static_args_keep_a_float_argument_out_of_the_state():
    injected = gtx.schedule_injection(gtx.scale, static_args=["step_size"])(0.5)
    state = injected.init(jnp.zeros(1))
    assert state.hyperparams == {}


def test_invalid_hyperparameters_are_reported_when_the_injected_transform_is_built():
    with pytest.raises(ValueError, match=r"b1 must be in \[0.0, 1.0\), got 1.5"):
        gtx.adam(1e-3, b1=1.5)


def test_a_non_scalar_hyperparameter_is_rejected():
    with pytest.raises(ValueError, match="learning_rate must be a scalar"):
        gtx.adam(jnp.ones(2)).init(jnp.zeros(2))


def nested_chain():
    return gtx.named_chain(
        ("clip", gtx.clip_by_global_norm(1.0)),
        ("body", gtx.chain(gtx.identity(), gtx.adam(0.1))),
    )


def test_get_and_set_reach_an_optimizer_inside_chains_and_named_chains():
    tx = nested_chain()
    state = tx.init({"w": jnp.zeros(2)})
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.1)
    state = gtx.set_hyperparams(state, learning_rate=0.01, b1=0.5)
    hyperparams = gtx.get_hyperparams(state)
    assert float(hyperparams["learning_rate"]) == pytest.approx(0.01)
    assert float(hyperparams["b1"]) == 0.5
    updates, state = tx.update({"w": jnp.array([1.0, -1.0])}, state)
    np.testing.assert_allclose(updates["w"], [-0.01, 0.01], rtol=1e-5)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.01)


def test_get_and_set_reach_an_optimizer_inside_optax_wrappers():
    tx = optax.apply_if_finite(gtx.chain(gtx.clip(1.0), gtx.adam(0.1)), 3)
    state = tx.init({"w": jnp.zeros(2)})
    state = gtx.set_hyperparams(state, learning_rate=0.2)
    updates, state = tx.update({"w": jnp.array([1.0, -1.0])}, state)
    np.testing.assert_allclose(updates["w"], [-0.2, 0.2], rtol=1e-5)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.2)


WRAPPED = {
    "masked": lambda tx: gtx.masked(tx, {"w": True, "frozen": False}),
    "partition": lambda tx: gtx.partition({"train": tx, "hold": gtx.freeze()},
                                          {"w": "train", "frozen": "hold"}),
    "multi_steps": lambda tx: gtx.multi_steps(tx, every_k=1),
    "apply_if_finite": lambda tx: gtx.apply_if_finite(tx, 3),
    "lookahead": lambda tx: gtx.lookahead(tx, sync_period=5, slow_step_size=0.5),
    "flatten": lambda tx: gtx.flatten(tx),
}  # fmt: skip


@pytest.mark.parametrize("wrapper", list(WRAPPED))
def test_get_and_set_reach_an_optimizer_inside_gradtx_wrappers(wrapper):
    tx = WRAPPED[wrapper](gtx.chain(gtx.identity(), gtx.adam(0.1)))
    params = {"w": jnp.zeros(2), "frozen": jnp.zeros(1)}
    state = tx.init(params)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.1)
    state = gtx.set_hyperparams(state, learning_rate=0.2)
    grads = {"w": jnp.array([1.0, -1.0]), "frozen": jnp.ones(1)}
    updates, state = jax.jit(tx.update)(grads, state, params)
    np.testing.assert_allclose(updates["w"], [-0.2, 0.2], rtol=1e-5)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.2)


def test_two_optimizers_holding_the_same_name_are_told_apart_by_path():
    tx = gtx.named_chain(("fast", gtx.adam(0.1)), ("slow", gtx.adam(0.01)))
    state = tx.init(jnp.zeros(2))
    # the first name both hold (dicts come back from a tree's leaves in sorted order)
    with pytest.raises(ValueError, match=r"'b1' is held by several.*\['fast'\].*\['slow'\]"):
        gtx.get_hyperparams(state)
    assert float(gtx.get_hyperparams(state, path="slow")["learning_rate"]) == pytest.approx(0.01)
    state = gtx.set_hyperparams(state, path="fast", learning_rate=0.5)
    assert float(gtx.get_hyperparams(state, path="fast")["learning_rate"]) == 0.5
    assert float(gtx.get_hyperparams(state, path="slow")["learning_rate"]) == pytest.approx(0.01)


def test_path_picks_whole_names_never_a_part_of_one():
    """path='a' once matched the 'a' of '.inner_states' and set every group's rate."""
    params = {"a": jnp.zeros(2), "s": jnp.zeros(2)}
    tx = gtx.partition({"a": gtx.adam(1e-3), "s": gtx.sgd(0.02)}, {"a": "a", "s": "s"})
    state = gtx.set_hyperparams(tx.init(params), path="a", learning_rate=0.01)
    for path in ("a", "['a']", ".inner_states['a']", "inner_states['a']"):
        assert float(gtx.get_hyperparams(state, path=path)["learning_rate"]) == pytest.approx(0.01)
    assert float(gtx.get_hyperparams(state, path="s")["learning_rate"]) == pytest.approx(0.02)
    updates, _ = tx.update({"a": jnp.ones(2), "s": jnp.ones(2)}, state, params)
    np.testing.assert_allclose(updates["s"], [-0.02, -0.02], rtol=1e-6)
    with pytest.raises(ValueError, match=r"no injected transform under the path 'st'.*at "):
        gtx.set_hyperparams(state, path="st", learning_rate=1.0)
    chained = gtx.named_chain(("encoder", gtx.adam(0.1)), ("head", gtx.adam(0.2)))
    with pytest.raises(
        ValueError, match=r"under the path 'e'; the state has them at \['encoder'\], \['head'\]$"
    ):
        gtx.get_hyperparams(chained.init(jnp.zeros(1)), path="e")
    with pytest.raises(ValueError, match=r"under the path 'e'; the state has them at the root$"):
        gtx.get_hyperparams(gtx.adam(0.1).init(jnp.zeros(1)), path="e")
    with pytest.raises(KeyError, match=r"under the path 'ead'"):
        gtx.tree_get(chained.init(jnp.zeros(1)), "learning_rate", path="ead")
    assert float(gtx.tree_get(chained.init(jnp.zeros(1)), "learning_rate", path="head")) == (
        pytest.approx(0.2)
    )
    # a position in a chain, as tree_get's docstring offers
    positional = gtx.chain(gtx.adam(0.1), gtx.sgd(0.2)).init(jnp.zeros(1))
    assert float(gtx.get_hyperparams(positional, path="1")["learning_rate"]) == pytest.approx(0.2)
    assert float(gtx.tree_get(positional, "learning_rate", path="0")) == pytest.approx(0.1)


def test_setting_an_unknown_hyperparameter_names_the_available_ones():
    state = gtx.adam(0.1).init(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"\['lr'\].*'learning_rate'"):
        gtx.set_hyperparams(state, lr=0.01)


def test_a_state_without_injection_says_how_to_get_one():
    with pytest.raises(ValueError, match="schedule_injection"):
        gtx.get_hyperparams(gtx.scale_by_adam().init(jnp.zeros(2)))


def test_changing_a_hyperparameter_between_steps_compiles_nothing():
    tx = gtx.adam(0.1)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    params, state = step(params, state)
    state = gtx.set_hyperparams(state, learning_rate=0.3)
    before = params["w"]
    with count_compilations() as compiled:
        for lr in [0.0, 0.5, 0.25]:
            state = gtx.set_hyperparams(state, learning_rate=lr, b2=0.99)
            params, state = step(params, state)
    assert compiled == []
    assert float(gtx.get_hyperparams(state)["b2"]) == pytest.approx(0.99)
    assert not np.allclose(params["w"], before)


def test_setting_a_hyperparameter_inside_jit_works():
    tx = gtx.adam(0.1)
    state = tx.init(jnp.zeros(2))

    @jax.jit
    def with_lr(state, lr):
        return gtx.set_hyperparams(state, learning_rate=lr)

    state = with_lr(state, jnp.asarray(0.02))
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.02)


def _trajectory(tx, grads):
    params = jnp.zeros(grads.shape[1:], grads.dtype)

    def body(carry, g):
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (gtx.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), grads)
    return params


FLOAT_ARGUMENTS = {"sgd_momentum": {"momentum": 0.9}, "sgd_nesterov": {"momentum": 0.9}}
STATIC_ARGUMENTS = {"sgd_nesterov": {"nesterov": True}}


def adam_like(h, nesterov=False, decay=False):
    return gtx.chain(
        gtx.scale_by_adam(h["b1"], h["b2"], h["eps"], h["eps_root"], nesterov=nesterov),
        gtx.add_decayed_weights(h["weight_decay"]) if decay else gtx.identity(),
        gtx.scale_by_learning_rate(h["learning_rate"]),
    )


PLAIN_CHAINS = {
    "sgd": lambda h: gtx.scale_by_learning_rate(h["learning_rate"]),
    "sgd_momentum": lambda h: gtx.chain(
        gtx.trace(h["momentum"]), gtx.scale_by_learning_rate(h["learning_rate"])
    ),
    "sgd_nesterov": lambda h: gtx.chain(
        gtx.trace(h["momentum"], nesterov=True), gtx.scale_by_learning_rate(h["learning_rate"])
    ),
    "adagrad": lambda h: gtx.chain(
        gtx.scale_by_rss(h["initial_accumulator_value"], h["eps"]),
        gtx.scale_by_learning_rate(h["learning_rate"]),
    ),
    "rmsprop": lambda h: gtx.chain(
        gtx.scale_by_rms(h["decay"], h["eps"], h["initial_scale"]),
        gtx.scale_by_learning_rate(h["learning_rate"]),
    ),
    "adadelta": lambda h: gtx.chain(
        gtx.scale_by_adadelta(h["rho"], h["eps"]), gtx.scale_by_learning_rate(h["learning_rate"])
    ),
    "adam": adam_like,
    "adamw": lambda h: adam_like(h, decay=True),
    "amsgrad": lambda h: gtx.chain(
        gtx.amsgrad_max(h["b1"], h["b2"], h["eps"], h["eps_root"]),
        gtx.scale_by_learning_rate(h["learning_rate"]),
    ),
    "adamax": lambda h: gtx.chain(
        gtx.scale_by_adamax(h["b1"], h["b2"], h["eps"]),
        gtx.scale_by_learning_rate(h["learning_rate"]),
    ),
    "adamaxw": lambda h: gtx.chain(
        gtx.scale_by_adamax(h["b1"], h["b2"], h["eps"]),
        gtx.add_decayed_weights(h["weight_decay"]),
        gtx.scale_by_learning_rate(h["learning_rate"]),
    ),
    "nadam": lambda h: adam_like(h, nesterov=True),
    "nadamw": lambda h: adam_like(h, nesterov=True, decay=True),
    "radam": lambda h: gtx.chain(
        gtx.scale_by_radam(h["b1"], h["b2"], h["eps"], h["eps_root"]),
        gtx.scale_by_learning_rate(h["learning_rate"]),
    ),
    "rprop": lambda h: gtx.chain(
        gtx.scale_by_rprop(
            h["learning_rate"], h["eta_minus"], h["eta_plus"], h["min_step_size"],
            h["max_step_size"],
        ),
        gtx.scale(-1.0),
    ),
}  # fmt: skip
"""Each optimizer as the plain chain of building blocks its docstring gives, built from
a dict of hyperparameter values."""


def _injected(name, **arguments):
    factory = zoo.require(name)
    return factory(**{**FLOAT_ARGUMENTS.get(name, {}), **STATIC_ARGUMENTS.get(name, {}),
                      **arguments})  # fmt: skip


def test_every_optimizer_has_a_plain_chain():
    assert sorted(PLAIN_CHAINS) == sorted(zoo.ALL)


@pytest.mark.parametrize("name", zoo.ALL)
def test_the_injected_optimizer_follows_the_plain_chain(name):
    """Each optimizer and its plain chain of blocks, built with the float32 values the
    injected state holds, give the same 50-step trajectory within 1e-6."""
    injected = _injected(name, learning_rate=1e-2)
    grads = jnp.asarray(np.random.default_rng(1).normal(size=(50, 4)), jnp.float32)
    stored = gtx.get_hyperparams(injected.init(grads[0]))
    plain = PLAIN_CHAINS[name]({k: float(v) for k, v in stored.items()})
    run = jax.jit(_trajectory, static_argnums=0)
    np.testing.assert_allclose(run(injected, grads), run(plain, grads), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", zoo.ALL)
def test_every_float_hyperparameter_of_every_optimizer_may_be_a_schedule(name):
    """Replacing each stored hyperparameter by a schedule that returns its value (and
    records the steps it is asked for) changes nothing in the trajectory."""
    grads = jnp.asarray(np.random.default_rng(3).normal(size=(20, 4)), jnp.float32)
    constant = _injected(name, learning_rate=1e-2)
    stored = gtx.get_hyperparams(constant.init(grads[0]))
    asked = []

    def schedule_of(value):
        def schedule(t):
            asked.append(t)
            return jnp.asarray(value, jnp.float32) + 0 * t

        return schedule

    # rprop's learning_rate is its initial step size, read once by init: it refuses a
    # schedule (with a TypeError that says so), so it stays a number there.
    fixed = {"learning_rate"} if name == "rprop" else set()
    scheduled = _injected(
        name,
        **{k: float(v) if k in fixed else schedule_of(v) for k, v in stored.items()},
    )
    run = jax.jit(_trajectory, static_argnums=0)
    np.testing.assert_allclose(run(scheduled, grads), run(constant, grads), rtol=1e-6)
    assert asked  # the schedules were evaluated


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "sgd_momentum"])
def test_the_injected_optimizer_is_close_to_the_plain_chain_with_decimal_floats(name):
    """With decimal hyperparameters (b2=0.999) the plain chain computes 1 - b2 in double
    precision and the injected one in float32: the trajectories agree within 1e-5."""
    defaults = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "decay": 0.9,
                "initial_scale": 0.0, "weight_decay": 1e-4, "momentum": 0.9}  # fmt: skip
    injected = _injected(name, learning_rate=1e-2)
    plain = PLAIN_CHAINS[name]({**defaults, "learning_rate": 1e-2})
    grads = jnp.asarray(np.random.default_rng(2).normal(size=(50, 4)), jnp.float32)
    run = jax.jit(_trajectory, static_argnums=0)
    np.testing.assert_allclose(
        run(injected, grads),
        run(plain, grads),
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.schedule_injection(gtx.sgd)(learning_rate=0.1, momentum=0.9),
        lambda: gtx.schedule_injection(gtx.sgd)(
            learning_rate=0.1, momentum=lambda t: jnp.minimum(0.9, 0.3 * t)
        ),
        lambda: optax.inject_hyperparams(gtx.sgd)(learning_rate=0.1),
        lambda: optax.inject_hyperparams(gtx.adadelta)(learning_rate=1.0),
        lambda: optax.inject_hyperparams(gtx.rmsprop)(learning_rate=0.1, momentum=0.0),
    ],
    ids=["sgd_momentum", "sgd_momentum_ramp", "optax_sgd", "optax_adadelta", "optax_rmsprop"],
)
def test_an_injector_around_an_optimizer_builds_one_chain_eagerly_and_under_jit(make):
    """An injector passes its values as float32 arrays, concrete in init and traced under
    jit: sgd/adadelta/rmsprop switched their momentum and weight-decay blocks off for a
    concrete 0 and on for a tracer, so a jitted update met a state without them
    ('_sgd_chain() missing ... weight_decay'); a ramped momentum starting at 0 failed at
    the second eager update. Arrays now always build the block."""
    tx = make()
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 0.5)}
    state = tx.init(params)
    structure = jax.tree.structure(state)
    assert jax.tree.structure(jax.eval_shape(tx.init, params)) == structure
    eager_state, jit_state = state, state
    for _ in range(3):
        eager, eager_state = tx.update(grads, eager_state, params)
        jitted, jit_state = jax.jit(tx.update)(grads, jit_state, params)
        assert jax.tree.structure(eager_state) == structure
        assert jax.tree.structure(jit_state) == structure
        np.testing.assert_allclose(jitted["w"], eager["w"], rtol=1e-6)


def test_optax_inject_hyperparams_around_a_gradtx_optimizer_drives_it_under_jit():
    """Optax hands the factory its state's values at every update; the gradtx optimizer
    read its own state instead: a halving schedule gave -0.1 four times, and setting
    Optax's state.hyperparams changed nothing. Traced arguments are now read at each
    update. Optax's sgd is the reference."""
    params, grads = jnp.zeros(2), jnp.array([1.0, -2.0])
    runs = []
    for factory in (gtx.sgd, optax.sgd):
        tx = optax.inject_hyperparams(factory)(learning_rate=lambda t: 0.1 * 0.5**t, momentum=0.9)
        update = jax.jit(tx.update)
        state, updates = tx.init(params), []
        for _ in range(4):
            u, state = update(grads, state, params)
            updates.append(u)
        fixed = optax.inject_hyperparams(factory)(learning_rate=0.1)
        fixed_state = fixed.init(params)
        fixed_state.hyperparams["learning_rate"] = jnp.asarray(0.5)
        updates.append(jax.jit(fixed.update)(grads, fixed_state, params)[0])
        runs.append(np.asarray(updates))
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6)
    np.testing.assert_allclose(runs[0][-1], [-0.5, 1.0], rtol=1e-6)


@pytest.mark.parametrize("jitted", [False, True])
def test_an_optimizer_injected_again_follows_the_outer_schedule(jitted):
    """gtx.schedule_injection(gtx.adam)(learning_rate=schedule): the inner optimizer
    kept the value its own state got at init, so the schedule stopped at step 0, eager
    and jitted alike. Values the outer injector evaluates are read as given."""
    params, grads = jnp.zeros(2), jnp.array([1.0, -2.0])
    schedule = lambda t: 0.1 * 0.5**t  # noqa: E731
    ramp = lambda t: jnp.minimum(0.9, 0.3 * t)  # noqa: E731
    for nested, plain in [
        (gtx.schedule_injection(gtx.adam)(learning_rate=schedule), gtx.adam(schedule)),
        (gtx.schedule_injection(gtx.sgd)(0.1, momentum=ramp), gtx.sgd(0.1, momentum=ramp)),
    ]:
        runs = []
        for tx in (nested, plain):
            update = jax.jit(tx.update) if jitted else tx.update
            state, updates = tx.init(params), []
            for _ in range(4):
                u, state = update(grads, state, params)
                updates.append(u)
            runs.append(np.asarray(updates))
        np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6)


def test_the_root_of_a_nested_injection_is_picked_by_an_empty_path():
    """An injector around a wrapper of an injected optimizer holds the rate at the root
    and inside: the ambiguity error asked for a key, and the root has none."""

    def accumulated(learning_rate=0.1):
        return gtx.multi_steps(gtx.adam(learning_rate), every_k=2)

    tx = gtx.schedule_injection(accumulated)(learning_rate=0.1)
    params = jnp.zeros(2)
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"path='' for the root"):
        gtx.get_hyperparams(state)
    assert float(gtx.get_hyperparams(state, path="")["learning_rate"]) == pytest.approx(0.1)
    assert float(gtx.tree_get(state, "learning_rate", path="")) == pytest.approx(0.1)
    moved = gtx.tree_set(state, path="", learning_rate=0.5)
    assert float(gtx.get_hyperparams(moved, path="")["learning_rate"]) == 0.5
    state = gtx.set_hyperparams(state, path="", learning_rate=0.0)
    for _ in range(2):
        updates, state = tx.update(jnp.ones(2), state, params)
    np.testing.assert_array_equal(updates, [0.0, 0.0])  # the root's rate drives the inner


def test_a_learning_rate_passed_into_a_jitted_step_is_the_one_used():
    """Rebuilding the optimizer inside a step from a traced argument (a sweep over
    learning rates): the argument is read at each update, as a schedule's value is."""
    params, grads = jnp.zeros(2), jnp.array([1.0, -2.0])
    state = gtx.sgd(0.1).init(params)

    @jax.jit
    def step(state, learning_rate):
        return gtx.sgd(learning_rate).update(grads, state, params)

    for learning_rate in (0.5, 0.01):
        updates, new_state = step(state, learning_rate)
        np.testing.assert_allclose(updates, -learning_rate * grads, rtol=1e-6)
        assert float(gtx.get_hyperparams(new_state)["learning_rate"]) == pytest.approx(
            learning_rate
        )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": -0.1}, r"learning_rate must be in \[0.0, inf\), got -0.1"),
        ({"b1": float("nan")}, r"b1 must be a real number \(not NaN\)"),
        ({"learning_rate": None}, r"learning_rate must be a real number"),
    ],
    ids=["negative_learning_rate", "nan", "none"],
)
def test_set_hyperparams_refuses_values_no_hyperparameter_takes(values, message):
    """A jitted step ran them silently (a negative rate ascends, NaN spreads); only the
    next un-jitted update named them."""
    state = gtx.adam(0.1).init(jnp.zeros(2))
    with pytest.raises(ValueError, match=message):
        gtx.set_hyperparams(state, **values)


@pytest.mark.parametrize("jitted", [False, True])
@pytest.mark.parametrize("rate", [jnp.float32(0.1), jnp.asarray(0.1), np.float32(0.1), 0.1])
def test_a_learning_rate_set_in_the_state_is_used_however_the_optimizer_got_its_rate(rate, jitted):
    """Concrete rates, JAX arrays included, are read from the state: set_hyperparams, a
    plateau callback, tree_set and a restored checkpoint change them (reading every JAX
    array from the argument silently undid them)."""
    params, grads = jnp.zeros(2), jnp.array([1.0, -2.0])
    tx = gtx.sgd(rate)
    state = gtx.set_hyperparams(tx.init(params), learning_rate=0.001)
    update = jax.jit(tx.update) if jitted else tx.update
    updates, state = update(grads, state, params)
    np.testing.assert_allclose(updates, -0.001 * grads, rtol=1e-6)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.001)


def test_set_hyperparams_on_a_batch_of_states_points_to_vmap():
    tx = gtx.adam(0.1)
    states = jax.vmap(lambda _: tx.init(jnp.zeros(2)))(jnp.arange(3))
    learning_rates = jnp.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="must be a scalar.*jax.vmap"):
        gtx.set_hyperparams(states, learning_rate=learning_rates)
    states = jax.vmap(lambda s, lr: gtx.set_hyperparams(s, learning_rate=lr))(
        states, learning_rates
    )
    np.testing.assert_allclose(gtx.get_hyperparams(states)["learning_rate"], learning_rates)


def test_extra_arguments_reach_the_injected_transform():
    """update(..., value=loss) passes ``value`` on by keyword to the transform built
    inside: reduce_on_plateau with patience 1 halves its scale after two bad losses in
    a row (PyTorch's rule: more than ``patience`` epochs without improvement)."""
    tx = gtx.schedule_injection(gtx.reduce_on_plateau)(factor=0.5, patience=1)
    state = tx.init(jnp.zeros(2))
    step = jax.jit(tx.update)
    scales = []
    for loss in [1.0, 0.5, 0.6, 0.6, 0.6, 0.6]:
        updates, state = step(jnp.ones(2), state, value=jnp.float32(loss))
        scales.append(float(updates[0]))
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]


def test_set_hyperparams_replaces_a_hyperparameter_held_as_a_numpy_scalar():
    """A state read back to the host and indexed (``x[()]``) holds NumPy scalars, which
    have no ``replace``: the new value takes their place, and the next update uses it."""
    tx = gtx.sgd(0.1)
    host = jax.tree.map(lambda x: np.asarray(x)[()], tx.init(jnp.zeros(1)))
    assert isinstance(host.hyperparams["learning_rate"], np.float32)
    state = gtx.set_hyperparams(host, learning_rate=0.5)
    assert float(gtx.get_hyperparams(state)["learning_rate"]) == 0.5
    updates, _ = tx.update(jnp.ones(1), state)
    assert updates.tolist() == [-0.5]


@pytest.mark.parametrize("value", [None, "0.1"], ids=["None", "str"])
def test_a_schedule_that_returns_no_number_is_named(value):
    tx = gtx.schedule_injection(gtx.scale)(step_size=lambda t: value)
    with pytest.raises(TypeError, match=f"step_size returned {value!r}, not a number"):
        tx.init(jnp.zeros(1))


@pytest.mark.parametrize(
    ("factory", "argument"),
    [
        (gtx.masked, {"mask": lambda params: jax.tree.map(lambda p: p.ndim > 1, params)}),
        (gtx.partition, {"labels": lambda params: jax.tree.map(lambda p: "a", params)}),
    ],
    ids=["masked", "partition"],
)
def test_a_wrappers_mask_function_outside_static_args_is_named(factory, argument):
    """schedule_injection(gtx.masked)(tx, mask=fn) called fn with the step count and
    injected its False as 0.0, which masked refused as "mask leaves must be bools, got
    Array(0.)": nothing said that fn had been taken for a schedule."""
    (name,) = argument
    inner = gtx.sgd(0.1) if factory is gtx.masked else {"a": gtx.sgd(0.1)}
    tx = gtx.schedule_injection(factory)(inner, **argument)
    with pytest.raises(TypeError, match=rf"{name} returned .*pass static_args='{name}'"):
        tx.init({"w": jnp.ones((2, 2))})
    fixed = gtx.schedule_injection(factory, static_args=name)(inner, **argument)
    updates, _ = fixed.update({"w": jnp.ones((2, 2))}, fixed.init({"w": jnp.ones((2, 2))}))
    np.testing.assert_allclose(updates["w"], -0.1 * np.ones((2, 2)))


def test_a_traced_float64_hyperparameter_is_float32_unless_every_leaf_is_float64(x64):
    """As documented in _at_least_float32: a float64 learning rate traced into update
    keeps float64 where every leaf is float64 (a meta-gradient keeps its precision) and
    is rounded to float32 with mixed leaves, as a value read from the state is."""

    def step_of_the_float64_leaf(params):
        def run(learning_rate):
            tx = gtx.sgd(learning_rate)
            updates, _ = tx.update(params, tx.init(params), params)
            return updates["b"][0]

        return float(jax.jit(run)(jnp.float64(0.1)))

    ones = lambda dtype: jnp.ones(1, dtype)  # noqa: E731
    assert step_of_the_float64_leaf({"a": ones(jnp.float64), "b": ones(jnp.float64)}) == -0.1
    mixed = step_of_the_float64_leaf({"a": ones(jnp.float32), "b": ones(jnp.float64)})
    assert mixed == -float(np.float32(0.1))


def test_a_state_holds_hyperparameter_arrays_of_its_own_not_the_callers():
    """A jitted step that donates the state deletes every array the state holds and
    refuses one held twice: an optimizer built with an array learning rate kept that
    array in each state it made (deleted by the first donated step: the next ``init``,
    or the caller's own read, failed), and ``set_hyperparams`` put one array into every
    injected state it reached (two groups of a partition: "donate the same buffer
    twice"), and the caller's array itself."""
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    rate, value = jnp.float32(0.05), jnp.float32(0.01)
    tx = gtx.partition({"x": gtx.adam(rate), "y": gtx.adam(rate)}, {"a": "x", "b": "y"})
    state = gtx.set_hyperparams(tx.init(params), b1=0.8, eps=value)
    leaves = [x for x in jax.tree.leaves((rate, value, params, state)) if isinstance(x, jax.Array)]
    assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)

    def step(params, state):
        updates, state = tx.update(jax.tree.map(jnp.sin, params), state, params)
        return gtx.apply_updates(params, updates), state

    donated = jax.tree.map(jnp.copy, params)
    _, new_state = jax.jit(step, donate_argnums=(0, 1))(donated, state)
    assert float(rate) == pytest.approx(0.05) and float(value) == pytest.approx(0.01)
    assert gtx.get_hyperparams(tx.init(params), path="x")["learning_rate"] == rate
    assert gtx.get_hyperparams(new_state, path="y")["eps"] == value
