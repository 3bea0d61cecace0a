"""Every optimizer drives a quadratic and the Rosenbrock function to their minimum.

Learning rates and step counts are tuned per optimizer (each run is one ``lax.scan``).
The tolerances are on the largest coordinate error. AdamW and NAdamW keep their default
decoupled weight decay (1e-4), which moves the fixed point by ~5e-5 on the quadratic.
On Rosenbrock's flat curved valley float32 gradients limit the attainable accuracy to
~1e-3 for sign-based steps (rprop), so the tolerance there is 2e-3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from tests import zoo

CURVATURES = jnp.array([1.0, 10.0])
QUADRATIC_MINIMUM = np.array([1.0, -2.0])


def quadratic(p):
    """An ill-conditioned bowl (condition number 10) centred on (1, -2)."""
    return 0.5 * jnp.sum(CURVATURES * (p - QUADRATIC_MINIMUM) ** 2)


def rosenbrock(p):
    """(1 - x)^2 + 100 (y - x^2)^2, minimum at (1, 1); started from (-1.2, 1)."""
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


# name: (learning rate, steps) for the quadratic, then for Rosenbrock
SETTINGS = {
    "sgd": ((0.1, 500), (1e-3, 20_000)),
    "sgd_momentum": ((0.03, 500), (3e-3, 5_000)),
    "sgd_nesterov": ((0.03, 500), (1e-3, 5_000)),
    "adagrad": ((1.0, 500), (1.0, 20_000)),
    "rmsprop": ((0.03, 500), (1e-3, 20_000)),
    "adadelta": ((1.0, 3_000), (0.01, 20_000)),
    "adam": ((0.1, 500), (0.03, 5_000)),
    "adamw": ((0.1, 500), (0.03, 5_000)),
    "amsgrad": ((0.3, 500), (1.0, 20_000)),
    "adamax": ((0.3, 500), (0.1, 5_000)),
    "adamaxw": ((0.3, 500), (0.1, 5_000)),
    "nadam": ((0.1, 500), (0.01, 5_000)),
    "nadamw": ((0.1, 500), (0.01, 5_000)),
    # its first steps are plain momentum: from (-1.2, 1) a rate of 0.01 diverges (Optax too)
    "radam": ((0.1, 500), (0.003, 20_000)),
    "rprop": ((0.1, 500), (0.01, 5_000)),
}
QUADRATIC_TOLERANCE = {"adamw": 1e-3, "nadamw": 1e-3, "adamaxw": 1e-3}


def minimize(tx, loss, start, steps):
    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            return (gtx.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return params

    return np.asarray(run(start))


def test_every_optimizer_has_settings():
    assert sorted(SETTINGS) == sorted(zoo.ALL)


@pytest.mark.parametrize("name", zoo.ALL)
def test_optimizer_drives_an_ill_conditioned_quadratic_to_its_minimum(name):
    learning_rate, steps = SETTINGS[name][0]
    found = minimize(zoo.make(name, learning_rate), quadratic, jnp.zeros(2), steps)
    np.testing.assert_allclose(found, QUADRATIC_MINIMUM, atol=QUADRATIC_TOLERANCE.get(name, 1e-4))


@pytest.mark.parametrize("name", zoo.ALL)
def test_optimizer_drives_rosenbrock_to_its_minimum(name):
    learning_rate, steps = SETTINGS[name][1]
    start = jnp.array([-1.2, 1.0])
    found = minimize(zoo.make(name, learning_rate), rosenbrock, start, steps)
    np.testing.assert_allclose(found, [1.0, 1.0], atol=2e-3)
    assert float(rosenbrock(found)) < 1e-3  # started at 24.2
