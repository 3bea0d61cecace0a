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
