"""PyTorch's CosineAnnealingLR and CosineAnnealingWarmRestarts as gradtx schedules."""

from __future__ import annotations

import math

import jax.numpy as jnp

from gradtx import check, numerics
from gradtx.compat import _validate
from gradtx.compat.torch.lr_scheduler._step import as_float
from gradtx.core import Schedule


def cosine_annealing_lr(base_lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:  # noqa: N803
    """``CosineAnnealingLR``: ``lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2``.

    Periodic past ``T_max`` (it rises back to ``base_lr`` at ``2 T_max``), as PyTorch's
    recursion is; Keras' ``CosineDecay`` and ``gradtx.schedules.cosine_decay`` hold
    ``eta_min`` instead.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        T_max: the steps from ``base_lr`` down to ``eta_min`` (half a period), a
            positive integer.
        eta_min: the lowest rate, >= 0 (above ``base_lr`` the wave is upside down, as
            in PyTorch).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> values = lr_scheduler.cosine_annealing_lr(1.0, T_max=2)(jnp.arange(5))
        >>> [round(v, 6) for v in values.tolist()]
        [1.0, 0.5, 0.0, 0.5, 1.0]

    Reference: PyTorch's ``torch.optim.lr_scheduler.CosineAnnealingLR``.
    """
    check.non_negative("base_lr", base_lr)
    T_max = check.positive_int("T_max", T_max)
    _validate.number("eta_min", eta_min, 0.0)

    def schedule(step):
        whole, t = as_float(step)
        if 2 * T_max <= numerics.INT32_MAX:
            # one period of the cosine, from the integer step: float32 rounds a step past
            # 2**24, and pi * t / T_max was a random phase at step 2e9
            t = (whole % (2 * T_max)).astype(t.dtype)
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(math.pi * t / T_max)) / 2

    return schedule


def cosine_annealing_warm_restarts(
    base_lr: float,
    T_0: int,  # noqa: N803
    T_mult: int = 1,  # noqa: N803
    eta_min: float = 0.0,
) -> Schedule:
    """``CosineAnnealingWarmRestarts`` (SGDR) stepped once per optimizer step.

    The i-th period lasts ``T_i = T_0 * T_mult^i`` steps; inside it, with ``T_cur`` the
    steps since its start, ``lr = eta_min + (base_lr - eta_min) (1 + cos(pi T_cur /
    T_i)) / 2``.

    Args:
        base_lr: the optimizer's initial learning rate, >= 0.
        T_0: the length of the first period, a positive integer.
        T_mult: the factor of each period's length over the previous one's, a
            positive integer.
        eta_min: the lowest rate, >= 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat.torch import lr_scheduler
        >>> values = lr_scheduler.cosine_annealing_warm_restarts(1.0, T_0=2, T_mult=2)
        >>> [round(v, 6) for v in values(jnp.arange(7)).tolist()]
        [1.0, 0.5, 1.0, 0.853553, 0.5, 0.146447, 1.0]

    Reference: Loshchilov & Hutter, 2017, "SGDR: Stochastic Gradient Descent with Warm
    Restarts"; PyTorch's ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``.
    """
    check.non_negative("base_lr", base_lr)
    T_0 = check.positive_int("T_0", T_0)
    T_mult = check.positive_int("T_mult", T_mult)
    _validate.number("eta_min", eta_min, 0.0)
    starts, lengths = [0], [T_0]
    while starts[-1] + lengths[-1] <= 2**31 - 1:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(lengths[-1] * T_mult)
        if T_mult == 1:
            break

    def schedule(step):
        t, _ = as_float(step)
        float_dtype = jnp.result_type(float)
        if T_mult == 1:
            t_cur, t_i = t % T_0, jnp.asarray(T_0)
        else:
            # every restart that begins in the int32 range; the last one's length may
            # not fit in int32, so lengths are floats
            index = jnp.searchsorted(jnp.asarray(starts), t, side="right") - 1
            t_cur = t - jnp.asarray(starts)[index]
            t_i = jnp.asarray(lengths, float_dtype)[index]
        fraction = t_cur.astype(float_dtype) / t_i.astype(float_dtype)
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(math.pi * fraction)) / 2

    return schedule
