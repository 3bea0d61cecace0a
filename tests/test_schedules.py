"""Schedules: every value against PyTorch/Keras golden values, Optax, or the equations."""

from __future__ import annotations

import fractions
import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx import schedules
from gradtx.compat.torch import lr_scheduler as torch_lr_scheduler

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "schedules.json").read_text())
INT32_MAX = int(np.iinfo(np.int32).max)


def _values(schedule, steps):
    # one compiled evaluation over all steps: cheaper than many small eager ops
    return np.asarray(jax.jit(schedule)(jnp.arange(steps, dtype=jnp.int32)), np.float64)


def assert_schedule_close(actual, expected, rtol=1e-5):
    expected = np.asarray(expected, np.float64)
    # float32 cosines near their zero carry ~1e-7 of the peak in absolute error
    atol = 1e-6 * np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# Each golden case (recorded by tests/golden/record_schedules.py) and the gradtx call that
# must give the same numbers.
GOLDEN_EQUIVALENTS = {
    "torch_step_lr": lambda: schedules.step_decay(0.1, step_size=7, gamma=0.5),
    "torch_multistep_lr": lambda: schedules.piecewise_constant(
        [10, 30, 70, 150], [0.1 * 0.5**i for i in range(5)]
    ),
    "torch_exponential_lr": lambda: schedules.exponential_decay(
        0.1, transition_steps=1, decay_rate=0.97
    ),
    "torch_polynomial_lr": lambda: schedules.polynomial(0.1, 0.0, power=2.0, transition_steps=50),
    "torch_linear_lr": lambda: schedules.linear(0.01, 0.1, transition_steps=20),
    "torch_cosine_annealing_lr": lambda: schedules.cosine_decay(0.1, 100, alpha=0.01),
    "torch_cosine_warm_restarts": lambda: schedules.sgdr(
        0.1, first_period=10, period_mult=2, min_value=0.001
    ),
    "torch_cosine_warm_restarts_mult1": lambda: schedules.sgdr(0.1, first_period=15),
    "torch_cyclic_triangular": lambda: schedules.cyclical(0.001, 0.1, step_size_up=10),
    "torch_cyclic_triangular2": lambda: schedules.cyclical(
        0.001, 0.1, step_size_up=7, step_size_down=13, mode="triangular2"
    ),
    "torch_cyclic_exp_range": lambda: schedules.cyclical(
        0.001, 0.1, step_size_up=10, mode="exp_range", gamma=0.99
    ),
    "torch_one_cycle": lambda: schedules.one_cycle(100, 0.1),
    "torch_one_cycle_linear_three_phase": lambda: schedules.one_cycle(
        150,
        0.2,
        pct_start=0.25,
        anneal_strategy="linear",
        div_factor=10.0,
        final_div_factor=100.0,
        three_phase=True,
    ),
    "keras_exponential_decay": lambda: schedules.exponential_decay(0.1, 10, 0.9),
    "keras_exponential_decay_staircase": lambda: schedules.exponential_decay(
        0.1, 10, 0.9, staircase=True
    ),
    "keras_inverse_time_decay": lambda: schedules.inverse_time_decay(0.1, 5, 0.5),
    "keras_inverse_time_decay_staircase": lambda: schedules.inverse_time_decay(
        0.1, 5, 0.5, staircase=True
    ),
    "keras_cosine_decay": lambda: schedules.cosine_decay(0.1, 80, alpha=0.05),
    "keras_cosine_decay_restarts": lambda: schedules.sgdr(
        0.1, first_period=10, period_mult=2.0, min_value=0.1 * 0.1, peak_decay=0.8
    ),
    "keras_cosine_decay_restarts_fractional": lambda: schedules.sgdr(
        0.1, first_period=8, period_mult=1.5, min_value=0.0, peak_decay=0.9
    ),
}


def test_every_golden_case_has_a_gradtx_equivalent():
    assert set(GOLDEN_EQUIVALENTS) == set(GOLDEN["schedules"])


@pytest.mark.live
def test_golden_file_holds_what_installed_pytorch_gives():
    # PyTorch only: re-recording Keras' schedules takes minutes of eager dispatch
    pytest.importorskip("torch")
    path = pathlib.Path(__file__).parent / "golden" / "record_schedules.py"
    spec = importlib.util.spec_from_file_location("record_schedules", path)
    recorder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recorder)
    schedules_recorded, plateau = recorder.record_torch()
    for name, case in schedules_recorded.items():
        np.testing.assert_allclose(case["values"], GOLDEN["schedules"][name]["values"], rtol=1e-9)
    for name, case in plateau.items():
        assert case["lrs"] == GOLDEN["plateau"][name]["lrs"]


@pytest.mark.parametrize("name", sorted(GOLDEN_EQUIVALENTS))
def test_schedule_matches_pytorch_and_keras_at_every_recorded_step(name):
    expected = GOLDEN["schedules"][name]["values"]
    actual = _values(GOLDEN_EQUIVALENTS[name](), len(expected))
    assert_schedule_close(actual, expected)


@pytest.mark.parametrize("name", ["torch_one_cycle", "torch_one_cycle_linear_three_phase"])
def test_one_cycle_is_within_float32_rounding_of_pytorch_relative_to_each_value(name):
    """The linear anneal cancelled in float32 at its end, 2.4e-4 relative off a final
    value 1e5 below the peak (hidden by a tolerance scaled to the peak)."""
    expected = np.asarray(GOLDEN["schedules"][name]["values"])
    actual = _values(GOLDEN_EQUIVALENTS[name](), len(expected))
    np.testing.assert_allclose(actual, expected, rtol=2e-6, atol=0)


def _pytorch_one_cycle(total, max_lr, pct, strategy, three_phase, div, final_div):
    """OneCycleLR's lr at each step, its own formulas in float64 (torch/optim/
    lr_scheduler.py: phase ends, _annealing_cos / _annealing_linear)."""
    initial, minimum = max_lr / div, max_lr / div / final_div
    if three_phase:
        phases = [(float(pct * total) - 1, initial, max_lr),
                  (float(2 * pct * total) - 2, max_lr, initial),
                  (total - 1.0, initial, minimum)]  # fmt: skip
    else:
        phases = [(float(pct * total) - 1, initial, max_lr), (total - 1.0, max_lr, minimum)]
    values = []
    for step in range(total):
        begin = 0.0
        for end, start_value, end_value in phases:
            if step <= end or end == phases[-1][0]:
                x = (step - begin) / (end - begin)
                if strategy == "cos":
                    cosine = math.cos(math.pi * x) + 1
                    values.append(end_value + (start_value - end_value) / 2 * cosine)
                else:
                    values.append((end_value - start_value) * x + start_value)
                break
            begin = end
    return np.asarray(values)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("total, div", [(10, 1e4), (100, 25.0), (1000, 1e3)])
def test_one_cycle_float32_values_are_within_rounding_of_pytorchs_formulas(
    strategy, three_phase, total, div
):
    """Relative to each value, so the small ends count: the anneals cancelled in float32
    near the smaller endpoint (6e-4 relative at step 1 with div_factor=1e4; 2.4e-4 at the
    tail of a linear anneal); compat.torch.one_cycle_lr (float32 without x64) too."""
    expected = _pytorch_one_cycle(total, 0.1, 0.3, strategy, three_phase, div, 1e4)
    kwargs = dict(anneal_strategy=strategy, three_phase=three_phase, div_factor=div)
    for schedule in (
        schedules.one_cycle(total, 0.1, pct_start=0.3, final_div_factor=1e4, **kwargs),
        torch_lr_scheduler.one_cycle_lr(0.1, total, pct_start=0.3, final_div_factor=1e4, **kwargs),
    ):
        actual = np.asarray(schedule(jnp.arange(total)), np.float64)
        np.testing.assert_allclose(actual, expected, rtol=5e-6, atol=0)


OPTAX_EQUIVALENTS = {
    "linear": (
        lambda: schedules.linear(0.5, 0.01, transition_steps=70, transition_begin=13),
        lambda: optax.linear_schedule(0.5, 0.01, transition_steps=70, transition_begin=13),
    ),
    "polynomial": (
        lambda: schedules.polynomial(1.0, 0.1, power=3.0, transition_steps=90, transition_begin=5),
        lambda: optax.polynomial_schedule(1.0, 0.1, 3.0, transition_steps=90, transition_begin=5),
    ),
    "exponential_decay": (
        lambda: schedules.exponential_decay(0.3, 9, 0.8, transition_begin=20, end_value=0.05),
        lambda: optax.exponential_decay(0.3, 9, 0.8, transition_begin=20, end_value=0.05),
    ),
    "exponential_growth_capped": (
        lambda: schedules.exponential_decay(0.01, 10, 1.5, staircase=True, end_value=0.2),
        lambda: optax.exponential_decay(0.01, 10, 1.5, staircase=True, end_value=0.2),
    ),
    "cosine_decay": (
        lambda: schedules.cosine_decay(0.2, 150, alpha=0.1, exponent=2.0),
        lambda: optax.cosine_decay_schedule(0.2, 150, alpha=0.1, exponent=2.0),
    ),
    "warmup_cosine_decay": (
        lambda: schedules.warmup_cosine_decay(0.001, 0.1, 25, 160, end_value=0.005),
        lambda: optax.warmup_cosine_decay_schedule(0.001, 0.1, 25, 160, end_value=0.005),
    ),
    "join": (
        lambda: schedules.join(
            [schedules.linear(0.0, 1.0, 10), schedules.cosine_decay(1.0, 50)], [10]
        ),
        lambda: optax.join_schedules(
            [optax.linear_schedule(0.0, 1.0, 10), optax.cosine_decay_schedule(1.0, 50)], [10]
        ),
    ),
    "join_three": (
        lambda: schedules.join(
            [schedules.constant(0.1), schedules.step_decay(1.0, 5, 0.5), schedules.constant(0.3)],
            [7, 40],
        ),
        lambda: optax.join_schedules(
            [
                optax.constant_schedule(0.1),
                optax.exponential_decay(1.0, 5, 0.5, staircase=True),
                optax.constant_schedule(0.3),
            ],
            [7, 40],
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(OPTAX_EQUIVALENTS))
def test_schedule_matches_optax_at_every_step(name):
    ours, theirs = OPTAX_EQUIVALENTS[name]
    steps = jnp.arange(200, dtype=jnp.int32)
    expected = np.asarray(jax.vmap(theirs())(steps), np.float64)
    assert_schedule_close(_values(ours(), 200), expected)


def reference_power_decay(init_value, steps, power, t):
    return init_value / (1 + t / steps) ** power


def reference_noam(d_model, warmup_steps, factor, t):
    s = t + 1
    return factor * d_model**-0.5 * min(s**-0.5, s * warmup_steps**-1.5)


def reference_warmup_stable_decay(peak, warmup, stable, decay, init, end, shape, t):
    if t < warmup:
        return init + (peak - init) * t / warmup
    x = min(max(t - warmup - stable, 0), decay) / decay
    remaining = {
        "linear": 1 - x,
        "cosine": (1 + math.cos(math.pi * x)) / 2,
        "1-sqrt": 1 - math.sqrt(x),
    }[shape]
    return end + (peak - end) * remaining


def test_power_decay_follows_its_equation():
    for init_value, steps, power in [(0.1, 10, 1.0), (0.5, 3, 0.5), (1.0, 25, 2.5)]:
        expected = [reference_power_decay(init_value, steps, power, t) for t in range(200)]
        schedule = schedules.power_decay(init_value, steps, power)
        assert_schedule_close(_values(schedule, 200), expected)


def test_noam_follows_vaswani_equation_and_peaks_at_warmup():
    for d_model, warmup_steps, factor in [(512, 40, 1.0), (64, 7, 2.0)]:
        expected = [reference_noam(d_model, warmup_steps, factor, t) for t in range(200)]
        values = _values(schedules.noam(d_model, warmup_steps, factor), 200)
        assert_schedule_close(values, expected)
        assert int(np.argmax(values)) == warmup_steps - 1


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_warmup_stable_decay_follows_hagele_equations(shape):
    args = (0.3, 20, 90, 60, 0.01, 0.002)
    expected = [reference_warmup_stable_decay(*args, shape, t) for t in range(200)]
    schedule = schedules.warmup_stable_decay(*args[:4], args[4], args[5], decay_shape=shape)
    assert_schedule_close(_values(schedule, 200), expected)


def test_warmup_stable_decay_without_warmup_starts_at_peak():
    schedule = schedules.warmup_stable_decay(1.0, 0, 3, 2)
    np.testing.assert_allclose(_values(schedule, 7), [1, 1, 1, 1, 0.5, 0, 0])


def test_join_restarts_each_schedule_count_at_its_boundary():
    counted = schedules.join([lambda t: 0.0 * t, lambda t: t.astype(jnp.float32)], [5])
    np.testing.assert_array_equal(_values(counted, 8), [0, 0, 0, 0, 0, 0, 1, 2])


def test_piecewise_constant_switches_at_the_boundary_step():
    schedule = schedules.piecewise_constant([3, 5], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(_values(schedule, 7), [1, 1, 1, 2, 2, 3, 3])


def test_sgdr_restarts_at_the_peak_times_peak_decay():
    schedule = schedules.sgdr(1.0, first_period=4, period_mult=3, peak_decay=0.5)
    values = _values(schedule, 60)
    assert values[0] == 1.0
    for start, peak in [(4, 0.5), (16, 0.25), (52, 0.125)]:
        assert values[start] == pytest.approx(peak)
        assert values[start - 1] < values[start]  # a warm restart jumps back up


def reference_sgdr(first_period, period_mult, steps):
    """SGDR at steps 0..steps-1 in exact rational arithmetic, ``period_mult`` read as
    its decimal."""
    ratio = fractions.Fraction(repr(period_mult))
    start, period, values = fractions.Fraction(0), fractions.Fraction(first_period), []
    for t in range(steps):
        while t >= start + period:
            start, period = start + period, period * ratio
        values.append(0.5 * (1 + math.cos(math.pi * float((t - start) / period))))
    return values


@pytest.mark.parametrize("first_period, period_mult, steps", [(10, 1.2, 400), (3, 1.1, 200),
                                                               (100, 1.01, 20000)])  # fmt: skip
def test_sgdr_with_a_fractional_period_mult_restarts_where_exact_arithmetic_does(
    first_period, period_mult, steps
):
    """Restarts at real starts T_0 (m^i - 1) / (m - 1): 10, 22, 36.4, ... for (10, 1.2).
    Found in float32 at each step, the restarts due at 10 and 22 came a step late (0.0
    instead of 1.0), and (100, 1.01) restarted a step early at 7809."""
    values = _values(schedules.sgdr(1.0, first_period, period_mult), steps)
    expected = reference_sgdr(first_period, period_mult, steps)
    np.testing.assert_allclose(values, expected, atol=2e-5)


def test_sgdr_past_its_table_of_restarts_continues_from_the_closed_form():
    # period_mult 1.00001 from 1 step: 65,536 tabulated restarts end near step 96,000
    schedule = schedules.sgdr(1.0, 1, 1.00001)
    steps = jnp.arange(90_000, 110_000, 7, dtype=jnp.int32)
    values = np.asarray(jax.jit(schedule)(steps))
    assert np.all((values >= 0) & (values <= 1))
    assert np.ptp(values) > 0.9  # still restarting every few steps


ALL_SCHEDULES = {
    "constant": lambda: schedules.constant(0.3),
    "linear": lambda: schedules.linear(1.0, 0.1, 100, 10),
    "polynomial": lambda: schedules.polynomial(1.0, 0.1, 2.0, 100, 10),
    "exponential_decay": lambda: schedules.exponential_decay(1.0, 10, 0.5, 5, end_value=1e-3),
    "inverse_time_decay": lambda: schedules.inverse_time_decay(1.0, 10, 0.5),
    "power_decay": lambda: schedules.power_decay(1.0, 10, 1.5),
    "step_decay": lambda: schedules.step_decay(1.0, 10, 0.5),
    "piecewise_constant": lambda: schedules.piecewise_constant([10, 20], [1.0, 0.5, 0.1]),
    "cosine_decay": lambda: schedules.cosine_decay(1.0, 100, 0.1),
    "warmup_cosine_decay": lambda: schedules.warmup_cosine_decay(0.0, 1.0, 10, 100, 0.01),
    "sgdr": lambda: schedules.sgdr(1.0, 10, 2, 0.01, 0.9),
    "sgdr_fractional": lambda: schedules.sgdr(1.0, 10, 1.5, 0.01, 0.9),
    "sgdr_constant_period": lambda: schedules.sgdr(1.0, 10),
    "noam": lambda: schedules.noam(512, 4000),
    "cyclical": lambda: schedules.cyclical(0.1, 1.0, 10, 5, "triangular2"),
    "cyclical_exp_range": lambda: schedules.cyclical(0.1, 1.0, 10, mode="exp_range", gamma=0.9),
    "one_cycle": lambda: schedules.one_cycle(100, 1.0, three_phase=True),
    "warmup_stable_decay": lambda: schedules.warmup_stable_decay(1.0, 10, 50, 20, 0.0, 0.01),
    "join": lambda: schedules.join([schedules.constant(1.0), schedules.noam(64, 10)], [5]),
}


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_schedule_gives_the_same_float32_on_python_ints_traced_steps_and_ranges(name):
    schedule = ALL_SCHEDULES[name]()
    steps = [0, 10, 57, 1000]
    on_range = schedule(jnp.asarray(steps, jnp.int32))
    on_jit = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32))
    on_ints = [schedule(step) for step in steps]
    assert on_range.dtype == jnp.float32 and on_range.shape == (len(steps),)
    assert all(jnp.asarray(v).dtype == jnp.float32 and jnp.shape(v) == () for v in on_ints)
    np.testing.assert_allclose(np.asarray(on_jit), np.asarray(on_range), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(on_ints), np.asarray(on_range), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_schedule_stays_finite_at_the_largest_int32_step(name):
    schedule = ALL_SCHEDULES[name]()
    late = jnp.asarray([INT32_MAX - 1, INT32_MAX], jnp.int32)
    assert bool(jnp.all(jnp.isfinite(jax.jit(schedule)(late))))


def test_schedules_reach_their_end_values_without_int32_overflow():
    big = jnp.asarray(INT32_MAX, jnp.int32)
    huge_steps = 2_000_000_000
    assert float(schedules.linear(1.0, 0.5, huge_steps, 100_000_000)(big)) == 0.5
    assert float(schedules.cosine_decay(1.0, huge_steps, alpha=0.25)(big)) == 0.25
    warmup_cosine = schedules.warmup_cosine_decay(0.0, 1.0, 10, huge_steps, 0.1)
    assert float(warmup_cosine(big)) == pytest.approx(0.1)
    one_cycle = schedules.one_cycle(huge_steps, 1.0, div_factor=2.0, final_div_factor=5.0)
    assert float(one_cycle(big)) == pytest.approx(0.1)
    # 2**31 - 1 = 2 * 1_073_741_823 + 1: the last step of a period is near its minimum
    sgdr_value = float(schedules.sgdr(1.0, 1_073_741_824)(big))
    assert 0.0 <= sgdr_value < 1e-6
    assert float(schedules.noam(1, 1)(big)) == pytest.approx(INT32_MAX**-0.5, rel=1e-6)


def test_schedules_return_float32_with_x64_enabled(x64):
    values = schedules.cosine_decay(1.0, 10)(jnp.arange(3, dtype=jnp.int64))
    assert values.dtype == jnp.float32
    assert schedules.noam(8, 4)(3).dtype == jnp.float32


def test_steps_beyond_int32_saturate_instead_of_wrapping(x64):
    schedule = schedules.linear(1.0, 0.0, transition_steps=INT32_MAX)
    assert float(schedule(jnp.asarray(2**33, jnp.int64))) == 0.0
    assert float(schedule(2**40)) == 0.0


def test_floating_steps_are_rejected():
    with pytest.raises(TypeError, match="integer"):
        schedules.step_decay(1.0, 10)(2.5)


def test_negative_steps_give_the_value_at_step_zero():
    schedule = schedules.warmup_cosine_decay(0.5, 1.0, 10, 100)
    assert float(schedule(-3)) == float(schedule(0)) == 0.5


def test_a_schedule_drives_an_optimizer_inside_jit():
    schedule = schedules.step_decay(1.0, step_size=2, gamma=0.5)
    tx = gtx.adam(schedule)
    params = jnp.zeros(2)
    state = tx.init(params)
    step = jax.jit(tx.update)
    seen = []
    for _ in range(5):
        _, state = step(jnp.ones(2), state, params)
        seen.append(float(gtx.get_hyperparams(state)["learning_rate"]))
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25]


INVALID = [
    (lambda: schedules.constant("a"), "value"),
    (lambda: schedules.linear(1.0, 0.0, 0), "transition_steps"),
    (lambda: schedules.linear(1.0, 0.0, 10, -1), "transition_begin"),
    (lambda: schedules.polynomial(1.0, 0.0, -1.0, 10), "power"),
    (lambda: schedules.polynomial(1.0, 0.0, 1.0, 2**31), "transition_steps"),
    (lambda: schedules.exponential_decay(1.0, 0, 0.5), "transition_steps"),
    (lambda: schedules.exponential_decay(1.0, 10, 0.0), "decay_rate"),
    (lambda: schedules.inverse_time_decay(1.0, -5, 0.5), "decay_steps"),
    (lambda: schedules.inverse_time_decay(1.0, 5, -0.5), "decay_rate"),
    (lambda: schedules.power_decay(1.0, 0), "steps"),
    (lambda: schedules.step_decay(1.0, 0), "step_size"),
    (lambda: schedules.step_decay(1.0, 2.5), "step_size"),
    (lambda: schedules.step_decay(1.0, 10, -0.1), "gamma"),
    (lambda: schedules.piecewise_constant([10, 5], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: schedules.piecewise_constant([5, 5], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: schedules.piecewise_constant([-1], [1.0, 0.5]), "boundaries"),
    (lambda: schedules.piecewise_constant([5, 10], [1.0, 0.5]), "values"),
    (lambda: schedules.cosine_decay(1.0, 0), "decay_steps"),
    (lambda: schedules.cosine_decay(1.0, 10, alpha=1.5), "alpha"),
    (lambda: schedules.warmup_cosine_decay(0.0, 1.0, 10, 10), "decay_steps"),
    (lambda: schedules.warmup_cosine_decay(0.0, 1.0, -1, 10), "warmup_steps"),
    (lambda: schedules.sgdr(1.0, 0), "first_period"),
    (lambda: schedules.sgdr(1.0, 10, period_mult=0.5), "period_mult"),
    (lambda: schedules.sgdr(1.0, 10, peak_decay=-1.0), "peak_decay"),
    (lambda: schedules.noam(0, 10), "d_model"),
    (lambda: schedules.noam(64, 0), "warmup_steps"),
    (lambda: schedules.cyclical(0.1, 1.0, 0), "step_size_up"),
    (lambda: schedules.cyclical(0.1, 1.0, 10, 0), "step_size_down"),
    (lambda: schedules.cyclical(0.1, 1.0, 10, mode="sawtooth"), "mode"),
    (lambda: schedules.cyclical(0.1, 1.0, 10, mode="exp_range", gamma=0.0), "gamma"),
    (lambda: schedules.one_cycle(0, 1.0), "total_steps"),
    (lambda: schedules.one_cycle(100, 1.0, pct_start=1.0), "pct_start"),
    (lambda: schedules.one_cycle(3, 1.0, pct_start=0.3), "pct_start"),
    (lambda: schedules.one_cycle(100, 1.0, anneal_strategy="exp"), "anneal_strategy"),
    (lambda: schedules.one_cycle(100, 1.0, div_factor=0.0), "div_factor"),
    (lambda: schedules.warmup_stable_decay(1.0, 10, 10, 0), "decay_steps"),
    (lambda: schedules.warmup_stable_decay(1.0, -1, 10, 10), "warmup_steps"),
    (lambda: schedules.warmup_stable_decay(1.0, 10, 10, 10, decay_shape="exp"), "decay_shape"),
    (lambda: schedules.join([schedules.constant(1.0)], [5]), "schedules"),
    (lambda: schedules.join([schedules.constant(1.0)] * 3, [5, 2]), "boundaries"),
    (lambda: schedules.join([schedules.constant(1.0), 0.5], [5]), "schedules"),
]


@pytest.mark.parametrize("build, argument", INVALID, ids=[arg for _, arg in INVALID])
def test_invalid_arguments_raise_value_error_naming_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_decays_reach_their_end_exactly_under_jit_for_every_length():
    """In a fused jitted program ``1 - s / n`` can come out at -1e-8 for s = n (s / n as
    s * (1 / n), the subtraction an fma): a NaN under power 0.5 and a negative learning
    rate at the end of a linear decay, for 67 of the lengths 1..100 before the fix."""
    from gradtx.compat import keras as kc
    from gradtx.compat.torch import lr_scheduler

    lengths = range(1, 41)
    builders = {
        "polynomial": lambda n: schedules.polynomial(1.0, 0.1, power=0.5, transition_steps=n),
        "linear": lambda n: schedules.linear(1.0, 0.0, transition_steps=n),
        "wsd_1-sqrt": lambda n: schedules.warmup_stable_decay(
            1.0, 0, 0, n, end_value=0.0, decay_shape="1-sqrt"
        ),
        "wsd_linear": lambda n: schedules.warmup_stable_decay(1.0, 0, 0, n, end_value=0.0),
        "torch_polynomial_lr": lambda n: lr_scheduler.polynomial_lr(1.0, n, power=0.5),
        "torch_linear_lr": lambda n: lr_scheduler.linear_lr(1.0, 1.0, 0.0, total_iters=n),
        "keras_polynomial_decay": lambda n: kc.polynomial_decay(1.0, n, 0.0, power=0.5),
    }
    ends = {"polynomial": np.float32(0.1)}

    @jax.jit
    def values(t):  # one compilation: each schedule at 0, its length n and n + 3
        return {
            name: jnp.stack([build(n)(jnp.stack([t * 0, t + n, t + n + 3])) for n in lengths])
            for name, build in builders.items()
        }

    for name, got in values(jnp.int32(0)).items():
        got = np.asarray(got, np.float64)
        np.testing.assert_array_equal(got[:, 0], 1.0, err_msg=name)
        np.testing.assert_array_equal(got[:, 1:], ends.get(name, 0.0), err_msg=name)
