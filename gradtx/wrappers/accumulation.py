"""``multi_steps``: gradient accumulation, with a number of micro-steps that may grow."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, eager_kernels, layout, numerics, tree, tree_checks
from gradtx.core import (
    GradientTransformation,
    OptState,
    TransformLike,
    Updates,
    _update_with_extra_args,
)
from gradtx.wrappers.finite import ApplyIfFiniteState


class MultiStepsState(NamedTuple):
    """The state of ``multi_steps``.

    Attributes:
        mini_step: int32 scalar in [0, k), micro-steps accumulated since the last real
            step (0 right after one).
        gradient_step: int32 scalar, real (inner) steps taken so far, saturating at
            2**31 - 1.
        acc_grads: the running mean of this real step's micro-batch gradients (0 right
            after a real step), a tree like the params in ``accumulator_dtype`` (None:
            the parameter dtype promoted to at least float32).
        inner_state: the inner transform's state.

    ``exact_fields`` names the fields that ``quantized_state`` keeps unquantized
    (a mean of gradients: 8-bit rounding would move the params).
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    acc_grads: Updates
    inner_state: OptState

    exact_fields = ("acc_grads",)  # a mean of gradients: quantized_state keeps it


def multi_steps(
    inner: TransformLike,
    every_k: int | Any,
    *,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    r"""Accumulates ``k`` micro-batch gradients, then takes one step of ``inner`` on their mean.

    With n counting the micro-steps of the current real step from 1::

        a_n = a_{n-1} + (g_n - a_{n-1}) / n          (a_n = mean of g_1..g_n)
        if n == k(s):  u = inner(a_k);  a <- 0;  s <- s + 1
        else:          u = 0                          (the inner state is untouched)

    so ``multi_steps(tx, 4)`` over four micro-batches is one step of ``tx`` on the mean
    of their gradients: the step of a batch four times larger.

    ``every_k`` may be a schedule of s, **the number of real steps taken so far**
    (from 0): ``lambda s: 2 ** (s // 100)`` doubles the effective batch every 100
    real steps, instead of decaying the learning rate (Smith, Kindermans, Ying & Le,
    2018, "Don't Decay the Learning Rate, Increase the Batch Size"). The value read for
    a real step is ``k(s)`` with s fixed while its micro-batches accumulate; it must be
    an integer >= 1: an un-jitted update refuses another value (0, -1, 2.7) with a
    ValueError naming it; under ``jit``, where the value cannot be read, values below 1
    act as 1 and fractions are truncated.

    One accumulator is held: the running mean, in ``accumulator_dtype``. By default
    that is the parameter dtype promoted to at least float32 (float32 for bfloat16 and
    float16 parameters), because a running mean kept in bfloat16 loses the later
    micro-batches' contributions (bfloat16 has 8 significant bits). Pass
    ``accumulator_dtype=jnp.bfloat16`` to halve its memory. The mean is cast to the
    gradient dtype before the inner step. The inner step's updates are returned in the
    dtypes ``inner`` gives them (float32 updates of bfloat16 gradients stay float32, as
    in ``optax.MultiSteps``), and the zero updates between real steps take those dtypes.

    Use ``has_updated(state)`` to tell whether the last call took a real step (e.g. to
    log the loss or update an EMA only then).

    Args:
        inner: the transform to run once per real step.
        every_k: an int >= 1, or a schedule ``real steps taken -> k``.
        accumulator_dtype: dtype of the running mean; None as described above.

    State: ``MultiStepsState(mini_step, gradient_step, acc_grads, inner_state)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.multi_steps(gtx.scale(-1.0), every_k=2)
        >>> state = tx.init(jnp.zeros(1))
        >>> u1, state = tx.update(jnp.array([1.0]), state)
        >>> u2, state = tx.update(jnp.array([3.0]), state)
        >>> u1.tolist(), u2.tolist(), bool(gtx.has_updated(state))
        ([0.0], [-2.0], True)

    Reference: ``optax.MultiSteps`` (the same running mean and ``every_k_schedule`` of
    the real steps taken); Smith, Kindermans, Ying & Le, 2018, "Don't Decay the
    Learning Rate, Increase the Batch Size" (a growing ``every_k``).
    """
    scheduled = callable(every_k)
    if scheduled:
        check.schedule_arity("every_k", every_k)
    else:
        every_k = check.positive_int("every_k", every_k)
    check.dtype_or_none("accumulator_dtype", accumulator_dtype)
    inner_update = _update_with_extra_args(inner, "inner")
    # Un-jitted, the dtypes of the inner updates by input signature, for the zero updates
    # of micro-steps (found once with eval_shape, not traced at every micro-step).
    update_dtypes: dict[Any, Any] = {}

    def init(params):
        def accumulator(x):
            # tree.zeros_like keeps the leaf's sharding (also for abstract params), so the
            # accumulator is laid out like the gradients it averages from init on.
            dtype = accumulator_dtype or numerics.compute_dtype(numerics.leaf_dtype(x))
            return tree.zeros_like(x, dtype)

        tree_checks.check_inexact(params, "parameter")
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=jnp.zeros([], jnp.int32),
            acc_grads=jax.tree.map(accumulator, params),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra):
        check.state_of("multi_steps", state, MultiStepsState)
        k = every_k(state.gradient_step) if scheduled else every_k
        if scheduled and not isinstance(k, jax.core.Tracer):
            value = np.asarray(k)
            if (
                value.ndim
                or not np.isreal(value)
                or value != np.floor(value)
                or not 1 <= value <= numerics.INT32_MAX  # inf too: the counters are int32
            ):
                raise ValueError(
                    f"every_k's schedule must give an integer >= 1 (and at most "
                    f"{numerics.INT32_MAX}), got {k!r} at real "
                    f"step {int(state.gradient_step)}"
                )
        k = jnp.maximum(jnp.asarray(k).astype(jnp.int32), 1)
        n = numerics.scalar_counter(state.mini_step) + 1
        emit = n >= k

        def leaf(g, a):
            dtype = numerics.promote_types(a.dtype, numerics.compute_dtype(g.dtype))
            mean = a.astype(dtype) + (g.astype(dtype) - a.astype(dtype)) / n.astype(dtype)
            # the accumulator restarts from 0 after a real step (in the per-leaf code: an
            # eager update would otherwise make and select 2 arrays per leaf)
            return mean.astype(g.dtype), jnp.where(emit, 0, mean).astype(a.dtype)

        mean, acc_grads = tree.map_unzip(leaf, updates, state.acc_grads, outputs=2)

        def real_step(mean, inner_state, params):
            return inner_update(mean, inner_state, params, **extra)

        args = (mean, state.inner_state, params)

        def zero_updates(inner_updates):
            # zeros in the dtypes of the inner step's updates (as optax.MultiSteps), which
            # may differ from the gradients' (float32 updates of bfloat16 gradients)
            return tree.zeros_like_in_dtypes_of(updates, inner_updates)

        if isinstance(emit, jax.core.Tracer):
            # lax.cond runs the inner transform only on real steps (the predicate is a
            # scalar that is never batched here); its state is cast back so both
            # branches agree. Jitted, the eval_shape and the branch share one trace of
            # the inner update (JAX's trace cache), not two.
            traced_once = tree.trace_once(real_step, *args)
            inner_updates = jax.eval_shape(traced_once)[0]
            new_updates, inner_state = layout.cond(
                emit,
                lambda: _cast_state_like(traced_once(), state.inner_state),
                lambda: (zero_updates(inner_updates), state.inner_state),
            )
        elif bool(emit):  # un-jitted: a Python branch; lax.cond would retrace both
            # branches at every call (~140 ms an update on 10 leaves) and bypass the
            # inner transform's eager kernels
            new_updates, inner_state = _cast_state_like(real_step(*args), state.inner_state)
            update_dtypes[_signature(updates, params)] = jax.tree.map(_dtype, new_updates)
        else:
            key = _signature(updates, params)
            if key not in update_dtypes:
                if len(update_dtypes) >= 16:  # a few signatures per transform, not a leak
                    update_dtypes.clear()
                try:
                    update_dtypes[key] = jax.eval_shape(real_step, *args)[0]
                except eager_kernels.NEEDS_CONCRETE_VALUES:
                    # an inner transform that reads values in Python runs un-jitted
                    # only: until its first real step, zeros of the gradients' dtypes
                    update_dtypes[key] = jax.tree.map(_dtype, updates)
            new_updates, inner_state = zero_updates(update_dtypes[key]), state.inner_state
        return new_updates, MultiStepsState(
            mini_step=jnp.where(emit, 0, n).astype(jnp.int32),
            gradient_step=jnp.where(
                emit, numerics.safe_increment(state.gradient_step), state.gradient_step
            ),
            acc_grads=acc_grads,
            inner_state=inner_state,
        )

    return GradientTransformation(init, update)


def _cast_state_like(result, inner_state):
    new_updates, new_state = result
    return new_updates, tree.cast_like(new_state, inner_state)


def _dtype(x: Any) -> Any:
    """The dtype of an array, a ``ShapeDtypeStruct``, a dtype or a Python number."""
    dtype = getattr(x, "dtype", None)
    return jnp.result_type(x) if dtype is None else dtype


def _signature(updates: Any, params: Any) -> Any:
    """The structure, shapes and dtypes of an update's inputs (a dict key)."""
    leaves, treedef = jax.tree.flatten((updates, params))
    return treedef, tuple((jnp.shape(x), _dtype(x)) for x in leaves)


def has_updated(state: Any) -> jax.Array:
    """True when the last ``multi_steps`` update took a real (inner) step.

    That is ``mini_step == 0 and gradient_step > 0``: False after ``init``. Inside
    ``apply_if_finite`` it is also False after a step that ``apply_if_finite`` skipped
    (non-finite gradients): ``multi_steps`` did not run, and its state still says what
    the step before did. A real step of ``multi_steps(apply_if_finite(tx), k)`` whose
    mean was skipped by the inner ``apply_if_finite`` is a real step (the accumulator
    restarted; ``tx``'s state did not move). An Optax ``apply_if_finite`` around it is
    not seen (its state does not say whether it applied the last step). An
    ``optax.MultiSteps`` state is read alike (its ``has_updated`` is the same test).

    Args:
        state: the ``MultiStepsState`` (gradtx's or Optax's), or any state holding
            exactly one (a chain, a partition, ``apply_if_finite`` around it,
            ``nnx.Optimizer``'s ``opt_state``); none or several is a TypeError.

    Returns:
        A bool scalar array (traceable under ``jit``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.multi_steps(gtx.scale(-1.0), every_k=2)
        >>> _, state = tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))
        >>> bool(gtx.has_updated(state))
        False

    Reference: ``optax.MultiSteps.has_updated`` (same test).
    """
    found = _multi_steps_states(state, ())
    if len(found) != 1:
        raise TypeError(
            f"has_updated expects the state of multi_steps or optax.MultiSteps, or a state "
            f"holding one, got {type(state).__module__}.{type(state).__name__} holding "
            f"{len(found)}" + ("; pass the one you mean" if found else "")
        )
    state, guards = found[0]
    # jnp.asarray: nnx.Optimizer keeps the counters in its OptArray variables
    updated = (jnp.asarray(state.mini_step) == 0) & (jnp.asarray(state.gradient_step) > 0)
    for guard in guards:
        # apply_if_finite restarts its count when it applies a step, and counts a skip
        updated = updated & (jnp.asarray(guard.notfinite_count) == 0)
    return updated


def _multi_steps_states(state: Any, guards: tuple) -> list[tuple[MultiStepsState, tuple]]:
    """Each ``MultiStepsState`` in ``state`` (not those inside one), with the states of
    the ``apply_if_finite`` around it: a step one of those skipped left it as it was."""
    if _is_multi_steps_state(state):
        return [(state, guards)]
    is_node = lambda x: _is_multi_steps_state(x) or isinstance(x, ApplyIfFiniteState)  # noqa: E731
    found = []
    for node in jax.tree.leaves(state, is_leaf=is_node):
        if isinstance(node, ApplyIfFiniteState):
            found.extend(_multi_steps_states(node.inner_state, (*guards, node)))
        elif _is_multi_steps_state(node):
            found.append((node, guards))
    return found


def _is_multi_steps_state(node: Any) -> bool:
    """gradtx's ``MultiStepsState`` or Optax's (``optax.MultiSteps``: the same
    ``mini_step`` and ``gradient_step`` counters)."""
    kind = type(node)
    return isinstance(node, MultiStepsState) or (
        kind.__name__ == "MultiStepsState" and kind.__module__.startswith("optax.")
    )
