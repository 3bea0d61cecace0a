"""Wrappers: transforms that take transforms (routing, accumulation, safety, averaging).

One module per concern; the public names are re-exported here and from ``gradtx``.
"""

from gradtx.wrappers.accumulation import MultiStepsState, has_updated, multi_steps
from gradtx.wrappers.averaging import (
    AverageParamsState,
    EmaParamsState,
    average_params,
    ema_params,
)
from gradtx.wrappers.finite import ApplyIfFiniteState, apply_if_finite
from gradtx.wrappers.flatten import FlattenState, flatten
from gradtx.wrappers.lookahead import LookaheadState, lookahead
from gradtx.wrappers.masking import MaskedState, freeze, masked, set_to_zero
from gradtx.wrappers.partition import PartitionState, partition, reset_group
from gradtx.wrappers.swats import SwatsState, swats

__all__ = [
    "ApplyIfFiniteState",
    "AverageParamsState",
    "EmaParamsState",
    "FlattenState",
    "LookaheadState",
    "MaskedState",
    "MultiStepsState",
    "PartitionState",
    "SwatsState",
    "apply_if_finite",
    "average_params",
    "ema_params",
    "flatten",
    "freeze",
    "has_updated",
    "lookahead",
    "masked",
    "multi_steps",
    "partition",
    "reset_group",
    "set_to_zero",
    "swats",
]
