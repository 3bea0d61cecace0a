"""Records PyTorch's optimizer trajectories and scheduler values for the compat tests.

Run from the repository root with the CPU wheel installed (``pip install torch==2.13.0``)::

    python tests/golden/record_torch.py

It writes ``tests/golden/torch_optimizers.json`` (trajectories of every optimizer over
option combinations, float64 and float32, plus runs continued from a saved
``state_dict``, runs on complex parameters, and per-epoch ``ReduceLROnPlateau`` runs
with the optimizer's and the scheduler's state saved mid-run) and
``tests/golden/torch_schedulers.json`` (200 learning rates of each scheduler). The tests
read them without PyTorch; ``tests/test_compat_live.py`` reruns the same cases against
the installed PyTorch through the functions here. A rerun reproduces the float64 values
to ~1e-15 and the float32 ones to ~2e-6 relative (PyTorch's CPU kernels round
differently from run to run), so cases added later were appended to the files without
rewriting the others.

The problem (``golden_problem.py``): three small parameter arrays, gradients
``g_t = sign * h * (p_t - c) + n_t`` from a fixed quadratic plus a fixed noise sequence.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden_problem import (  # noqa: E402
    COMPLEX_CASES,
    COMPLEX_SAVE_AT,
    COMPLEX_STEPS,
    LOAD_CASES,
    OPTIMIZER_CASES,
    PLATEAU_CASES,
    PLATEAU_EPOCH_CASES,
    SCHEDULER_CASES,
    SHAPES,
    SNAPSHOTS,
    STEPS,
    as_pairs,
    complex_problem,
    plateau_metrics,
    problem,
    problem_arrays,
)

TORCH_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adadelta": torch.optim.Adadelta,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "rprop": torch.optim.Rprop,
    "asgd": torch.optim.ASGD,
}

S = torch.optim.lr_scheduler
TORCH_SCHEDULERS = {
    "step_lr": lambda o, base_lr, **k: S.StepLR(o, **k),
    "multistep_lr": lambda o, base_lr, **k: S.MultiStepLR(o, **k),
    "exponential_lr": lambda o, base_lr, **k: S.ExponentialLR(o, **k),
    "cosine_annealing_lr": lambda o, base_lr, **k: S.CosineAnnealingLR(o, **k),
    "cosine_annealing_warm_restarts": lambda o, base_lr, **k: S.CosineAnnealingWarmRestarts(o, **k),
    "cyclic_lr": lambda o, base_lr, **k: S.CyclicLR(o, base_lr, **{"cycle_momentum": False, **k}),
    "one_cycle_lr": lambda o, max_lr, **k: S.OneCycleLR(
        o, max_lr, **{"cycle_momentum": False, **k}
    ),
    "linear_lr": lambda o, base_lr, **k: S.LinearLR(o, **k),
    "constant_lr": lambda o, base_lr, **k: S.ConstantLR(o, **k),
    "polynomial_lr": lambda o, base_lr, **k: S.PolynomialLR(o, **k),
}


def _initial_lr(name: str, kwargs: dict) -> float:
    if name == "one_cycle_lr":
        return kwargs["max_lr"]
    if name == "sequential_lr":
        return kwargs["schedules"][0]["kwargs"]["base_lr"]
    return kwargs["base_lr"]


def make_scheduler(optimizer, name: str, kwargs: dict):
    """The PyTorch scheduler for a case of ``SCHEDULER_CASES`` on ``optimizer``."""
    if name == "sequential_lr":
        inner = [
            make_scheduler(optimizer, spec["name"], spec["kwargs"]) for spec in kwargs["schedules"]
        ]
        return S.SequentialLR(optimizer, inner, milestones=kwargs["milestones"])
    kwargs = dict(kwargs)
    first = kwargs.pop("max_lr") if name == "one_cycle_lr" else kwargs.pop("base_lr")
    return TORCH_SCHEDULERS[name](optimizer, first, **kwargs)


def torch_kwargs(kwargs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def run_optimizer(case: dict, dtype: str, *, steps: int = STEPS, save_at: int | None = None):
    """Runs a case in PyTorch; returns the snapshots (and the state saved at ``save_at``)."""
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    torch.set_default_dtype(torch_dtype)
    prob = problem(dtype)
    params = [torch.tensor(p, requires_grad=True) for p in prob["p0"]]
    optimizer = TORCH_OPTIMIZERS[case["optimizer"]](params, **torch_kwargs(case["kwargs"]))
    scheduler = None
    if case.get("schedule"):
        schedule = case["schedule"]
        kwargs = dict(schedule["kwargs"])
        if case.get("momentum_schedule"):  # the same scheduler, cycling the momentum too
            momentum = case["momentum_schedule"]["kwargs"]
            kwargs["cycle_momentum"] = True
            for name in ("base_momentum", "max_momentum"):
                if name in momentum:
                    kwargs[name] = momentum[name]
        scheduler = make_scheduler(optimizer, schedule["name"], kwargs)
    h = [torch.tensor(x) for x in prob["h"]]
    c = [torch.tensor(x) for x in prob["c"]]
    noise = [[torch.tensor(x) for x in step] for step in prob["noise"]]
    sign = -1.0 if case["kwargs"].get("maximize") else 1.0
    snapshots, saved = [], None
    for t in range(steps):
        with torch.no_grad():
            for i, p in enumerate(params):
                p.grad = sign * (h[i] * (p - c[i])) + noise[t][i]
        if case.get("clip_grad_norm"):
            torch.nn.utils.clip_grad_norm_(params, **case["clip_grad_norm"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if t + 1 in SNAPSHOTS:
            snapshots.append(np.concatenate([p.detach().numpy().ravel() for p in params]))
        if save_at is not None and t + 1 == save_at:
            saved = {
                "params": [p.detach().numpy().tolist() for p in params],
                "state_dict": _state_dict_as_lists(optimizer.state_dict()),
            }
    extra = {}
    if case["optimizer"] == "asgd":
        ax = [optimizer.state[p]["ax"] for p in params]
        extra["average"] = np.concatenate([a.numpy().ravel() for a in ax])
    torch.set_default_dtype(torch.float32)
    return np.stack(snapshots), extra, saved


def run_complex_case(case: dict) -> dict:
    """A ``COMPLEX_CASES`` case in float64: the parameters after every step (complex
    entries as [real, imaginary] pairs) and the state_dict after ``COMPLEX_SAVE_AT``."""
    torch.set_default_dtype(torch.float64)
    prob = complex_problem()
    params = [torch.tensor(p, requires_grad=True) for p in prob["p0"]]
    optimizer = TORCH_OPTIMIZERS[case["optimizer"]](params, **torch_kwargs(case["kwargs"]))
    trajectory, saved = [], None
    for t in range(COMPLEX_STEPS):
        with torch.no_grad():
            for i, p in enumerate(params):
                p.grad = torch.tensor(prob["h"][i]) * (p - torch.tensor(prob["c"][i]))
                p.grad += torch.tensor(prob["noise"][i][t])
        optimizer.step()
        trajectory.append([as_pairs(p.detach().numpy()) for p in params])
        if t + 1 == COMPLEX_SAVE_AT:
            saved = {
                "params": [as_pairs(p.detach().numpy()) for p in params],
                "state_dict": _state_dict_as_lists(optimizer.state_dict(), as_pairs),
            }
    torch.set_default_dtype(torch.float32)
    return dict(case, trajectory=trajectory, saved=saved)


def _state_dict_as_lists(state_dict: dict, to_list=None) -> dict:
    def convert(value):
        if isinstance(value, torch.Tensor):
            array = value.detach().numpy()
            return to_list(array) if to_list else array.tolist()
        return value

    return {
        "state": {
            str(i): {k: convert(v) for k, v in s.items()} for i, s in state_dict["state"].items()
        },
        "param_groups": [{"params": g["params"]} for g in state_dict["param_groups"]],
    }


def scheduler_values(name: str, kwargs: dict, steps: int = STEPS) -> np.ndarray:
    """The learning rate of each of ``steps`` optimizer steps under a PyTorch scheduler."""
    torch.set_default_dtype(torch.float64)
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=_initial_lr(name, kwargs))
    scheduler = make_scheduler(optimizer, name, kwargs)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.zeros(1)
        optimizer.step()
        scheduler.step()
    torch.set_default_dtype(torch.float32)
    return np.asarray(values, np.float64)


def plateau_values(lr: float, kwargs: dict, metrics: list[float]) -> np.ndarray:
    """The learning rate after each ``ReduceLROnPlateau.step(metric)``."""
    torch.set_default_dtype(torch.float64)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = S.ReduceLROnPlateau(optimizer, **kwargs)
    values = []
    for metric in metrics:
        scheduler.step(metric)
        values.append(optimizer.param_groups[0]["lr"])
    torch.set_default_dtype(torch.float32)
    return np.asarray(values, np.float64)


def run_plateau_epochs(case: dict) -> dict:
    """A ``PLATEAU_EPOCH_CASES`` case in float64: the parameters after every epoch, the
    learning rate of every epoch, and the optimizer's and the scheduler's state_dict()
    after ``save_epoch`` epochs (PyTorch's usual loop: the epoch's optimizer steps, then
    ``scheduler.step(metric)``)."""
    torch.set_default_dtype(torch.float64)
    prob = problem("float64")
    params = [torch.tensor(p, requires_grad=True) for p in prob["p0"]]
    optimizer = TORCH_OPTIMIZERS[case["optimizer"]](params, **torch_kwargs(case["kwargs"]))
    scheduler = S.ReduceLROnPlateau(optimizer, **case["plateau"])
    h = [torch.tensor(x) for x in prob["h"]]
    c = [torch.tensor(x) for x in prob["c"]]
    k = case["steps_per_epoch"]
    epochs, lrs, saved = [], [], None
    for epoch, metric in enumerate(plateau_metrics()):
        lrs.append(optimizer.param_groups[0]["lr"])
        for t in range(epoch * k, (epoch + 1) * k):
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.grad = h[i] * (p - c[i]) + torch.tensor(prob["noise"][t][i])
            optimizer.step()
        scheduler.step(metric)
        epochs.append(np.concatenate([p.detach().numpy().ravel() for p in params]).tolist())
        if epoch + 1 == case["save_epoch"]:
            saved = {
                "params": [p.detach().numpy().tolist() for p in params],
                "state_dict": _state_dict_as_lists(optimizer.state_dict()),
                "scheduler_state_dict": scheduler.state_dict(),
            }
    torch.set_default_dtype(torch.float32)
    return dict(case, epochs=epochs, lrs=lrs, saved=saved)


def _fmt(array: np.ndarray, dtype: str) -> list:
    if dtype == "float32":
        return [float(f"{x:.9g}") for x in np.asarray(array).ravel()]
    return [float(x) for x in np.asarray(array).ravel()]


def main() -> None:
    cases = []
    for case in OPTIMIZER_CASES:
        record = dict(case)
        for dtype in ("float64", "float32"):
            snapshots, extra, _ = run_optimizer(case, dtype)
            record[dtype] = {"params": [_fmt(s, dtype) for s in snapshots]}
            for key, value in extra.items():
                record[dtype][key] = _fmt(value, dtype)
        cases.append(record)
    loads = []
    for case in LOAD_CASES:
        record = dict(case)
        snapshots, _, saved = run_optimizer(case, "float64", save_at=case["save_at"])
        record["saved"] = saved
        record["params"] = [_fmt(s, "float64") for s in snapshots]
        loads.append(record)
    torch_version = torch.__version__
    optimizers = {
        "torch": torch_version,
        "shapes": SHAPES,
        "snapshots": SNAPSHOTS,
        "problem": {k: v.tolist() for k, v in problem_arrays().items()},
        "cases": cases,
        "load_cases": loads,
        "complex_problem": {k: [as_pairs(x) for x in v] for k, v in complex_problem().items()},
        "complex_cases": [run_complex_case(case) for case in COMPLEX_CASES],
        "plateau_epoch_cases": [run_plateau_epochs(case) for case in PLATEAU_EPOCH_CASES],
    }
    schedulers = {
        "torch": torch_version,
        "cases": [
            dict(case, values=scheduler_values(case["name"], case["kwargs"]).tolist())
            for case in SCHEDULER_CASES
        ],
        "plateau_metrics": plateau_metrics(),
        "plateau_cases": [
            dict(
                case, values=plateau_values(case["lr"], case["kwargs"], plateau_metrics()).tolist()
            )
            for case in PLATEAU_CASES
        ],
    }
    for name, content in (
        ("torch_optimizers.json", optimizers),
        ("torch_schedulers.json", schedulers),
    ):
        (HERE / name).write_text(json.dumps(content, separators=(",", ":")))
        print(f"wrote {name}: {(HERE / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
