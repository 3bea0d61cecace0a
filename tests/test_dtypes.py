"""Dtypes: updates and state keep the parameter dtype; float16 never produces NaN.

Each run uses a tree with one leaf per dtype, each with its own shape, so the state
leaves belonging to a parameter are recognised by their shape.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx.compat import torch as gtx_torch
from tests import zoo

SHAPES = {"bfloat16": (2,), "float16": (3,), "float32": (4,), "float16_zero_grad": (5,)}
DTYPES = {
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "float32": jnp.float32,
    "float16_zero_grad": jnp.float16,
}


DECOUPLED_DECAY = {"adamw", "nadamw", "adamaxw"}  # weight_decay=1e-4 by default, as in Optax


def mixed_tree(rng):
    params = {k: jnp.asarray(rng.normal(size=SHAPES[k]), DTYPES[k]) for k in SHAPES}
    grads = {
        k: jnp.zeros(SHAPES[k], DTYPES[k])
        if k == "float16_zero_grad"
        else jnp.asarray(rng.normal(size=SHAPES[k]), DTYPES[k])
        for k in SHAPES
    }
    return params, grads


def assert_state_keeps_parameter_dtypes(state, shapes_to_dtypes):
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        where = jax.tree_util.keystr(path)
        if leaf.shape == ():
            # step counters are int32, injected hyperparameters float32
            assert leaf.dtype in (jnp.int32, jnp.float32), where
        else:
            assert leaf.dtype == shapes_to_dtypes[leaf.shape], where


@pytest.mark.parametrize("name", zoo.ALL)
def test_updates_and_state_keep_each_parameters_dtype_and_float16_stays_finite(name, rng):
    tx = zoo.make(name, 1e-2)
    params, grads = mixed_tree(rng)

    @jax.jit
    def two_steps(params, grads):
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, params)
            params = gtx.apply_updates(params, updates)
        return updates, params, state

    updates, new_params, state = two_steps(params, grads)
    for key in SHAPES:
        assert updates[key].dtype == jnp.dtype(DTYPES[key]), key
        assert new_params[key].dtype == jnp.dtype(DTYPES[key]), key
        assert np.all(np.isfinite(np.asarray(updates[key], np.float32))), key
    # Zero gradients in float16: no NaN from an eps that underflows, and no motion
    # except decoupled weight decay (-lr * wd * p per step).
    decay = 1e-2 * 1e-4 if name in DECOUPLED_DECAY else 0.0
    start = np.asarray(params["float16_zero_grad"], np.float32)
    np.testing.assert_allclose(
        np.asarray(updates["float16_zero_grad"], np.float32), -decay * start, atol=1e-7
    )
    assert_state_keeps_parameter_dtypes(state, {SHAPES[k]: jnp.dtype(DTYPES[k]) for k in SHAPES})
    assert any(leaf.shape == (2,) for leaf in jax.tree.leaves(state)) or name == "sgd"


@pytest.mark.parametrize("name", zoo.ALL)
def test_float64_parameters_keep_float64(name, rng, x64):
    tx = zoo.make(name, 1e-2)
    params = jnp.asarray(rng.normal(size=3), jnp.float64)
    grads = jnp.asarray(rng.normal(size=3), jnp.float64)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert updates.dtype == jnp.float64
    assert gtx.apply_updates(params, updates).dtype == jnp.float64
    assert_state_keeps_parameter_dtypes(state, {(3,): jnp.dtype(jnp.float64)})


def test_adam_moments_follow_mu_dtype_and_nu_dtype():
    tx = gtx.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32)
    params = jnp.zeros(3, jnp.float16)
    state = tx.init(params)
    assert state.mu.dtype == jnp.bfloat16 and state.nu.dtype == jnp.float32
    grads = jnp.array([1e-3, -2.0, 0.5], jnp.float16)
    updates, state = tx.update(grads, state)
    assert updates.dtype == jnp.float16
    assert state.mu.dtype == jnp.bfloat16 and state.nu.dtype == jnp.float32
    # nu = (1 - b2) g^2 kept in float32: 1e-9 for g = 1e-3, which float16 would flush
    np.testing.assert_allclose(
        state.nu, (1 - 0.999) * np.asarray(grads, np.float32) ** 2, rtol=1e-3
    )
    np.testing.assert_allclose(np.asarray(updates, np.float32), [1.0, -1.0, 1.0], rtol=1e-3)


OPTIMIZERS_WITH_MU_DTYPE = [
    name
    for name in zoo.OPTIMIZER_NAMES
    if hasattr(gtx, name) and "mu_dtype" in inspect.signature(getattr(gtx, name)).parameters
]


@pytest.mark.parametrize("name", OPTIMIZERS_WITH_MU_DTYPE)
def test_mu_dtype_of_an_optimizer_sets_the_first_moment_dtype_only(name):
    tx = getattr(gtx, name)(1e-3, mu_dtype=jnp.bfloat16)
    params = jnp.zeros(4, jnp.float32)
    state = tx.init(params)
    _, state = tx.update(jnp.ones(4), state, params)
    shaped = [leaf for leaf in jax.tree.leaves(state) if leaf.shape == (4,)]
    assert jnp.dtype(jnp.bfloat16) in [leaf.dtype for leaf in shaped]
    assert jnp.dtype(jnp.float32) in [leaf.dtype for leaf in shaped]
    hyperparams = gtx.get_hyperparams(state)
    assert "mu_dtype" not in hyperparams


def test_adam_in_float16_matches_float32_math_for_tiny_gradients():
    """float16 parameters: the step is computed in float32, so a gradient of 1e-4 (whose
    square underflows float16) still gives a unit Adam step instead of 0/0."""
    tx = gtx.adam(1e-3)
    params = jnp.zeros(2, jnp.float16)
    updates, _ = tx.update(jnp.array([1e-4, -1e-4], jnp.float16), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates, np.float32), [-1e-3, 1e-3], rtol=2e-3)


def test_a_wider_accumulator_dtype_accumulates_in_its_own_precision(x64):
    """float32 gradients, float64 buffers: ema, trace, Adam's and AMSGrad's moments, the
    RMSProp average and the Adagrad sum are the float64 recurrences (a float32 recurrence
    drifts by ~1e-6 relative over these steps), and the updates stay float32, the float64
    result rounded once."""
    steps, b1, b2 = 1000, 0.9, 0.999
    rng = np.random.default_rng(6)
    gradients = (rng.normal(size=(steps, 4)) + 1.0).astype(np.float32)
    blocks = {
        "ema": gtx.ema(0.999, accumulator_dtype=jnp.float64),
        "trace": gtx.trace(0.99, accumulator_dtype=jnp.float64),
        "adam": gtx.scale_by_adam(b1, b2, mu_dtype=jnp.float64, nu_dtype=jnp.float64),
        "amsgrad": gtx.amsgrad_max(b1, b2, mu_dtype=jnp.float64, nu_dtype=jnp.float64),
        "rms": gtx.scale_by_rms(0.9, nu_dtype=jnp.float64),
        "rss": gtx.scale_by_rss(accumulator_dtype=jnp.float64),
    }

    @jax.jit
    def run(gradients):
        def step(states, g):
            outputs = {name: tx.update(g, states[name]) for name, tx in blocks.items()}
            return {k: s for k, (_, s) in outputs.items()}, {k: u for k, (u, _) in outputs.items()}

        params = jnp.zeros(4, jnp.float32)
        return jax.lax.scan(step, {k: tx.init(params) for k, tx in blocks.items()}, gradients)

    states, updates = run(jnp.asarray(gradients))

    e, b, m, v, v_max, r = (np.zeros(4) for _ in range(6))
    sum_of_squares = np.full(4, 0.1)
    for t, g in enumerate(gradients.astype(np.float64), start=1):
        e = 0.999 * e + (1 - 0.999) * g
        b = g + 0.99 * b
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        v_max = np.maximum(v_max, v / (1 - b2**t))
        r = 0.9 * r + (1 - 0.9) * g**2
        sum_of_squares = sum_of_squares + g**2
    adam_update = (m / (1 - b1**steps)) / (np.sqrt(v / (1 - b2**steps)) + 1e-8)
    amsgrad_update = (m / (1 - b1**steps)) / (np.sqrt(v_max) + 1e-8)
    ema_update = e / (1 - 0.999**steps)
    rms_update = g / np.sqrt(r + 1e-8)
    rss_update = g / np.sqrt(sum_of_squares + 1e-7)

    for got, expected in [
        (states["ema"].ema, e),
        (states["trace"].trace, b),
        (states["adam"].mu, m),
        (states["adam"].nu, v),
        (states["amsgrad"].mu, m),
        (states["amsgrad"].nu, v),
        (states["amsgrad"].nu_max, v_max),
        (states["rms"].nu, r),
        (states["rss"].sum_of_squares, sum_of_squares),
    ]:
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)
    for name, expected in [
        ("ema", ema_update),
        ("trace", b),
        ("adam", adam_update),
        ("amsgrad", amsgrad_update),
        ("rms", rms_update),
        ("rss", rss_update),
    ]:
        assert updates[name].dtype == jnp.float32, name
        np.testing.assert_allclose(np.asarray(updates[name][-1]), expected, rtol=1e-7, err_msg=name)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_the_learning_rate_multiplies_in_float32_and_rounds_once(dtype):
    """Cast to float16 first, lr 2.5e-8 was 0 (no step) and 1e-7 was 1.19e-7 (19% too
    large); the update is now float32 math rounded once to the parameter dtype."""
    learning_rates = np.geomspace(2.5e-8, 1e-2, 60).astype(np.float32)
    g = jnp.full(3, 1000.0 if dtype == jnp.float16 else 3.0, dtype)

    @jax.jit
    def updates(lr):
        tx = gtx.scale_by_learning_rate(lr)
        return tx.update(g, tx.init(g))[0]

    for lr in learning_rates:
        expected = (-lr * np.float32(g[0])).astype(np.float32)
        np.testing.assert_array_equal(updates(lr), jnp.full(3, expected).astype(dtype))


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "nadamw", "amsgrad", "rmsprop"])
def test_float16_params_with_a_float32_second_moment_follow_the_float32_run(name):
    """A float16 second moment of gradients ~1e-3 underflows to 0 ((1 - b2) g^2 ~ 1e-9 is
    below float16's smallest value), so the default float16 run takes steps ~40x too
    large (amsgrad's maximum: 26% off in the median, rmsprop's (1 - 0.9) g^2 is subnormal:
    1.3%); nu_dtype=float32 (the named optimizers' option) keeps the float32 run's steps."""
    steps = 300
    rng = np.random.default_rng(7)
    gradients = 1e-3 * rng.normal(size=(steps, 64)).astype(np.float32)

    def run(dtype, **kwargs):
        tx = getattr(gtx, name)(1e-3, **kwargs)
        params = jnp.zeros(64, dtype)

        def step(carry, g):
            params, state = carry
            updates, state = tx.update(g.astype(dtype), state, params)
            return (gtx.apply_updates(params, updates), state), updates

        (params, state), updates = jax.lax.scan(step, (params, tx.init(params)), gradients)
        return np.asarray(params, np.float64), np.asarray(updates, np.float64), state

    reference, reference_updates, _ = run(jnp.float32)
    params, updates, state = run(jnp.float16, nu_dtype=jnp.float32)
    fields = ["nu", "nu_max"] if name == "amsgrad" else ["nu"]
    for field in fields:
        assert {leaf.dtype for leaf in jax.tree.leaves(gtx.tree_get(state, field))} == {
            np.dtype("float32")
        }, field
    assert np.all(np.isfinite(params))
    # float16 gradients and first moment: steps within 0.05% in the median (the default
    # float16 second moment: 1,500%, and steps up to 13,000x the largest float32 one),
    # the params within 3e-4 of float32's (which move by up to 0.044)
    relative = np.abs(updates - reference_updates) / np.maximum(np.abs(reference_updates), 1e-12)
    assert np.median(relative) < 1e-3
    assert np.abs(updates).max() <= 1.01 * np.abs(reference_updates).max()
    np.testing.assert_allclose(params, reference, atol=3e-4)


def test_float16_adagrad_with_a_float32_sum_keeps_stepping_where_float16_overflows():
    """|g| = 10 for 800 steps: a float16 sum of squares passes 65,504 at step 655 and
    the steps become 0; accumulator_dtype=float32 keeps float32's steps."""
    steps = 800
    gradients = np.full((steps, 4), 10.0, np.float32)

    def run(dtype, **kwargs):
        tx = gtx.adagrad(0.01, **kwargs)
        params = jnp.zeros(4, dtype)

        def step(carry, g):
            params, state = carry
            updates, state = tx.update(g.astype(dtype), state, params)
            return (gtx.apply_updates(params, updates), state), updates

        return np.asarray(jax.lax.scan(step, (params, tx.init(params)), gradients)[1], np.float64)

    reference = run(jnp.float32)
    assert np.all(run(jnp.float16)[-1] == 0)  # the format's limit, the reason for the option
    np.testing.assert_allclose(
        run(jnp.float16, accumulator_dtype=jnp.float32), reference, rtol=1e-3
    )


def test_bfloat16_adamax_with_a_float32_norm_decays_after_a_burst():
    """20 steps of g = 10, then 2,000 of g = 0.1: b2 * u rounds back to u in bfloat16,
    so the norm stays near 10 and the last step is 0.14x float32's; nu_dtype=float32 keeps
    the float32 run's steps."""
    gradients = np.concatenate([np.full((20, 2), 10.0), np.full((2000, 2), 0.1)]).astype(np.float32)

    def last_update(dtype, **kwargs):
        tx = gtx.adamax(1e-3, **kwargs)
        params = jnp.zeros(2, dtype)

        def step(state, g):
            updates, state = tx.update(g.astype(dtype), state, params)
            return state, updates

        return np.asarray(jax.lax.scan(step, tx.init(params), gradients)[1][-1], np.float64)

    reference = last_update(jnp.float32)
    assert np.all(np.abs(last_update(jnp.bfloat16)) < 0.2 * np.abs(reference))
    # within 3%: the bfloat16 first moment and gradients (0.1 is 0.10009765625) remain
    np.testing.assert_allclose(
        last_update(jnp.bfloat16, nu_dtype=jnp.float32), reference, rtol=3e-2
    )


@pytest.mark.parametrize("block", ["scale_by_radam", "scale_by_nadam_schedule", "swats"])
def test_float16_params_with_a_float32_second_moment_in_radam_nadam_schedule_swats(block):
    # as for Adam above: (1 - b2) g^2 ~ 1e-9 underflows a float16 second moment
    gradients = 1e-3 * np.random.default_rng(8).normal(size=(300, 64)).astype(np.float32)

    def run(dtype, **kwargs):
        tx = getattr(gtx, block)(**kwargs)

        def step(state, g):
            updates, state = tx.update(g.astype(dtype), state)
            return state, updates

        state, updates = jax.lax.scan(step, tx.init(jnp.zeros(64, dtype)), gradients)
        return np.asarray(updates, np.float64), state

    reference, _ = run(jnp.float32)
    updates, state = run(jnp.float16, nu_dtype=jnp.float32)
    assert state.nu.dtype == jnp.float32 and state.mu.dtype == jnp.float16
    relative = np.abs(updates - reference) / np.maximum(np.abs(reference), 1e-12)
    assert np.median(relative[10:]) < 1e-3  # rectified steps (from t = 6) included
    default, _ = run(jnp.float16)
    assert np.median((np.abs(default - reference) / np.abs(reference))[10:]) > 1


@pytest.mark.parametrize(
    "updates",
    [
        {"a": jnp.array([300.0], jnp.float16), "b": jnp.array([400.0, 0.0], jnp.float16)},
        {f"leaf_{i:03d}": jnp.ones(1, jnp.bfloat16) for i in range(300)},
    ],
    ids=["float16", "bfloat16"],
)
def test_clip_by_global_norm_sums_half_precision_squares_in_float32(updates):
    """In float16, 300**2 and 400**2 overflow (max 65504): summed there, the norm is inf
    and every update 0. In bfloat16 (8 bits of mantissa) the sum of 300 leaves of 1
    stops at 256. Summed in float32, both norms are NumPy's float64 norm to rounding."""
    flat = np.concatenate([np.asarray(x, np.float64) for x in jax.tree.leaves(updates)])
    tx = gtx.clip_by_global_norm(1.0)
    clipped, _ = jax.jit(tx.update)(updates, tx.init(None))
    for key, leaf in clipped.items():
        assert leaf.dtype == updates[key].dtype, key
        expected = np.asarray(updates[key], np.float64) / np.linalg.norm(flat)
        np.testing.assert_allclose(np.asarray(leaf, np.float64), expected, rtol=2**-8, err_msg=key)


def _bias_correction(b, t):
    return np.float32(1 - b**t)


# block, the update as a function of the state it stores (float32 NumPy), its state fields
_READS_AS_STORED = {
    "scale_by_adam": (
        lambda: gtx.scale_by_adam(),
        lambda g, s, t: (
            (s.mu / _bias_correction(0.9, t))
            / (np.sqrt(s.nu / _bias_correction(0.999, t)) + np.float32(1e-8))
        ),
    ),
    "scale_by_adam, nesterov": (
        lambda: gtx.scale_by_adam(nesterov=True),
        lambda g, s, t: (
            (
                np.float32(0.9) * s.mu / _bias_correction(0.9, t + 1)
                + np.float32(1 - 0.9) * g / _bias_correction(0.9, t)
            )
            / (np.sqrt(s.nu / _bias_correction(0.999, t)) + np.float32(1e-8))
        ),
    ),
    "amsgrad_max": (
        lambda: gtx.amsgrad_max(),
        lambda g, s, t: (s.mu / _bias_correction(0.9, t)) / (np.sqrt(s.nu_max) + np.float32(1e-8)),
    ),
    "scale_by_adamax": (
        lambda: gtx.scale_by_adamax(),
        lambda g, s, t: (s.mu / _bias_correction(0.9, t)) / s.nu,
    ),
    "scale_by_rms": (
        lambda: gtx.scale_by_rms(),
        lambda g, s, t: g / np.sqrt(s.nu + np.float32(1e-8)),
    ),
    "scale_by_rss": (
        lambda: gtx.scale_by_rss(),
        lambda g, s, t: g / np.sqrt(s.sum_of_squares + np.float32(1e-7)),
    ),
    "trace, nesterov": (
        lambda: gtx.trace(0.9, nesterov=True),
        lambda g, s, t: g + np.float32(0.9) * s.trace,
    ),
    # its gains (a helper's review: 27% of updates were an ulp off the stored gains')
    "scale_by_local_gain": (lambda: gtx.scale_by_local_gain(), lambda g, s, t: s.gains * g),
    "ema": (
        lambda: gtx.ema(0.9),
        lambda g, s, t: s.ema / _bias_correction(0.9, t),
    ),
}


@pytest.mark.parametrize("block", sorted(_READS_AS_STORED))
def test_bfloat16_updates_read_the_moments_as_the_state_stores_them(block):
    """With bfloat16 params the update reads its moments rounded to bfloat16, as the
    state stores them and as PyTorch, Keras and Optax read them (issue 7: it read the
    float32 values, and XLA copied each donated moment to update it in place: bfloat16
    Adam held params + grads + state x1.5). The update is the block's formula of its
    stored state (all but the odd element where XLA contracts ``a * b + c`` into one
    rounding, 0-3 of 4,096): before, 13-29% of these updates were an ulp off it."""
    make, formula = _READS_AS_STORED[block]
    tx = make()
    rng = np.random.default_rng(3)
    grads = jnp.asarray(rng.normal(size=(3, 4096)), jnp.bfloat16)

    @jax.jit
    def run(grads):
        def step(state, g):
            updates, state = tx.update(g, state)
            return state, updates

        return jax.lax.scan(step, tx.init(grads[0]), grads)

    state, updates = run(grads)
    as_float32 = jax.tree.map(lambda x: np.asarray(x, np.float32), state)
    expected = formula(np.asarray(grads[-1], np.float32), as_float32, 3)
    expected = np.asarray(np.asarray(expected, np.float32).astype(jnp.bfloat16), np.float32)
    equal = np.asarray(updates[-1], np.float32) == expected
    assert np.mean(equal) > 0.999, np.mean(equal)


FLOAT8_CASES = [
    *zoo.ALL,
    *("flatten", "multi_steps", "quantized_state", "lookahead", "masked", "torch_clip_grad_norm"),
]


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jitted"])
@pytest.mark.parametrize("name", FLOAT8_CASES)
def test_float8_parameters_or_gradients_are_a_clear_error(name, jitted):
    """JAX promotes float8 to nothing implicitly: float8 parameters or gradients met
    JAX's TypePromotionError inside the first product with float32 (each of 180 runs of
    the optimizers, wrappers and PyTorch's clipping; Optax's Adam gives NaN, and no
    learning-rate-sized step would survive float8's rounding). Now each is a TypeError
    naming the leaf and what to keep instead."""
    if name == "quantized_state":
        tx = gtx.quantized_state(gtx.adam(0.1), block_size=2, min_size=1)
    elif name == "torch_clip_grad_norm":  # (no state: its update checks its leaves)
        tx = gtx_torch.clip_grad_norm(1.0)
    else:
        tx = zoo.WRAPPERS[name]() if name in zoo.WRAPPERS else zoo.make(name, 0.1)
    update = jax.jit(tx.update) if jitted else tx.update
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    float8 = jax.tree.map(lambda x: x.astype(jnp.float8_e4m3fn), params)
    message = r"\['[bw]'\] has dtype float8_e4m3fn; .* fewer than 16 bits .* float32 or bfloat16"
    with pytest.raises(TypeError, match=message):  # the parameter at init (or the update)
        update(float8, tx.init(float8), float8)
    with pytest.raises(TypeError, match="the update at " + message):
        update(float8, tx.init(params), params)


@pytest.mark.parametrize("option", ["mu_dtype", "nu_dtype"])
def test_float8_moments_are_refused_where_the_option_is_given(option):
    with pytest.raises(ValueError, match=f"{option} must be a floating dtype of 16 bits or more"):
        gtx.scale_by_adam(**{option: jnp.float8_e5m2})
