"""Clipping: bound each update element, or the global norm of all updates together."""

from __future__ import annotations

import jax.numpy as jnp

from gradtx import check, norms, numerics, tree, tree_checks
from gradtx.core import EmptyState, GradientTransformation


def _no_state(params):
    del params
    return EmptyState()


class _ComplexUpdate(Exception):
    """Raised inside ``clip``'s map by a complex leaf, for its update to name it."""


def clip(max_delta: float) -> GradientTransformation:
    """Clips every element of the updates to ``[-max_delta, max_delta]``.

    ::

        u <- min(max(u, -max_delta), max_delta)     (per element, in the leaf dtype)

    Args:
        max_delta: the bound, >= 0 (inf: no clipping).

    Complex updates are refused with a TypeError naming the leaf: complex numbers have
    no order (``jnp.clip``, ``torch.clamp`` and Keras' ``clipvalue`` refuse them too);
    ``clip_by_global_norm`` scales them instead.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.clip(1.0)
        >>> tx.update(jnp.array([3.0, -0.5, -2.0]), tx.init(jnp.zeros(3)))[0].tolist()
        [1.0, -0.5, -1.0]

    Reference: ``optax.clip`` (same map).
    """
    check.non_negative("max_delta", max_delta, allow_inf=True)  # inf: no clipping

    def update(updates, state, params=None, **extra):
        del params, extra

        def leaf(u):
            if jnp.iscomplexobj(u):  # read where the kernel is traced: free once compiled
                raise _ComplexUpdate
            bound = numerics.hyperparameter(max_delta, u.dtype)
            return jnp.clip(u, -bound, bound).astype(u.dtype)

        try:
            (clipped,) = tree.map_unzip(leaf, updates, outputs=1)
        except _ComplexUpdate:
            clipped = None
        if clipped is None:  # the walk that names the leaf only where one is complex (a
            # pass of its own over 1,000 leaves: 0.46 ms, ~10% of an eager clip)
            tree_checks.check_real(
                updates,
                "update",
                "clip",
                "complex numbers have no order: clip_by_global_norm scales them instead",
            )
        return clipped, state

    return GradientTransformation(_no_state, update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    r"""Rescales the updates so that their global l2 norm is at most ``max_norm``.

    ::

        n = sqrt(sum over leaves of sum |u|^2)     (accumulated in float32)
        u <- u                       if n <= max_norm
        u <- u * (1 / (n / max_norm)) otherwise

    that is ``u <- u * min(1, max_norm / n)`` with no eps, computed as one scalar
    factor ``1 / max(1, n / max_norm)`` (exactly 1 at or below the bound; the products
    in at least float32, cast back to the leaf dtype); the norm is summed in the leaves'
    order and in float64 for float64 leaves. The map of ``optax.clip_by_global_norm``,
    which computes ``u / n * max_norm``: a clipped update is within an ulp of Optax's,
    and the step holds no parameter-sized temporary for it (XLA repeats a product with
    a scalar in each loop that reads the clipped updates, not a division: Optax's
    ``chain(clip_by_global_norm, adamw)`` holds one, docs/performance.md). Zero updates
    give zero updates without a 0 / 0. PyTorch's ``clip_grad_norm_`` scales by
    ``min(1, max_norm / (n + 1e-6))``, ``1e-6 / n`` relative apart whenever it clips:
    ``gradtx.compat.torch.clip_grad_norm`` reproduces it.
    The norm couples the leaves: a NaN in any of them makes every update NaN, and an
    inf makes every other update 0 (as in Optax); ``apply_if_finite`` skips such steps.

    Args:
        max_norm: the largest global norm allowed, > 0 (inf: no clipping).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.clip_by_global_norm(1.0)
        >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
        >>> [round(float(x[0]), 6) for x in (u["a"], u["b"])]
        [0.6, 0.8]

    Reference: Pascanu, Mikolov & Bengio, 2013, "On the difficulty of training
    recurrent neural networks"; ``optax.clip_by_global_norm`` (same map).
    """
    check.positive("max_norm", max_norm, allow_inf=True)  # inf: no clipping

    def clipped_leaf(updates):
        norm = norms.global_norm(updates)
        # One scalar factor, 1 exactly at or below the bound (n / c <= 1) and 1 / inf = 0
        # for an infinite norm, NaN for a NaN one; no 0 / 0 for zero updates. A product
        # with a scalar is cheap enough for XLA to repeat in each loop that reads the
        # clipped updates (Optax's u / n * c is a division: a buffer of its own)
        ratio = norm / numerics.hyperparameter(max_norm, norm.dtype)
        scale = 1 / jnp.maximum(ratio, 1)

        def leaf(u):
            dtype = numerics.compute_dtype(u.dtype)
            return (u.astype(dtype) * numerics.factor(scale, dtype)).astype(u.dtype)

        return leaf

    def update(updates, state, params=None, **extra):
        del params, extra
        (clipped,) = tree.map_unzip(clipped_leaf(updates), updates, outputs=1)
        return clipped, state

    def leaf_fold(updates, state, params, extra, values):
        # an eager chain may run the product inside the kernels of the block after it
        # (Adam's: tree.FOLD_EAGER_SCALING), the norm taken here from the updates
        del params, extra
        return tree.LeafFold(clipped_leaf(updates), state=state) if values else None

    return GradientTransformation(
        _no_state, tree.elementwise(update, leaf_fold, value_scaling=True)
    )
