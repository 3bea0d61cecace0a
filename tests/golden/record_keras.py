"""Records Keras 3 optimizer trajectories and schedule values for the compat tests.

Run from the repository root with Keras 3 installed (``pip install keras``); it uses
Keras' JAX backend::

    python tests/golden/record_keras.py

It writes ``tests/golden/keras_optimizers.json`` (each optimizer over its options for
200 steps of the problem of ``golden_problem.py``, in float32 and, with
``jax_enable_x64`` and Keras' floatx set to float64, in float64; and float32 runs of
60 epochs with the ``ReduceLROnPlateau`` callback, its rates and parameters per epoch)
and
``tests/golden/keras_schedules.json`` (200 values of each schedule, float32).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden_problem import (  # noqa: E402
    SHAPES,
    SNAPSHOTS,
    STEPS,
    plateau_metrics,
    problem,
    problem_arrays,
)

KERAS_OPTIMIZERS = {
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "adagrad": keras.optimizers.Adagrad,
    "adadelta": keras.optimizers.Adadelta,
    "adamax": keras.optimizers.Adamax,
    "nadam": keras.optimizers.Nadam,
}

KERAS_SCHEDULES = {
    "exponential_decay": keras.optimizers.schedules.ExponentialDecay,
    "inverse_time_decay": keras.optimizers.schedules.InverseTimeDecay,
    "piecewise_constant_decay": keras.optimizers.schedules.PiecewiseConstantDecay,
    "polynomial_decay": keras.optimizers.schedules.PolynomialDecay,
    "cosine_decay": keras.optimizers.schedules.CosineDecay,
    "cosine_decay_restarts": keras.optimizers.schedules.CosineDecayRestarts,
}


def _case(optimizer: str, name: str, schedule: dict | None = None, **kwargs) -> dict:
    return {"name": name, "optimizer": optimizer, "kwargs": kwargs, "schedule": schedule}


def _sched(name: str, **kwargs) -> dict:
    return {"name": name, "kwargs": kwargs}


OPTIMIZER_CASES = [
    _case("sgd", "sgd", learning_rate=0.05),
    _case("sgd", "sgd_momentum", learning_rate=0.05, momentum=0.9),
    _case("sgd", "sgd_nesterov_wd", learning_rate=0.05, momentum=0.8, nesterov=True,
          weight_decay=0.01),
    _case("sgd", "sgd_momentum_schedule", learning_rate=None, momentum=0.9,
          schedule=_sched("exponential_decay", initial_learning_rate=0.1, decay_steps=20,
                          decay_rate=0.5)),
    _case("rmsprop", "rmsprop", learning_rate=0.01),
    _case("rmsprop", "rmsprop_centered_momentum", learning_rate=0.005, momentum=0.9,
          centered=True, epsilon=1e-4),
    _case("rmsprop", "rmsprop_momentum_wd_schedule", learning_rate=None, rho=0.8, momentum=0.5,
          weight_decay=0.02,
          schedule=_sched("polynomial_decay", initial_learning_rate=0.01, decay_steps=150,
                          power=2.0)),
    _case("adam", "adam", learning_rate=0.01),
    _case("adam", "adam_amsgrad", learning_rate=0.01, beta_2=0.9, amsgrad=True),
    _case("adam", "adam_wd_schedule", learning_rate=None, weight_decay=0.1,
          schedule=_sched("inverse_time_decay", initial_learning_rate=0.02, decay_steps=10,
                          decay_rate=0.2)),
    _case("adamw", "adamw", learning_rate=0.01),
    _case("adamw", "adamw_amsgrad", learning_rate=0.01, weight_decay=0.1, amsgrad=True,
          epsilon=1e-3),
    _case("adagrad", "adagrad", learning_rate=0.1),
    _case("adagrad", "adagrad_wd", learning_rate=0.1, initial_accumulator_value=0.5,
          weight_decay=0.05),
    _case("adadelta", "adadelta", learning_rate=1.0),
    _case("adadelta", "adadelta_wd", learning_rate=0.5, rho=0.9, weight_decay=0.01),
    _case("adamax", "adamax", learning_rate=0.02),
    _case("adamax", "adamax_wd", learning_rate=0.02, beta_1=0.8, weight_decay=0.05),
    _case("nadam", "nadam", learning_rate=0.01),
    _case("nadam", "nadam_wd", learning_rate=0.01, beta_2=0.99, weight_decay=0.05),
    # the options of keras.optimizers.Optimizer
    _case("adam", "adam_clipnorm_wd", learning_rate=0.01, weight_decay=0.1, clipnorm=0.5),
    _case("sgd", "sgd_global_clipnorm", learning_rate=0.05, momentum=0.9, global_clipnorm=0.7),
    _case("rmsprop", "rmsprop_clipvalue", learning_rate=0.01, momentum=0.5, clipvalue=0.3),
    _case("adam", "adam_loss_scale_factor", learning_rate=0.01, loss_scale_factor=128.0),
    _case("adamw", "adamw_accumulation_schedule", learning_rate=None, weight_decay=0.1,
          gradient_accumulation_steps=4,
          schedule=_sched("exponential_decay", initial_learning_rate=0.05, decay_steps=10,
                          decay_rate=0.5)),
    _case("sgd", "sgd_accumulation_clipnorm_schedule", learning_rate=None, momentum=0.9,
          weight_decay=0.01, gradient_accumulation_steps=3, clipnorm=1.0,
          schedule=_sched("piecewise_constant_decay", boundaries=[20, 60],
                          values=[0.1, 0.05, 0.01])),
    _case("adam", "adam_use_ema", learning_rate=0.01, use_ema=True),  # ema_momentum 0.99
    _case("sgd", "sgd_use_ema_overwrite", learning_rate=0.05, momentum=0.9, weight_decay=0.01,
          use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=7),
    # exclude_from_weight_decay(var_list=[the parameters at these indices])
    _case("adamw", "adamw_exclude_from_weight_decay", learning_rate=0.05, weight_decay=0.2,
          exclude_indices=[1]),
    # a schedule on the optimizers without one above (the weight decay reads it too)
    _case("adagrad", "adagrad_wd_schedule", learning_rate=None, initial_accumulator_value=0.2,
          weight_decay=0.05,
          schedule=_sched("cosine_decay", initial_learning_rate=0.05, decay_steps=150,
                          alpha=0.1, warmup_target=0.3, warmup_steps=30)),
    _case("adadelta", "adadelta_wd_schedule", learning_rate=None, rho=0.9, weight_decay=0.02,
          schedule=_sched("piecewise_constant_decay", boundaries=[30, 100],
                          values=[2.0, 1.0, 0.25])),
    _case("adamax", "adamax_wd_schedule", learning_rate=None, weight_decay=0.05,
          schedule=_sched("exponential_decay", initial_learning_rate=0.05, decay_steps=25,
                          decay_rate=0.5, staircase=True)),
    _case("nadam", "nadam_wd_schedule", learning_rate=None, beta_1=0.95, weight_decay=0.03,
          schedule=_sched("cosine_decay_restarts", initial_learning_rate=0.03,
                          first_decay_steps=40, t_mul=1.5, m_mul=0.8, alpha=0.05)),
]  # fmt: skip

SCHEDULE_CASES = [
    _sched("exponential_decay", initial_learning_rate=0.1, decay_steps=30, decay_rate=0.6),
    _sched("exponential_decay", initial_learning_rate=0.1, decay_steps=30, decay_rate=0.6,
           staircase=True),
    _sched("inverse_time_decay", initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5),
    _sched("inverse_time_decay", initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5,
           staircase=True),
    _sched("piecewise_constant_decay", boundaries=[20, 50, 120], values=[0.1, 0.05, 0.01, 0.001]),
    _sched("polynomial_decay", initial_learning_rate=0.1, decay_steps=120),
    _sched("polynomial_decay", initial_learning_rate=0.1, decay_steps=60,
           end_learning_rate=0.001, power=2.0, cycle=True),
    _sched("cosine_decay", initial_learning_rate=0.1, decay_steps=150, alpha=0.05),
    _sched("cosine_decay", initial_learning_rate=0.0, decay_steps=120, warmup_target=0.1,
           warmup_steps=40),
    _sched("cosine_decay_restarts", initial_learning_rate=0.1, first_decay_steps=20),
    _sched("cosine_decay_restarts", initial_learning_rate=0.1, first_decay_steps=30, t_mul=1.0,
           m_mul=0.7, alpha=0.1),
    _sched("cosine_decay_restarts", initial_learning_rate=0.1, first_decay_steps=10, t_mul=1.5,
           m_mul=0.9),
]  # fmt: skip


def make_schedule(spec: dict):
    return KERAS_SCHEDULES[spec["name"]](**spec["kwargs"])


_last_run: dict = {}  # the optimizer of the last run (its EMA average is recorded)


def run_optimizer(case: dict, dtype: str) -> np.ndarray:
    """Runs a case in Keras; returns the flattened parameters at the snapshot steps.

    float64 runs enable ``jax_enable_x64`` for their duration only.
    """
    with jax.enable_x64(dtype == "float64"):
        return _run_optimizer(case, dtype)


def _step(optimizer, variables: list, prob: dict, t: int) -> None:
    """Step t of the golden problem: its gradients at the variables' values, applied."""
    values = [np.asarray(v.value) for v in variables]
    grads = [
        prob["h"][i] * (values[i] - prob["c"][i]) + prob["noise"][t][i] for i in range(len(values))
    ]
    optimizer.apply_gradients(zip([jax.numpy.asarray(g) for g in grads], variables, strict=True))


def _run_optimizer(case: dict, dtype: str) -> np.ndarray:
    keras.config.set_floatx(dtype)
    prob = problem(dtype)
    kwargs = dict(case["kwargs"])
    excluded = kwargs.pop("exclude_indices", None)
    if case.get("schedule"):
        kwargs["learning_rate"] = make_schedule(case["schedule"])
    optimizer = KERAS_OPTIMIZERS[case["optimizer"]](**kwargs)
    variables = [keras.Variable(p, dtype=dtype) for p in prob["p0"]]
    if excluded:
        optimizer.exclude_from_weight_decay(var_list=[variables[i] for i in excluded])
    optimizer.build(variables)
    _last_run["optimizer"] = optimizer
    snapshots = []
    for t in range(STEPS):
        _step(optimizer, variables, prob, t)
        if t + 1 in SNAPSHOTS:
            snapshots.append(np.concatenate([np.asarray(v.value).ravel() for v in variables]))
    keras.config.set_floatx("float32")
    return np.stack(snapshots)


# ReduceLROnPlateau at the end of every epoch of STEPS_PER_EPOCH steps, on the metrics
# of golden_problem.plateau_metrics() (negated for the mode="max" case), float32.
PLATEAU_CASES = [
    {"name": "sgd_momentum", "optimizer": "sgd", "kwargs": {"learning_rate": 0.05, "momentum": 0.9},
     "plateau": {"factor": 0.5, "patience": 2, "cooldown": 1}},
    {"name": "rmsprop_momentum_min_lr", "optimizer": "rmsprop",
     "kwargs": {"learning_rate": 0.005, "momentum": 0.9},
     "plateau": {"factor": 0.3, "patience": 1, "min_lr": 0.0005, "min_delta": 0.002}},
    {"name": "adam_max_mode", "optimizer": "adam", "kwargs": {"learning_rate": 0.01},
     "plateau": {"monitor": "val_accuracy", "mode": "max", "factor": 0.5, "patience": 3,
                 "cooldown": 2}},
]  # fmt: skip
STEPS_PER_EPOCH = 3


class _Model:
    """What ReduceLROnPlateau reads of a model: its optimizer (and metrics, for "auto")."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.metrics = []


def run_plateau(case: dict) -> dict:
    """The parameters and the learning rate after every epoch, float32."""
    keras.config.set_floatx("float32")
    prob = problem("float32")
    optimizer = KERAS_OPTIMIZERS[case["optimizer"]](**case["kwargs"])
    variables = [keras.Variable(p, dtype="float32") for p in prob["p0"]]
    optimizer.build(variables)
    callback = keras.callbacks.ReduceLROnPlateau(**case["plateau"])
    callback.set_model(_Model(optimizer))
    callback.on_train_begin()
    sign = -1.0 if case["plateau"].get("mode") == "max" else 1.0
    epochs, lrs = [], []
    for epoch, metric in enumerate(plateau_metrics()):
        for t in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
            _step(optimizer, variables, prob, t)
        callback.on_epoch_end(epoch, {case["plateau"].get("monitor", "val_loss"): sign * metric})
        epochs.append(
            _fmt(np.concatenate([np.asarray(v.value).ravel() for v in variables]), "float32")
        )
        lrs.append(float(np.asarray(optimizer.learning_rate)))
    return dict(case, steps_per_epoch=STEPS_PER_EPOCH, epochs=epochs, lrs=lrs)


def schedule_values(spec: dict, steps: int = STEPS) -> np.ndarray:
    keras.config.set_floatx("float32")
    schedule = make_schedule(spec)
    return np.asarray([float(schedule(t)) for t in range(steps)], np.float64)


def _fmt(array: np.ndarray, dtype: str) -> list:
    if dtype == "float32":
        return [float(f"{x:.9g}") for x in np.asarray(array).ravel()]
    return [float(x) for x in np.asarray(array).ravel()]


def main() -> None:
    cases = []
    for case in OPTIMIZER_CASES:
        record = dict(case)
        for dtype in ("float64", "float32"):
            record[dtype] = {"params": [_fmt(s, dtype) for s in run_optimizer(case, dtype)]}
            if case["kwargs"].get("use_ema"):  # the average after the last step
                averages = _last_run["optimizer"]._model_variables_moving_average
                flat = np.concatenate([np.asarray(a.value).ravel() for a in averages])
                record[dtype]["average"] = _fmt(flat, dtype)
        cases.append(record)
    optimizers = {
        "keras": keras.__version__,
        "shapes": SHAPES,
        "snapshots": SNAPSHOTS,
        "problem": {k: v.tolist() for k, v in problem_arrays().items()},
        "cases": cases,
        "plateau_metrics": plateau_metrics(),
        "plateau_cases": [run_plateau(case) for case in PLATEAU_CASES],
    }
    schedules = {
        "keras": keras.__version__,
        "cases": [
            dict(spec, values=_fmt(schedule_values(spec), "float32")) for spec in SCHEDULE_CASES
        ],
    }
    for name, content in (
        ("keras_optimizers.json", optimizers),
        ("keras_schedules.json", schedules),
    ):
        (HERE / name).write_text(json.dumps(content, separators=(",", ":")))
        print(f"wrote {name}: {(HERE / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
