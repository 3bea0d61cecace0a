"""Running a transform over a sequence of gradients, and comparing with a flat reference.

The NumPy references in ``tests/reference/`` work on one flat vector; these helpers make
a small tree of several leaves (a 0-d one included), run a gradtx transform over it in
one compiled ``lax.scan``, and flatten the results in the same leaf order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradtx as gtx

SHAPES = {"layers": [{"w": (3, 4)}, {"b": (4,)}], "scale": ()}
"""Nested dict and list, a matrix, a vector and a scalar: 17 elements."""


def _tree_of(arrays_by_shape):
    return jax.tree.map(arrays_by_shape, SHAPES, is_leaf=lambda s: isinstance(s, tuple))


def random_gradients(rng: np.random.Generator, steps: int, dtype) -> dict:
    """Gradients with a leading time axis: noise around a per-element offset of -1.5, 0 or
    1.5, so some elements keep their sign for long stretches and others flip often."""

    def leaf(shape):
        offset = rng.choice([-1.5, 0.0, 1.5], size=shape)
        return jnp.asarray(rng.normal(size=(steps, *shape)) + offset, dtype)

    return _tree_of(leaf)


def random_params(rng: np.random.Generator, dtype) -> dict:
    return _tree_of(lambda shape: jnp.asarray(rng.normal(size=shape), dtype))


def flatten(tree, time_axis: bool = True) -> np.ndarray:
    """The leaves concatenated in tree order, as float64: [steps, n] (or [n])."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    if time_axis:
        return np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)
    return np.concatenate([x.reshape(-1) for x in leaves])


def run(tx: gtx.GradientTransformation, gradients, params):
    """(updates, params) after every step, the whole loop compiled once with ``lax.scan``."""

    def step(carry, g):
        params, state = carry
        updates, state = tx.update(g, state, params)
        params = gtx.apply_updates(params, updates)
        return (params, state), (updates, params)

    @jax.jit
    def loop(params, gradients):
        _, (updates, trajectory) = jax.lax.scan(step, (params, tx.init(params)), gradients)
        return updates, trajectory

    return loop(params, gradients)


def run_many(transforms: dict, gradients, params) -> dict:
    """``run`` for several transforms at once, fed the same gradients: one ``lax.scan``
    whose step updates every transform, compiled once (many small compilations cost far
    more than one larger one). Returns ``{name: (updates, params)}``."""

    def step(carry, g):
        new_carry, outputs = {}, {}
        for name, tx in transforms.items():
            params, state = carry[name]
            updates, state = tx.update(g, state, params)
            params = gtx.apply_updates(params, updates)
            new_carry[name], outputs[name] = (params, state), (updates, params)
        return new_carry, outputs

    @jax.jit
    def loop(params, gradients):
        carry = {name: (params, tx.init(params)) for name, tx in transforms.items()}
        _, outputs = jax.lax.scan(step, carry, gradients)
        return outputs

    return loop(params, gradients)


def assert_close(actual, expected: np.ndarray, rtol: float) -> None:
    """Elementwise within ``rtol``, with an absolute floor of ``rtol`` times the largest
    magnitude of the expected trajectory (elements that pass near zero, such as a first
    moment changing sign, carry the absolute error of their larger neighbours)."""
    actual = flatten(actual) if not isinstance(actual, np.ndarray) else actual
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(expected))
    floor = rtol * np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=floor)
