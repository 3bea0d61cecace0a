"""Transforms a user writes as DESIGN.md and the docs say, through gradtx's wrappers."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx import numerics, tree


class NoisyMomentumState(NamedTuple):
    count: jax.Array
    key: jax.Array  # a typed key (jax.random.key), as JAX recommends
    mu: Any


def noisy_momentum(decay=0.9, sigma=0.01, seed=0):
    """mu = decay mu + g + sigma / sqrt(t) xi, xi ~ N(0, 1) per element; u = mu."""

    def init(params):
        return NoisyMomentumState(
            jnp.zeros([], jnp.int32), jax.random.key(seed), tree.zeros_like(params)
        )

    def update(grads, state, params=None, **extra):
        count = numerics.safe_increment(state.count)
        key, sub = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(grads)
        keys = jax.tree.unflatten(treedef, list(jax.random.split(sub, len(leaves))))
        noise = jax.tree.map(lambda g, k: jax.random.normal(k, g.shape, g.dtype), grads, keys)
        std = sigma / jnp.sqrt(count.astype(jnp.float32))

        def leaf(g, m, xi):
            m = decay * m + g + std * xi
            return m, m

        updates, mu = tree.map_unzip(leaf, grads, state.mu, noise, outputs=2)
        return updates, NoisyMomentumState(count, key, mu)

    return gtx.GradientTransformation(init, update)


class Bfloat16MomentumState(NamedTuple):
    mu: Any


def bfloat16_momentum(decay=0.9):
    """Momentum kept in bfloat16, computed and returned in float32 whatever the grads."""

    def init(params):
        return Bfloat16MomentumState(tree.zeros_like(params, jnp.bfloat16))

    def update(grads, state, params=None, **extra):
        def leaf(g, m):
            m = decay * m.astype(jnp.float32) + g.astype(jnp.float32)
            return m, m.astype(jnp.bfloat16)

        updates, mu = tree.map_unzip(leaf, grads, state.mu, outputs=2)
        return updates, Bfloat16MomentumState(mu)

    return gtx.GradientTransformation(init, update)


@pytest.mark.parametrize("jit", [False, True])
def test_multi_steps_keeps_a_typed_prng_key_in_the_inner_state(jit):
    params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    tx = gtx.multi_steps(noisy_momentum(), every_k=2)
    plain = noisy_momentum()
    state, plain_state = tx.init(params), plain.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for t in range(4):
        grads = jax.tree.map(lambda p, t=t: jnp.full_like(p, t + 1.0), params)
        updates, state = update(grads, state, params)
        if t % 2:  # a real step, on the mean of the two micro-batches
            mean = jax.tree.map(lambda p, t=t: jnp.full_like(p, t + 0.5), params)
            expected, plain_state = plain.update(mean, plain_state, params)
            np.testing.assert_array_equal(updates["w"], expected["w"])
    assert state.inner_state.key.dtype == plain_state.key.dtype
    np.testing.assert_array_equal(
        jax.random.key_data(state.inner_state.key), jax.random.key_data(plain_state.key)
    )


@pytest.mark.parametrize("jit", [False, True])
def test_multi_steps_returns_the_inner_updates_in_their_own_dtype(jit):
    # float32 params, bfloat16 gradients, a transform returning float32 updates:
    # optax.MultiSteps returns them as they are; rounded to bfloat16 they moved by 2.6e-3
    params = {"w": jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32)}
    grads = {"w": jnp.linspace(0.3, 1.7, 8).astype(jnp.bfloat16)}
    inner = lambda: gtx.chain(bfloat16_momentum(), gtx.scale(-0.1))  # noqa: E731
    tx = gtx.multi_steps(inner(), every_k=2)
    update = jax.jit(tx.update) if jit else tx.update
    reference = optax.MultiSteps(inner(), every_k_schedule=2).gradient_transformation()
    state, reference_state = tx.init(params), reference.init(params)
    for _ in range(4):
        updates, state = update(grads, state, params)
        expected, reference_state = reference.update(grads, reference_state, params)
        assert updates["w"].dtype == expected["w"].dtype == jnp.float32
        np.testing.assert_array_equal(updates["w"], expected["w"])


def test_tree_set_replaces_a_typed_prng_key():
    state = noisy_momentum().init({"w": jnp.zeros(2)})
    state = gtx.tree_set(state, key=jax.random.key(3))
    np.testing.assert_array_equal(
        jax.random.key_data(state.key), jax.random.key_data(jax.random.key(3))
    )
    with pytest.raises(TypeError, match=r"\.key is a key<fry> array, the new value is key<rbg>"):
        gtx.tree_set(state, key=jax.random.key(3, impl="rbg"))


def test_multi_steps_runs_an_inner_transform_that_reads_values_in_python():
    # eager-only user code (a Python branch on a value) keeps working un-jitted: the zero
    # updates of micro-steps before its first real step take the gradients' dtypes
    def sign_of_sum():
        def update(updates, state, params=None):
            sign = 1.0 if float(jnp.sum(updates)) > 0 else -1.0
            return jax.tree.map(lambda u: sign * u, updates), state

        return gtx.GradientTransformation(lambda params: gtx.EmptyState(), update)

    tx = gtx.multi_steps(sign_of_sum(), every_k=2)
    state = tx.init(jnp.zeros(2))
    results = []
    for grads in ([1.0, 2.0], [3.0, 4.0], [-1.0, -2.0], [-3.0, -4.0]):
        updates, state = tx.update(jnp.asarray(grads), state)
        results.append(updates.tolist())
    assert results == [[0.0, 0.0], [2.0, 3.0], [0.0, 0.0], [2.0, 3.0]]


@flax.struct.dataclass
class SlowAverageState:
    """A user's state as a flax.struct.dataclass: a moment and a copy of the params."""

    velocity: Any
    slow: Any
    exact_fields = ("slow",)  # a copy of the params: quantized_state keeps it exact


def momentum_with_slow_copy(decay=0.9):
    def init(params):
        return SlowAverageState(tree.zeros_like(params), params)

    def update(grads, state, params=None, **extra):
        def leaf(g, v, s):
            v = decay * v + g
            return v, v, s - 0.01 * g  # an exact record of the gradient steps

        updates, velocity, slow = tree.map_unzip(leaf, grads, state.velocity, state.slow, outputs=3)
        return updates, state.replace(velocity=velocity, slow=slow)

    return gtx.GradientTransformation(init, update)


def test_quantized_state_reads_the_fields_of_a_dataclass_state():
    # unsigned_fields and exact_fields name dataclass fields as they name NamedTuple
    # ones: the field was "in no field of the inner state (its fields and keys: [])",
    # and the exact copy was rounded to 8 bits
    params = {"w": jnp.linspace(-1.0, 1.0, 64)}
    grads = {"w": jnp.cos(jnp.arange(64.0))}
    tx = gtx.quantized_state(
        momentum_with_slow_copy(), block_size=16, min_size=16, unsigned_fields=("velocity",)
    )
    plain = momentum_with_slow_copy()
    state, plain_state = tx.init(params), plain.init(params)
    for _ in range(3):
        _, state = tx.update(grads, state, params)
        _, plain_state = plain.update(grads, plain_state, params)
    assert isinstance(state.inner_state.velocity["w"], gtx.QuantizedArray)
    # exact to float32 rounding (8 bits would be ~4e-3 off): jax 0.6.2's XLA, what pip
    # resolves for Python 3.10, rounds one of the 64 one unit in the last place apart
    np.testing.assert_allclose(state.inner_state.slow["w"], plain_state.slow["w"], rtol=3e-7)
