"""Shared fixtures and the run's set-up. float64 tests enter ``jax.enable_x64`` through
the ``x64`` fixture (never globally, so float32 defaults hold everywhere else, doctests
included). The run shares its compiled programs through JAX's persistent compilation
cache, starts the subprocesses of the examples and sharding checks in the background
(both below), and runs the modules of ``second_process.MODULES`` in a second pytest
process beside this one (CI's second core; see tests/second_process.py)."""

from __future__ import annotations

import atexit
import inspect
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest

from tests import second_process

# jax.enable_x64 is public from JAX 0.8.0; the JAX that pip resolves for Python 3.10
# (0.6.2) has the same context manager only as jax.experimental.enable_x64.
if not hasattr(jax, "enable_x64"):
    from jax.experimental import enable_x64

    jax.enable_x64 = enable_x64

# Many tests compile programs that an earlier test compiled already: the same HLO from
# new Python functions, which jit's own caches do not share, and the eager kernels of an
# emptied kernel cache (the ``fresh_kernels`` fixture). JAX's persistent compilation
# cache, in a folder of this run's own, gives them the executable compiled the first
# time, the same machine code (test_performance_equivalence.py and test_examples.py 187
# -> 141 s). JAX times a retrieval as a backend compilation, which
# ``compilations.count_compilations`` counts: a test that a step compiles nothing still
# sees a recompilation (test_jit.py). The examples' subprocesses share the cache
# (``SHARED_COMPILATIONS``); other subprocesses, which count compilations their own way,
# do not.
if second_process.is_second_process():  # the cache of the run that started it
    COMPILATION_CACHE = os.environ[second_process.CACHE]
else:
    COMPILATION_CACHE = tempfile.mkdtemp(prefix="gradtx-tests-xla-cache-")
    atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)
SHARED_COMPILATIONS = {
    "JAX_COMPILATION_CACHE_DIR": COMPILATION_CACHE,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The examples and the 8-device sharding checks run in subprocesses for a minute or so of
# wall time, while the tests in this process keep about one of CI's two cores busy: they
# start on a thread of their own once collected (a module's ``start_in_background``),
# one subprocess at a time, so the waits of their module fixtures overlap the tests
# before them instead of adding to the run. Collected alone, with no other tests to
# overlap, their fixtures start them, two subprocesses at a time.
BACKGROUND = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradtx-tests-background")


def pytest_configure(config):
    # the modules of second_process.MODULES run in a second pytest process
    config.pluginmanager.register(second_process.Plugin(COMPILATION_CACHE), "second-process")


def pytest_collection_finish(session):
    modules = {item.module for item in session.items if getattr(item, "module", None)}
    starts = {m: getattr(m, "start_in_background", None) for m in modules}
    if all(start is not None for start in starts.values()):
        return  # nothing else to run meanwhile
    for module in sorted(modules, key=lambda module: module.__name__):
        if starts[module] is not None:
            starts[module](BACKGROUND)


def pytest_sessionfinish(session):
    BACKGROUND.shutdown(wait=False, cancel_futures=True)  # work a stopped run never reads


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
