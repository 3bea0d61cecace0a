"""Schedules (pure functions ``step -> value``), schedule injection and plateau control."""

from gradtx.schedules.cosine import cosine_decay, sgdr, warmup_cosine_decay
from gradtx.schedules.cyclical import cyclical, noam, one_cycle, warmup_stable_decay
from gradtx.schedules.decay import (
    constant,
    exponential_decay,
    inverse_time_decay,
    linear,
    piecewise_constant,
    polynomial,
    power_decay,
    step_decay,
)
from gradtx.schedules.hyperparams import get_hyperparams, set_hyperparams
from gradtx.schedules.injection import InjectState, schedule_injection
from gradtx.schedules.join import join
from gradtx.schedules.plateau import ReduceOnPlateauState, reduce_on_plateau

__all__ = [
    "InjectState",
    "ReduceOnPlateauState",
    "constant",
    "cosine_decay",
    "cyclical",
    "exponential_decay",
    "get_hyperparams",
    "inverse_time_decay",
    "join",
    "linear",
    "noam",
    "one_cycle",
    "piecewise_constant",
    "polynomial",
    "power_decay",
    "reduce_on_plateau",
    "schedule_injection",
    "set_hyperparams",
    "sgdr",
    "step_decay",
    "warmup_cosine_decay",
    "warmup_stable_decay",
]
