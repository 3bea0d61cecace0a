"""multi_steps: gradient accumulation, including a growing number of micro-steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx import eager_kernels, tree
from tests.compilations import count_compilations, count_eager_operations


def _micro_grads(rng, count, shape=(3,)):
    return [rng.normal(size=shape).astype(np.float32) for _ in range(count)]


def test_k4_equals_one_inner_step_on_the_mean_of_four_gradients(rng, x64):
    grads = [g.astype(np.float64) for g in _micro_grads(rng, 4)]
    params = jnp.asarray(rng.normal(size=3))
    tx = gtx.multi_steps(gtx.chain(gtx.scale_by_adam(), gtx.scale(-0.1)), every_k=4)
    state = tx.init(params)
    step = jax.jit(tx.update)
    emitted = []
    for g in grads:
        updates, state = step(jnp.asarray(g), state, params)
        emitted.append(np.asarray(updates))
    for zero in emitted[:3]:
        np.testing.assert_array_equal(zero, np.zeros(3))
    reference = optax.chain(optax.scale_by_adam(), optax.scale(-0.1))
    expected, _ = reference.update(jnp.asarray(np.mean(grads, axis=0)), reference.init(params))
    np.testing.assert_allclose(emitted[3], expected, rtol=1e-12)
    assert bool(gtx.has_updated(state))


def test_has_updated_is_true_only_after_a_real_step():
    tx = gtx.multi_steps(gtx.identity(), every_k=3)
    state = tx.init(jnp.zeros(2))
    step = jax.jit(tx.update)
    flags = []
    for _ in range(6):
        _, state = step(jnp.ones(2), state)
        flags.append(bool(gtx.has_updated(state)))
    assert flags == [False, False, True, False, False, True]


def test_has_updated_is_false_before_any_update():
    tx = gtx.multi_steps(gtx.identity(), every_k=2)
    assert not bool(gtx.has_updated(tx.init(jnp.zeros(2))))


@pytest.mark.parametrize("jit", [False, True])
def test_the_real_step_count_saturates_and_has_updated_stays_true(jit):
    int32_max = np.iinfo(np.int32).max
    tx = gtx.multi_steps(gtx.identity(), every_k=1)
    state = tx.init(jnp.zeros(2))._replace(gradient_step=jnp.asarray(int32_max, jnp.int32))
    _, state = (jax.jit(tx.update) if jit else tx.update)(jnp.ones(2), state)
    assert int(state.gradient_step) == int32_max
    assert bool(gtx.has_updated(state))


def test_trajectory_equals_optax_multisteps_under_jit(rng):
    grads = _micro_grads(rng, 9)
    tx = gtx.multi_steps(gtx.adam(0.1), every_k=3)
    reference = optax.MultiSteps(optax.adam(0.1), every_k_schedule=3)
    params = ref_params = jnp.zeros(3)
    state, ref_state = tx.init(params), reference.init(ref_params)
    step, ref_step = jax.jit(tx.update), jax.jit(reference.update)
    for g in grads:
        updates, state = step(jnp.asarray(g), state, params)
        params = gtx.apply_updates(params, updates)
        ref_updates, ref_state = ref_step(jnp.asarray(g), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, ref_updates)
        np.testing.assert_allclose(params, ref_params, rtol=1e-5, atol=1e-7)
    assert int(state.gradient_step) == 3


def test_growing_k_schedule_emits_at_the_right_micro_steps():
    # k is read from the number of real steps taken so far: 1, 2, 3, 4 micro-batches
    tx = gtx.multi_steps(gtx.identity(), every_k=lambda real_steps: real_steps + 1)
    state = tx.init(jnp.zeros(1))
    step = jax.jit(tx.update)
    emitted_at = []
    for micro_step in range(1, 11):
        updates, state = step(jnp.full(1, float(micro_step)), state)
        if bool(gtx.has_updated(state)):
            emitted_at.append((micro_step, float(updates[0])))
    # emissions after 1, 1+2, 1+2+3, 1+2+3+4 micro-batches, each the mean of its batch
    assert emitted_at == [(1, 1.0), (3, 2.5), (6, 5.0), (10, 8.5)]


def test_bfloat16_params_accumulate_in_float32_and_emit_the_mean_in_bfloat16():
    values = [256.0, 1.0, 1.0, 1.0]  # a bfloat16 running mean would lose the 1.0s
    tx = gtx.multi_steps(gtx.identity(), every_k=4)
    state = tx.init(jnp.zeros(1, jnp.bfloat16))
    assert state.acc_grads.dtype == jnp.float32
    step = jax.jit(tx.update)
    for v in values:
        updates, state = step(jnp.full(1, v, jnp.bfloat16), state)
    assert updates.dtype == jnp.bfloat16
    expected = np.float32(np.mean(np.array(values, np.float32)))
    assert float(updates[0]) == float(jnp.asarray(expected).astype(jnp.bfloat16))
    # a running mean kept in bfloat16 would give 64.5 (it rounds 128.5 to 128 on the way)
    assert float(updates[0]) == 65.0


@pytest.mark.parametrize("jit", [False, True])
def test_bfloat16_gradients_are_averaged_in_float32_operation_by_operation(jit, monkeypatch):
    """Un-jitted and op by op, each operation rounds to its own dtype: the running mean
    is computed in the float32 of the accumulator, not in the bfloat16 of the gradients."""
    monkeypatch.setattr(tree, "COMPILE_EAGER_LEAF_FUNCTIONS", False)
    tx = gtx.multi_steps(gtx.identity(), every_k=4)
    state = tx.init(jnp.zeros(1, jnp.bfloat16))
    step = jax.jit(tx.update) if jit else tx.update
    for v in (256.0, 1.0):
        _, state = step(jnp.full(1, v, jnp.bfloat16), state)
    assert float(state.acc_grads[0]) == 128.5  # bfloat16 has no 128.5


@pytest.mark.parametrize("jit", [False, True])
def test_the_zero_updates_between_real_steps_take_the_inner_updates_dtype(jit):
    to_float32 = gtx.GradientTransformation(
        lambda params: (),
        lambda updates, state, params=None: (tree.cast(updates, jnp.float32), state),
    )
    tx = gtx.multi_steps(to_float32, every_k=2)
    step = jax.jit(tx.update) if jit else tx.update
    state = tx.init(jnp.zeros(2, jnp.bfloat16))
    for emitted in (False, True, False):
        updates, state = step(jnp.ones(2, jnp.bfloat16), state)
        assert updates.dtype == jnp.float32
        np.testing.assert_array_equal(updates, np.ones(2) if emitted else np.zeros(2))


def test_accumulator_dtype_may_be_chosen():
    tx = gtx.multi_steps(gtx.identity(), every_k=2, accumulator_dtype=jnp.bfloat16)
    assert tx.init(jnp.zeros(1, jnp.float32)).acc_grads.dtype == jnp.bfloat16


def test_inner_state_is_untouched_between_real_steps():
    tx = gtx.multi_steps(gtx.scale_by_adam(), every_k=2)
    state = tx.init(jnp.zeros(2))
    step = jax.jit(tx.update)
    _, after_one = step(jnp.ones(2), state)
    assert int(after_one.inner_state.count) == 0
    np.testing.assert_array_equal(after_one.inner_state.mu, np.zeros(2))
    _, after_two = step(jnp.ones(2), after_one)
    assert int(after_two.inner_state.count) == 1
    np.testing.assert_array_equal(after_two.acc_grads, np.zeros(2))


def test_invalid_every_k_is_rejected():
    with pytest.raises(ValueError, match="every_k"):
        gtx.multi_steps(gtx.identity(), every_k=0)
    with pytest.raises(ValueError, match="every_k"):
        gtx.multi_steps(gtx.identity(), every_k=2.5)


def test_eager_multi_steps_branches_in_python_and_compiles_nothing_once_warm():
    """Un-jitted, lax.cond retraced and compiled its branches at every call (~140 ms an
    update on 10 small leaves, one compilation each); a Python branch on the concrete
    predicate runs the inner transform's eager kernels, and equals the jitted steps."""
    params = {f"p{i}": jnp.ones(8) for i in range(3)}
    grads = [{k: jnp.full(8, 0.1 * (t + 1)) for k in params} for t in range(10)]
    tx = gtx.multi_steps(gtx.adam(1e-2), every_k=2)
    eager_state, jit_state = tx.init(params), tx.init(params)
    update = jax.jit(tx.update)
    for t, g in enumerate(grads):
        with count_compilations() as compiled:
            eager, eager_state = tx.update(g, eager_state, params)
        if t >= 6:  # warm: every kernel has been compiled at its second call
            assert compiled == [], t
        jitted, jit_state = update(g, jit_state, params)
        for key in params:
            np.testing.assert_allclose(eager[key], jitted[key], rtol=1e-6, atol=1e-9)
    assert jax.tree.structure(eager_state) == jax.tree.structure(jit_state)


@pytest.mark.parametrize(
    "k", [0, -1, 2.7, jnp.array(0)], ids=["zero", "negative", "fraction", "array_zero"]
)
def test_a_schedule_of_k_giving_no_positive_integer_is_named_at_an_eager_update(k):
    """0 and -1 acted as 1 and 2.7 as 2, silently (a constant every_k was checked)."""
    tx = gtx.multi_steps(gtx.sgd(0.1), every_k=lambda real_steps: k)
    params = jnp.zeros(1)
    with pytest.raises(ValueError, match=r"every_k's schedule must give an integer >= 1"):
        tx.update(params, tx.init(params), params)


def test_has_updated_finds_the_multi_steps_state_inside_other_wrappers():
    """It took a bare MultiStepsState only: inside a chain or apply_if_finite the user
    had to dig it out by hand."""
    tx = gtx.apply_if_finite(
        gtx.chain(gtx.clip_by_global_norm(1.0), gtx.multi_steps(gtx.adam(0.1), every_k=2)),
        max_consecutive_errors=3,
    )
    params = jnp.zeros(2)
    state, flags = tx.init(params), []
    for _ in range(4):
        _, state = jax.jit(tx.update)(jnp.ones(2), state, params)
        flags.append(bool(gtx.has_updated(state)))
    assert flags == [False, True, False, True]
    with pytest.raises(TypeError, match=r"holding 0"):
        gtx.has_updated(gtx.adam(0.1).init(params))
    two = gtx.chain(gtx.multi_steps(gtx.sgd(0.1), 2), gtx.multi_steps(gtx.sgd(0.1), 3))
    with pytest.raises(TypeError, match=r"holding 2; pass the one you mean"):
        gtx.has_updated(two.init(params))


def test_has_updated_is_false_after_a_step_that_apply_if_finite_skipped_around_it():
    """A skipped step leaves the MultiStepsState as the step before left it: after a
    real step, has_updated said True again for the NaN step that followed (the params
    did not move; a loss logged then belongs to no step)."""
    tx = gtx.apply_if_finite(gtx.multi_steps(gtx.sgd(0.1), every_k=2), max_consecutive_errors=1)
    params = jnp.zeros(2)
    update = jax.jit(tx.update)
    state, flags = tx.init(params), []
    nan = jnp.array([jnp.nan, 1.0])
    # accumulating, real, skipped, accumulating, skipped, applied after one skip (a real
    # step on a NaN mean), accumulating
    for grads in [jnp.ones(2), jnp.ones(2), nan, jnp.ones(2), nan, nan, jnp.ones(2)]:
        _, state = update(grads, state, params)
        flags.append(bool(gtx.has_updated(state)))
    assert flags == [False, True, False, False, False, True, False]


def test_eager_updates_dispatch_no_operation_per_leaf(monkeypatch):
    """Un-jitted, an accumulating step and a real one run their per-leaf work in the eager
    kernels (a call per 32 leaves). They made and selected the zero accumulators and the
    zero updates one leaf at a time: 258 and 132 operations per update on 64 leaves, 2-4x
    the time of the kernels on 1,000 leaves."""
    # no other test's kernels
    monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
    params = {f"w{i:02d}": jnp.ones(8) for i in range(64)}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    tx = gtx.multi_steps(gtx.adam(0.1), 2)
    state = tx.init(params)
    for _ in range(4):  # the kernels compile at a function's second sight
        _, state = tx.update(grads, state, params)
    counts = []
    for _ in range(2):  # an accumulating step, then a real one
        with count_eager_operations() as count:
            _, state = tx.update(grads, state, params)
        counts.append(count[0])
    assert max(counts) < len(params), counts


def test_a_jitted_update_traces_the_inner_update_once():
    # the zero updates of a micro-step need the inner updates' dtypes: a jax.eval_shape
    # of the inner update and then the cond's branch traced it twice per compilation
    traces = []

    def update(updates, state, params=None):
        traces.append(1)
        return gtx.adam(0.1).update(updates, state, params)

    tx = gtx.multi_steps(gtx.GradientTransformation(gtx.adam(0.1).init, update), every_k=2)
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    jax.jit(tx.update).trace(params, tx.init(params), params)
    assert len(traces) == 1


def test_a_jitted_update_takes_params_with_leaves_that_are_not_arrays():
    # A model's params closed over by the jitted step may hold a string or a Python int
    # the inner transform never reads; jitting the inner update over all of params (to
    # trace it once) made the string a TypeError
    seen = []

    def update(updates, state, params=None):
        seen.append((params["activation"], params["depth"]))
        return gtx.sgd(0.1).update(updates, state, params)

    tx = gtx.multi_steps(gtx.GradientTransformation(gtx.sgd(0.1).init, update), every_k=2)
    weights = {"w": jnp.array([1.0, -2.0, 3.0])}
    params = dict(weights, activation="relu", depth=2)
    state = tx.init(weights)
    step = jax.jit(lambda g, s: tx.update(g, s, params))
    updates, state = step({"w": jnp.array([1.0, 2.0, 3.0])}, state)
    np.testing.assert_array_equal(updates["w"], np.zeros(3, np.float32))
    updates, state = step({"w": jnp.array([3.0, 4.0, 5.0])}, state)
    np.testing.assert_allclose(updates["w"], [-0.2, -0.3, -0.4], rtol=1e-6)
    assert seen == [("relu", 2)]
