"""Every named optimizer against a NumPy loop of its published equations, and the
hyperparameter checks that every optimizer makes when it is built."""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import optimizers
from tests import trajectory
from tests.reference import classic

STEPS = 60


def f32(x: float) -> float:
    """The float32 rounding of a hyperparameter: injected optimizers keep their
    hyperparameters as float32 (DESIGN.md), so the reference gets the same values."""
    return float(np.float32(x))


# Decay only the matrix of the test tree; the reference decays the matching elements.
MASK = {"layers": [{"w": True}, {"b": False}], "scale": False}
MASK_VECTOR = np.concatenate([np.ones(12), np.zeros(4), np.zeros(1)])

# name -> (gradtx optimizer, reference: (params0, flat gradients) -> parameter trajectory)
OPTIMIZERS = {
    "sgd": (
        lambda: gtx.sgd(0.05),
        lambda p, g: classic.sgd(p, g, f32(0.05)),
    ),
    "sgd_momentum_l2": (
        lambda: gtx.sgd(0.05, momentum=0.9, weight_decay=0.1),
        lambda p, g: classic.sgd(p, g, f32(0.05), f32(0.9), weight_decay=f32(0.1)),
    ),
    "sgd_nesterov": (
        lambda: gtx.sgd(0.05, momentum=0.8, nesterov=True),
        lambda p, g: classic.sgd(p, g, f32(0.05), f32(0.8), nesterov=True),
    ),
    "adagrad": (
        lambda: gtx.adagrad(0.1),
        lambda p, g: classic.adagrad(p, g, f32(0.1), f32(0.1), f32(1e-7)),
    ),
    "rmsprop": (
        lambda: gtx.rmsprop(0.01),
        lambda p, g: classic.rmsprop(p, g, f32(0.01), f32(0.9), f32(1e-8)),
    ),
    "rmsprop_centered_momentum": (
        lambda: gtx.rmsprop(0.01, decay=0.8, initial_scale=0.5, centered=True, momentum=0.9),
        lambda p, g: classic.rmsprop(
            p, g, f32(0.01), f32(0.8), f32(1e-8), f32(0.5), centered=True, momentum=f32(0.9)
        ),
    ),
    "rmsprop_torch_like_nesterov": (
        lambda: gtx.rmsprop(
            0.01, 0.99, 1e-3, eps_in_sqrt=False, momentum=0.5, nesterov=True, bias_correction=True
        ),
        lambda p, g: classic.rmsprop(
            p,
            g,
            f32(0.01),
            f32(0.99),
            f32(1e-3),
            eps_in_sqrt=False,
            momentum=f32(0.5),
            nesterov=True,
            bias_correction=True,
        ),
    ),
    "adadelta": (
        lambda: gtx.adadelta(),
        lambda p, g: classic.adadelta(p, g, 1.0, f32(0.9), f32(1e-6)),
    ),
    "adadelta_l2": (
        lambda: gtx.adadelta(0.5, rho=0.8, eps=1e-4, weight_decay=0.1),
        lambda p, g: classic.adadelta(p, g, 0.5, f32(0.8), f32(1e-4), weight_decay=f32(0.1)),
    ),
    "adam": (
        lambda: gtx.adam(0.01),
        lambda p, g: classic.adam(p, g, f32(0.01), f32(0.9), f32(0.999), f32(1e-8)),
    ),
    "adamw": (
        lambda: gtx.adamw(0.01, weight_decay=0.1),
        lambda p, g: classic.adamw(p, g, f32(0.01), f32(0.9), f32(0.999), f32(1e-8), 0.0, f32(0.1)),
    ),
    "adamw_masked": (
        lambda: gtx.adamw(0.01, b2=0.99, weight_decay=0.5, mask=MASK),
        lambda p, g: classic.adamw(
            p, g, f32(0.01), f32(0.9), f32(0.99), f32(1e-8), 0.0, f32(0.5) * MASK_VECTOR
        ),
    ),
    # docs/optimizers.md: Adam + L2 is add_decayed_weights *before* the preconditioner
    # (a plain chain, not injected, so the reference gets the exact hyperparameters).
    "adam_l2_chain": (
        lambda: gtx.chain(
            gtx.add_decayed_weights(0.1), gtx.scale_by_adam(), gtx.scale_by_learning_rate(0.01)
        ),
        lambda p, g: classic.adam_l2(p, g, 0.01, weight_decay=0.1),
    ),
    "amsgrad": (
        lambda: gtx.amsgrad(0.01, b2=0.9),
        lambda p, g: classic.amsgrad(p, g, f32(0.01), f32(0.9), f32(0.9), f32(1e-8)),
    ),
    "adamax": (
        lambda: gtx.adamax(0.01),
        lambda p, g: classic.adamax(p, g, f32(0.01), f32(0.9), f32(0.999), f32(1e-8)),
    ),
    "nadam": (
        lambda: gtx.nadam(0.01),
        lambda p, g: classic.nadam(p, g, f32(0.01), f32(0.9), f32(0.999), f32(1e-8)),
    ),
    "nadamw": (
        lambda: gtx.nadamw(0.01, weight_decay=0.1),
        lambda p, g: classic.nadamw(
            p, g, f32(0.01), f32(0.9), f32(0.999), f32(1e-8), 0.0, f32(0.1)
        ),
    ),
    "rprop": (
        lambda: gtx.rprop(0.01, min_step_size=2e-3, max_step_size=0.05),
        lambda p, g: classic.rprop(p, g, f32(0.01), 0.5, f32(1.2), f32(2e-3), f32(0.05)),
    ),
}


def _runs(dtype):
    rng = np.random.default_rng(3)
    gradients = trajectory.random_gradients(rng, STEPS, dtype)
    params = trajectory.random_params(rng, dtype)
    optimizers = {name: make() for name, (make, _) in OPTIMIZERS.items()}
    runs = trajectory.run_many(optimizers, gradients, params)
    trajectories = {name: trajectory.flatten(p) for name, (_, p) in runs.items()}
    return trajectories, trajectory.flatten(params, time_axis=False), trajectory.flatten(gradients)


@pytest.fixture(scope="module")
def float64_runs():
    with jax.enable_x64(True):
        return _runs(jnp.float64)


@pytest.fixture(scope="module")
def float32_runs():
    return _runs(jnp.float32)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_matches_reference_in_float64(name, float64_runs):
    trajectories, params, gradients = float64_runs
    expected = OPTIMIZERS[name][1](params, gradients)
    trajectory.assert_close(trajectories[name], expected, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_matches_reference_in_float32(name, float32_runs):
    trajectories, params, gradients = float32_runs
    expected = OPTIMIZERS[name][1](params, gradients)
    trajectory.assert_close(trajectories[name], expected, rtol=1e-5)


def test_sgd_without_momentum_or_decay_keeps_no_buffer_and_no_hyperparameter():
    params = {"w": jnp.zeros(3)}
    plain = gtx.sgd(0.1).init(params)
    assert sorted(gtx.get_hyperparams(plain)) == ["learning_rate"]
    assert jax.tree.leaves(plain.inner_state) == []
    heavy = gtx.sgd(0.1, momentum=0.9, weight_decay=1e-3).init(params)
    assert sorted(gtx.get_hyperparams(heavy)) == ["learning_rate", "momentum", "weight_decay"]
    assert len(jax.tree.leaves(heavy.inner_state)) == 1  # the momentum buffer


def test_every_optimizer_reports_its_learning_rate():
    """Every optimizer of ``gradtx.optimizers`` (issue 3: ``get_hyperparams(state)
    ["learning_rate"]`` works on all of them out of the box), found by its signature."""
    params = {"w": jnp.zeros(3)}
    names = [
        name
        for name, function in vars(optimizers).items()
        if inspect.isfunction(function)
        and not name.startswith("_")
        and function.__module__.startswith(optimizers.__name__ + ".")
        and next(iter(inspect.signature(function).parameters), None) == "learning_rate"
    ]
    assert {"sgd", "adadelta", "adam", "rprop", "noisy_sgd"} <= set(names), names
    for name in names:
        state = getattr(gtx, name)(0.25).init(params)
        assert float(gtx.get_hyperparams(state)["learning_rate"]) == 0.25, name
    assert float(gtx.get_hyperparams(gtx.adadelta().init(params))["learning_rate"]) == 1.0


def test_adadelta_descends_with_its_default_learning_rate():
    params = jnp.array([2.0, -3.0])
    tx = gtx.adadelta()
    updates, _ = tx.update(2 * params, tx.init(params), params)
    assert np.all(np.sign(np.asarray(updates)) == -np.sign(np.asarray(params)))


BAD_HYPERPARAMETERS = [
    (lambda: gtx.adam(1e-3, b1=1.0), "b1", "[0.0, 1.0)"),
    (lambda: gtx.adamw(1e-3, b2=-0.1), "b2", "[0.0, 1.0)"),
    (lambda: gtx.adamw(1e-3, weight_decay=-1e-4), "weight_decay", "[0.0, inf)"),
    (lambda: gtx.nadam(1e-3, eps=-1e-8), "eps", "[0.0, inf)"),
    (lambda: gtx.nadamw(1e-3, b1=1.5), "b1", "[0.0, 1.0)"),
    (lambda: gtx.amsgrad(1e-3, b2=1.0), "b2", "[0.0, 1.0)"),
    (lambda: gtx.amsgrad_max(eps_root=-1.0), "eps_root", "[0.0, inf)"),
    (lambda: gtx.adamax(1e-3, b2=1.0), "b2", "[0.0, 1.0)"),
    (lambda: gtx.sgd(0.1, momentum=1.0), "momentum", "[0.0, 1.0)"),
    (lambda: gtx.sgd(0.1, momentum=-0.5), "momentum", "[0.0, 1.0)"),
    (lambda: gtx.sgd(0.1, weight_decay=-0.1), "weight_decay", "[0.0, inf)"),
    (lambda: gtx.sgd(-0.1), "learning_rate", "[0.0, inf)"),
    (lambda: gtx.trace(1.0), "decay", "[0.0, 1.0)"),
    (lambda: gtx.nesterov_lookahead(-0.1), "decay", "[0.0, 1.0)"),
    (lambda: gtx.sgd(0.1, nesterov=True), "nesterov", "needs a momentum"),
    (lambda: gtx.ema(1.0), "decay", "[0.0, 1.0)"),
    (lambda: gtx.rmsprop(0.1, decay=1.0), "decay", "[0.0, 1.0)"),
    (lambda: gtx.rmsprop(0.1, nesterov=True, momentum=0.0), "nesterov", "needs a momentum"),
    (lambda: gtx.rmsprop(0.1, momentum=1.2), "momentum", "[0.0, 1.0)"),
    (lambda: gtx.rmsprop(0.1, eps=-1.0), "eps", "[0.0, inf)"),
    (lambda: gtx.scale_by_rms(initial_scale=-1.0), "initial_scale", "[0.0, inf)"),
    (
        lambda: gtx.adagrad(0.1, initial_accumulator_value=-0.1),
        "initial_accumulator_value",
        "[0.0, inf)",
    ),
    (lambda: gtx.adadelta(rho=1.0), "rho", "[0.0, 1.0)"),
    (lambda: gtx.adadelta(eps=0.0), "eps", "(0.0, inf)"),
    (lambda: gtx.adadelta(weight_decay=-1.0), "weight_decay", "[0.0, inf)"),
    (lambda: gtx.rprop(0.0), "learning_rate", "(0.0, inf)"),
    (lambda: gtx.rprop(0.1, eta_minus=1.5), "eta_minus", "(0.0, 1.0]"),
    (lambda: gtx.rprop(0.1, eta_plus=0.5), "eta_plus", "[1.0, inf)"),
    (lambda: gtx.rprop(0.1, min_step_size=1.0, max_step_size=0.5), "max_step_size", ">="),
]


@pytest.mark.parametrize("build, argument, allowed", BAD_HYPERPARAMETERS)
def test_bad_hyperparameter_is_rejected_when_built(build, argument, allowed):
    with pytest.raises(ValueError) as error:
        build()
    message = str(error.value)
    assert re.match(rf"{argument}\b", message), message
    assert allowed in message, message


def test_rprop_rejects_a_learning_rate_schedule():
    with pytest.raises(TypeError, match="initial step size"):
        gtx.rprop(lambda step: 0.1)


def test_rprop_rejects_complex_parameters_naming_the_path():
    with pytest.raises(TypeError, match=r"\['z'\].*complex64"):
        gtx.rprop(0.1).init({"x": jnp.zeros(2), "z": jnp.zeros(2, jnp.complex64)})


def test_adamw_reaches_loshchilov_and_hutters_algorithm_2_with_a_schedule_multiplier(x64):
    """Algorithm 2: p <- p - eta_t (alpha m_hat / (sqrt(v_hat) + eps) + lam p), eta_t
    multiplying both terms and alpha only Adam's, as ``adamw``'s docstring spells it."""
    alpha, lam, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-8
    eta = lambda t: 0.5 ** (t // 3)  # noqa: E731  (the multiplier halved every 3 steps)
    rng = np.random.default_rng(0)
    curvature, offsets = np.array([1.0, 3.0, 0.3, 2.0]), rng.normal(size=(8, 4))
    p0 = rng.normal(size=4)

    def grad(p, offset):
        return curvature * p + offset

    p, m, v, expected = p0.copy(), np.zeros(4), np.zeros(4), []
    for t, offset in enumerate(offsets, start=1):
        g = grad(p, offset)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - eta(t - 1) * (alpha * m_hat / (np.sqrt(v_hat) + eps) + lam * p)
        expected.append(p)

    chain = gtx.chain(
        gtx.scale_by_adam(b1, b2, eps),
        gtx.scale(alpha),
        gtx.add_decayed_weights(lam),
        gtx.scale_by_learning_rate(eta),
    )
    # adamw keeps its hyperparameters in float32 (DESIGN.md): equal to that rounding
    for tx, rtol in [
        (chain, 1e-12),
        (gtx.adamw(lambda t: alpha * eta(t), b1, b2, eps, weight_decay=lam / alpha), 1e-6),
    ]:
        params, state, got = jnp.asarray(p0), tx.init(jnp.asarray(p0)), []
        step = jax.jit(tx.update)
        for offset in offsets:
            updates, state = step(jnp.asarray(grad(np.asarray(params), offset)), state, params)
            params = gtx.apply_updates(params, updates)
            got.append(np.asarray(params))
        np.testing.assert_allclose(got, expected, rtol=rtol)
