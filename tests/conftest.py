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
