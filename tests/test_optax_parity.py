"""Every optimizer that Optax also has gives Optax's trajectory, over 100 steps.

gradtx builds its optimizers through ``schedule_injection``, which keeps hyperparameters
as float32; Optax computes with the Python floats it is given. Both are given the
float32-rounded values (``f32``), so the two libraries compute with the same constants
and any difference is the order of floating-point operations.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from tests import trajectory

STEPS = 100


def f32(x: float) -> float:
    return float(np.float32(x))


MASK = {"layers": [{"w": True}, {"b": False}], "scale": False}

# name -> (gradtx optimizer, the same optimizer in Optax)
PAIRS = {
    "sgd": (lambda: gtx.sgd(0.05), lambda: optax.sgd(f32(0.05))),
    "sgd_momentum": (
        lambda: gtx.sgd(0.05, momentum=0.9),
        lambda: optax.sgd(f32(0.05), momentum=f32(0.9)),
    ),
    "sgd_nesterov": (
        lambda: gtx.sgd(0.05, momentum=0.8, nesterov=True),
        lambda: optax.sgd(f32(0.05), momentum=f32(0.8), nesterov=True),
    ),
    "adagrad": (lambda: gtx.adagrad(0.1), lambda: optax.adagrad(f32(0.1), f32(0.1), f32(1e-7))),
    "rmsprop": (lambda: gtx.rmsprop(0.01), lambda: optax.rmsprop(f32(0.01), f32(0.9), f32(1e-8))),
    "rmsprop_centered_momentum": (
        lambda: gtx.rmsprop(0.01, decay=0.8, initial_scale=0.5, centered=True, momentum=0.9),
        lambda: optax.rmsprop(
            f32(0.01), f32(0.8), f32(1e-8), f32(0.5), centered=True, momentum=f32(0.9)
        ),
    ),
    "rmsprop_eps_outside_nesterov_corrected": (
        lambda: gtx.rmsprop(
            0.01, 0.99, 1e-3, eps_in_sqrt=False, momentum=0.5, nesterov=True, bias_correction=True
        ),
        lambda: optax.rmsprop(
            f32(0.01),
            f32(0.99),
            f32(1e-3),
            eps_in_sqrt=False,
            momentum=f32(0.5),
            nesterov=True,
            bias_correction=True,
        ),
    ),
    "adadelta_l2": (
        lambda: gtx.adadelta(1.0, rho=0.8, eps=1e-4, weight_decay=0.1),
        lambda: optax.adadelta(1.0, f32(0.8), f32(1e-4), weight_decay=f32(0.1)),
    ),
    "adam": (lambda: gtx.adam(0.01), lambda: optax.adam(f32(0.01), f32(0.9), f32(0.999))),
    "adamw_masked": (
        lambda: gtx.adamw(0.01, b2=0.99, weight_decay=0.5, mask=MASK),
        lambda: optax.adamw(f32(0.01), f32(0.9), f32(0.99), weight_decay=f32(0.5), mask=MASK),
    ),
    "amsgrad": (
        lambda: gtx.amsgrad(0.01, b2=0.9),
        lambda: optax.amsgrad(f32(0.01), f32(0.9), f32(0.9), f32(1e-8)),
    ),
    "adamax": (
        lambda: gtx.adamax(0.01),
        lambda: optax.adamax(f32(0.01), f32(0.9), f32(0.999), f32(1e-8)),
    ),
    "adamaxw_masked": (
        lambda: gtx.adamaxw(0.01, b2=0.99, weight_decay=0.5, mask=MASK),
        lambda: optax.adamaxw(f32(0.01), f32(0.9), f32(0.99), f32(1e-8), f32(0.5), MASK),
    ),
    "nadam": (
        lambda: gtx.nadam(0.01),
        lambda: optax.nadam(f32(0.01), f32(0.9), f32(0.999), f32(1e-8)),
    ),
    "nadamw": (
        lambda: gtx.nadamw(0.01, weight_decay=0.1),
        lambda: optax.nadamw(f32(0.01), f32(0.9), f32(0.999), f32(1e-8), weight_decay=f32(0.1)),
    ),
}

# Optax 0.2.8's scale_by_rprop returns the previous step's update (one step late, zero on
# the first step: google-deepmind/optax pull request 1725). gradtx follows the paper and
# PyTorch; the test below pins down that this lag is the only difference.
RPROP = (
    lambda: gtx.rprop(0.01, min_step_size=2e-3, max_step_size=0.05),
    lambda: optax.rprop(f32(0.01), 0.5, f32(1.2), f32(2e-3), f32(0.05)),
)


def _runs(dtype):
    rng = np.random.default_rng(4)
    gradients = trajectory.random_gradients(rng, STEPS, dtype)
    params = trajectory.random_params(rng, dtype)
    transforms = {}
    for name, (make_gradtx, make_optax) in {**PAIRS, "rprop": RPROP}.items():
        transforms["gradtx/" + name] = make_gradtx()
        transforms["optax/" + name] = make_optax()
    runs = trajectory.run_many(transforms, gradients, params)
    return {name: (trajectory.flatten(u), trajectory.flatten(p)) for name, (u, p) in runs.items()}


@pytest.fixture(scope="module")
def float64_runs():
    with jax.enable_x64(True):
        return _runs(jnp.float64)


@pytest.fixture(scope="module")
def float32_runs():
    return _runs(jnp.float32)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_optimizer_matches_optax_in_float64(name, float64_runs):
    (_, ours), (_, theirs) = float64_runs["gradtx/" + name], float64_runs["optax/" + name]
    trajectory.assert_close(ours, theirs, 1e-10)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_optimizer_matches_optax_in_float32(name, float32_runs):
    # Same constants in both libraries; the remaining difference is the order of float32
    # operations (rsqrt(v) * g against g / sqrt(v), where the bias correction is
    # divided), one or two ulps a step that 100 steps accumulate to ~1e-7 relative.
    (_, ours), (_, theirs) = float32_runs["gradtx/" + name], float32_runs["optax/" + name]
    trajectory.assert_close(ours, theirs, 1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_radam_matches_optax_in_float64(nesterov, x64):
    """Not in PAIRS: in float32 Optax's rho_t = rho_inf - 2 t b2^t / (1 - b2^t) cancels
    (r_6 0.6% off the float64 equations, which gradtx follows; test_blocks_reference)."""
    rng = np.random.default_rng(5)
    gradients = trajectory.random_gradients(rng, STEPS, jnp.float64)
    params = trajectory.random_params(rng, jnp.float64)
    runs = trajectory.run_many(
        {
            "gradtx": gtx.radam(0.01, nesterov=nesterov),
            "optax": optax.radam(f32(0.01), f32(0.9), f32(0.999), f32(1e-8), nesterov=nesterov),
        },
        gradients,
        params,
    )
    ours, theirs = (trajectory.flatten(runs[name][1]) for name in ("gradtx", "optax"))
    assert ours.dtype == np.float64
    trajectory.assert_close(ours, theirs, 1e-10)


@pytest.mark.parametrize("runs", ["float64_runs", "float32_runs"])
def test_rprop_is_optax_rprop_without_its_one_step_lag(runs, request):
    """Optax's update at step t is gradtx's update at step t-1, except where the sign
    flips at step t (both skip that step); on the first step Optax does not move."""
    results = request.getfixturevalue(runs)
    (ours, _), (theirs, _) = results["gradtx/rprop"], results["optax/rprop"]
    skipped = ours == 0
    assert skipped.any() and not skipped.all()
    np.testing.assert_array_equal(theirs[0], 0)
    np.testing.assert_allclose(theirs[1:], np.where(skipped[1:], 0, ours[:-1]), rtol=1e-6)


# Names shared with Optax whose positional arguments differ on purpose (docs/optimizers.md,
# docs/wrappers.md): lookahead keeps plain params (its inner is not `fast_optimizer`),
# add_noise and noisy_sgd take a seed third and Optax's key as key= (keyword-only) and
# keep the key in the state, partition calls them labels.
POSITIONAL_DIFFERENCES = {"lookahead", "add_noise", "noisy_sgd", "partition"}


def _positional(function) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds]


def test_names_shared_with_optax_take_optaxs_positional_arguments_in_its_order():
    """An Optax call written positionally means the same here: gtx.adamw(1e-3, 0.9, 0.99,
    1e-8, 0.0, None, 1e-2) was a TypeError (mu_dtype, weight_decay keyword-only) and
    gtx.sgd(0.1, 0.9, False, jnp.bfloat16) gave the dtype to weight_decay."""
    shared = [
        name
        for name in gtx.__all__
        if hasattr(optax, name)
        and inspect.isfunction(getattr(gtx, name))
        and callable(getattr(optax, name))
        and name not in POSITIONAL_DIFFERENCES
    ]
    assert {"adam", "adamw", "sgd", "trace", "ema", "scale_by_rms", "amsgrad"} <= set(shared)
    for name in shared:
        ours, theirs = _positional(getattr(gtx, name)), _positional(getattr(optax, name))
        assert ours[: len(theirs)] == theirs, name
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([0.5, -1.0, 2.0])}
    # the fourth argument of sgd is the buffer's dtype, as in Optax (it was weight_decay)
    state = gtx.sgd(0.1, 0.9, False, jnp.bfloat16).init(params)
    assert gtx.tree_get(state, "trace")["w"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"accumulator_dtype must be a floating dtype"):
        gtx.sgd(0.1, 0.0, False, 1e-4)  # an old positional weight decay is not ignored
    adamw_args = (1e-3, 0.9, 0.99, 1e-8, 0.0, None, 1e-2)
    sgd_args = (0.1, 0.9, True, jnp.float32)
    for ours, theirs in [
        (gtx.adamw(*adamw_args), optax.adamw(*adamw_args)),
        (gtx.sgd(*sgd_args), optax.sgd(*sgd_args)),
    ]:
        u_ours, _ = ours.update(grads, ours.init(params), params)
        u_theirs, _ = theirs.update(grads, theirs.init(params), params)
        np.testing.assert_allclose(u_ours["w"], u_theirs["w"], rtol=1e-6)


def test_static_args_take_one_name_as_a_string_and_refuse_unknown_names():
    # optax/schedules/_inject_test.py: test_static_args (string) and test_static_args_error
    def custom(learning_rate, mask):
        return gtx.masked(gtx.scale(-learning_rate), mask)

    mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # noqa: E731
    params = [jnp.ones((1, 2)), jnp.ones(2)]
    for static_args in ["mask", ["mask"]]:
        tx = gtx.schedule_injection(custom, static_args=static_args)(0.1, mask)
        updates, state = jax.jit(tx.update)(params, jax.jit(tx.init)(params))
        assert set(state.hyperparams) == {"learning_rate"}
        np.testing.assert_allclose(updates[0], -0.1 * params[0])
        np.testing.assert_allclose(updates[1], params[1])
    for static_args in ["lr", ["lr"]]:
        with pytest.raises(ValueError, match=r"static_args must name arguments of scale.*'lr'"):
            gtx.schedule_injection(gtx.scale, static_args=static_args)
        with pytest.raises(ValueError, match=r"'lr'"):
            gtx.schedule_injection(static_args=static_args)(gtx.scale)


def test_a_callable_tree_of_bools_is_a_mask_tree_not_a_mask_function():
    # optax/transforms/_masking_test.py: test_mask_compatible_callable_pytree. An Equinox
    # module defines __call__, so a mask built from one with tree_map is callable.
    class Linear:
        def __init__(self, w, b):
            self.w, self.b = w, b

        def __call__(self, x):
            return x @ self.w + self.b

    jax.tree_util.register_pytree_node(
        Linear, lambda m: ((m.w, m.b), None), lambda _, children: Linear(*children)
    )
    model = Linear(jnp.ones((2, 2)), jnp.ones(2))
    mask = jax.tree.map(lambda x: x.ndim > 1, model)  # decay the kernel, not the bias
    labels = jax.tree.map(lambda x: "decay" if x.ndim > 1 else "plain", model)
    grads = jax.tree.map(jnp.zeros_like, model)
    decay = gtx.add_decayed_weights(0.1)
    for ours, theirs in [
        (gtx.masked(decay, mask), optax.masked(optax.add_decayed_weights(0.1), mask)),
        (gtx.add_decayed_weights(0.1, mask), optax.add_decayed_weights(0.1, mask)),
        (
            gtx.adamw(1.0, weight_decay=0.1, mask=mask),
            optax.adamw(1.0, weight_decay=0.1, mask=mask),
        ),
        (gtx.freeze(mask), optax.transforms.freeze(mask)),
    ]:
        u_ours, _ = ours.update(grads, ours.init(model), model)
        u_theirs, _ = theirs.update(grads, theirs.init(model), model)
        for leaf_ours, leaf_theirs in zip(
            jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs), strict=True
        ):
            np.testing.assert_allclose(leaf_ours, leaf_theirs, rtol=1e-6)
    # labels likewise (optax.partition calls any callable, so it cannot be the reference)
    tx = gtx.partition({"decay": decay, "plain": gtx.identity()}, labels)
    updates, _ = tx.update(grads, tx.init(model), model)
    np.testing.assert_allclose(updates.w, np.full((2, 2), 0.1), rtol=1e-6)
    np.testing.assert_allclose(updates.b, np.zeros(2))
