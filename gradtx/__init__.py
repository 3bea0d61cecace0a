"""gradtx: composable gradient transformations for JAX.

An optimizer is a pair of pure functions ``(init, update)`` built by chaining small
transforms; see ``gradtx.chain`` and the README.
"""

from gradtx import schedules, training, tree
from gradtx.core import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    Schedule,
    Updates,
    apply_updates,
    chain,
    identity,
    named_chain,
)

# --- optimizers ---
from gradtx.optimizers import (
    adadelta,
    adagrad,
    adam,
    adamax,
    adamaxw,
    adamw,
    amsgrad,
    nadam,
    nadamw,
    noisy_sgd,
    radam,
    rmsprop,
    rprop,
    sgd,
)

# --- introspection ---
from gradtx.paths import tree_get, tree_set

# --- 8-bit block-wise quantization (issue 7) ---
from gradtx.quantization import QuantizedArray, dynamic_quantization_map

# --- schedule injection ---
from gradtx.schedules.hyperparams import get_hyperparams, set_hyperparams
from gradtx.schedules.injection import InjectState, schedule_injection

# --- plateau control (issue 3) ---
from gradtx.schedules.plateau import ReduceOnPlateauState, reduce_on_plateau

# --- adaptive preconditioners: the Adam family; RMSProp, Adagrad, Adadelta, Rprop ---
from gradtx.transforms.adam import (
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByAmsgradState,
    amsgrad_max,
    scale_by_adam,
    scale_by_adamax,
)
from gradtx.transforms.adaptive import (
    ScaleByAdadeltaState,
    ScaleByRmsState,
    ScaleByRpropState,
    ScaleByRssState,
    ScaleByStddevState,
    scale_by_adadelta,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
)

# --- averaged SGD (issue 5) ---
from gradtx.transforms.averaging_sgd import AveragedSgdState, averaged_sgd

# --- clipping ---
from gradtx.transforms.clipping import (
    clip,
    clip_by_global_norm,
)

# --- decoupled weight decay after the learning rate (issue 5) ---
from gradtx.transforms.decoupled_decay import (
    DecoupledWeightDecayState,
    add_decoupled_weight_decay,
)

# --- local gains ---
from gradtx.transforms.local_gain import ScaleByLocalGainState, scale_by_local_gain

# --- momentum ---
from gradtx.transforms.momentum import (
    DampenedTraceState,
    EmaState,
    TraceState,
    ema,
    nesterov_lookahead,
    trace,
)

# --- framework parity blocks (issue 5): NAdam schedule, RAdam ---
from gradtx.transforms.nadam_schedule import ScaleByNadamScheduleState, scale_by_nadam_schedule

# --- regularizers and gradient noise ---
from gradtx.transforms.noise import AddNoiseState, add_noise
from gradtx.transforms.rectified import ScaleByRadamState, scale_by_radam
from gradtx.transforms.regularize import (
    AddDecayedWeightsState,
    ProximalL1State,
    add_decayed_weights,
    add_l1,
    max_norm,
    proximal_l1,
)

# --- scaling ---
from gradtx.transforms.scaling import (
    ScaleByScheduleState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)

# --- wrappers (issue 4) ---
from gradtx.wrappers import (
    ApplyIfFiniteState,
    AverageParamsState,
    EmaParamsState,
    FlattenState,
    LookaheadState,
    MaskedState,
    MultiStepsState,
    PartitionState,
    SwatsState,
    apply_if_finite,
    average_params,
    ema_params,
    flatten,
    freeze,
    has_updated,
    lookahead,
    masked,
    multi_steps,
    partition,
    reset_group,
    set_to_zero,
    swats,
)

# --- 8-bit optimizer state (issue 7) ---
from gradtx.wrappers.quantized import QuantizedState, quantized_state

__version__ = "0.1.0"

__all__ = [
    "AddDecayedWeightsState",
    "add_decayed_weights",
    "clip",
    "clip_by_global_norm",
    "EmptyState",
    "GradientTransformation",
    "InjectState",
    "OptState",
    "Params",
    "Schedule",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "Updates",
    "adam",
    "apply_updates",
    "chain",
    "get_hyperparams",
    "identity",
    "named_chain",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "schedule_injection",
    "schedules",
    "set_hyperparams",
    "tree",
    # plateau control and training tools (issue 3)
    "ReduceOnPlateauState",
    "reduce_on_plateau",
    "training",
    # momentum and adaptive blocks (issue 2)
    "ScaleByAdadeltaState",
    "ScaleByAdamaxState",
    "ScaleByAmsgradState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "ScaleByStddevState",
    "TraceState",
    "EmaState",
    "ema",
    "amsgrad_max",
    "nesterov_lookahead",
    "scale_by_adadelta",
    "scale_by_adamax",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "trace",
    # classic optimizers (issue 2)
    "adadelta",
    "adagrad",
    "adamax",
    "adamaxw",
    "adamw",
    "amsgrad",
    "nadam",
    "nadamw",
    "noisy_sgd",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "tree_get",
    "tree_set",
    # framework parity blocks (issue 5)
    "AveragedSgdState",
    "DampenedTraceState",
    "DecoupledWeightDecayState",
    "ScaleByNadamScheduleState",
    "ScaleByRadamState",
    "add_decoupled_weight_decay",
    "averaged_sgd",
    "scale_by_nadam_schedule",
    "scale_by_radam",
    # regularizers, noise and local gains (issue 4)
    "AddNoiseState",
    "ProximalL1State",
    "ScaleByLocalGainState",
    "add_l1",
    "add_noise",
    "max_norm",
    "proximal_l1",
    "scale_by_local_gain",
    # wrappers (issue 4)
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
    # 8-bit optimizer state (issue 7)
    "QuantizedArray",
    "QuantizedState",
    "dynamic_quantization_map",
    "quantized_state",
]
