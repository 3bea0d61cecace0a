"""``lookahead``: k fast steps forward, one step back (Zhang, Lucas, Hinton & Ba, 2019)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, layout, numerics, tree
from gradtx.core import (
    GradientTransformation,
    OptState,
    Params,
    TransformLike,
    _update_with_extra_args,
    param_after_update,
)
from gradtx.wrappers.averaging import copy_params


class LookaheadState(NamedTuple):
    """The state of ``lookahead``.

    Attributes:
        steps_since_sync: int32 scalar in [0, sync_period), fast steps since the last
            sync (modulo ``sync_period``, not saturating).
        slow_params: the slow weights phi, a copy of the params in their dtype.
        inner_state: the fast optimizer's state (kept across syncs, as in the paper;
            ``reset_state=True`` starts it afresh at each sync).

    ``exact_fields`` names the fields that ``quantized_state`` keeps unquantized
    (copies of the params: 8-bit rounding would move the params).
    """

    steps_since_sync: jax.Array
    slow_params: Params
    inner_state: OptState

    exact_fields = ("slow_params",)  # copies of the params: quantized_state keeps them


def lookahead(
    inner: TransformLike,
    sync_period: int = 6,
    slow_step_size: float = 0.5,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Lookahead (Zhang, Lucas, Hinton & Ba, 2019, Algorithm 1) around a fast optimizer.

    The params the user holds are the **fast weights** theta; the **slow weights** phi
    live in the state (``state.slow_params``, initialized to the params). The letters
    are the paper's. With t counting updates from 1 and ``u_t`` the inner optimizer's
    step::

        theta <- theta + u_t                                    (a fast step)
        every sync_period steps:
            phi   <- phi + slow_step_size * (theta - phi)       (the slow step)
            theta <- phi                                        (fast weights reset)

    theta is the fast weights as ``apply_updates`` gives them, rounded to the params'
    dtype (a float16 or bfloat16 theta is synced as the model would hold it). The
    returned updates move the params to theta, so
    ``apply_updates(params, updates)`` is the whole algorithm and the update is an
    ordinary transform in a chain (place it outermost: ``lookahead(adam(1e-3))``).
    Right after a sync the params are the slow weights up to rounding: the update is
    ``phi - params``, and adding it back in the parameter dtype can land up to two
    units in the last place (of the larger of the old params and phi) away from
    phi. Evaluate with ``state.slow_params``, phi itself, as the paper does. The
    inner optimizer's state is kept across syncs (the paper's default, "maintain");
    ``reset_state=True`` replaces it at each sync by ``inner.init`` of the synced
    weights (the paper's "reset", Optax's ``reset_state``: the same numbers as
    Optax's, which inits at the fast weights before the step, for every inner whose
    state does not copy the params, Adam's or momentum's). The state
    counts fast steps modulo ``sync_period`` (0 right after a sync), so the syncs go on
    for as long as training does (a total count would saturate at the int32 maximum).
    Optax's ``lookahead`` instead asks the user to hold both weight sets in a
    ``LookaheadParams``. Under ``jit`` the sync is a ``lax.cond``, so a fast step
    neither reads nor writes the slow weights (a donated Adam step moves 76 bytes/param,
    where a select, as in Optax, moved 84 and copied buffers); un-jitted, a select.

    Args:
        inner: the fast optimizer (its updates are added to the params, so it includes
            the learning rate).
        sync_period: k, the number of fast steps per slow step, an int >= 1.
        slow_step_size: alpha, in [0, 1].
        reset_state: start the inner optimizer's state afresh at each sync (a bool).

    The defaults, k = 6 and alpha = 0.5, are those of TensorFlow Addons' and timm's
    ``Lookahead``; the paper's experiments mostly use k = 5 (or 10) and alpha = 0.5 (or
    0.8), and Optax's ``lookahead`` has no defaults.

    State: ``LookaheadState(steps_since_sync, slow_params, inner_state)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.lookahead(gtx.scale(-1.0), sync_period=2, slow_step_size=0.5)
        >>> params = jnp.array([0.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     updates, state = tx.update(jnp.array([1.0]), state, params)
        ...     params = gtx.apply_updates(params, updates)
        >>> params.tolist(), state.slow_params.tolist()
        ([-1.0], [-1.0])

    Reference: Zhang, Lucas, Hinton & Ba, 2019, "Lookahead Optimizer: k steps forward,
    1 step back".
    """
    sync_period = check.positive_int("sync_period", sync_period)
    check.in_range("slow_step_size", slow_step_size, 0.0, 1.0)
    check.boolean("reset_state", reset_state)
    inner_update = _update_with_extra_args(inner, "inner")

    def init(params):
        return LookaheadState(
            steps_since_sync=jnp.zeros([], jnp.int32),
            slow_params=copy_params(params),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("lookahead needs the parameters: call update(updates, state, params)")
        check.state_of("lookahead", state, LookaheadState)
        updates, inner_state = inner_update(updates, state.inner_state, params, **extra)
        # Modulo sync_period, not a saturating total: 2**31 - 1 is prime, so a saturated
        # count would never again be a multiple of sync_period and the syncs would stop.
        steps_since_sync = (state.steps_since_sync + 1) % sync_period
        sync = steps_since_sync == 0

        def with_sync(sync):
            def leaf(u, p, slow):
                dtype = numerics.compute_dtype(numerics.result_type(u, p))
                # the fast weights after the step, as the model would hold them (a
                # float16 or bfloat16 theta is rounded to its dtype, as in Optax's f + u)
                fast = param_after_update(p, u, dtype)
                alpha = numerics.factor(slow_step_size, dtype)
                synced = slow.astype(dtype) + alpha * (fast - slow.astype(dtype))
                step = jnp.where(sync, synced - p.astype(dtype), u.astype(dtype))
                slow_new = jnp.where(sync, synced, slow.astype(dtype))
                return step.astype(u.dtype), slow_new.astype(slow.dtype)

            return tree.map_unzip(
                leaf, updates, params, state.slow_params, outputs=2, names=("the params",)
            )

        def fresh(slow_params):
            """The inner state ``init`` gives at the synced weights, in the dtypes of the
            state it replaces (a weakly typed or wider leaf stays as it was)."""
            return jax.tree.map(
                lambda new, old: jnp.asarray(new, jnp.result_type(old)),
                inner.init(slow_params),
                inner_state,
            )

        if isinstance(sync, jax.core.Tracer):
            # Traced (jit), a lax.cond, so that a fast step neither reads nor writes the
            # slow weights: with a select, XLA recomputes the step inside the parameter
            # update from the slow weights that the select overwrites in place, so it
            # first copied both buffers (Adam: 84 bytes/param, as optax.lookahead; 76 now).
            if reset_state:

                def synced():
                    synced_updates, slow_params = with_sync(True)
                    return synced_updates, slow_params, fresh(slow_params)

                updates, slow_params, inner_state = layout.cond(
                    sync, synced, lambda: (updates, state.slow_params, inner_state)
                )
            else:
                updates, slow_params = layout.cond(
                    sync, lambda: with_sync(True), lambda: (updates, state.slow_params)
                )
        else:
            # Eagerly, a select: no program to compile, no wait for the device.
            updates, slow_params = with_sync(sync)
            if reset_state:
                inner_state = jax.tree.map(
                    lambda new, old: jnp.where(sync, *layout.laid_out_alike(new, old)),
                    fresh(slow_params),
                    inner_state,
                )
        return updates, LookaheadState(steps_since_sync, slow_params, inner_state)

    return GradientTransformation(init, update)
