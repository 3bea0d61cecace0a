"""Schedules (pure functions ``step -> value``), schedule injection and plateau control."""

from gradtx.schedules.injection import (
    InjectState,
    get_hyperparams,
    schedule_injection,
    set_hyperparams,
)

__all__ = [
    "InjectState",
    "get_hyperparams",
    "schedule_injection",
    "set_hyperparams",
]
