"""scale_by_local_gain (Jacobs 1988): gains follow the rule on a hand-made sign sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from tests.reference import research_transforms as ref

# columns: a sign that holds, one that alternates, one that holds then flips, one with a zero
SIGNS = np.array(
    [
        [1.0, 1.0, -1.0, 1.0],
        [1.0, -1.0, -1.0, 0.0],
        [1.0, 1.0, -1.0, 1.0],
        [1.0, -1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0],
    ]
)


def test_gains_follow_the_rule_on_a_hand_made_sign_sequence():
    magnitudes = np.array([0.5, 2.0, 1.0, 3.0])
    tx = gtx.scale_by_local_gain(increase=0.1, decrease=0.5, min_gain=0.01, max_gain=100.0)
    state = tx.init(jnp.zeros(4))
    step = jax.jit(tx.update)
    gains, steps = [], []
    for signs in SIGNS:
        updates, state = step(jnp.asarray(signs * magnitudes, jnp.float32), state)
        gains.append(np.asarray(state.gains))
        steps.append(np.asarray(updates))
    # by hand: t=1 no history (gain 1); then +0.1 when the sign holds, *0.5 when it flips
    expected_gains = np.array(
        [
            [1.0, 1.0, 1.0, 1.0],
            [1.1, 0.5, 1.1, 1.0],  # the zero gradient leaves the gain unchanged
            [1.2, 0.25, 1.2, 1.0],  # after a zero, the product is zero again
            [1.3, 0.125, 0.6, 1.1],
            [1.4, 0.0625, 0.7, 1.2],
        ]
    )
    np.testing.assert_allclose(gains, expected_gains, rtol=1e-6)
    np.testing.assert_allclose(steps, expected_gains * SIGNS * magnitudes, rtol=1e-6)
    ref_gains, ref_steps = ref.local_gains(SIGNS * magnitudes, 0.1, 0.5, 0.01, 100.0)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-6)
    np.testing.assert_allclose(steps, ref_steps, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-20, 1e-30, 1e30])
def test_gains_follow_the_signs_of_tiny_and_huge_gradients(scale):
    # The rule reads signs: g * dbar underflows to 0 in float32 for |g| ~ 1e-20, which
    # left the gains at 1 however long the sign held.
    magnitudes = np.array([0.5, 2.0, 1.0, 3.0])
    tx = gtx.scale_by_local_gain(increase=0.1, decrease=0.5, min_gain=0.01, max_gain=100.0)
    state = tx.init(jnp.zeros(4))
    step = jax.jit(tx.update)
    gains = []
    for signs in SIGNS:
        _, state = step(jnp.asarray(signs * magnitudes * scale, jnp.float32), state)
        gains.append(np.asarray(state.gains))
    ref_gains, _ = ref.local_gains(SIGNS * magnitudes, 0.1, 0.5, 0.01, 100.0)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-6)


def test_gains_are_clipped_to_their_bounds(rng):
    signs = np.sign(rng.normal(size=(30, 6)))
    tx = gtx.scale_by_local_gain(increase=0.4, decrease=0.3, min_gain=0.05, max_gain=2.0)
    state = tx.init(jnp.zeros(6))
    step = jax.jit(tx.update)
    for g in signs:
        _, state = step(jnp.asarray(g, jnp.float32), state)
    ref_gains, _ = ref.local_gains(signs, 0.4, 0.3, 0.05, 2.0)
    np.testing.assert_allclose(state.gains, ref_gains[-1], rtol=1e-5)
    assert np.all((ref_gains >= 0.05) & (ref_gains <= 2.0))
    assert np.any(ref_gains == 2.0) and np.any(ref_gains == 0.05)


def test_trace_decay_compares_with_an_average_of_past_gradients():
    # after +1, -0.1, -0.1 the last two gradients agree, but delta-bar (theta = 0.5) is
    # still positive at the third step, so Jacobs' rule shrinks the gain twice
    grads = (1.0, -0.1, -0.1)
    bar = gtx.scale_by_local_gain(increase=0.1, decrease=0.5, trace_decay=0.5)
    previous = gtx.scale_by_local_gain(increase=0.1, decrease=0.5)
    bar_state, previous_state = bar.init(jnp.zeros(1)), previous.init(jnp.zeros(1))
    for g in grads:
        _, bar_state = bar.update(jnp.array([g]), bar_state)
        _, previous_state = previous.update(jnp.array([g]), previous_state)
    assert float(bar_state.gains[0]) == pytest.approx(0.25)
    assert float(previous_state.gains[0]) == pytest.approx(0.6)
    np.testing.assert_allclose(bar_state.trace, [0.5 * -0.1 + 0.5 * 0.2], rtol=1e-6)


def test_local_gain_validates_its_hyperparameters():
    with pytest.raises(ValueError, match="decrease"):
        gtx.scale_by_local_gain(decrease=1.5)
    with pytest.raises(ValueError, match="max_gain"):
        gtx.scale_by_local_gain(min_gain=2.0, max_gain=1.0)


def test_defaults_add_0_05_multiply_by_0_95_and_keep_gains_in_0_01_to_100():
    # one sign that holds for 2,000 steps (1 + 0.05 t reaches 100 at t = 1,980) and one
    # that flips every step (0.95^t reaches 0.01 at t = 90)
    grads = np.stack([np.ones(2000), (-1.0) ** np.arange(2000)], axis=1)
    tx = gtx.scale_by_local_gain()
    state = tx.init(jnp.zeros(2))
    step = jax.jit(tx.update)
    gains = []
    for g in grads:
        _, state = step(jnp.asarray(g, jnp.float32), state)
        gains.append(np.asarray(state.gains))
    ref_gains, _ = ref.local_gains(grads, 0.05, 0.95, 0.01, 100.0)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-4)
    assert gains[-1].tolist() == [100.0, np.float32(0.01)]
