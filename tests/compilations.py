"""Counting XLA compilations with ``jax.monitoring`` (jax 0.10 records one
``/jax/core/compile/backend_compile_duration`` event per backend compilation)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.extend.core

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

# The jaxprs an equation's params hold (a called function's, a loop's body): jax.extend's;
# jax.core's in jax 0.6.2 (what pip resolves for Python 3.10)
jaxprs_in_params = getattr(jax.extend.core, "jaxprs_in_params", None) or jax.core.jaxprs_in_params


@contextlib.contextmanager
def count_compilations() -> Iterator[list[str]]:
    """Yields a list that receives one entry per backend compilation inside the block."""
    compiled: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == BACKEND_COMPILE_EVENT:
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        unregister_duration_listener(listener)


@contextlib.contextmanager
def count_cache_hits() -> Iterator[list[int]]:
    """Yields a list that receives a 1 for each program the persistent compilation cache
    serves inside the block (which ``count_compilations`` counts too)."""
    hits: list[int] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == "/jax/compilation_cache/cache_retrieval_time_sec":
            hits.append(1)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield hits
    finally:
        unregister_duration_listener(listener)


def unregister_duration_listener(listener) -> None:
    """Removes a ``jax.monitoring`` duration listener: public after JAX 0.8.0, a private
    function before (jax 0.6.2, what pip resolves for Python 3.10, has only that)."""
    unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
    if unregister is None:
        from jax._src import monitoring

        unregister = monitoring._unregister_event_duration_listener_by_callback
    unregister(listener)


def compiled_step(tx, apply_updates, params, grads, state=None) -> jax.stages.Compiled:
    """The donated jitted step ``update + apply_updates`` of ``tx``, compiled."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    state = tx.init(params) if state is None else state
    return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()


def bytes_and_copies(compiled: jax.stages.Compiled) -> tuple[float, int]:
    """The bytes XLA's cost analysis says a compiled program accesses, and the number of
    whole-buffer copies in its entry computation."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    entry = compiled.as_text()[compiled.as_text().index("ENTRY") :]
    return cost["bytes accessed"], entry.count(" copy(")


@contextlib.contextmanager
def count_eager_operations() -> Iterator[list[int]]:
    """Yields a one-element list counting the primitives JAX's evaluation trace applies
    inside the block: the op-by-op operations of un-jitted code (``lax`` primitives such
    as ``jnp.where`` or ``jnp.zeros_like`` make); a call of a jitted function that hits
    JAX's C++ cache is not counted. A private hook of JAX's: skips the test if it moved."""
    import pytest

    core = pytest.importorskip("jax._src.core")
    trace = getattr(core, "EvalTrace", None)
    if not hasattr(trace, "process_primitive"):
        pytest.skip("jax's evaluation trace has moved")
    count = [0]
    process_primitive = trace.process_primitive

    def counting(self, *args, **kwargs):
        count[0] += 1
        return process_primitive(self, *args, **kwargs)

    trace.process_primitive = counting
    try:
        yield count
    finally:
        trace.process_primitive = process_primitive


@contextlib.contextmanager
def count_dispatches() -> Iterator[list[int]]:
    """Yields a one-element list counting the jitted computations that run inside the
    block: every call of a ``jax.jit`` function (``jnp`` functions such as ``jnp.sum``
    are jitted, and so are the eager kernels of ``gradtx.tree``) and every op-by-op
    primitive. ``count_eager_operations`` misses the jitted calls that JAX's C++ cache
    serves; here that cache is emptied and kept from refilling, so that each call takes
    the Python path that is counted, and emptied again on the way out: an entry made
    inside the block, without fast-path data, would keep its function on the Python path
    (~20x slower a call) for the rest of the process. Private hooks of JAX's: skips the
    test if they moved."""
    import pytest

    pjit = pytest.importorskip("jax._src.pjit")
    names = ("_run_python_pjit", "_get_fastpath_data")
    caches = ("_cpp_pjit_cache_fun_only", "_cpp_pjit_cache_explicit_attributes")
    if not all(hasattr(pjit, name) for name in names + caches):
        pytest.skip("jax's jit dispatch has moved")
    count = [0]
    run_python_pjit, get_fastpath_data = pjit._run_python_pjit, pjit._get_fastpath_data

    def counting(*args, **kwargs):
        count[0] += 1
        return run_python_pjit(*args, **kwargs)

    pjit._run_python_pjit = counting
    pjit._get_fastpath_data = lambda *args, **kwargs: None  # the C++ cache stays empty
    for cache in caches:
        getattr(pjit, cache).clear()
    try:
        yield count
    finally:
        pjit._run_python_pjit, pjit._get_fastpath_data = run_python_pjit, get_fastpath_data
        for cache in caches:
            getattr(pjit, cache).clear()
