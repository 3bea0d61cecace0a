"""Shared fixtures. float64 tests enter ``jax.enable_x64`` through the ``x64`` fixture
(never globally, so float32 defaults hold everywhere else, doctests included)."""

from __future__ import annotations

import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
    """Runs the test with 64-bit types enabled."""
    with jax.enable_x64(True):
        yield


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
