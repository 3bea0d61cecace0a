"""Averaged SGD: decaying step sizes and a Polyak-Ruppert average of the iterates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation, ScalarOrSchedule, Updates, param_after_update


class AveragedSgdState(NamedTuple):
    """The state of ``averaged_sgd``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1.
        average: running average of the iterates from step ``t0`` on (PyTorch's
            ``ax``; the latest iterate before), a tree like the params in their
            dtype, initially 0.

    ``exact_fields`` names the fields that ``quantized_state`` keeps unquantized
    (a copy of the params: 8-bit rounding would move the params).
    """

    count: jax.Array
    average: Updates

    exact_fields = ("average",)  # a copy of the params: quantized_state keeps it


def averaged_sgd(
    learning_rate: ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
) -> GradientTransformation:
    r"""Averaged stochastic gradient descent (Polyak & Juditsky, 1992), PyTorch's form.

    The update is the whole descent step (the learning rate is inside the step size,
    so do not scale it again). With k counting updates from 0 and ``lr`` the learning
    rate of update ``max(k - 1, 0)`` (PyTorch computes the next step size at the end of
    a step, with that step's learning rate)::

        eta_k = lr / (1 + lambd * lr * k)^alpha
        mu_k  = 1 / max(1, k - t0)
        p'    = p * (1 - lambd * eta_k) - eta_k * g        (u = p' - p)
        a'    = q   if mu_k == 1  else  a + mu_k * (q - a),   q = p + u as apply_updates gives it

    The average ``a`` (PyTorch's ``ax``) is kept in the state: the latest iterate
    through update ``t0 + 2`` (counting updates from 1: ``mu_k = 1`` up to ``k = t0 +
    1``), then the mean of the iterates since that update. Read it with
    ``state.average`` and evaluate the model there. The iterates averaged are the params
    the model holds (``q``, rounded to their dtype: a float16 or bfloat16 average does
    not see p' before its rounding), as PyTorch's ``ax`` averages the stored param.

    Polyak & Juditsky average every iterate of a step size decaying more slowly than
    ``1 / t``. The step size ``lr / (1 + lambd lr k)^alpha`` (alpha = 3/4), the decay
    term ``lambd`` and the start of the average at ``t0`` are Bottou's (2012,
    "Stochastic Gradient Descent Tricks", after Xu, 2011), as in PyTorch's ASGD.

    Args:
        learning_rate: a non-negative number or a schedule; a negative value of the
            schedule is a ValueError at an un-jitted update (under ``jit`` it cannot be
            checked), as in the optimizers.
        lambd: decay term, >= 0.
        alpha: power of the step-size decay, >= 0.
        t0: the update after which averaging starts, >= 0.

    State: ``AveragedSgdState(count, average)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.averaged_sgd(0.1, lambd=0.0)
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> [round(float(u), 6) for u in updates], [round(float(a), 6) for a in state.average]
        ([-0.2], [0.8])

    Reference: Polyak & Juditsky, 1992, "Acceleration of Stochastic Approximation by
    Averaging"; PyTorch's ``torch.optim.ASGD``.
    """
    scheduled = callable(learning_rate)
    if scheduled:
        check.schedule_arity("learning_rate", learning_rate)
    else:
        check.non_negative("learning_rate", learning_rate)
    check.non_negative("lambd", lambd)
    check.non_negative("alpha", alpha)
    check.non_negative("t0", t0)

    def init(params):
        return AveragedSgdState(count=jnp.zeros([], jnp.int32), average=tree.zeros_like(params))

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError(
                "averaged_sgd needs the parameters: call update(updates, state, params)"
            )
        check.state_of("averaged_sgd", state, AveragedSgdState)
        k = numerics.scalar_counter(state.count)  # an array for a Python int too, as under jit
        lr = learning_rate(jnp.maximum(k - 1, 0)) if scheduled else learning_rate
        if scheduled:
            # A concrete value (an un-jitted update) is checked, as in the optimizers.
            check.non_negative("learning_rate", lr)

        def leaf(g, p, a):
            dtype = numerics.compute_dtype(g.dtype)
            real = numerics.real_dtype(dtype)
            rate = numerics.hyperparameter(lr, real)
            decay = numerics.hyperparameter(lambd, real)
            steps = k.astype(real)
            eta = rate / (1 + decay * rate * steps) ** numerics.hyperparameter(alpha, real)
            mu = 1 / jnp.maximum(1, steps - numerics.hyperparameter(t0, real))
            p_ = p.astype(dtype)
            # real factors cast to complex params' dtype explicitly (strict promotion)
            p_new = p_ * (1 - decay * eta).astype(dtype) - eta.astype(dtype) * g.astype(dtype)
            u = (p_new - p_).astype(g.dtype)
            # the iterate the model holds, p + u as apply_updates gives it (PyTorch's ax
            # averages the stored param): p_new before that rounding was up to an ulp off
            iterate = param_after_update(p, u, dtype)
            average = a.astype(dtype) + mu.astype(dtype) * (iterate - a.astype(dtype))
            a_new = jnp.where(mu == 1, iterate, average)
            return u, a_new.astype(a.dtype)

        updates, average = tree.map_unzip(
            leaf, updates, params, state.average, outputs=2, names=("the params",)
        )
        return updates, AveragedSgdState(numerics.safe_increment(k), average)

    return GradientTransformation(init, update)
