"""Records whole training recipes in PyTorch and Keras for the compat recipe tests.

Single optimizers and schedulers are recorded by ``record_torch.py`` and
``record_keras.py``; here their conventions meet in the recipes users port. Run from
the repository root, once with PyTorch and once with Keras 3 (JAX backend)::

    python tests/golden/record_recipes.py torch
    python tests/golden/record_recipes.py keras

It writes ``tests/golden/torch_recipes.json`` and ``tests/golden/keras_recipes.json``:
the float64 parameters after every optimizer update (PyTorch) or call (Keras) of a tiny
tanh MLP (3 -> 4 -> 2, squared error) on six fixed micro-batches of 4 examples taken in
turn, at the updates or calls of ``snapshots``. The data and initial parameters are in
the files, so the tests need neither PyTorch, Keras nor the seed.

PyTorch (40 updates, each on 3 micro-batches, ``loss / 3``): the Hugging Face recipe,
``AdamW`` with two param groups (no decay on biases), ``LambdaLR`` with
transformers' ``get_cosine_schedule_with_warmup`` lambda, ``clip_grad_norm_`` before
``optimizer.step()`` and ``zero_grad(set_to_none=True)``, with its ``state_dict()`` after
17 updates; and the same with ``SGD(momentum=0.9, nesterov=True)`` and ``OneCycleLR``
(``cycle_momentum`` on). Keras (60 calls of ``apply_gradients``):
``AdamW(CosineDecay(0, 40, alpha=0.1, warmup_target=0.05, warmup_steps=10),
weight_decay=0.1, global_clipnorm=0.5, gradient_accumulation_steps=3, use_ema=True,
ema_momentum=0.9)`` with the biases excluded from weight decay (and its moving average);
the same with ``gradient_accumulation_steps=2, ema_overwrite_frequency=4``; and
``SGD(PiecewiseConstantDecay([10, 25], [0.1, 0.05, 0.01]), momentum=0.9,
nesterov=True, weight_decay=0.1, global_clipnorm=0.5)``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MICRO_BATCH, MICRO_BATCHES = 4, 6
ACCUMULATION, UPDATES, WARMUP, SAVE_AT = 3, 40, 5, 17
KERAS_CALLS = 60
# the rows kept (updates or calls counted from 1): the first ones, where warmup,
# accumulation and Keras' first average act, then every fifth
TORCH_SNAPSHOTS = (1, 2, 3, 5, 10, 15, 17, 18, 20, 25, 30, 35, 40)
KERAS_SNAPSHOTS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60)


def recipe_problem() -> dict:
    """The data and the initial parameters (PyTorch's layout: weights are (out, in))."""
    rng = np.random.default_rng(20261130)
    return {
        "x": rng.standard_normal((MICRO_BATCH * MICRO_BATCHES, 3)),
        "y": rng.standard_normal((MICRO_BATCH * MICRO_BATCHES, 2)),
        "p0": {
            "fc1.weight": 0.5 * rng.standard_normal((4, 3)),
            "fc1.bias": 0.1 * rng.standard_normal(4),
            "fc2.weight": 0.5 * rng.standard_normal((2, 4)),
            "fc2.bias": 0.1 * rng.standard_normal(2),
        },
    }


def micro_batch(problem: dict, call: int) -> tuple:
    start = (call % MICRO_BATCHES) * MICRO_BATCH
    return problem["x"][start : start + MICRO_BATCH], problem["y"][start : start + MICRO_BATCH]


def hf_cosine_lambda(step: int) -> float:
    """transformers' ``get_cosine_schedule_with_warmup`` (num_cycles=0.5)."""
    if step < WARMUP:
        return float(step) / float(max(1, WARMUP))
    progress = float(step - WARMUP) / float(max(1, UPDATES - WARMUP))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def _as_list(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def record_torch(problem: dict) -> dict:
    """The PyTorch cases, float64 (the tensors are made from float64 arrays)."""
    import torch

    def run(make_optimizer, make_scheduler):
        named = [(name, torch.tensor(p, requires_grad=True)) for name, p in problem["p0"].items()]
        tensors = dict(named)
        groups = [
            {"params": [(n, p) for n, p in named if "bias" not in n], "weight_decay": 0.1},
            {"params": [(n, p) for n, p in named if "bias" in n], "weight_decay": 0.0},
        ]
        optimizer = make_optimizer(groups)
        scheduler = make_scheduler(optimizer)
        rows, saved = [], None
        for update in range(UPDATES):
            for micro in range(ACCUMULATION):
                x, y = (
                    torch.tensor(a) for a in micro_batch(problem, update * ACCUMULATION + micro)
                )
                hidden = torch.tanh(x @ tensors["fc1.weight"].T + tensors["fc1.bias"])
                out = hidden @ tensors["fc2.weight"].T + tensors["fc2.bias"]
                (((out - y) ** 2).mean() / ACCUMULATION).backward()
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), 0.5)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            rows.append(np.concatenate([p.detach().numpy().ravel() for _, p in named]))
            if update + 1 == SAVE_AT:  # state_dict() holds the live tensors: copy it
                saved = copy.deepcopy(optimizer.state_dict())
        return np.array(rows)[[s - 1 for s in TORCH_SNAPSHOTS]], saved

    sched = torch.optim.lr_scheduler
    hf, saved = run(
        lambda groups: torch.optim.AdamW(groups, lr=3e-2),
        lambda optimizer: sched.LambdaLR(optimizer, hf_cosine_lambda),
    )
    sgd, _ = run(
        lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True),
        lambda optimizer: sched.OneCycleLR(optimizer, max_lr=0.2, total_steps=UPDATES),
    )
    state_dict = {
        "state": {
            str(i): {k: _as_list(v.detach().numpy()) for k, v in s.items()}
            for i, s in saved["state"].items()
        },
        "param_groups": [
            {"params": g["params"], "param_names": g["param_names"]} for g in saved["param_groups"]
        ],
    }
    return {
        "torch": torch.__version__,
        "snapshots": TORCH_SNAPSHOTS,
        "cases": {
            "hf_adamw": {"params": hf.tolist(), "saved_at": SAVE_AT, "state_dict": state_dict},
            "sgd_nesterov_one_cycle": {"params": sgd.tolist()},
        },
    }


def record_keras(problem: dict) -> dict:
    """The Keras cases; call it with ``jax_enable_x64`` on and Keras' floatx float64."""
    import jax
    import keras

    # Keras' layout: kernels are (in, out)
    p0 = {
        n.replace(".weight", "_kernel").replace(".bias", "_bias"): p
        for n, p in problem["p0"].items()
    }
    p0 = {n: p.T if n.endswith("kernel") else p for n, p in p0.items()}

    def loss(p, x, y):
        hidden = jax.numpy.tanh(x @ p["fc1_kernel"] + p["fc1_bias"])
        return (((hidden @ p["fc2_kernel"] + p["fc2_bias"]) - y) ** 2).mean()

    grad = jax.jit(jax.grad(loss))

    def run(optimizer):
        variables = {n: keras.Variable(p, name=n, dtype="float64") for n, p in p0.items()}
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        optimizer.build(list(variables.values()))
        rows, averages = [], []
        for call in range(KERAS_CALLS):
            g = grad({n: v.value for n, v in variables.items()}, *micro_batch(problem, call))
            optimizer.apply_gradients([(g[n], v) for n, v in variables.items()])
            rows.append(np.concatenate([np.asarray(v.value).ravel() for v in variables.values()]))
            if optimizer.use_ema:
                average = optimizer._model_variables_moving_average
                averages.append(np.concatenate([np.asarray(a.value).ravel() for a in average]))
        kept = [s - 1 for s in KERAS_SNAPSHOTS]
        out = {"params": np.array(rows)[kept].tolist()}
        if averages:
            out["average"] = np.array(averages)[kept].tolist()
        return out

    def cosine():
        return keras.optimizers.schedules.CosineDecay(
            0.0, 40, alpha=0.1, warmup_target=0.05, warmup_steps=10
        )

    clip_decay = {"weight_decay": 0.1, "global_clipnorm": 0.5}
    ema = {"use_ema": True, "ema_momentum": 0.9}
    adamw = keras.optimizers.AdamW
    piecewise = keras.optimizers.schedules.PiecewiseConstantDecay([10, 25], [0.1, 0.05, 0.01])
    return {
        "keras": keras.__version__,
        "snapshots": KERAS_SNAPSHOTS,
        "cases": {
            "adamw_accumulation_ema": run(
                adamw(cosine(), gradient_accumulation_steps=3, **clip_decay, **ema)
            ),
            "adamw_accumulation_ema_overwrite": run(
                adamw(
                    cosine(),
                    gradient_accumulation_steps=2,
                    ema_overwrite_frequency=4,
                    **clip_decay,
                    **ema,
                )
            ),
            "sgd_nesterov_piecewise": run(
                keras.optimizers.SGD(piecewise, momentum=0.9, nesterov=True, **clip_decay)
            ),
        },
    }


def main() -> None:
    library = sys.argv[1] if len(sys.argv) > 1 else ""
    if library not in ("torch", "keras"):
        raise SystemExit("usage: python tests/golden/record_recipes.py torch|keras")
    problem = recipe_problem()
    if library == "torch":
        recorded = record_torch(problem)
    else:
        os.environ["KERAS_BACKEND"] = "jax"
        import jax
        import keras

        jax.config.update("jax_enable_x64", True)
        keras.config.set_floatx("float64")
        recorded = record_keras(problem)
    recorded["problem"] = {
        "x": problem["x"].tolist(),
        "y": problem["y"].tolist(),
        "p0": {n: p.tolist() for n, p in problem["p0"].items()},
        "micro_batch": MICRO_BATCH,
        "micro_batches": MICRO_BATCHES,
    }
    path = HERE / f"{library}_recipes.json"
    path.write_text(json.dumps(recorded, separators=(",", ":")) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
