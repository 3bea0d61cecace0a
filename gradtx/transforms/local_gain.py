"""Local adaptive gains: a per-weight step size that grows while the gradient keeps its sign."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from gradtx import check, numerics, tree
from gradtx.core import GradientTransformation, Updates


class ScaleByLocalGainState(NamedTuple):
    """The state of ``scale_by_local_gain``.

    Attributes:
        gains: the per-weight gains in ``[min_gain, max_gain]``, a tree like the params
            in their real dtype, initially 1.
        trace: the previous gradient (with ``trace_decay > 0`` its moving average,
            Jacobs' delta-bar), a tree like the params in their dtype, initially 0.
    """

    gains: Updates
    trace: Updates


def scale_by_local_gain(
    increase: float = 0.05,
    decrease: float = 0.95,
    min_gain: float = 0.01,
    max_gain: float = 100.0,
    *,
    trace_decay: float = 0.0,
) -> GradientTransformation:
    r"""Per-weight adaptive gains (Jacobs, 1988, "delta-bar-delta").

    Each weight has a gain that grows **additively** while its gradient keeps its sign
    and shrinks **multiplicatively** when the sign flips::

        c   = g_t * dbar_{t-1}
        gain <- gain + increase      if c > 0
        gain <- gain * decrease      if c < 0     (unchanged if c == 0, e.g. at t = 1)
        gain <- clip(gain, min_gain, max_gain)
        u   = gain * g_t
        dbar_t = (1 - trace_decay) * g_t + trace_decay * dbar_{t-1}

    With ``trace_decay = 0`` (the default) dbar is the previous gradient, the local-gain
    rule as taught in lecture notes (e.g. Raschka's); Jacobs' delta-bar-delta compares
    with an exponential average of past gradients (his theta, here ``trace_decay``).
    Multiply by ``-learning_rate`` afterwards. Gains start at 1. Jacobs writes the
    decrease as ``(1 - phi)``: ``decrease = 1 - phi``. He sets kappa, phi and theta per
    task and bounds no gain; the defaults (add 0.05, multiply by 0.95, gains within
    [0.01, 100], the previous gradient) are those of Hinton's lecture 6.4 (Neural
    Networks for Machine Learning, Coursera, 2012).

    Args:
        increase: kappa, added while the sign holds, >= 0.
        decrease: the factor applied when the sign flips, in [0, 1].
        min_gain: the smallest gain, >= 0.
        max_gain: the largest gain, >= min_gain.
        trace_decay: theta of the gradient average dbar, in [0, 1).

    State: ``ScaleByLocalGainState(gains, trace)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.scale_by_local_gain(increase=0.5, decrease=0.5)
        >>> state = tx.init(jnp.zeros(2))
        >>> for g in ([1.0, 1.0], [1.0, -1.0]):
        ...     updates, state = tx.update(jnp.array(g), state)
        >>> state.gains.tolist(), updates.tolist()
        ([1.5, 0.5], [1.5, -0.5])

    Reference: Jacobs, 1988, "Increased Rates of Convergence Through Learning Rate
    Adaptation".
    """
    check.non_negative("increase", increase)
    check.in_range("decrease", decrease, 0.0, 1.0)
    check.non_negative("min_gain", min_gain)
    check.non_negative("max_gain", max_gain, allow_inf=True)  # inf: no upper bound
    check.unit_interval("trace_decay", trace_decay)
    check.at_least("max_gain", max_gain, "min_gain", min_gain)

    def init(params):
        return ScaleByLocalGainState(
            gains=tree.full_like(tree.zeros_like(params, real=True), 1.0),
            trace=tree.zeros_like(params),
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("scale_by_local_gain", state, ScaleByLocalGainState)

        def leaf(g, gain, dbar):
            dtype = numerics.compute_dtype(g.dtype)
            real = numerics.real_dtype(dtype)
            g_ = g.astype(dtype)
            dbar_ = dbar.astype(dtype)
            # The sign of g * dbar, from the signs (g * dbar underflows to 0 for
            # |g| below ~1e-19 in float32, and the gains would never move).
            agreement = jnp.real(jnp.sign(g_) * jnp.conj(jnp.sign(dbar_)))
            gain_ = gain.astype(real)
            gain_ = jnp.where(
                agreement > 0,
                gain_ + numerics.hyperparameter(increase, real),
                jnp.where(agreement < 0, gain_ * numerics.hyperparameter(decrease, real), gain_),
            )
            gain_ = jnp.clip(
                gain_,
                numerics.hyperparameter(min_gain, real),
                numerics.hyperparameter(max_gain, real),
            )
            # read as the state stores it (bfloat16 gains of bfloat16 gradients rounded)
            gain_ = numerics.as_stored(gain_, gain.dtype, g.dtype)
            theta = numerics.hyperparameter(trace_decay, real)
            dbar_new = (1 - theta) * g_ + theta * dbar_
            return (
                (gain_.astype(dtype) * g_).astype(g.dtype),
                gain_.astype(gain.dtype),
                dbar_new.astype(dbar.dtype),
            )

        new_updates, gains, trace = tree.map_unzip(
            leaf, updates, state.gains, state.trace, outputs=3
        )
        return new_updates, ScaleByLocalGainState(gains, trace)

    return GradientTransformation(init, update)
