"""What users do with a training step besides calling it: compile it ahead of time from
abstract values (``jax.ShapeDtypeStruct`` params and ``jax.eval_shape(tx.init, ...)``
state), export it with ``jax.export`` (the state as its input and output, a symbolic
batch dimension), reuse its compilation from JAX's persistent cache in a second process,
copy the optimizer for workers and sweeps, and read the state's key paths in logs and
checkpoints. Each gives the numbers of the plain jitted step."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.export
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx.compat import keras as gtx_keras
from gradtx.compat import torch as gtx_torch

OPTIMIZERS = {
    "adam": lambda: gtx.adam(0.05),
    "adamw_schedule": lambda: gtx.adamw(gtx.schedules.warmup_cosine_decay(0.0, 0.05, 2, 10)),
    "clip_adam_decay_injected_schedule": lambda: gtx.chain(
        gtx.clip_by_global_norm(1.0),
        gtx.scale_by_adam(),
        gtx.add_decayed_weights(1e-2),
        gtx.schedule_injection(gtx.scale_by_learning_rate)(
            gtx.schedules.warmup_cosine_decay(0.0, 0.05, 2, 10)
        ),
    ),
    "multi_steps": lambda: gtx.multi_steps(gtx.adam(0.05), 2),
    "apply_if_finite": lambda: gtx.apply_if_finite(gtx.adam(0.05), 3),
    "lookahead": lambda: gtx.lookahead(gtx.adam(0.05), 2),
    "quantized_state": lambda: gtx.quantized_state(gtx.adam(0.05), block_size=8, min_size=8),
    "flatten": lambda: gtx.flatten(gtx.adam(0.05)),
    "torch_adamw": lambda: gtx_torch.adamw(0.05),
    "keras_adamw": lambda: gtx_keras.adamw(0.05),
    "reduce_on_plateau": lambda: gtx.chain(gtx.adam(0.05), gtx.reduce_on_plateau(patience=1)),
}


# The export and copy tests take a few of them (each is a second compile of the step,
# several for an export): the injected chain (Adam in it), wrappers with a cond, closures
# holding tables or layouts, and a compat optimizer.
EXPORTED = ["clip_adam_decay_injected_schedule", "multi_steps", "flatten"]
COPIED = ["clip_adam_decay_injected_schedule", "lookahead", "quantized_state", "keras_adamw"]


def _params():
    return {
        "w": jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float32).reshape(2, 8),
        "b": jnp.asarray([0.3, -0.2], jnp.float32),
    }


def _loss(params, batch):
    # a sum over the batch, not a mean: a division by a symbolic batch size rounds
    # differently from one by a constant, and the exported step should match bitwise
    return jnp.sum((batch @ params["w"].T + params["b"]) ** 2)


def _step(tx):
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(_loss)(params, batch)
        updates, state = tx.update(grads, state, params, value=loss)
        return gtx.apply_updates(params, updates), state

    return step


def _batch(size):
    return jnp.cos(jnp.arange(size * 8, dtype=jnp.float32)).reshape(size, 8)


def _run(step, params, state, batches):
    for batch in batches:
        params, state = step(params, state, batch)
    return params, state


def _assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        np.testing.assert_array_equal(a, e)


def _abstract(tree, sharding=None):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_step_compiled_ahead_of_time_from_abstract_values_gives_the_jitted_numbers(name):
    tx = OPTIMIZERS[name]()
    params, batches = _params(), [_batch(3), _batch(3) * 0.5, _batch(3) * -2.0]
    step = jax.jit(_step(tx))
    expected = _run(step, params, tx.init(params), batches)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_params = _abstract(params, sharding)
    abstract_state = _abstract(jax.eval_shape(tx.init, _abstract(params)), sharding)
    compiled = step.lower(abstract_params, abstract_state, _abstract(batches[0])).compile()
    _assert_trees_equal(_run(compiled, params, tx.init(params), batches), expected)
    assert compiled.as_text()
    assert compiled.cost_analysis() is not None


@pytest.mark.parametrize("name", EXPORTED)
def test_an_exported_step_with_a_symbolic_batch_takes_and_returns_the_state(name):
    tx = OPTIMIZERS[name]()
    params = _params()
    state = tx.init(params)
    (batch_size,) = jax.export.symbolic_shape("batch")
    batch = jax.ShapeDtypeStruct((batch_size, 8), jnp.float32)
    exported = jax.export.export(jax.jit(_step(tx)))(params, state, batch)
    batches = [_batch(3), _batch(5) * 0.5, _batch(3) * -2.0]
    expected = _run(jax.jit(_step(tx)), params, state, batches)
    _assert_trees_equal(_run(exported.call, params, state, batches), expected)


def test_a_serialized_export_runs_once_its_state_types_are_registered():
    """As with Optax's states: ``Exported.serialize`` needs each NamedTuple of the state
    registered with jax.export (docs/protocol.md); it needs flatbuffers."""
    pytest.importorskip("flatbuffers")
    tx = gtx.chain(gtx.clip_by_global_norm(1.0), gtx.adam(0.05))
    params, batches = _params(), [_batch(3), _batch(3) * 0.5]
    state = tx.init(params)
    for state_type in (gtx.EmptyState, gtx.InjectState, gtx.ScaleByAdamState):
        try:
            jax.export.register_namedtuple_serialization(
                state_type, serialized_name=f"gradtx.{state_type.__name__}"
            )
        except ValueError as error:  # registered by an earlier run in this process
            assert "Duplicate serialization registration" in str(error)
    exported = jax.export.export(jax.jit(_step(tx)))(params, state, batches[0])
    restored = jax.export.deserialize(exported.serialize())
    expected = _run(jax.jit(_step(tx)), params, state, batches)
    _assert_trees_equal(_run(restored.call, params, state, batches), expected)


@pytest.mark.parametrize("name", COPIED)
def test_copies_of_an_optimizer_and_its_state_continue_the_same_trajectory(name):
    tx = OPTIMIZERS[name]()
    params, batches = _params(), [_batch(3), _batch(3) * 0.5, _batch(3) * -2.0]
    step = jax.jit(_step(tx))
    middle = _run(step, params, tx.init(params), batches[:1])
    expected = _run(step, *middle, batches[1:])
    for copied in (copy.copy(tx), copy.deepcopy(tx)):
        assert type(copied) is type(tx)
        _assert_trees_equal(_run(jax.jit(_step(copied)), *middle, batches[1:]), expected)
    # the state on device, not only its host copy (tests/test_host_roundtrip.py)
    for state in (copy.deepcopy(middle[1]), pickle.loads(pickle.dumps(middle[1]))):
        _assert_trees_equal(state, middle[1])
        _assert_trees_equal(_run(step, middle[0], state, batches[1:]), expected)


def test_state_key_paths_name_the_fields_as_optax_does_for_the_same_chain():
    params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    gradtx_state = gtx.chain(
        gtx.clip_by_global_norm(1.0), gtx.scale_by_adam(), gtx.add_decayed_weights(1e-2)
    ).init(params)
    optax_state = optax.chain(
        optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.add_decayed_weights(1e-2)
    ).init(params)

    def paths(state):
        flat = jax.tree_util.tree_flatten_with_path(state)[0]
        return [jax.tree_util.keystr(path) for path, _ in flat]

    assert paths(gradtx_state) == paths(optax_state)
    assert paths(gradtx_state) == [
        "[1].count", "[1].mu['b']", "[1].mu['w']", "[1].nu['b']", "[1].nu['w']"
    ]  # fmt: skip
    for name, make in OPTIMIZERS.items():
        for path in paths(make().init(params)):
            assert "flat index" not in path, (name, path)  # a pytree without key paths


_SECOND_PROCESS = textwrap.dedent(
    """
    import sys

    import jax
    import jax.numpy as jnp

    # whatever JAX_* cache settings the environment has (a disabled or size-capped cache)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_max_size", -1)
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    counts = {"requests": 0, "hits": 0}

    def count(event, **_):
        if event == "/jax/compilation_cache/compile_requests_use_cache":
            counts["requests"] += 1
        elif event == "/jax/compilation_cache/cache_hits":
            counts["hits"] += 1

    jax.monitoring.register_event_listener(count)

    import gradtx as gtx

    tx = gtx.chain(
        gtx.clip_by_global_norm(1.0),
        gtx.scale_by_adam(),
        gtx.add_decayed_weights(1e-2),
        gtx.schedule_injection(gtx.scale_by_learning_rate)(
            gtx.schedules.warmup_cosine_decay(0.0, 0.05, 2, 10)
        ),
    )
    params = {f"w{i}": jnp.full((8,), 0.1 * (i + 1)) for i in range(3)}
    grads = jax.tree.map(lambda p: p * 0.5, params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    jitted = step(params, jax.jit(tx.init)(params), grads)
    eager = params, tx.init(params)
    for _ in range(3):  # the eager kernels compile at the second call
        updates, state = tx.update(grads, eager[1], eager[0])
        eager = gtx.apply_updates(eager[0], updates), state
    jax.block_until_ready((jitted, eager))
    print(counts["requests"], counts["hits"])
    """
)


def test_a_second_process_takes_every_compilation_from_the_persistent_cache(tmp_path):
    """A miss in the second process would mean a program that differs between
    processes (an object id or a run-dependent constant in it): the jitted step, the
    jitted init and the compiled kernels of the eager updates must all hit."""
    script = tmp_path / "train.py"
    script.write_text(_SECOND_PROCESS)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    counts = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "cache")],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        counts.append(tuple(int(x) for x in done.stdout.split()[-2:]))
    (first_requests, first_hits), (second_requests, second_hits) = counts
    # init, step, at least two eager kernels (a first process may hit its own entries)
    assert first_requests >= 4 and first_hits < first_requests
    assert (second_requests, second_hits) == (first_requests, first_requests)
