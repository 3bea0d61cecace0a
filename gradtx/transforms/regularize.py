"""Regularizers: weight decay (L2 or decoupled, by chain position), L1 (subgradient and
proximal), max-norm constraints and annealed gradient noise."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, folds, numerics, tree, tree_checks
from gradtx.core import EmptyState, GradientTransformation, Params, ScalarOrSchedule
from gradtx.masks import check_mask, resolve_mask


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


class AddNoiseState(NamedTuple):
    """The state of ``add_noise``.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (t in the variance).
        rng_key: uint32 array of shape [2] (shape [4] under ``jax_default_prng_impl``
            ``"rbg"`` or ``"unsafe_rbg"``), the raw PRNG key of the next draw, initially
            ``jax.random.PRNGKey(seed)``.
    """

    count: jax.Array
    rng_key: jax.Array


def _standard_normal(g: Any, key: jax.Array) -> jax.Array:
    """Standard normal noise shaped like ``g``, in its compute dtype, drawn with ``key``."""
    return jax.random.normal(key, jnp.shape(g), numerics.compute_dtype(jnp.result_type(g)))


def _raw_key(key: Any) -> Any:
    """``add_noise``'s ``key`` as the state keeps it: a seed (an int, or a traced 0-d
    integer as it is) for an integer, else the raw uint32 key of the default PRNG
    implementation (a NumPy copy of a concrete one, a traced one as it is)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        # the state keeps the raw data, which jax.random reads as a key of the default
        # implementation: a key of another one would silently draw another stream
        impl = str(jax.random.key_impl(key))
        default = str(jax.random.key_impl(jax.random.PRNGKey(0)))  # jax_default_prng_impl
        if impl != default:
            raise ValueError(
                f"key must be a key of the default PRNG implementation ({default!r}, "
                f"jax.random.key(seed)), got a {impl!r} key"
            )
        if key.shape != ():
            raise ValueError(f"key must be one typed key (shape ()), got shape {key.shape}")
        key = jax.random.key_data(key)
    elif not isinstance(key, np.ndarray | jax.Array | jax.core.Tracer) or key.ndim == 0:
        try:
            check.seed("key", key)
        except ValueError as error:
            raise ValueError(
                f"{error} (or a PRNG key: jax.random.key(seed), jax.random.PRNGKey(seed))"
            ) from None
        return key if isinstance(key, jax.core.Tracer) else int(key)
    raw = jax.eval_shape(jax.random.PRNGKey, 0)
    if key.shape != raw.shape or key.dtype != raw.dtype:
        raise ValueError(
            f"key must be a seed (a non-negative integer), a typed key (jax.random.key) or "
            f"a raw key (jax.random.PRNGKey: {raw.dtype.name}{list(raw.shape)}), got an "
            f"array of shape {key.shape} and dtype {key.dtype}"
        )
    return key if isinstance(key, jax.core.Tracer) else np.asarray(key)


def add_noise(
    eta: float = 0.01, gamma: float = 0.55, seed: int = 0, *, key: jax.Array | int | None = None
) -> GradientTransformation:
    r"""Adds annealed Gaussian noise to the updates (Neelakantan et al., 2015).

    With t counting updates from 0::

        u <- u + N(0, sigma_t^2),   sigma_t^2 = eta / (1 + t)^gamma

    The paper uses eta in {0.01, 0.3, 1.0} and gamma = 0.55, with the noise added to the
    gradient (place it first in the chain). The PRNG key lives in the state, so a run is
    reproducible from ``seed`` (or ``key``) and resumes exactly from a checkpoint. For complex
    updates the noise is complex with the same total variance. Optax's ``add_noise`` is
    the same map (its key stream differs). The noise depends only on the state (key and
    count) and the leaves' shapes: data-parallel replicas of one state (``pmap``,
    ``shard_map``, a sharded ``jit``) add the same noise, and so do ``vmap``ped copies
    that share a state; give copies their own keys for independent noise
    (``gtx.tree_set(states, rng_key=jax.random.split(key, n))``). A step that
    ``apply_if_finite`` skips keeps the key, as in Optax.

    Args:
        eta: the initial variance, >= 0.
        gamma: the annealing exponent, >= 0.
        seed: the seed of the PRNG key, an integer in [0, 2**32 - 1] (a JAX key keeps
            32 bits of it): a Python or NumPy int, a concrete 0-d integer array (from
            ``np.random.randint`` or ``jax.random.randint``; read once, here), or a
            traced one (``jax.vmap(lambda seed:
            gtx.add_noise(seed=seed).init(params))(jnp.arange(n))``: one key per
            member, as ``jax.random.PRNGKey`` gives them); another value (a bool, a
            float, an array of another shape or dtype) is a ValueError.
        key: the PRNG key instead of its seed (Optax's ``key``; keyword-only here): a
            typed key (``jax.random.key(s)``) of the default implementation (threefry
            unless ``jax_default_prng_impl`` says otherwise), a raw one
            (``jax.random.PRNGKey(s)``, uint32 of shape [2]) or an integer, read as
            ``seed``: all three give the noise of ``seed=s``. The state keeps the raw
            key (``jax.random.key_data`` of a typed one). A traced key is taken too
            (``jax.vmap(lambda k: gtx.add_noise(key=k).init(params))(
            jax.random.split(key, n))``: a key per member). A key with a seed other
            than 0 is a ValueError naming both, and so is another value (a float, an
            array of another shape or dtype, a key of another implementation).

    State: ``AddNoiseState(count, rng_key)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.add_noise(eta=0.01, gamma=0.55, seed=0)
        >>> state = tx.init(jnp.zeros(10_000))
        >>> u, state = tx.update(jnp.ones(10_000), state)  # sigma_0 = sqrt(0.01)
        >>> round(float(jnp.std(u - 1.0)), 2)
        0.1
        >>> u, state = tx.update(jnp.ones(10_000), state)  # sqrt(0.01 / 2**0.55)
        >>> round(float(jnp.std(u - 1.0)), 2)
        0.08

    Reference: Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, 2015,
    "Adding Gradient Noise Improves Learning for Very Deep Networks".
    """
    check.non_negative("eta", eta)
    check.non_negative("gamma", gamma)
    try:
        check.seed("seed", seed)
    except ValueError as error:
        dtype = getattr(seed, "dtype", None)
        if getattr(seed, "ndim", 0) or (dtype and jnp.issubdtype(dtype, jax.dtypes.prng_key)):
            raise ValueError(f"{error}; a PRNG key goes to key= (Optax's third argument)") from None
        raise
    if not isinstance(seed, jax.core.Tracer):
        seed = int(seed)  # a Python int in the closure, not an array (a 0-d array seed)
    if key is not None:
        if isinstance(seed, jax.core.Tracer) or seed != 0:
            raise ValueError(
                f"give the PRNG key as key= or its seed as seed=, not both: got seed={seed!r} "
                f"and key={key!r}"
            )
        seed = _raw_key(key)  # a seed again (an integer key) or a raw key
    from_seed = not getattr(seed, "ndim", 0)

    def init(params):
        del params
        rng_key = jax.random.PRNGKey(seed) if from_seed else jnp.asarray(seed)
        return AddNoiseState(count=jnp.zeros([], jnp.int32), rng_key=rng_key)

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("add_noise", state, AddNoiseState)
        flat, treedef = jax.tree.flatten(updates, is_leaf=tree._is_none)
        present = [leaf is not None for leaf in flat]
        keys = jax.random.split(state.rng_key, sum(present) + 1)
        # a key per leaf in one operation (iterating over keys[1:] took ~50 on 1,000)
        leaf_keys = iter(jnp.unstack(keys[1:]) if len(keys) > 1 else [])
        flat_keys = [next(leaf_keys) if p else None for p in present]
        # a local: the eager kernels take the closure's arrays (an array for a Python
        # int too, as under jit)
        count = numerics.scalar_counter(state.count)

        def leaf(g, key):
            # drawn and added in one per-leaf function, one pass of the eager kernels
            # over the leaves (drawing in one pass and adding in another took two)
            g = jnp.asarray(g)
            z = _standard_normal(g, key)
            dtype = z.dtype
            real = numerics.real_dtype(dtype)
            variance = numerics.hyperparameter(eta, real) / (
                1 + count.astype(real)
            ) ** numerics.hyperparameter(gamma, real)
            return (g.astype(dtype) + jnp.sqrt(variance).astype(dtype) * z).astype(g.dtype)

        def check_updates(arg_tuples, indices):
            # floating or complex updates (the keys are no leaves of the updates' shape)
            tree_checks.check_leaves(updates, [args[:1] for args in arg_tuples], indices)

        if isinstance(keys, jax.core.Tracer):  # as in map_unzip: traced once per shape
            leaf = tree._traced_once_per_signature(leaf)  # (1,000 leaves: 1.0 s, now 0.2)
        noisy = treedef.unflatten(
            tree.map_leaves_flat(leaf, [flat, flat_keys], check=check_updates)
        )
        return noisy, AddNoiseState(numerics.safe_increment(state.count), keys[0])

    return GradientTransformation(init, update)
