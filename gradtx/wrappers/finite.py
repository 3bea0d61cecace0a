"""``apply_if_finite``: skip the steps whose gradients hold NaN or Inf."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, layout, numerics, tree
from gradtx.core import (
    GradientTransformation,
    OptState,
    TransformLike,
    Updates,
    _update_with_extra_args,
)


class ApplyIfFiniteState(NamedTuple):
    """The state of ``apply_if_finite``.

    Attributes:
        notfinite_count: int32 scalar, non-finite updates skipped in a row (0 after an
            applied update).
        last_finite: bool scalar, whether the last updates were all finite (initially
            True).
        total_notfinite: int32 scalar, every non-finite update seen, saturating at
            2**31 - 1.
        inner_state: the inner transform's state, left unchanged by a skipped update.
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: OptState


def _all_finite(updates) -> jax.Array:
    # a flag per leaf in the eager kernels un-jitted (32 leaves a call), then one reduction
    flags = jax.tree.leaves(tree.map_leaves(_is_finite, updates))
    return _all_true(flags) if flags else jnp.asarray(True)


@tree.nested_jit
def _all_true(flags: list[jax.Array]) -> jax.Array:
    # jitted: un-jitted, jnp.stack is an operation per flag in jax 0.6.2 (what pip
    # resolves for Python 3.10): 71 operations an update on 64 leaves, 3 in jax 0.10.2
    return jnp.all(jnp.stack(flags))


def _is_finite(leaf: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(leaf))


def _debugging_non_finite_values() -> bool:
    return bool(jax.config.jax_debug_nans or jax.config.jax_debug_infs)


def _run_or_skip(apply: jax.Array, run, updates, inner_state: OptState, params) -> tuple:
    """``run(updates, inner_state, params)`` where ``apply`` is true, else zero updates
    and ``inner_state``, as one ``lax.cond`` (a traced ``apply``). The skip branch's
    zeros are laid out like the gradients ``updates`` in the dtypes of the updates ``run``
    returns, so the branches agree whatever the inner transform casts. ``run`` is jitted
    (``tree.trace_once``: non-array leaves of ``params`` stay Python values) so that the
    ``eval_shape`` giving those dtypes and the cond's branch share one trace of the inner
    update (JAX's trace cache); it was traced twice per compilation (Adam on 1,000
    leaves: the wrapped step traced in 2.2 s, 1.7 s now, Adam alone 0.6 s)."""
    run = tree.trace_once(run, updates, inner_state, params)
    updates_like, _ = jax.eval_shape(run)

    def skip():
        return tree.zeros_like_in_dtypes_of(updates, updates_like), inner_state

    return layout.cond(apply, run, skip)


def _select(
    apply: jax.Array, new_updates: Updates, new_inner_state: OptState, old_inner_state: OptState
) -> tuple:
    """Un-jitted, the new updates or zeros and the new or the old inner state, as
    ``apply`` says, selected per element in the eager kernels (``tree.map_leaves``, 32
    leaves a call; operations per leaf took Adam on 1,000 leaves to 210-400 ms an
    update, 90-100 ms now, Adam alone ~40).
    A leaf the inner update passed through (an optimizer's hyperparameters) is kept as it
    is: selected anew, it would be an array computed from the gradients, and the next
    un-jitted update, which checks the hyperparameters on the host, would wait for the
    device to finish this step."""
    new_updates = tree.map_leaves(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates)
    new_leaves, treedef = jax.tree.flatten(new_inner_state)
    old_leaves = treedef.flatten_up_to(old_inner_state)
    changed = [
        i for i, (new, old) in enumerate(zip(new_leaves, old_leaves, strict=True)) if new is not old
    ]
    selected = tree.map_leaves(
        lambda new, old: jnp.where(apply, *layout.laid_out_alike(new, old)),
        [new_leaves[i] for i in changed],
        [old_leaves[i] for i in changed],
    )
    leaves = list(old_leaves)
    for i, leaf in zip(changed, selected, strict=True):
        leaves[i] = leaf
    return new_updates, treedef.unflatten(leaves)


def apply_if_finite(inner: TransformLike, max_consecutive_errors: int) -> GradientTransformation:
    """Applies ``inner`` only when every update is finite; otherwise a zero step.

    A step whose updates hold a NaN or an Inf is skipped: the updates returned are zero
    and the inner state is left exactly as it was (so one bad batch does not poison
    Adam's moments). Skips are counted. When ``max_consecutive_errors`` steps in a row
    have been skipped, the next non-finite step is applied (the problem is not a
    transient spike; let it surface) and the consecutive count restarts from zero.
    Optax's ``apply_if_finite`` keeps counting instead, so there every further
    non-finite step is applied until a finite one arrives. Traced (under ``jit``), the
    choice is a ``lax.cond``, as in Optax: a donated step then moves no more memory than
    the inner update's own (a select copied every state buffer first); an un-jitted
    update selects between the two results instead (nothing to compile, no wait for the
    device), except under ``jax.debug_nans`` or ``jax.debug_infs``, where it reads
    ``apply`` back and runs the inner update or the zero step, not both: those flags
    then report no NaN or Inf of a step that is skipped, only one that is applied. The
    zero updates take the dtypes of the inner updates (float32 updates of bfloat16
    gradients stay float32) and the gradients' sharding; the inner state keeps its
    dtypes (a leaf the inner update promotes is cast back, as in ``multi_steps``).

    Args:
        inner: the transform to protect.
        max_consecutive_errors: the number of consecutive non-finite steps to skip,
            an int >= 0.

    State: ``ApplyIfFiniteState(notfinite_count, last_finite, total_notfinite,
    inner_state)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.apply_if_finite(gtx.scale(-1.0), max_consecutive_errors=3)
        >>> state = tx.init(jnp.zeros(2))
        >>> updates, state = tx.update(jnp.array([1.0, jnp.nan]), state)
        >>> updates.tolist(), int(state.total_notfinite)
        ([0.0, 0.0], 1)
    """
    max_consecutive_errors = check.non_negative_int(
        "max_consecutive_errors", max_consecutive_errors
    )
    inner_update = _update_with_extra_args(inner, "inner")

    def init(params):
        return ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.asarray(True),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra):
        check.state_of("apply_if_finite", state, ApplyIfFiniteState)
        finite = _all_finite(updates)
        notfinite_count = jnp.where(
            finite, 0, numerics.safe_increment(state.notfinite_count)
        ).astype(jnp.int32)
        apply = finite | (notfinite_count > max_consecutive_errors)

        def run(updates, inner_state, params):
            new_updates, new_inner_state = inner_update(updates, inner_state, params, **extra)
            # The inner state keeps its dtypes, as in multi_steps: the cond's branches must
            # agree (an inner update promoting an int32 leaf with + 0.5 was a TypeError).
            return new_updates, tree.cast_like(new_inner_state, inner_state)

        if isinstance(apply, jax.core.Tracer):
            # Traced (jit), a lax.cond. With a select of the new against the old state,
            # XLA recomputes the new state inside the fused parameter update from the old
            # state, which the select then overwrites in place, so it first copies every
            # donated state buffer: Adam moved 66 bytes/param against Optax's 54 (which
            # uses a cond) and took 1.16-1.32x its step; with the cond 54, 0.88-1.16x.
            new_updates, new_inner_state = _run_or_skip(
                apply, run, updates, state.inner_state, params
            )
        elif _debugging_non_finite_values():
            # Un-jitted under jax.debug_nans or jax.debug_infs: a select runs the inner
            # update on the non-finite gradients it is to skip, whose NaN or Inf those
            # flags report (as a FloatingPointError) in the inner transform's arithmetic.
            # A Python branch on ``apply`` (one host read; the flags read every result
            # back anyway): an eager lax.cond compiled a program per update (1.5 s an
            # update of Adam on 300 leaves), the branch runs the eager kernels.
            if bool(apply):
                new_updates, new_inner_state = run(updates, state.inner_state, params)
            else:
                traced = tree.trace_once(run, updates, state.inner_state, params)
                updates_like, _ = jax.eval_shape(traced)
                new_updates = tree.zeros_like_in_dtypes_of(updates, updates_like)
                new_inner_state = state.inner_state
        else:
            # Eagerly, a select: no program to compile, and no wait for the device to
            # say whether to skip.
            new_updates, new_inner_state = run(updates, state.inner_state, params)
            new_updates, new_inner_state = _select(
                apply, new_updates, new_inner_state, state.inner_state
            )
        return new_updates, ApplyIfFiniteState(
            notfinite_count=jnp.where(apply, 0, notfinite_count).astype(jnp.int32),
            last_finite=finite,
            total_notfinite=jnp.where(
                finite, state.total_notfinite, numerics.safe_increment(state.total_notfinite)
            ),
            inner_state=new_inner_state,
        )

    return GradientTransformation(init, update)
