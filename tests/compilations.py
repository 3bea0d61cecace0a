"""Counting XLA compilations with ``jax.monitoring`` (jax 0.10 records one
``/jax/core/compile/backend_compile_duration`` event per backend compilation)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


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
        jax.monitoring.unregister_event_duration_listener(listener)


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
