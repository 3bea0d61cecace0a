"""Parameter averages for evaluation: an exponential moving average and Polyak/SWA averaging.

Both pass the updates through unchanged and keep, in their state, an average of the
parameters **after** each step (``params + updates``), so they belong at the end of a
chain, after the learning rate and anything else that changes the step. They are named
``*_params`` to keep them apart from a moving average of the updates (momentum).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree, tree_checks
from gradtx.core import GradientTransformation, Params, param_after_update


class EmaParamsState(NamedTuple):
    """The state of ``ema_params``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1.
        ema: the moving average of the params, ready to use (debiased when
            ``debias=True``), a tree like the params in ``dtype`` (None: their dtype,
            at least float32), initially the params.

    ``exact_fields`` names the fields that ``quantized_state`` keeps unquantized
    (a copy of the params: 8-bit rounding would move the params).
    """

    count: jax.Array
    ema: Params

    exact_fields = ("ema",)  # a copy of the params: quantized_state keeps it


class AverageParamsState(NamedTuple):
    """The state of ``average_params``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1.
        average: the mean of the iterates since ``start_step`` (the params themselves
            before), a tree like the params in ``dtype`` (None: their dtype, at least
            float32), initially the params.

    ``exact_fields`` names the fields that ``quantized_state`` keeps unquantized
    (a copy of the params: 8-bit rounding would move the params).
    """

    count: jax.Array
    average: Params

    exact_fields = ("average",)  # a copy of the params: quantized_state keeps it


def _running_average(weight_fn, updates, params, average):
    """``avg <- avg + w * (p + u - avg)`` for every leaf, ``w = weight_fn(dtype)`` in the
    leaf's compute dtype, ``p + u`` the params after the step as ``apply_updates`` gives
    them (in the params' dtype: the iterate the model then holds, and the same addition,
    which XLA computes once for both): a running average. The weights are computed once per dtype,
    outside the per-leaf code, whose closure then holds only arrays: an eager update
    reuses one compiled kernel (a fresh ``weight_fn`` in the closure at every update
    kept it op by op)."""
    dtypes = numerics.leaf_dtypes(updates) | numerics.leaf_dtypes(params)
    dtypes |= numerics.leaf_dtypes(average)
    weights = {numerics.compute_dtype(d).name: weight_fn(numerics.compute_dtype(d)) for d in dtypes}

    def leaf(u, p, avg):
        dtype = numerics.compute_dtype(numerics.result_type(u, p, avg))
        # the params after the step, as apply_updates gives them: rounded to their dtype
        iterate = param_after_update(p, u, dtype)
        weight, step = numerics.promote(weights[dtype.name], iterate - avg.astype(dtype))
        new = avg.astype(dtype) + weight * step
        return u, new.astype(avg.dtype)

    _, new_average = tree.map_unzip(
        leaf, updates, params, average, outputs=2, names=("the params",)
    )
    return new_average


def _needs_params(name: str, params: Any) -> None:
    if params is None:
        raise ValueError(f"{name} needs the parameters: call update(updates, state, params)")


def copy_params(params: Params, dtype: Any = None, *, at_least_float32: bool = False) -> Params:
    """The params as new arrays (in ``dtype`` if given; else in their own dtype, widened
    to float32 from float16/bfloat16 with ``at_least_float32``), never the params' own
    buffers.

    Abstract params (``jax.ShapeDtypeStruct``, for sharding and checkpoint restore) have
    no values: they give zeros of their shape, dtype and sharding, which the restore
    overwrites.
    """
    tree_checks.check_inexact(params, "parameter")

    def copy(p):
        own = numerics.leaf_dtype(p)  # a Python float leaf has JAX's dtype for it
        leaf_dtype = dtype or (numerics.compute_dtype(own) if at_least_float32 else own)
        if isinstance(p, jax.ShapeDtypeStruct):
            return tree.zeros_like(p, leaf_dtype)
        # a copy even in the same dtype (astype would return p itself): a state that
        # held the params' own buffers could not be donated with them in a jitted step
        return jnp.array(p, dtype=leaf_dtype, copy=True)

    return jax.tree.map(copy, params)


def ema_params(
    decay: float = 0.999, *, debias: bool = True, dtype: Any = None
) -> GradientTransformation:
    r"""An exponential moving average of the parameters, readable as ``state.ema``.

    With p_t the params after update t (t from 1)::

        debias=True:   ema_t = ema_{t-1} + w_t (p_t - ema_{t-1}),  w_t = (1 - decay) / (1 - decay^t)
        debias=False:  ema_t = decay * ema_{t-1} + (1 - decay) * p_t,  ema_0 = the initial params

    p_t is computed as ``apply_updates`` computes it, in the params' own dtype (a
    bfloat16 iterate is rounded to bfloat16 before it is averaged, in float32).
    ``debias=True`` is Adam's bias correction applied to an average started at zero,
    kept in closed form so that ``state.ema`` needs no correction to read: the first
    update gives ``ema_1 = p_1``. ``debias=False`` starts the average at the initial
    params (TensorFlow's ``ExponentialMovingAverage`` without ``num_updates``).

    The updates pass through unchanged: place it last in the chain. Evaluate with
    ``gtx.tree_get(state, "ema")``.

    Args:
        decay: in [0, 1); 0.999 averages over about the last 1000 steps.
        debias: as above.
        dtype: dtype of the average; None keeps the parameter dtype, widened to float32
            for float16/bfloat16 parameters (a bfloat16 average cannot move by the
            0.1% a step of decay 0.999 asks of it: it froze at 1.60 where the average
            was 3.89).

    State: ``EmaParamsState(count, ema)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.chain(gtx.scale(-1.0), gtx.ema_params(0.5))
        >>> params = jnp.array([0.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     updates, state = tx.update(jnp.array([1.0]), state, params)
        ...     params = gtx.apply_updates(params, updates)
        >>> params.tolist(), [round(x, 4) for x in gtx.tree_get(state, "ema").tolist()]
        ([-2.0], [-1.6667])

    Reference: Polyak & Juditsky, 1992, "Acceleration of Stochastic Approximation by
    Averaging" (averaged iterates); Kingma & Ba, 2015 (bias correction).
    """
    check.unit_interval("decay", decay)
    check.boolean("debias", debias)
    check.dtype_or_none("dtype", dtype)

    def init(params):
        return EmaParamsState(
            jnp.zeros([], jnp.int32), copy_params(params, dtype, at_least_float32=True)
        )

    def update(updates, state, params=None, **extra):
        del extra
        _needs_params("ema_params", params)
        check.state_of("ema_params", state, EmaParamsState)
        count = numerics.safe_increment(state.count)

        def weight(dtype):
            if not debias:
                return 1 - numerics.hyperparameter(decay, dtype)
            # w_1 exactly 1, so that ema_1 = p_1 (1 - 0.999 in double over 1 -
            # float32(0.999) was 1.0000129: the initial params leaked into the average)
            return numerics.debiased_weight(decay, count, dtype)

        ema = _running_average(weight, updates, params, state.ema)
        return updates, EmaParamsState(count, ema)

    return GradientTransformation(init, update)


def average_params(start_step: int = 0, *, dtype: Any = None) -> GradientTransformation:
    r"""The plain mean of the parameter iterates (Polyak–Ruppert averaging, SWA).

    With p_t the params after update t (t from 1), the iterates after ``start_step``
    updates are averaged::

        average = mean(p_{start_step+1}, ..., p_t)     (t <= start_step: average = p_t)

    Polyak & Juditsky (1992) average every iterate; stochastic weight averaging (Izmailov
    et al., 2018) starts after a burn-in, usually with a cyclical or high constant
    learning rate. p_t is computed as ``apply_updates`` computes it, in the params' own
    dtype. The updates pass through unchanged: place it last in the chain and evaluate
    with ``state.average``.

    Args:
        start_step: updates to skip before averaging, an int >= 0.
        dtype: dtype of the average; None keeps the parameter dtype, widened to float32
            for float16/bfloat16 parameters (an average of t iterates moves by 1/t of
            each new one, below a bfloat16 step after a few hundred).

    State: ``AverageParamsState(count, average)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.chain(gtx.scale(-1.0), gtx.average_params())
        >>> params = jnp.array([0.0])
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     updates, state = tx.update(jnp.array([1.0]), state, params)
        ...     params = gtx.apply_updates(params, updates)
        >>> gtx.tree_get(state, "average").tolist()   # mean of -1, -2, -3
        [-2.0]

    References: Polyak & Juditsky, 1992; Izmailov, Podoprikhin, Garipov, Vetrov &
    Wilson, 2018, "Averaging Weights Leads to Wider Optima and Better Generalization".
    """
    start_step = check.non_negative_int("start_step", start_step)
    check.dtype_or_none("dtype", dtype)

    def init(params):
        return AverageParamsState(
            jnp.zeros([], jnp.int32), copy_params(params, dtype, at_least_float32=True)
        )

    def update(updates, state, params=None, **extra):
        del extra
        _needs_params("average_params", params)
        check.state_of("average_params", state, AverageParamsState)
        count = numerics.safe_increment(state.count)
        averaged = count - start_step

        def weight(dtype):
            # before start_step the "average" follows the params (weight 1)
            return 1 / jnp.maximum(averaged, 1).astype(dtype)

        average = _running_average(weight, updates, params, state.average)
        return updates, AverageParamsState(count, average)

    return GradientTransformation(init, update)
