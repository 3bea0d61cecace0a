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


def reference_cyclical_smith(base, peak, step_size, mode, gamma, t):
    """Smith (2017), sec. 3.1: cycle = floor(1 + t / 2s), x = |t / s - 2 cycle + 1|."""
    cycle = math.floor(1 + t / (2 * step_size))
    x = abs(t / step_size - 2 * cycle + 1)
    amplitude = {"triangular": 1.0, "triangular2": 2.0 ** (1 - cycle), "exp_range": gamma**t}
    return base + (peak - base) * max(0.0, 1 - x) * amplitude[mode]


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclical_follows_smiths_equations(mode):
    expected = [reference_cyclical_smith(0.002, 0.05, 6, mode, 0.99, t) for t in range(100)]
    schedule = schedules.cyclical(0.002, 0.05, step_size_up=6, mode=mode, gamma=0.99)
    assert_schedule_close(_values(schedule, 100), expected)


def test_one_cycle_in_three_linear_phases_is_the_papers_symmetric_cycle_then_annihilation():
    """Smith & Topin: a linear rise and a linear fall of the same length, back to the
    start, then the rest of the steps down to far below it."""
    total, peak, div, final_div = 100, 0.4, 10.0, 1e3
    values = _values(
        schedules.one_cycle(total, peak, 0.3, "linear", div, final_div, three_phase=True), total
    )
    top = int(np.argmax(values))
    assert values[top] == pytest.approx(peak)
    rise, fall = values[: top + 1], values[top : 2 * top + 1]
    np.testing.assert_allclose(fall, rise[::-1], rtol=1e-6)
    np.testing.assert_allclose(np.diff(rise), (peak - peak / div) / top, rtol=1e-5)
    tail = values[2 * top :]
    np.testing.assert_allclose(np.diff(tail), np.diff(tail)[0], rtol=1e-4)
    assert tail[0] == pytest.approx(peak / div)
    assert tail[-1] == pytest.approx(peak / div / final_div)


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
    # period_mult 1.00001 from 1 step: 65,536 tabulated restarts end at step 92,583
    schedule = schedules.sgdr(1.0, 1, 1.00001)
    steps = jnp.arange(90_000, 110_000, 7, dtype=jnp.int32)
    values = np.asarray(jax.jit(schedule)(steps))
    assert np.all((values >= 0) & (values <= 1))
    assert np.ptp(values) > 0.9  # still restarting every few steps
    # the equation in double precision: restart i spans [s_i, s_i + T_0 m^i), s_i = T_0
    # (m^i - 1) / (m - 1); the closed form is float32 (starts near 1e5 to ~0.01 step), so
    # steps within 2% of a period from a restart, which it may put in the other one, are
    # left out
    ratio, fractions_done = 1.00001, []
    for t in np.asarray(steps).tolist():
        i = math.floor(math.log1p(t * (ratio - 1)) / math.log(ratio))
        i += (t >= (ratio ** (i + 1) - 1) / (ratio - 1)) - (t < (ratio**i - 1) / (ratio - 1))
        fractions_done.append((t - (ratio**i - 1) / (ratio - 1)) / ratio**i)
    fractions_done = np.asarray(fractions_done)
    inside = (fractions_done > 0.02) & (fractions_done < 0.98)
    assert inside.mean() > 0.9
    expected = 0.5 * (1 + np.cos(np.pi * fractions_done))
    np.testing.assert_allclose(values[inside], expected[inside], atol=2e-2)


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


def test_step_decay_divides_by_ten_by_default_as_pytorchs_step_lr():
    # StepLR(step_size=3) has gamma=0.1: v(t) = 0.1^floor(t / 3)
    values = np.asarray(jax.jit(schedules.step_decay(1.0, 3))(jnp.arange(7)))
    np.testing.assert_allclose(values, [1, 1, 1, 0.1, 0.1, 0.1, 0.01], rtol=1e-6)


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
    (lambda: schedules.cyclical(float("nan"), 1.0, 10), "base_value"),
    (lambda: schedules.cyclical(0.1, float("nan"), 10), "max_value"),
    (lambda: schedules.cyclical(0.1, 1.0, 0), "step_size_up"),
    (lambda: schedules.cyclical(0.1, 1.0, 10, 0), "step_size_down"),
    # each count fits int32, their sum (the cycle) does not
    (lambda: schedules.cyclical(0.1, 1.0, 2**31 - 1, 1), r"step_size_up \+ step_size_down"),
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

    lengths = range(1, 16)
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


def test_warmup_stable_decay_holds_exactly_the_peak_in_its_stable_phase_under_jit():
    """Under jit ``(D - 0) / D`` is ``D * (1 / D)``, 1 - 6e-8 for 73 of the lengths 1..500:
    '1-sqrt' turned that into a stable phase 2.4e-4 below the peak (``1 - sqrt(6e-8)``)."""
    # 1..10 and the 8 lengths of 1..100 where float32 n * (1 / n) rounds below 1
    lengths = [*range(1, 11), 41, 47, 55, 61, 82, 83, 94, 97]

    @jax.jit
    def values(t):  # steps 0 (warmup's end), 5 (stable) and 10 (the cooldown's first)
        return jnp.stack(
            [
                schedules.warmup_stable_decay(1.0, 0, 10, n, decay_shape=shape)(t)
                for n in lengths
                for shape in ("linear", "cosine", "1-sqrt")
            ]
        )

    got = np.asarray(values(jnp.asarray([0, 5, 10], jnp.int32)))
    np.testing.assert_array_equal(got, 1.0)


def test_decays_keep_their_last_steps_when_the_transition_nears_int32():
    """In float32 s and T both round to 128 steps near 1.5e9, so ``1 - s / T`` was 0 two
    steps before the end: polynomial(power=0.5) at its end value where the equation is
    ``sqrt(2 / T)`` of the way up (3.3% off at init / end = 1e3; 81% of the peak off with
    power 0.01). The steps left are now counted in integers."""
    total = 1_434_063_097
    steps = jnp.asarray([total - 2, total - 1, total], jnp.int32)
    left = np.array([2.0, 1.0, 0.0]) / total
    polynomial = schedules.polynomial(1.0, 0.0, power=0.5, transition_steps=total)(steps)
    np.testing.assert_allclose(np.asarray(polynomial, np.float64), left**0.5, rtol=1e-6)
    wsd = schedules.warmup_stable_decay(1.0, 0, 0, total, decay_shape="1-sqrt")(steps)
    expected = 1 - np.sqrt(1 - left)  # = left / (1 + sqrt(1 - left)), ~left / 2 here
    np.testing.assert_allclose(np.asarray(wsd, np.float64), expected, rtol=1e-6)


def test_linear_is_exact_at_both_ends_and_relatively_accurate_between():
    """``(init - end) * (1 - s / T) + end`` cancels when |end| >> |init| (a warmup): the
    value at step 0 was 1.6e-5 off init_value at end / init = 73."""
    init, end, total = 2.8349006836511377e-05, 0.002064793030585093, 2_106_225_584
    schedule = schedules.linear(init, end, transition_steps=total)
    steps = np.array([0, 1, 1000, total - 1, total])
    got = np.asarray(jax.jit(schedule)(jnp.asarray(steps, jnp.int32)), np.float64)
    assert got[0] == np.float32(init) and got[-1] == np.float32(end)
    expected = init * ((total - steps) / total) + end * (steps / total)
    np.testing.assert_allclose(got, expected, rtol=2e-7)


def test_a_rising_polynomial_starts_exactly_at_init_value_and_stays_relatively_accurate():
    """Rising from 3.5e-6 to 6.3, ``(init - end) * left^power + end`` was 9% off init at
    step 0 (the ulp of 6.3); it is now anchored at init: ``init + (end - init) * (1 -
    left^power)``, with ``1 - left^power = -expm1(power * log1p(-done))``."""
    init, end, total = 3.4915867907778442e-06, 6.3343871190044485, 1093
    steps = np.array([0, 1, 2, 546, total - 1])
    schedule = schedules.polynomial(init, end, 0.5, total)
    got = np.asarray(schedule(steps), np.float64)
    assert got[0] == np.float32(init) and float(schedule(total)) == np.float32(end)
    expected = init + (end - init) * -np.expm1(0.5 * np.log1p(-steps / total))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "schedule",
    [
        lambda: schedules.warmup_cosine_decay(1.9e-6, 2.4824e-6, 1726, 2412, end_value=0.919),
        lambda: schedules.warmup_stable_decay(2.4824e-6, 1726, 10, 686, end_value=0.919),
        lambda: schedules.warmup_stable_decay(
            2.4824e-6, 1726, 10, 686, end_value=0.919, decay_shape="cosine"
        ),
        lambda: schedules.warmup_stable_decay(
            2.4824e-6, 1726, 10, 686, end_value=0.919, decay_shape="1-sqrt"
        ),
    ],
    ids=["warmup_cosine_decay", "wsd_linear", "wsd_cosine", "wsd_1-sqrt"],
)
def test_the_peak_is_exact_when_the_end_value_is_far_above_it(schedule):
    """``end + (peak - end) * 1`` rounds to the ulp of ``end``: the peak came out 0.8%
    high with an end value 4e5 times larger. Both ends are weighed directly now."""
    got = np.asarray(jax.jit(schedule())(jnp.asarray([1726, 1730, 1736], jnp.int32)))
    np.testing.assert_array_equal(got[0], np.float32(2.4824e-6))


def test_one_cycle_reaches_its_final_value_in_a_one_step_last_phase_past_2_to_the_24():
    """three_phase with pct_start=0.5 leaves the third phase one step, from T - 2 to T - 1.
    In float32 both round to the same number past 2**24 steps, so the last step (and every
    later one) was in the second phase: max_value / div_factor, 1e4 times the final value.
    Phases are now chosen, and their fractions computed, from integer steps."""
    total = 1_318_048_129
    schedule = schedules.one_cycle(total, 1.0, pct_start=0.5, div_factor=1.0, three_phase=True)
    steps = jnp.asarray([total - 2, total - 1, INT32_MAX], jnp.int32)
    np.testing.assert_allclose(np.asarray(jax.jit(schedule)(steps)), [1.0, 1e-4, 1e-4], rtol=1e-6)


@pytest.mark.parametrize("build", [schedules.warmup_cosine_decay, schedules.warmup_stable_decay])
def test_a_warmup_from_far_above_the_peak_is_relatively_accurate_at_its_end(build):
    """``init + (peak - init) * t / W`` cancels near t = W when |init| >> |peak|: 2e-4 off
    one step before a peak 2250 times below init. Both ends are weighed directly now."""
    init, peak, warmup = 1.1707622386727008, 0.0005193706699568644, 608_667
    if build is schedules.warmup_cosine_decay:
        schedule = build(init, peak, warmup, 10**9)
    else:
        schedule = build(peak, warmup, 10, 10**6, init_value=init)
    steps = np.array([0, 1, warmup - 1])
    got = np.asarray(jax.jit(schedule)(jnp.asarray(steps, jnp.int32)), np.float64)
    expected = init * (warmup - steps) / warmup + peak * steps / warmup
    np.testing.assert_allclose(got, expected, rtol=1e-6)


COSINE_ENDS = {  # a schedule, the step where its cosine ends, and its float64 equation
    "warmup_cosine_decay": (  # to end_value under a fractional exponent
        lambda: schedules.warmup_cosine_decay(0.0, 1.24, 687_997, 1_169_074, 1.24e-3, 0.28),
        1_169_074,
        lambda t: (
            1.24e-3 + (1.24 - 1.24e-3) * np.sin(np.pi / 2 * (1_169_074 - t) / 481_077) ** (2 * 0.28)
        ),
    ),
    "cosine_decay": (
        lambda: schedules.cosine_decay(1.0, 10**6, exponent=0.5),
        10**6,
        lambda t: np.sin(np.pi / 2 * (10**6 - t) / 10**6),
    ),
    "sgdr": (  # the end of the second period
        lambda: schedules.sgdr(1.0, 10**5, period_mult=2),
        3 * 10**5,
        lambda t: np.sin(np.pi / 2 * (3 * 10**5 - t) / (2 * 10**5)) ** 2,
    ),
    "sgdr_fractional": (  # periods 1000, 1500: the second ends at 2500
        lambda: schedules.sgdr(1.0, 1000, period_mult=1.5),
        2500,
        lambda t: np.sin(np.pi / 2 * (2500 - t) / 1500) ** 2,
    ),
    "warmup_stable_decay": (
        lambda: schedules.warmup_stable_decay(1.0, 0, 0, 10**6, decay_shape="cosine"),
        10**6,
        lambda t: np.sin(np.pi / 2 * (10**6 - t) / 10**6) ** 2,
    ),
}


@pytest.mark.parametrize("name", sorted(COSINE_ENDS))
def test_cosines_are_relatively_accurate_near_their_end(name):
    """``(1 + cos(pi x)) / 2`` cancels in float32 near x = 1 (0 two steps before the end
    of a 1e6-step cosine); with exponent 0.28 the value there was the end value, half
    what the equation gives (1.2e-3 of the peak off). The cosine is now taken from the
    steps left, as ``sin(pi left / 2)^2``."""
    build, end, equation = COSINE_ENDS[name]
    steps = np.array([end - 3, end - 2, end - 1])
    got = np.asarray(jax.jit(build())(jnp.asarray(steps, jnp.int32)), np.float64)
    np.testing.assert_allclose(got, equation(steps.astype(np.float64)), rtol=1e-5)


RATE_POWERS = {  # a schedule, a step, and its float64 equation there
    "cyclical_exp_range": (  # Smith's gamma, at the top of the 250th cycle
        lambda: schedules.cyclical(0.0, 1.0, 20, mode="exp_range", gamma=0.99994),
        9_980,
        lambda t: 0.99994**t,
    ),
    "exponential_decay": (
        lambda: schedules.exponential_decay(1.0, 1, 0.9999),
        10**4,
        lambda t: 0.9999**t,
    ),
    "step_decay": (lambda: schedules.step_decay(1.0, 1, 0.999), 10**4, lambda t: 0.999**t),
    "sgdr_peak_decay": (
        lambda: schedules.sgdr(1.0, 1, peak_decay=0.9999),
        2 * 10**4,
        lambda t: 0.9999**t,
    ),
}


@pytest.mark.parametrize("name", sorted(RATE_POWERS))
def test_powers_of_a_rate_do_not_compound_its_float32_rounding(name):
    """``float32(0.99994)`` is 2.2e-8 low, so ``float32(gamma) ** t`` was 2.2e-4 low at t =
    1e4 (PyTorch's CyclicLR and ExponentialLR work in double); ``numerics.power``
    corrects the base's rounding."""
    build, step, equation = RATE_POWERS[name]
    got = float(jax.jit(build())(jnp.int32(step)))
    assert got == pytest.approx(equation(step), rel=2e-6)


def test_rate_powers_stay_exact_for_rates_float32_holds():
    assert schedules.step_decay(1.0, 1, 0.5)(jnp.arange(4)).tolist() == [1.0, 0.5, 0.25, 0.125]
    halving = schedules.exponential_decay(1.0, 1, 0.5, staircase=True)
    assert float(halving(100)) == 2.0**-100


def test_rate_powers_take_rates_float32_rounds_to_zero():
    """``float32(1e-50)`` is 0: there is no rounding to correct, and the value is the
    float32 one (it was a ZeroDivisionError when the schedule was called)."""
    assert schedules.step_decay(1.0, 1, 1e-50)(jnp.arange(3)).tolist() == [1.0, 0.0, 0.0]


def _half_cosine(x):
    return (1 + math.cos(math.pi * x)) / 2


TRACED_HYPERPARAMETERS = {  # build(v), v, step, and d value / d v from the equation
    "exponential_decay_rate": (
        lambda v: schedules.exponential_decay(1.0, 10, v),
        0.9,
        30,
        3 * 0.9**2,
    ),
    "step_decay_gamma": (lambda v: schedules.step_decay(1.0, 10, v), 0.9, 30, 3 * 0.9**2),
    "cyclical_exp_range_gamma": (  # step 30 of a 20-up 20-down cycle: height 1/2
        lambda v: schedules.cyclical(0.0, 1.0, 20, mode="exp_range", gamma=v),
        0.99,
        30,
        0.5 * 30 * 0.99**29,
    ),
    "sgdr_peak_decay": (  # step 30 of the third restart
        lambda v: schedules.sgdr(1.0, 100, peak_decay=v),
        0.9,
        230,
        2 * 0.9 * _half_cosine(0.3),
    ),
    "polynomial_power": (
        lambda v: schedules.polynomial(1.0, 0.0, v, 100),
        2.0,
        30,
        math.log(0.7) * 0.7**2,
    ),
    "rising_polynomial_end_value": (  # (init - end) * 0.7^2 + end
        lambda v: schedules.polynomial(0.01, v, 2.0, 100),
        1.0,
        30,
        1 - 0.7**2,
    ),
    "rising_polynomial_power_at_its_end": (
        lambda v: schedules.polynomial(0.01, 1.0, v, 100),
        0.5,
        200,
        0.0,
    ),
    "warmup_cosine_decay_exponent": (
        lambda v: schedules.warmup_cosine_decay(0.0, 1.0, 10, 100, exponent=v),
        0.5,
        50,
        math.log(_half_cosine(40 / 90)) * _half_cosine(40 / 90) ** 0.5,
    ),
    "warmup_cosine_decay_exponent_at_its_end": (
        lambda v: schedules.warmup_cosine_decay(0.0, 1.0, 10, 100, end_value=0.01, exponent=v),
        0.5,
        500,
        0.0,
    ),
    "one_cycle_max_value": (  # step 60 of the cosine down from 1 to 1 / 25e4
        lambda v: schedules.one_cycle(100, v),
        1.0,
        60,
        1 / 25e4 + (1 - 1 / 25e4) * _half_cosine((60 - 29) / (99 - 29)),
    ),
}


@pytest.mark.parametrize("name", sorted(TRACED_HYPERPARAMETERS))
def test_schedules_are_differentiable_in_their_hyperparameters(name):
    """A meta-gradient or a vmapped sweep traces a schedule's hyperparameters: a traced
    value cannot choose the most precise formula (``abs(init) < abs(end)``, ``exponent ==
    1``, the float32 rounding of a rate), so it takes the general one, and the gradient is
    the equation's, never NaN (a ``log(0)`` where a ``where`` does not select it)."""
    build, value, step, expected = TRACED_HYPERPARAMETERS[name]
    got = jax.jit(jax.grad(lambda v: build(v)(step)))(value)
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_a_sweep_vmaps_over_a_schedules_hyperparameter():
    rates = jnp.asarray([0.9, 0.5])
    got = jax.vmap(lambda rate: schedules.exponential_decay(1.0, 10, rate)(30))(rates)
    np.testing.assert_allclose(np.asarray(got), [0.9**3, 0.5**3], rtol=1e-6)
