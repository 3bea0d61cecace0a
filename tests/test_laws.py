"""Algebraic laws between building blocks: what a user relies on when swapping one
transform for another in an ablation (``chain(tx) == tx``, ``multi_steps(tx, 1) == tx``,
``masked(tx, all True) == tx``...), checked on random small trees over 5 steps.

Laws that are exact are checked with the eager kernels off (op by op, so that two runs
of the same math give the same bits; the kernels agree with op by op within float32
rounding, see ``tests/test_performance_equivalence.py``).
"""

from __future__ import annotations

import unittest.mock

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import tree
from tests import zoo

_SHAPES = [(), (3,), (2, 3)]

_TREES = st.recursive(
    st.sampled_from(range(len(_SHAPES))),
    lambda children: st.one_of(
        st.dictionaries(st.sampled_from("abc"), children, min_size=1, max_size=2),
        st.lists(children, min_size=1, max_size=2),
        st.lists(children, min_size=1, max_size=2).map(tuple),
    ),
    max_leaves=4,
)
"""Nested dicts, lists and tuples whose leaves are indices into ``_SHAPES``."""

_SETTINGS = hypothesis.settings(max_examples=6, deadline=None, derandomize=True)


def _arrays(shape_tree, seed: int, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda i: jnp.asarray(rng.standard_normal(_SHAPES[i]).astype(dtype)), shape_tree
    )


def _params_and_grads(shape_tree, seed: int, dtype=np.float32):
    params = _arrays(shape_tree, seed, dtype)
    grads = [_arrays(shape_tree, seed + 1 + t, dtype) for t in range(5)]
    return params, grads


def _run(tx, params, grads_sequence, *, jit: bool = False):
    """(updates of each step, final params, final state), un-jitted unless ``jit``."""
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    all_updates = []
    for grads in grads_sequence:
        updates, state = update(grads, state, params)
        params = gtx.apply_updates(params, updates)
        all_updates.append(updates)
    return all_updates, params, state


def _assert_trees_close(actual, expected, rtol=0.0, atol=0.0, law=""):
    assert jax.tree.structure(actual) == jax.tree.structure(expected), law
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol, atol, err_msg=law)


def _op_by_op():
    return unittest.mock.patch.object(tree, "COMPILE_EAGER_LEAF_FUNCTIONS", False)


def _all(value, like):
    return jax.tree.map(lambda _: value, like)


_SAME_AS_INNER = {
    "chain(tx)": lambda tx: gtx.chain(tx),
    "chain(identity, tx)": lambda tx: gtx.chain(gtx.identity(), tx),
    "named_chain": lambda tx: gtx.named_chain(("tx", tx)),
    "masked(all True)": lambda tx: gtx.masked(tx, lambda p: _all(True, p)),
    "partition(all 'a')": lambda tx: gtx.partition({"a": tx}, lambda p: _all("a", p)),
    "multi_steps(1)": lambda tx: gtx.multi_steps(tx, 1),
    "apply_if_finite": lambda tx: gtx.apply_if_finite(tx, 2),
    "ema_params after": lambda tx: gtx.chain(tx, gtx.ema_params(0.9)),
    "average_params after": lambda tx: gtx.chain(tx, gtx.average_params(0)),
    "scale(1) after": lambda tx: gtx.chain(tx, gtx.scale(1.0)),
    "add_decayed_weights(0) before": lambda tx: gtx.chain(gtx.add_decayed_weights(0.0), tx),
    "clip_by_global_norm(inf) before": lambda tx: gtx.chain(
        gtx.clip_by_global_norm(float("inf")), tx
    ),
    "clip(inf) before": lambda tx: gtx.chain(gtx.clip(float("inf")), tx),
    "ema(0) before": lambda tx: gtx.chain(gtx.ema(0.0), tx),
    "trace(0) before": lambda tx: gtx.chain(gtx.trace(0.0), tx),
}


@_SETTINGS
@hypothesis.given(name=st.sampled_from(zoo.ALL), shape_tree=_TREES, seed=st.integers(0, 2**16))
def test_wrappers_that_should_not_change_an_optimizer_give_its_exact_numbers(
    name, shape_tree, seed
):
    params, grads = _params_and_grads(shape_tree, seed)
    with _op_by_op():
        expected_updates, expected_params, _ = _run(zoo.make(name, 0.05), params, grads)
        for law, wrap in _SAME_AS_INNER.items():
            updates, new_params, _ = _run(wrap(zoo.make(name, 0.05)), params, grads)
            _assert_trees_close(updates, expected_updates, law=law)
            _assert_trees_close(new_params, expected_params, law=law)


@_SETTINGS
@hypothesis.given(name=st.sampled_from(zoo.ALL), shape_tree=_TREES, seed=st.integers(0, 2**16))
def test_chain_is_associative(name, shape_tree, seed):
    params, grads = _params_and_grads(shape_tree, seed)
    clip, lr = lambda: gtx.clip_by_global_norm(1.0), lambda: gtx.scale(0.5)
    with _op_by_op():
        left, _, _ = _run(gtx.chain(gtx.chain(clip(), zoo.make(name)), lr()), params, grads)
        right, _, _ = _run(gtx.chain(clip(), gtx.chain(zoo.make(name), lr())), params, grads)
        flat, _, _ = _run(gtx.chain(clip(), zoo.make(name), lr()), params, grads)
    _assert_trees_close(left, flat)
    _assert_trees_close(right, flat)


@_SETTINGS
@hypothesis.given(name=st.sampled_from(zoo.ALL), shape_tree=_TREES, seed=st.integers(0, 2**16))
def test_multi_steps_on_k_equal_micro_batches_is_one_step_of_the_optimizer(name, shape_tree, seed):
    params, grads = _params_and_grads(shape_tree, seed)
    k = 2 + seed % 2
    with _op_by_op():
        expected, expected_params, expected_state = _run(zoo.make(name), params, grads)
        micro = [g for g in grads for _ in range(k)]
        updates, new_params, state = _run(gtx.multi_steps(zoo.make(name), k), params, micro)
    for i, step_updates in enumerate(updates):
        if (i + 1) % k:  # between real steps: zeros
            _assert_trees_close(step_updates, jax.tree.map(jnp.zeros_like, step_updates))
        else:  # the mean of k equal gradients is the gradient, up to its rounding
            _assert_trees_close(step_updates, expected[i // k], rtol=1e-6, atol=1e-7)
    _assert_trees_close(new_params, expected_params, rtol=1e-6, atol=1e-6)
    _assert_trees_close(state.inner_state, expected_state, rtol=1e-6, atol=1e-7)


@_SETTINGS
@hypothesis.given(name=st.sampled_from(zoo.ALL), shape_tree=_TREES, seed=st.integers(0, 2**16))
def test_laws_that_hold_within_float32_rounding(name, shape_tree, seed):
    params, grads = _params_and_grads(shape_tree, seed)
    expected, expected_params, expected_state = _run(zoo.make(name, 0.05), params, grads)
    for tx, atol in (
        # synced after every step to slow weights equal to the fast ones; the update,
        # theta - params, is within two units in the last place of the params (documented)
        (gtx.lookahead(zoo.make(name, 0.05), sync_period=1, slow_step_size=1.0), 1e-6),
        (gtx.flatten(zoo.make(name, 0.05)), 1e-7),
        (gtx.flatten(zoo.make(name, 0.05), offsets_in_state=True), 1e-7),
    ):
        updates, new_params, _ = _run(tx, params, grads)
        _assert_trees_close(updates, expected, rtol=1e-6, atol=atol)
        _assert_trees_close(new_params, expected_params, rtol=1e-6, atol=atol)
    jitted, _, jitted_state = _run(zoo.make(name, 0.05), params, grads, jit=True)
    _assert_trees_close(jitted, expected, rtol=1e-5, atol=1e-7)
    _assert_trees_close(jitted_state, expected_state, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("masked_leaves", ["pass", "zero"])
@pytest.mark.parametrize(
    "mask_of", [lambda p: _all(False, p), lambda p: False], ids=["tree of False", "False"]
)
def test_masked_with_nothing_masked_in_passes_or_zeroes_every_update(masked_leaves, mask_of):
    params, grads = _params_and_grads({"a": 1, "b": [0, 2]}, seed=3)
    tx = gtx.masked(gtx.adamw(0.1), mask_of, masked_leaves=masked_leaves)
    updates, _, _ = _run(tx, params, grads)
    expected = grads if masked_leaves == "pass" else [_all(0.0, g) for g in grads]
    _assert_trees_close(updates, expected)


@pytest.mark.parametrize(
    "params", [jnp.ones(3), {"w": jnp.ones(3), "b": jnp.ones(2)}], ids=["array", "dict"]
)
@pytest.mark.parametrize(
    "needs_params",
    [
        lambda: gtx.adamw(0.1),
        lambda: gtx.lookahead(gtx.sgd(0.1)),
        lambda: gtx.chain(gtx.sgd(0.1), gtx.ema_params(0.9)),
        lambda: gtx.chain(gtx.sgd(0.1), gtx.proximal_l1(0.01)),
    ],
    ids=["adamw", "lookahead", "ema_params", "proximal_l1"],
)
def test_a_group_that_owns_no_leaf_does_not_ask_for_the_params(params, needs_params):
    # A mask function returning False (labels returning another group's label) masks
    # out the whole tree at once; the group's transform used to see None for the params
    # and refused them although they were given.
    grads = [jax.tree.map(lambda x: 0.5 * x, params)] * 2
    for jit in (False, True):
        masked = gtx.masked(needs_params(), lambda p: False)
        updates, _, _ = _run(masked, params, grads, jit=jit)
        _assert_trees_close(updates, grads)
        unused_group = gtx.partition(
            {"unused": needs_params(), "sgd": gtx.sgd(1.0)}, lambda p: "sgd"
        )
        updates, _, _ = _run(unused_group, params, grads, jit=jit)
        _assert_trees_close(updates, [jax.tree.map(jnp.negative, g) for g in grads])


@pytest.mark.parametrize(
    "params",
    [
        {"a": jnp.arange(3.0), "b": None, "c": [None, jnp.ones((2, 3))]},
        {},
        [],
        {"a": {}, "b": jnp.ones(3)},
    ],
    ids=["None leaves", "empty dict", "empty list", "empty subtree"],
)
@pytest.mark.parametrize("name", ["sgd_momentum", "adamw", "rprop"])
def test_laws_hold_on_none_leaves_and_empty_trees(params, name):
    grads = [jax.tree.map(lambda x, t=t: (t + 1.0) * jnp.cos(x), params) for t in range(3)]
    with _op_by_op():
        expected, expected_params, _ = _run(zoo.make(name), params, grads)
        # lookahead's update is theta - params: two units in the last place of the params
        # (documented), so its tolerance is absolute
        for wrap, atol in (
            (lambda tx: gtx.masked(tx, lambda p: _all(True, p)), 0.0),
            (lambda tx: gtx.multi_steps(tx, 1), 0.0),
            (lambda tx: gtx.lookahead(tx, sync_period=1, slow_step_size=1.0), 1e-6),
            (gtx.flatten, 0.0),
        ):
            updates, new_params, _ = _run(wrap(zoo.make(name)), params, grads)
            _assert_trees_close(updates, expected, rtol=1e-6, atol=atol)
            _assert_trees_close(new_params, expected_params, rtol=1e-6, atol=atol)
    tx = zoo.make(name)
    abstract = jax.eval_shape(tx.init, params)
    concrete = tx.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
        assert (a.shape, a.dtype) == (jnp.shape(c), jnp.result_type(c))


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam", "adadelta", "nadamw"])
def test_wrappers_keep_float64_numbers(name, x64):
    params, grads = _params_and_grads({"a": 1, "b": (2, 0)}, seed=11, dtype=np.float64)
    with _op_by_op():
        expected, _, expected_state = _run(zoo.make(name), params, grads)
        for wrap in (
            lambda tx: gtx.chain(gtx.identity(), tx),
            lambda tx: gtx.multi_steps(tx, 1),
            lambda tx: gtx.masked(tx, lambda p: _all(True, p)),
        ):
            updates, _, _ = _run(wrap(zoo.make(name)), params, grads)
            _assert_trees_close(updates, expected)
        updates, _, _ = _run(gtx.flatten(zoo.make(name)), params, grads)
        _assert_trees_close(updates, expected, rtol=1e-12, atol=1e-15)
    assert {x.dtype for x in jax.tree.leaves(expected)} == {np.dtype("float64")}


@pytest.mark.parametrize(
    "factory, hyperparams",
    [
        (gtx.scale_by_adam, {"b1": 0.8, "b2": 0.99, "eps": 1e-6}),
        (gtx.trace, {"decay": 0.7}),
        (gtx.clip_by_global_norm, {"max_norm": 0.5}),
        (gtx.add_decayed_weights, {"weight_decay": 0.1}),
    ],
)
def test_schedule_injection_of_constants_is_the_plain_factory(factory, hyperparams):
    params, grads = _params_and_grads({"a": 1, "b": [2]}, seed=5)
    expected, _, _ = _run(factory(**hyperparams), params, grads)
    constant = gtx.schedules.constant
    for tx in (
        gtx.schedule_injection(factory)(**hyperparams),
        gtx.schedule_injection(factory)(**{k: constant(v) for k, v in hyperparams.items()}),
    ):
        updates, _, _ = _run(tx, params, grads)
        # the injected hyperparameters are float32 (as documented), the plain ones Python
        # floats: one rounding of each
        _assert_trees_close(updates, expected, rtol=1e-6, atol=1e-7)
