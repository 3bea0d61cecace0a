"""The fixed problem and the cases recorded by ``record_torch.py`` and ``record_keras.py``.

Three small parameter arrays (shapes ``SHAPES``) follow ``STEPS`` gradients
``g_t = sign * h * (p_t - c) + n_t`` (a fixed diagonal quadratic plus a fixed noise
sequence; ``sign = -1`` for ``maximize`` cases, so that they climb ``-f``). The problem
is written into the golden files, so the tests need neither this seed nor PyTorch.
"""

from __future__ import annotations

import numpy as np

SHAPES = [(3,), (2, 2), (1,)]
STEPS = 200
SNAPSHOTS = (1, 2, 3, 5, 10, 20, 50, 100, 150, 200)


def problem_arrays() -> dict:
    """p0, h, c and the noise, float64, flattened per parameter (seeded)."""
    rng = np.random.default_rng(20240605)
    size = sum(int(np.prod(s)) for s in SHAPES)
    return {
        "p0": rng.standard_normal(size),
        "h": rng.uniform(0.5, 2.0, size),
        "c": rng.standard_normal(size),
        "noise": 0.1 * rng.standard_normal((STEPS, size)),
    }


def split(flat: np.ndarray) -> list[np.ndarray]:
    """A flat vector (or rows of them) as the list of parameter arrays."""
    out, start = [], 0
    for shape in SHAPES:
        size = int(np.prod(shape))
        out.append(
            np.asarray(flat)[..., start : start + size].reshape(*np.shape(flat)[:-1], *shape)
        )
        start += size
    return out


def problem(dtype: str) -> dict:
    """The problem as lists of arrays of ``dtype``; noise as a list per step."""
    arrays = problem_arrays()
    cast = lambda x: [a.astype(dtype) for a in split(x)]  # noqa: E731
    return {
        "p0": cast(arrays["p0"]),
        "h": cast(arrays["h"]),
        "c": cast(arrays["c"]),
        "noise": [cast(row) for row in arrays["noise"]],
    }


def _case(
    optimizer: str,
    name: str,
    schedule: dict | None = None,
    momentum_schedule: dict | None = None,
    clip_grad_norm: dict | None = None,
    **kwargs,
) -> dict:
    """A recorded run. ``momentum_schedule`` (a ``lr_scheduler`` momentum schedule of
    gradtx) records the scheduler of ``schedule`` with ``cycle_momentum=True`` and the
    schedule's base/max momentum; gradtx passes it as ``betas[0]`` or ``momentum``.
    ``clip_grad_norm`` (its keyword arguments) calls ``torch.nn.utils.clip_grad_norm_``
    before every ``optimizer.step()``."""
    case = {"name": name, "optimizer": optimizer, "kwargs": kwargs, "schedule": schedule}
    if momentum_schedule is not None:
        case["momentum_schedule"] = momentum_schedule
    if clip_grad_norm is not None:
        case["clip_grad_norm"] = clip_grad_norm
    return case


def _one_cycle_case(optimizer: str, name: str, three_phase: bool = False, **kwargs) -> dict:
    shared = {"total_steps": 200, "pct_start": 0.25, "three_phase": three_phase}
    return _case(
        optimizer,
        name,
        schedule={"name": "one_cycle_lr", "kwargs": dict(max_lr=kwargs["lr"], **shared)},
        momentum_schedule={
            "name": "one_cycle_momentum",
            "kwargs": dict(base_momentum=0.8, max_momentum=0.95, **shared),
        },
        **kwargs,
    )


OPTIMIZER_CASES = [
    _case("sgd", "sgd", lr=0.05),
    _case("sgd", "sgd_momentum", lr=0.05, momentum=0.9),
    _case("sgd", "sgd_dampening", lr=0.05, momentum=0.9, dampening=0.5),
    _case("sgd", "sgd_nesterov_wd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    _case("sgd", "sgd_maximize", lr=0.05, momentum=0.5, maximize=True),
    _case(
        "sgd",
        "sgd_step_lr",
        schedule={"name": "step_lr", "kwargs": {"base_lr": 0.1, "step_size": 30, "gamma": 0.5}},
        lr=0.1,
        momentum=0.9,
    ),
    _case("adam", "adam", lr=0.01),
    _case("adam", "adam_amsgrad", lr=0.01, betas=[0.9, 0.9], amsgrad=True),
    _case("adam", "adam_l2", lr=0.01, weight_decay=0.1),
    _case("adam", "adam_decoupled", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    _case(
        "adam", "adam_amsgrad_l2_maximize", lr=0.01, weight_decay=0.05, amsgrad=True, maximize=True
    ),
    _case(
        "adam",
        "adam_one_cycle",
        schedule={"name": "one_cycle_lr", "kwargs": {"max_lr": 0.05, "total_steps": 200}},
        lr=0.05,
    ),
    _case("adamw", "adamw", lr=0.01),
    _case("adamw", "adamw_amsgrad", lr=0.01, weight_decay=0.1, amsgrad=True, eps=1e-3),
    _case("adagrad", "adagrad", lr=0.1),
    _case(
        "adagrad",
        "adagrad_options",
        lr=0.1,
        lr_decay=0.01,
        weight_decay=0.01,
        initial_accumulator_value=0.2,
        eps=1e-6,
    ),
    _case("rmsprop", "rmsprop", lr=0.01),
    _case("rmsprop", "rmsprop_centered", lr=0.01, centered=True, eps=1e-4),
    _case("rmsprop", "rmsprop_momentum", lr=0.005, momentum=0.9),
    _case(
        "rmsprop",
        "rmsprop_centered_momentum_wd",
        lr=0.005,
        alpha=0.9,
        momentum=0.5,
        centered=True,
        weight_decay=0.01,
        eps=1e-4,
    ),
    _case("adadelta", "adadelta", lr=1.0),
    _case("adadelta", "adadelta_wd_maximize", lr=0.5, rho=0.95, weight_decay=0.01, maximize=True),
    _case("adamax", "adamax", lr=0.02),
    _case("adamax", "adamax_wd", lr=0.02, betas=[0.8, 0.99], weight_decay=0.05),
    _case("nadam", "nadam", lr=0.01),
    _case("nadam", "nadam_l2", lr=0.01, weight_decay=0.05, momentum_decay=0.01),
    _case("nadam", "nadam_decoupled", lr=0.01, weight_decay=0.05, decoupled_weight_decay=True),
    _case("radam", "radam", lr=0.01),
    _case(
        "radam",
        "radam_decoupled",
        lr=0.01,
        betas=[0.9, 0.99],
        weight_decay=0.05,
        decoupled_weight_decay=True,
    ),
    _case("radam", "radam_l2_maximize", lr=0.01, weight_decay=0.05, maximize=True),
    _case("rprop", "rprop", lr=0.01),
    _case(
        "rprop",
        "rprop_bounds_maximize",
        lr=0.3,
        etas=[0.4, 1.5],
        step_sizes=[0.05, 0.2],
        maximize=True,
    ),
    _case("asgd", "asgd", lr=0.05, t0=50.0),
    # PyTorch's default cycle_momentum=True: betas[0] or momentum follow the scheduler
    _one_cycle_case("adamw", "adamw_one_cycle_momentum", lr=0.05),
    _one_cycle_case("adam", "adam_amsgrad_one_cycle_momentum", lr=0.05, amsgrad=True),
    _one_cycle_case("nadam", "nadam_one_cycle_momentum", lr=0.02),
    _one_cycle_case("radam", "radam_one_cycle_momentum", lr=0.02, three_phase=True),
    _one_cycle_case("adamax", "adamax_one_cycle_momentum", lr=0.02),
    _one_cycle_case("sgd", "sgd_one_cycle_momentum", lr=0.05, momentum=0.9, nesterov=True),
    # clip_grad_norm_ before each step (PyTorch's eps: max_norm / (norm + 1e-6))
    dict(
        _one_cycle_case("adamw", "adamw_one_cycle_momentum_clip", lr=0.05),
        clip_grad_norm={"max_norm": 0.5},
    ),
    _case(
        "sgd",
        "sgd_nesterov_clip_inf_norm",
        clip_grad_norm={"max_norm": 0.3, "norm_type": float("inf")},
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    ),
    _case("adam", "adam_clip_l1_norm", clip_grad_norm={"max_norm": 1.0, "norm_type": 1.0}, lr=0.01),
    _case(
        "rmsprop",
        "rmsprop_cyclic_momentum",
        schedule={
            "name": "cyclic_lr",
            "kwargs": {"base_lr": 0.001, "max_lr": 0.01, "step_size_up": 15, "mode": "triangular2"},
        },
        momentum_schedule={
            "name": "cyclic_momentum",
            "kwargs": {"step_size_up": 15, "mode": "triangular2"},
        },
        lr=0.001,
        momentum=0.9,
        centered=True,
    ),
    _case("asgd", "asgd_wd", lr=0.05, lambd=0.01, alpha=0.5, t0=20.0, weight_decay=0.01),
    # lr as a schedule where each optimizer takes it its own way: Adagrad divides it by
    # its lr_decay term, ASGD's eta_k reads it, Rprop reads it once (its first step size);
    # maximize where an optimizer builds its own chain (ASGD)
    _case(
        "adagrad",
        "adagrad_lr_decay_step_lr_maximize",
        schedule={"name": "step_lr", "kwargs": {"base_lr": 0.1, "step_size": 30, "gamma": 0.5}},
        lr=0.1,
        lr_decay=0.01,
        maximize=True,
    ),
    _case(
        "adadelta",
        "adadelta_step_lr",
        schedule={"name": "step_lr", "kwargs": {"base_lr": 1.0, "step_size": 30, "gamma": 0.5}},
        lr=1.0,
    ),
    _case(
        "rprop",
        "rprop_step_lr",
        schedule={"name": "step_lr", "kwargs": {"base_lr": 0.01, "step_size": 30, "gamma": 0.5}},
        lr=0.01,
    ),
    _case(
        "asgd",
        "asgd_exponential_lr_maximize",
        schedule={"name": "exponential_lr", "kwargs": {"base_lr": 0.05, "gamma": 0.99}},
        lr=0.05,
        t0=50.0,
        weight_decay=0.01,
        maximize=True,
    ),
]

LOAD_CASES = [
    dict(_case("sgd", "sgd_dampening_load", lr=0.05, momentum=0.9, dampening=0.3), save_at=50),
    dict(_case("adam", "adam_amsgrad_load", lr=0.01, amsgrad=True), save_at=50),
    dict(_case("adamw", "adamw_load", lr=0.01, weight_decay=0.1), save_at=50),
    dict(_case("nadam", "nadam_load", lr=0.01), save_at=50),
    dict(_case("rmsprop", "rmsprop_load", lr=0.005, momentum=0.9, centered=True), save_at=50),
    dict(
        _case(
            "adamw",
            "adamw_step_lr_load",
            schedule={
                "name": "step_lr",
                "kwargs": {"base_lr": 0.01, "step_size": 30, "gamma": 0.5},
            },
            lr=0.01,
            weight_decay=0.1,
        ),
        save_at=50,
    ),
    dict(_one_cycle_case("adamw", "adamw_one_cycle_momentum_load", lr=0.05), save_at=50),
]


def _sched(name: str, **kwargs) -> dict:
    return {"name": name, "kwargs": kwargs}


SCHEDULER_CASES = [
    _sched("step_lr", base_lr=0.1, step_size=30, gamma=0.5),
    _sched("multistep_lr", base_lr=0.1, milestones=[20, 50, 50, 120], gamma=0.3),
    _sched("exponential_lr", base_lr=0.1, gamma=0.98),
    _sched("cosine_annealing_lr", base_lr=0.1, T_max=60, eta_min=0.001),
    _sched("cosine_annealing_lr", base_lr=0.1, T_max=50),
    _sched("cosine_annealing_warm_restarts", base_lr=0.1, T_0=10, T_mult=2, eta_min=0.001),
    _sched("cosine_annealing_warm_restarts", base_lr=0.1, T_0=25),
    _sched("cyclic_lr", base_lr=0.001, max_lr=0.1, step_size_up=20),
    _sched(
        "cyclic_lr",
        base_lr=0.001,
        max_lr=0.1,
        step_size_up=20,
        step_size_down=30,
        mode="triangular2",
    ),
    _sched("cyclic_lr", base_lr=0.001, max_lr=0.1, step_size_up=15, mode="exp_range", gamma=0.99),
    _sched("one_cycle_lr", max_lr=0.1, total_steps=200),
    _sched(
        "one_cycle_lr",
        max_lr=0.1,
        total_steps=250,
        pct_start=0.25,
        anneal_strategy="linear",
        div_factor=10.0,
        final_div_factor=100.0,
    ),
    _sched("one_cycle_lr", max_lr=0.1, total_steps=200, three_phase=True),
    _sched("linear_lr", base_lr=0.1, start_factor=0.25, end_factor=1.0, total_iters=40),
    _sched("linear_lr", base_lr=0.1, start_factor=1.0, end_factor=0.1, total_iters=150),
    _sched("constant_lr", base_lr=0.1, factor=0.5, total_iters=30),
    _sched("polynomial_lr", base_lr=0.1, total_iters=150, power=2.0),
    _sched(
        "sequential_lr",
        schedules=[
            _sched("linear_lr", base_lr=0.1, start_factor=0.1, total_iters=20),
            _sched("exponential_lr", base_lr=0.1, gamma=0.97),
        ],
        milestones=[20],
    ),
    _sched(
        "sequential_lr",
        schedules=[
            _sched("constant_lr", base_lr=0.1, factor=0.2, total_iters=10),
            _sched("cosine_annealing_lr", base_lr=0.1, T_max=60),
            _sched("step_lr", base_lr=0.1, step_size=20, gamma=0.5),
        ],
        milestones=[10, 90],
    ),
]


def plateau_metrics() -> list[float]:
    """A loss that improves, stalls, gets worse and improves again (60 epochs, seeded)."""
    rng = np.random.default_rng(7)
    trend = np.concatenate(
        [np.linspace(1.0, 0.5, 15), np.full(20, 0.5), np.linspace(0.55, 0.3, 25)]
    )
    return (trend + 0.002 * rng.standard_normal(trend.size)).tolist()


# Per-epoch ReduceLROnPlateau on an optimizer: STEPS_PER_EPOCH optimizer steps, then
# scheduler.step(plateau_metrics()[epoch]); the state is saved after save_epoch epochs
# (optimizer and scheduler) for the load test.
PLATEAU_EPOCH_CASES = [
    {"name": "sgd_momentum_plateau", "optimizer": "sgd", "kwargs": {"lr": 0.05, "momentum": 0.9},
     "plateau": {"factor": 0.5, "patience": 2, "cooldown": 1}, "steps_per_epoch": 3,
     "save_epoch": 30},
    {"name": "adamw_plateau_min_lr", "optimizer": "adamw",
     "kwargs": {"lr": 0.01, "weight_decay": 0.1},
     "plateau": {"factor": 0.3, "patience": 1, "min_lr": 0.0005, "threshold": 0.002},
     "steps_per_epoch": 3, "save_epoch": 24},
]  # fmt: skip


PLATEAU_CASES = [
    {"lr": 0.1, "kwargs": {"factor": 0.5, "patience": 3}},
    {"lr": 0.1, "kwargs": {"factor": 0.3, "patience": 2, "cooldown": 3, "min_lr": 0.005}},
    {"lr": 0.1, "kwargs": {"mode": "max", "factor": 0.5, "patience": 1, "threshold": 0.01,
                           "threshold_mode": "abs"}},
]  # fmt: skip


# Complex parameters: PyTorch optimizes a complex parameter as its view_as_real (each
# part its own real parameter). One complex parameter of 4 entries and a real one of 2,
# g_t = h * (p_t - c) + n_t with complex c and noise, for COMPLEX_STEPS steps; the state
# is saved after COMPLEX_SAVE_AT steps for the load test.
COMPLEX_STEPS = 40
COMPLEX_SAVE_AT = 20
COMPLEX_CASES = [
    _case("adam", "adam_complex", lr=0.05, weight_decay=0.01, amsgrad=True),
    _case("adamw", "adamw_complex", lr=0.05),
    _case("rmsprop", "rmsprop_complex", lr=0.01, momentum=0.5, centered=True),
    _case("adagrad", "adagrad_complex", lr=0.1),
    _case("adadelta", "adadelta_complex", lr=1.0),
    _case("adamax", "adamax_complex", lr=0.05),
    _case("nadam", "nadam_complex", lr=0.05),
    _case("radam", "radam_complex", lr=0.05),
    _case("rprop", "rprop_complex", lr=0.05),
    _case("sgd", "sgd_complex", lr=0.05, momentum=0.9, nesterov=True),
    _case("asgd", "asgd_complex", lr=0.05, t0=10.0),
]


def complex_problem() -> dict:
    """p0 (a complex vector of 4 and a real one of 2), h, c and the noise, seeded."""
    rng = np.random.default_rng(20261129)

    def pair(size):
        return rng.standard_normal(size) + 1j * rng.standard_normal(size), rng.standard_normal(2)

    p0, h, c = pair(4), [rng.uniform(0.5, 2.0, 4), rng.uniform(0.5, 2.0, 2)], pair(4)
    noise = [0.1 * (rng.standard_normal((COMPLEX_STEPS, 4))
                    + 1j * rng.standard_normal((COMPLEX_STEPS, 4))),
             0.1 * rng.standard_normal((COMPLEX_STEPS, 2))]  # fmt: skip
    return {"p0": list(p0), "h": h, "c": list(c), "noise": noise}


def as_pairs(x) -> list:
    """An array as nested lists, complex entries as [real, imaginary] pairs."""
    x = np.asarray(x)
    if np.iscomplexobj(x):
        x = np.stack([x.real, x.imag], axis=-1)
    return x.tolist()
