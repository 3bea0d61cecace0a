"""Regularizers: weight decay (L2 or decoupled, by chain position), L1 (subgradient and
proximal) and max-norm constraints. Annealed gradient noise is in ``noise``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, folds, numerics, tree
from gradtx.core import EmptyState, GradientTransformation, Params, ScalarOrSchedule
from gradtx.masks import check_mask, resolve_mask

# add_noise's state was a class of this module until it had one of its own: states
# pickled then name it here (docs/protocol.md: a state pickles).
from gradtx.transforms.noise import AddNoiseState  # noqa: F401


class AddDecayedWeightsState(NamedTuple):
    """The state of ``add_decayed_weights`` with a scheduled ``weight_decay`` (a constant
    one keeps ``EmptyState``).

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (the schedule reads it).
    """

    count: jax.Array


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    r"""Adds ``weight_decay * params`` to the updates: ``u <- u + wd * p``.

    Where it sits in a chain is the algorithm:

    - **before** the preconditioner (``chain(add_decayed_weights(wd), scale_by_adam(),
      scale_by_learning_rate(lr))``) it is L2 regularization: the decay term is added
      to the gradient and then rescaled by Adam (PyTorch's ``Adam(weight_decay=...)``);
    - **after** it (``chain(scale_by_adam(), add_decayed_weights(wd),
      scale_by_learning_rate(lr))``) it is decoupled weight decay, AdamW
      (Loshchilov & Hutter, 2019): every weight shrinks by ``lr * wd * p`` per step.

    Args:
        weight_decay: a non-negative number or a schedule ``step -> value`` (e.g. the
            decay rate halved at given steps).
        mask: None (decay every leaf), a tree of bools like the params, or a function
            ``params -> tree of bools``; leaves whose mask is False pass unchanged. A
            callable tree of bools (mapped from an Equinox module) is a tree, as in
            ``masked``.

    The state holds a step count when ``weight_decay`` is a schedule, else nothing. The
    sum is computed in at least float32 and rounded once to the updates' dtype, jitted
    or not (added in bfloat16, as Optax adds, it was rounded at each operation op by op
    but not under ``jit``, where XLA:CPU kept float32 into the next block's float32
    arithmetic).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.add_decayed_weights(0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> tx.update(jnp.zeros(2), tx.init(params), params)[0].tolist()
        [0.10000000149011612, -0.20000000298023224]

    Reference: Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization".
    """
    scheduled = callable(weight_decay)
    if scheduled:
        check.schedule_arity("weight_decay", weight_decay)
    else:
        check.non_negative("weight_decay", weight_decay)
    check_mask(mask)

    def init(params):
        del params
        if scheduled:
            return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError(
                "add_decayed_weights needs the parameters: call update(updates, state, params)"
            )
        if scheduled:
            check.state_of("add_decayed_weights", state, AddDecayedWeightsState)
        leaf, masks = decayed_leaf(updates, state, params)
        (decayed,) = tree.map_unzip(
            leaf, updates, params, *masks, outputs=1, names=("the params",), updates_first=True
        )
        return decayed, next_state(state)

    def decayed_leaf(updates, state, params):
        decay = weight_decay(state.count) if scheduled else weight_decay
        if scheduled:  # a concrete value (an un-jitted update) is checked, as in the optimizers
            check.non_negative("weight_decay", decay)

        def leaf(u, p, keep=True):
            if not keep:
                return u
            # in at least float32, rounded once to the update's dtype: bfloat16 arithmetic
            # was rounded at each operation eagerly but not under jit, where XLA:CPU keeps
            # float32 between them (7-47% of a bfloat16 AdamW's updates apart by step 5)
            dtype = numerics.compute_dtype(numerics.result_type(u, p))
            # promoted one operation at a time, explicitly (strict promotion refuses a
            # float32 decay times complex64 params), as implicit promotion would
            rate, p_ = numerics.promote(numerics.hyperparameter(decay, dtype), p.astype(dtype))
            u_, decayed = numerics.promote(u.astype(dtype), rate * p_)
            return (u_ + decayed).astype(u.dtype)

        # Without a mask no tree of True flags is built: an eager update would flatten it
        # and carry a flag per leaf (the same numbers: every leaf is kept)
        masks = () if mask is None else (resolve_mask(mask, params, updates),)
        return leaf, masks

    def next_state(state):
        return AddDecayedWeightsState(numerics.safe_increment(state.count)) if scheduled else state

    def leaf_fold(updates, state, params, extra, values):
        # an eager chain's request (tree.FOLD_EAGER_SCALING): the mask reads the updates'
        # structure only; other states and missing params go through update
        if params is None or (
            scheduled
            and not (
                isinstance(state, AddDecayedWeightsState) and folds.concrete_counter(state.count)
            )
        ):
            return None
        try:
            leaf, masks = decayed_leaf(updates, state, params)
        except Exception:  # a mask or schedule that fails: update says so, in its turn
            return None
        return tree.LeafFold(leaf, (params, *masks), ("the params",), next_state(state))

    return GradientTransformation(
        init,
        tree.elementwise(
            tree.updates_from_first_map(update, returns_product=False, takes_sum_before=True),
            leaf_fold,
            returns_product=False,
        ),
    )


def _require_params(name: str, params: Params | None) -> None:
    if params is None:
        raise ValueError(f"{name} needs the parameters: call update(updates, state, params)")


class ProximalL1State(NamedTuple):
    """The state of ``proximal_l1`` with a scheduled ``strength`` (a constant one keeps
    ``EmptyState``).

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (the schedule reads it).
    """

    count: jax.Array


def add_l1(strength: float = 0.0, mask: Any = None) -> GradientTransformation:
    r"""Adds the L1 subgradient to the updates: ``u <- u + strength * sign(p)``.

    The subgradient of ``strength * sum |p|`` (0 at p = 0). Placed before the learning
    rate (and before a preconditioner, like L2 in ``add_decayed_weights``), it makes a
    step push every weight towards zero by ``lr * strength``; weights then oscillate
    around zero instead of reaching it. For exact zeros use ``proximal_l1``.

    Args:
        strength: the L1 coefficient, >= 0.
        mask: as in ``add_decayed_weights``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.add_l1(0.5)
        >>> params = jnp.array([2.0, 0.0, -3.0])
        >>> tx.update(jnp.zeros(3), tx.init(params), params)[0].tolist()
        [0.5, 0.0, -0.5]

    Reference: Tibshirani, 1996, "Regression Shrinkage and Selection via the Lasso".
    """
    check.non_negative("strength", strength)
    check_mask(mask)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del extra
        _require_params("add_l1", params)

        def leaf(u, p, keep):
            if not keep:
                return u
            dtype = numerics.compute_dtype(u.dtype)
            step = u.astype(dtype) + numerics.factor(strength, dtype) * jnp.sign(p.astype(dtype))
            return step.astype(u.dtype)

        mask_tree = resolve_mask(mask, params, updates)
        (new_updates,) = tree.map_unzip(
            leaf, updates, params, mask_tree, outputs=1, names=("the params",)
        )
        return new_updates, state

    return GradientTransformation(init, update)


def proximal_l1(strength: ScalarOrSchedule = 0.0, mask: Any = None) -> GradientTransformation:
    r"""Soft-thresholds the parameters after the step, so that weights reach exact zeros.

    With q = p + u the parameters the step would give::

        q' = sign(q) * max(|q| - strength, 0)          (the proximal map of strength*|.|_1)
        u <- q' - p

    so ``apply_updates(params, updates)`` is ``q'``, with exact zeros wherever
    ``|q| <= strength``. This is the proximal gradient step (ISTA) for the loss plus
    ``l1 * sum |p|``: the threshold is **learning rate times the L1 coefficient**,
    ``strength = lr * l1``. It needs the params and must come **last** in the chain,
    after the learning rate, because it maps parameters, not gradients::

        chain(scale_by_adam(), scale_by_learning_rate(lr), proximal_l1(lr * l1))

    (with a learning-rate schedule, pass ``strength`` as the same schedule times l1).
    After a preconditioner such as Adam the threshold is still the same for every
    coordinate: it gives exact zeros, but it is not the proximal step in Adam's metric,
    whose threshold would be ``lr * l1 / (sqrt(v_hat) + eps)`` per coordinate.

    Args:
        strength: the threshold in parameter units, >= 0, or a schedule of the update
            count (from 0).
        mask: as in ``add_decayed_weights``.

    State: a step count when ``strength`` is a schedule, else nothing.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.chain(gtx.scale(-0.1), gtx.proximal_l1(0.05))
        >>> params = jnp.array([0.5, 0.02, -0.5])
        >>> updates, _ = tx.update(jnp.array([1.0, 0.0, 0.0]), tx.init(params), params)
        >>> [round(x, 4) for x in gtx.apply_updates(params, updates).tolist()]
        [0.35, 0.0, -0.45]

    Reference: Beck & Teboulle, 2009, "A Fast Iterative Shrinkage-Thresholding
    Algorithm for Linear Inverse Problems" (ISTA, the proximal gradient step).
    """
    scheduled = callable(strength)
    if scheduled:
        check.schedule_arity("strength", strength)
    else:
        check.non_negative("strength", strength)
    check_mask(mask)

    def init(params):
        del params
        if scheduled:
            return ProximalL1State(count=jnp.zeros([], jnp.int32))
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del extra
        _require_params("proximal_l1", params)
        if scheduled:  # a constant strength keeps EmptyState and reads nothing from it
            check.state_of("proximal_l1", state, ProximalL1State)
        threshold = strength(state.count) if scheduled else strength
        if scheduled:  # a concrete value (an un-jitted update) is checked, as in the optimizers
            check.non_negative("strength", threshold)

        def leaf(u, p, keep):
            if not keep:
                return u
            dtype = numerics.compute_dtype(numerics.result_type(u, p))
            q = p.astype(dtype) + u.astype(dtype)
            magnitude = jnp.maximum(jnp.abs(q) - numerics.hyperparameter(threshold, dtype), 0)
            shrunk = jnp.sign(q) * magnitude.astype(dtype)
            return (shrunk - p.astype(dtype)).astype(u.dtype)

        mask_tree = resolve_mask(mask, params, updates)
        (new_updates,) = tree.map_unzip(
            leaf, updates, params, mask_tree, outputs=1, names=("the params",)
        )
        new_state = ProximalL1State(numerics.safe_increment(state.count)) if scheduled else state
        return new_updates, new_state

    return GradientTransformation(init, update)


def _norm_axes(axis: Any) -> tuple[int, ...]:
    """``max_norm``'s ``axis`` as a non-empty tuple of ints, each named once."""
    if isinstance(axis, int | np.integer) and not isinstance(axis, bool | np.bool_):
        return (int(axis),)
    try:
        axes = tuple(axis)
    except TypeError:
        axes = None
    if not axes or any(
        isinstance(a, bool | np.bool_) or not isinstance(a, int | np.integer) for a in axes
    ):
        raise ValueError(f"axis must be an int or a non-empty tuple of ints, got {axis!r}")
    if len(set(axes)) < len(axes):
        raise ValueError(f"axis must name each axis once, got {axis!r}")
    return tuple(int(a) for a in axes)


def max_norm(
    max_value: float = 2.0, axis: int | tuple[int, ...] = 0, mask: Any = None
) -> GradientTransformation:
    r"""Projects each unit's incoming weights back into the ball of radius ``max_value``.

    With q = p + u the parameters the step would give and the norm taken over ``axis``
    (for a Flax or Keras Dense kernel of shape ``(inputs, units)``, ``axis=0`` is each
    unit's incoming weight vector; for their convolution kernels, ``(height, width,
    in_channels, out_channels)``, it is ``axis=(0, 1, 2)``, as in Keras' ``MaxNorm``:
    the default ``axis=0`` would bound norms along the kernel's height alone; for PyTorch's
    ``(out_features, in_features)`` layout it is ``axis=1``)::

        n = ||q||_2 over axis
        q' = q * min(1, max_value / n)
        u <- q' - p

    so after every step each unit's norm is at most ``max_value`` (Srivastava et al.,
    2014, sec. 5.1, used with dropout). Like ``proximal_l1`` it maps parameters: it
    needs the params and comes **last** in the chain, after the learning rate. Keras'
    ``MaxNorm`` constraint does the same after ``optimizer.apply``, scaling by
    ``max_value / (1e-7 + n)``; here no epsilon is added, so norms are at most
    ``max_value`` (to rounding) rather than slightly below it. Mask out biases and
    scales (``mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)``).

    Args:
        max_value: the largest norm allowed, > 0 (the default 2 is Keras' ``MaxNorm``'s;
            the paper reports typical values from 3 to 4).
        axis: the axis or axes the norm runs over (each leaf must have them).
        mask: as in ``add_decayed_weights``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.max_norm(1.0, axis=0)
        >>> params = jnp.array([[3.0, 0.5], [4.0, 0.0]])
        >>> updates, _ = tx.update(jnp.zeros((2, 2)), tx.init(params), params)
        >>> [[round(x, 5) for x in row] for row in gtx.apply_updates(params, updates).tolist()]
        [[0.6, 0.5], [0.8, 0.0]]

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov, 2014,
    "Dropout: A Simple Way to Prevent Neural Networks from Overfitting".
    """
    check.positive("max_value", max_value, allow_inf=True)  # inf: no constraint
    axes = _norm_axes(axis)
    check_mask(mask)

    def init(params):
        del params
        return EmptyState()

    def check_axes(params, mask_tree):
        flat_mask = jax.tree.leaves(mask_tree)
        for (path, p), keep in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], flat_mask, strict=False
        ):
            ndim = jnp.ndim(p)
            where = jax.tree_util.keystr(path) or "the root"
            if keep and any(not -ndim <= a < ndim for a in axes):
                raise ValueError(
                    f"max_norm: the parameter at {where} has {ndim} dimensions, so it has "
                    f"no axis {axis!r}; mask it out"
                )
            if keep and len({a % ndim for a in axes}) < len(axes):
                raise ValueError(
                    f"max_norm: axis={axis!r} names one axis twice for the parameter at "
                    f"{where} ({ndim} dimensions)"
                )

    def update(updates, state, params=None, **extra):
        del extra
        _require_params("max_norm", params)
        mask_tree = resolve_mask(mask, params, updates)
        check_axes(params, mask_tree)

        def leaf(u, p, keep):
            if not keep:
                return u
            dtype = numerics.compute_dtype(numerics.result_type(u, p))
            q = p.astype(dtype) + u.astype(dtype)
            norm = jnp.sqrt(jnp.sum(numerics.abs_sq(q), axis=axes, keepdims=True))
            bound = numerics.hyperparameter(max_value, norm.dtype)
            factor = jnp.where(norm > bound, bound / jnp.where(norm > 0, norm, 1), 1)
            return (q * factor.astype(dtype) - p.astype(dtype)).astype(u.dtype)

        (new_updates,) = tree.map_unzip(
            leaf, updates, params, mask_tree, outputs=1, names=("the params",)
        )
        return new_updates, state

    return GradientTransformation(init, update)
