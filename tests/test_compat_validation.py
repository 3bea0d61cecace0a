"""The PyTorch and Keras layers refuse bad arguments where they are given, by the other
library's argument names, and keep accepting what those libraries accept and mean."""

from __future__ import annotations

import inspect
import math

import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx.compat import keras as kc
from gradtx.compat import torch as tc
from gradtx.compat.torch import lr_scheduler as tls

# --- Keras schedules: every argument checked when the schedule is built -------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: kc.polynomial_decay(None, 100), "^initial_learning_rate must"),
        (lambda: kc.cosine_decay(0.1, 100, alpha="x"), "^alpha must"),
        (lambda: kc.exponential_decay({}, 10, 0.5), "^initial_learning_rate must"),
        (lambda: kc.cosine_decay([0.1, 0.2], 100), "^initial_learning_rate must be a scalar"),
        (lambda: kc.cosine_decay("0.1", 100), "^initial_learning_rate must"),
        (lambda: kc.inverse_time_decay(-0.1, 10, 0.5), "^initial_learning_rate must"),
        (lambda: kc.exponential_decay(0.1, 10, -1.0), "^decay_rate must"),
        (lambda: kc.inverse_time_decay(0.1, 10, -1.0), "^decay_rate must"),
        (lambda: kc.exponential_decay(0.1, 10, math.nan), "^decay_rate must"),
        (lambda: kc.polynomial_decay(0.1, 100, power=-1.0), "^power must"),
        (lambda: kc.polynomial_decay(0.1, 100, end_learning_rate=None), "^end_learning_rate"),
        (lambda: kc.polynomial_decay(0.1, float("inf"), cycle=True), "^decay_steps must"),
        (lambda: kc.cosine_decay_restarts(0.1, 10, t_mul=0.5), r"^t_mul must be in \[1"),
        (lambda: kc.cosine_decay_restarts(0.1, 10, m_mul=-1.0), "^m_mul must"),
        (lambda: kc.cosine_decay_restarts(0.1, 10, alpha=2.0), "^alpha must"),
        (lambda: kc.cosine_decay(0.1, 10, alpha=-1.0), "^alpha must"),
        (lambda: kc.cosine_decay(0.1, 10, warmup_target="x", warmup_steps=5), "^warmup_target"),
        (lambda: kc.cosine_decay(0.1, 10, warmup_steps=5), "^warmup_steps=5 needs a warmup"),
        (lambda: kc.cosine_decay(0.1, 10, warmup_target=0.2, warmup_steps=-1), "^warmup_steps"),
        (lambda: kc.reduce_lr_on_plateau(factor=1.0), "^factor must"),
        (lambda: kc.reduce_lr_on_plateau(mode="minimum"), "^mode must"),
        (lambda: kc.reduce_lr_on_plateau(min_delta=math.nan), "^min_delta must"),
        (lambda: kc.reduce_lr_on_plateau(min_lr=-1.0), "^min_lr must"),
        (lambda: kc.piecewise_constant_decay([1, 2], [1.0, "x", 3.0]), r"^values\[1\] must"),
        (lambda: kc.piecewise_constant_decay([1, 2], [1.0, -1.0, 3.0]), r"^values\[1\] must"),
    ],
)
def test_keras_schedules_refuse_bad_arguments_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: kc.exponential_decay(0.1, 10, 0.5, staircase="x"),
        lambda: kc.inverse_time_decay(0.1, 10, 0.5, staircase=2),
        lambda: kc.polynomial_decay(0.1, 10, cycle="yes"),
        lambda: kc.piecewise_constant_decay([1, 2], 3.0),
    ],
)
def test_keras_schedule_flags_must_be_bools_and_values_a_sequence(build):
    with pytest.raises(TypeError, match="staircase|cycle|values"):
        build()


def test_keras_cosine_decay_restarts_below_t_mul_one_is_nan_in_keras_so_it_is_refused():
    # Keras 3.15: CosineDecayRestarts(.1, 10, t_mul=0.5) is NaN from step 20 (the sum
    # of the shrinking periods) on; t_mul >= 1 stays finite
    with pytest.raises(ValueError, match="^t_mul must"):
        kc.cosine_decay_restarts(0.1, 10, t_mul=0.999)
    values = kc.cosine_decay_restarts(0.1, 10, t_mul=1.5)(jnp.arange(0, 1000, 7))
    assert bool(jnp.all(jnp.isfinite(values)))


def test_keras_schedules_take_real_scalars_and_bools_and_what_keras_means():
    with pytest.raises(ValueError, match="^initial_learning_rate must"):
        kc.exponential_decay("0.1", 10, 0.5)
    with pytest.raises(TypeError, match="^staircase must be True or False"):
        kc.exponential_decay(0.1, 10, 0.5, staircase=np.array([True]))
    steps = jnp.arange(0, 40, 3)
    for schedule in [
        kc.exponential_decay(0.1, 2.5, 1.5),  # float decay_steps, a growing rate
        kc.polynomial_decay(0.1, 10, end_learning_rate=1.0, power=0.0),
        kc.cosine_decay(jnp.asarray(0.1), 10, warmup_target=0.2, warmup_steps=0),
        kc.cosine_decay_restarts(0.1, 10, m_mul=2.0, alpha=1.0),
        kc.exponential_decay(np.float32(0.1), 10, 0.0, staircase=np.bool_(True)),
    ]:
        values = schedule(steps)
        assert values.shape == steps.shape
        assert bool(jnp.all(jnp.isfinite(values)))


def test_keras_schedules_take_decay_steps_of_one_and_below_as_keras_divides_by_them():
    # Keras: decay_rate ** (step / decay_steps), any decay_steps > 0 (a float too)
    steps = np.arange(6)
    for decay_steps in (1, 0.5):
        values = kc.exponential_decay(0.1, decay_steps, 0.5)(jnp.asarray(steps))
        np.testing.assert_allclose(values, 0.1 * 0.5 ** (steps / decay_steps), rtol=1e-6)
        values = kc.inverse_time_decay(0.1, decay_steps, 0.5)(jnp.asarray(steps))
        np.testing.assert_allclose(values, 0.1 / (1 + 0.5 * steps / decay_steps), rtol=1e-6)
    with pytest.raises(ValueError, match="^decay_steps must"):
        kc.exponential_decay(0.1, 0.0, 0.5)


# --- Keras optimizers: Keras' names, bools, ema options -----------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: kc.adamax(beta_1=-1.0), "^beta_1 must"),
        (lambda: kc.adamax(beta_2=1.0), "^beta_2 must"),
        (lambda: kc.adam(beta_2=1.0), "^beta_2 must"),
        (lambda: kc.adamw(beta_1=-0.1, amsgrad=True), "^beta_1 must"),
        (lambda: kc.sgd(momentum=1.0), "^momentum must"),
        (lambda: kc.rmsprop(momentum=-0.5), "^momentum must"),
        (lambda: kc.nadam(beta_1=math.nan), "^beta_1 must"),
        (lambda: kc.rmsprop(rho=-1.0), "^rho must"),
        (lambda: kc.adadelta(rho=1.0), "^rho must"),
        (lambda: kc.adam(epsilon=-1.0), "^epsilon must"),
        (lambda: kc.adagrad(epsilon="x"), "^epsilon must"),
        (lambda: kc.adadelta(epsilon=0.0), "^epsilon must"),
        (lambda: kc.rmsprop(epsilon=None), "^epsilon must"),
        (lambda: kc.adagrad(initial_accumulator_value=-1.0), "^initial_accumulator_value"),
        (lambda: kc.sgd(momentum=[0.1, 0.2]), "^momentum must"),
        (lambda: kc.adamw(weight_decay=-1.0), "^weight_decay must"),
        (lambda: kc.adadelta(learning_rate=-1.0), "^learning_rate must"),
        (lambda: kc.sgd(learning_rate=None), "^learning_rate must"),
        (lambda: kc.sgd(0.1, ema_momentum=0.5), "^ema_momentum=0.5 needs use_ema=True"),
        (lambda: kc.adamw(exclude_from_weight_decay=5.0), "^exclude_from_weight_decay must"),
        (lambda: kc.sgd(gradient_accumulation_steps=2**40), "^gradient_accumulation_steps"),
    ],
)
def test_keras_optimizers_name_the_keras_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("nesterov", lambda: kc.sgd(momentum=0.9, nesterov="x")),
        ("amsgrad", lambda: kc.adam(amsgrad=2)),
        ("amsgrad", lambda: kc.adamw(amsgrad=None)),
        ("centered", lambda: kc.rmsprop(centered="yes")),
        ("use_ema", lambda: kc.adam(use_ema="yes")),
    ],
)
def test_keras_optimizer_flags_must_be_bools(name, build):
    with pytest.raises(TypeError, match=f"^{name} must be True or False"):
        build()


def test_keras_ema_momentum_needs_use_ema_unless_left_at_its_default():
    with pytest.raises(ValueError, match="^ema_momentum=0.9 needs use_ema=True"):
        kc.adam(ema_momentum=0.9)
    kc.sgd(0.1, ema_momentum=0.99)  # Keras' default, written out
    kc.sgd(0.1, use_ema=True, ema_momentum=0.5)
    # schedule_injection hands the default over as a float32 array
    tx = gtx.schedule_injection(kc.sgd)(learning_rate=0.1, momentum=0.9)
    tx.update(jnp.ones(2), tx.init(jnp.zeros(2)), jnp.zeros(2))


def test_keras_reduce_lr_on_plateau_checks_path_and_metric():
    with pytest.raises(TypeError, match="^path must be None or a string"):
        kc.reduce_lr_on_plateau(path=3)
    tx = gtx.schedule_injection(kc.sgd)(learning_rate=0.1)
    opt_state = tx.init(jnp.zeros(2))
    plateau = kc.reduce_lr_on_plateau()
    state = plateau.init()
    for value in ["a", {"loss": 1.0}, None, [1.0, 2.0]]:
        with pytest.raises(TypeError, match="monitored metric 'val_loss'"):
            plateau.on_epoch_end(value, opt_state, state)
    _, state = plateau.on_epoch_end(np.float32(1.0), opt_state, state)
    assert state.best == 1.0


# --- PyTorch schedulers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: tls.cosine_annealing_lr(0.1, 100, eta_min=None), "^eta_min must"),
        (lambda: tls.cosine_annealing_lr(0.1, 100, eta_min=math.nan), "^eta_min must"),
        (lambda: tls.cosine_annealing_lr(0.1, 100, eta_min=[0.0, 0.1]), "^eta_min must"),
        (lambda: tls.cosine_annealing_lr(0.1, 100, eta_min=-1.0), "^eta_min must"),
        (lambda: tls.cosine_annealing_warm_restarts(0.1, 10, eta_min="x"), "^eta_min must"),
        (lambda: tls.cosine_annealing_warm_restarts(0.1, 10, eta_min=math.nan), "^eta_min"),
        (lambda: tls.cyclic_lr(0.01, 0.1, 2, mode="exp_range", gamma=-1.0), "^gamma must"),
        (lambda: tls.cyclic_lr(0.01, 0.1, 2, mode="exp_range", gamma=math.nan), "^gamma must"),
        (lambda: tls.cyclic_lr(0.01, 0.1, 2, gamma="x"), "^gamma must"),
        (lambda: tls.cyclic_momentum(2, mode="exp_range", gamma=-1.0), "^gamma must"),
        (lambda: tls.cyclic_momentum(2, gamma=None), "^gamma must"),
        (lambda: tls.multistep_lr(1.0, [2**40]), r"^milestones\[0\] must"),
        (lambda: tls.multistep_lr(1.0, [-1]), r"^milestones\[0\] must"),
        (lambda: tls.sequential_lr([tls.constant_lr(1.0)] * 2, [-1]), r"^milestones\[0\]"),
        (lambda: tls.one_cycle_lr(0.1, 10, pct_start=1.5), "^pct_start must"),
        (lambda: tls.one_cycle_momentum(10, pct_start=-0.1), "^pct_start must"),
        # PyTorch's names, not those of the gradtx block (min_scale = min_lr / lr, ...)
        (lambda: tls.reduce_lr_on_plateau(0.1, min_lr=-1.0), "^min_lr must"),
        (lambda: tls.reduce_lr_on_plateau(0.1, eps=-1.0), r"^eps must .*, got -1.0$"),
        (lambda: tls.reduce_lr_on_plateau(0.0), "^lr must"),
        (lambda: tls.step_lr(0.1, 2, gamma=-0.5), "^gamma must"),
        (lambda: tls.polynomial_lr(0.1, power=-1.0), "^power must"),
    ],
)
def test_torch_schedulers_refuse_bad_values_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: tls.step_lr(-0.1, 2), "base_lr"),
        (lambda: tls.multistep_lr(-0.1, [2]), "base_lr"),
        (lambda: tls.multistep_lr(0.1, [2], gamma=-0.5), "gamma"),
        (lambda: tls.exponential_lr(-0.1, 0.5), "base_lr"),
        (lambda: tls.exponential_lr(0.1, -0.5), "gamma"),
        (lambda: tls.cosine_annealing_lr(-0.1, 10), "base_lr"),
        (lambda: tls.cosine_annealing_warm_restarts(-0.1, 10), "base_lr"),
        (lambda: tls.cyclic_lr(-0.01, 0.1), "base_lr"),
        (lambda: tls.cyclic_lr(0.01, -0.1), "max_lr"),
        (lambda: tls.cyclic_lr(0.01, 0.1, mode="triangle"), "mode"),
        (lambda: tls.cyclic_momentum(base_momentum=1.5), "base_momentum"),
        (lambda: tls.cyclic_momentum(max_momentum=-0.1), "max_momentum"),
        (lambda: tls.one_cycle_lr(0.1, 10, anneal_strategy="cosine"), "anneal_strategy"),
        (lambda: tls.one_cycle_lr(-0.1, 10), "max_lr"),
        (lambda: tls.one_cycle_lr(0.1, 10, div_factor=0.0), "div_factor"),
        (lambda: tls.one_cycle_lr(0.1, 10, final_div_factor=-1.0), "final_div_factor"),
        (lambda: tls.one_cycle_momentum(10, base_momentum=1.0), "base_momentum"),
        (lambda: tls.one_cycle_momentum(10, max_momentum=1.5), "max_momentum"),
        (lambda: tls.linear_lr(-0.1), "base_lr"),
        (lambda: tls.linear_lr(0.1, start_factor=0.0), "start_factor"),  # as PyTorch
        (lambda: tls.linear_lr(0.1, end_factor=1.5), "end_factor"),
        (lambda: tls.constant_lr(-0.1), "base_lr"),
        (lambda: tls.constant_lr(0.1, factor=1.5), "factor"),
        (lambda: tls.polynomial_lr(-0.1), "base_lr"),
    ],
)
def test_torch_schedulers_name_the_argument_out_of_range_when_built(build, argument):
    with pytest.raises(ValueError, match=f"^{argument} must"):
        build()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: tls.multistep_lr(1.0, "12"), "^milestones must be a sequence"),
        (lambda: tls.multistep_lr(1.0, [1.9]), "^milestones must be a sequence"),
        (lambda: tls.multistep_lr(1.0, "0.1"), "^milestones must be a sequence"),
        (lambda: tls.multistep_lr(1.0, 3), "^milestones must be a sequence"),
        (lambda: tls.multistep_lr(1.0, [True]), "^milestones must be a sequence"),
        (lambda: tls.sequential_lr(1.0, [1]), "^schedules must be a sequence"),
        (lambda: tls.sequential_lr([tls.constant_lr(1.0)] * 2, 1.5), "^milestones must"),
        (lambda: tls.sequential_lr([tls.constant_lr(1.0)] * 2, [1.5]), "^milestones must"),
        (lambda: tls.cyclic_lr(0.01, 0.1, cycle_momentum="no"), "^cycle_momentum must be"),
        (lambda: tls.one_cycle_lr(0.1, 10, cycle_momentum=2), "^cycle_momentum must be"),
        (lambda: tls.one_cycle_lr(0.1, 10, three_phase="x"), "^three_phase must be"),
        (lambda: tls.one_cycle_momentum(10, three_phase=2), "^three_phase must be"),
        (lambda: tls.reduce_lr_on_plateau(0.1, require_value="no"), "^require_value must"),
    ],
)
def test_torch_scheduler_sequences_and_flags_have_the_right_type(build, match):
    with pytest.raises(TypeError, match=match):
        build()


def test_torch_multistep_lr_takes_whole_steps_in_any_order_counted_as_pytorch():
    with pytest.raises(TypeError, match="^milestones must be a sequence"):
        tls.multistep_lr(0.1, [1, 2.5])  # PyTorch's integer step count never equals 2.5
    # PyTorch 2.13, MultiStepLR(opt(lr=0.1), [3, 1, 1], gamma=0.5): its Counter makes
    # the order irrelevant and a repeated milestone count twice
    expected = [0.1, 0.025, 0.025, 0.0125, 0.0125, 0.0125]
    for milestones in ([3, 1, 1], [1, 1, 3], (1, 3, 1), np.array([3, 1, 1]), [3.0, 1, 1]):
        values = tls.multistep_lr(0.1, milestones, gamma=0.5)(jnp.arange(6))
        np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_torch_cyclic_gamma_is_positive_and_may_exceed_one_as_in_pytorch():
    with pytest.raises(ValueError, match="^gamma must"):
        tls.cyclic_lr(0.01, 0.1, 2, mode="exp_range", gamma=0.0)
    # PyTorch accepts gamma > 1 in 'exp_range' (the cycles grow); it is finite here
    values = tls.cyclic_lr(0.01, 0.1, 2, mode="exp_range", gamma=1.01)(jnp.arange(20))
    assert bool(jnp.all(jnp.isfinite(values))) and float(values.max()) > 0.1


# --- PyTorch optimizers ---------------------------------------------------------------


def test_torch_adagrad_lr_decay_is_checked_when_built():
    for lr_decay in (math.inf, -1.0, math.nan, "x"):
        with pytest.raises(ValueError, match="^lr_decay must"):
            tc.adagrad(0.1, lr_decay=lr_decay)


@pytest.mark.parametrize("build", [tc.adam, tc.adamw, tc.adamax, tc.nadam, tc.radam])
@pytest.mark.parametrize("betas", [0.9, None, "ab", (0.9,), (0.9, 0.99, 0.999)])
def test_torch_betas_must_be_a_pair(build, betas):
    with pytest.raises((TypeError, ValueError), match="^betas must be a pair"):
        build(betas=betas)


@pytest.mark.parametrize(
    ("name", "value"),
    [("etas", 0.5), ("etas", (0.5,)), ("step_sizes", 1.0), ("step_sizes", "ab")],
)
def test_torch_rprop_pairs_must_be_pairs(name, value):
    with pytest.raises((TypeError, ValueError), match=f"^{name} must be a pair"):
        tc.rprop(**{name: value})


def test_torch_pairs_are_two_values_of_any_sequence_but_not_a_string():
    with pytest.raises(TypeError, match="^betas must be a pair"):
        tc.adam(betas="ab")  # two characters
    torch = pytest.importorskip("torch")
    tc.adam(betas=[0.9, 0.99])
    tc.adam(betas=torch.tensor([0.9, 0.99]))
    tc.rprop(etas=[0.4, 1.5], step_sizes=np.array([1e-6, 1.0]))


def _flag_cases():
    cases = []
    for name in tc.__all__:
        function = getattr(tc, name)
        if not inspect.isfunction(function) or name.startswith("load_"):
            continue
        for parameter in inspect.signature(function).parameters.values():
            if isinstance(parameter.default, bool):
                cases.append((name, parameter.name))
    return cases


@pytest.mark.parametrize(("function", "flag"), _flag_cases())
@pytest.mark.parametrize("value", ["no", 2, None, np.array([True, False])])
def test_every_torch_flag_must_be_a_bool(function, flag, value):
    arguments = {"max_norm": 1.0} if function == "clip_grad_norm" else {}
    with pytest.raises(TypeError, match=f"^{flag} must be True or False"):
        getattr(tc, function)(**arguments, **{flag: value})


def test_torch_sgd_maximize_no_does_not_ascend():
    with pytest.raises(TypeError, match="^maximize must be True or False"):
        tc.sgd(0.1, maximize="no")
    flags = {flag for _, flag in _flag_cases()}  # the flags the test above covers
    assert {"maximize", "nesterov", "amsgrad", "centered", "decoupled_weight_decay"} <= flags
    assert "error_if_nonfinite" in flags
    tc.sgd(0.1, maximize=np.bool_(True))  # a NumPy bool is a bool


def test_torch_clip_grad_norm_keeps_the_infinity_norm():
    tc.clip_grad_norm(1.0, norm_type=float("inf"))


# --- load_state_dict's step -------------------------------------------------------------


def _adam_state(step):
    return {
        "state": {0: {"step": step, "exp_avg": np.ones(2), "exp_avg_sq": np.ones(2)}},
        "param_groups": [{"params": [0]}],
    }


@pytest.mark.parametrize("step", [-1, 2.5, 2**31, True, "3", np.float64(2.0)])
def test_load_state_dict_step_must_be_a_non_negative_int32(step):
    with pytest.raises(ValueError, match="^step must be a non-negative integer"):
        tc.load_state_dict(tc.adam(), _adam_state(3.0), {"w": jnp.zeros(2)}, step=step)


@pytest.mark.parametrize("saved", [-1.0, 2.5, 2.0**40])
def test_load_state_dict_refuses_a_pytorch_step_that_is_no_step_count(saved):
    with pytest.raises(ValueError, match="PyTorch state's 'step' must be a whole number"):
        tc.load_state_dict(tc.adam(), _adam_state(saved), {"w": jnp.zeros(2)})


def test_load_state_dict_takes_an_explicit_step_in_range():
    with pytest.raises(ValueError, match="^step must be a non-negative integer"):
        tc.load_state_dict(
            tc.sgd(0.1), {"state": {}, "param_groups": [{"params": [0]}]}, [jnp.zeros(2)], step=-1
        )
    state = tc.load_state_dict(tc.sgd(0.1), _adam_state(3.0) | {"state": {0: {}}}, [jnp.zeros(2)])
    assert state is not None
    state = tc.load_state_dict(tc.adam(), _adam_state(3.0), {"w": jnp.zeros(2)}, step=5)
    assert int(state["adam"].count) == 5


# Found by the review of these checks: what PyTorch takes is still accepted, and a
# schedule of the wrong arity is named by PyTorch's argument, where it is given.


def test_milestones_as_jax_arrays_or_torch_tensors_are_step_numbers():
    torch = pytest.importorskip("torch")
    expected = tls.multistep_lr(1.0, [2, 4])(jnp.arange(6))
    for milestones in (jnp.array([2, 4]), torch.tensor([2, 4]), np.array([2, 4])):
        np.testing.assert_array_equal(tls.multistep_lr(1.0, milestones)(jnp.arange(6)), expected)


@pytest.mark.parametrize("etas", [(1.0, 1.2), (0.5, 1.0)])
def test_rprop_etas_as_pytorch_checks_them(etas):
    # torch.optim.Rprop: 0 < eta_minus < 1 < eta_plus
    with pytest.raises(ValueError, match="etas"):
        tc.rprop(etas=etas)


@pytest.mark.parametrize(
    "name, make",
    [
        ("lr", lambda s: tc.sgd(lr=s)),
        ("momentum", lambda s: tc.sgd(0.1, momentum=s)),
        (r"betas\[0\]", lambda s: tc.adam(betas=(s, 0.999))),
    ],
)
def test_torch_schedules_of_the_wrong_arity_are_named_where_given(name, make):
    with pytest.raises(TypeError, match=name + " is a schedule"):
        make(lambda a, b: 0.1)
