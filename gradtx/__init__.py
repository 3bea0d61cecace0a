"""gradtx: composable gradient transformations for JAX.

An optimizer is a pair of pure functions ``(init, update)`` built by chaining small
transforms; see ``gradtx.chain`` and the README.
"""

from gradtx import schedules, tree
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
    adam,
)

# --- schedule injection ---
from gradtx.schedules.injection import (
    InjectState,
    get_hyperparams,
    schedule_injection,
    set_hyperparams,
)

# --- adaptive preconditioners ---
from gradtx.transforms.adaptive import (
    ScaleByAdamState,
    scale_by_adam,
)

# --- clipping ---
from gradtx.transforms.clipping import (
    clip,
    clip_by_global_norm,
)

# --- regularizers ---
from gradtx.transforms.regularize import (
    AddDecayedWeightsState,
    add_decayed_weights,
)

# --- scaling ---
from gradtx.transforms.scaling import (
    ScaleByScheduleState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)

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
]
