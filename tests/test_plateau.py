"""reduce_on_plateau: PyTorch's ReduceLROnPlateau step for step, and the transform protocol."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "schedules.json").read_text())


def _plateau_from_torch_kwargs(base_lr, kwargs):
    """The gradtx transform for a ReduceLROnPlateau(optimizer(lr=base_lr), **kwargs)."""
    kwargs = dict(kwargs)
    min_lr = kwargs.pop("min_lr", 0.0)
    eps = kwargs.pop("eps", 1e-8)
    return gtx.reduce_on_plateau(min_scale=min_lr / base_lr, eps=eps / base_lr, **kwargs)


def _scales(tx, metrics):
    """The scale after each metric, and the updates a unit gradient became."""
    state = tx.init(jnp.zeros(1))
    update = jax.jit(tx.update)
    scales, updates = [], []
    for metric in metrics:
        u, state = update(jnp.ones(1), state, value=jnp.float32(metric))
        scales.append(float(state.scale))
        updates.append(float(u[0]))
    return np.array(scales), np.array(updates)


@pytest.mark.parametrize("name", sorted(GOLDEN["plateau"]))
def test_reduce_on_plateau_matches_pytorch_step_for_step(name):
    case = GOLDEN["plateau"][name]
    tx = _plateau_from_torch_kwargs(case["base_lr"], case["kwargs"])
    scales, updates = _scales(tx, case["metrics"])
    expected = np.array(case["lrs"]) / case["base_lr"]
    np.testing.assert_allclose(scales, expected, rtol=1e-6)
    np.testing.assert_allclose(updates, expected, rtol=1e-6)


def test_golden_plateau_cases_exercise_reductions_cooldown_min_scale_and_eps():
    lrs = {name: case["lrs"] for name, case in GOLDEN["plateau"].items()}
    assert min(lrs["min_abs_cooldown_min_lr"]) == 0.1  # min_lr reached and held
    assert min(lrs["eps_skips_small_reductions"]) == 0.5  # 0.5 -> 0.25 is below eps
    assert len(set(lrs["negative_min_abs"])) > 2 and len(set(lrs["max_rel"])) > 2
    assert len(set(lrs["defaults_noisy"])) > 3


def test_reduce_on_plateau_counts_bad_steps_beyond_patience_then_cools_down():
    tx = gtx.reduce_on_plateau(factor=0.5, patience=2, cooldown=1, threshold=0.0)
    metrics = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # bad steps 1, 2, 3 > patience: reduce at the 4th metric; one cooldown metric, then
    # three more bad ones before the next reduction
    scales, _ = _scales(tx, metrics)
    np.testing.assert_array_equal(scales, [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25])


def test_reduce_on_plateau_without_value_raises_a_clear_error():
    tx = gtx.reduce_on_plateau()
    with pytest.raises(ValueError, match="value=metric.*require_value=False"):
        tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
    # the usual cause when value= was passed: optax.chain does not hand it on
    chained = optax.chain(optax.sgd(0.1), gtx.reduce_on_plateau())
    with pytest.raises(ValueError, match="optax.chain passes no extra arguments.*gtx.chain"):
        chained.update(jnp.ones(2), chained.init(jnp.zeros(2)), value=1.0)


def test_a_metric_once_per_epoch_holds_the_state_on_the_updates_without_one():
    """require_value=False: an epoch's metric goes with the next epoch's first update
    (where PyTorch's scheduler.step(val_loss) after the epoch takes effect); the same
    scales as a transform fed the epoch metrics alone, every update of an epoch scaled
    by the scale its previous epoch's metric set."""
    epoch_metrics = [1.0, 0.9, 0.95, 0.97, 0.99, 0.5, 0.6, 0.7]
    per_epoch = gtx.reduce_on_plateau(factor=0.5, patience=1, require_value=False)
    reference, _ = _scales(gtx.reduce_on_plateau(factor=0.5, patience=1), epoch_metrics)
    state = per_epoch.init(jnp.zeros(1))
    update = jax.jit(per_epoch.update)
    scales, updates = [], []
    for epoch in range(len(epoch_metrics) + 1):
        for i in range(4):
            if i == 0 and epoch > 0:  # the metric of the epoch before
                u, state = update(jnp.ones(1), state, value=epoch_metrics[epoch - 1])
                scales.append(float(state.scale))
            else:  # no metric: the state holds
                u, state = update(jnp.ones(1), state)
            updates.append(float(u[0]))
    np.testing.assert_array_equal(scales, reference)
    assert reference.min() < 1  # the metrics do reduce
    np.testing.assert_array_equal(updates, np.repeat(np.concatenate([[1.0], reference]), 4))
    assert int(state.count) == len(epoch_metrics)


def test_reduce_on_plateau_keeps_doubles_under_x64_as_pytorch_does(x64):
    """A metric that improves by 1e-10 per step improves in double (PyTorch's floats):
    the scale stays 1; reductions by 0.1 give the double products."""
    tx = gtx.reduce_on_plateau(threshold=0.0, patience=0)
    state = tx.init(jnp.zeros(1))
    for k in range(10):
        _, state = jax.jit(tx.update)(jnp.ones(1), state, value=jnp.asarray(1.0 - 1e-10 * k))
        assert float(state.scale) == 1.0
    tx = gtx.reduce_on_plateau(patience=0)
    state = tx.init(jnp.zeros(1))
    for metric in [1.0, 2.0, 2.0, 2.0]:
        _, state = tx.update(jnp.ones(1), state, value=jnp.asarray(metric))
    assert state.scale.dtype == jnp.float64
    assert float(state.scale) == 0.1 * 0.1 * 0.1


def test_reduce_on_plateau_rejects_a_non_scalar_metric():
    tx = gtx.reduce_on_plateau()
    with pytest.raises(ValueError, match="scalar"):
        tx.update(jnp.ones(2), tx.init(jnp.zeros(2)), value=jnp.ones(2))


def test_reduce_on_plateau_state_keeps_its_structure_dtypes_and_shapes():
    tx = gtx.reduce_on_plateau()
    params = {"w": jnp.zeros((2, 3), jnp.bfloat16), "b": jnp.zeros(3)}
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(params, state, params, value=2.0)
    spec = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype), s)  # noqa: E731
    assert spec(new_state) == spec(state)
    assert updates["w"].dtype == jnp.bfloat16


def test_reduce_on_plateau_composes_in_a_chain_and_scales_the_optimizer_step():
    tx = gtx.chain(gtx.adam(0.1), gtx.reduce_on_plateau(factor=0.5, patience=0))
    params = jnp.array([1.0, -1.0])
    state = tx.init(params)
    step = jax.jit(lambda g, s, loss: tx.update(g, s, params, value=loss))
    first, state = step(jnp.array([0.5, -0.5]), state, 1.0)
    second, state = step(jnp.array([0.5, -0.5]), state, 2.0)
    assert float(state[1].scale) == 0.5
    # Adam's step is lr * sign(g) on constant gradients; the plateau halved the second
    np.testing.assert_allclose(first, [-0.1, 0.1], rtol=1e-5)
    np.testing.assert_allclose(second, [-0.05, 0.05], rtol=1e-5)


def test_reduce_on_plateau_follows_an_optax_optimizer_in_a_gradtx_chain():
    tx = gtx.chain(optax.sgd(1.0), gtx.reduce_on_plateau(factor=0.1, patience=0))
    state = tx.init(jnp.zeros(1))
    _, state = tx.update(jnp.ones(1), state, value=1.0)
    updates, state = tx.update(jnp.ones(1), state, value=1.0)
    np.testing.assert_allclose(updates, [-0.1], rtol=1e-6)


def test_reduce_on_plateau_ignores_nan_metrics_as_improvements():
    tx = gtx.reduce_on_plateau(factor=0.5, patience=1)
    scales, _ = _scales(tx, [1.0, float("nan"), float("nan"), 0.5])
    np.testing.assert_array_equal(scales, [1.0, 1.0, 0.5, 0.5])


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"factor": 1.0}, "factor"),
        ({"factor": -0.1}, "factor"),
        ({"patience": -1}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"threshold": -1e-4}, "threshold"),
        ({"threshold_mode": "relative"}, "threshold_mode"),
        ({"cooldown": -1}, "cooldown"),
        ({"min_scale": -0.1}, "min_scale"),
        ({"mode": "minimum"}, "mode"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_reduce_on_plateau_rejects_invalid_arguments_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        gtx.reduce_on_plateau(**kwargs)


def test_reduce_on_plateau_with_injected_float32_hyperparameters_matches_the_plain_one():
    injected = gtx.schedule_injection(gtx.reduce_on_plateau)(factor=0.5, patience=1, cooldown=1)
    plain = gtx.reduce_on_plateau(factor=0.5, patience=1, cooldown=1)
    metrics = GOLDEN["plateau"]["min_rel_patience"]["metrics"]
    state = injected.init(jnp.zeros(1))
    update = jax.jit(injected.update)
    injected_updates = []
    for metric in metrics:
        u, state = update(jnp.ones(1), state, value=metric)
        injected_updates.append(float(u[0]))
    assert sorted(gtx.get_hyperparams(state)) == ["eps", "factor", "min_scale", "threshold"]
    np.testing.assert_allclose(injected_updates, _scales(plain, metrics)[1], rtol=1e-6)
    assert len(set(injected_updates)) > 2
