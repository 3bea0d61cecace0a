"""The named optimizers: each a short chain of building blocks, hyperparameters injected.

Every optimizer here is written as the plain chain that defines it and wrapped by
``schedule_injection``, so that each float hyperparameter may be a constant or a
schedule and ``get_hyperparams(state)["learning_rate"]`` works on all of them.
Arguments, defaults and numbers follow Optax's functions of the same name. The Adam
family is in ``adam_family``, the optimizers before it in ``classic``.
"""

from gradtx.optimizers.adam_family import (
    adam,
    adamax,
    adamaxw,
    adamw,
    amsgrad,
    nadam,
    nadamw,
    radam,
)
from gradtx.optimizers.classic import (
    adadelta,
    adagrad,
    noisy_sgd,
    rmsprop,
    rprop,
    sgd,
)

__all__ = [
    "adadelta",
    "adagrad",
    "adam",
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
]
