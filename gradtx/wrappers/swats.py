"""SWATS: start with Adam, switch to SGD when Adam's projected step size settles."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx import check, layout, norms, numerics, tree, tree_checks
from gradtx.core import GradientTransformation, ScalarOrSchedule, Updates


class SwatsState(NamedTuple):
    """The state of ``swats``. S below is the widest real compute dtype of the params
    (at least float32; float32 for no params).

    Attributes:
        count: int32 scalar, k, updates made so far, saturating at 2**31 - 1.
        mu: m_k, Adam's first moment (frozen after the switch), a tree like the params
            in their dtype, initially 0.
        nu: a_k, Adam's second moment (frozen after the switch), a tree like the params
            in their real dtype, initially 0.
        momentum: v_k, the SGD momentum buffer (0 until the switch), like ``mu``.
        lambda_avg: lambda_k, the running average of the projected rates gamma_k, a
            scalar in S, initially 0.
        switched: bool scalar, whether the SGD phase has begun.
        switch_step: int32 scalar, the k at which the criterion held (0 while in Adam).
        sgd_learning_rate: Lambda = lambda_k / (1 - b2^k) at the switch (0 before), a
            scalar in S.
    """

    count: jax.Array
    mu: Updates
    nu: Updates
    momentum: Updates
    lambda_avg: jax.Array
    switched: jax.Array
    switch_step: jax.Array
    sgd_learning_rate: jax.Array


def swats(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-9,
    *,
    switch_tol: float = 1e-9,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""SWATS, Switching from Adam to SGD (Keskar & Socher, 2017, Algorithm 1).

    A complete optimizer: its updates include the learning rate and the sign, ready for
    ``apply_updates``. With k counting updates from 1, g_k the gradient and all vectors
    the whole parameter tree (the switch is global)::

        Adam phase:
            m_k = b1 m_{k-1} + (1 - b1) g_k
            a_k = b2 a_{k-1} + (1 - b2) g_k^2
            p_k = -alpha_k sqrt(1 - b2^k) / (1 - b1^k) * m_k / (sqrt(a_k) + eps)
            update: p_k
            if p_k^T g_k != 0:
                gamma_k  = p_k^T p_k / (-p_k^T g_k)       (the SGD rate whose step, projected
                                                         on p_k, is p_k)
                lambda_k = b2 lambda_{k-1} + (1 - b2) gamma_k
                if k > 1 and |lambda_k / (1 - b2^k) - gamma_k| < switch_tol:
                    switch to SGD from step k + 1, with Lambda = lambda_k / (1 - b2^k)
        SGD phase:
            v_k = b1 v_{k-1} + g_k
            update: -(1 - b1) Lambda v_k

    The running average of gamma uses b2 and its bias correction ``1 - b2^k``, as in the
    paper's Algorithm 1. The paper uses eps = 1e-9 both in Adam's denominator and as the
    switching tolerance; here they are separate arguments with that default (in float32,
    a tolerance of 1e-9 is tighter than the rounding of gamma itself unless gamma is
    small: pass a larger ``switch_tol``, or train in float64, to see it trigger). The
    learning rate (or its schedule) is read in the Adam phase only, where it sets p_k and
    so gamma_k and Lambda; the SGD phase steps with the fixed Lambda, as Algorithm 1
    does. To decay the steps of both phases, chain ``scale_by_schedule(multiplier)``
    after ``swats``.

    Args:
        learning_rate: Adam's alpha, a non-negative number or a schedule of k - 1 (a
            negative value of it is a ValueError at an un-jitted update).
        b1: in [0, 1): Adam's first-moment decay and the SGD momentum.
        b2: in [0, 1): Adam's second-moment decay and the decay of lambda.
        eps: added to sqrt(a_k), >= 0.
        switch_tol: the switching tolerance, >= 0.
        nu_dtype: dtype of Adam's second moment; None keeps the parameter's real
            dtype. For float16 parameters pass ``jnp.float32`` (a float16 ``(1 - b2) g^2``
            underflows for gradients ~1e-3).

    Under ``jit`` the phase is a ``lax.cond``, so a step reads and writes only its own
    phase's state; un-jitted, a select. The switch is global: with parameters sharded
    over a ``jax.shard_map`` axis (each device holding a slice) the first update is a
    ValueError; shard them with ``jax.jit`` over global arrays, or enter them
    replicated.

    State: ``SwatsState``: ``switched`` and ``switch_step`` say whether and when it
    switched, ``sgd_learning_rate`` is Lambda.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.swats(learning_rate=0.1)
        >>> updates, state = tx.update(jnp.array([2.0, -1.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(u), 4) for u in updates], bool(state.switched)
        ([-0.1, 0.1], False)

    Reference: Keskar & Socher, 2017, "Improving Generalization Performance by
    Switching from Adam to SGD".
    """
    scheduled = callable(learning_rate)
    if scheduled:
        check.schedule_arity("learning_rate", learning_rate)
    else:
        check.non_negative("learning_rate", learning_rate)
    check.unit_interval("b1", b1)
    check.unit_interval("b2", b2)
    check.non_negative("eps", eps)
    check.non_negative("switch_tol", switch_tol)
    b1, b2, eps = map(numerics.python_number, (b1, b2, eps))
    check.dtype_or_none("nu_dtype", nu_dtype)

    def scalar_dtype(params):
        dtypes = [numerics.compute_dtype(jnp.result_type(x)) for x in jax.tree.leaves(params)]
        return numerics.real_dtype(numerics.result_type(*dtypes)) if dtypes else jnp.float32

    def init(params):
        dtype = scalar_dtype(params)
        return SwatsState(
            count=jnp.zeros([], jnp.int32),
            mu=tree.zeros_like(params),
            nu=tree.zeros_like(params, nu_dtype, real=True),
            momentum=tree.zeros_like(params),
            lambda_avg=jnp.zeros([], dtype),
            switched=jnp.asarray(False),
            switch_step=jnp.zeros([], jnp.int32),
            sgd_learning_rate=jnp.zeros([], dtype),
        )

    def update(updates, state, params=None, **extra):
        del params, extra
        check.state_of("swats", state, SwatsState)
        count = numerics.safe_increment(state.count)
        alpha = learning_rate(state.count) if scheduled else learning_rate
        if scheduled:  # a concrete value (an un-jitted update) is checked, as in the optimizers
            check.non_negative("learning_rate", alpha)
        switched = state.switched
        # read here, not in `leaf`: a closure holding `state` hands every leaf of its
        # moments to each eager kernel call as an argument (3,000 on 1,000 leaves)
        sgd_learning_rate = jnp.asarray(state.sgd_learning_rate)  # a Python float too

        def phase(switched):
            """The step of the phase ``switched`` says (a Python bool inside the
            ``lax.cond`` of a jitted update, so that each branch computes only its own
            phase; a bool array un-jitted, both phases selected per element)."""

            def leaf(g, m, a, v):
                dtype = numerics.compute_dtype(g.dtype)
                g_ = g.astype(dtype)
                beta1 = numerics.factor(b1, numerics.result_type(b1, dtype))  # as in Adam
                m_new = beta1 * m.astype(dtype) + (1 - beta1) * g_
                a_dtype = numerics.promote_types(numerics.real_dtype(dtype), a.dtype)
                g_squared = numerics.abs_sq(g.astype(numerics.promote_types(dtype, a_dtype)))
                a_new = b2 * a.astype(a_dtype) + (1 - b2) * g_squared
                m_new = numerics.as_stored(m_new, m.dtype, g.dtype)
                a_new = numerics.as_stored(a_new, a.dtype, g.dtype)
                step_size = (
                    numerics.hyperparameter(alpha, dtype)
                    * jnp.sqrt(numerics.bias_correction(b2, count, dtype))
                    / numerics.bias_correction(b1, count, dtype)
                )
                # real factors cast to complex moments explicitly (strict promotion)
                step, m_new_ = numerics.promote(-step_size, m_new)
                scaled, denominator = numerics.promote(step * m_new_, jnp.sqrt(a_new) + eps)
                p = scaled / denominator
                v_new = numerics.as_stored(beta1 * v.astype(dtype) + g_, v.dtype, g.dtype)
                sgd_rate = sgd_learning_rate.astype(numerics.real_dtype(dtype))
                sgd_factor, v_new_ = numerics.promote(-(1 - b1) * sgd_rate, v_new)
                sgd_step = sgd_factor * v_new_
                u = jnp.where(switched, sgd_step, p)
                real = numerics.real_dtype(dtype)  # both branches' dtype, whatever b1's
                if switched is True:  # the SGD phase projects nothing (see `projected`)
                    p_dot_p = p_dot_g = jnp.zeros([], real)
                else:
                    p_dot_p = jnp.sum(numerics.abs_sq(p)).astype(real)
                    p_dot_g = jnp.sum(jnp.real(jnp.conj(p) * g_)).astype(real)
                return (
                    u.astype(g.dtype),
                    jnp.where(switched, m, m_new.astype(m.dtype)),
                    jnp.where(switched, a, a_new.astype(a.dtype)),
                    jnp.where(switched, v_new.astype(v.dtype), v),
                    p_dot_p,
                    p_dot_g,
                )

            return tree.map_unzip(leaf, updates, state.mu, state.nu, state.momentum, outputs=6)

        if isinstance(switched, jax.core.Tracer):
            _check_not_sharded_in_shard_map(updates)
            # Traced (jit), a lax.cond: each phase reads and writes only its own state (a
            # select computed both and copied every donated moment first: 108
            # bytes/param for a float32 step, 40 in Adam's phase and 20 in SGD's now).
            # Both phases compute every output from the same leaves, which map_unzip
            # lays out alike: their layouts agree without layout.cond's second trace.
            outputs = jax.lax.cond(switched, lambda: phase(True), lambda: phase(False))
        else:
            outputs = phase(switched)
        new_updates, mu, nu, momentum, p_dot_p, p_dot_g = outputs
        dtype = numerics.leaf_dtype(state.lambda_avg)
        # in leaf order (un-jitted: in compiled chunks, the same additions in the same
        # order; a Python sum dispatched two operations per leaf)
        p_dot_p = norms.sum_in_order(jax.tree.leaves(p_dot_p), dtype)
        p_dot_g = norms.sum_in_order(jax.tree.leaves(p_dot_g), dtype)
        # not ~switched: a state of Python numbers (as jit takes) gives a Python bool,
        # which ~ makes the int -1 or -2 (deprecated from Python 3.12)
        projected = jnp.logical_not(switched) & (p_dot_g != 0)
        gamma = p_dot_p / jnp.where(projected, -p_dot_g, 1)
        lambda_avg = jnp.where(
            projected, b2 * state.lambda_avg + (1 - b2) * gamma, state.lambda_avg
        )
        lambda_hat = lambda_avg / numerics.bias_correction(b2, count, dtype)
        trigger = projected & (count > 1) & (jnp.abs(lambda_hat - gamma) < switch_tol)
        return new_updates, SwatsState(
            count=count,
            mu=mu,
            nu=nu,
            momentum=momentum,
            lambda_avg=lambda_avg.astype(dtype),
            switched=switched | trigger,
            switch_step=jnp.where(trigger, count, state.switch_step),
            sgd_learning_rate=jnp.where(trigger, lambda_hat, state.sgd_learning_rate).astype(dtype),
        )

    return GradientTransformation(init, update)


def _check_not_sharded_in_shard_map(grads: Updates) -> None:
    """A ValueError for gradients that are shards of a parameter inside ``shard_map``.

    The switch is decided from p^T p and p^T g over the whole parameter vector; a shard
    sees only its slice, so each device would switch at its own step (and the scalar
    state differ between them). Summing the slices over the axis would need to know
    which leaves are slices and which are replicated copies, which ``check_vma=False``
    hides; this raises instead (under it, nothing is typed and nothing is caught).
    """
    for path, leaf in tree_checks.leaves_with_paths(grads):
        axes = layout.varying_manual_axes(leaf) if leaf is not None else frozenset()
        if axes:
            raise ValueError(
                f"swats: the gradient at {path or 'the root'} varies over the shard_map "
                f"axes {sorted(axes)} (a slice of a parameter sharded over them, or a "
                "gradient not yet averaged over the devices): swats decides its switch "
                "from sums over the whole parameter tree, which one shard cannot compute. "
                "Run the update outside shard_map (jax.jit over sharded jax.Arrays sums "
                "over every shard), or give it replicated parameters and gradients "
                "(in_specs P(), gradients averaged over the axis)."
            )
