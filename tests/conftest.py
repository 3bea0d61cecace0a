"""Shared fixtures. float64 tests enter ``jax.enable_x64`` through the ``x64`` fixture
(never globally, so float32 defaults hold everywhere else, doctests included)."""

from __future__ import annotations

import inspect

import jax
import numpy as np
import pytest

# jax.enable_x64 is public from JAX 0.8.0; the JAX that pip resolves for Python 3.10
# (0.6.2) has the same context manager only as jax.experimental.enable_x64.
if not hasattr(jax, "enable_x64"):
    from jax.experimental import enable_x64

    jax.enable_x64 = enable_x64


@pytest.fixture
def x64():
    """Runs the test with 64-bit types enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def nnx_0_11():
    """Skips the test on a Flax whose ``nnx.Optimizer`` predates flax 0.11's
    ``update(model, grads)`` (flax 0.10.7, what pip resolves for Python 3.10, updates
    with ``update(grads)`` and keeps ``nnx.VariableState``s, not Variables, in its state)."""
    nnx = pytest.importorskip("flax.nnx")
    if "model" not in inspect.signature(nnx.Optimizer.update).parameters:
        pytest.skip("nnx.Optimizer.update(model, grads) needs flax >= 0.11")


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed: tests are reproducible."""
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``live`` rerun golden comparisons against installed PyTorch/Keras:
    they run only when selected (``pytest -m live``), so the default run never depends on
    what happens to be installed on the machine."""
    if "live" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="live parity tests run when selected: pytest -m live")
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)
