"""Orbax checkpoints: save mid-training, restore against an abstract target in a fresh
setting, continue; the resumed trajectory equals the uninterrupted one exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import gradtx as gtx

STEPS, SAVE_AT = 6, 3


def init_params():
    return {
        "dense": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "bias": jnp.zeros(3)},
        "scale": jnp.ones([]),
    }


def loss_fn(params, x):
    hidden = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    return jnp.mean((params["scale"] * hidden - 0.5) ** 2)


BATCHES = np.random.default_rng(0).normal(size=(STEPS, 8, 4)).astype(np.float32)

OPTIMIZERS = {
    "adam": lambda: gtx.adam(0.05),
    "adamw_with_schedule": lambda: gtx.adamw(
        gtx.schedules.warmup_cosine_decay(0.0, 0.1, warmup_steps=2, decay_steps=STEPS),
        weight_decay=gtx.schedules.piecewise_constant([2, 4], [1e-2, 5e-3, 2.5e-3]),
    ),
    "partitioned_injected": lambda: gtx.partition(
        {
            "kernels": gtx.chain(gtx.clip_by_global_norm(1.0), gtx.adamw(0.05)),
            "rest": gtx.sgd(gtx.schedules.sgdr(0.1, first_period=2), momentum=0.9),
        },
        {r"kernel": "kernels", r".*": "rest"},
    ),
}


def make_step(tx):
    @jax.jit
    def step(params, opt_state, x):
        updates, opt_state = tx.update(jax.grad(loss_fn)(params, x), opt_state, params)
        return gtx.apply_updates(params, updates), opt_state

    return step


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resumed_training_equals_the_uninterrupted_run(name, tmp_path):
    tx = OPTIMIZERS[name]()
    step = make_step(tx)
    params, opt_state = init_params(), tx.init(init_params())
    uninterrupted = []
    for t in range(STEPS):
        params, opt_state = step(params, opt_state, BATCHES[t])
        uninterrupted.append((params, opt_state))

    saved = {"params": uninterrupted[SAVE_AT - 1][0], "opt_state": uninterrupted[SAVE_AT - 1][1]}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "checkpoint", saved)
        checkpointer.wait_until_finished()

    # A fresh setting: a new optimizer object, a target with shapes and dtypes only.
    tx = OPTIMIZERS[name]()
    abstract = jax.eval_shape(
        lambda: {"params": init_params(), "opt_state": tx.init(init_params())}
    )
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "checkpoint", abstract)
    assert_trees_equal(restored, saved)

    step = make_step(tx)
    params, opt_state = restored["params"], restored["opt_state"]
    for t in range(SAVE_AT, STEPS):
        params, opt_state = step(params, opt_state, BATCHES[t])
        assert_trees_equal(params, uninterrupted[t][0])
        assert_trees_equal(opt_state, uninterrupted[t][1])


def test_restored_schedule_continues_from_the_saved_step_count(tmp_path):
    tx = OPTIMIZERS["adamw_with_schedule"]()
    step = make_step(tx)
    params, opt_state = init_params(), tx.init(init_params())
    for t in range(SAVE_AT):
        params, opt_state = step(params, opt_state, BATCHES[t])
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "checkpoint", opt_state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "checkpoint", jax.eval_shape(lambda: opt_state))
    # The weight decay of the last update (count 2) is the second piece of its schedule.
    assert int(restored.count) == SAVE_AT
    np.testing.assert_allclose(gtx.get_hyperparams(restored)["weight_decay"], 5e-3, rtol=1e-6)
