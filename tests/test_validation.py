"""Bad input fails where it is given, naming the argument, the value and what was expected.

Each case here was once accepted (or failed late, inside JAX, under another name).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import check, schedules
from gradtx.compat import torch as tc
from gradtx.quantization import dynamic_quantization_map

INF = math.inf
BIG = 10**10  # beyond int32


# 1. An infinite hyperparameter is refused, except where inf means "no bound".

INFINITE_HYPERPARAMETERS = [
    ("learning_rate", lambda: gtx.adam(INF)),
    ("learning_rate", lambda: gtx.adam(-INF)),
    ("learning_rate", lambda: gtx.sgd(INF)),
    ("weight_decay", lambda: gtx.adamw(0.1, weight_decay=INF)),
    ("eta", lambda: gtx.add_noise(eta=INF)),
    ("lambd", lambda: gtx.averaged_sgd(lambd=INF)),
    ("eps", lambda: gtx.scale_by_adadelta(eps=INF)),
    ("eps", lambda: gtx.adam(0.1, eps=INF)),
    ("eps_root", lambda: gtx.adam(0.1, eps_root=INF)),
    ("step_size", lambda: gtx.scale(-INF)),
    ("init_value", lambda: schedules.linear(INF, 0.0, 100)),
    ("value", lambda: schedules.constant(INF)),
    ("gamma", lambda: schedules.step_decay(0.1, 10, gamma=INF)),
    ("peak_decay", lambda: schedules.sgdr(0.1, 10, peak_decay=INF)),
    ("period_mult", lambda: schedules.sgdr(0.1, 10, period_mult=INF)),
    (r"values\[1\]", lambda: schedules.piecewise_constant([10], [0.1, INF])),
]


@pytest.mark.parametrize(("name", "build"), INFINITE_HYPERPARAMETERS)
def test_infinite_hyperparameters_are_refused_naming_the_argument(name, build):
    with pytest.raises(ValueError, match=rf"{name} must be a finite real number, got -?inf"):
        build()


@pytest.mark.parametrize(
    ("check_value", "bound", "message"),
    [
        (lambda v: check.unit_interval("b1", v), 1.0, r"b1 must be in \[0.0, 1.0\), got 1.0"),
        (lambda v: check.positive("lr", v), 0.0, r"lr must be in \(0.0, inf\), got 0.0"),
        (
            lambda v: check.in_range("x", v, 1.0, None, low_inclusive=False),
            1.0,
            r"x must be in \(1.0, inf\), got 1.0",
        ),
        (
            lambda v: check.in_range("x", v, None, 1.0, high_inclusive=False),
            1.0,
            r"x must be in \(-inf, 1.0\), got 1.0",
        ),
    ],
    ids=["unit_interval", "positive", "open_low", "open_high"],
)
def test_an_open_bound_refuses_the_bound_itself(check_value, bound, message):
    with pytest.raises(ValueError, match=message):
        check_value(bound)


def test_closed_bounds_and_the_int32_range_take_their_end_values():
    check.unit_interval("b1", 0.0)
    check.in_range("x", 1.0, 0.0, 1.0)
    check.at_least("x", 2.0, "y", 2.0)
    check.number("x", -(2**31))
    check.number("x", 2**31 - 1)
    with pytest.raises(ValueError, match="x must be a number JAX can take"):
        check.number("x", -(2**31) - 1)


def test_check_number_refuses_inf_unless_allowed():
    with pytest.raises(ValueError, match="x must be a finite real number, got inf"):
        check.number("x", INF)
    with pytest.raises(ValueError, match="x must be a finite real number"):
        check.positive("x", np.float32(INF))
    with pytest.raises(ValueError, match="x must be a finite real number"):
        check.in_range("x", jnp.asarray(-INF), None, 0.0)
    check.number("x", INF, allow_inf=True)
    check.positive("x", INF, allow_inf=True)
    check.non_negative("x", INF, allow_inf=True)
    with pytest.raises(ValueError, match=r"x must be in \[0.0, inf\]"):
        check.non_negative("x", -INF, allow_inf=True)


@pytest.mark.parametrize(
    "build",
    [
        lambda: gtx.clip(INF),
        lambda: gtx.clip_by_global_norm(INF),
        lambda: gtx.max_norm(INF),
        lambda: gtx.scale_by_rprop(0.1, max_step_size=INF),
        lambda: gtx.scale_by_local_gain(max_gain=INF),
        lambda: tc.clip_grad_norm(INF),
        lambda: tc.rprop(0.1, step_sizes=(1e-6, INF)),
    ],
)
def test_an_infinite_bound_means_no_bound(build):
    tx = build()
    params = jnp.ones(2)
    updates, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(params), params)
    assert np.all(np.isfinite(updates))


def test_clip_grad_norm_takes_the_infinity_norm_as_pytorch_does():
    tx = tc.clip_grad_norm(1.0, norm_type=INF)
    updates, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(None))
    np.testing.assert_allclose(updates, [0.75, -1.0], rtol=1e-5)


def test_an_infinite_scheduled_learning_rate_is_refused_at_an_eager_update():
    tx = gtx.scale_by_learning_rate(lambda count: jnp.inf)
    with pytest.raises(ValueError, match="learning_rate must be a finite real number"):
        tx.update(jnp.ones(1), tx.init(jnp.ones(1)))


# 2. Flags are True or False, not truthy.

FLAGS = [
    ("nesterov", lambda v: gtx.adam(0.1, nesterov=v)),
    ("nesterov", lambda v: gtx.sgd(0.1, momentum=0.0, nesterov=v)),
    ("nesterov", lambda v: gtx.rmsprop(0.1, momentum=0.9, nesterov=v)),
    ("nesterov", lambda v: gtx.trace(0.9, nesterov=v)),
    ("debias", lambda v: gtx.ema(0.9, debias=v)),
    ("debias", lambda v: gtx.ema_params(0.9, debias=v)),
    ("centered", lambda v: gtx.scale_by_rms(centered=v)),
    ("eps_in_sqrt", lambda v: gtx.scale_by_rms(eps_in_sqrt=v)),
    ("bias_correction", lambda v: gtx.rmsprop(0.1, bias_correction=v)),
    ("eps_in_sqrt", lambda v: gtx.scale_by_rss(eps_in_sqrt=v)),
    ("eps_before_bias_correction", lambda v: gtx.scale_by_adam(eps_before_bias_correction=v)),
    ("bias_correction_mu", lambda v: gtx.amsgrad_max(bias_correction_mu=v)),
    ("bias_correction_nu", lambda v: gtx.amsgrad(0.1, bias_correction_nu=v)),
    ("correct_after_max", lambda v: gtx.amsgrad_max(correct_after_max=v)),
    ("eps_in_max", lambda v: gtx.scale_by_adamax(eps_in_max=v)),
    ("clip_every_step", lambda v: gtx.scale_by_rprop(0.1, clip_every_step=v)),
    ("strict_threshold", lambda v: gtx.scale_by_radam(strict_threshold=v)),
    ("flip_sign", lambda v: gtx.scale_by_learning_rate(0.1, flip_sign=v)),
    ("staircase", lambda v: schedules.exponential_decay(1.0, 10, 0.5, staircase=v)),
    ("staircase", lambda v: schedules.inverse_time_decay(1.0, 10, 0.5, staircase=v)),
    ("three_phase", lambda v: schedules.one_cycle(100, 1.0, three_phase=v)),
    ("signed", lambda v: dynamic_quantization_map(signed=v)),
    ("offsets_in_state", lambda v: gtx.flatten(gtx.scale(1.0), offsets_in_state=v)),
]


@pytest.mark.parametrize(("name", "build"), FLAGS)
@pytest.mark.parametrize("value", ["False", 2, 1.0, jnp.array([1.0, 0.0]), None])
def test_flags_must_be_true_or_false(name, build, value):
    with pytest.raises(TypeError, match=rf"{name} must be True or False, got "):
        build(value)


@pytest.mark.parametrize(("name", "build"), FLAGS)
def test_flags_take_python_and_numpy_bools(name, build):
    del name
    build(False)
    build(np.bool_(False))


def test_a_string_false_no_longer_turns_staircase_on():
    with pytest.raises(TypeError, match="staircase must be True or False, got 'False'"):
        schedules.exponential_decay(1.0, 10, 0.5, staircase="False")


# 3. Integers the int32 counters cannot hold.


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("patience", lambda: gtx.reduce_on_plateau(patience=BIG)),
        ("max_consecutive_errors", lambda: gtx.apply_if_finite(gtx.scale(1.0), BIG)),
        ("sync_period", lambda: gtx.lookahead(gtx.scale(1.0), sync_period=BIG)),
        ("every_k", lambda: gtx.multi_steps(gtx.scale(1.0), 10**12)),
        ("start_step", lambda: gtx.average_params(start_step=BIG)),
        ("transition_steps", lambda: schedules.linear(1.0, 0.0, BIG)),
    ],
)
def test_integers_beyond_int32_are_refused(name, build):
    with pytest.raises(ValueError, match=rf"{name} must be .* at most 2147483647 .*int32"):
        build()


def test_the_int32_maximum_itself_is_taken():
    check.positive_int("n", 2**31 - 1)
    check.non_negative_int("n", np.int64(2**31 - 1))
    gtx.multi_steps(gtx.scale(1.0), 2**31 - 1)


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("t0", lambda: gtx.averaged_sgd(t0=BIG)),
        ("learning_rate", lambda: gtx.scale_by_learning_rate(BIG)),
        ("step_size", lambda: gtx.scale(-BIG)),
    ],
)
def test_a_python_int_beyond_int32_as_a_float_hyperparameter_is_refused(name, build):
    with pytest.raises(ValueError, match=rf"{name} must be a number JAX can take: .*1e\+10"):
        build()


def test_a_large_float_t0_still_means_never_average():
    tx = gtx.averaged_sgd(0.1, t0=1e10)
    params = jnp.ones(1)
    _, state = tx.update(jnp.ones(1), tx.init(params), params)
    assert np.isfinite(state.average).all()


def test_a_seed_keeps_its_32_bits():
    gtx.add_noise(seed=2**32 - 1)
    with pytest.raises(ValueError, match=r"seed must be .* at most 4294967295"):
        gtx.add_noise(seed=2**32)


@pytest.mark.parametrize(
    "seed",
    [
        jnp.array(3),
        np.array(3),
        np.int64(3),
        jnp.asarray(3, jnp.uint32),
        jax.random.randint(jax.random.PRNGKey(0), (), 3, 4),
    ],
    ids=["jax_0d", "numpy_0d", "numpy_int", "jax_uint32", "jax_randint"],
)
def test_a_concrete_0d_integer_array_is_a_seed_as_its_int(seed):
    """As for jax.random.PRNGKey and optax.add_noise (and a traced seed under vmap), a
    0-d integer array seeds add_noise: it was refused ("seed must be a non-negative
    integer, got Array(3, dtype=int32, weak_type=True)") where a NumPy integer passed."""
    params = jnp.zeros(2)
    np.testing.assert_array_equal(
        gtx.add_noise(0.1, seed=seed).init(params).rng_key,
        gtx.add_noise(0.1, seed=3).init(params).rng_key,
    )


@pytest.mark.parametrize(
    "seed, expected",
    [
        (jnp.array(-1), r"non-negative integer, got Array\(-1"),
        (np.array(2**32), "32 bits"),
        (jnp.array(True), r"an array: 0-d, of an integer dtype\), got Array\(True"),
        (jnp.array([3]), r"an array: 0-d, of an integer dtype\), got Array\(\[3\]"),
        (np.array(3.0), r"an array: 0-d, of an integer dtype\), got array\(3\."),
    ],
    ids=["negative", "above_32_bits", "bool", "shape_1", "float"],
)
def test_a_seed_array_of_another_value_shape_or_dtype_is_named(seed, expected):
    with pytest.raises(ValueError, match=expected):
        gtx.add_noise(seed=seed)


# 4. quantized_state's block size.


def test_a_huge_block_size_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"block_size must be at most 16777216.*got 1000000000000"):
        gtx.quantized_state(gtx.adam(0.1), block_size=10**12, min_size=0)


def test_a_block_larger_than_the_leaf_is_one_block_of_the_leaf():
    params = {"w": jnp.linspace(-1.0, 1.0, 5000)}
    grads = {"w": jnp.sin(jnp.arange(5000.0))}
    results = []
    for block_size in (5000, 2**24):
        tx = gtx.quantized_state(gtx.adam(0.1), block_size=block_size, min_size=0)
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        results.append((updates["w"], jax.tree.leaves(state)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_array_equal(a, b)


# 5. partition's labels.


def test_partition_refuses_empty_labels_where_it_is_built():
    with pytest.raises(ValueError, match="labels must give every parameter a label.*empty dict"):
        gtx.partition({"a": gtx.scale(1.0)}, labels={})


def test_partition_names_a_transform_that_is_not_one():
    with pytest.raises(TypeError, match=r"transforms\['a'\] must be a gradient transformation"):
        gtx.partition({"a": 3}, labels={"w": "a"})


# 6. path= is a string.


@pytest.mark.parametrize(
    "call",
    [
        lambda s: gtx.get_hyperparams(s, path=3),
        lambda s: gtx.set_hyperparams(s, path=3, learning_rate=0.1),
        lambda s: gtx.tree_get(s, "count", path=3),
        lambda s: gtx.tree_set(s, path=3, count=1),
    ],
)
def test_a_path_that_is_not_a_string_is_a_type_error_naming_path(call):
    state = gtx.adam(0.1).init({"w": jnp.ones(2)})
    with pytest.raises(TypeError, match=r'path must be a string.*got 3 .*path="3"'):
        call(state)


# 7. dtype arguments are dtypes.


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("accumulator_dtype", lambda d: gtx.ema(0.9, accumulator_dtype=d)),
        ("accumulator_dtype", lambda d: gtx.trace(0.9, accumulator_dtype=d)),
        ("mu_dtype", lambda d: gtx.scale_by_adam(mu_dtype=d)),
        ("nu_dtype", lambda d: gtx.scale_by_adam(nu_dtype=d)),
        ("nu_dtype", lambda d: gtx.adam(0.1, nu_dtype=d)),
        ("mu_dtype", lambda d: gtx.amsgrad_max(mu_dtype=d)),
        ("nu_dtype", lambda d: gtx.amsgrad_max(nu_dtype=d)),
        ("nu_dtype", lambda d: gtx.scale_by_adamax(nu_dtype=d)),
        ("nu_dtype", lambda d: gtx.scale_by_rms(nu_dtype=d)),
        ("accumulator_dtype", lambda d: gtx.scale_by_rss(accumulator_dtype=d)),
        ("nu_dtype", lambda d: gtx.scale_by_nadam_schedule(nu_dtype=d)),
        ("nu_dtype", lambda d: gtx.scale_by_radam(nu_dtype=d)),
        ("accumulator_dtype", lambda d: gtx.nesterov_lookahead(0.9, accumulator_dtype=d)),
        ("dtype", lambda d: gtx.average_params(dtype=d)),
        ("dtype", lambda d: gtx.ema_params(dtype=d)),
        ("accumulator_dtype", lambda d: gtx.multi_steps(gtx.scale(1.0), 2, accumulator_dtype=d)),
        ("accumulator_dtype", lambda d: gtx.sgd(0.1, accumulator_dtype=d)),
    ],
)
@pytest.mark.parametrize("value", [jnp.array([0.1, 0.2]), np.float32(1.0), 1.0])
def test_dtype_arguments_refuse_arrays_and_numbers(name, build, value):
    with pytest.raises(ValueError, match=rf"{name} must be a floating dtype"):
        build(value)


@pytest.mark.parametrize("dtype", [None, jnp.float32, jnp.bfloat16, np.float16, "float32"])
def test_dtype_arguments_take_dtypes(dtype):
    check.dtype_or_none("dtype", dtype)
    check.dtype_or_none("dtype", None if dtype is None else np.dtype(dtype))


@pytest.mark.parametrize("dampening", [-0.1, 1.5])
def test_trace_refuses_a_dampening_outside_0_to_1(dampening):
    with pytest.raises(ValueError, match=rf"dampening must be in \[0.0, 1.0\], got {dampening}"):
        gtx.trace(0.9, dampening=dampening)


# 8. A schedule's values are checked at an eager update.


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (lambda count: -1.0, r"weight_decay must be in \[0.0, inf\), got -1.0"),
        (lambda count: jnp.nan, "weight_decay must be a real number .not NaN."),
        (lambda count: jnp.ones(2), "weight_decay must be a scalar"),
    ],
)
def test_add_decoupled_weight_decay_checks_its_schedule_values(schedule, message):
    tx = gtx.add_decoupled_weight_decay(schedule, 0.1)
    params = jnp.ones(2)
    with pytest.raises(ValueError, match=message):
        tx.update(jnp.zeros(2), tx.init(params), params)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda s: gtx.add_decayed_weights(s), "weight_decay"),
        (lambda s: gtx.proximal_l1(s), "strength"),
    ],
)
def test_regularizers_check_their_schedule_values(build, name):
    tx = build(lambda count: -0.5)
    params = jnp.ones(2)
    with pytest.raises(ValueError, match=rf"{name} must be in \[0.0, inf\), got -0.5"):
        tx.update(jnp.zeros(2), tx.init(params), params)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (lambda count: jnp.nan, "step_size_fn's value must be a real number .not NaN."),
        (lambda count: jnp.inf, "step_size_fn's value must be a finite real number"),
        (lambda count: jnp.ones(2), "step_size_fn's value must be a scalar"),
        (lambda count: "a", "step_size_fn's value must be a real number, got 'a'"),
    ],
)
def test_scale_by_schedule_checks_its_values(schedule, message):
    tx = gtx.scale_by_schedule(schedule)
    with pytest.raises(ValueError, match=message):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_scale_by_schedule_refuses_a_vector_value_under_jit():
    tx = gtx.scale_by_schedule(lambda count: jnp.ones(2) * count)
    with pytest.raises(ValueError, match="step_size_fn's value must be a scalar"):
        jax.jit(tx.update)(jnp.ones(2), tx.init(jnp.ones(2)))


def test_scale_by_schedule_values_still_scale():
    tx = gtx.scale_by_schedule(lambda count: 0.5 ** (count + 1))
    updates, _ = jax.jit(tx.update)(jnp.ones(2), tx.init(jnp.ones(2)))
    np.testing.assert_array_equal(updates, [0.5, 0.5])


# 9. A callable that cannot take its argument fails where it is given.


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("learning_rate", lambda f: gtx.swats(learning_rate=f)),
        ("learning_rate", lambda f: gtx.averaged_sgd(learning_rate=f)),
        ("learning_rate", lambda f: gtx.scale_by_learning_rate(f)),
        ("weight_decay", lambda f: gtx.add_decoupled_weight_decay(f, 0.1)),
        ("learning_rate", lambda f: gtx.add_decoupled_weight_decay(0.1, f)),
        ("weight_decay", lambda f: gtx.add_decayed_weights(f)),
        ("strength", lambda f: gtx.proximal_l1(f)),
        ("step_size_fn", lambda f: gtx.scale_by_schedule(f)),
        ("every_k", lambda f: gtx.multi_steps(gtx.scale(1.0), f)),
        (r"schedules\[0\]", lambda f: schedules.join([f, schedules.constant(1.0)], [10])),
        (r"schedules\[1\]", lambda f: schedules.join([schedules.constant(1.0), f], [10])),
    ],
)
def test_a_schedule_that_cannot_take_the_step_fails_where_it_is_given(name, build):
    with pytest.raises(
        TypeError,
        match=rf"{name} is a schedule, called with the step count as its one argument; .*lambda",
    ):
        build(lambda: 1.0)


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("mask", lambda f: gtx.masked(gtx.scale(1.0), f)),
        ("mask", lambda f: gtx.freeze(f)),
        ("mask", lambda f: gtx.add_decayed_weights(0.1, mask=f)),
        ("mask", lambda f: gtx.add_l1(0.1, mask=f)),
        ("mask", lambda f: gtx.proximal_l1(0.1, mask=f)),
        ("mask", lambda f: gtx.max_norm(1.0, mask=f)),
        ("mask", lambda f: gtx.add_decoupled_weight_decay(0.1, 0.1, mask=f)),
        ("mask", lambda f: gtx.adamw(0.1, mask=f)),
        ("labels", lambda f: gtx.partition({"a": gtx.scale(1.0)}, f)),
    ],
)
def test_a_mask_or_label_function_that_cannot_take_the_params_fails_where_it_is_given(name, build):
    with pytest.raises(
        TypeError, match=rf"{name} is a function, called with the params as its one argument"
    ):
        build(lambda: True)
    with pytest.raises(
        TypeError, match=rf"{name} is a function, called with the params as its one argument"
    ):
        build(lambda params, other: True)


def test_callables_that_take_the_argument_are_let_through():
    check.takes_one_argument("f", lambda x, y=1: x, "x")
    check.takes_one_argument("f", lambda *args: args, "x")
    check.takes_one_argument("f", abs, "x")  # a builtin
    check.schedule_arity("f", np.float32)  # a type is not a schedule
    tx = gtx.masked(gtx.scale(2.0), lambda params, *rest: jax.tree.map(lambda _: True, params))
    assert tx.update(jnp.ones(1), tx.init(jnp.ones(1)))[0].tolist() == [2.0]


# 10. Errors name the argument given.


def test_apply_if_finite_names_inner():
    with pytest.raises(TypeError, match="inner must be a gradient transformation.*got 3"):
        gtx.apply_if_finite(3, 3)


@pytest.mark.parametrize(
    "build",
    [
        lambda: gtx.lookahead(3, 2),
        lambda: gtx.multi_steps(3, 2),
        lambda: gtx.masked(3, {"w": True}),
        lambda: gtx.flatten(3),
        lambda: gtx.quantized_state(3),
    ],
)
def test_wrappers_name_inner(build):
    with pytest.raises(TypeError, match="inner must be a gradient transformation"):
        build()


def test_chain_keeps_its_wording():
    with pytest.raises(TypeError, match="chain expects gradient transformations"):
        gtx.chain(gtx.scale(1.0), 3)


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("schedules", lambda: schedules.join(0.1, [10])),
        ("values", lambda: schedules.piecewise_constant([10], 0.1)),
    ],
)
def test_schedule_sequences_name_the_argument(name, build):
    with pytest.raises(TypeError, match=rf"{name} must be a sequence of len\(boundaries\) \+ 1"):
        build()


def test_an_every_k_schedule_beyond_int32_is_refused_at_an_eager_update():
    tx = gtx.multi_steps(gtx.scale(1.0), lambda step: jnp.inf)
    with pytest.raises(ValueError, match=r"every_k's schedule must give an integer >= 1 \(and at"):
        tx.update(jnp.ones(1), tx.init(jnp.ones(1)))


# Found by the review of these checks: what users legitimately pass is still accepted.


@pytest.mark.parametrize("flag", [True, np.bool_(False), jnp.bool_(True), jnp.array(False), 0, 1])
def test_flags_take_bools_bool_arrays_and_0_or_1_as_optax_and_pytorch_do(flag):
    gtx.sgd(0.1, momentum=0.9, nesterov=flag)
    tc.adam(amsgrad=flag)


@pytest.mark.parametrize("flag", ["False", 2, 1.0, jnp.array([True, False])])
def test_flags_still_refuse_strings_other_numbers_and_vectors(flag):
    with pytest.raises(TypeError, match="nesterov must be True or False"):
        gtx.sgd(0.1, momentum=0.9, nesterov=flag)


def test_set_hyperparams_takes_inf_where_the_transform_does_but_not_for_the_rate():
    tx = gtx.schedule_injection(gtx.clip_by_global_norm)(1.0)
    state = gtx.set_hyperparams(tx.init(jnp.zeros(2)), max_norm=INF)
    updates, _ = tx.update(jnp.array([3.0, 4.0]), state)
    np.testing.assert_array_equal(updates, [3.0, 4.0])  # no clipping
    with pytest.raises(ValueError, match="learning_rate must be a finite"):
        gtx.set_hyperparams(gtx.adam(0.1).init(jnp.zeros(2)), learning_rate=INF)


def test_get_hyperparams_of_an_abstract_state_gives_shape_dtype_structs():
    state = jax.eval_shape(gtx.adam(1e-3).init, jnp.zeros(3))
    value = gtx.get_hyperparams(state)["learning_rate"]
    assert isinstance(value, jax.ShapeDtypeStruct) and value.shape == ()


def test_bfloat16_hyperparameters_are_numbers():
    # NumPy does not count bfloat16 as a number; optax.inject_hyperparams casts to it
    gtx.adam(jnp.bfloat16(1e-3), b1=jnp.bfloat16(0.5))


def test_range_messages_show_an_unbounded_end_as_open():
    with pytest.raises(ValueError, match=r"learning_rate must be in \[0.0, inf\), got -1.0"):
        gtx.adam(-1.0)


@pytest.mark.parametrize("outputs", [0, -1, 1.0, True])
def test_map_unzip_refuses_an_outputs_its_docstring_does_not_allow(outputs):
    # outputs=0 used to return () and drop every result of fn (documented: an int >= 1)
    with pytest.raises(ValueError, match=f"^outputs must be a positive integer, got {outputs}"):
        gtx.tree.map_unzip(lambda x: (x, x), {"a": jnp.ones(1)}, outputs=outputs)


# 5. Counts of steps given as concrete 0-d integer arrays (Optax takes them).

COUNT_SCHEDULES = [
    lambda n: schedules.linear(1.0, 0.0, n),
    lambda n: schedules.cosine_decay(1.0, n),
    lambda n: schedules.step_decay(1.0, n, gamma=0.5),
    lambda n: schedules.warmup_cosine_decay(0.0, 1.0, n, 3 * n),
    lambda n: schedules.one_cycle(3 * n, 1.0),
    lambda n: schedules.cyclical(0.1, 1.0, n),
    lambda n: schedules.sgdr(1.0, n),
    lambda n: tc.lr_scheduler.step_lr(1.0, n),
    lambda n: tc.lr_scheduler.cosine_annealing_warm_restarts(1.0, n, T_mult=2),
    lambda n: tc.lr_scheduler.one_cycle_lr(1.0, total_steps=3 * n),
]


@pytest.mark.parametrize("count", [jnp.array(4), np.array(4), jnp.asarray(4, jnp.uint8)])
@pytest.mark.parametrize("build", COUNT_SCHEDULES)
def test_a_concrete_0d_integer_array_is_a_count_as_its_int(build, count):
    """A number of steps given as a 0-d integer array (as a config loaded into JAX or
    NumPy holds it) was refused ("... must be a positive integer, got Array(4, ...)")
    where a NumPy integer passed; Optax's schedules and wrappers take it."""
    steps = jnp.arange(16)
    np.testing.assert_array_equal(jax.vmap(build(count))(steps), jax.vmap(build(4))(steps))


@pytest.mark.parametrize(
    "build",
    [
        lambda k: gtx.multi_steps(gtx.adam(0.1), every_k=k),
        lambda k: gtx.lookahead(gtx.sgd(0.1), sync_period=k, slow_step_size=0.5),
        lambda k: gtx.apply_if_finite(gtx.sgd(0.1), max_consecutive_errors=k),
    ],
    ids=["multi_steps", "lookahead", "apply_if_finite"],
)
def test_wrappers_take_a_0d_integer_array_as_their_count(build):
    def run(k):
        tx = build(k)
        params = jnp.array([1.0, -2.0])
        state = tx.init(params)
        for i in range(7):
            grads = jnp.array([0.5, 1.0]) * (i + 1) if i != 2 else jnp.array([np.nan, 1.0])
            updates, state = tx.update(grads, state, params)
            params = gtx.apply_updates(params, updates)
        return params

    np.testing.assert_array_equal(run(jnp.array(3)), run(3))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (jnp.array(0), r"a positive integer, got Array\(0"),
        (jnp.array(3.0), r"integer dtype\), got Array\(3\."),
        (np.array([3]), r"0-d, of an integer dtype\), got array\(\[3\]"),
        (jnp.array(True), r"integer dtype\), got Array\(True"),
        (np.array(2**40), "at most 2147483647"),
    ],
    ids=["zero", "float", "shape_1", "bool", "beyond_int32"],
)
def test_a_count_array_of_another_value_shape_or_dtype_is_named(value, expected):
    with pytest.raises(ValueError, match=r"^sync_period must be .*" + expected):
        gtx.lookahead(gtx.sgd(0.1), sync_period=value)


def test_a_traced_count_is_refused_naming_it():
    """A count sets Python-level structure (how often to sync): it cannot be traced."""

    def build(k):
        gtx.lookahead(gtx.sgd(0.1), sync_period=k)
        return k

    with pytest.raises(
        ValueError, match=r"^sync_period must be a positive integer \(an array: concrete"
    ):
        jax.jit(build)(3)
