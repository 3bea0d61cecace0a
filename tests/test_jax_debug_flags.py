"""gradtx under JAX's debugging flags (docs/protocol.md): ``jax.transfer_guard``,
``jax.debug_nans``, ``jax.debug_infs``, ``jax.enable_checks``, ``jax.checking_leaks`` and
``jax.disable_jit``. A user turns them on to find a bug in their own training step; an
optimizer that trips them on finite gradients (a NaN or Inf made and then masked), or
gives other numbers under them, makes them useless."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx.compat import keras as keras_compat
from gradtx.compat import torch as torch_compat
from gradtx.training import lr_find
from tests import zoo
from tests.compilations import count_compilations
from tests.test_schedules import ALL_SCHEDULES

FACTORIES = {
    **{name: functools.partial(zoo.make, name, 0.1) for name in zoo.ALL},
    **zoo.WRAPPERS,
    "clip_by_global_norm": lambda: gtx.chain(gtx.clip_by_global_norm(1.0), gtx.adam(0.1)),
    "torch_clip_grad_norm": lambda: gtx.chain(torch_compat.clip_grad_norm(1.0), gtx.sgd(0.1)),
    "quantized_state": lambda: gtx.quantized_state(gtx.adam(0.1), block_size=2, min_size=1),
    "keras_adam": lambda: keras_compat.adam(0.1, clipnorm=1.0, use_ema=True),
    "torch_radam": lambda: torch_compat.radam(0.1, weight_decay=0.1),
    "torch_rmsprop": lambda: torch_compat.rmsprop(0.1, momentum=0.9, centered=True),
}
"""The named optimizers and the wrappers of ``tests/zoo.py``, and the transforms that
divide by a norm (zero for zero gradients) or quantize blocks (all zero at first)."""


REDUNDANT_OP_BY_OP = {
    *("adamw", "nadamw", "sgd_nesterov", "masked_zero", "flatten_offsets"),
    *("masked", "freeze", "partition", "multi_steps_schedule", "average_params"),
}
"""Variants whose arithmetic another case runs op by op already (op by op is slow): Adam
with a mask, frozen leaves or a second schedule; ``ema_params``' running average."""

JITTED = [
    *zoo.ALL,
    *("apply_if_finite", "multi_steps", "lookahead", "flatten_offsets", "quantized_state"),
    *("keras_adam", "torch_clip_grad_norm", "clip_by_global_norm", "swats"),
]
"""The named optimizers and the wrappers whose jitted programs differ most (a cond, a
scan of offsets, blocks, a clip's global norm): jitted, the flags check each output."""


def _op_by_op_cases(names):
    return [name for name in names if name not in REDUNDANT_OP_BY_OP]


def _params():
    return {"w": jnp.array([[0.5, -1.0], [2.0, 0.0]]), "b": jnp.array([0.25, -0.5])}


def _gradients():
    """A zero gradient first (a zero norm, all-zero moments and quantization blocks),
    then finite ones of both signs."""
    zero = jax.tree.map(jnp.zeros_like, _params())
    return [zero] + [
        {"w": jnp.array([[0.1, -0.2], [0.3, 0.0]]) * k, "b": jnp.array([0.5, -0.05]) * k}
        for k in (1.0, -2.0)
    ]


def _run(update, apply_updates, init, params, gradients):
    state = init(params)
    for grads in gradients:
        updates, state = update(grads, state, params)
        params = apply_updates(params, updates)
    return params


@contextlib.contextmanager
def _flags(*contexts):
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def _checking():
    """Every flag that checks values or traces (none changes a number)."""
    return _flags(
        jax.debug_nans(True), jax.debug_infs(True), jax.enable_checks(True), jax.checking_leaks()
    )


@pytest.mark.parametrize("name", JITTED)
def test_a_jitted_step_on_device_inputs_trips_no_flag_and_keeps_its_numbers(name):
    tx = FACTORIES[name]()
    update = jax.jit(tx.update)
    apply_updates = jax.jit(gtx.apply_updates)
    inputs = _params(), _gradients()  # on the device before the guard
    expected = _run(update, apply_updates, jax.jit(tx.init), *inputs)
    with _checking(), jax.transfer_guard("disallow"):
        actual = _run(update, apply_updates, jax.jit(tx.init), *inputs)
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.mark.parametrize("name", _op_by_op_cases(sorted(FACTORIES)))
def test_an_eager_update_op_by_op_trips_no_flag_and_keeps_its_numbers(name, monkeypatch):
    # Op by op (an eager update's first call) every primitive's result is checked: a NaN
    # or Inf made and then masked by a jnp.where is reported, where a compiled kernel
    # only shows its outputs.
    tx = FACTORIES[name]()
    inputs = _params(), _gradients()[:2]  # op by op is slow: the zero step and one more
    monkeypatch.setattr(gtx.tree, "COMPILE_EAGER_LEAF_FUNCTIONS", False)
    expected = _run(tx.update, gtx.apply_updates, tx.init, *inputs)
    with jax.debug_nans(True), jax.debug_infs(True):
        actual = _run(tx.update, gtx.apply_updates, tx.init, *inputs)
    # the same operations, checked: the same numbers
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.mark.parametrize(
    "name",
    [
        "sgd_momentum",
        "apply_if_finite",
        "multi_steps",
        "flatten",
        "torch_clip_grad_norm",
    ],
)
def test_disable_jit_gives_the_numbers_of_the_jitted_step(name):
    # lax.cond, lax.scan, the eager kernels and jnp's own jitted functions run in Python
    # (debug_nans checks every primitive then; debug_infs is left off: jnp.isinf makes
    # an inf constant, which it reports under disable_jit, in JAX's own code)
    tx = FACTORIES[name]()
    inputs = _params(), _gradients()
    expected = _run(jax.jit(tx.update), jax.jit(gtx.apply_updates), jax.jit(tx.init), *inputs)
    with jax.disable_jit(), jax.debug_nans(True):
        actual = _run(jax.jit(tx.update), jax.jit(gtx.apply_updates), jax.jit(tx.init), *inputs)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), actual, expected
    )


@pytest.mark.parametrize("flag", ["debug_nans", "debug_infs"])
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_apply_if_finite_skips_a_non_finite_step_under_the_debug_flags(flag, bad, jitted):
    # Un-jitted, the inner update ran on the gradients to skip and its NaN or Inf
    # (inf - inf, 0 * inf in Adam) raised FloatingPointError; Optax's lax.cond does not.
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, bad, 2.0])}
    results = []
    for tx in [gtx.apply_if_finite(gtx.adam(0.1), 2), optax.apply_if_finite(optax.adam(0.1), 2)]:
        state = tx.init(params)
        update = jax.jit(tx.update) if jitted else tx.update
        with getattr(jax, flag)(True):
            updates, new_state = update(grads, state, params)
        jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
        results.append((updates["w"], new_state.notfinite_count, new_state.total_notfinite))
    (ours, theirs) = results
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    np.testing.assert_array_equal(ours[0], np.zeros(3))
    assert int(ours[1]) == int(ours[2]) == 1


def test_apply_if_finite_lets_the_flags_report_a_non_finite_step_it_applies():
    tx = gtx.apply_if_finite(gtx.adam(0.1), 0)  # the first non-finite step is applied
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    with jax.debug_nans(True), pytest.raises(FloatingPointError):
        tx.update({"w": jnp.array([1.0, jnp.nan, jnp.inf])}, state, params)


def test_apply_if_finite_eager_under_the_flags_compiles_no_program_per_update():
    # Un-jitted under the flags the skip or run was an eager lax.cond: a program compiled
    # at every update (1.5 s an update of Adam on 300 leaves); now a Python branch that
    # runs the eager kernels, with the numbers of the update without the flags.
    tx = gtx.apply_if_finite(gtx.adam(0.1), 2)
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    grads = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([0.25, 3.0])}
    bad = {"w": jnp.array([1.0, jnp.nan, 0.5]), "b": jnp.array([jnp.inf, 3.0])}
    expected_state, actual_state = tx.init(params), tx.init(params)
    for g in [grads, grads, grads, bad, grads]:  # an eager kernel compiles at its 2nd call
        expected, expected_state = tx.update(g, expected_state, params)
        with jax.debug_nans(True), jax.debug_infs(True):
            actual, actual_state = tx.update(g, actual_state, params)
        jax.tree.map(
            np.testing.assert_array_equal, (actual, actual_state), (expected, expected_state)
        )
    with jax.debug_nans(True), jax.debug_infs(True), count_compilations() as compiled:
        tx.update(grads, actual_state, params)
    assert not compiled
    assert int(actual_state.total_notfinite) == 1


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_schedule_makes_no_nan_or_inf_before_during_or_after_its_steps(name):
    schedule = ALL_SCHEDULES[name]()
    steps = jnp.asarray([0, 1, 5, 10, 57, 100, 1000, 2**20, 2**31 - 1], jnp.int32)
    expected = np.asarray(schedule(steps))
    with jax.debug_nans(True), jax.debug_infs(True), jax.disable_jit():
        actual = [schedule(step) for step in steps]
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "name",
    ["sgd_momentum", "adam", "rmsprop", "rprop", "apply_if_finite", "multi_steps", "flatten"],
)
def test_a_second_step_compiles_nothing(name):
    tx = FACTORIES[name]()
    params, grads = _params(), _gradients()[1]
    update = jax.jit(tx.update)
    state = jax.jit(tx.init)(params)
    updates, state = update(grads, state, params)
    with count_compilations() as compiled:
        updates, state = update(grads, state, params)
    assert not compiled
    hyperparams = list(gtx.get_hyperparams(state)) if name in zoo.ALL else []
    new_values = [dict.fromkeys(hyperparams, 0.5), dict.fromkeys(hyperparams, np.float32(0.25))]
    for values in new_values if hyperparams else []:
        new_state = gtx.set_hyperparams(state, **values)  # may compile a conversion
        with count_compilations() as compiled:
            update(grads, new_state, params)
        assert not compiled, values
    state, eager_params = tx.init(params), params
    for _ in range(3):  # an eager kernel is compiled at its second call
        updates, state = tx.update(grads, state, eager_params)
        eager_params = gtx.apply_updates(eager_params, updates)
    with count_compilations() as compiled:
        updates, state = tx.update(grads, state, eager_params)
        gtx.apply_updates(eager_params, updates)
    assert not compiled


def test_lr_find_runs_under_debug_nans_with_its_numbers():
    # The steps not run were NaN in the jitted loop's output (then cut off): a
    # FloatingPointError under debug_nans for every range test.
    curvatures = jnp.array([1.0, 4.0, 10.0])

    def loss_fn(params):
        return 0.5 * jnp.sum(curvatures * params**2)

    def find():
        return lr_find(loss_fn, jnp.ones(3), None, gtx.scale_by_learning_rate, num_steps=30)

    expected = find()
    with jax.debug_nans(True):
        actual = find()
    assert actual.diverged and len(actual.losses) < 30
    np.testing.assert_array_equal(actual.losses, expected.losses)
    assert actual.suggestion == expected.suggestion
