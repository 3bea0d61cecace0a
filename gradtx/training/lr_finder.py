"""The learning-rate range test (Smith, 2017): the "LR finder"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check
from gradtx.core import Params, TransformLike, apply_updates
from gradtx.schedules.hyperparams import set_hyperparams
from gradtx.schedules.injection import schedule_injection


class LRFindResult(NamedTuple):
    """What a learning-rate range test measured, one entry per step taken.

    Attributes:
        learning_rates: float32, the learning rate of each step (the test's ramp,
            geometric or linear).
        losses: float32, the loss of each step's batch at the parameters the step
            started from (so ``losses[t]`` shows the effect of the rates before t).
        smoothed_losses: float32, the bias-corrected exponential moving average of
            ``losses``.
        suggestion: the learning rate where the smoothed loss falls fastest against
            ``log(learning_rate)``, on its longest valley.
        diverged: whether the test stopped early because the loss diverged.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> result = gtx.training.lr_find(lambda p: jnp.sum(p**2), jnp.ones(2), None,
        ...                               gtx.sgd, min_lr=1e-3, max_lr=10.0, num_steps=20)
        >>> result.learning_rates.shape, result.losses.shape, result.smoothed_losses.shape
        ((20,), (20,), (20,))
        >>> bool(result.diverged), 1e-3 <= result.suggestion <= 1.0  # stable below lr 1
        (False, True)
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    suggestion: float
    diverged: bool

    def plot(self, ax: Any = None, *, show_raw: bool = True) -> Any:
        """Draws the smoothed loss against the learning rate (log axis), marks the
        suggestion, and returns the matplotlib ``Axes``. Imports matplotlib only here.
        The axis is logarithmic for a linear ramp too, where it crowds the rates to
        its right end: ``result.plot().set_xscale("linear")`` draws Smith's view.

        Args:
            ax: the axes to draw on (default: a new figure's).
            show_raw: also draw the raw losses, faintly.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        if show_raw:
            ax.plot(self.learning_rates, self.losses, color="0.75", lw=1, label="loss")
        ax.plot(self.learning_rates, self.smoothed_losses, color="C0", label="smoothed loss")
        ax.axvline(self.suggestion, color="C3", ls="--", label=f"suggestion {self.suggestion:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        finite = self.smoothed_losses[np.isfinite(self.smoothed_losses)]
        if finite.size:
            # the divergent tail would flatten the interesting part of the curve
            low, start = float(finite.min()), float(finite[0])
            ax.set_ylim(low - 0.1 * abs(start - low), start + 0.5 * abs(start - low) + 1e-12)
        ax.legend()
        return ax


def _batch_getter(batches: Any) -> tuple[Callable[[Any, jax.Array], Any], Any]:
    """``(get, data)``: ``get(data, step)`` is the batch of a step inside the loop."""
    if batches is None:
        return (lambda data, step: ()), None
    if callable(batches):
        return (lambda data, step: (batches(step),)), None
    leaves = jax.tree.leaves(batches)
    if not leaves:
        raise ValueError("batches must hold arrays with a leading step axis, got no leaves")
    lengths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else 0 for leaf in leaves}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            f"every array in batches must have the same non-empty leading (step) axis, got "
            f"leading sizes {sorted(lengths)}"
        )
    (length,) = lengths

    def get(data, step):
        return (jax.tree.map(lambda x: x[step % length], data),)

    return get, batches


def _longest_valley(smoothed: np.ndarray) -> tuple[int, int]:
    """``(start, end)``, inclusive, around the longest strictly decreasing subsequence of
    ``smoothed`` (fastai's "valley"): ``end`` is its last point and ``start = end -
    length`` (fastai's rule, clamped at 0), one point before its first point where the
    subsequence is contiguous. Batch noise makes short dips anywhere on the flat start of
    a curve; the longest decreasing run is the real descent."""
    n = smoothed.size
    lengths = np.ones(n, int)
    start = end = 0
    for i in range(1, n):
        earlier = smoothed[:i] > smoothed[i]
        if earlier.any():
            lengths[i] = lengths[:i][earlier].max() + 1
        if lengths[i] > lengths[end]:
            end, start = i, i - lengths[i]
    return max(start, 0), end


def _steepest_descent(learning_rates: np.ndarray, smoothed: np.ndarray) -> float:
    """The rate where ``d smoothed / d log(lr)`` is most negative, on the curve's
    longest valley (a slope taken over the flat start measures batch noise)."""
    finite = np.isfinite(smoothed)
    learning_rates, smoothed = learning_rates[finite], smoothed[finite]
    if smoothed.size < 3:
        return float(learning_rates[np.argmin(smoothed)]) if smoothed.size else float("nan")
    start, end = _longest_valley(smoothed)
    if end - start >= 2:
        learning_rates, smoothed = learning_rates[start : end + 1], smoothed[start : end + 1]
    slopes = np.gradient(smoothed.astype(np.float64), np.log(learning_rates.astype(np.float64)))
    return float(learning_rates[np.argmin(slopes)])


_PROBE_STEPS = 8


def _same_updates(tree: Any, other: Any) -> bool:
    """Whether two updates are equal: fetched to NumPy where this process holds them
    whole (compiling ``_all_equal`` took ~0.2 s for 100 leaves, ~3.5 s for 1000), on the
    devices where they span the devices of several processes."""
    leaves = [*jax.tree.leaves(tree), *jax.tree.leaves(other)]
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in leaves):
        return all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(other), strict=True)
        )
    return bool(_all_equal(tree, other))


@jax.jit
def _all_equal(tree: Any, other: Any) -> jax.Array:
    # Compared on the devices, in one program: an update sharded over the devices of
    # several processes (jax.distributed) cannot be fetched to NumPy in any one of them,
    # and every process must reach the same verdict.
    equal = jnp.asarray(True)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(other), strict=True):
        equal = equal & jnp.array_equal(a, b)
    return equal


def _check_reads_the_learning_rate(tx, params, min_lr, max_lr) -> None:
    """Up to ``_PROBE_STEPS`` eager updates on unit gradients at ``min_lr`` and at
    ``max_lr`` (a warmup from 0 or gradient accumulation makes the first ones 0 at any
    rate): all equal means the optimizer ignores the rate it is given (``lambda lr:
    optax.adam(1e-3)``, an ``optax.inject_hyperparams`` optimizer, rprop), and the test
    would mean nothing."""
    ones = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    small_state = set_hyperparams(state, learning_rate=min_lr)
    large_state = set_hyperparams(state, learning_rate=max_lr)
    same = True
    for _ in range(_PROBE_STEPS):
        small, small_state = tx.update(ones, small_state, params)
        large, large_state = tx.update(ones, large_state, params)
        small_state = set_hyperparams(small_state, learning_rate=min_lr)
        large_state = set_hyperparams(large_state, learning_rate=max_lr)
        same = _same_updates(small, large)
        if not same:
            break
    if same:
        raise ValueError(
            f"optimizer gives the same update at learning rates {min_lr!r} and {max_lr!r}: "
            f"the test sets the rate at every step, and this optimizer does not use it "
            f"(it ignores its argument, keeps its own copy as optax.inject_hyperparams "
            f"does, or, as rprop, reads it once at init); pass a function learning_rate "
            f"-> transform whose steps scale with it, such as gradtx.adam"
        )


def lr_find(
    loss_fn: Callable[..., jax.Array],
    params: Params,
    batches: Any,
    optimizer: Callable[[Any], TransformLike],
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    ramp: str = "exponential",
) -> LRFindResult:
    """The learning-rate range test (Smith, 2017): train briefly while raising the
    learning rate exponentially (or linearly), and watch the loss.

    Smith's test (sec. 3.3) raises the rate *linearly* over a narrow range for a few
    epochs and reads the bounds off the accuracy curve (``ramp="linear"``); the
    exponential ramp over many decades, the smoothed loss, the divergence stop and the
    suggestion are fast.ai's ``lr_find`` (Howard & Gugger), which is what most users
    know as the range test.

    Step t (from 0) uses the rate::

        lr_t = min_lr * (max_lr / min_lr)^(t / (num_steps - 1))     ramp="exponential"
        lr_t = min_lr + (max_lr - min_lr) * t / (num_steps - 1)     ramp="linear"

    (computed in float64, recorded and applied in float32), starting from ``params``
    (which are left untouched: the test trains a copy) and a fresh optimizer state.
    It records the loss ``l_t`` of the step's batch and its
    smoothed, bias-corrected value (fastai's ``AvgSmoothLoss``)::

        a_t = smoothing * a_{t-1} + (1 - smoothing) * l_t,   a_{-1} = 0
        s_t = a_t / (1 - smoothing^(t + 1))

    and stops once ``s_t > diverge_factor * min_{k<=t} s_k`` (fastai's stop, factor 4)
    or the loss is not finite.
    That test is ``s_t - m > (diverge_factor - 1) * |m|`` with ``m = min_{k<=t} s_k``,
    which is how it is applied to losses that go negative (a log-likelihood, say), where
    the ratio would stop the test at its first step.
    The suggestion is the rate where ``s`` falls fastest against ``log(lr)``, on its
    longest valley (the span of its longest decreasing run, fastai's "valley": with
    mini-batches whose losses differ, the flat start of the curve has short dips of
    batch noise, as steep as the real descent); a common choice for training is that
    rate or up to ten times below the rate at the minimum. fastai's own ``valley``
    suggestion is a point about halfway along that span, and its ``steep`` the steepest
    point of the whole curve: this suggestion is neither, but the steepest point of the
    span. It is taken against ``log(lr)`` for a linear ramp too: the fall per relative
    change of the rate, whichever ramp spaced the rates, and the steepest point on
    ``plot()``'s log axis. A linear ramp's first steps are decades apart in rate where
    ``max_lr / min_lr`` is large (the defaults: the second rate is already 0.1): give it
    a narrow range, as Smith does (a decade or two, say ``min_lr=1e-3, max_lr=0.1``).

    The whole test is one compiled ``lax.while_loop``: the learning rate is injected
    into the optimizer's state (``schedule_injection`` and ``set_hyperparams``, which
    also reach the learning rate of an injected optimizer such as ``gradtx.adam``), so
    it compiles once.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar loss`` (``loss_fn(params)`` when
            ``batches`` is None); it is traced once.
        params: the starting parameters (a pytree of float arrays).
        batches: one of: a pytree of arrays with a leading step axis (step t uses
            entry ``t mod n``, so a few batches are cycled); a function ``step ->
            batch`` traceable with an int32 step (index your data, or fold the step
            into a PRNG key); or None for a full-batch ``loss_fn(params)``.
        optimizer: ``learning_rate -> GradientTransformation``, e.g. ``gradtx.adam``
            or ``lambda lr: gradtx.sgd(lr, momentum=0.9)``; an Optax optimizer works
            too (``optax.adam``), but not one wrapped in ``optax.inject_hyperparams``,
            whose state keeps its own copy of the rate. One whose updates do not
            change with the rate (checked with up to 8 updates at ``min_lr`` and at
            ``max_lr`` on unit gradients) is a ValueError: the test would mean nothing.
        min_lr: the first rate, > 0.
        max_lr: the last rate, > ``min_lr``.
        num_steps: the most steps to take, >= 2.
        smoothing: the EMA decay of the smoothed loss, in [0, 1).
        diverge_factor: stop once the smoothed loss exceeds this multiple of its
            minimum, > 1 (``inf``: only a non-finite loss stops the test).
        ramp: ``"exponential"`` (the default: a geometric ramp, fast.ai's) or
            ``"linear"`` (Smith's), the rates' spacing from ``min_lr`` to ``max_lr``.

    Returns:
        an ``LRFindResult`` (rates, raw and smoothed losses of the steps taken, the
        suggestion, whether it diverged) with a ``plot()`` method.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> loss = lambda p: 0.5 * jnp.sum(p ** 2)  # curvature 1: SGD is stable for lr < 2
        >>> sgd = lambda lr: gtx.scale_by_learning_rate(lr)
        >>> result = gtx.training.lr_find(loss, jnp.ones(3), None, sgd, min_lr=1e-3,
        ...                               max_lr=100.0, num_steps=60)
        >>> bool(result.diverged), 1e-2 < result.suggestion < 2.0
        (True, True)

    Reference: Smith, 2017, "Cyclical Learning Rates for Training Neural Networks",
    sec. 3.3.
    """
    check.positive("min_lr", min_lr)
    check.positive("max_lr", max_lr)
    if not max_lr > min_lr:
        raise ValueError(f"max_lr must be greater than min_lr={min_lr!r}, got {max_lr!r}")
    num_steps = check.positive_int("num_steps", num_steps)
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps!r}")
    check.unit_interval("smoothing", smoothing)
    check.in_range("diverge_factor", diverge_factor, 1.0, None, low_inclusive=False, allow_inf=True)
    check.one_of("ramp", ramp, ("exponential", "linear"))
    if not callable(optimizer):
        raise TypeError(
            f"optimizer must be a function learning_rate -> GradientTransformation, got "
            f"{optimizer!r}"
        )

    def with_learning_rate(learning_rate):
        return optimizer(learning_rate)

    tx = schedule_injection(with_learning_rate)(learning_rate=float(min_lr))
    _check_reads_the_learning_rate(tx, params, min_lr, max_lr)
    get_batch, data = _batch_getter(batches)
    value_and_grad = jax.value_and_grad(loss_fn)
    if ramp == "linear":
        fraction = np.arange(num_steps) / (num_steps - 1)
        low, high = float(min_lr), float(max_lr)  # float64 for a float32 or JAX scalar too
        learning_rates = (low + (high - low) * fraction).astype(np.float32)
    else:
        learning_rates = np.geomspace(min_lr, max_lr, num_steps).astype(np.float32)

    def run(params, data, learning_rates):
        # Zeros, not NaN, where no step ran (cut off below): a NaN output of this jitted
        # run would be a FloatingPointError under jax.debug_nans.
        unset = jnp.zeros([num_steps], jnp.float32)

        def keep_going(carry):
            step, *_, stop = carry
            return (step < num_steps) & ~stop

        def body(carry):
            step, params, state, losses, smoothed, average, best, _ = carry
            loss, grads = value_and_grad(params, *get_batch(data, step))
            loss = jnp.asarray(loss).astype(jnp.float32)
            average = smoothing * average + (1 - smoothing) * loss
            smooth = average / (1 - smoothing ** (step + 1).astype(jnp.float32))
            best = jnp.minimum(best, smooth)
            # s > f * best, as a rise above best: the same for a positive best, and a
            # negative loss (a log-likelihood, a shifted loss) does not stop at once
            rise = smooth - best > (diverge_factor - 1) * jnp.abs(best)
            stop = ~jnp.isfinite(loss) | rise
            state = set_hyperparams(state, learning_rate=learning_rates[step])
            updates, state = tx.update(grads, state, params)
            params = apply_updates(params, updates)
            losses, smoothed = losses.at[step].set(loss), smoothed.at[step].set(smooth)
            return step + 1, params, state, losses, smoothed, average, best, stop

        start = (
            jnp.zeros([], jnp.int32),
            params,
            tx.init(params),
            unset,
            unset,
            jnp.zeros([], jnp.float32),
            jnp.full([], jnp.inf, jnp.float32),
            jnp.zeros([], bool),
        )
        steps, _, _, losses, smoothed, _, _, stop = jax.lax.while_loop(keep_going, body, start)
        return steps, losses, smoothed, stop

    steps, losses, smoothed, stop = jax.jit(run)(params, data, learning_rates)
    steps = int(steps)
    learning_rates = learning_rates[:steps]
    smoothed = np.asarray(smoothed)[:steps]
    return LRFindResult(
        learning_rates=learning_rates,
        losses=np.asarray(losses)[:steps],
        smoothed_losses=smoothed,
        suggestion=_steepest_descent(learning_rates, smoothed),
        diverged=bool(stop),
    )
