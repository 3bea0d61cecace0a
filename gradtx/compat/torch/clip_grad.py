"""PyTorch's ``clip_grad_norm_`` as a transform (``torch.nn.utils.clip_grad``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradtx import check, numerics, tree, tree_checks
from gradtx.compat.torch.chains import check_flags
from gradtx.core import EmptyState, GradientTransformation


def _norm_as_pytorch(x: jax.Array, order: float, axis: tuple[int, ...] | None = None) -> jax.Array:
    """``torch.linalg.vector_norm(x, order)``: accumulated in at least float32, returned in
    the real dtype of ``x``."""
    norm = jnp.linalg.vector_norm(x.astype(numerics.compute_dtype(x.dtype)), ord=order, axis=axis)
    return norm.astype(numerics.real_dtype(x.dtype))


def clip_grad_norm(
    max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> GradientTransformation:
    r"""``torch.nn.utils.clip_grad_norm_`` as a transform, first in the chain.

    ::

        n = || (||g_1||_p, ..., ||g_k||_p) ||_p          (the leaves' norms, then theirs)
        g <- g * min(1, max_norm / (n + 1e-6))

    PyTorch's eps of 1e-6 makes it differ from ``gtx.clip_by_global_norm`` (``max_norm /
    n`` when ``n >= max_norm``) by ``1e-6 / n`` relative whenever it clips, and it scales
    slightly below ``max_norm / n`` just under the threshold: 2e-7 at ``n = 5``, 2e-2 at
    ``n = 5e-5``. Use it where a PyTorch recipe calls ``clip_grad_norm_`` before
    ``optimizer.step()``: ``gtx.chain(tc.clip_grad_norm(1.0), tc.adamw(...))``.
    ``clip_grad_value_(parameters, v)`` is ``gtx.clip(v)``. As in PyTorch, each norm is
    accumulated in at least float32 and rounded to its input's dtype (a float16 norm
    past 65504 is inf, and every update 0; a float16 gradient of 300 is clipped), and
    the coefficient is rounded as PyTorch's ``max_norm / (n + 1e-6)``, which is
    ``(n + 1e-6).reciprocal() * max_norm``.

    Args:
        max_norm: the largest norm, >= 0.
        norm_type: p of the p-norm, a number or ``float('inf')``, as in PyTorch.
        error_if_nonfinite: PyTorch raises when the norm is NaN or infinite; a jitted step
            cannot, so True is a ValueError (``gtx.apply_if_finite`` skips such steps).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> tx = tc.clip_grad_norm(1.0)
        >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
        >>> [round(float(x[0]), 6) for x in (u["a"], u["b"])]  # 3 and 4 times 1 / 5.000001
        [0.6, 0.8]

    Reference: PyTorch's ``torch.nn.utils.clip_grad_norm_``.
    """
    check.non_negative("max_norm", max_norm, allow_inf=True)
    check.number("norm_type", norm_type, allow_inf=True)
    check_flags(error_if_nonfinite=error_if_nonfinite)
    if error_if_nonfinite:
        raise ValueError(
            "error_if_nonfinite=True: a jitted step cannot raise on a non-finite norm; "
            "wrap the optimizer in gtx.apply_if_finite(tx, max_consecutive_errors) to "
            "skip such steps, or pass error_if_nonfinite=False (PyTorch's default)"
        )
    order = float(norm_type)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        del params, extra
        leaves = [u for u in jax.tree.leaves(updates) if u is not None]
        if not leaves:
            return updates, state
        tree_checks.check_inexact_leaves(updates, leaves, "the update")

        # Each norm accumulates in at least float32 and is rounded to its input's dtype, as
        # PyTorch's are: |g|^2 in float16 overflows from |g| = 256 (every update 0).
        def leaf_norm(u):  # over every axis, without a ravel (which would gather a
            # sharded leaf); un-jitted in the eager kernels, 32 leaves a call
            return _norm_as_pytorch(u, order, axis=tuple(range(u.ndim)))

        # norms of leaves of several dtypes stacked in their common dtype, cast explicitly
        norms = numerics.promote(*tree.map_leaves(leaf_norm, leaves))
        total = _norm_as_pytorch(jnp.stack(norms), order)
        # PyTorch's ``max_norm / tensor`` is ``tensor.reciprocal() * max_norm``, two
        # roundings: in float16/bfloat16 the one division was a unit in the last place off
        coefficient = jnp.minimum(jnp.reciprocal(total + 1e-6) * max_norm, 1.0)

        def leaf(u):
            dtype = numerics.compute_dtype(u.dtype)
            return (u.astype(dtype) * coefficient.astype(dtype)).astype(u.dtype)

        return tree.map_leaves(leaf, updates), state

    return GradientTransformation(init, update)
