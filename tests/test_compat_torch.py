"""gradtx.compat.torch reproduces torch.optim and its schedulers, checked on golden runs.

The golden files are written by ``tests/golden/record_torch.py`` (PyTorch 2.13): each
optimizer over its option combinations for 200 steps of a fixed noisy quadratic, in
float64 (compared within 1e-10 relative) and float32 (within 1e-5).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import eager_kernels
from gradtx.compat import torch as tc
from gradtx.compat.torch import clip_grad, lr_scheduler

GOLDEN = Path(__file__).parent / "golden"
OPTIMIZERS = json.loads((GOLDEN / "torch_optimizers.json").read_text())
SCHEDULERS = json.loads((GOLDEN / "torch_schedulers.json").read_text())
TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-5)}


def split(flat, shapes):
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[..., start : start + size].reshape(*flat.shape[:-1], *shape))
        start += size
    return out


def build_schedule(spec):
    kwargs = dict(spec["kwargs"])
    if spec["name"] == "sequential_lr":
        kwargs["schedules"] = [build_schedule(s) for s in kwargs["schedules"]]
    return getattr(lr_scheduler, spec["name"])(**kwargs)


def build_optimizer(case, *, injected=False):
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in case["kwargs"].items()}
    if case.get("schedule"):
        kwargs["lr"] = build_schedule(case["schedule"])
    if case.get("momentum_schedule"):  # PyTorch's cycle_momentum: betas[0] or momentum
        momentum = build_schedule(case["momentum_schedule"])
        if case["optimizer"] in ("sgd", "rmsprop"):
            kwargs["momentum"] = momentum
        else:
            kwargs["betas"] = (momentum, kwargs.get("betas", (0.9, 0.999))[1])
    factory = getattr(tc, case["optimizer"])
    tx = gtx.schedule_injection(factory)(**kwargs) if injected else factory(**kwargs)
    if case.get("clip_grad_norm"):  # clip_grad_norm_ before optimizer.step()
        tx = gtx.chain(tc.clip_grad_norm(**case["clip_grad_norm"]), tx)
    return tx


def run(tx, dtype, *, sign=1.0, params=None, state=None, first_step=0):
    """Runs the golden problem from ``first_step`` to the end; returns (trajectory, state).

    The trajectory holds the flattened parameters after every step.
    """
    return run_together({None: (tx, sign)}, dtype, params, state, first_step)[None]


def run_together(runs, dtype, params=None, state=None, first_step=0):
    """``run`` for each ``name: (tx, sign)`` of ``runs``, one compiled ``lax.scan`` for all
    (one larger compilation costs far less than many small ones); ``state`` is only for
    one run."""
    shapes = [tuple(s) for s in OPTIMIZERS["shapes"]]
    problem = {k: np.asarray(v, np.float64) for k, v in OPTIMIZERS["problem"].items()}
    h = [jnp.asarray(x, dtype) for x in split(problem["h"], shapes)]
    c = [jnp.asarray(x, dtype) for x in split(problem["c"], shapes)]
    noise = jnp.asarray(problem["noise"][first_step:], dtype)
    if params is None:
        params = [jnp.asarray(x, dtype) for x in split(problem["p0"], shapes)]
    states = {name: tx.init(params) if state is None else state for name, (tx, _) in runs.items()}

    @jax.jit
    def trajectories(states, noise):
        def step(carry, noise_t):
            n = split(noise_t, shapes)
            carry, flat = dict(carry), {}
            for name, (tx, sign) in runs.items():
                params, state = carry[name]
                grads = [sign * (h[i] * (p - c[i])) + n[i] for i, p in enumerate(params)]
                updates, state = tx.update(grads, state, params)
                params = gtx.apply_updates(params, updates)
                carry[name] = params, state
                flat[name] = jnp.concatenate([p.ravel() for p in params])
            return carry, flat

        carry = {name: (params, state) for name, state in states.items()}
        carry, flat = jax.lax.scan(step, carry, noise)
        return {name: (flat[name], carry[name][1]) for name in runs}

    return trajectories(states, noise)


def snapshot_rows(first_step=0):
    return [s - 1 - first_step for s in OPTIMIZERS["snapshots"] if s > first_step]


def sign_of(case):
    return -1.0 if case["kwargs"].get("maximize") else 1.0


@functools.cache
def float64_runs():
    """(trajectory, state) of every golden case in float64, one compilation for all (44
    compiled one by one took twice as long); called under x64."""
    assert jax.config.read("jax_enable_x64"), "the x64 fixture first"
    runs = {name: (build_optimizer(case), sign_of(case)) for name, case in CASES.items()}
    return jax.device_get(run_together(runs, "float64"))


def check_case(case, dtype):
    if dtype == "float64":
        flat, state = float64_runs()[case["name"]]
    else:
        flat, state = run(build_optimizer(case), dtype, sign=sign_of(case))
    expected = np.asarray(case[dtype]["params"])
    np.testing.assert_allclose(
        np.asarray(flat)[snapshot_rows()], expected, **TOLERANCE[dtype], err_msg=case["name"]
    )
    if "average" in case[dtype]:
        average = np.concatenate([np.ravel(a) for a in state["asgd"].average])
        np.testing.assert_allclose(average, case[dtype]["average"], **TOLERANCE[dtype])


CASES = {case["name"]: case for case in OPTIMIZERS["cases"]}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_trajectory_matches_pytorch_within_1e10(name, x64):
    check_case(CASES[name], "float64")


# float32 differs from PyTorch only by rounding (gradtx's float32 bias corrections against
# PyTorch's doubles): one case per optimizer keeps the suite fast.
FLOAT32_CASES = sorted(
    {case["optimizer"]: case["name"] for case in OPTIMIZERS["cases"][::-1]}.values()
)


@pytest.mark.parametrize("name", FLOAT32_CASES)
def test_float32_trajectory_matches_pytorch_within_1e5(name):
    check_case(CASES[name], "float32")


def test_golden_cases_cover_every_optimizer_and_its_options():
    optimizers = {case["optimizer"] for case in OPTIMIZERS["cases"]}
    assert optimizers == {
        "sgd", "adam", "adamw", "adagrad", "rmsprop", "adadelta", "adamax", "nadam",
        "radam", "rprop", "asgd",
    }  # fmt: skip
    options = {k for case in OPTIMIZERS["cases"] for k, v in case["kwargs"].items() if v}
    for option in ("amsgrad", "nesterov", "dampening", "centered", "momentum", "weight_decay",
                   "maximize", "decoupled_weight_decay", "lr_decay"):  # fmt: skip
        assert option in options, option
    # lr as a schedule on every optimizer (Adagrad divides it by its lr_decay term, ASGD's
    # eta_k reads it, Rprop takes it once as its first step size) ...
    scheduled = {case["optimizer"] for case in OPTIMIZERS["cases"] if case.get("schedule")}
    assert scheduled == optimizers
    # ... and maximize through the shared chain and where an optimizer builds its own
    maximized = {
        case["optimizer"] for case in OPTIMIZERS["cases"] if case["kwargs"].get("maximize")
    }
    assert {"sgd", "adam", "rprop", "asgd"} <= maximized
    cycled = {case["optimizer"] for case in OPTIMIZERS["cases"] if case.get("momentum_schedule")}
    # every optimizer PyTorch's cycle_momentum applies to (those with momentum or betas)
    assert cycled == {"sgd", "adam", "adamw", "rmsprop", "adamax", "nadam", "radam"}


@pytest.mark.parametrize("case", OPTIMIZERS["load_cases"], ids=lambda c: c["name"])
def test_run_continued_from_a_pytorch_state_dict_stays_on_the_pytorch_trajectory(case, x64):
    _, actual, expected = continue_from_pytorch(case, build_optimizer(case))
    np.testing.assert_allclose(actual, expected, **TOLERANCE["float64"])


LOAD_CASES = {case["name"]: case for case in OPTIMIZERS["load_cases"]}


def continue_from_pytorch(case, tx):
    saved = case["saved"]
    params = [jnp.asarray(p, jnp.float64) for p in saved["params"]]
    state = tc.load_state_dict(tx, saved["state_dict"], params)
    flat, _ = run(tx, "float64", params=params, state=state, first_step=case["save_at"])
    expected = [
        p
        for s, p in zip(OPTIMIZERS["snapshots"], case["params"], strict=True)
        if s > case["save_at"]
    ]
    return state, np.asarray(flat)[snapshot_rows(case["save_at"])], expected


def test_a_run_under_schedule_injection_continues_its_schedule_from_pytorchs_step(x64):
    """StepLR halves the rate at steps 30, 60, ...: restarted at 0, the continued run
    would use 0.01 instead of 0.005 from step 51 and leave PyTorch's trajectory."""
    case = LOAD_CASES["adamw_step_lr_load"]
    state, actual, expected = continue_from_pytorch(case, build_optimizer(case, injected=True))
    assert int(state.count) == case["save_at"]
    assert int(state.inner_state["adam"].count) == case["save_at"]
    # injected hyperparameters are float32: 0.005 and 0.1 within 3e-9, 1.2e-7 after 150 steps
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_load_state_dict_fills_a_partition_of_optimizers_pytorchs_param_groups(x64):
    """Two param groups with their own learning rates: each parameter's buffers go to
    the transform of its group, the other group's state keeps its None leaves."""
    torch_state = {
        "state": {
            0: {"step": 4.0, "exp_avg": np.full(2, 0.1), "exp_avg_sq": np.full(2, 0.2)},
            1: {"step": 4.0, "exp_avg": np.full(3, 0.3), "exp_avg_sq": np.full(3, 0.4)},
        },
        "param_groups": [{"params": [0], "lr": 0.1}, {"params": [1], "lr": 0.01}],
    }
    params = {"a": jnp.zeros(2), "b": jnp.ones(3)}
    tx = gtx.partition({"fast": tc.adam(0.1), "slow": tc.adam(0.01)}, {"a": "fast", "b": "slow"})
    state = tc.load_state_dict(tx, torch_state, params)
    fast, slow = state.inner_states["fast"]["adam"], state.inner_states["slow"]["adam"]
    assert int(fast.count) == int(slow.count) == 4
    assert fast.mu["b"] is None and slow.mu["a"] is None
    np.testing.assert_array_equal(fast.nu["a"], [0.2, 0.2])
    np.testing.assert_array_equal(slow.mu["b"], [0.3, 0.3, 0.3])


def test_load_state_dict_takes_sgd_param_groups_with_and_without_momentum(x64):
    """PyTorch's SGD keeps no state for a group without momentum, after any number of
    steps: those parameters are not "not stepped yet" when another group's are."""
    sgd_group = {"lr": 0.1, "dampening": 0, "nesterov": False, "weight_decay": 0}
    torch_state = {
        "state": {0: {"momentum_buffer": np.array([3.8, 3.8])}},
        "param_groups": [
            {**sgd_group, "params": [0], "momentum": 0.9},
            {**sgd_group, "params": [1], "momentum": 0},
        ],
    }
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    tx = gtx.partition({"A": tc.sgd(0.1, momentum=0.9), "B": tc.sgd(0.1)}, {"a": "A", "b": "B"})
    state = tc.load_state_dict(tx, torch_state, params)
    np.testing.assert_array_equal(state.inner_states["A"]["momentum"].trace["a"], [3.8, 3.8])
    # saved before the first step: the init state
    fresh = tc.load_state_dict(tx, dict(torch_state, state={}), params)
    np.testing.assert_array_equal(fresh.inner_states["A"]["momentum"].trace["a"], [0.0, 0.0])
    # a parameter of the momentum group without a buffer is still not stepped yet
    unstepped = dict(torch_state, param_groups=[{**sgd_group, "params": [0, 1], "momentum": 0.9}])
    with pytest.raises(ValueError, match="not stepped parameter 1"):
        tc.load_state_dict(tc.sgd(0.1, momentum=0.9), unstepped, [jnp.ones(2), jnp.ones(3)])


def test_load_state_dict_rejects_parameters_with_different_steps():
    """PyTorch steps a parameter only when it has a gradient; gradtx has one count."""
    torch_state = {
        "state": {
            0: {"step": 20.0, "exp_avg": np.zeros(2), "exp_avg_sq": np.zeros(2)},
            1: {"step": 5.0, "exp_avg": np.zeros(1), "exp_avg_sq": np.zeros(1)},
        },
        "param_groups": [{"params": [0, 1]}],
    }
    with pytest.raises(ValueError, match="parameter 0: 20, parameter 1: 5"):
        tc.load_state_dict(tc.adam(), torch_state, [jnp.zeros(2), jnp.zeros(1)])


@pytest.mark.parametrize(
    "tx",
    [tc.adam(0.1, amsgrad=True), tc.nadam(), tc.rprop(0.3), tc.asgd(), tc.rmsprop(centered=True)],
    ids=["adam_amsgrad", "nadam", "rprop", "asgd", "rmsprop_centered"],
)
def test_load_state_dict_of_an_optimizer_not_stepped_yet_is_the_init_state(tx):
    """PyTorch creates its buffers at the first step: a state_dict saved before it has
    an empty state per parameter, which is tx's init state (Rprop's step sizes at lr)."""
    torch_state = {"state": {}, "param_groups": [{"params": [0, 1]}]}
    params = [jnp.ones(2), jnp.full((1,), 3.0)]
    loaded = tc.load_state_dict(tx, torch_state, params)
    expected = tx.init(params)
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got, want)


def _named_adam_state(names):
    """An Adam state_dict of parameters registered in the order of ``names`` (as
    ``Adam(model.named_parameters())`` records them); parameter i's buffers hold i."""
    state = {
        i: {"step": 3.0, "exp_avg": np.full(2, float(i)), "exp_avg_sq": np.full(2, i + 0.5)}
        for i in range(len(names))
    }
    return {
        "state": state,
        "param_groups": [{"params": list(range(len(names))), "param_names": names}],
    }


def test_load_state_dict_matches_pytorchs_param_names_to_the_params_key_paths():
    """PyTorch registers q, k, v, o in that order; jax.tree.leaves sorts the dict keys
    (k, o, q, v): by position each moment would land on another parameter of the same
    shape, silently. The names match the key paths, so they are matched by name."""
    names = ["attn.q", "attn.k", "attn.v", "attn.o"]
    params = {"attn": {name: jnp.zeros(2) for name in "qkvo"}}
    state = tc.load_state_dict(tc.adam(), _named_adam_state(names), params)
    for i, name in enumerate(names):
        key = name.split(".")[1]
        np.testing.assert_array_equal(state["adam"].mu["attn"][key], [i, i])
        np.testing.assert_array_equal(state["adam"].nu["attn"][key], [i + 0.5, i + 0.5])
    # names that are not the key paths (another framework's): matched by position
    listed = [jnp.zeros(2) for _ in names]
    state = tc.load_state_dict(tc.adam(), _named_adam_state(["fc.w", "fc.b", "x", "y"]), listed)
    np.testing.assert_array_equal([float(m[0]) for m in state["adam"].mu], [0, 1, 2, 3])


def test_load_state_dict_names_a_parameter_pytorch_has_not_stepped_yet():
    torch_state = {
        "state": {0: {"step": 4.0, "exp_avg": np.zeros(2), "exp_avg_sq": np.zeros(2)}},
        "param_groups": [{"params": [0, 1]}],
    }
    with pytest.raises(ValueError, match="not stepped parameter 1 .*stepped parameter 0"):
        tc.load_state_dict(tc.adam(), torch_state, [jnp.zeros(2), jnp.zeros(1)])


@pytest.mark.parametrize(
    "tx, buffers, extra",
    [
        (tc.adam(), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), "max_exp_avg_sq"),
        (tc.rmsprop(), ("square_avg", "grad_avg", "momentum_buffer"), "grad_avg"),
        (tc.sgd(0.1), ("momentum_buffer",), "momentum_buffer"),
    ],
    ids=["amsgrad_into_adam", "centered_momentum_into_rmsprop", "momentum_into_sgd"],
)
def test_load_state_dict_rejects_a_buffer_tx_has_no_place_for(tx, buffers, extra):
    """An option of the PyTorch optimizer that tx lacks is an error, not a dropped buffer."""
    torch_state = {"state": {0: {"step": 3.0, **{b: np.ones(2) for b in buffers}}},
                   "param_groups": [{"params": [0]}]}  # fmt: skip
    with pytest.raises(ValueError, match=f"parameter 0 holds .*'{extra}'.*no place"):
        tc.load_state_dict(tx, torch_state, [jnp.zeros(2)])


def test_load_state_dict_rejects_a_nadam_state_without_mu_product():
    torch_state = {"state": {0: {"step": 3.0, "exp_avg": np.ones(2), "exp_avg_sq": np.ones(2)}},
                   "param_groups": [{"params": [0]}]}  # fmt: skip
    with pytest.raises(ValueError, match="parameter 0 has no 'mu_product'"):
        tc.load_state_dict(tc.nadam(), torch_state, [jnp.zeros(2)])


COMPLEX = OPTIMIZERS["complex_problem"]


def from_pairs(x, index):
    """A recorded array of parameter ``index``: the first is complex, stored as [real,
    imaginary] pairs; the second is real."""
    x = np.asarray(x, np.float64)
    return x[..., 0] + 1j * x[..., 1] if index == 0 and x.ndim else x


def run_complex(tx, params, state, first_step=0):
    h = [jnp.asarray(x) for x in COMPLEX["h"]]
    c = [jnp.asarray(from_pairs(x, i)) for i, x in enumerate(COMPLEX["c"])]
    noise = [jnp.asarray(from_pairs(n, i)[first_step:]) for i, n in enumerate(COMPLEX["noise"])]

    @jax.jit
    def trajectory(params, state):
        def step(carry, n):
            params, state = carry
            grads = [h[i] * (p - c[i]) + n[i] for i, p in enumerate(params)]
            updates, state = tx.update(grads, state, params)
            params = gtx.apply_updates(params, updates)
            return (params, state), params

        return jax.lax.scan(step, (params, state), noise)[1]

    return trajectory(params, state)


@pytest.mark.parametrize("case", OPTIMIZERS["complex_cases"], ids=lambda c: c["name"])
def test_complex_parameters_follow_pytorch_which_optimizes_their_real_and_imaginary_parts(
    case, x64
):
    """PyTorch steps a complex parameter as its view_as_real: Adam's second moment, say,
    is kept per part, not of |g|^2 (Adam's step at the first update is then +-lr in
    each part). Every step of a complex and a real parameter, and a run continued from
    the state saved at step 20 (complex buffers as PyTorch saves them)."""
    tx = build_optimizer(case)
    expected = [[from_pairs(p, i) for i, p in enumerate(step)] for step in case["trajectory"]]
    params = [jnp.asarray(from_pairs(p, i)) for i, p in enumerate(COMPLEX["p0"])]
    actual = run_complex(tx, params, tx.init(params))
    for i in range(2):
        np.testing.assert_allclose(
            actual[i], [step[i] for step in expected], rtol=1e-10, atol=1e-12
        )
    saved = case["saved"]
    params = [jnp.asarray(from_pairs(p, i)) for i, p in enumerate(saved["params"])]
    torch_state = {
        "state": {k: {key: from_pairs(v, int(k)) for key, v in entry.items()}
                  for k, entry in saved["state_dict"]["state"].items()},
        "param_groups": saved["state_dict"]["param_groups"],
    }  # fmt: skip
    save_at = len(expected) // 2
    continued = run_complex(tx, params, tc.load_state_dict(tx, torch_state, params), save_at)
    for i in range(2):
        np.testing.assert_allclose(
            continued[i], [step[i] for step in expected[save_at:]], rtol=1e-10, atol=1e-12
        )


def test_load_state_dict_rejects_a_parameter_count_mismatch():
    torch_state = {"state": {0: {"step": 1.0, "exp_avg": np.zeros(2), "exp_avg_sq": np.zeros(2)}},
                   "param_groups": [{"params": [0]}]}  # fmt: skip
    with pytest.raises(ValueError, match="1 parameters but params has 2 leaves"):
        tc.load_state_dict(tc.adam(), torch_state, [jnp.zeros(2), jnp.zeros(3)])


def test_load_state_dict_names_the_parameters_a_count_mismatch_is_about():
    """With PyTorch's param_names (``named_parameters()``), the error names the parameter
    the params lack or the leaf PyTorch does not know, not only the counts."""
    torch_state = _named_adam_state(["fc.weight", "fc.bias", "out.weight"])
    params = {"fc": {"weight": jnp.zeros(2), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"3 parameters but params has 2 leaves: .*'out.weight'"):
        tc.load_state_dict(tc.adam(), torch_state, params)
    params = {**params, "out": {"weight": jnp.zeros(2), "scale": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"has 4 leaves: the leaves \['out.scale'\] are not"):
        tc.load_state_dict(tc.adam(), torch_state, params)


def test_load_state_dict_rejects_a_shape_mismatch_naming_the_parameter():
    torch_state = {"state": {0: {"step": 1.0, "exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3)}},
                   "param_groups": [{"params": [0]}]}  # fmt: skip
    with pytest.raises(ValueError, match="parameter 0.*shape \\[3\\].*\\[2\\]"):
        tc.load_state_dict(tc.adam(), torch_state, [jnp.zeros(2)])


def test_load_state_dict_names_the_leaf_of_a_shape_mismatch_and_how_it_was_matched():
    """Transformers' param groups (weights, then biases) hold bare tensors: matched by
    order against ``jax.tree.leaves`` (biases first), the error said only "parameter 0";
    it names the leaf and says how to match them."""
    torch_state = {
        "state": {
            0: {"step": 1.0, "exp_avg": np.zeros((2, 3)), "exp_avg_sq": np.zeros((2, 3))},
            1: {"step": 1.0, "exp_avg": np.zeros(2), "exp_avg_sq": np.zeros(2)},
        },
        "param_groups": [{"params": [0]}, {"params": [1]}],
    }
    params = {"fc": {"weight": jnp.zeros((2, 3)), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"parameter 0 \('fc.bias'\).*matched by order.*"
                       r"param_names"):  # fmt: skip
        tc.load_state_dict(tc.adam(), torch_state, params)
    named = dict(torch_state, param_groups=[
        {"params": [0], "param_names": ["fc.weight"]},
        {"params": [1], "param_names": ["fc.bias"]},
    ])  # fmt: skip
    state = tc.load_state_dict(tc.adam(), named, params)
    assert state["adam"].mu["fc"]["weight"].shape == (2, 3)


def test_load_state_dict_rejects_a_state_without_the_needed_buffer():
    torch_state = {"state": {0: {"step": 1.0, "exp_avg": np.zeros(2), "exp_avg_sq": np.zeros(2)}},
                   "param_groups": [{"params": [0]}]}  # fmt: skip
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        tc.load_state_dict(tc.adam(amsgrad=True), torch_state, [jnp.zeros(2)])


class _Tensor:
    """What load_state_dict meets in a bfloat16 PyTorch state, without PyTorch: a tensor
    whose ``numpy()`` refuses bfloat16 and whose ``float()`` widens it (exactly)."""

    def __init__(self, values, dtype="torch.bfloat16"):
        # bfloat16 values, held as float32 (NumPy has no bfloat16; ml_dtypes' is JAX's)
        self.values = np.asarray(np.asarray(values, jnp.bfloat16), np.float32)
        self.dtype = dtype

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        if self.dtype == "torch.bfloat16":
            raise TypeError("Got unsupported ScalarType BFloat16")
        return self.values

    def float(self):
        return _Tensor(self.values, "torch.float32")


def test_load_state_dict_takes_bfloat16_buffers_numpy_cannot_hold():
    """A bfloat16 run's moments (live against PyTorch in test_compat_live.py)."""
    mu, nu = [0.1, -3.5, 1e-3], [2.0, 7e-5, 0.25]
    torch_state = {"state": {0: {"step": _Tensor(2.0), "exp_avg": _Tensor(mu),
                                 "exp_avg_sq": _Tensor(nu)}},
                   "param_groups": [{"params": [0]}]}  # fmt: skip
    state = tc.load_state_dict(tc.adam(), torch_state, [jnp.zeros(3, jnp.bfloat16)])["adam"]
    assert int(state.count) == 2 and state.mu[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(state.mu[0], np.asarray(mu, jnp.bfloat16))
    np.testing.assert_array_equal(state.nu[0], np.asarray(nu, jnp.bfloat16))


SCHEDULER_CASES = SCHEDULERS["cases"]


@pytest.mark.parametrize("index", range(len(SCHEDULER_CASES)))
def test_scheduler_value_at_step_t_is_the_lr_of_the_t_th_pytorch_step(index, x64):
    case = SCHEDULER_CASES[index]
    values = build_schedule(case)(jnp.arange(len(case["values"])))
    assert values.dtype == jnp.float64
    np.testing.assert_allclose(values, case["values"], rtol=1e-10, atol=1e-14, err_msg=str(case))


def test_cosine_annealing_lr_is_periodic_past_t_max_as_pytorch_is():
    case = next(c for c in SCHEDULER_CASES if c["name"] == "cosine_annealing_lr")
    values = np.asarray(case["values"])
    t_max = case["kwargs"]["T_max"]
    assert values[2 * t_max] == pytest.approx(values[0])
    assert values[t_max + 10] > values[t_max]


def test_cosine_annealing_warm_restarts_keeps_its_last_restart_below_int32_max():
    """T_0=3, T_mult=2: restarts begin at 3 (2^k - 1), the last in range at 1,610,612,733
    (its length 1,610,612,736 does not fit in int32). That restart was dropped: 0.0 at
    its first step, and at 2e9 a fraction past 1."""
    schedule = lr_scheduler.cosine_annealing_warm_restarts(1.0, T_0=3, T_mult=2)
    steps = jnp.array([1_610_612_732, 1_610_612_733, 2_000_000_000], jnp.int32)
    begin, length = 1_610_612_733, 1_610_612_736
    fraction = (2_000_000_000 - begin) / length
    expected = [0.5 * (1 + math.cos(math.pi * (length / 2 - 1) / (length / 2))), 1.0,
                0.5 * (1 + math.cos(math.pi * fraction))]  # fmt: skip
    np.testing.assert_allclose(jax.jit(schedule)(steps), expected, atol=1e-6)


PAST_INT32_SCHEDULERS = {
    "step_lr": lambda: lr_scheduler.step_lr(1.0, 10, 0.5),
    "exponential_lr": lambda: lr_scheduler.exponential_lr(1.0, 0.99),
    "cosine_annealing_lr": lambda: lr_scheduler.cosine_annealing_lr(1.0, 7),
    "cosine_annealing_warm_restarts": lambda: lr_scheduler.cosine_annealing_warm_restarts(
        1.0, 5, 2
    ),
    "cyclic_lr": lambda: lr_scheduler.cyclic_lr(0.1, 1.0, 4),
    "one_cycle_lr": lambda: lr_scheduler.one_cycle_lr(1.0, 100),
    "linear_lr": lambda: lr_scheduler.linear_lr(1.0),
    "sequential_lr": lambda: lr_scheduler.sequential_lr(
        [lr_scheduler.constant_lr(1.0), lr_scheduler.exponential_lr(1.0, 0.9)], [5]
    ),
}


@pytest.mark.parametrize("enable_x64", [False, True])
@pytest.mark.parametrize("name", sorted(PAST_INT32_SCHEDULERS))
def test_schedulers_take_a_step_past_int32_as_the_last_int32_step(name, enable_x64):
    """Python int 2**31 was an OverflowError without x64; under x64, int64 2**40 gave
    cosine_annealing_warm_restarts(1, 5, 2) 0.9045 (PyTorch: 0.3455), a restart list that
    ends at int32. As gradtx.schedules: the value at 2**31 - 1, where the counters stop."""
    with jax.enable_x64(enable_x64):
        schedule = PAST_INT32_SCHEDULERS[name]()
        last = float(schedule(2**31 - 1))
        for step in (2**31, 2**31 + 5, 2**40):
            assert float(schedule(step)) == last, step
        if enable_x64:
            assert float(schedule(jnp.asarray(2**40, jnp.int64))) == last


@pytest.mark.parametrize("name", sorted(PAST_INT32_SCHEDULERS))
def test_schedulers_take_a_negative_step_as_step_zero(name):
    """PyTorch never takes a negative step; step_lr(1, 10, 0.5) extrapolated to 2.0 at -1."""
    schedule = PAST_INT32_SCHEDULERS[name]()
    np.testing.assert_array_equal(schedule(jnp.array([-5, -1])), schedule(jnp.array([0, 0])))


def test_constant_lr_with_no_iterations_keeps_the_factor_as_pytorch_does():
    # torch 2.13: ConstantLR(opt, factor=0.3, total_iters=0) gives 0.3 * lr at every step
    schedule = lr_scheduler.constant_lr(1.0, factor=0.3, total_iters=0)
    np.testing.assert_allclose(schedule(jnp.arange(4)), [0.3] * 4)


@pytest.mark.parametrize(
    ("make", "schedule"),
    [
        (lambda: lr_scheduler.one_cycle_lr(0.1, 100, cycle_momentum=True), "one_cycle_momentum"),
        (lambda: lr_scheduler.cyclic_lr(0.01, 0.1, cycle_momentum=True), "cyclic_momentum"),
    ],
)
def test_lr_schedulers_refuse_cycle_momentum_naming_the_momentum_schedule(make, schedule):
    with pytest.raises(ValueError, match=f"cycle_momentum=True.*lr_scheduler.{schedule}"):
        make()
    # PyTorch's call spelled out with cycle_momentum=False is accepted
    lr_scheduler.one_cycle_lr(0.1, 100, cycle_momentum=False)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda s: tc.sgd(0.1, momentum=s), "momentum"),
        (lambda s: tc.rmsprop(0.1, momentum=s), "momentum"),
        (lambda s: tc.adam(0.1, betas=(s, 0.999)), r"betas\[0\]"),
        (lambda s: tc.nadam(0.1, betas=(0.9, s)), r"betas\[1\]"),
    ],
)
def test_a_momentum_schedule_out_of_range_is_named_as_pytorch_names_it(make, name):
    tx = make(lambda step: 1.0 + 0.0 * step)
    with pytest.raises(ValueError, match=f"^{name} must be in"):
        tx.init(jnp.zeros(2))


def test_momentum_schedules_read_their_value_at_each_step_into_the_state(x64):
    momentum = lr_scheduler.one_cycle_momentum(10, pct_start=0.5, anneal_strategy="linear")
    tx = tc.sgd(0.1, momentum=momentum)
    params = jnp.zeros(2)
    state = tx.init(params)
    for step in range(4):
        _, state = tx.update(jnp.ones(2), state, params)
        # the value used by the last update, in float64 (not rounded to float32)
        assert gtx.get_hyperparams(state)["decay"].dtype == jnp.float64
        assert float(gtx.get_hyperparams(state)["decay"]) == float(momentum(step))


def test_a_beta2_schedule_is_read_at_each_step_as_pytorch_reads_its_group_betas(x64):
    # PyTorch's Adam reads beta2 from its param group at every step, in the moment and in
    # the bias correction 1 - beta2^t alike; a NumPy loop of its update
    def beta2(count):
        return 0.99 - 0.09 * (count % 2)

    lr, eps, grads = 0.1, 1e-8, np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25], [2.0, 1.0]])
    tx = tc.adam(lr, betas=(0.9, beta2), eps=eps)
    params, update = jnp.zeros(2), jax.jit(tx.update)
    state = tx.init(params)
    expected, m, v = np.zeros(2), np.zeros(2), np.zeros(2)
    for step, g in enumerate(grads):
        updates, state = update(jnp.asarray(g), state, params)
        params = gtx.apply_updates(params, updates)
        b2, t = 0.99 - 0.09 * (step % 2), step + 1
        m, v = 0.9 * m + 0.1 * g, b2 * v + (1 - b2) * g**2
        expected = expected - lr / (1 - 0.9**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
        np.testing.assert_allclose(params, expected, rtol=1e-12, atol=1e-14)


class _ZeroDimTensor:
    """Stands in for a 0-d torch.Tensor (PyTorch accepts betas as tensors)."""

    def __init__(self, value):
        self.value = value

    def detach(self):
        return self

    def item(self):
        return self.value


def test_betas_given_as_zero_dim_tensors_are_read_as_numbers():
    params = jnp.ones(2)
    tx = tc.adam(0.1, betas=(_ZeroDimTensor(0.5), _ZeroDimTensor(0.9)))
    expected = tc.adam(0.1, betas=(0.5, 0.9))
    updates, _ = tx.update(jnp.ones(2), tx.init(params), params)
    reference, _ = expected.update(jnp.ones(2), expected.init(params), params)
    np.testing.assert_array_equal(updates, reference)


def test_clip_grad_norm_refuses_what_a_jitted_step_cannot_do_and_keeps_none_leaves():
    with pytest.raises(ValueError, match="error_if_nonfinite=True.*apply_if_finite"):
        tc.clip_grad_norm(1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="^max_norm must"):
        tc.clip_grad_norm(-1.0)
    tx = tc.clip_grad_norm(1.0)
    updates = {"a": jnp.array([3.0, 4.0]), "frozen": None}
    clipped, _ = jax.jit(tx.update)(updates, tx.init(updates))
    assert clipped["frozen"] is None
    np.testing.assert_allclose(clipped["a"], [3.0 / (5 + 1e-6), 4.0 / (5 + 1e-6)], rtol=1e-7)


@pytest.mark.parametrize(
    "dtype, grads, norm_type, pytorch",
    [  # torch 2.13, clip_grad_norm_(max_norm=1.0) on two one-element gradients
        (jnp.float16, (300.0, 400.0), 2.0, (0.60009765625, 0.80029296875)),
        (jnp.float16, (3e4, 4e4), 2.0, (0.6005859375, 0.80126953125)),
        (jnp.float16, (300.0, 400.0), 3.0, (0.6669921875, 0.8896484375)),
        (jnp.bfloat16, (300.0, 400.0), 3.0, (0.66796875, 0.890625)),
    ],
)
def test_clip_grad_norm_accumulates_half_precision_norms_in_float32_as_pytorch_does(
    dtype, grads, norm_type, pytorch
):
    # |g|^2 in float16 overflowed from |g| = 256: the norm was inf and every update 0;
    # |g|^3 in bfloat16 gave 0.648 and 0.867
    tx = tc.clip_grad_norm(1.0, norm_type)
    updates = [jnp.array([g], dtype) for g in grads]
    for update in (tx.update, jax.jit(tx.update)):
        clipped, _ = update(updates, tx.init(updates))
        assert [x.dtype for x in clipped] == [jnp.dtype(dtype)] * 2
        np.testing.assert_array_equal([float(x[0]) for x in clipped], pytorch)


@pytest.mark.parametrize(
    "dtype, max_norm, pytorch",
    [  # torch 2.13, clip_grad_norm_(max_norm) on the one-element gradients 30 and 40
        (jnp.bfloat16, 7.0, (4.21875, 5.625)),
        (jnp.float16, 10.0, (6.00390625, 8.0)),
    ],
)
def test_clip_grad_norm_takes_the_reciprocal_of_the_norm_as_pytorch_does(dtype, max_norm, pytorch):
    # PyTorch's max_norm / (n + 1e-6) is (n + 1e-6).reciprocal() * max_norm, rounded twice
    # in half precision; one division gave (4.1875, 5.59375) and (6.0, 8.0)
    tx = tc.clip_grad_norm(max_norm)
    updates = [jnp.array([30.0], dtype), jnp.array([40.0], dtype)]
    for update in (tx.update, jax.jit(tx.update)):
        clipped, _ = update(updates, tx.init(updates))
        np.testing.assert_array_equal([float(x[0]) for x in clipped], pytorch)


# The defaults of torch.optim in PyTorch 2.13 (its signatures; test_compat_live checks
# this table against the installed PyTorch): an argument left out is PyTorch's.
PYTORCH_DEFAULTS = {
    "sgd": dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False),
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False),
    "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
    "adagrad": dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10),
    "rmsprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False),
    "adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0),
    "adamax": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0),
    "nadam": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3),
    "radam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0),
    "rprop": dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50)),
    "asgd": dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0),
}


# ... and of torch.optim.lr_scheduler (cycle_momentum is refused rather than defaulted:
# the momentum has its own schedules, cyclic_momentum and one_cycle_momentum)
CYCLIC_DEFAULTS = dict(step_size_up=2000, step_size_down=None, mode="triangular", gamma=1.0)
ONE_CYCLE_DEFAULTS = dict(pct_start=0.3, anneal_strategy="cos", three_phase=False)
PYTORCH_SCHEDULER_DEFAULTS = {
    "step_lr": ("StepLR", dict(gamma=0.1)),
    "multistep_lr": ("MultiStepLR", dict(gamma=0.1)),
    "cosine_annealing_lr": ("CosineAnnealingLR", dict(eta_min=0.0)),
    "cosine_annealing_warm_restarts": ("CosineAnnealingWarmRestarts", dict(T_mult=1, eta_min=0)),
    "cyclic_lr": ("CyclicLR", CYCLIC_DEFAULTS),
    "cyclic_momentum": ("CyclicLR", dict(**CYCLIC_DEFAULTS, base_momentum=0.8, max_momentum=0.9)),
    "one_cycle_lr": (
        "OneCycleLR",
        dict(**ONE_CYCLE_DEFAULTS, div_factor=25.0, final_div_factor=1e4),
    ),
    "one_cycle_momentum": (
        "OneCycleLR",
        dict(**ONE_CYCLE_DEFAULTS, base_momentum=0.85, max_momentum=0.95),
    ),
    "linear_lr": ("LinearLR", dict(start_factor=1 / 3, end_factor=1.0, total_iters=5)),
    "constant_lr": ("ConstantLR", dict(factor=1 / 3, total_iters=5)),
    "polynomial_lr": ("PolynomialLR", dict(total_iters=5, power=1.0)),
    "reduce_lr_on_plateau": (
        "ReduceLROnPlateau",
        dict(mode="min", factor=0.1, patience=10, threshold=1e-4, cooldown=0, min_lr=0, eps=1e-8),
    ),
}


@pytest.mark.parametrize("name", sorted(PYTORCH_DEFAULTS))
def test_defaults_are_pytorchs(name):
    parameters = inspect.signature(getattr(tc, name)).parameters
    defaults = {key: parameters[key].default for key in PYTORCH_DEFAULTS[name]}
    assert defaults == PYTORCH_DEFAULTS[name]
    assert parameters["maximize"].default is False


@pytest.mark.parametrize("name", sorted(PYTORCH_SCHEDULER_DEFAULTS))
def test_scheduler_defaults_are_pytorchs(name):
    parameters = inspect.signature(getattr(lr_scheduler, name)).parameters
    _, expected = PYTORCH_SCHEDULER_DEFAULTS[name]
    assert {key: parameters[key].default for key in expected} == expected


def test_clip_grad_norm_with_an_infinite_max_norm_leaves_the_gradients_as_pytorch_does():
    # PyTorch: clip_coef = inf / (norm + 1e-6), clamped to 1 (the norm is all it is for)
    tx = tc.clip_grad_norm(math.inf)
    updates = [jnp.array([3.0e4, -4.0e4]), jnp.array([0.5])]
    clipped, _ = jax.jit(tx.update)(updates, tx.init(updates))
    for ours, given in zip(clipped, updates, strict=True):
        np.testing.assert_array_equal(ours, given)


def test_sgd_rejects_nesterov_without_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        tc.sgd(lr=0.1, nesterov=True)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: tc.adam(betas=(0.9, 1.0)), "betas\\[1\\]"),
        (lambda: tc.sgd(lr=-1.0), "lr"),
        (lambda: tc.rmsprop(momentum=1.5), "momentum"),
        (lambda: tc.sgd(momentum=0.9, dampening=2.0), "dampening"),
        (lambda: tc.sgd(dampening=1.5), "dampening"),  # unused without momentum
        (lambda: tc.adam(weight_decay=-0.1), "weight_decay"),
        (lambda: tc.rmsprop(alpha=1.5), "alpha"),
        (lambda: tc.rprop(lr=0.0), "lr"),
        (lambda: tc.rprop(etas=(1.2, 0.5)), "etas\\[0\\]"),
        (lambda: tc.rprop(step_sizes=(1.0, 0.5)), "step_sizes\\[1\\]"),
        (lambda: tc.adam(betas=(0.9,)), "betas"),
    ],
)
def test_bad_hyperparameters_are_rejected_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=f"^{argument} must"):
        make()


def test_scale_by_radam_defaults_are_optax_radam(x64):
    import optax

    rng = np.random.default_rng(0)
    grads = jnp.asarray(rng.standard_normal((30, 4)))

    @jax.jit
    def both(grads):  # 30 steps of each in one compiled scan
        def run(tx):
            def step(state, g):
                u, state = tx.update(g, state)
                return state, u

            return jax.lax.scan(step, tx.init(grads[0]), grads)[1]

        return run(gtx.scale_by_radam()), run(optax.scale_by_radam())

    ours, theirs = both(grads)
    # rho_t cancels ~2000 against ~2000: the two ways of computing b2^t differ at 1e-11.
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_dampened_trace_leaves_the_first_gradient_undampened():
    tx = gtx.trace(0.5, dampening=0.75)
    state = tx.init(jnp.zeros(1))
    u, state = tx.update(jnp.array([4.0]), state)
    assert u.tolist() == [4.0]  # b_1 = g_1
    u, state = tx.update(jnp.array([4.0]), state)
    assert u.tolist() == [0.5 * 4.0 + 0.25 * 4.0]  # b_2 = mu b_1 + (1 - dampening) g_2


@pytest.mark.parametrize("case", SCHEDULERS["plateau_cases"], ids=lambda c: str(c["kwargs"]))
def test_reduce_lr_on_plateau_follows_pytorch_metric_for_metric(case):
    tx = lr_scheduler.reduce_lr_on_plateau(case["lr"], **case["kwargs"])
    update = jax.jit(lambda state, value: tx.update(jnp.ones(1), state, value=value)[1])
    state, lrs = tx.init(jnp.zeros(1)), []
    for metric in SCHEDULERS["plateau_metrics"]:
        state = update(state, metric)
        lrs.append(case["lr"] * float(state.scale))
    assert len(set(case["values"])) > 1  # the case does reduce
    np.testing.assert_allclose(lrs, case["values"], rtol=1e-6)


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (tc.sgd, dict(lr=0.1, momentum=0.9, nesterov=True)),
        (tc.sgd, dict(lr=0.1, momentum=0.9, dampening=0.5)),
        (tc.adam, dict(lr=0.1, amsgrad=True)),
        (tc.rmsprop, dict(lr=0.1, momentum=0.5, centered=True)),
    ],
)
def test_compat_optimizer_under_schedule_injection_matches_the_plain_chain(factory, kwargs):
    """Injected hyperparameters arrive as float32 arrays: the chain keeps its structure."""
    injected, plain = gtx.schedule_injection(factory)(**kwargs), factory(**kwargs)
    params = {"w": jnp.array([1.0, -2.0])}
    state, plain_state = injected.init(params), plain.init(params)
    step = jax.jit(injected.update)
    for g in ([0.5, 1.0], [-1.0, 2.0], [0.25, 0.5]):
        u, state = step({"w": jnp.array(g)}, state, params)
        v, plain_state = plain.update({"w": jnp.array(g)}, plain_state, params)
        # float32(0.99) against the double 0.99; the centered variance cancels.
        np.testing.assert_allclose(u["w"], v["w"], rtol=1e-5)
    assert float(gtx.get_hyperparams(state)["lr"]) == pytest.approx(0.1)


def test_abstract_init_keeps_the_sharding_of_a_complex_parameter():
    """The (real, imaginary) pairs of a complex parameter are sharded like it, with the
    new last axis whole: from concrete params and from ShapeDtypeStructs (restore)."""
    mesh = jax.make_mesh((1,), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    expected = jax.sharding.PartitionSpec("x", None)
    if jax.device_put(jnp.ones(4), sharding)[:, None].sharding.spec != expected:
        # jax 0.6.2 (what pip resolves for Python 3.10; its eager results keep the
        # sharding on two devices) returns a new axis on a one-device mesh replicated
        pytest.skip("this JAX drops the one-device sharding of an eager result's new axis")
    params = [jax.device_put(jnp.ones(4, jnp.complex64), sharding)]
    abstract = [jax.ShapeDtypeStruct((4,), jnp.complex64, sharding=sharding)]
    tx = tc.adam(0.1)
    for state in (tx.init(params), tx.init(abstract)):
        for moment in (state["adam"].mu[0], state["adam"].nu[0]):
            assert moment.shape == (4, 2)
            assert moment.sharding.spec == expected


PLATEAU_EPOCH_CASES = {case["name"]: case for case in OPTIMIZERS["plateau_epoch_cases"]}


def run_plateau_epochs(case, *, first_epoch=0, params=None, state=None):
    """PyTorch's usual loop, ported: the metric of epoch e goes with the first update of
    epoch e + 1 (PyTorch's ``scheduler.step(metric)`` after the epoch's steps); returns
    the flattened parameters after every epoch from ``first_epoch`` and the state."""
    shapes = [tuple(s) for s in OPTIMIZERS["shapes"]]
    problem = {k: np.asarray(v, np.float64) for k, v in OPTIMIZERS["problem"].items()}
    h = split(problem["h"], shapes)
    c = split(problem["c"], shapes)
    kwargs = dict(case["plateau"], require_value=False)
    tx = gtx.chain(
        getattr(tc, case["optimizer"])(**case["kwargs"]),
        lr_scheduler.reduce_lr_on_plateau(case["kwargs"]["lr"], **kwargs),
    )
    if params is None:
        params = [jnp.asarray(p) for p in split(problem["p0"], shapes)]
        state = tx.init(params)

    @jax.jit
    def step(params, state, noise, value):
        grads = [h[i] * (p - c[i]) + n for i, (p, n) in enumerate(zip(params, noise, strict=True))]
        updates, state = tx.update(grads, state, params, value=value)
        return gtx.apply_updates(params, updates), state

    metrics = SCHEDULERS["plateau_metrics"]
    k = case["steps_per_epoch"]
    epochs = []
    for epoch in range(first_epoch, len(metrics)):
        for t in range(epoch * k, (epoch + 1) * k):
            new_metric = t == epoch * k and epoch > first_epoch
            value = metrics[epoch - 1] if new_metric else None
            params, state = step(params, state, split(problem["noise"][t], shapes), value)
        epochs.append(np.concatenate([np.ravel(p) for p in params]))
    return np.asarray(epochs), state


@pytest.mark.parametrize("name", sorted(PLATEAU_EPOCH_CASES))
def test_reduce_lr_on_plateau_stepped_per_epoch_follows_pytorchs_loop(name, x64):
    """The metric goes with the next epoch's first update: PyTorch's lr for an epoch is
    the one its scheduler set after the epoch before."""
    case = PLATEAU_EPOCH_CASES[name]
    assert len(set(case["lrs"])) >= 4  # the case reduces several times
    epochs, _ = run_plateau_epochs(case)
    np.testing.assert_allclose(epochs, case["epochs"], **TOLERANCE["float64"])


@pytest.mark.parametrize("name", sorted(PLATEAU_EPOCH_CASES))
def test_a_run_continued_with_the_plateau_state_stays_on_pytorchs_trajectory(name, x64):
    case = PLATEAU_EPOCH_CASES[name]
    saved, start = case["saved"], case["save_epoch"]
    params = [jnp.asarray(p, jnp.float64) for p in saved["params"]]
    tx_state = gtx.chain(  # only the state's structure: the loaded optimizer state
        getattr(tc, case["optimizer"])(**case["kwargs"]),
        lr_scheduler.reduce_lr_on_plateau(case["kwargs"]["lr"]),
    )
    optimizer_state = tc.load_state_dict(tx_state, saved["state_dict"], params)[0]
    plateau = tc.load_plateau_state(saved["scheduler_state_dict"], case["kwargs"]["lr"])
    assert plateau.scale.dtype == jnp.float64 and float(plateau.scale) < 1
    epochs, _ = run_plateau_epochs(
        case, first_epoch=start, params=params, state=(optimizer_state, plateau)
    )
    np.testing.assert_allclose(epochs, case["epochs"][start:], **TOLERANCE["float64"])
    # a plateau started afresh (what load_state_dict alone gives) leaves the trajectory
    fresh, _ = run_plateau_epochs(
        case,
        first_epoch=start,
        params=params,
        state=tx_state.init(params)[:1]
        + (lr_scheduler.reduce_lr_on_plateau(case["kwargs"]["lr"]).init(params),),
    )
    assert np.max(np.abs(fresh - np.asarray(case["epochs"][start:]))) > 1e-3


def test_load_plateau_state_rejects_what_one_scale_cannot_hold():
    saved = {"best": 0.5, "num_bad_epochs": 0, "cooldown_counter": 0, "last_epoch": 9,
             "_last_lr": [0.01, 0.002]}  # fmt: skip
    state = tc.load_plateau_state(saved, [0.1, 0.02])
    assert float(state.scale) == pytest.approx(0.1) and int(state.count) == 9
    with pytest.raises(ValueError, match=r"not one scale of the base rates"):
        tc.load_plateau_state(saved, 0.1)  # the second group held at a min_lr
    with pytest.raises(ValueError, match=r"one per param group \(2\), got 3"):
        tc.load_plateau_state(saved, [0.1, 0.02, 0.3])
    with pytest.raises(ValueError, match=r"lr must be in \(0.0, inf\), got 0.0"):
        tc.load_plateau_state(saved, [0.1, 0.0])
    with pytest.raises(ValueError, match=r"no \['best'\]"):
        tc.load_plateau_state({k: v for k, v in saved.items() if k != "best"}, 0.1)


def test_load_plateau_state_takes_an_epoch_past_int32_as_the_saturated_count():
    # PyTorch's last_epoch is a Python int; the plateau's int32 count stops at 2**31 - 1
    saved = {"best": 0.5, "num_bad_epochs": 1, "cooldown_counter": 0, "last_epoch": 2**40,
             "_last_lr": [0.01]}  # fmt: skip
    state = tc.load_plateau_state(saved, 0.1)
    assert state.count.dtype == jnp.int32 and int(state.count) == 2**31 - 1


def test_a_loaded_state_does_not_share_memory_with_the_pytorch_buffers(x64):
    """Tensor.numpy() shares the tensor's memory and jnp.asarray of a float64 NumPy
    array is zero-copy on CPU: a PyTorch step after loading (stepping both side by side)
    changed the gradtx state in place. The same holds for NumPy buffers changed later."""
    momentum = np.ones(3)
    torch_state = {
        "state": {0: {"momentum_buffer": momentum}},
        "param_groups": [{"params": [0]}],
    }
    state = tc.load_state_dict(tc.sgd(0.1, momentum=0.9), torch_state, [jnp.zeros(3)])
    momentum *= 5.0  # what PyTorch's in-place buffer update does
    np.testing.assert_array_equal(state["momentum"].trace[0], [1.0, 1.0, 1.0])


def test_periodic_lr_schedulers_keep_pytorchs_values_at_steps_past_2_to_the_24():
    """CyclicLR's cycle position and CosineAnnealingLR's phase come from the step; in
    float32 a step past 2**24 rounds (to 128 steps near 1.6e9), and cyclic_lr was 10x
    off PyTorch there (0.273 for 0.0233), cosine_annealing_lr a random phase. Both now
    reduce the integer step first; the expected values are PyTorch's formulas in exact
    integer arithmetic, then double."""
    steps = [1_586_832_062, 2_000_000_000, 2**31 - 1]
    cyclic = lr_scheduler.cyclic_lr(0.01, 0.3, step_size_up=10, step_size_down=7)
    expected = []
    for t in steps:
        x = (t % 17) / 17
        scale = x / (10 / 17) if x <= 10 / 17 else (x - 1) / (10 / 17 - 1)
        expected.append(0.01 + (0.3 - 0.01) * scale)
    got = np.asarray(cyclic(jnp.asarray(steps, jnp.int32)), np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    cosine = lr_scheduler.cosine_annealing_lr(1.0, T_max=1000, eta_min=0.01)
    expected = [0.01 + 0.99 * (1 + math.cos(math.pi * (t % 2000) / 1000)) / 2 for t in steps]
    got = np.asarray(cosine(jnp.asarray(steps, jnp.int32)), np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("up, down", [(2**30, 2**30), (2**31 - 1, None), (10, 2**31 - 1)])
def test_cyclic_lr_takes_cycles_longer_than_an_int32_step_counter(up, down):
    """A cycle of 2**31 steps or more cannot be reduced in int32 (the step's ``//`` and
    ``%`` overflowed with an OverflowError); such a cycle keeps PyTorch's float formula.
    Expected: CyclicLR's formula in double."""
    schedule = lr_scheduler.cyclic_lr(0.01, 0.3, step_size_up=up, step_size_down=down)
    total = up + (up if down is None else down)
    steps = [0, 5, 2**24 + 3, 2**31 - 1]
    expected = []
    for t in steps:
        x = t / total  # the first cycle: cycle = 1
        scale = x / (up / total) if x <= up / total else (x - 1) / (up / total - 1)
        expected.append(0.01 + (0.3 - 0.01) * scale)
    got = np.asarray(schedule(jnp.asarray(steps, jnp.int32)), np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_clip_grad_norm_runs_its_per_leaf_norms_and_scaling_in_the_eager_kernels(monkeypatch):
    """Un-jitted, each leaf's norm and its scaling ran op by op, a norm computed in Python
    per leaf at every update (1,000 leaves took 176-189 ms with tc.adamw, 59-62 now, gtx's
    clip 48); the numbers stay those of the jitted update within float32 rounding."""
    # no other test's kernels
    monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
    rng = np.random.default_rng(0)
    grads = {f"w{i:02d}": jnp.asarray(rng.normal(size=8), jnp.float32) for i in range(64)}
    tx = tc.clip_grad_norm(1.0)
    state = tx.init(grads)
    for _ in range(2):  # the kernels compile at a function's second sight
        tx.update(grads, state)
    norms = []
    norm = clip_grad._norm_as_pytorch
    monkeypatch.setattr(
        clip_grad, "_norm_as_pytorch", lambda *a, **k: norms.append(1) or norm(*a, **k)
    )
    clipped, _ = tx.update(grads, state)
    assert len(norms) < len(grads), len(norms)  # the total's, not one per leaf
    jitted, _ = jax.jit(tx.update)(grads, state)
    for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-7)


def _sgd_state(buffers):
    """An SGD state_dict as PyTorch writes it (no step: SGD keeps none)."""
    group = {"params": list(range(len(buffers))), "lr": 0.1, "momentum": 0.9,
             "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}  # fmt: skip
    return {"state": {i: {"momentum_buffer": b} for i, b in enumerate(buffers)},
            "param_groups": [group]}  # fmt: skip


def test_load_state_dict_of_sgd_with_a_schedule_needs_the_step():
    """PyTorch's SGD records no step: loaded without ``step=``, a scheduled learning rate
    restarted from step 0 silently (a StepLR run resumed at step 7 ended 0.69 relative
    off PyTorch's). Now that is a ValueError; with ``step=`` the schedule continues."""
    schedule = lambda t: 0.1 * 0.5 ** (t // 5)  # noqa: E731  (StepLR(5, 0.5))
    torch_state = _sgd_state([np.full(2, 0.25)])
    params = [jnp.ones(2)]
    with pytest.raises(ValueError, match="SGD records no step count.*pass step="):
        tc.load_state_dict(tc.sgd(schedule, momentum=0.9), torch_state, params)
    state = tc.load_state_dict(tc.sgd(schedule, momentum=0.9), torch_state, params, step=7)
    assert int(gtx.tree_get(state, "count")) == 7
    assert gtx.tree_get(state, "trace")[0].tolist() == [0.25, 0.25]
    # a constant learning rate reads no step: nothing to pass
    state = tc.load_state_dict(tc.sgd(0.1, momentum=0.9), torch_state, params)
    assert gtx.tree_get(state, "trace")[0].tolist() == [0.25, 0.25]
    # an SGD state saved before its first step needs it too (0 then), a fresh Adam none
    fresh = {"state": {}, "param_groups": torch_state["param_groups"]}
    with pytest.raises(ValueError, match="pass step="):
        tc.load_state_dict(tc.sgd(schedule), fresh, params)
    assert int(gtx.tree_get(tc.load_state_dict(tc.sgd(schedule), fresh, params, step=0),
                            "count")) == 0  # fmt: skip
    adam_fresh = {"state": {}, "param_groups": [{"params": [0], "betas": (0.9, 0.999)}]}
    tc.load_state_dict(tc.adam(schedule), adam_fresh, params)


RECIPES = json.loads((GOLDEN / "torch_recipes.json").read_text())


def recipe_params(flat_p0):
    """``{"fc1.weight": w, ...}`` as ``{"fc1": {"weight": w}, ...}``: the key paths joined
    by dots are PyTorch's ``param_names``, so ``load_state_dict`` matches them by name."""
    params = {}
    for name, value in flat_p0.items():
        layer, leaf = name.split(".")
        params.setdefault(layer, {})[leaf] = jnp.asarray(value, jnp.float64)
    return params


def run_recipes(runs, problem, calls):
    """``runs``: name -> (tx, params, state, first_call). Each takes ``calls`` micro-batch
    gradients of the tanh MLP (the micro-batches in turn from its first call) and returns
    the flattened params after each call (PyTorch's order); one compiled scan for all."""
    size = problem["micro_batch"]
    x = jnp.asarray(problem["x"]).reshape(problem["micro_batches"], size, -1)
    y = jnp.asarray(problem["y"]).reshape(problem["micro_batches"], size, -1)
    names = list(problem["p0"])

    def loss(p, x, y):
        hidden = jnp.tanh(x @ p["fc1"]["weight"].T + p["fc1"]["bias"])
        return jnp.mean((hidden @ p["fc2"]["weight"].T + p["fc2"]["bias"] - y) ** 2)

    @jax.jit
    def trajectories(carry):
        def step(carry, call):
            out, flat = {}, {}
            for name, (params, state) in carry.items():
                batch = (call + runs[name][3]) % problem["micro_batches"]
                grads = jax.grad(loss)(params, x[batch], y[batch])
                updates, state = runs[name][0].update(grads, state, params)
                params = gtx.apply_updates(params, updates)
                out[name] = params, state
                leaves = [params[n.split(".")[0]][n.split(".")[1]].ravel() for n in names]
                flat[name] = jnp.concatenate(leaves)
            return out, flat

        return jax.lax.scan(step, carry, jnp.arange(calls))[1]

    return jax.device_get(trajectories({name: run[1:3] for name, run in runs.items()}))


def test_hugging_face_style_pytorch_recipe_follows_pytorch_within_1e10(x64):
    """The recipe users port whole: ``AdamW`` with two param groups (no decay on
    biases), ``LambdaLR`` with transformers' warmup-cosine lambda, ``clip_grad_norm_``
    before ``optimizer.step()`` and 3 micro-batches of ``loss / 3`` per step (the
    scheduler stepped once per optimizer step); also continued from its ``state_dict()``
    after 17 steps, and with SGD (nesterov) and ``OneCycleLR``, which cycles the
    momentum. Written as docs/examples.md shows, float64 against PyTorch 2.13."""
    k, updates, warmup = 3, 40, 5

    def lambda_lr(step):  # LambdaLR(optimizer, lr_lambda): 3e-2 * lr_lambda(step)
        t = jnp.asarray(step, float)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * 0.5 * 2.0 * (t - warmup) / (updates - warmup)))
        return 3e-2 * jnp.where(t < warmup, t / warmup, jnp.maximum(0.0, cosine))

    one_cycle = lr_scheduler.one_cycle_lr(0.2, total_steps=updates)
    momentum = lr_scheduler.one_cycle_momentum(total_steps=updates)
    groups = {r"\['bias'\]$": "no_decay", r".*": "decay"}

    def recipe(decay, no_decay):  # clip_grad_norm_ on the accumulated gradient, then step
        return gtx.multi_steps(
            gtx.chain(
                tc.clip_grad_norm(0.5),
                gtx.partition({"decay": decay, "no_decay": no_decay}, groups),
            ),
            every_k=k,
        )

    hf = recipe(tc.adamw(lambda_lr, weight_decay=0.1), tc.adamw(lambda_lr, weight_decay=0.0))
    sgd = recipe(
        tc.sgd(one_cycle, momentum, weight_decay=0.1, nesterov=True),
        tc.sgd(one_cycle, momentum, nesterov=True),
    )
    problem, cases = RECIPES["problem"], RECIPES["cases"]
    saved_at = cases["hf_adamw"]["saved_at"]
    snapshots = RECIPES["snapshots"]
    row = np.asarray(cases["hf_adamw"]["params"][snapshots.index(saved_at)])
    shapes = [np.shape(p) for p in problem["p0"].values()]
    saved_params = recipe_params(dict(zip(problem["p0"], split(row, shapes), strict=True)))
    loaded = tc.load_state_dict(hf, cases["hf_adamw"]["state_dict"], saved_params)
    params = recipe_params(problem["p0"])
    runs = {
        "hf_adamw": (hf, params, hf.init(params), 0),
        "sgd_nesterov_one_cycle": (sgd, params, sgd.init(params), 0),
        "continued": (hf, saved_params, loaded, saved_at * k),
    }
    flat = run_recipes(runs, problem, updates * k)
    rows = [k * s - 1 for s in snapshots]
    for name in ("hf_adamw", "sgd_nesterov_one_cycle"):
        np.testing.assert_allclose(
            flat[name][rows], cases[name]["params"], **TOLERANCE["float64"], err_msg=name
        )
    later = [i for i, s in enumerate(snapshots) if s > saved_at]
    continued = flat["continued"][[k * (snapshots[i] - saved_at) - 1 for i in later]]
    np.testing.assert_allclose(
        continued, np.asarray(cases["hf_adamw"]["params"])[later], **TOLERANCE["float64"]
    )


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_asgd_averages_the_params_the_model_holds(dtype):
    """PyTorch's ``ax`` averages the stored param: before t0 it is a copy of it. The
    average was of p' before apply_updates added p' - p to p (3% of the averages an ulp
    off the params in float16 and bfloat16, 0.7% in float32); after t0 it is the running
    mean of the held iterates (reference: that mean in float32, rounded as the state, to
    an ulp of it)."""
    rng = np.random.default_rng(6)
    params = jnp.asarray(rng.normal(size=(64, 64)), dtype)
    grads = [jnp.asarray(rng.normal(size=(64, 64)), dtype) for _ in range(6)]
    for t0, checked in [(1e6, "copy"), (2.0, "mean")]:
        tx = tc.asgd(lr=0.5, lambd=1e-4, t0=t0)

        @jax.jit
        def step(params, state, grads, tx=tx):
            updates, state = tx.update(grads, state, params)
            return gtx.apply_updates(params, updates), state

        p, state, average = params, tx.init(params), None
        for k, g in enumerate(grads):
            p, state = step(p, state, g)
            held = np.asarray(p, np.float32)
            mu = 1 / max(1, k - t0)  # PyTorch's mu at step k (from 0)
            if mu == 1:
                average = held
            else:
                average = average + np.float32(mu) * (held - average)
                average = np.asarray(jnp.asarray(average).astype(dtype), np.float32)
            got = np.asarray(state["asgd"].average, np.float32)
            if mu == 1:  # the held param itself, exactly
                np.testing.assert_array_equal(got, average, err_msg=f"{checked} at step {k}")
            else:  # XLA may fuse the running mean's multiply-add: an ulp of the average
                eps = float(jnp.finfo(dtype).eps)
                np.testing.assert_allclose(got, average, rtol=eps, atol=1e-6, err_msg=checked)
            average = got


def _pytorch_rprop(params, grads, lr, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)):
    """torch.optim.Rprop's single-tensor loop (PyTorch 2.13) in NumPy, with
    ``torch.sign``, which is 0 at NaN (``np.sign(nan)`` is NaN)."""

    def torch_sign(x):
        return np.nan_to_num(np.sign(x), nan=0.0)

    p = np.array(params, np.float64)
    prev, step = np.zeros_like(p), np.full_like(p, lr)
    for g in grads:
        g = np.array(g, np.float64)
        sign = torch_sign(g * prev)
        step = np.clip(
            step * np.where(sign > 0, etas[1], np.where(sign < 0, etas[0], 1.0)), *step_sizes
        )
        g = np.where(sign < 0, 0.0, g)
        p = p - torch_sign(g) * step
        prev = g
    return p


@pytest.mark.parametrize("jitted", [True, False])
def test_rprop_skips_an_element_whose_gradient_is_nan_as_pytorch_does(jitted, x64):
    """torch.sign(nan) is 0: PyTorch's Rprop leaves that element where it is and keeps its
    step size (the NaN it keeps as prev makes the next sign product 0). tc.rprop's
    parameter became NaN for good (jnp.sign(nan) is NaN). The torch loop above, in
    NumPy; test_compat_live reruns the case against PyTorch."""
    grads = [[1.0, -2.0, 3.0], [1.0, np.nan, 3.0], [1.0, -2.0, -3.0], [2.0, np.nan, -3.0]]
    grads += [[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]]
    tx = tc.rprop(lr=0.1, etas=(0.4, 1.3))
    params = jnp.array([1.0, 2.0, 3.0])
    state, update = tx.init(params), jax.jit(tx.update) if jitted else tx.update
    for g in grads:
        updates, state = update(jnp.array(g), state, params)
        params = gtx.apply_updates(params, updates)
    expected = _pytorch_rprop([1.0, 2.0, 3.0], grads, 0.1, etas=(0.4, 1.3))
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(np.asarray(params), expected, rtol=1e-12)
