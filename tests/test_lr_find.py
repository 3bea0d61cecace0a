"""The learning-rate range test: its ramp, its smoothing, its stop, and its suggestion."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx.training import lr_find, lr_finder

CURVATURES = np.array([1.0, 4.0, 10.0], np.float32)  # SGD is stable for lr < 2 / 10


def quadratic(params):
    return 0.5 * jnp.sum(CURVATURES * params**2)


def sgd(learning_rate):
    return gtx.scale_by_learning_rate(learning_rate)


def test_suggestion_falls_inside_the_stable_range_of_sgd_on_a_quadratic():
    result = lr_find(quadratic, jnp.ones(3), None, sgd, num_steps=100)
    assert result.diverged
    # stable below 2/L = 0.2, and far above the rates where nothing happens
    assert 2e-3 < result.suggestion < 2.0 / CURVATURES.max()


def test_suggestion_ignores_batch_noise_on_the_flat_start_of_the_curve():
    # Mini-batches whose losses differ: on the flat start the smoothed loss averages a
    # few batches, and its steepest dip there (the 3rd of 100 rates, 1.5e-7, where Adam
    # does not train) was the suggestion. On the longest valley it is where the loss
    # really falls.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 32, 5)).astype(np.float32)
    y = x @ rng.normal(size=5).astype(np.float32) + 0.1 * rng.normal(size=(20, 32))

    def loss_fn(params, batch):
        inputs, targets = batch
        return jnp.mean((inputs @ params["w"] + params["b"] - targets) ** 2)

    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    result = lr_find(loss_fn, params, (jnp.asarray(x), jnp.asarray(y)), gtx.adam)
    smoothed = result.smoothed_losses
    at_minimum = result.learning_rates[np.argmin(smoothed)]
    assert 1e-3 < result.suggestion < at_minimum
    # the loss falls fastest around the suggestion: below the flat start by then
    assert smoothed[result.learning_rates == result.suggestion][0] < 0.95 * smoothed[:10].min()


def test_losses_follow_sgd_with_the_geometric_ramp_step_for_step():
    result = lr_find(quadratic, jnp.ones(3), None, sgd, min_lr=1e-3, max_lr=1.0, num_steps=40)
    x = np.ones(3)
    expected = []
    for lr in np.geomspace(1e-3, 1.0, 40)[: len(result.losses)]:
        expected.append(0.5 * np.sum(CURVATURES * x**2))
        x = x - np.float32(lr) * CURVATURES * x
    np.testing.assert_allclose(result.losses, expected, rtol=1e-5)


def test_smoothed_losses_are_the_bias_corrected_moving_average():
    result = lr_find(quadratic, jnp.ones(3), None, sgd, max_lr=1.0, num_steps=30, smoothing=0.9)
    average, expected = 0.0, []
    for t, loss in enumerate(result.losses.astype(np.float64)):
        average = 0.9 * average + 0.1 * loss
        expected.append(average / (1 - 0.9 ** (t + 1)))
    np.testing.assert_allclose(result.smoothed_losses, expected, rtol=1e-5)


def test_without_divergence_the_ramp_runs_from_min_lr_to_max_lr():
    result = lr_find(quadratic, jnp.ones(3), None, sgd, min_lr=1e-4, max_lr=0.1, num_steps=25)
    assert not result.diverged
    np.testing.assert_allclose(result.learning_rates, np.geomspace(1e-4, 0.1, 25), rtol=1e-6)
    assert result.losses.shape == result.smoothed_losses.shape == (25,)


def test_the_linear_ramp_adds_the_same_step_to_the_rate_at_every_step():
    """Smith's ramp: lr_t = min_lr + (max_lr - min_lr) * t / (num_steps - 1), rounded
    once to float32, and the rates reach SGD step for step."""
    result = lr_find(
        quadratic, jnp.ones(3), None, sgd, min_lr=1e-3, max_lr=0.15, num_steps=30, ramp="linear"
    )
    assert not result.diverged and result.learning_rates.dtype == np.float32
    expected = 1e-3 + (0.15 - 1e-3) * np.arange(30) / 29
    np.testing.assert_allclose(result.learning_rates, expected, rtol=2.0**-24, atol=0)
    x, losses = np.ones(3), []
    for lr in expected:
        losses.append(0.5 * np.sum(CURVATURES * x**2))
        x = x - np.float32(lr) * CURVATURES * x
    np.testing.assert_allclose(result.losses, losses, rtol=1e-5)


def test_the_suggestion_of_a_linear_ramp_falls_inside_the_stable_range_of_sgd():
    # the loss still falls past 2/L = 0.2 (the smoothing lags): its minimum is no answer
    result = lr_find(
        quadratic, jnp.ones(3), None, sgd, min_lr=1e-3, max_lr=0.5, num_steps=100, ramp="linear"
    )
    assert result.diverged
    assert result.learning_rates[np.argmin(result.smoothed_losses)] > 2.0 / CURVATURES.max()
    assert 2e-3 < result.suggestion < 2.0 / CURVATURES.max()
    assert result.suggestion in result.learning_rates


def test_the_default_ramp_is_the_exponential_one():
    default = lr_find(quadratic, jnp.ones(3), None, sgd, num_steps=100)
    explicit = lr_find(quadratic, jnp.ones(3), None, sgd, num_steps=100, ramp="exponential")
    steps = len(default.learning_rates)
    expected = np.geomspace(1e-7, 10.0, 100).astype(np.float32)[:steps]
    np.testing.assert_array_equal(default.learning_rates, expected)
    assert (steps, default.suggestion) == (91, expected[70])  # as before the linear ramp
    for name in ("learning_rates", "losses", "smoothed_losses"):
        np.testing.assert_array_equal(getattr(default, name), getattr(explicit, name))
    assert (default.suggestion, default.diverged) == (explicit.suggestion, explicit.diverged)


def test_stops_at_the_first_step_whose_smoothed_loss_exceeds_the_factor_times_its_best():
    result = lr_find(quadratic, jnp.ones(3), None, sgd, num_steps=100, diverge_factor=3.0)
    smoothed = result.smoothed_losses
    assert result.diverged and len(smoothed) < 100
    running_best = np.minimum.accumulate(smoothed)
    assert smoothed[-1] > 3.0 * running_best[-1]
    assert np.all(smoothed[:-1] <= 3.0 * running_best[:-1])


def test_the_stop_is_the_first_rise_above_the_best_by_more_than_factor_minus_one_times_it():
    """A loss that is its batch, unsmoothed (smoothing 0): with factor 3 and best 1, a
    loss of 3 goes on, 3.5 stops."""
    losses = jnp.array([1.0, 1.0, 2.0, 3.0, 3.5, 5.0, 9.0, 9.0])
    result = lr_find(
        lambda params, batch: batch + 0.0 * jnp.sum(params),
        jnp.ones(3),
        losses,
        sgd,
        num_steps=8,
        smoothing=0.0,
        diverge_factor=3.0,
    )
    assert result.diverged
    np.testing.assert_array_equal(result.losses, [1.0, 1.0, 2.0, 3.0, 3.5])


def test_a_non_finite_loss_stops_the_test_at_its_step():
    losses = jnp.array([1.0, 0.9, jnp.nan, 0.8, 0.7, 0.6])
    result = lr_find(
        lambda params, batch: batch + 0.0 * jnp.sum(params), jnp.ones(3), losses, sgd, num_steps=6
    )
    assert result.diverged
    assert len(result.losses) == 3 and np.isnan(result.losses[-1])


def test_a_negative_loss_stops_on_the_same_rise_above_its_best():
    """A loss shifted to negative values: the ratio test s > 4 * best held at the first
    step (4 * -10 is below any loss), which stopped the test there. It stops when the
    smoothed loss has risen 3 * |best| above its best, and suggests the same rate (the
    slope does not see the shift)."""
    plain = lr_find(quadratic, jnp.ones(3), None, sgd, num_steps=100)
    shifted = lr_find(lambda p: quadratic(p) - 10.0, jnp.ones(3), None, sgd, num_steps=100)
    assert shifted.diverged and len(shifted.losses) > len(plain.losses) - 10
    smoothed, best = shifted.smoothed_losses, np.minimum.accumulate(shifted.smoothed_losses)
    assert smoothed[-1] - best[-1] > 3.0 * abs(best[-1])
    assert np.all(smoothed[:-1] - best[:-1] <= 3.0 * np.abs(best[:-1]))
    assert shifted.suggestion == pytest.approx(plain.suggestion, rel=0.3)


def test_the_ramp_reaches_the_learning_rate_held_by_an_injected_optimizer():
    def plain_adam(learning_rate):
        # gtx.adam holds its hyperparameters as float32: give the plain chain the same
        b1, b2, eps = (float(np.float32(v)) for v in (0.9, 0.999, 1e-8))
        return gtx.chain(gtx.scale_by_adam(b1, b2, eps), gtx.scale_by_learning_rate(learning_rate))

    injected = lr_find(quadratic, jnp.ones(3), None, gtx.adam, max_lr=1.0, num_steps=30)
    plain = lr_find(quadratic, jnp.ones(3), None, plain_adam, max_lr=1.0, num_steps=30)
    np.testing.assert_allclose(injected.losses, plain.losses, rtol=1e-6)
    assert injected.losses[-1] < 0.5 * injected.losses[0]  # the rates did reach Adam


def test_batches_as_stacked_arrays_cycle_like_the_equivalent_callable():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(3, 8, 2)).astype(np.float32)
    targets = inputs @ np.array([1.0, -2.0], np.float32)

    def loss(w, batch):
        x, y = batch
        return jnp.mean((x @ w - y) ** 2)

    stacked = lr_find(loss, jnp.zeros(2), (inputs, targets), sgd, max_lr=1.0, num_steps=12)
    called = lr_find(
        loss,
        jnp.zeros(2),
        lambda t: (jnp.asarray(inputs)[t % 3], jnp.asarray(targets)[t % 3]),
        sgd,
        max_lr=1.0,
        num_steps=12,
    )
    np.testing.assert_allclose(stacked.losses, called.losses, rtol=1e-6)
    first_losses = [np.mean(targets[i] ** 2) for i in range(3)]
    np.testing.assert_allclose(stacked.losses[:3], first_losses, rtol=1e-5)


@pytest.mark.parametrize("ramp", ["exponential", "linear"])
def test_the_whole_range_test_traces_the_loss_once(ramp):
    traces = []

    def counted(params):
        traces.append(1)
        return quadratic(params)

    lr_find(counted, jnp.ones(3), None, sgd, num_steps=50, ramp=ramp)
    assert len(traces) == 1


def test_the_rate_probe_compiles_nothing_for_parameters_this_process_holds():
    """The probe's updates are compared on the devices only where they span several
    processes (tests/test_multiprocess.py): compiling that comparison took ~3.5 s for a
    model of 1000 leaves, more than the range test's own probe."""
    from gradtx.training import lr_finder

    params = {f"layer_{i}": jnp.full(2, i + 1.0) for i in range(7)}  # a new tree: no cache
    before = lr_finder._all_equal._cache_size()
    lr_find(lambda p: sum(jnp.sum(v**2) for v in p.values()), params, None, gtx.adam, num_steps=3)
    assert lr_finder._all_equal._cache_size() == before


@pytest.mark.parametrize(
    "optimizer",
    [lambda lr: optax.adam(1e-3), optax.inject_hyperparams(optax.adam), gtx.rprop],
    ids=["ignores_its_argument", "optax_injected", "rprop_reads_it_at_init"],
)
def test_an_optimizer_that_does_not_use_the_rate_is_refused(optimizer):
    """They ran to the end and returned a suggestion although the rate never changed a
    step."""
    with pytest.raises(ValueError, match=r"same update at learning rates 1e-07 and 10.0"):
        lr_find(quadratic, jnp.ones(3), None, optimizer, num_steps=20)


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda lr: gtx.multi_steps(gtx.sgd(lr), every_k=2),
        lambda lr: gtx.adam(lambda t: lr * jnp.minimum(1.0, t / 10.0)),
    ],
    ids=["gradient_accumulation", "warmup_from_zero"],
)
def test_optimizers_whose_first_update_is_zero_at_any_rate_still_run(optimizer):
    """The check first compared one update: 0 at both rates, a false refusal."""
    result = lr_find(quadratic, jnp.ones(3), None, optimizer, num_steps=30)
    assert len(result.learning_rates) >= 2


def test_plot_draws_the_curve_on_a_log_axis_and_marks_the_suggestion():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = lr_find(quadratic, jnp.ones(3), None, sgd, num_steps=60)
    ax = result.plot()
    assert ax.get_xscale() == "log"
    xs = [line.get_xdata() for line in ax.get_lines()]
    np.testing.assert_allclose(xs[1], result.learning_rates)
    assert xs[-1][0] == pytest.approx(result.suggestion)
    plt.close(ax.figure)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"min_lr": 0.0}, "min_lr"),
        ({"max_lr": 1e-8}, "max_lr"),
        ({"num_steps": 1}, "num_steps"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"diverge_factor": 1.0}, "diverge_factor"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        lr_find(quadratic, jnp.ones(3), None, sgd, **kwargs)


@pytest.mark.parametrize("ramp", ["geometric", "Linear", None])
def test_an_unknown_ramp_is_a_value_error_naming_it_and_the_two_ramps(ramp):
    with pytest.raises(ValueError, match=r"ramp must be one of 'exponential', 'linear', got"):
        lr_find(quadratic, jnp.ones(3), None, sgd, ramp=ramp)


def test_batches_with_different_leading_sizes_are_rejected():
    with pytest.raises(ValueError, match="leading"):
        lr_find(lambda p, b: quadratic(p), jnp.ones(3), (jnp.ones((3, 2)), jnp.ones((4,))), sgd)


@pytest.mark.parametrize("batches", [jnp.ones((0, 2)), jnp.ones(())], ids=["empty", "0-d"])
def test_batches_without_a_step_axis_or_with_an_empty_one_are_rejected(batches):
    with pytest.raises(ValueError, match="non-empty leading"):
        lr_find(lambda p, b: quadratic(p), jnp.ones(3), batches, sgd)


def _valley_reference(losses):
    """fastai's valley: the longest strictly decreasing subsequence, where it first ends,
    reaching back its length before that end (fastai's max_end - lds[max_end])."""
    lengths = [1] * len(losses)
    for i in range(len(losses)):
        for j in range(i):
            if losses[j] > losses[i]:
                lengths[i] = max(lengths[i], lengths[j] + 1)
    end = lengths.index(max(lengths))
    return max(end - lengths[end], 0), end


@pytest.mark.parametrize("seed", range(5))
def test_the_valley_is_fastais_longest_strictly_decreasing_run_with_ties(seed):
    losses = np.random.default_rng(seed).integers(0, 6, size=30).astype(np.float64)
    assert lr_finder._longest_valley(losses) == _valley_reference(list(losses))


def test_the_suggestion_with_fewer_than_three_finite_losses_is_the_lowest():
    rates = np.array([1e-3, 1e-2, 1e-1, 1.0])
    assert lr_finder._steepest_descent(rates[:2], np.array([2.0, 1.0])) == 1e-2
    assert lr_finder._steepest_descent(rates, np.array([1.0, np.nan, 0.5, np.inf])) == 1e-1


def test_a_valley_of_two_points_is_too_short_and_the_whole_curve_is_searched():
    # the longest decreasing run is [2, 1.9]; the steepest fall is the last step's
    rates = np.array([1e-3, 1e-2, 1e-1, 1.0])
    assert lr_finder._longest_valley(np.array([2.0, 1.9, 10.0, 9.0])) == (0, 1)
    assert lr_finder._steepest_descent(rates, np.array([2.0, 1.9, 10.0, 9.0])) == 1.0
