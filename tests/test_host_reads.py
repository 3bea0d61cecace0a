"""Un-jitted updates read back to the host only values that are already there.

An eager training loop on a GPU stays fast only while ``tx.update`` never waits for the
device: JAX dispatches each operation and returns at once, unless Python reads an
array's value (``np.asarray``, ``float``, ``bool``), which waits for every operation
queued before it. gradtx checks an optimizer's hyperparameters at each un-jitted update
(docs/protocol.md); those checks must read the arrays the state has held since ``init``
(copied to the host once, then served from JAX's host copy), never a value computed at
the update, such as ``-learning_rate`` or a hyperparameter selected anew from the
gradients' finiteness. Optax's ``tx.update`` reads nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import check
from gradtx.compat.torch import lr_scheduler
from tests import zoo
from tests.compilations import count_compilations


@pytest.fixture
def host_reads(monkeypatch):
    """The concrete arrays ``gradtx.check`` reads on the host, with the names they are
    checked under."""
    reads = []
    read = check._concrete

    def recording(name, value, schedule):
        if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
            reads.append((name, value))
        return read(name, value, schedule)

    monkeypatch.setattr(check, "_concrete", recording)
    return reads


WRAPPED = {
    "apply_if_finite": lambda: gtx.apply_if_finite(gtx.adam(0.1), 2),
    "masked": zoo.WRAPPERS["masked"],
    "multi_steps": zoo.WRAPPERS["multi_steps"],
    "lookahead": zoo.WRAPPERS["lookahead"],
}


def build(name):
    return WRAPPED[name]() if name in WRAPPED else zoo.make(name, 0.05)


@pytest.mark.parametrize("name", zoo.ALL + list(WRAPPED))
def test_eager_updates_check_on_the_host_only_hyperparameters_held_since_init(name, host_reads):
    tx = build(name)
    params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.array([1.0, -1.0])}
    nan_grads = {"w": jnp.full((2, 2), jnp.nan), "b": jnp.zeros(2)}
    state = initial = tx.init(params)
    held = {id(leaf) for leaf in jax.tree.leaves(initial)}
    host_reads.clear()
    for step_grads in (grads, nan_grads, grads, grads):  # apply_if_finite skips the NaN step
        updates, state = tx.update(step_grads, state, params)
        params = gtx.apply_updates(params, updates)
    computed = [name for name, value in host_reads if id(value) not in held]
    assert host_reads, "the hyperparameters are checked at an un-jitted update"
    assert computed == [], (
        f"an un-jitted update read values computed at an update back to the host (waiting "
        f"for the device): {sorted(set(computed))}"
    )


@pytest.mark.parametrize(
    "schedule",
    [
        lr_scheduler.step_lr(0.1, step_size=1, gamma=0.999),
        lr_scheduler.multistep_lr(0.1, list(range(1, 1200)), gamma=0.999),
    ],
    ids=["step_lr", "multistep_lr"],
)
def test_torch_decays_by_whole_steps_read_nothing_and_compile_nothing_per_step_eagerly(
    schedule,
):
    """``gamma ** n`` with a concrete integer n reads n on the host and compiles a kernel
    per n (JAX's integer power); under jit it rounded otherwise (33 of 40 rates apart)."""
    steps = range(1001, 1006)
    jax.block_until_ready(schedule(jnp.int32(1000)))
    with count_compilations() as compiled:
        eager = [schedule(jnp.int32(t)) for t in steps]
    assert compiled == []
    jitted = jax.jit(schedule)
    np.testing.assert_array_equal(eager, [jitted(jnp.int32(t)) for t in steps])
