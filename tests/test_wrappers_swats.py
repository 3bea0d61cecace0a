"""SWATS (Keskar & Socher 2017): Adam until the switching criterion holds, then SGD."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from tests.compilations import bytes_and_copies, compiled_step
from tests.reference import research_transforms as ref

CURVATURE = np.array([1.0, 4.0, 0.5])
W0 = np.array([1.0, -1.0, 2.0])
HYPER = dict(b1=0.9, b2=0.999, eps=1e-9, switch_tol=1e-3)


def _grad(w):
    return CURVATURE * w


def _run(tx, steps):
    params = jnp.asarray(W0)
    state = tx.init(params)
    step = jax.jit(tx.update)
    iterates, states, all_updates = [], [], []
    for _ in range(steps):
        updates, state = step(jnp.asarray(_grad(np.asarray(params))), state, params)
        params = gtx.apply_updates(params, updates)
        iterates.append(np.asarray(params))
        states.append(state)
        all_updates.append(np.asarray(updates))
    return np.array(iterates), states, all_updates


def test_swats_switches_where_algorithm_1_does_and_follows_its_trajectory(x64):
    # on this quadratic the criterion holds at step 120 (a non-trivial switch)
    expected = ref.swats(
        _grad, W0, 160, 0.1, HYPER["b1"], HYPER["b2"], HYPER["eps"], HYPER["switch_tol"]
    )
    assert 100 < expected["switch_step"] < 160
    iterates, states, _ = _run(gtx.swats(0.1, **HYPER), 160)
    final = states[-1]
    assert bool(final.switched)
    assert int(final.switch_step) == expected["switch_step"]
    np.testing.assert_allclose(float(final.sgd_learning_rate), expected["sgd_rate"], rtol=1e-10)
    np.testing.assert_allclose(iterates, expected["iterates"], rtol=1e-9, atol=1e-12)
    switch = expected["switch_step"]
    assert not bool(states[switch - 2].switched) and bool(states[switch - 1].switched)


def test_after_the_switch_swats_is_sgd_with_momentum_at_the_estimated_rate(x64):
    iterates, states, all_updates = _run(gtx.swats(0.1, **HYPER), 160)
    switch = int(states[-1].switch_step)
    rate = float(states[-1].sgd_learning_rate)
    b1 = HYPER["b1"]
    # plain heavy-ball SGD from the params at the switch, buffer starting at zero
    w, v = iterates[switch - 1].copy(), np.zeros(3)
    for t in range(switch, 160):
        v = b1 * v + _grad(w)
        np.testing.assert_allclose(all_updates[t], -(1 - b1) * rate * v, rtol=1e-10)
        w = w - (1 - b1) * rate * v
        np.testing.assert_allclose(iterates[t], w, rtol=1e-10)
    # Adam's moments are frozen from the switch on
    np.testing.assert_array_equal(states[-1].mu, states[switch - 1].mu)


def test_swats_stays_adam_when_the_criterion_never_holds(x64):
    tx = gtx.swats(0.1, b1=0.9, b2=0.999, eps=1e-9, switch_tol=0.0)
    iterates, states, _ = _run(tx, 20)
    assert not bool(states[-1].switched) and int(states[-1].switch_step) == 0
    adam = gtx.chain(gtx.scale_by_adam(0.9, 0.999, eps=0.0), gtx.scale(-0.1))
    adam_iterates, _, _ = _run(adam, 20)
    # Algorithm 1's Adam puts eps on the raw sqrt(a_k): identical to Adam for eps = 0
    tx0 = gtx.swats(0.1, b1=0.9, b2=0.999, eps=0.0, switch_tol=0.0)
    iterates0, _, _ = _run(tx0, 20)
    np.testing.assert_allclose(iterates0, adam_iterates, rtol=1e-12)
    np.testing.assert_allclose(iterates, adam_iterates, rtol=1e-6, atol=1e-7)


def test_a_scheduled_learning_rate_is_read_at_the_count_before_each_update():
    """Adam's step scales with the rate: with the switch off (switch_tol=0) and the same
    gradients, step t of a schedule is schedule(t) times the step at rate 1."""
    schedule = lambda count: 0.1 * 0.5**count  # noqa: E731
    scheduled, constant = gtx.swats(schedule, switch_tol=0.0), gtx.swats(1.0, switch_tol=0.0)
    state, constant_state = scheduled.init(jnp.zeros(3)), constant.init(jnp.zeros(3))
    for t in range(3):
        grads = jnp.asarray([1.0, -2.0, 0.5]) * (t + 1)
        updates, state = scheduled.update(grads, state)
        constant_updates, constant_state = constant.update(grads, constant_state)
        np.testing.assert_allclose(updates, schedule(t) * constant_updates, rtol=1e-6)


def test_the_learning_rate_is_not_read_after_the_switch(x64):
    """Algorithm 1's SGD phase steps with the fixed Lambda: a schedule that changes only
    after the switch (step 120 here) leaves the whole trajectory as it was."""
    changed = lambda count: jnp.where(count < 120, 0.1, 1e3)  # noqa: E731
    iterates, states, _ = _run(gtx.swats(0.1, **HYPER), 160)
    changed_iterates, changed_states, _ = _run(gtx.swats(changed, **HYPER), 160)
    assert int(states[-1].switch_step) == int(changed_states[-1].switch_step) == 120
    np.testing.assert_array_equal(changed_iterates, iterates)


def test_the_defaults_are_the_papers():
    """Keskar & Socher's defaults: alpha 1e-3, beta1 0.9, beta2 0.999, eps 1e-9 in both
    the Adam step and the switch criterion."""
    papers = gtx.swats(1e-3, b1=0.9, b2=0.999, eps=1e-9, switch_tol=1e-9)
    for leaf, expected in zip(
        jax.tree.leaves(_run(gtx.swats(), 20)[1]), jax.tree.leaves(_run(papers, 20)[1]), strict=True
    ):
        np.testing.assert_array_equal(leaf, expected)


def test_swats_validates_its_hyperparameters():
    with pytest.raises(ValueError, match="b2"):
        gtx.swats(b2=1.0)
    with pytest.raises(ValueError, match="switch_tol"):
        gtx.swats(switch_tol=-1.0)


def test_a_jitted_donated_step_runs_one_phase_and_copies_no_moment():
    """Under jit the phase is a lax.cond, each branch reading and writing only its own
    state. It was a select of both phases' results, which made XLA copy every donated
    moment first: 108 bytes/param, more than Adam's step and SGD's with momentum
    together (64); 60 now (XLA's cost analysis counts both branches of the cond)."""
    params = {"w": jnp.ones((256, 256)), "b": jnp.ones(256)}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    n = sum(x.size for x in jax.tree.leaves(params))

    def moved(tx):
        return bytes_and_copies(compiled_step(tx, gtx.apply_updates, params, grads))

    swats_bytes, swats_copies = moved(gtx.swats(0.1))
    phases_bytes = moved(gtx.adam(0.1))[0] + moved(gtx.sgd(0.1, momentum=0.9))[0]
    assert swats_copies == 0
    assert swats_bytes / n <= phases_bytes / n, (swats_bytes / n, phases_bytes / n)


def test_a_state_of_python_numbers_keeps_a_boolean_switch_flag_as_under_jit():
    """jit takes Python numbers for 0-d state leaves; un-jitted, ``~`` of the Python bool
    flag was the int -1 or -2 (a DeprecationWarning from Python 3.12), and the new flag
    came back int32 where jit gives a bool."""
    tx = gtx.swats(0.1)
    params, grads = {"w": jnp.array([0.5, -1.0])}, {"w": jnp.array([0.3, 0.2])}
    state = tx.init(params)
    as_numbers = jax.tree.map(lambda x: x.item() if x.ndim == 0 else x, state)
    assert isinstance(as_numbers.switched, bool)
    _, jitted = jax.jit(tx.update)(grads, state, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        _, eager = tx.update(grads, as_numbers, params)
    assert jitted.switched.dtype == jnp.bool_
    assert jnp.asarray(eager.switched).dtype == jnp.bool_
    assert jnp.asarray(eager.switch_step).dtype == jitted.switch_step.dtype
