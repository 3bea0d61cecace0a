"""Records the golden values of PyTorch's and Keras' schedulers into schedules.json.

Run once by hand (the tests only read the JSON, and run without PyTorch or Keras):

    pip install torch==2.13.0 keras
    KERAS_BACKEND=jax python tests/golden/record_schedules.py

For a PyTorch scheduler, value t is ``optimizer.param_groups[0]["lr"]`` read before the
t-th ``optimizer.step()`` (the lr that update t uses; the scheduler is stepped after the
optimizer, as PyTorch prescribes). For a Keras schedule, value t is ``schedule(t)``.
For ``ReduceLROnPlateau``, entry t is the lr after ``scheduler.step(metrics[t])``.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).with_name("schedules.json")

# name: (scheduler class in torch.optim.lr_scheduler, base lr, kwargs, number of steps)
TORCH_CASES = {
    "torch_step_lr": ("StepLR", 0.1, {"step_size": 7, "gamma": 0.5}, 60),
    "torch_multistep_lr": (
        "MultiStepLR",
        0.1,
        {"milestones": [10, 30, 70, 150], "gamma": 0.5},
        200,
    ),
    "torch_exponential_lr": ("ExponentialLR", 0.1, {"gamma": 0.97}, 100),
    "torch_polynomial_lr": ("PolynomialLR", 0.1, {"total_iters": 50, "power": 2.0}, 70),
    "torch_linear_lr": (
        "LinearLR",
        0.1,
        {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 20},
        40,
    ),
    # compared for t <= T_max only: past it PyTorch's cosine is periodic
    "torch_cosine_annealing_lr": ("CosineAnnealingLR", 0.1, {"T_max": 100, "eta_min": 0.001}, 101),
    "torch_cosine_warm_restarts": (
        "CosineAnnealingWarmRestarts",
        0.1,
        {"T_0": 10, "T_mult": 2, "eta_min": 0.001},
        200,
    ),
    "torch_cosine_warm_restarts_mult1": (
        "CosineAnnealingWarmRestarts",
        0.1,
        {"T_0": 15, "T_mult": 1, "eta_min": 0.0},
        100,
    ),
    "torch_cyclic_triangular": (
        "CyclicLR",
        0.1,
        {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 10, "cycle_momentum": False},
        100,
    ),
    "torch_cyclic_triangular2": (
        "CyclicLR",
        0.1,
        {
            "base_lr": 0.001,
            "max_lr": 0.1,
            "step_size_up": 7,
            "step_size_down": 13,
            "mode": "triangular2",
            "cycle_momentum": False,
        },
        100,
    ),
    "torch_cyclic_exp_range": (
        "CyclicLR",
        0.1,
        {
            "base_lr": 0.001,
            "max_lr": 0.1,
            "step_size_up": 10,
            "mode": "exp_range",
            "gamma": 0.99,
            "cycle_momentum": False,
        },
        100,
    ),
    "torch_one_cycle": (
        "OneCycleLR",
        0.1,
        {"max_lr": 0.1, "total_steps": 100, "cycle_momentum": False},
        100,
    ),
    "torch_one_cycle_linear_three_phase": (
        "OneCycleLR",
        0.1,
        {
            "max_lr": 0.2,
            "total_steps": 150,
            "pct_start": 0.25,
            "anneal_strategy": "linear",
            "div_factor": 10.0,
            "final_div_factor": 100.0,
            "three_phase": True,
            "cycle_momentum": False,
        },
        150,
    ),
}

# name: (class in keras.optimizers.schedules, kwargs, number of steps)
KERAS_CASES = {
    "keras_exponential_decay": (
        "ExponentialDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9},
        100,
    ),
    "keras_exponential_decay_staircase": (
        "ExponentialDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9, "staircase": True},
        100,
    ),
    "keras_inverse_time_decay": (
        "InverseTimeDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 5, "decay_rate": 0.5},
        100,
    ),
    "keras_inverse_time_decay_staircase": (
        "InverseTimeDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 5, "decay_rate": 0.5, "staircase": True},
        100,
    ),
    "keras_cosine_decay": (
        "CosineDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 80, "alpha": 0.05},
        120,
    ),
    "keras_cosine_decay_restarts": (
        "CosineDecayRestarts",
        {
            "initial_learning_rate": 0.1,
            "first_decay_steps": 10,
            "t_mul": 2.0,
            "m_mul": 0.8,
            "alpha": 0.1,
        },
        200,
    ),
    "keras_cosine_decay_restarts_fractional": (
        "CosineDecayRestarts",
        {
            "initial_learning_rate": 0.1,
            "first_decay_steps": 8,
            "t_mul": 1.5,
            "m_mul": 0.9,
            "alpha": 0.0,
        },
        150,
    ),
}


def _plateau_metrics() -> dict[str, list[float]]:
    """Metric sequences on a 1e-3 grid, so no comparison sits on a rounding boundary."""
    rng = np.random.default_rng(0)
    noisy = 1.0 + np.cumsum(rng.normal(-0.004, 0.02, 120))
    down_then_flat = [1.0, 0.8, 0.7, 0.69, 0.68, 0.68, 0.7, 0.65, 0.649, 0.65, 0.66, 0.6]
    down_then_flat += [0.6, 0.61, 0.62, 0.63, 0.5, 0.55, 0.56, 0.57, 0.58, 0.59, 0.6, 0.61]
    log_likelihood = [-1.0, -2.0, -2.5, -2.4, -2.6, -2.65, -2.7, -2.9, -2.85, -2.86]
    log_likelihood += [-2.87, -2.88, -3.5, -3.4, -3.3, -3.2, -3.1, -3.0, -3.6, -3.599]
    accuracy = [0.1, 0.3, 0.5, 0.6, 0.65, 0.655, 0.66, 0.66, 0.67, 0.7, 0.7, 0.69]
    accuracy += [0.7, 0.71, 0.705, 0.71, 0.8, 0.8, 0.79, 0.8, 0.8, 0.81, 0.8, 0.8]
    return {
        "noisy": [round(float(v), 3) for v in noisy],
        "down_then_flat": down_then_flat,
        "log_likelihood": log_likelihood,
        "accuracy": accuracy,
    }


# name: (base lr, ReduceLROnPlateau kwargs, metric sequence name)
PLATEAU_CASES = {
    "defaults_noisy": (1.0, {}, "noisy"),
    "min_rel_patience": (1.0, {"factor": 0.5, "patience": 2, "threshold": 0.1}, "down_then_flat"),
    "min_abs_cooldown_min_lr": (
        1.0,
        {
            "factor": 0.5,
            "patience": 1,
            "threshold": 0.005,
            "threshold_mode": "abs",
            "cooldown": 2,
            "min_lr": 0.1,
        },
        "down_then_flat",
    ),
    "eps_skips_small_reductions": (
        1.0,
        {"factor": 0.5, "patience": 0, "threshold": 0.5, "eps": 0.3},
        "down_then_flat",
    ),
    "negative_min_rel": (1.0, {"factor": 0.5, "patience": 1, "threshold": 0.05}, "log_likelihood"),
    "negative_min_abs": (
        1.0,
        {"factor": 0.5, "patience": 1, "threshold": 0.05, "threshold_mode": "abs"},
        "log_likelihood",
    ),
    "negative_max_rel": (
        1.0,
        {"factor": 0.3, "patience": 1, "threshold": 0.05, "mode": "max"},
        "log_likelihood",
    ),
    "max_rel": (1.0, {"factor": 0.5, "patience": 2, "threshold": 0.01, "mode": "max"}, "accuracy"),
    "max_abs_cooldown": (
        1.0,
        {
            "factor": 0.5,
            "patience": 1,
            "threshold": 0.02,
            "threshold_mode": "abs",
            "mode": "max",
            "cooldown": 3,
        },
        "accuracy",
    ),
}


def _rounded(values) -> list[float]:
    return [float(f"{float(v):.12g}") for v in values]


def record_torch() -> tuple[dict, dict]:
    import torch

    def optimizer(lr):
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)

    schedules = {}
    for name, (cls, base_lr, kwargs, steps) in TORCH_CASES.items():
        opt = optimizer(base_lr)
        scheduler = getattr(torch.optim.lr_scheduler, cls)(opt, **kwargs)
        values = []
        for _ in range(steps):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        schedules[name] = {
            "library": "torch",
            "class": cls,
            "base_lr": base_lr,
            "kwargs": kwargs,
            "values": _rounded(values),
        }

    metrics = _plateau_metrics()
    plateau = {}
    for name, (base_lr, kwargs, metric_name) in PLATEAU_CASES.items():
        opt = optimizer(base_lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
        lrs = []
        for metric in metrics[metric_name]:
            scheduler.step(metric)
            lrs.append(opt.param_groups[0]["lr"])
        plateau[name] = {
            "base_lr": base_lr,
            "kwargs": kwargs,
            "metrics": metrics[metric_name],
            "lrs": _rounded(lrs),
        }
    return schedules, plateau


def record_keras() -> dict:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    schedules = {}
    for name, (cls, kwargs, steps) in KERAS_CASES.items():
        schedule = getattr(keras.optimizers.schedules, cls)(**kwargs)
        values = [float(np.asarray(schedule(step))) for step in range(steps)]
        schedules[name] = {
            "library": "keras",
            "class": cls,
            "kwargs": kwargs,
            "values": _rounded(values),
        }
    return schedules


def main() -> None:
    import keras
    import torch

    torch_schedules, plateau = record_torch()
    golden = {
        "versions": {"torch": torch.__version__, "keras": keras.__version__},
        "schedules": {**torch_schedules, **record_keras()},
        "plateau": plateau,
    }
    OUT.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
