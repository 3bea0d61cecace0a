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
    "adamaxw",
    "nadam",
    "nadamw",
    "radam",
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


WRAPPER_MASK = {"w": True, "b": False}
"""The mask the wrapper entries use: params are ``{"w": [2, 2], "b": [2]}``."""

WRAPPERS: dict[str, Callable[[], gtx.GradientTransformation]] = {
    "masked": lambda: gtx.masked(gtx.adam(0.1), WRAPPER_MASK),
    "masked_zero": lambda: gtx.masked(gtx.adam(0.1), WRAPPER_MASK, masked_leaves="zero"),
    "partition": lambda: gtx.partition(
        {"a": gtx.adam(0.1), "b": gtx.freeze()}, {r"\['w'\]": "a", r".*": "b"}
    ),
    "freeze": lambda: gtx.chain(gtx.adam(0.1), gtx.freeze({"w": False, "b": True})),
    "apply_if_finite": lambda: gtx.apply_if_finite(gtx.adam(0.1), 2),
    "multi_steps": lambda: gtx.multi_steps(gtx.adam(0.1), 2),
    "multi_steps_schedule": lambda: gtx.multi_steps(gtx.adam(0.1), lambda s: 1 + s),
    "lookahead": lambda: gtx.lookahead(gtx.adam(0.1), sync_period=2),
    "ema_params": lambda: gtx.chain(gtx.adam(0.1), gtx.ema_params(0.9)),
    "average_params": lambda: gtx.chain(gtx.adam(0.1), gtx.average_params(1)),
    "swats": lambda: gtx.swats(0.1),
    "flatten": lambda: gtx.flatten(gtx.adam(0.1)),
    "flatten_offsets": lambda: gtx.flatten(gtx.adam(0.1), offsets_in_state=True),
    "add_l1": lambda: gtx.chain(gtx.add_l1(0.1), gtx.adam(0.1)),
    "proximal_l1": lambda: gtx.chain(gtx.adam(0.1), gtx.proximal_l1(0.01)),
    "max_norm": lambda: gtx.chain(gtx.adam(0.1), gtx.max_norm(1.0, mask=WRAPPER_MASK)),
    "add_noise": lambda: gtx.chain(gtx.add_noise(0.01), gtx.adam(0.1)),
    "local_gain": lambda: gtx.chain(gtx.scale_by_local_gain(), gtx.scale(-0.1)),
}
"""Every wrapper and regularizer of issue 4, each around or beside Adam, by name."""
