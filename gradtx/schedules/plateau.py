"""``reduce_on_plateau``: lower the step size when a metric stops improving."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation


class ReduceOnPlateauState(NamedTuple):
    """The state of ``reduce_on_plateau``.

    Attributes:
        scale: the factor on the updates, a scalar in the default float dtype (float32;
            float64 under x64), initially 1.
        best_value: the best metric so far, a scalar like ``scale``; +inf (mode
            ``"min"``) or -inf (``"max"``) before any.
        num_bad_steps: int32 scalar, metrics in a row that were not better than
            ``best_value``.
        cooldown_counter: int32 scalar, metrics left to ignore after a reduction.
        count: int32 scalar, metrics seen so far, saturating at 2**31 - 1.
    """

    scale: jax.Array
    best_value: jax.Array
    num_bad_steps: jax.Array
    cooldown_counter: jax.Array
    count: jax.Array


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_scale: float = 0.0,
    mode: str = "min",
    eps: float = 1e-8,
    *,
    require_value: bool = True,
) -> GradientTransformation:
    """Multiplies updates by a scale that drops by ``factor`` when a metric plateaus.

    Each update takes the metric as ``update(updates, state, params, value=metric)``
    (a loss, say, or a validation score passed in each epoch) and follows PyTorch's
    ``ReduceLROnPlateau.step(metric)`` step for step::

        better = value < best * (1 - threshold)     mode='min', threshold_mode='rel'
                 value < best - threshold           mode='min', threshold_mode='abs'
                 value > best * (1 + threshold)     mode='max', threshold_mode='rel'
                 value > best + threshold           mode='max', threshold_mode='abs'
        if better:   best = value;  bad = 0     else:  bad = bad + 1
        if cooldown_counter > 0:   cooldown_counter -= 1;  bad = 0
        if bad > patience:
            new = max(scale * factor, min_scale)
            if scale - new > eps:  scale = new
            cooldown_counter = cooldown;  bad = 0
        updates <- scale * updates

    The scale applied to an update already accounts for that update's ``value``, as
    PyTorch's lr after ``scheduler.step(metric)`` is the one the next step uses. Chain
    it after the optimizer (``chain(adam(1e-3), reduce_on_plateau())``): the effective
    learning rate is then ``1e-3 * state.scale``, and PyTorch's ``min_lr`` is
    ``min_scale * lr``. ``best`` starts at +inf (min) or -inf (max), so the first
    metric is always an improvement; a NaN metric is never one.

    With a negative ``best`` (log-likelihoods), PyTorch's relative test
    ``value < best * (1 - threshold)`` accepts values slightly *worse* than ``best``
    (``-9.9995 < -10 * 0.9999``), and so does this transform, for parity; prefer
    ``threshold_mode='abs'`` for metrics that are negative or cross zero.

    Put it in a ``gradtx.chain`` (Optax transforms may sit in it too): ``optax.chain``
    forwards ``value=`` only to Optax's own ``GradientTransformationExtraArgs``.

    A metric measured once per epoch (PyTorch's ``scheduler.step(val_loss)`` after each
    epoch): build it with ``require_value=False`` and pass the epoch's ``value=`` with
    the first update of the next epoch (PyTorch's next epoch is the first to use the
    rate it sets; passed with the epoch's own last update, that update would already be
    scaled: 5-40% off PyTorch's trajectory in the recorded cases); the updates without
    it keep the state and apply the scale in force. (Under ``jax.jit`` the two kinds of
    call compile separately, since ``None`` is static.) By default a missing ``value``
    is a ValueError, so that a forgotten metric is not silently a scale of 1 forever.

    The scale and the best metric are kept in the default float dtype (float64 under
    ``jax_enable_x64``, as PyTorch's Python doubles; else float32).

    Keras' ``ReduceLROnPlateau`` differs: it reduces when ``wait >= patience`` (one
    metric earlier than here) and its ``min_delta`` is absolute.

    Args:
        factor: the scale is multiplied by it at each reduction, in [0, 1).
        patience: metrics without improvement tolerated before a reduction, an int
            >= 0.
        threshold: the improvement that counts, >= 0 (relative or absolute).
        threshold_mode: ``'rel'`` or ``'abs'``.
        cooldown: metrics ignored after a reduction before counting again, an int >= 0.
        min_scale: the scale never drops below it, >= 0.
        mode: ``'min'`` (a loss) or ``'max'`` (an accuracy).
        eps: a reduction smaller than this is skipped (PyTorch's ``eps``, applied to
            the scale), >= 0.
        require_value: False lets an update come without ``value`` (or with
            ``value=None``): it keeps the state (a metric once per epoch). Inside
            ``optax.chain``, which passes no ``value=`` on, every update is then one
            without: the scale never moves (use ``gtx.chain``).

    State: ``ReduceOnPlateauState(scale, best_value, num_bad_steps, cooldown_counter,
    count)``; ``state.scale`` is the factor now in force.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.reduce_on_plateau(factor=0.5, patience=1)
        >>> state = tx.init(jnp.zeros(1))
        >>> for loss in [1.0, 0.5, 0.6, 0.6, 0.6]:
        ...     updates, state = tx.update(jnp.ones(1), state, value=loss)
        >>> updates.tolist(), float(state.scale)
        ([0.5], 0.5)

    Reference: PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau``.
    """
    check.in_range("factor", factor, 0.0, 1.0, high_inclusive=False)
    patience = check.non_negative_int("patience", patience)
    check.non_negative("threshold", threshold)
    check.one_of("threshold_mode", threshold_mode, ("rel", "abs"))
    cooldown = check.non_negative_int("cooldown", cooldown)
    check.non_negative("min_scale", min_scale)
    check.one_of("mode", mode, ("min", "max"))
    check.non_negative("eps", eps)
    worst = jnp.inf if mode == "min" else -jnp.inf

    def is_better(value, best):
        if mode == "min" and threshold_mode == "rel":
            return value < best * (1 - threshold)
        if mode == "min":
            return value < best - threshold
        if threshold_mode == "rel":
            return value > best * (1 + threshold)
        return value > best + threshold

    def init(params):
        del params
        float_dtype = jnp.result_type(float)
        return ReduceOnPlateauState(
            scale=jnp.ones([], float_dtype),
            best_value=jnp.full([], worst, float_dtype),
            num_bad_steps=jnp.zeros([], jnp.int32),
            cooldown_counter=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
        )

    def update(updates, state, params=None, *, value: Any = None, **extra):
        del params, extra
        check.state_of("reduce_on_plateau", state, ReduceOnPlateauState)
        if value is None and require_value:
            raise ValueError(
                "reduce_on_plateau needs the metric to watch: call "
                "update(updates, state, params, value=metric), or build it with "
                "require_value=False to pass a metric only on some updates (each epoch). "
                "If you did pass value=, a wrapper dropped it on the way: optax.chain "
                "passes no extra arguments to a transform that is not an "
                "optax.GradientTransformationExtraArgs, nor do Optax's wrappers "
                "(MultiSteps, masked, multi_transform, apply_if_finite...); chain with "
                "gtx.chain and use gradtx's wrappers, or hand Optax "
                "optax.GradientTransformationExtraArgs(*tx)"
            )
        if value is None:  # no new metric: the state stays, its scale applies
            return _scaled(updates, state.scale), state
        value = jnp.asarray(value)
        if value.ndim != 0:
            raise ValueError(f"value must be a scalar metric, got shape {value.shape}")
        value = value.astype(numerics.leaf_dtype(state.best_value))
        better = is_better(value, state.best_value)
        best_value = jnp.where(better, value, state.best_value)
        num_bad_steps = jnp.where(better, 0, numerics.safe_increment(state.num_bad_steps))
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1, 0)
        num_bad_steps = jnp.where(in_cooldown, 0, num_bad_steps)
        reduce = num_bad_steps > patience
        reduced = jnp.maximum(state.scale * factor, min_scale)
        scale = jnp.where(reduce & (state.scale - reduced > eps), reduced, state.scale)
        cooldown_counter = jnp.where(reduce, cooldown, cooldown_counter).astype(jnp.int32)
        num_bad_steps = jnp.where(reduce, 0, num_bad_steps).astype(jnp.int32)
        scale = scale.astype(numerics.leaf_dtype(state.scale))
        new_state = ReduceOnPlateauState(
            scale=scale,
            best_value=best_value.astype(numerics.leaf_dtype(state.best_value)),
            num_bad_steps=num_bad_steps,
            cooldown_counter=cooldown_counter,
            count=numerics.safe_increment(state.count),
        )
        return _scaled(updates, scale), new_state

    return GradientTransformation(init, update)


def _scaled(updates: Any, scale: jax.Array) -> Any:
    """``scale * updates``, in the compute dtype, rounded once to each leaf's dtype."""

    def leaf(u):
        dtype = numerics.compute_dtype(u.dtype)
        return (u.astype(dtype) * numerics.factor(scale, dtype)).astype(u.dtype)

    (scaled,) = tree.map_unzip(leaf, updates, outputs=1)
    return scaled
