"""Annealed Gaussian gradient noise (Neelakantan et al., 2015), its PRNG key in the state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, numerics, tree, tree_checks
from gradtx.core import GradientTransformation


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
