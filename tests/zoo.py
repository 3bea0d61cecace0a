"""The optimizers every protocol test runs over, by name, with sensible arguments.

Each entry builds the optimizer through its public constructor (so through
``schedule_injection``) from a learning rate; the ``momentum``/``nesterov`` variants of
``sgd`` are separate entries because they add a state and a different chain.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import pytest

import gradtx as gtx

OPTIMIZER_NAMES = [
    "sgd",
    "adagrad",
    "rmsprop",
    "adadelta",
    "adam",
    "adamw",
    "amsgrad",
    "adamax",
    "nadam",
    "nadamw",
    "rprop",
]
"""Every named optimizer of gradtx (issue 2)."""

VARIANTS: dict[str, Callable[[float], gtx.GradientTransformation]] = {
    "sgd_momentum": lambda lr: gtx.sgd(lr, momentum=0.9),
    "sgd_nesterov": lambda lr: gtx.sgd(lr, momentum=0.9, nesterov=True),
}

ALL = OPTIMIZER_NAMES + list(VARIANTS)
"""The names the parametrized tests run over."""


def base_name(name: str) -> str:
    """The optimizer a variant is built from: ``"sgd_momentum" -> "sgd"``."""
    return name.split("_")[0]


def require(name: str) -> Callable[..., gtx.GradientTransformation]:
    """The public factory of ``name`` (or of the optimizer a variant is built from)."""
    base = base_name(name)
    if not hasattr(gtx, base):
        pytest.fail(f"gradtx has no optimizer {base!r}")
    return getattr(gtx, base)


def make(name: str, learning_rate: float = 1e-2) -> gtx.GradientTransformation:
    """The optimizer called ``name`` with the given learning rate."""
    require(name)
    if name in VARIANTS:
        return VARIANTS[name](learning_rate)
    return getattr(gtx, name)(learning_rate)


def run_steps(tx: gtx.GradientTransformation, params, grads_sequence):
    """(params, state) after applying every gradient in ``grads_sequence`` (a list of
    trees like ``params``), the whole loop compiled once with ``lax.scan``."""
    if not jax.tree.leaves(grads_sequence):
        state = tx.init(params)
        for grads in grads_sequence:
            updates, state = tx.update(grads, state, params)
            params = gtx.apply_updates(params, updates)
        return params, state
    stacked = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *grads_sequence)

    @jax.jit
    def run(params, stacked):
        def step(carry, grads):
            params, state = carry
            updates, state = tx.update(grads, state, params)
            return (gtx.apply_updates(params, updates), state), None

        (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), stacked)
        return params, state

    return run(params, stacked)
