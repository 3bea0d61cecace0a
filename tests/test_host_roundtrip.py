"""Checkpoints through the host, without Orbax: ``jax.device_get`` (NumPy leaves),
``pickle``, Flax's ``to_bytes``/``from_bytes`` and state dicts, ``np.savez`` of the
leaves, ``copy.deepcopy``. A state restored any of these ways continues the trajectory
of the uninterrupted one bitwise, eagerly and in a jitted step that donates it, and
compiles nothing more than the state on device does."""

from __future__ import annotations

import copy
import io
import pickle

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import eager_kernels
from gradtx.compat import keras as gtx_keras
from tests.compilations import count_compilations

OPTIMIZERS = {
    "adam": lambda: gtx.adam(0.1),
    "multi_steps": lambda: gtx.multi_steps(gtx.adam(0.1), 2),
    "lookahead": lambda: gtx.lookahead(gtx.sgd(0.1, momentum=0.9), sync_period=2),
    "keras_use_ema": lambda: gtx_keras.adam(0.1, use_ema=True, ema_overwrite_frequency=2),
}


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 8).reshape(2, 4), "b": jnp.asarray([0.3, -0.2])}


def _step(tx):
    def step(params, state, step_number):
        grads = jax.tree.map(lambda p: jnp.sin(p * (step_number + 1.3)), params)
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    return step


def _run(step, params, state, steps):
    for step_number in steps:
        params, state = step(params, state, jnp.int32(step_number))
    return params, state


def _round_trips(state, target):
    host = jax.device_get(state)
    leaves, treedef = jax.tree.flatten(state)
    saved = io.BytesIO()
    np.savez(saved, *leaves)
    saved.seek(0)
    loaded = np.load(saved)
    return {
        "device_get": host,
        "pickle": pickle.loads(pickle.dumps(host)),
        "to_bytes": flax.serialization.from_bytes(target, flax.serialization.to_bytes(state)),
        "state_dict": flax.serialization.from_state_dict(
            target, flax.serialization.to_state_dict(host)
        ),
        "savez": jax.tree.unflatten(treedef, [loaded[f"arr_{i}"] for i in range(len(leaves))]),
        "deepcopy": copy.deepcopy(state),
    }


def _assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_state_restored_on_the_host_continues_bitwise_in_a_donating_jitted_step(name):
    tx = OPTIMIZERS[name]()
    step = jax.jit(_step(tx), donate_argnums=(0, 1))
    uninterrupted = _run(step, _params(), tx.init(_params()), range(6))
    params, state = _run(step, _params(), tx.init(_params()), range(3))
    params = jax.device_get(params)
    for how, restored in _round_trips(state, tx.init(_params())).items():
        on_device = jax.tree.map(jnp.asarray, params)
        with count_compilations() as compiled:
            resumed = _run(step, on_device, restored, range(3, 6))
        assert not compiled, how
        _assert_trees_equal(resumed, uninterrupted)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_state_restored_on_the_host_continues_bitwise_eagerly(name, monkeypatch):
    monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
    tx = OPTIMIZERS[name]()
    step = _step(tx)
    _run(step, _params(), tx.init(_params()), range(6))  # compiles the eager kernels
    uninterrupted = _run(step, _params(), tx.init(_params()), range(6))
    params, state = _run(step, _params(), tx.init(_params()), range(3))
    kernels = set(eager_kernels.KERNELS.kernels)
    # NumPy leaves give NumPy scalars in the per-leaf closures (-lr, count == 0), which
    # the kernels take as arguments, as they take the arrays of the state on device:
    # the same kernels, the same numbers
    resumed = _run(step, params, jax.device_get(state), range(3, 6))
    assert set(eager_kernels.KERNELS.kernels) == kernels
    _assert_trees_equal(resumed, uninterrupted)


def test_the_state_tools_read_and_set_a_state_restored_on_the_host():
    tx = gtx.multi_steps(gtx.chain(gtx.clip_by_global_norm(1.0), gtx.adamw(0.1)), 2)
    step = _step(tx)
    params, state = _run(step, _params(), tx.init(_params()), range(4))
    restored = pickle.loads(pickle.dumps(jax.device_get(state)))
    assert float(gtx.get_hyperparams(restored)["learning_rate"]) == np.float32(0.1)
    assert bool(gtx.has_updated(restored))
    assert int(gtx.tree_get(restored, "gradient_step")) == 2
    restored = gtx.set_hyperparams(restored, learning_rate=0.0)
    expected = _run(step, params, gtx.set_hyperparams(state, learning_rate=0.0), range(4, 6))
    _assert_trees_equal(_run(step, params, restored, range(4, 6)), expected)


_ADAM_STATES = (gtx.ScaleByAdamState, gtx.ScaleByAmsgradState, gtx.ScaleByAdamaxState)


@pytest.mark.parametrize(
    ("make", "moved", "old_module"),
    [
        (lambda: gtx.adam(0.1), _ADAM_STATES, "gradtx.transforms.adaptive"),
        (lambda: gtx.amsgrad(0.1), _ADAM_STATES, "gradtx.transforms.adaptive"),
        (lambda: gtx.adamax(0.1), _ADAM_STATES, "gradtx.transforms.adaptive"),
        (lambda: gtx.noisy_sgd(0.1), (gtx.AddNoiseState,), "gradtx.transforms.regularize"),
        (
            lambda: gtx.partition({"a": gtx.adam(0.1), "b": gtx.sgd(0.1)}, {"w": "a"}),
            (gtx.PartitionState,),
            "gradtx.wrappers.masking",
        ),
    ],
    ids=["adam", "amsgrad", "adamax", "noisy_sgd", "partition"],
)
def test_a_state_pickled_before_its_class_moved_module_loads(make, moved, old_module):
    """State classes that got a module of their own (the Adam family's, once
    gradtx.transforms.adaptive's, now gradtx.transforms.adam's; add_noise's, once
    gradtx.transforms.regularize's, now gradtx.transforms.noise's; partition's, once
    gradtx.wrappers.masking's, now gradtx.wrappers.partition's): a state pickled before
    names the old module, and must load (an AttributeError "Can't get attribute"
    otherwise)."""
    state = jax.device_get(make().init({"w": jnp.ones(3)}))
    modules = {cls: cls.__module__ for cls in moved}
    try:
        for cls in moved:
            cls.__module__ = old_module
        payload = pickle.dumps(state)
    finally:
        for cls, module in modules.items():
            cls.__module__ = module
    assert old_module.encode() in payload
    restored = pickle.loads(payload)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True)
    )
