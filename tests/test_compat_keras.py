"""gradtx.compat.keras reproduces Keras 3's optimizers and schedules, checked on golden runs.

The golden files are written by ``tests/golden/record_keras.py`` (Keras 3.15, JAX
backend): each optimizer over its options for 200 steps of a fixed noisy quadratic, in
float64 (compared within 1e-10 relative) and float32 (within 1e-5); each schedule's
first 200 values in float32.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx.compat import keras as kc

GOLDEN = Path(__file__).parent / "golden"
OPTIMIZERS = json.loads((GOLDEN / "keras_optimizers.json").read_text())
SCHEDULES = json.loads((GOLDEN / "keras_schedules.json").read_text())
TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-5)}
CASES = {case["name"]: case for case in OPTIMIZERS["cases"]}


def split(flat, shapes):
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[..., start : start + size].reshape(*flat.shape[:-1], *shape))
        start += size
    return out


def build_schedule(spec):
    return getattr(kc, spec["name"])(**spec["kwargs"])


def build_optimizer(case):
    kwargs = dict(case["kwargs"])
    excluded = kwargs.pop("exclude_indices", None)  # Keras: exclude_from_weight_decay(var_list)
    if excluded:  # the params are a list: leaf i's path is "[i]"
        kwargs["exclude_from_weight_decay"] = [rf"^\[{i}\]$" for i in excluded]
    if case.get("schedule"):
        kwargs["learning_rate"] = build_schedule(case["schedule"])
    return getattr(kc, case["optimizer"])(**kwargs)


def trajectory(tx, dtype, *, with_state=False):
    """The flattened parameters after each of the 200 steps of the golden problem (and
    the final state, with ``with_state``)."""
    flat, state = trajectories({None: tx}, dtype)[None]
    return (flat, state) if with_state else flat


def trajectories(transforms, dtype):
    """For each ``name: tx``, the flattened parameters after each of the 200 steps of the
    golden problem and the final state, on the host; one compiled ``lax.scan`` for all
    (one larger compilation costs far less than many small ones)."""
    shapes = [tuple(s) for s in OPTIMIZERS["shapes"]]
    problem = {k: np.asarray(v, np.float64) for k, v in OPTIMIZERS["problem"].items()}
    h = [jnp.asarray(x, dtype) for x in split(problem["h"], shapes)]
    c = [jnp.asarray(x, dtype) for x in split(problem["c"], shapes)]
    params = [jnp.asarray(x, dtype) for x in split(problem["p0"], shapes)]

    @jax.jit
    def run(params, noise):
        def step(carry, noise_t):
            n = split(noise_t, shapes)
            grads = {
                name: [h[i] * (p - c[i]) + n[i] for i, p in enumerate(carry[name][0])]
                for name in transforms
            }
            carry, flat = dict(carry), {}
            for name, tx in transforms.items():
                params, state = carry[name]
                updates, state = tx.update(grads[name], state, params)
                carry[name] = gtx.apply_updates(params, updates), state
                flat[name] = jnp.concatenate([p.ravel() for p in carry[name][0]])
            return carry, flat

        carry = {name: (params, tx.init(params)) for name, tx in transforms.items()}
        carry, flat = jax.lax.scan(step, carry, noise)
        return {name: (flat[name], carry[name][1]) for name in transforms}

    return jax.device_get(run(params, jnp.asarray(problem["noise"], dtype)))


@functools.cache
def float64_runs():
    """(trajectory, state) of every golden case in float64, one compilation for all (29
    compiled one by one took twice as long); called under x64."""
    assert jax.config.read("jax_enable_x64"), "the x64 fixture first"
    return trajectories({name: build_optimizer(case) for name, case in CASES.items()}, "float64")


def check_case(case, dtype):
    rows = [s - 1 for s in OPTIMIZERS["snapshots"]]
    if dtype == "float64":
        actual, state = float64_runs()[case["name"]]
    else:
        actual, state = trajectory(build_optimizer(case), dtype, with_state=True)
    np.testing.assert_allclose(
        actual[rows], case[dtype]["params"], **TOLERANCE[dtype], err_msg=case["name"]
    )
    if "average" in case[dtype]:  # use_ema: Keras' moving average after the last step
        average = np.concatenate([np.ravel(a) for a in state["ema"].average])
        np.testing.assert_allclose(average, case[dtype]["average"], **TOLERANCE[dtype])


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_trajectory_matches_keras_within_1e10(name, x64):
    check_case(CASES[name], "float64")


# One case per optimizer in float32 (rounding only differs from float64): keeps CI fast.
FLOAT32_CASES = sorted({c["optimizer"]: c["name"] for c in OPTIMIZERS["cases"][::-1]}.values())


@pytest.mark.parametrize("name", FLOAT32_CASES)
def test_float32_trajectory_matches_keras_within_1e5(name):
    check_case(CASES[name], "float32")


def test_golden_cases_cover_every_keras_optimizer_weight_decay_and_schedule():
    optimizers = {case["optimizer"] for case in OPTIMIZERS["cases"]}
    assert optimizers == {
        "sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam"
    }  # fmt: skip
    decayed = {
        case["optimizer"] for case in OPTIMIZERS["cases"] if case["kwargs"].get("weight_decay")
    }
    assert decayed >= optimizers - {"adamw"}
    # a learning-rate schedule on every optimizer, with weight decay (which reads it too)
    scheduled = {
        case["optimizer"]
        for case in OPTIMIZERS["cases"]
        if case.get("schedule") and case["kwargs"].get("weight_decay")
    }
    assert scheduled == optimizers
    options = {key for case in OPTIMIZERS["cases"] for key in case["kwargs"]}
    assert options >= {
        "clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor",
        "gradient_accumulation_steps", "exclude_indices", "use_ema",
        "ema_overwrite_frequency",
    }  # fmt: skip


@pytest.mark.parametrize("index", range(len(SCHEDULES["cases"])))
def test_schedule_values_match_keras(index):
    case = SCHEDULES["cases"][index]
    values = build_schedule(case)(jnp.arange(len(case["values"])))
    # float32 on both sides; the cosines lose a few ulps where 1 + cos(x) cancels.
    np.testing.assert_allclose(values, case["values"], rtol=1e-5, atol=1e-8, err_msg=str(case))


def test_keras_adam_differs_from_pytorch_adam_by_its_epsilon_hat():
    """Keras adds eps to the raw sqrt(v): early steps are smaller than PyTorch's."""
    from gradtx.compat import torch as tc

    params = jnp.zeros(1)
    grad = jnp.array([1e-4])
    keras_step, _ = kc.adam(0.1, epsilon=1e-4).update(grad, kc.adam(0.1).init(params), params)
    torch_step, _ = tc.adam(0.1, eps=1e-4).update(grad, tc.adam(0.1).init(params), params)
    # m_hat = g, sqrt(v_hat) = g: PyTorch -lr g / (g + eps); Keras -lr g / (g + eps / sqrt(bc2)).
    bc2 = 1 - 0.999
    assert float(torch_step[0]) == pytest.approx(-0.1 * 1e-4 / (1e-4 + 1e-4), rel=1e-5)
    assert float(keras_step[0]) == pytest.approx(-0.1 * 1e-4 / (1e-4 + 1e-4 / bc2**0.5), rel=1e-5)


def test_keras_weight_decay_is_decoupled_and_scaled_by_the_learning_rate():
    tx = kc.sgd(learning_rate=0.1, weight_decay=0.5)
    params = jnp.array([2.0])
    updates, _ = tx.update(jnp.zeros(1), tx.init(params), params)
    assert float(updates[0]) == pytest.approx(-0.1 * 0.5 * 2.0)


@pytest.mark.parametrize(
    ("first", "t_mul", "restart"),
    [(20, 2.0, 140), (7, 3.0, 847), (10, 2.0, 10 * (2**9 - 1))],
)
def test_cosine_decay_restarts_restarts_where_keras_does_in_float64_under_jit(
    first, t_mul, restart, x64
):
    """Keras' floor is float32 (on its JAX backend, for float64 inputs too): in float64,
    log(8) / log(2) = 2.9999999999999996 floored to 2 gave 0.0 at the restart at step
    140 instead of the peak (and at 847 for t_mul = 3, eagerly too)."""
    schedule = kc.cosine_decay_restarts(0.05, first, t_mul=t_mul)
    values = jax.jit(schedule)(jnp.asarray([restart - 1, restart]))
    assert values.dtype == jnp.float64
    assert float(values[0]) < 1e-3 * 0.05  # the end of the period before
    assert float(values[1]) == 0.05  # the peak of the next one
    assert float(schedule(restart)) == 0.05  # eagerly too


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: kc.adam(clipnorm=1.0, clipvalue=0.5), "only one of clipnorm"),
        (lambda: kc.sgd(gradient_accumulation_steps=1), "gradient_accumulation_steps must"),
        (lambda: kc.sgd(gradient_accumulation_steps=2.0), "gradient_accumulation_steps must"),
        (lambda: kc.adam(loss_scale_factor=0.0), "^loss_scale_factor must"),
        (lambda: kc.adam(global_clipnorm=-1.0), "^global_clipnorm must"),
        (lambda: kc.adamw(exclude_from_weight_decay="bias"), "list of name patterns"),
        (lambda: kc.adamw(weight_decay=None), "^weight_decay must"),
        (lambda: kc.sgd(learning_rate=lambda: 0.01), "cannot take the step as its one argument"),
        (lambda: kc.adam(use_ema=True, ema_momentum=1.5), "^ema_momentum must"),
        (lambda: kc.adam(use_ema=True, ema_overwrite_frequency=0), "^ema_overwrite_frequency"),
        (lambda: kc.adam(ema_overwrite_frequency=5), "needs use_ema=True"),
        (lambda: kc.adam(exclude_from_weight_decay=["bias"]), "needs a weight_decay"),
    ],
)
def test_keras_base_options_reject_what_keras_rejects(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# The defaults of Keras 3.15 (its signatures; test_compat_live checks these tables against
# the installed Keras): an argument left out is Keras'.
KERAS_BASE_DEFAULTS = dict(
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema=False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
)
KERAS_ADAM_DEFAULTS = dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
KERAS_DEFAULTS = {
    "sgd": dict(learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None),
    "rmsprop": dict(
        learning_rate=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=None
    ),
    "adam": dict(**KERAS_ADAM_DEFAULTS, amsgrad=False, weight_decay=None),
    "adamw": dict(**KERAS_ADAM_DEFAULTS, amsgrad=False, weight_decay=0.004),
    "adagrad": dict(
        learning_rate=1e-3, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None
    ),
    "adadelta": dict(learning_rate=1e-3, rho=0.95, epsilon=1e-7, weight_decay=None),
    "adamax": dict(**KERAS_ADAM_DEFAULTS, weight_decay=None),
    "nadam": dict(**KERAS_ADAM_DEFAULTS, weight_decay=None),
}
KERAS_SCHEDULE_DEFAULTS = {
    "exponential_decay": dict(staircase=False),
    "inverse_time_decay": dict(staircase=False),
    "polynomial_decay": dict(end_learning_rate=1e-4, power=1.0, cycle=False),
    "cosine_decay": dict(alpha=0.0, warmup_target=None, warmup_steps=0),
    "cosine_decay_restarts": dict(t_mul=2.0, m_mul=1.0, alpha=0.0),
}


def defaults_of(function, names):
    import inspect

    parameters = inspect.signature(function).parameters
    return {name: parameters[name].default for name in names}


@pytest.mark.parametrize("name", sorted(KERAS_DEFAULTS))
def test_optimizer_defaults_are_keras(name):
    expected = {**KERAS_DEFAULTS[name], **KERAS_BASE_DEFAULTS}
    assert defaults_of(getattr(kc, name), expected) == expected


@pytest.mark.parametrize("name", sorted(KERAS_SCHEDULE_DEFAULTS))
def test_schedule_defaults_are_keras(name):
    expected = KERAS_SCHEDULE_DEFAULTS[name]
    assert defaults_of(getattr(kc.schedules, name), expected) == expected


def test_keras_options_are_in_the_signature_and_reach_schedule_injection():
    import inspect

    assert "gradient_accumulation_steps" in inspect.signature(kc.nadam).parameters
    params = [jnp.ones(3)]
    grads = [jnp.array([3.0, 4.0, 0.0])]  # norm 5, clipped to 0.5
    for tx in (
        kc.sgd(learning_rate=0.1, clipnorm=0.5),
        gtx.schedule_injection(kc.sgd)(learning_rate=0.1, clipnorm=0.5),
        gtx.schedule_injection(kc.sgd)(learning_rate=0.1, global_clipnorm=0.5, use_ema=True),
    ):
        for update in (tx.update, jax.jit(tx.update)):  # injected values are traced in jit
            updates, _ = update(grads, tx.init(params), params)
            np.testing.assert_allclose(updates[0], [-0.03, -0.04, 0.0], rtol=1e-6)


def test_piecewise_constant_decay_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="len\\(boundaries\\) \\+ 1"):
        kc.piecewise_constant_decay([10, 20], [1.0, 0.5])


def test_piecewise_constant_decay_rejects_unsorted_boundaries():
    # Keras does not check; its segments would overlap and add up
    with pytest.raises(ValueError, match="boundaries must be strictly increasing, got \\[10, 5\\]"):
        kc.piecewise_constant_decay([10, 5], [1.0, 0.5, 0.25])


PAST_INT32_SCHEDULES = {
    "exponential_decay": lambda: kc.exponential_decay(1.0, 10, 0.9),
    "inverse_time_decay": lambda: kc.inverse_time_decay(1.0, 10, 0.5),
    "piecewise_constant_decay": lambda: kc.piecewise_constant_decay([5, 10], [1.0, 0.5, 0.1]),
    "polynomial_decay": lambda: kc.polynomial_decay(1.0, 10, cycle=True),
    "cosine_decay": lambda: kc.cosine_decay(1.0, 10),
    "cosine_decay_restarts": lambda: kc.cosine_decay_restarts(1.0, 10),
}


@pytest.mark.parametrize("enable_x64", [False, True])
@pytest.mark.parametrize("name", sorted(PAST_INT32_SCHEDULES))
def test_schedules_take_a_step_past_int32_as_the_last_int32_step(name, enable_x64):
    """A Python int 2**31 was an OverflowError without x64. Keras' ``iterations`` are int32,
    so as in gradtx.schedules a later step is the value at 2**31 - 1, and a negative step
    (exponential_decay(1, 10, 0.9) gave 1.0106 at -1) is step 0."""
    with jax.enable_x64(enable_x64):
        schedule = PAST_INT32_SCHEDULES[name]()
        last = float(schedule(2**31 - 1))
        for step in (2**31, 2**31 + 5, 2**40):
            assert float(schedule(step)) == last, step
        np.testing.assert_array_equal(schedule(jnp.array([-5, -1])), schedule(jnp.array([0, 0])))


def test_cyclic_polynomial_decay_stays_in_range_up_to_the_saturated_step_counter():
    """ceil(t / decay_steps) as (t + decay_steps - 1) // decay_steps wrapped int32 in the
    last 99 steps below 2**31: a learning rate of -2.1e7 there, and gradtx's counters
    saturate at 2**31 - 1, so a run would have stayed at it."""
    schedule = kc.polynomial_decay(1.0, 100, end_learning_rate=0.0, power=1.0, cycle=True)
    steps = jnp.array([2**31 - 100, 2**31 - 2, 2**31 - 1], jnp.int32)
    values = np.asarray(jax.jit(schedule)(steps))
    # each step is within 100 of its cycle's end 2.1e9 steps long: (horizon - t) / horizon
    # below 5e-8, and float32 rounds such t and horizon to multiples of 128
    assert np.all((values >= 0) & (values <= 1e-7)), values


@pytest.mark.parametrize(
    "make",
    [
        lambda: kc.adam(0.01, use_ema=True, ema_overwrite_frequency=3),
        lambda: kc.sgd(0.1, momentum=0.9, gradient_accumulation_steps=2, clipnorm=1.0),
        lambda: kc.adamw(0.01, exclude_from_weight_decay=["b"], loss_scale_factor=4.0),
    ],
    ids=["ema", "accumulation_clipnorm", "exclude_loss_scale"],
)
def test_keras_options_init_on_abstract_params_as_on_arrays(make):
    """Checkpoint restore and sharding build the state from ShapeDtypeStructs."""
    tx = make()
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    spec = lambda t: jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), t)  # noqa: E731
    assert spec(tx.init(abstract)) == spec(tx.init(params))
    assert spec(jax.eval_shape(tx.init, params)) == spec(tx.init(params))


@pytest.mark.parametrize("jitted", [False, True])
def test_use_ema_names_params_of_another_shape(jitted):
    """A tree.map broadcast w (1,) against its average (3,): [4.9, 4.9, 4.9], silently."""
    tx = kc.adam(0.1, use_ema=True)
    state = tx.init({"w": jnp.ones(3)})
    update = jax.jit(tx.update) if jitted else tx.update
    with pytest.raises(ValueError, match=r"shape mismatch at \['w'\].*\[3\].*\[1\]"):
        update({"w": jnp.ones(3)}, state, {"w": jnp.ones(1)})


PLATEAU_CASES = {case["name"]: case for case in OPTIMIZERS["plateau_cases"]}


def run_plateau_epochs(case, *, post_scale=False):
    """Keras' fit loop, ported: the epoch's steps (jitted), then the callback on the
    host. With ``post_scale``, Keras' recorded rates applied as a factor on the updates
    instead (what a plateau chained after the optimizer does)."""
    shapes = [tuple(s) for s in OPTIMIZERS["shapes"]]
    problem = {k: np.asarray(v, np.float32) for k, v in OPTIMIZERS["problem"].items()}
    h, c = split(problem["h"], shapes), split(problem["c"], shapes)
    params = [jnp.asarray(x) for x in split(problem["p0"], shapes)]
    settings = dict(case["plateau"])
    k = case["steps_per_epoch"]
    if post_scale:  # Keras' own rates, as a factor on the updates
        base = case["kwargs"]["learning_rate"]
        used = jnp.asarray([base, *case["lrs"][:-1]], jnp.float32) / base  # per epoch
        tx = gtx.chain(
            getattr(kc, case["optimizer"])(**case["kwargs"]),
            gtx.scale_by_schedule(lambda count: used[count // k]),
        )
    else:
        tx = gtx.schedule_injection(getattr(kc, case["optimizer"]))(**case["kwargs"])
        plateau = kc.reduce_lr_on_plateau(**settings)
        plateau_state = plateau.init()
    state = tx.init(params)

    @jax.jit
    def step(params, state, noise):
        grads = [h[i] * (p - c[i]) + n for i, (p, n) in enumerate(zip(params, noise, strict=True))]
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    sign = -1.0 if settings.get("mode") == "max" else 1.0
    metrics = [sign * m for m in OPTIMIZERS["plateau_metrics"]]
    epochs, lrs = [], []
    for epoch in range(len(metrics)):
        for t in range(epoch * k, (epoch + 1) * k):
            params, state = step(params, state, split(problem["noise"][t], shapes))
        if not post_scale:
            state, plateau_state = plateau.on_epoch_end(metrics[epoch], state, plateau_state)
            lrs.append(float(gtx.get_hyperparams(state)["learning_rate"]))
        epochs.append(np.concatenate([np.ravel(p) for p in params]))
    return np.asarray(epochs), lrs


@pytest.mark.parametrize("name", sorted(PLATEAU_CASES))
def test_reduce_lr_on_plateau_follows_keras_callback_epoch_for_epoch(name):
    case = PLATEAU_CASES[name]
    assert len(set(case["lrs"])) >= 3  # the case reduces
    epochs, lrs = run_plateau_epochs(case)
    assert lrs == case["lrs"]  # the same float32 rates, exactly
    np.testing.assert_allclose(epochs, case["epochs"], **TOLERANCE["float32"])


def test_scaling_the_updates_is_keras_plateau_only_where_the_rate_stays_out_of_the_state():
    """Keras' SGD and RMSprop keep lr * g in their momentum buffer: a reduction applies
    to new terms only. Scaling the updates by the same rates (a plateau chained after
    the optimizer, PyTorch's way) also rescales the buffer's past terms: 0.077 (SGD) and
    0.16 (RMSprop) off Keras; for Adam, whose rate multiplies the step only, it agrees."""
    for name in ("sgd_momentum", "rmsprop_momentum_min_lr"):
        scaled, _ = run_plateau_epochs(PLATEAU_CASES[name], post_scale=True)
        assert np.max(np.abs(scaled - np.asarray(PLATEAU_CASES[name]["epochs"]))) > 1e-2
    scaled, _ = run_plateau_epochs(PLATEAU_CASES["adam_max_mode"], post_scale=True)
    np.testing.assert_allclose(
        scaled, PLATEAU_CASES["adam_max_mode"]["epochs"], **TOLERANCE["float32"]
    )


def test_reduce_lr_on_plateau_refuses_what_keras_cannot_tell_or_do():
    with pytest.raises(ValueError, match=r"mode='auto' cannot tell whether 'val_accuracy'"):
        kc.reduce_lr_on_plateau(monitor="val_accuracy")
    with pytest.raises(ValueError, match=r"factor must be in \[0.0, 1.0\)"):
        kc.reduce_lr_on_plateau(factor=1.0)
    plateau = kc.reduce_lr_on_plateau(patience=0)
    opt_state = kc.sgd(0.1).init(jnp.zeros(1))  # not injected: no learning_rate to set
    with pytest.raises(ValueError, match=r"no injected hyperparameters"):
        plateau.on_epoch_end(1.0, opt_state, plateau.init())
    injected = gtx.schedule_injection(kc.sgd)(learning_rate=0.1).init(jnp.zeros(1))
    with pytest.raises(TypeError, match=r"outside jax.jit"):
        jax.jit(lambda v: plateau.on_epoch_end(v, injected, plateau.init()))(1.0)


def test_reduce_lr_on_plateau_refuses_a_rate_that_something_else_sets():
    """A scheduled rate overwrote the callback's reduction at the next update, which the
    callback then counted as done (Keras refuses to set a schedule's rate)."""
    tx = gtx.schedule_injection(kc.sgd)(learning_rate=lambda t: 0.1 / (1.0 + t))
    params = jnp.zeros(1)
    opt_state = tx.init(params)
    plateau = kc.reduce_lr_on_plateau(factor=0.5, patience=1)
    state = plateau.init()
    _, opt_state = tx.update(jnp.ones(1), opt_state, params)
    opt_state, state = plateau.on_epoch_end(1.0, opt_state, state)
    _, opt_state = tx.update(jnp.ones(1), opt_state, params)  # the schedule moves the rate
    with pytest.raises(TypeError, match=r"learning rate changed between two epochs"):
        plateau.on_epoch_end(2.0, opt_state, state)


RECIPES = json.loads((GOLDEN / "keras_recipes.json").read_text())


def test_keras_recipes_with_accumulation_ema_and_excluded_biases_follow_keras_within_1e10(x64):
    """Whole Keras recipes, 60 ``apply_gradients`` calls on a tiny tanh MLP: ``AdamW``
    with ``CosineDecay`` warmup, ``weight_decay`` (biases excluded), ``global_clipnorm``,
    ``gradient_accumulation_steps`` and ``use_ema`` (with k = 2 and
    ``ema_overwrite_frequency=4`` too), and SGD with nesterov and
    ``PiecewiseConstantDecay``. Keras' average moves at every call of an accumulation:
    these options together were refused before; the params and the average follow Keras
    3.15, float64."""
    problem, cases, snapshots = RECIPES["problem"], RECIPES["cases"], RECIPES["snapshots"]
    size, count = problem["micro_batch"], problem["micro_batches"]
    x = jnp.asarray(problem["x"]).reshape(count, size, -1)
    y = jnp.asarray(problem["y"]).reshape(count, size, -1)
    # Keras' layout and names: fc1_kernel (in, out), fc1_bias, ...
    params = {
        name.replace(".weight", "_kernel").replace(".bias", "_bias"): jnp.asarray(p).T
        for name, p in problem["p0"].items()
    }
    names = list(params)

    def loss(p, x, y):
        hidden = jnp.tanh(x @ p["fc1_kernel"] + p["fc1_bias"])
        return jnp.mean((hidden @ p["fc2_kernel"] + p["fc2_bias"] - y) ** 2)

    cosine = kc.cosine_decay(0.0, 40, alpha=0.1, warmup_target=0.05, warmup_steps=10)
    options = dict(weight_decay=0.1, global_clipnorm=0.5, exclude_from_weight_decay=["bias"])
    ema = dict(use_ema=True, ema_momentum=0.9)
    transforms = {
        "adamw_accumulation_ema": kc.adamw(cosine, gradient_accumulation_steps=3, **options, **ema),
        "adamw_accumulation_ema_overwrite": kc.adamw(
            cosine, gradient_accumulation_steps=2, ema_overwrite_frequency=4, **options, **ema
        ),
        "sgd_nesterov_piecewise": kc.sgd(
            kc.piecewise_constant_decay([10, 25], [0.1, 0.05, 0.01]),
            momentum=0.9,
            nesterov=True,
            **options,
        ),
    }

    def flat(tree):
        return jnp.concatenate([tree[n].ravel() for n in names])

    @jax.jit
    def run(params):
        def step(carry, call):
            out, rows = {}, {}
            for name, tx in transforms.items():
                params, state = carry[name]
                grads = jax.grad(loss)(params, x[call % count], y[call % count])
                updates, state = tx.update(grads, state, params)
                out[name] = gtx.apply_updates(params, updates), state
                average = gtx.tree_get(state, "ema").average if "ema" in name else params
                rows[name] = flat(out[name][0]), flat(average)
            return out, rows

        carry = {name: (params, tx.init(params)) for name, tx in transforms.items()}
        return jax.lax.scan(step, carry, jnp.arange(snapshots[-1]))[1]

    runs = jax.device_get(run(params))
    rows = [s - 1 for s in snapshots]
    for name, case in cases.items():
        actual, average = runs[name]
        np.testing.assert_allclose(actual[rows], case["params"], **TOLERANCE["float64"])
        if "average" in case:
            np.testing.assert_allclose(average[rows], case["average"], **TOLERANCE["float64"])
