"""Bad input gets a clear error at the earliest point, naming what is wrong."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx.compat import keras as kc
from gradtx.compat import torch as tc
from tests import zoo

INVALID_HYPERPARAMETERS = [
    ("sgd", {"momentum": 1.0}, "momentum", "[0.0, 1.0)"),
    ("sgd", {"momentum": -0.1}, "momentum", "[0.0, 1.0)"),
    ("sgd", {"weight_decay": -1.0}, "weight_decay", "[0.0, inf)"),
    ("sgd", {"learning_rate": -0.1}, "learning_rate", "[0.0, inf)"),
    ("adagrad", {"eps": -1.0}, "eps", "[0.0, inf)"),
    ("adagrad", {"initial_accumulator_value": -1.0}, "initial_accumulator_value", "[0.0, inf)"),
    ("rmsprop", {"decay": 1.5}, "decay", "[0.0, 1.0)"),
    ("rmsprop", {"eps": -1.0}, "eps", "[0.0, inf)"),
    ("rmsprop", {"momentum": 1.0}, "momentum", "[0.0, 1.0)"),
    ("adadelta", {"rho": 1.0}, "rho", "[0.0, 1.0)"),
    ("adadelta", {"eps": -1.0}, "eps", "(0.0, inf)"),
    ("adadelta", {"weight_decay": -1.0}, "weight_decay", "[0.0, inf)"),
    ("adam", {"b1": 1.0}, "b1", "[0.0, 1.0)"),
    ("adam", {"b2": -0.1}, "b2", "[0.0, 1.0)"),
    ("adam", {"eps": -1e-8}, "eps", "[0.0, inf)"),
    ("adam", {"eps_root": -1.0}, "eps_root", "[0.0, inf)"),
    ("adamw", {"b2": 1.0}, "b2", "[0.0, 1.0)"),
    ("adamw", {"weight_decay": -1.0}, "weight_decay", "[0.0, inf)"),
    ("amsgrad", {"b2": 1.0}, "b2", "[0.0, 1.0)"),
    ("amsgrad", {"eps": -1.0}, "eps", "[0.0, inf)"),
    ("adamax", {"b1": -0.5}, "b1", "[0.0, 1.0)"),
    ("adamax", {"eps": -1.0}, "eps", "[0.0, inf)"),
    ("nadam", {"b1": 1.0}, "b1", "[0.0, 1.0)"),
    ("nadamw", {"weight_decay": -0.1}, "weight_decay", "[0.0, inf)"),
    ("rprop", {"eta_minus": 1.5}, "eta_minus", "(0.0, 1.0]"),
    ("rprop", {"eta_plus": 0.5}, "eta_plus", "[1.0, inf)"),
    ("rprop", {"min_step_size": -1.0}, "min_step_size", "[0.0, inf)"),
    ("rprop", {"max_step_size": 1e-7}, "max_step_size", ">= min_step_size"),
    ("rprop", {"learning_rate": -1.0}, "learning_rate", "(0.0, inf)"),
]


@pytest.mark.parametrize(
    "name, arguments, argument, allowed",
    INVALID_HYPERPARAMETERS,
    ids=[f"{n}-{a}" for n, _, a, _ in INVALID_HYPERPARAMETERS],
)
def test_an_invalid_hyperparameter_is_named_with_its_range_when_the_optimizer_is_built(
    name, arguments, argument, allowed
):
    factory = zoo.require(name)
    arguments = dict(arguments)
    learning_rate = arguments.pop("learning_rate", 0.1)
    with pytest.raises(ValueError) as error:
        factory(learning_rate, **arguments)
    message = str(error.value)
    assert message.startswith(f"{argument} must be"), message
    assert allowed in message, message
    assert repr(arguments.get(argument, learning_rate)) in message, message


@pytest.mark.parametrize("value", [float("nan"), "0.1", 1 + 2j])
def test_a_learning_rate_that_is_not_a_real_number_is_rejected(value):
    with pytest.raises(ValueError, match="learning_rate must be a real number"):
        gtx.adam(value)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda v: gtx.scale_by_adam(b1=v), "b1"),
        (lambda v: gtx.clip(v), "max_delta"),
        (lambda v: gtx.sgd(v), "learning_rate"),
    ],
    ids=["scale_by_adam", "clip", "sgd"],
)
def test_a_hyperparameter_with_several_values_is_rejected_when_built(build, name):
    # b1=[0.0, 0.9] used one b1 per element of a 2-vector leaf and failed inside jnp on
    # a 3-vector; clip([1, 2]) clipped each element to its own bound
    with pytest.raises(ValueError, match=f"{name} must be a scalar .*got array"):
        build(np.array([0.5, 0.9]))
    build(np.float32(0.5))  # a NumPy scalar or 0-d array is a number
    build(jnp.asarray(0.5))


def test_building_blocks_check_their_hyperparameters_too():
    with pytest.raises(ValueError, match=re.escape("b1 must be in [0.0, 1.0), got 1.0")):
        gtx.scale_by_adam(b1=1.0)
    with pytest.raises(ValueError, match=re.escape("max_delta must be in [0.0, inf], got -1")):
        gtx.clip(-1)
    with pytest.raises(ValueError, match="mu_dtype must be a floating dtype"):
        gtx.scale_by_adam(mu_dtype=jnp.int32)


BLOCK_HYPERPARAMETERS_OUT_OF_RANGE = [
    (gtx.scale_by_nadam_schedule, "b1", 1.0, "[0.0, 1.0)"),
    (gtx.scale_by_nadam_schedule, "b2", -0.1, "[0.0, 1.0)"),
    (gtx.scale_by_nadam_schedule, "eps", -1.0, "[0.0, inf)"),
    (gtx.scale_by_nadam_schedule, "momentum_decay", -1.0, "[0.0, inf)"),
    (gtx.scale_by_radam, "b1", -0.1, "[0.0, 1.0)"),
    (gtx.scale_by_radam, "b2", 1.0, "[0.0, 1.0)"),
    (gtx.scale_by_radam, "eps", -1.0, "[0.0, inf)"),
    (gtx.scale_by_radam, "eps_root", -1.0, "[0.0, inf)"),
]


@pytest.mark.parametrize(
    "factory, argument, value, allowed",
    BLOCK_HYPERPARAMETERS_OUT_OF_RANGE,
    ids=[f"{f.__name__}-{a}" for f, a, _, _ in BLOCK_HYPERPARAMETERS_OUT_OF_RANGE],
)
def test_a_building_block_names_a_hyperparameter_out_of_range(factory, argument, value, allowed):
    message = f"{argument} must be in {allowed}, got {value}"
    with pytest.raises(ValueError, match=re.escape(message)):
        factory(**{argument: value})


@pytest.mark.parametrize("name", zoo.ALL)
def test_a_gradient_tree_with_a_different_structure_names_the_first_differing_path(name):
    tx = zoo.make(name, 0.1)
    params = {"decoder": {"bias": jnp.zeros(2), "kernel": jnp.zeros(2)}, "encoder": jnp.zeros(2)}
    state = tx.init(params)
    grads = {"decoder": {"bias": jnp.ones(2), "kernal": jnp.ones(2)}, "encoder": jnp.ones(2)}
    with pytest.raises(ValueError) as error:
        updates, state = tx.update(grads, state, params)
        gtx.apply_updates(params, updates)
    message = str(error.value)
    assert "structure" in message, message
    assert "['decoder']['kernel']" in message or "['decoder']['kernal']" in message, message


@pytest.mark.parametrize("name", zoo.ALL)
def test_a_gradient_with_a_missing_leaf_names_it(name):
    tx = zoo.make(name, 0.1)
    params = [jnp.zeros(2), jnp.zeros(3)]
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"\[1\]"):
        updates, state = tx.update([jnp.ones(2)], state, params)
        gtx.apply_updates(params, updates)


def test_a_state_leaf_of_another_shape_is_named_with_both_shapes():
    tx = gtx.adam(0.1)
    state = tx.init({"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"shape mismatch at \['w'\].*\[4\].*\[3\]"):
        tx.update({"w": jnp.ones(4)}, state)


@pytest.mark.parametrize("jitted", [False, True])
def test_a_wrong_leaf_is_named_by_its_own_path_among_none_leaves(jitted):
    """Paths counted None leaves and the leaves did not: ['w'] was reported as ['b'] and
    ['a'] (masked and partitioned trees have None leaves)."""
    params = {"a": None, "b": jnp.zeros(2), "w": jnp.zeros(3)}
    state = gtx.adam(0.1).init(params)
    update = jax.jit(gtx.adam(0.1).update) if jitted else gtx.adam(0.1).update
    with pytest.raises(ValueError, match=r"shape mismatch at \['w'\].*\[4\].*\[3\]"):
        update({"a": None, "b": jnp.ones(2), "w": jnp.ones(4)}, state)


@pytest.mark.parametrize("jitted", [False, True])
def test_the_first_of_several_wrong_state_leaves_is_named(jitted):
    # eagerly the leaves are checked one per group of equal shapes: still the first one
    params = [jnp.zeros(3) for _ in range(40)]
    state = gtx.adam(0.1).init(params)
    wrong = [jnp.ones(3) for _ in range(40)]
    wrong[25] = wrong[31] = jnp.ones(4)
    update = jax.jit(gtx.adam(0.1).update) if jitted else gtx.adam(0.1).update
    for _ in range(3):  # op by op, then with compiled kernels
        with pytest.raises(ValueError, match=r"shape mismatch at \[25\].*\[4\].*\[3\]"):
            update(wrong, state)
        update(params, state)


@pytest.mark.parametrize("name", zoo.ALL)
def test_integer_parameters_get_a_type_error_naming_the_path(name):
    tx = zoo.make(name, 0.1)
    params = {"embedding": jnp.zeros(3), "step": jnp.zeros(2, jnp.int32)}
    with pytest.raises(TypeError) as error:
        state = tx.init(params)
        tx.update({"embedding": jnp.ones(3), "step": jnp.ones(2, jnp.int32)}, state, params)
    message = str(error.value)
    assert "['step']" in message and "int32" in message, message
    assert "mask" in message.lower(), message


SCHEDULE = gtx.schedules.linear(0.5, 0.1, 4)

NUMBER_ONLY_ARGUMENTS = [
    (gtx.add_l1, "strength"),
    (gtx.max_norm, "max_value"),
    (gtx.clip, "max_delta"),
    (gtx.clip_by_global_norm, "max_norm"),
    (gtx.trace, "decay"),
    (gtx.nesterov_lookahead, "decay"),
    (gtx.scale_by_adam, "b1"),
    (gtx.scale_by_rms, "decay"),
    (gtx.scale_by_local_gain, "increase"),
    (gtx.ema_params, "decay"),
]


@pytest.mark.parametrize(
    ("factory", "argument"), NUMBER_ONLY_ARGUMENTS, ids=[a for _, a in NUMBER_ONLY_ARGUMENTS]
)
def test_a_schedule_where_a_block_takes_a_number_is_named_when_the_block_is_built(
    factory, argument
):
    with pytest.raises(TypeError, match=rf"{argument} must be a number here, got a schedule"):
        factory(**{argument: SCHEDULE})


def test_the_route_the_schedule_error_names_schedules_the_argument():
    # gtx.add_l1(schedule) fails at once; schedule_injection(gtx.add_l1) evaluates it
    tx = gtx.schedule_injection(gtx.add_l1)(strength=SCHEDULE)
    params = {"w": jnp.array([2.0, -3.0])}
    state = tx.init(params)
    zeros = {"w": jnp.zeros(2)}
    for step in range(4):
        updates, state = tx.update(zeros, state, params)
        # add_l1 adds strength * sign(w): the schedule's value at this step
        value = float(SCHEDULE(step))  # a jax Array: jax 0.12's is no number to approx
        assert updates["w"].tolist() == pytest.approx([value, -value])


def test_arguments_that_take_schedules_still_take_them():
    for tx in [
        gtx.scale_by_learning_rate(SCHEDULE),
        gtx.add_decayed_weights(SCHEDULE),
        gtx.proximal_l1(SCHEDULE),
        gtx.sgd(SCHEDULE, momentum=lambda step: 0.9, weight_decay=SCHEDULE),
        gtx.adam(SCHEDULE, b1=lambda step: 0.9),
    ]:
        params = {"w": jnp.ones(2)}
        updates, _ = tx.update(params, tx.init(params), params)
        assert jnp.all(jnp.isfinite(updates["w"]))


@pytest.mark.parametrize(
    "arguments, switch, needs",
    [
        (dict(correct_after_max=True, bias_correction_nu=False), "correct_after_max=True",
         "bias_correction_nu=True, got bias_correction_nu=False"),
        (dict(eps_before_bias_correction=True), "eps_before_bias_correction=True",
         "correct_after_max=True, got correct_after_max=False"),
        (dict(eps_before_bias_correction=True, bias_correction_nu=False),
         "eps_before_bias_correction=True", "correct_after_max=True"),
    ],
)  # fmt: skip
def test_amsgrad_max_refuses_a_switch_that_would_change_nothing(arguments, switch, needs):
    with pytest.raises(ValueError) as error:
        gtx.amsgrad_max(**arguments)
    message = str(error.value)
    assert message.startswith(f"{switch} needs {needs}"), message


@pytest.mark.parametrize(
    "wrap",
    [np.float32, jnp.asarray, lambda x: jnp.asarray(x, jnp.float32)],
    ids=["numpy_float32", "jax_weak", "jax_float32"],
)
def test_rprop_step_size_bounds_in_the_wrong_order_are_rejected_for_array_scalars(wrap):
    with pytest.raises(ValueError) as error:
        gtx.scale_by_rprop(0.1, min_step_size=wrap(1.0), max_step_size=wrap(0.5))
    message = str(error.value)
    assert message.startswith("max_step_size must be >= min_step_size ("), message
    assert repr(wrap(1.0)) in message and repr(wrap(0.5)) in message, message
    # In order, the same kinds of values build a working Rprop (step sizes 0.1 * 1.2 ...
    # clipped to [0.05, 0.11]).
    tx = gtx.scale_by_rprop(0.1, min_step_size=wrap(0.05), max_step_size=wrap(0.11))
    state = tx.init(jnp.zeros(2))
    for _ in range(3):
        updates, state = tx.update(jnp.array([1.0, -1.0]), state)
    np.testing.assert_allclose(updates, [0.11, -0.11], rtol=1e-6)


NEGATIVE_SCHEDULE = lambda step: -0.1  # noqa: E731


@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.scale_by_learning_rate(NEGATIVE_SCHEDULE),
        lambda: gtx.averaged_sgd(NEGATIVE_SCHEDULE, lambd=0.0),
        lambda: gtx.sgd(NEGATIVE_SCHEDULE),
        lambda: gtx.swats(NEGATIVE_SCHEDULE),
    ],
    ids=["scale_by_learning_rate", "averaged_sgd", "sgd", "swats"],
)
def test_a_negative_learning_rate_schedule_is_named_at_an_eager_update(make):
    tx = make()
    params = jnp.array([0.0])
    with pytest.raises(ValueError, match=r"learning_rate must be in \[0.0, inf\), got .*-0.1"):
        tx.update(jnp.array([1.0]), tx.init(params), params)


VECTOR_SCHEDULE = lambda step: jnp.full(3, 0.1)  # noqa: E731


@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.scale_by_learning_rate(VECTOR_SCHEDULE),
        lambda: tc.adamw(VECTOR_SCHEDULE),
        lambda: kc.adam(VECTOR_SCHEDULE),
    ],
    ids=["scale_by_learning_rate", "torch_adamw", "keras_adam"],
)
def test_a_schedule_returning_a_vector_is_named_under_jit_too(make):
    """Under jit the value is a tracer, whose shape is known: it was let through and
    broadcast a scalar parameter's update to shape (3,)."""
    tx = make()
    params = {"w": jnp.zeros(3), "b": jnp.zeros([])}
    with pytest.raises(ValueError, match=r"learning_rate must be a scalar.*not shape \(3,\)"):
        jax.jit(tx.update)(params, tx.init(params), params)


@pytest.mark.parametrize("optimizer", [gtx.sgd, gtx.rmsprop], ids=["sgd", "rmsprop"])
def test_a_momentum_schedule_out_of_range_is_named_momentum(optimizer):
    # the value reaches trace(decay=...), whose check named "decay", an argument the
    # user never wrote
    tx = optimizer(0.1, momentum=lambda step: 1.5)
    params = jnp.array([0.0])
    with pytest.raises(ValueError, match=r"^momentum must be in \[0.0, 1.0\), got .*1.5"):
        tx.update(jnp.array([1.0]), tx.init(params), params)


def test_a_learning_rate_schedule_still_descends_through_the_blocks():
    params = jnp.array([1.0])
    schedule = lambda step: 0.1 * (step + 1.0)  # noqa: E731
    tx = gtx.scale_by_learning_rate(schedule)
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update(jnp.array([2.0]), state, params)
        np.testing.assert_allclose(updates, [-2.0 * schedule(step)], rtol=1e-6)
    # averaged_sgd (lambd = 0): eta = lr of update max(k - 1, 0), p' - p = -eta g
    tx = gtx.averaged_sgd(schedule, lambd=0.0)
    state = tx.init(params)
    for k in range(3):
        updates, state = tx.update(jnp.array([2.0]), state, params)
        np.testing.assert_allclose(updates, [-2.0 * schedule(max(k - 1, 0))], rtol=1e-6)


@pytest.mark.parametrize(
    "schedule, message",
    [
        (lambda: 0.1, r"learning_rate is a schedule, called with the step count.*cannot take"),
        (lambda t, u: 0.1, r"learning_rate is a schedule, called with the step count"),
        (lambda t: None, r"schedule given for learning_rate returned None, not a number"),
    ],
    ids=["no_argument", "two_arguments", "returns_none"],
)
def test_a_schedule_that_cannot_give_a_value_is_named(schedule, message):
    """Raw '<lambda>() takes 0 positional arguments but 1 was given' before. A schedule
    that cannot take the step fails where the optimizer is built, one that returns None
    at init."""
    with pytest.raises(TypeError, match=message):
        gtx.adam(schedule).init(jnp.zeros(2))


def test_an_update_given_the_pair_update_returned_says_what_it_got():
    """'tuple' object has no attribute 'hyperparams' before."""
    tx, params = gtx.adam(0.1), jnp.zeros(2)
    pair = tx.update(params, tx.init(params), params)
    with pytest.raises(TypeError, match=r"state of adam must be the InjectState.*got tuple"):
        tx.update(params, pair, params)


# float64 NumPy leaves without x64: JAX warns that it computes in float32, as intended here
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
@pytest.mark.parametrize("make", [gtx.adam, gtx.adamw, tc.adam])
def test_numpy_scalar_leaves_are_updated_as_numpy_arrays_are(make):
    """np.float64 is a float subclass: it became a float32 array while its dtype was
    read as float64, a KeyError in Adam's bias corrections (eagerly)."""
    tx = make(0.1)
    params = {"b": np.float64(0.5), "w": jnp.ones(2)}
    reference = {"b": np.asarray(0.5), "w": jnp.ones(2)}
    state, reference_state = tx.init(params), tx.init(reference)
    for _ in range(3):
        updates, state = tx.update(params, state, params)
        expected, reference_state = tx.update(reference, reference_state, reference)
    np.testing.assert_array_equal(updates["b"], expected["b"])


@pytest.mark.parametrize("jitted", [False, True])
@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.masked(gtx.adamw(0.1), {"b": False, "w": True}),
        lambda: gtx.partition({"a": gtx.adamw(0.1), "s": gtx.sgd(0.1)}, {"b": "s", "w": "a"}),
    ],
    ids=["masked", "partition"],
)
def test_params_with_an_extra_or_a_missing_leaf_are_named_by_that_leaf(make, jitted):
    """JAX's raw 'Dict key mismatch' came out of the wrappers, and the structure check
    named a position ("first difference at ['w']") for a leaf added at ['c']."""
    tx = make()
    params = {"b": jnp.zeros([]), "w": jnp.zeros(3)}
    grads = {"b": jnp.ones([]), "w": jnp.ones(3)}
    update = jax.jit(tx.update) if jitted else tx.update
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"\['c'\] is in the params, not in the updates"):
        update(grads, state, {**params, "c": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"\['b'\] is in the updates, not in the params"):
        update(grads, state, {"w": params["w"]})


@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.add_decayed_weights(0.1),
        lambda: gtx.adamw(0.1),
        lambda: gtx.add_l1(0.1),
        lambda: gtx.proximal_l1(0.1),
        lambda: gtx.max_norm(1.0),
        lambda: gtx.add_decoupled_weight_decay(0.1, 0.1),
        lambda: gtx.averaged_sgd(0.1),
        lambda: gtx.lookahead(gtx.sgd(0.1)),
        lambda: gtx.ema_params(0.9),
        lambda: gtx.average_params(),
        lambda: kc.sgd(0.1, use_ema=True),
    ],
    ids=[
        "add_decayed_weights",
        "adamw",
        "add_l1",
        "proximal_l1",
        "max_norm",
        "add_decoupled_weight_decay",
        "averaged_sgd",
        "lookahead",
        "ema_params",
        "average_params",
        "keras_use_ema",
    ],
)
def test_params_that_do_not_match_the_updates_are_named_the_params_not_the_state(make):
    """The blocks that read the params named a misspelt params tree "the state"."""
    tx = make()
    grads = {"kernel": jnp.ones(2)}
    state = tx.init(grads)
    with pytest.raises(ValueError) as error:
        tx.update(grads, state, {"kernal": jnp.ones(2)})
    assert str(error.value) == (
        "the structure of the params differs from the updates: ['kernel'] is in the "
        "updates, not in the params; ['kernal'] is in the params, not in the updates"
    )


STATE_OWNERS = [
    ("masked", "MaskedState", lambda: gtx.masked(gtx.adam(0.1), {"b": False, "w": True})),
    ("partition", "PartitionState", lambda: gtx.partition({"a": gtx.sgd(0.1)}, lambda p: "a")),
    ("lookahead", "LookaheadState", lambda: gtx.lookahead(gtx.sgd(0.1))),
    ("apply_if_finite", "ApplyIfFiniteState", lambda: gtx.apply_if_finite(gtx.sgd(0.1), 2)),
    ("multi_steps", "MultiStepsState", lambda: gtx.multi_steps(gtx.sgd(0.1), 2)),
    ("swats", "SwatsState", lambda: gtx.swats(0.1)),
    ("ema", "EmaState", lambda: gtx.ema(0.9)),
    ("averaged_sgd", "AveragedSgdState", lambda: gtx.averaged_sgd(0.1)),
    ("add_decoupled_weight_decay", "DecoupledWeightDecayState",
     lambda: gtx.add_decoupled_weight_decay(0.1, 0.1)),
    ("ema_params", "EmaParamsState", lambda: gtx.ema_params(0.9)),
    ("average_params", "AverageParamsState", lambda: gtx.average_params()),
    ("quantized_state", "QuantizedState", lambda: gtx.quantized_state(gtx.adam(0.1))),
    ("reduce_on_plateau", "ReduceOnPlateauState", lambda: gtx.reduce_on_plateau()),
    ("add_noise", "AddNoiseState", lambda: gtx.add_noise(0.01)),
    ("scale_by_local_gain", "ScaleByLocalGainState", lambda: gtx.scale_by_local_gain()),
    ("proximal_l1", "ProximalL1State", lambda: gtx.proximal_l1(lambda step: 0.01)),
    # the building blocks, bare (inside an optimizer the injection names the optimizer)
    ("scale_by_adam", "ScaleByAdamState", lambda: gtx.scale_by_adam()),
    ("amsgrad_max", "ScaleByAmsgradState", lambda: gtx.amsgrad_max()),
    ("scale_by_adamax", "ScaleByAdamaxState", lambda: gtx.scale_by_adamax()),
    ("scale_by_rms", "ScaleByRmsState", lambda: gtx.scale_by_rms()),
    ("scale_by_rms", "ScaleByStddevState", lambda: gtx.scale_by_rms(centered=True)),
    ("scale_by_rss", "ScaleByRssState", lambda: gtx.scale_by_rss()),
    ("scale_by_adadelta", "ScaleByAdadeltaState", lambda: gtx.scale_by_adadelta()),
    ("scale_by_rprop", "ScaleByRpropState", lambda: gtx.scale_by_rprop(0.1)),
    ("scale_by_radam", "ScaleByRadamState", lambda: gtx.scale_by_radam()),
    ("scale_by_nadam_schedule", "ScaleByNadamScheduleState",
     lambda: gtx.scale_by_nadam_schedule()),
    ("trace", "TraceState", lambda: gtx.trace(0.9)),
    ("trace", "DampenedTraceState", lambda: gtx.trace(0.9, dampening=0.1)),
    ("scale_by_schedule", "ScaleByScheduleState", lambda: gtx.scale_by_schedule(lambda t: 0.5)),
    ("scale_by_learning_rate", "ScaleByScheduleState",
     lambda: gtx.scale_by_learning_rate(lambda t: 0.5)),
    ("add_decayed_weights", "AddDecayedWeightsState",
     lambda: gtx.add_decayed_weights(lambda t: 0.1)),
]  # fmt: skip


@pytest.mark.parametrize("wrong", ["none", "params"])
@pytest.mark.parametrize(
    "owner, state_class, make", STATE_OWNERS, ids=[owner for owner, _, _ in STATE_OWNERS]
)
def test_a_state_that_is_not_the_transforms_own_is_named(owner, state_class, make, wrong):
    """An update before init (None) or with state and params swapped was an
    AttributeError ("'dict' object has no attribute 'inner_state'") from inside."""
    params = {"b": jnp.zeros(2), "w": jnp.zeros(2)}
    state = None if wrong == "none" else params
    message = rf"^the state of {owner} must be the {state_class} its init returned .* got "
    with pytest.raises(TypeError, match=message + ("NoneType" if wrong == "none" else "dict")):
        make().update(params, state, params, value=jnp.asarray(1.0))


@pytest.mark.parametrize(
    "make, other, owner, state_class",
    [
        (gtx.scale_by_adam, gtx.scale_by_rms, "scale_by_adam", "ScaleByAdamState"),
        (gtx.scale_by_adadelta, gtx.scale_by_adam, "scale_by_adadelta", "ScaleByAdadeltaState"),
        (lambda: gtx.trace(0.9), gtx.scale_by_adam, "trace", "TraceState"),
        (gtx.amsgrad_max, gtx.scale_by_adam, "amsgrad_max", "ScaleByAmsgradState"),
        # these two took the other's count and went on, returning a state of their own
        (lambda: gtx.scale_by_schedule(lambda t: 0.5), gtx.scale_by_adam,
         "scale_by_schedule", "ScaleByScheduleState"),
        (lambda: gtx.add_decayed_weights(lambda t: 0.1), gtx.scale_by_adam,
         "add_decayed_weights", "AddDecayedWeightsState"),
    ],
    ids=["adam<-rms", "adadelta<-adam", "trace<-adam", "amsgrad<-adam", "schedule<-adam",
         "decay<-adam"],
)  # fmt: skip
def test_a_bare_block_given_another_blocks_state_names_both(make, other, owner, state_class):
    """Was "'ScaleByRmsState' object has no attribute 'mu'" from inside the update (or
    no error at all where the other state had the field read)."""
    params = {"w": jnp.zeros(2)}
    message = rf"^the state of {owner} must be the {state_class} its init returned .* got "
    with pytest.raises(TypeError, match=message + type(other().init(params)).__name__):
        make().update(params, other().init(params), params)


def test_a_compat_optimizers_inner_state_that_is_not_its_own_is_named():
    """Keras' use_ema and a PyTorch optimizer with a scheduled momentum raised
    AttributeError ("'dict' object has no attribute 'count'")."""
    params = {"w": jnp.zeros(2)}
    for tx, key, owner, state_class in [
        (kc.sgd(0.1, use_ema=True), "ema", "use_ema", "KerasEmaState"),
        (tc.sgd(0.1, momentum=lambda t: 0.9), "momentum", "trace", "InjectState"),
    ]:
        state = dict(tx.init(params), **{key: params})
        message = rf"^the state of {owner} must be the {state_class} its init returned .* got dict"
        with pytest.raises(TypeError, match=message):
            tx.update(params, state, params)


def test_a_named_chain_state_that_is_not_its_dict_is_named():
    """None was "argument of type 'NoneType' is not iterable" (every compat optimizer is a
    named_chain)."""
    tx, params = tc.adam(0.1), {"b": jnp.zeros(2), "w": jnp.zeros(2)}
    with pytest.raises(ValueError, match=re.escape("named_chain of ['adam', 'learning_rate'] got")):
        tx.update(params, None, params)
    with pytest.raises(ValueError, match=re.escape("(its keys: ['b', 'w']; were state and params")):
        tx.update(params, params, params)
    with pytest.raises(ValueError, match="tuple of 2 states: dict .*state and params swapped"):
        gtx.chain(gtx.clip(1.0), gtx.scale(-0.1)).update(params, params, params)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.add_noise(0.1, seed=3),
        lambda: gtx.averaged_sgd(0.1),
        lambda: tc.nadam(0.1),
        lambda: gtx.swats(0.1),
        lambda: gtx.reduce_on_plateau(),
    ],
    ids=["add_noise", "averaged_sgd", "torch_nadam", "swats", "reduce_on_plateau"],
)
def test_a_state_holding_python_numbers_updates_un_jitted_as_under_jit(make):
    """jit takes Python numbers for 0-d state leaves; un-jitted these were
    "'int' object has no attribute 'astype'" (and 'float' ... 'dtype')."""
    tx = make()
    params, grads = {"w": jnp.array([0.5, -1.0])}, {"w": jnp.array([0.3, 0.2])}
    as_numbers = lambda state: jax.tree.map(  # noqa: E731
        lambda x: x.item() if getattr(x, "ndim", None) == 0 else x, state
    )
    expected, _ = tx.update(grads, tx.init(params), params, value=2.0)
    updates, _ = tx.update(grads, as_numbers(tx.init(params)), params, value=2.0)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)


def test_an_abstract_state_gradient_or_params_is_named_un_jitted():
    """jax.eval_shape(tx.init, params) (the state a checkpoint is restored into) handed to
    update, or ShapeDtypeStruct gradients: raw "int() argument must be ..., not
    'ShapeDtypeStruct'" or "no attribute 'astype'" before (jit names them itself)."""
    params = {"w": jnp.zeros(2)}
    abstract = lambda tree: jax.eval_shape(lambda: tree)  # noqa: E731
    tx = gtx.adamw(0.1)
    with pytest.raises(TypeError, match="^a step counter of the state is a jax.ShapeDtypeStruct"):
        tx.update(params, jax.eval_shape(tx.init, params), params)
    with pytest.raises(TypeError, match=r"^the update at \['w'\] is a jax.ShapeDtypeStruct"):
        tx.update(abstract(params), tx.init(params), params)
    passed_with = r"^the state \(or the params\) passed with the update at \['w'\] is a jax.Shape"
    with pytest.raises(TypeError, match=passed_with):
        tx.update(params, tx.init(params), abstract(params))
    adagrad = tc.adagrad(0.1)  # no step counter: the moments are read first
    with pytest.raises(TypeError, match=passed_with):
        adagrad.update(params, jax.eval_shape(adagrad.init, params), params)
