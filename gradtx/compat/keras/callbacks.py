"""Keras' ``ReduceLROnPlateau`` callback, driving the learning rate held in a state.

Keras' callback runs on the host at the end of each epoch and assigns
``optimizer.learning_rate``, which every later step reads, inside the momentum buffer
too for SGD and RMSprop. Scaling the updates after the optimizer (``gradtx.schedules.
reduce_on_plateau``, PyTorch's rule) is not the same for them; this port does what
Keras does: it reads and sets the injected ``learning_rate`` of the optimizer's state
(``gtx.schedule_injection(kc.sgd)(...)``), with Keras' order of tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check
from gradtx.core import OptState
from gradtx.schedules.hyperparams import get_hyperparams, set_hyperparams

__all__ = ["ReduceLROnPlateau", "ReduceLROnPlateauState", "reduce_lr_on_plateau"]


class ReduceLROnPlateauState(NamedTuple):
    """The host-side state of ``reduce_lr_on_plateau``: Python numbers, not arrays.

    Attributes:
        best: float, the best metric so far; None before the first (Keras' None).
        wait: int >= 0, epochs without improvement, counted outside cooldown.
        cooldown_counter: int >= 0, epochs left to ignore after a reduction.
        learning_rate: float, the rate it left in the optimizer's state at the last
            epoch (as stored, float32-rounded); None before the first.
    """

    best: float | None
    wait: int
    cooldown_counter: int
    learning_rate: float | None


class ReduceLROnPlateau(NamedTuple):
    """``init() -> state`` and ``on_epoch_end(value, opt_state, state) -> (opt_state,
    state)``: host-side, called once per epoch outside ``jit``, as Keras calls it.

    Built by ``reduce_lr_on_plateau``, which describes the rule.

    Attributes:
        init: ``init() -> ReduceLROnPlateauState``, the state before the first epoch.
        on_epoch_end: ``(value, opt_state, state) -> (opt_state, state)``: ``value`` is
            the epoch's metric (a real scalar), ``opt_state`` a state holding an injected
            ``learning_rate``; returns it with the rate reduced or unchanged.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> from gradtx.compat import keras as kc
        >>> opt_state = gtx.sgd(0.1).init(jnp.zeros(1))
        >>> plateau = kc.reduce_lr_on_plateau(factor=0.5, patience=1)
        >>> opt_state, state = plateau.on_epoch_end(1.0, opt_state, plateau.init())
        >>> opt_state, state = plateau.on_epoch_end(1.0, opt_state, state)
        >>> state.wait, round(state.learning_rate, 6)
        (0, 0.05)
    """

    init: Callable[[], ReduceLROnPlateauState]
    on_epoch_end: Callable[[Any, OptState, ReduceLROnPlateauState], tuple]


def _metric(monitor: str, value: Any) -> float:
    """The monitored metric as a float: a real number (a scalar array too). NaN is let
    through: Keras compares it, and it never counts as an improvement."""
    array = None
    if not isinstance(value, str | bytes | bool | np.bool_):
        try:
            array = np.asarray(value)
        except Exception:  # an object NumPy cannot take
            array = None
    if (
        array is None
        or array.ndim
        or not np.issubdtype(array.dtype, np.number)
        or np.iscomplexobj(array)
    ):
        raise TypeError(
            f"on_epoch_end's value, the monitored metric {monitor!r}, must be a real "
            f"number (a float or a 0-d array), got {value!r}"
        )
    return float(array)


def reduce_lr_on_plateau(
    monitor: str = "val_loss",
    factor: float = 0.1,
    patience: int = 10,
    mode: str = "auto",
    min_delta: float = 1e-4,
    cooldown: int = 0,
    min_lr: float = 0.0,
    *,
    path: str | None = None,
) -> ReduceLROnPlateau:
    """``keras.callbacks.ReduceLROnPlateau`` with Keras' arguments, for a gradtx loop.

    At the end of each epoch, ``opt_state, state = plateau.on_epoch_end(val_loss,
    opt_state, state)`` does what Keras' callback does, in its order::

        if cooldown_counter > 0:  cooldown_counter -= 1;  wait = 0
        if best is None or current + min_delta < best:   best = current;  wait = 0
        elif cooldown_counter == 0:
            wait += 1
            if wait >= patience and lr > float32(min_lr):
                lr = max(lr * factor, min_lr);  cooldown_counter = cooldown;  wait = 0

    (``current - min_delta > best`` in ``max`` mode), where ``lr`` is the
    ``learning_rate`` injected in ``opt_state``: build the optimizer with
    ``gtx.schedule_injection(kc.sgd)(learning_rate=..., ...)`` (``path=`` picks one of
    several). The new rate applies from the next update on, inside momentum buffers
    too, as Keras' assignment does (an update-scaling plateau would rescale the buffer's
    past terms as well). The comparison runs in the default float dtype, as Keras' in
    its floatx; the rate is stored in float32, as Keras' variable under floatx float32
    (under float64 the two differ by that rounding, ~1e-8 relative). So is every other
    float hyperparameter ``schedule_injection`` injects: name them in ``static_args``
    to keep Keras' doubles (``gtx.schedule_injection(kc.sgd, static_args=("momentum",
    "weight_decay", "global_clipnorm"))``; injected, momentum 0.9 and weight decay 0.1
    put a float64 SGD run 4e-8 off Keras' over 60 steps, static 6e-16 with a rate
    float32 holds exactly, 0.0625). A rate that changed
    between two epochs without the callback (a schedule, which Keras refuses to set, or
    other code) is a TypeError: the callback's reduction would be undone. It watches one
    optimizer state: a batch of states (``jax.vmap(tx.init)``, an ensemble) is a
    ValueError (chain ``gtx.reduce_on_plateau()`` and pass each member's ``value=``
    inside the vmapped step instead).

    It differs from PyTorch's (``gradtx.compat.torch.lr_scheduler``): it reduces when
    the bad epochs *reach* ``patience``, ``min_delta`` is absolute, and the epoch that
    ends a cooldown already counts.

    Args:
        monitor: the metric's name; only read by ``mode="auto"``: ``"loss"`` and
            ``"val_loss"`` are minimized, and any other name needs ``mode``
            (Keras reads the direction from the model's metrics, which are not here).
        factor: the rate is multiplied by it, in [0, 1).
        patience: epochs without improvement before a reduction, an int >= 0.
        mode: ``"auto"``, ``"min"`` or ``"max"``.
        min_delta: the improvement that counts (its absolute value, as Keras takes).
        cooldown: epochs after a reduction before bad epochs count again, an int >= 0.
        min_lr: the rate is never reduced below it, >= 0.
        path: which injected optimizer's ``learning_rate`` (as ``gtx.set_hyperparams``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> from gradtx.compat import keras as kc
        >>> tx = gtx.schedule_injection(kc.sgd)(learning_rate=0.1, momentum=0.9)
        >>> opt_state = tx.init(jnp.zeros(2))
        >>> plateau = kc.reduce_lr_on_plateau(factor=0.5, patience=1)
        >>> state = plateau.init()
        >>> for val_loss in [1.0, 0.9, 0.95]:
        ...     opt_state, state = plateau.on_epoch_end(val_loss, opt_state, state)
        >>> round(float(gtx.get_hyperparams(opt_state)["learning_rate"]), 6)
        0.05

    Reference: ``keras.callbacks.ReduceLROnPlateau`` (Keras 3).
    """
    check.in_range("factor", factor, 0.0, 1.0, high_inclusive=False)
    patience = check.non_negative_int("patience", patience)
    check.one_of("mode", mode, ("auto", "min", "max"))
    check.number("min_delta", min_delta)
    cooldown = check.non_negative_int("cooldown", cooldown)
    check.non_negative("min_lr", min_lr)
    if not isinstance(monitor, str):
        raise TypeError(f"monitor must be a metric name (a string), got {monitor!r}")
    if path is not None and not isinstance(path, str):
        raise TypeError(
            f"path must be None or a string (a state path, as gtx.set_hyperparams takes), "
            f"got {path!r}"
        )
    if mode == "auto":
        if monitor.removeprefix("val_") != "loss":
            raise ValueError(
                f"mode='auto' cannot tell whether {monitor!r} is to be minimized or "
                f"maximized (Keras reads it from the model's metrics); pass mode='min' or "
                f"mode='max'"
            )
        mode = "min"
    delta = abs(float(min_delta))

    def init() -> ReduceLROnPlateauState:
        return ReduceLROnPlateauState(best=None, wait=0, cooldown_counter=0, learning_rate=None)

    def current_rate(opt_state) -> float:
        rate = get_hyperparams(opt_state, path=path)["learning_rate"]
        if np.ndim(rate):
            # a batch of states (jax.vmap(tx.init)): one metric cannot decide for each
            raise ValueError(
                f"reduce_lr_on_plateau watches one optimizer state; opt_state holds "
                f"learning_rate with shape {list(np.shape(rate))}, a batch of states "
                f"(jax.vmap(tx.init)). Give each its own callback state and metric, or "
                f"chain gtx.reduce_on_plateau() and pass value= inside the vmapped step"
            )
        return float(rate)

    def is_improvement(current: float, best: float | None) -> bool:
        if best is None:
            return True
        dtype = jnp.result_type(float)  # Keras compares in its floatx
        if mode == "min":
            return bool(np.asarray(current + delta, dtype) < np.asarray(best, dtype))
        return bool(np.asarray(current - delta, dtype) > np.asarray(best, dtype))

    def on_epoch_end(value, opt_state, state):
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                "reduce_lr_on_plateau runs on the host at the end of an epoch, as Keras' "
                "callback does: call on_epoch_end outside jax.jit and jax.vmap with the "
                "metric's value"
            )
        current = _metric(monitor, value)
        best, wait, cooldown_counter, left = state
        rate = current_rate(opt_state)
        if left is not None and rate != left:
            raise TypeError(
                f"the learning rate changed between two epochs without this callback "
                f"({left!r} -> {rate!r}): it is a schedule, which the callback cannot "
                f"set (Keras refuses to as well), or something else sets it"
            )
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if is_improvement(current, best):
            best, wait = current, 0
        elif cooldown_counter == 0:
            wait += 1
            if wait >= patience and rate > np.float32(min_lr):
                new_lr = max(rate * factor, min_lr)
                opt_state = set_hyperparams(opt_state, path=path, learning_rate=new_lr)
                rate = current_rate(opt_state)  # as stored: float32, as Keras' variable
                cooldown_counter, wait = cooldown, 0
        return opt_state, ReduceLROnPlateauState(best, wait, cooldown_counter, rate)

    return ReduceLROnPlateau(init, on_epoch_end)
