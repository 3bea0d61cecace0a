"""Live parity: reruns golden cases against the installed PyTorch and Keras (marker ``live``).

They run when selected with ``pytest -m live tests/test_compat_live.py`` and are skipped
otherwise, and where PyTorch or Keras is not installed (the golden files carry the
comparison then). A handful of cases each, on the golden problem with its tolerances.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.live
GOLDEN = Path(__file__).parent / "golden"


def _load(name: str):
    sys.path.insert(0, str(GOLDEN))
    spec = importlib.util.spec_from_file_location(name, GOLDEN / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def record_torch():
    pytest.importorskip("torch")
    return _load("record_torch")


@pytest.fixture(scope="module")
def record_keras():
    if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
        pytest.skip("Keras must run on its JAX backend")
    pytest.importorskip("keras")
    return _load("record_keras")


TORCH_CASES = [
    "sgd_dampening",
    "adam_amsgrad_l2_maximize",
    "nadam_decoupled",
    "radam",
    "adamw_one_cycle_momentum",
]
KERAS_CASES = ["adam_amsgrad", "nadam_wd", "rmsprop_centered_momentum"]


@pytest.mark.parametrize("name", TORCH_CASES)
def test_live_pytorch_trajectory_matches_gradtx(name, record_torch, x64):
    from tests import test_compat_torch as golden

    case = next(c for c in record_torch.OPTIMIZER_CASES if c["name"] == name)
    expected, _, _ = record_torch.run_optimizer(case, "float64")
    sign = -1.0 if case["kwargs"].get("maximize") else 1.0
    flat, _ = golden.run(golden.build_optimizer(case), "float64", sign=sign)
    np.testing.assert_allclose(
        np.asarray(flat)[golden.snapshot_rows()], expected, rtol=1e-10, atol=1e-12
    )


def test_live_pytorch_defaults_are_the_table_test_compat_torch_holds(record_torch):
    import inspect

    from tests import test_compat_torch as golden

    for name, defaults in golden.PYTORCH_DEFAULTS.items():
        parameters = inspect.signature(record_torch.TORCH_OPTIMIZERS[name]).parameters
        assert {key: parameters[key].default for key in defaults} == defaults, name
    schedulers = sys.modules["torch"].optim.lr_scheduler
    for name, (scheduler, defaults) in golden.PYTORCH_SCHEDULER_DEFAULTS.items():
        parameters = inspect.signature(getattr(schedulers, scheduler)).parameters
        assert {key: parameters[key].default for key in defaults} == defaults, name


@pytest.mark.parametrize("name", ["cosine_annealing_lr", "one_cycle_lr", "sequential_lr"])
def test_live_pytorch_scheduler_matches_gradtx(name, record_torch, x64):
    from tests import test_compat_torch as golden

    case = next(c for c in record_torch.SCHEDULER_CASES if c["name"] == name)
    expected = record_torch.scheduler_values(case["name"], case["kwargs"])
    actual = golden.build_schedule(case)(jnp.arange(len(expected)))
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["sgd_momentum_plateau", "adamw_plateau_min_lr"])
def test_live_pytorch_plateau_per_epoch_matches_gradtx_and_continues(name, record_torch, x64):
    from tests import test_compat_torch as golden

    case = next(c for c in record_torch.PLATEAU_EPOCH_CASES if c["name"] == name)
    live = record_torch.run_plateau_epochs(case)
    epochs, _ = golden.run_plateau_epochs(live)
    np.testing.assert_allclose(epochs, live["epochs"], rtol=1e-10, atol=1e-12)
    saved, start = live["saved"], case["save_epoch"]
    params = [jnp.asarray(p, jnp.float64) for p in saved["params"]]
    tx = golden.gtx.chain(
        getattr(golden.tc, case["optimizer"])(**case["kwargs"]),
        golden.lr_scheduler.reduce_lr_on_plateau(case["kwargs"]["lr"]),
    )
    state = golden.tc.load_state_dict(tx, saved["state_dict"], params)
    state = (
        state[0],
        golden.tc.load_plateau_state(saved["scheduler_state_dict"], case["kwargs"]["lr"]),
    )
    continued, _ = golden.run_plateau_epochs(live, first_epoch=start, params=params, state=state)
    np.testing.assert_allclose(continued, live["epochs"][start:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", KERAS_CASES)
def test_live_keras_trajectory_matches_gradtx(name, record_keras):
    from tests import test_compat_keras as golden

    case = next(c for c in record_keras.OPTIMIZER_CASES if c["name"] == name)
    expected = record_keras.run_optimizer(case, "float32")
    rows = [s - 1 for s in golden.OPTIMIZERS["snapshots"]]
    actual = golden.trajectory(golden.build_optimizer(case), "float32")[rows]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_live_keras_defaults_are_the_tables_test_compat_keras_holds(record_keras):
    from tests import test_compat_keras as golden

    for name, defaults in golden.KERAS_DEFAULTS.items():
        expected = {**defaults, **golden.KERAS_BASE_DEFAULTS}
        actual = golden.defaults_of(record_keras.KERAS_OPTIMIZERS[name], expected)
        assert actual == expected, name
    for name, defaults in golden.KERAS_SCHEDULE_DEFAULTS.items():
        assert golden.defaults_of(record_keras.KERAS_SCHEDULES[name], defaults) == defaults


@pytest.mark.parametrize("name", ["sgd_momentum", "rmsprop_momentum_min_lr"])
def test_live_keras_reduce_lr_on_plateau_matches_gradtx(name, record_keras):
    from tests import test_compat_keras as golden

    case = next(c for c in record_keras.PLATEAU_CASES if c["name"] == name)
    live = record_keras.run_plateau(case)
    epochs, lrs = golden.run_plateau_epochs(live)
    assert lrs == live["lrs"]
    np.testing.assert_allclose(epochs, live["epochs"], rtol=1e-5, atol=1e-5)


KERAS_SCHEDULE_CASES = json.loads((GOLDEN / "keras_schedules.json").read_text())["cases"]


@pytest.mark.parametrize("index", range(len(KERAS_SCHEDULE_CASES)))
def test_live_keras_schedule_matches_gradtx_in_float64(index, record_keras, x64):
    """Keras with floatx float64 under x64, 200 steps, within 1e-10 relative (the golden
    schedule values are float32), eagerly and under jit. CosineDecay without warmup
    returns a float32 rate in float64 runs (docs/conventions.md): within 2e-7 there."""
    import jax
    import keras

    from tests import test_compat_keras as golden

    spec = KERAS_SCHEDULE_CASES[index]
    float32_rate = spec["name"] == "cosine_decay" and "warmup_target" not in spec["kwargs"]
    steps = [jnp.asarray(t, jnp.int32) for t in range(200)]
    ours = golden.build_schedule(spec)
    keras.config.set_floatx("float64")
    try:
        theirs = record_keras.make_schedule(spec)
        for run in (lambda f: f, jax.jit):
            expected = [float(run(theirs)(t)) for t in steps]
            actual = np.asarray([run(ours)(t) for t in steps])
            assert actual.dtype == np.float64
            rtol = 2e-7 if float32_rate else 1e-10
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, err_msg=str(spec))
    finally:
        keras.config.set_floatx("float32")


@pytest.mark.parametrize("index", [1, 3, 6, 8, 11])  # staircases, cycle, warmup, restarts
def test_live_keras_float64_trajectory_with_a_schedule_matches_gradtx(index, record_keras, x64):
    """Not cosine_decay without warmup, whose rate is float32 in Keras' float64 runs
    (docs/conventions.md): 3e-7 apart after 200 steps of Adam."""
    from tests import test_compat_keras as golden

    spec = KERAS_SCHEDULE_CASES[index]
    spec = {"name": spec["name"], "kwargs": spec["kwargs"]}
    case = record_keras._case("adam", "live", learning_rate=None, schedule=spec)
    expected = record_keras.run_optimizer(case, "float64")
    rows = [s - 1 for s in golden.OPTIMIZERS["snapshots"]]
    actual = golden.trajectory(golden.build_optimizer(case), "float64")[rows]
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", KERAS_CASES)
def test_live_keras_float64_trajectory_matches_gradtx(name, record_keras, x64):
    from tests import test_compat_keras as golden

    case = next(c for c in record_keras.OPTIMIZER_CASES if c["name"] == name)
    expected = record_keras.run_optimizer(case, "float64")
    rows = [s - 1 for s in golden.OPTIMIZERS["snapshots"]]
    actual = golden.trajectory(golden.build_optimizer(case), "float64")[rows]
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["adamw", "sgd", "nadam"])
def test_live_load_state_dict_takes_a_bfloat16_runs_buffers_exactly(name, record_torch):
    """``Tensor.numpy()`` refuses bfloat16: a bfloat16 run's moments were a TypeError
    from PyTorch ("Got unsupported ScalarType BFloat16"); they load bit for bit."""
    import torch

    from gradtx.compat import torch as tc

    kwargs = {"adamw": {"lr": 0.01}, "sgd": {"lr": 0.01, "momentum": 0.9}, "nadam": {}}[name]
    params = [torch.nn.Parameter(torch.full(s, 0.3, dtype=torch.bfloat16)) for s in [(3, 2), (2,)]]
    optimizer = record_torch.TORCH_OPTIMIZERS[name](params, **kwargs)
    for t in range(3):
        for p in params:
            p.grad = torch.linspace(-1.0, 1.0, p.numel()).reshape(p.shape).bfloat16() * (t + 1)
        optimizer.step()
    saved = optimizer.state_dict()
    jax_params = [jnp.asarray(p.detach().float().numpy(), jnp.bfloat16) for p in params]
    tx = getattr(tc, name)(**kwargs)
    state = tc.load_state_dict(tx, saved, jax_params)
    block, fields = {
        "adamw": ("adam", {"mu": "exp_avg", "nu": "exp_avg_sq"}),
        "sgd": ("momentum", {"trace": "momentum_buffer"}),
        "nadam": ("nadam", {"mu": "exp_avg", "nu": "exp_avg_sq"}),
    }[name]
    for field, key in fields.items():
        for i, leaf in enumerate(getattr(state[block], field)):
            assert leaf.dtype == jnp.bfloat16
            expected = saved["state"][i][key].float().numpy()
            np.testing.assert_array_equal(np.asarray(leaf, np.float32), expected)


# docs/conventions.md, "Continuing a Keras run": gradtx state field -> Keras variable
KERAS_VARIABLES = {
    "SGD": {"trace": "momentum"},
    "RMSprop": {"nu": "velocity", "mu": "average_gradient", "trace": "momentum"},
    "Adam": {"mu": "momentum", "nu": "velocity", "nu_max": "velocity_hat"},
    "AdamW": {"mu": "momentum", "nu": "velocity", "nu_max": "velocity_hat"},
    "Adagrad": {"sum_of_squares": "accumulator"},
    "Adadelta": {"e_g": "accumulated_grad", "e_x": "accumulated_delta_var"},
    "Adamax": {"mu": "momentum", "nu": "norm"},
    "Nadam": {"mu": "momentum", "nu": "velocity"},
}
KERAS_RESUME_CASES = {  # id -> (Keras optimizer, its options, with an ExponentialDecay rate)
    "sgd_nesterov_decay": ("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}, False),
    "sgd_momentum_schedule": ("SGD", {"momentum": 0.9}, True),
    "rmsprop_centered_momentum_decay": (
        "RMSprop",
        {"momentum": 0.9, "centered": True, "weight_decay": 0.1},
        False,
    ),
    "adam_amsgrad_schedule": ("Adam", {"amsgrad": True}, True),
    "adam_ema_overwrite": ("Adam", {"use_ema": True, "ema_overwrite_frequency": 3}, False),
    "adamw_amsgrad": ("AdamW", {"weight_decay": 0.1, "amsgrad": True}, False),
    "adagrad_decay": ("Adagrad", {"weight_decay": 0.1}, False),
    "adadelta": ("Adadelta", {}, False),
    "adamax": ("Adamax", {}, False),
    "nadam_decay": ("Nadam", {"weight_decay": 0.1}, False),
    # gradient_accumulation_steps: 7 calls stop mid-accumulation (7 % k calls summed)
    "adam_accumulation_clipnorm_decay_schedule": (
        "Adam",
        {"gradient_accumulation_steps": 3, "clipnorm": 0.5, "weight_decay": 0.1},
        True,
    ),
    "sgd_nesterov_accumulation_loss_scale": (
        "SGD",
        {
            "momentum": 0.9,
            "nesterov": True,
            "gradient_accumulation_steps": 4,
            "loss_scale_factor": 8.0,
        },
        False,
    ),
    "rmsprop_centered_accumulation_global_clipnorm": (
        "RMSprop",
        {
            "momentum": 0.9,
            "centered": True,
            "gradient_accumulation_steps": 3,
            "global_clipnorm": 1.0,
        },
        False,
    ),
    "nadam_accumulation_schedule": ("Nadam", {"gradient_accumulation_steps": 2}, True),
}


def _state_from_keras(kind, tx, optimizer, variables, params):
    """The recipe of docs/conventions.md for every optimizer of its table."""
    import jax

    from gradtx import tree_set

    saved = {v.path: np.asarray(v) for v in optimizer.variables}
    unread = set(saved) - {f"{optimizer.name}/iteration", f"{optimizer.name}/learning_rate"}

    def keras_slot(slot):
        paths = [f"{optimizer.name}/{v.path.replace('/', '_')}_{slot}" for v in variables]
        unread.difference_update(paths)
        return [saved.get(path) for path in paths]

    slots = {**KERAS_VARIABLES[kind], "average": "average"}
    values = {field: keras_slot(slot) for field, slot in slots.items()}
    values = {field: value for field, value in values.items() if value[0] is not None}
    if kind == "RMSprop" and "trace" in values:  # Keras subtracts a buffer of +lr g / d
        values["trace"] = [-x for x in values["trace"]]
    if kind == "Nadam":
        (product,) = [v for v in optimizer.variables if not v.path.startswith(f"{optimizer.name}/")]
        values["mu_product"] = saved[product.path]
        unread.discard(product.path)
    k = optimizer.gradient_accumulation_steps
    if k:  # the sum of the gradients of the calls since the last update -> their mean
        calls = int(saved[f"{optimizer.name}/iteration"])
        sums = keras_slot("gradient_accumulator")
        values["acc_grads"] = [total / max(calls % k, 1) for total in sums]
        values.update(mini_step=calls % k, gradient_step=calls // k)
    assert not unread, f"Keras variables the table leaves out: {sorted(unread)}"
    state = tree_set(tx.init(params), **values)
    iteration, count = int(optimizer.iterations), jax.tree_util.GetAttrKey("count")
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, iteration) if path[-1] == count else x, state
    )


def _continue_keras_run(optimizer, to_gradtx, steps=(7, 20)):
    """Keras ``steps[0]`` steps on a model of four float64 variables; ``to_gradtx(model)``
    gives (tx, state, params) from there; then ``steps[1]`` steps in both: the largest
    difference of the parameters over the continued steps."""
    import keras

    from gradtx import apply_updates

    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    variables = model.trainable_variables
    noise = np.random.default_rng(0).normal(size=(sum(steps), 11))

    def grads(params, t):  # the gradient of a noisy quadratic, from each side's params
        splits = np.split(noise[t], np.cumsum([np.size(p) for p in params])[:-1])
        pairs = zip(params, splits, strict=True)
        return [0.5 * np.asarray(p) + n.reshape(np.shape(p)) for p, n in pairs]

    def keras_step(t):
        gradients = grads([np.asarray(v) for v in variables], t)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))

    optimizer.build(variables)
    for t in range(steps[0]):
        keras_step(t)
    tx, state, params = to_gradtx(model)
    worst = 0.0
    for t in range(steps[0], sum(steps)):
        keras_step(t)
        updates, state = tx.update([jnp.asarray(g) for g in grads(params, t)], state, params)
        params = apply_updates(params, updates)
        assert [p.dtype for p in params] == [jnp.float64] * 4
        for p, v in zip(params, variables, strict=True):
            worst = max(worst, float(np.max(np.abs(np.asarray(p) - np.asarray(v)))))
    return worst


@pytest.fixture
def keras_float64(record_keras, x64):
    import keras

    keras.config.set_floatx("float64")
    try:
        yield keras
    finally:
        keras.config.set_floatx("float32")


@pytest.mark.parametrize("case", KERAS_RESUME_CASES)
def test_live_keras_run_continues_in_gradtx_from_its_variables(case, keras_float64):
    """docs/conventions.md's table: float64 within 1e-12 over 20 continued steps (measured
    within 1e-15; the RMSprop momentum unflipped is 1.2 off, the counts left at 0 up to
    0.73, with a schedule, and a fresh state 0.8)."""
    from gradtx.compat import keras as kc

    keras = keras_float64
    kind, options, decayed = KERAS_RESUME_CASES[case]
    rate = keras.optimizers.schedules.ExponentialDecay(0.05, 5, 0.5) if decayed else 0.01
    optimizer = getattr(keras.optimizers, kind)(learning_rate=rate, **options)
    tx = getattr(kc, kind.lower())(
        learning_rate=kc.exponential_decay(0.05, 5, 0.5) if decayed else 0.01, **options
    )

    def to_gradtx(model):
        params = [jnp.asarray(np.asarray(v)) for v in model.trainable_variables]
        state = _state_from_keras(kind, tx, optimizer, model.trainable_variables, params)
        return tx, state, params

    assert _continue_keras_run(optimizer, to_gradtx) <= 1e-12


@pytest.mark.parametrize("accumulation", [None, 3])
def test_live_keras_run_continues_with_the_docs_recipe(accumulation, keras_float64):
    """The block of docs/conventions.md itself (tests/test_docs.py skips it: it needs a
    Keras model and optimizer), on a Keras AdamW run, and one with
    ``gradient_accumulation_steps=3`` copied after 7 calls (mid-accumulation)."""
    from tests.test_docs import python_blocks

    keras = keras_float64
    (code,) = [
        code
        for _, code in python_blocks("docs/conventions.md")
        if "keras.optimizers.AdamW(learning_rate=1e-3)" in code
    ]
    optimizer = keras.optimizers.AdamW(learning_rate=1e-3, gradient_accumulation_steps=accumulation)

    def to_gradtx(model):
        namespace = {"model": model, "optimizer": optimizer}
        exec(compile(code, "docs/conventions.md", "exec"), namespace)
        return namespace["tx"], namespace["state"], namespace["params"]

    assert _continue_keras_run(optimizer, to_gradtx) <= 1e-12


def _torch_and_gradtx_params(torch_optimizer, tx, steps=12):
    """Runs ``torch_optimizer`` (on the parameters it was built with) and ``tx`` from
    the same float64 start on the gradients of ``sum(p^2 + sin(p))``; returns both."""
    import jax
    import torch

    torch_params = [p for group in torch_optimizer.param_groups for p in group["params"]]
    params = [jnp.asarray(p.detach().numpy()) for p in torch_params]
    state, update = tx.init(params), jax.jit(tx.update)
    for _ in range(steps):
        for p in torch_params:
            p.grad = 2 * p.detach() + torch.cos(p.detach())
        torch_optimizer.step()
        updates, state = update([2 * p + jnp.cos(p) for p in params], state, params)
        params = [p + u for p, u in zip(params, updates, strict=True)]
    return [p.detach().numpy() for p in torch_params], [np.asarray(p) for p in params]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rprop", {"etas": (0.4, 1.3)}),
        ("adagrad", {"lr_decay": 0.5, "initial_accumulator_value": 0.1}),
        ("adam", {"amsgrad": True}),
        ("sgd", {"momentum": 0.9}),
    ],
)
def test_live_a_zero_d_tensor_lr_is_taken_as_pytorch_takes_it(name, options, record_torch, x64):
    """PyTorch takes ``lr`` as a 0-d tensor; so do the compat optimizers, under jit too
    (rprop's init and adagrad's lr_decay schedule raised a TypeError on one)."""
    import torch

    from gradtx.compat import torch as tc

    lr = torch.tensor(0.05, dtype=torch.float64)
    start = [torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)]
    torch_optimizer = record_torch.TORCH_OPTIMIZERS[name](start, lr=lr, **options)
    expected, actual = _torch_and_gradtx_params(
        torch_optimizer, getattr(tc, name)(lr=lr, **options)
    )
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


CHAINABLE = [
    ("step_lr", {"step_size": 30, "gamma": 0.5}),
    ("multistep_lr", {"milestones": [40, 90, 90], "gamma": 0.7}),
    ("exponential_lr", {"gamma": 0.99}),
    ("linear_lr", {"start_factor": 0.25, "end_factor": 0.5, "total_iters": 120}),
    ("constant_lr", {"factor": 0.5, "total_iters": 25}),
    ("polynomial_lr", {"total_iters": 150, "power": 1.5}),
    ("cosine_annealing_lr", {"T_max": 199}),  # eta_min = 0, up to T_max
]


def _chained_scheduler_values(record_torch, specs, base_lr, steps=200):
    import torch

    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=base_lr)
    schedulers = [record_torch.make_scheduler(optimizer, s["name"], s["kwargs"]) for s in specs]
    chained = torch.optim.lr_scheduler.ChainedScheduler(schedulers, optimizer=optimizer)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.zeros_like(param)
        optimizer.step()
        chained.step()
    return np.asarray(values)


def _product(specs, base_lr, steps=200):
    from gradtx.compat.torch import lr_scheduler

    t = jnp.arange(steps)
    value = jnp.full(steps, base_lr)
    for spec in specs:
        value = value * getattr(lr_scheduler, spec["name"])(**spec["kwargs"])(t) / base_lr
    return np.asarray(value)


@pytest.mark.parametrize("pair", [(0, 6), (1, 2), (3, 4), (5, 6), (6, 0, 3)])
def test_live_chained_scheduler_is_the_product_of_its_schedules(pair, record_torch, x64):
    """docs/conventions.md: ChainedScheduler of these chainable schedulers (each
    multiplies the current lr by a factor) is ``base_lr * prod(schedule(t) / base_lr)``."""
    base_lr = 0.1
    specs = [
        {"name": CHAINABLE[i][0], "kwargs": {"base_lr": base_lr, **CHAINABLE[i][1]}} for i in pair
    ]
    expected = _chained_scheduler_values(record_torch, specs, base_lr)
    np.testing.assert_allclose(_product(specs, base_lr), expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(
    ("cosine", "first_step"), [({"T_max": 100, "eta_min": 0.01}, 2), ({"T_max": 50}, 51)]
)
def test_live_chained_cosine_with_eta_min_or_past_t_max_is_not_a_product(
    cosine, first_step, record_torch, x64
):
    """docs/conventions.md: CosineAnnealingLR's recursion is affine in the current lr
    when eta_min != 0, and adds a fixed amount past T_max; chained, it is no product."""
    base_lr = 0.1
    specs = [
        {"name": "cosine_annealing_lr", "kwargs": {"base_lr": base_lr, **cosine}},
        {"name": "exponential_lr", "kwargs": {"base_lr": base_lr, "gamma": 0.99}},
    ]
    expected = _chained_scheduler_values(record_torch, specs, base_lr)
    actual = _product(specs, base_lr)
    np.testing.assert_allclose(actual[:first_step], expected[:first_step], rtol=1e-10)
    assert abs(actual[first_step] - expected[first_step]) > 1e-8 * abs(expected[first_step])
    assert np.max(np.abs(actual - expected)) > 1e-3


def test_live_multiplicative_lr_is_the_running_product_of_its_factors(record_torch, x64):
    """docs/conventions.md: MultiplicativeLR is ``base_lr * f(1) * ... * f(t)`` (LambdaLR
    is ``base_lr * f(t)``)."""
    import torch

    def factor(t):
        return 1.0 / (1 + 0.01 * t)

    base_lr, values = 0.1, {}
    for scheduler in (torch.optim.lr_scheduler.MultiplicativeLR, torch.optim.lr_scheduler.LambdaLR):
        param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([param], lr=base_lr)
        stepper, values[scheduler.__name__] = scheduler(optimizer, factor), []
        for _ in range(200):
            values[scheduler.__name__].append(optimizer.param_groups[0]["lr"])
            param.grad = torch.zeros_like(param)
            optimizer.step()
            stepper.step()
    running = base_lr * np.cumprod([1.0] + [factor(t) for t in range(1, 200)])
    np.testing.assert_allclose(running, values["MultiplicativeLR"], rtol=1e-12)
    np.testing.assert_allclose(
        [base_lr * factor(t) for t in range(200)], values["LambdaLR"], rtol=1e-15
    )


def test_live_adagrad_param_groups_start_from_the_constructors_accumulator(record_torch, x64):
    """docs/conventions.md: PyTorch fills every group's ``sum`` with the constructor's
    ``initial_accumulator_value``, not the group's; a partition matches it when each
    ``tc.adagrad`` is given the constructor's value."""
    import torch

    import gradtx as gtx
    from gradtx.compat import torch as tc

    a = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 0.25], dtype=torch.float64, requires_grad=True)
    groups = [
        {"params": [a], "lr": 0.3, "initial_accumulator_value": 0.1},
        {"params": [b], "lr_decay": 0.5, "weight_decay": 0.1},
    ]
    torch_optimizer = torch.optim.Adagrad(groups, initial_accumulator_value=2.0)
    tx = gtx.partition(
        {
            "a": tc.adagrad(0.3, initial_accumulator_value=2.0),
            "b": tc.adagrad(lr_decay=0.5, weight_decay=0.1, initial_accumulator_value=2.0),
        },
        ["a", "b"],
    )
    expected, actual = _torch_and_gradtx_params(torch_optimizer, tx)
    for x, y in zip(actual, expected, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_live_sgd_param_groups_with_and_without_momentum_continue_in_gradtx(record_torch, x64):
    """PyTorch's SGD keeps no state for the group without momentum: its state_dict
    loads into a partition and the run continues on PyTorch's trajectory."""
    import jax
    import torch

    import gradtx as gtx
    from gradtx.compat import torch as tc

    a = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 0.25], dtype=torch.float64, requires_grad=True)
    groups = [
        {"params": [a], "momentum": 0.9, "nesterov": True},
        {"params": [b], "weight_decay": 0.1},
    ]
    optimizer = torch.optim.SGD(groups, lr=0.05)

    def step():
        for p in (a, b):
            p.grad = 2 * p.detach() + torch.cos(p.detach())
        optimizer.step()

    for _ in range(5):
        step()
    tx = gtx.partition(
        {"a": tc.sgd(0.05, momentum=0.9, nesterov=True), "b": tc.sgd(0.05, weight_decay=0.1)},
        ["a", "b"],
    )
    params = [jnp.asarray(p.detach().numpy()) for p in (a, b)]
    state, update = tc.load_state_dict(tx, optimizer.state_dict(), params), jax.jit(tx.update)
    for _ in range(10):
        step()
        updates, state = update([2 * p + jnp.cos(p) for p in params], state, params)
        params = [p + u for p, u in zip(params, updates, strict=True)]
    for x, y in zip(params, (a, b), strict=True):
        np.testing.assert_allclose(x, y.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def record_recipes():
    return _load("record_recipes")


def _check_recipes(recorded, golden_file):
    """A live recording of the recipes against the golden one the non-live tests compare
    gradtx with (so gradtx follows the installed library through it)."""
    golden = json.loads((GOLDEN / golden_file).read_text())["cases"]
    for name, case in golden.items():
        for key, expected in case.items():
            if key in ("params", "average"):
                np.testing.assert_allclose(
                    recorded["cases"][name][key], expected, rtol=1e-12, atol=1e-14, err_msg=name
                )


def test_live_pytorch_recipes_record_as_the_golden_file(record_recipes, record_torch):
    problem = record_recipes.recipe_problem()
    _check_recipes(record_recipes.record_torch(problem), "torch_recipes.json")


def test_live_keras_recipes_record_as_the_golden_file(record_recipes, keras_float64):
    problem = record_recipes.recipe_problem()
    _check_recipes(record_recipes.record_keras(problem), "keras_recipes.json")


def test_live_rprop_skips_an_element_whose_gradient_is_nan(record_torch, x64):
    """torch.sign(nan) is 0: PyTorch's Rprop leaves such an element where it is; so does
    tc.rprop (its parameter became NaN for good before)."""
    import jax
    import torch

    import gradtx as gtx
    from gradtx.compat import torch as tc

    grads = [[1.0, -2.0, 3.0], [1.0, np.nan, 3.0], [1.0, -2.0, -3.0], [2.0, np.nan, -3.0]]
    grads += [[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]]
    p = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    torch_optimizer = torch.optim.Rprop([p], lr=0.1, etas=(0.4, 1.3))
    tx = tc.rprop(lr=0.1, etas=(0.4, 1.3))
    params = jnp.array([1.0, 2.0, 3.0])
    state, update = tx.init(params), jax.jit(tx.update)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        torch_optimizer.step()
        updates, state = update(jnp.array(g), state, params)
        params = gtx.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params), p.detach().numpy(), rtol=1e-12)
