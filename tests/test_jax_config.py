"""gradtx under the global JAX configuration that large codebases set.

A user's ``jax.numpy_dtype_promotion("strict")``, ``jax.numpy_rank_promotion("raise")``
or ``jax.default_matmul_precision`` must not change what an optimizer does: gradtx
chooses the dtypes of its own arithmetic (bfloat16 moments updated in float32, a float32
injected hyperparameter times complex64 gradients) and casts explicitly, so every update
here gives, bit for bit, the numbers of the default configuration (which the reference
tests pin).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import eager_kernels
from gradtx.compat import torch as gtx_torch
from tests import zoo

# a complex vector's piece cast to a real leaf (flatten of a real and a complex leaf) is a
# JAX deprecation today and a ValueError to come
pytestmark = pytest.mark.filterwarnings("error:Casting from complex to real:DeprecationWarning")

EXTRA = {
    "torch_clip_grad_norm": lambda: gtx_torch.clip_grad_norm(0.5),
    "torch_clip_grad_norm_inf": lambda: gtx_torch.clip_grad_norm(0.5, norm_type=float("inf")),
    "trace_dampened": lambda: gtx.trace(0.9, dampening=0.1),
    "ema": lambda: gtx.ema(0.9),
    "scale_by_adadelta": lambda: gtx.scale_by_adadelta(),
    "torch_nadam": lambda: gtx_torch.nadam(weight_decay=0.1, decoupled_weight_decay=True),
    # switches at the second step (both phases traced in the cond of a jitted update)
    "swats_switch": lambda: gtx.swats(0.1, switch_tol=1.0),
}


def build(name: str) -> gtx.GradientTransformation:
    if name in zoo.WRAPPERS:
        return zoo.WRAPPERS[name]()
    if name in EXTRA:
        return EXTRA[name]()
    return zoo.make(name, 0.1)


def leaf(rng, dtype, *shape):
    x = rng.normal(size=shape)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        x = x + 1j * rng.normal(size=shape)
    return jnp.asarray(x, dtype)


def tree(dtypes, seed):
    """``{"w": [2, 2], "b": [2]}`` (the leaves ``zoo.WRAPPER_MASK`` names) in ``dtypes``,
    a dtype or one per leaf."""
    w_dtype, b_dtype = dtypes if isinstance(dtypes, tuple) else (dtypes, dtypes)
    rng = np.random.default_rng(seed)
    return {"w": leaf(rng, w_dtype, 2, 2), "b": leaf(rng, b_dtype, 2)}


def two_steps(tx, dtypes, update):
    params = tree(dtypes, 0)
    state = tx.init(params)
    for seed in (1, 2):
        updates, state = update(tree(dtypes, seed), state, params)
        params = gtx.apply_updates(params, updates)
    return [np.asarray(x) for x in jax.tree.leaves((params, state))]


def assert_bitwise_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(a, e)


NAMES = zoo.ALL + list(zoo.WRAPPERS) + list(EXTRA)
REAL_ONLY = {"rprop"}  # the sign of a complex number is undefined


@pytest.mark.parametrize("name", NAMES)
def test_strict_dtype_promotion_gives_the_default_numbers(name):
    # gradtx computes bfloat16 leaves in float32 (compute_dtype): under strict promotion
    # jnp.promote_types(bfloat16, float32) itself raised, and so did every optimizer; a
    # float32 injected hyperparameter times complex64 moments raised too. Optax runs
    # only sgd (with momentum) and adadelta on complex64 under strict promotion.
    dtypes = (jnp.bfloat16, jnp.float16 if name in REAL_ONLY else jnp.complex64)
    tx = build(name)

    @jax.jit
    def both(params, gradients):
        # both runs in one program (one compilation): the promotion rules apply where
        # each is traced; identical operations give identical numbers, others compare
        runs = []
        for promotion in ("standard", "strict"):
            with jax.numpy_dtype_promotion(promotion):
                p, state = params, tx.init(params)
                for g in gradients:
                    updates, state = tx.update(g, state, p)
                    p = gtx.apply_updates(p, updates)
            runs.append(jax.tree.leaves((p, state)))
        return runs

    expected, actual = both(tree(dtypes, 0), [tree(dtypes, seed) for seed in (1, 2)])
    assert_bitwise_equal([np.asarray(x) for x in actual], [np.asarray(x) for x in expected])


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "lookahead", "torch_clip_grad_norm"])
def test_strict_dtype_promotion_eager_float16_update(name):
    # the un-jitted update (per-leaf kernels compiled on the second sight: three steps)
    tx = build(name)
    expected = two_steps(tx, jnp.float16, jax.jit(tx.update))
    with jax.numpy_dtype_promotion("strict"):
        actual = two_steps(tx, jnp.float16, tx.update)
        actual_again = two_steps(tx, jnp.float16, tx.update)
    assert_bitwise_equal(actual, expected)
    assert_bitwise_equal(actual_again, expected)


def test_strict_dtype_promotion_with_injected_hyperparameters_set_in_the_state():
    tx = zoo.make("sgd_momentum", 0.1)
    params = tree(jnp.bfloat16, 0)
    with jax.numpy_dtype_promotion("strict"):
        state = gtx.set_hyperparams(tx.init(params), learning_rate=0.05, momentum=0.5)
        updates, _ = jax.jit(tx.update)(tree(jnp.bfloat16, 1), state, params)
    state = gtx.set_hyperparams(tx.init(params), learning_rate=0.05, momentum=0.5)
    expected, _ = jax.jit(tx.update)(tree(jnp.bfloat16, 1), state, params)
    assert_bitwise_equal(jax.tree.leaves(updates), jax.tree.leaves(expected))


@pytest.mark.parametrize("schedule", ["warmup_cosine_decay", "sgdr", "one_cycle"])
@pytest.mark.parametrize("step_dtype", [jnp.int32, np.int64])
def test_schedules_under_strict_promotion(schedule, step_dtype):
    fn = {
        "warmup_cosine_decay": gtx.schedules.warmup_cosine_decay(0.0, 0.1, 2, 10),
        "sgdr": gtx.schedules.sgdr(0.1, 3, 1.5),
        "one_cycle": gtx.schedules.one_cycle(10, 0.1),
    }[schedule]
    steps = [step_dtype(t) for t in (0, 1, 5, 20)]
    expected = [np.asarray(fn(t)) for t in steps]
    with jax.numpy_dtype_promotion("strict"):
        actual = [np.asarray(fn(t)) for t in steps]
    assert_bitwise_equal(actual, expected)


def test_rank_promotion_raise_over_every_wrapper():
    # per-leaf state against leaves of other ranks, flatten's offsets, block-wise
    # quantization and per-axis norms must broadcast only scalars
    names = ["flatten_offsets", "partition", "multi_steps", "lookahead", "max_norm"]
    txs = [build(n) for n in names] + [
        gtx.quantized_state(gtx.adam(0.1), block_size=3, min_size=2),
        gtx.max_norm(1.0, axis=(0, 1), mask=zoo.WRAPPER_MASK),
    ]
    tx = gtx.chain(*txs)
    with jax.numpy_rank_promotion("raise"):
        leaves = two_steps(tx, jnp.float32, jax.jit(tx.update))
    assert all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")


@pytest.mark.parametrize("precision", ["bfloat16", "highest"])
def test_matmul_precision_does_not_change_norms_or_updates(precision):
    # gradtx's reductions are sums, never dot products whose precision the flag lowers
    tx = gtx.chain(gtx.clip_by_global_norm(0.5), gtx.swats(0.1, switch_tol=1.0))
    expected = two_steps(tx, jnp.float32, jax.jit(tx.update))
    with jax.default_matmul_precision(precision):
        actual = two_steps(tx, jnp.float32, jax.jit(tx.update))
    assert_bitwise_equal(actual, expected)


@pytest.mark.parametrize(
    "name",
    ["scale_by_adam", "scale_by_nadam_schedule", "scale_by_radam", "swats"],
)
def test_a_float64_b1_array_under_x64_widens_the_first_moment_as_promotion_did(name, x64):
    # b1 * m + (1 - b1) * g with a float64 b1 and float32 moments is float64 arithmetic
    # (standard promotion), rounded once to the float32 moment; casting b1 down to
    # float32 first made (1 - 0.9f) * g, up to 3 ulps off
    del x64
    b1 = jnp.asarray(0.9, jnp.float64)
    tx = gtx.swats(0.1, b1=b1) if name == "swats" else getattr(gtx, name)(b1=b1)
    g = np.asarray([1.0, -2.0, 3.0, 0.3, 1e-3], np.float32)
    params = jnp.zeros(5, jnp.float32)
    _, state = jax.jit(tx.update)(jnp.asarray(g), tx.init(params), params)
    expected = ((1 - np.float64(0.9)) * g.astype(np.float64)).astype(np.float32)
    assert state.mu.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(state.mu), expected)


# Each built with its hyperparameters as given: Python floats (the reference), NumPy
# scalars (np.float64 is a Python float subclass that JAX types strongly, as an array) or
# injected (float32 arrays in the state).
TYPED_HYPERPARAMETERS = {
    "scale": lambda h: gtx.scale(h(-0.5)),
    "trace": lambda h: gtx.trace(h(0.9)),
    "ema": lambda h: gtx.ema(h(0.9)),
    "scale_by_rms": lambda h: gtx.scale_by_rms(h(0.9)),
    "clip_by_global_norm": lambda h: gtx.clip_by_global_norm(h(0.5)),
    "add_l1": lambda h: gtx.add_l1(h(0.01)),
    "max_norm": lambda h: gtx.max_norm(h(1.0)),
    "add_decayed_weights": lambda h: gtx.add_decayed_weights(h(0.1)),
    "add_decoupled_weight_decay": lambda h: gtx.add_decoupled_weight_decay(h(0.1), h(0.5)),
    "lookahead": lambda h: gtx.lookahead(gtx.scale(h(-0.5)), 1, h(0.5)),
    "scale_by_adam": lambda h: gtx.scale_by_adam(h(0.9), h(0.99), h(1e-3), h(1e-8)),
    "scale_by_radam": lambda h: gtx.scale_by_radam(h(0.9), h(0.99), h(1e-3)),
    "scale_by_nadam_schedule": lambda h: gtx.scale_by_nadam_schedule(h(0.9), h(0.99), h(1e-3)),
    "swats": lambda h: gtx.swats(h(0.1), b1=h(0.9), b2=h(0.99), eps=h(1e-3)),
}
INJECTED = {
    "clip_by_global_norm": lambda: gtx.schedule_injection(gtx.clip_by_global_norm)(0.5),
    "add_l1": lambda: gtx.schedule_injection(gtx.add_l1)(0.01),
    "add_decoupled_weight_decay": lambda: gtx.schedule_injection(gtx.add_decoupled_weight_decay)(
        0.1, 0.5
    ),
    "lookahead": lambda: gtx.schedule_injection(gtx.lookahead)(gtx.scale(-0.5), 1, 0.5),
}


@pytest.mark.parametrize(
    ("x64_on", "names"),
    [(False, sorted(TYPED_HYPERPARAMETERS)), (True, ["scale_by_adam", "trace", "swats"])],
    ids=["complex64", "x64_float32"],
)
def test_numpy_scalar_and_injected_hyperparameters_under_strict_promotion(x64_on, names):
    """np.float64 hyperparameters reached the leaf arithmetic as strongly typed float64
    (a float32 or complex64 leaf times float64 or float32 under strict promotion: a
    TypePromotionError in 13 of these 14 transforms; under x64 and standard promotion a
    widened product where a Python float gives the leaf's precision), and injected
    float32 hyperparameters met complex64 leaves uncast in clip_by_global_norm, add_l1,
    add_decoupled_weight_decay and lookahead. Now both give the Python floats' numbers
    under strict promotion: jitted bit for bit, and eagerly (an update of a fresh state,
    op by op or in the eager kernels, within float32 rounding)."""
    with jax.enable_x64(x64_on):
        dtypes = jnp.float32 if x64_on else jnp.complex64

        def runs(params, gradients, hyperparameter, injected):
            out = []
            for name in names:
                if injected:  # float32 values: 0.1 only where float32 is the compute dtype
                    if name not in INJECTED or x64_on:
                        continue
                    tx = INJECTED[name]()
                else:
                    tx = TYPED_HYPERPARAMETERS[name](hyperparameter)
                p, state = params, tx.init(params)
                for g in gradients:
                    updates, state = tx.update(g, state, p)
                    p = gtx.apply_updates(p, updates)
                out.append(jax.tree.leaves(p))
            return out

        @jax.jit
        def all_runs(params, gradients):
            expected = runs(params, gradients, float, injected=False)
            with jax.numpy_dtype_promotion("strict"):
                actual = runs(params, gradients, np.float64, injected=False)
                injected = runs(params, gradients, None, injected=True)
            return expected, actual, injected

        params, gradients = tree(dtypes, 0), [tree(dtypes, seed) for seed in (1, 2)]
        expected, actual, injected = all_runs(params, gradients)
        for a, e in zip(actual, expected, strict=True):
            assert_bitwise_equal([np.asarray(x) for x in a], [np.asarray(x) for x in e])
        chosen = [n for n in names if n in INJECTED and not x64_on]
        for name, a in zip(chosen, injected, strict=True):
            e = expected[names.index(name)]
            assert_bitwise_equal([np.asarray(x) for x in a], [np.asarray(x) for x in e])
        for name in names[:2]:
            tx = TYPED_HYPERPARAMETERS[name]
            reference = tx(float).update(gradients[0], tx(float).init(params), params)
            with jax.numpy_dtype_promotion("strict"):
                eager = tx(np.float64).update(gradients[0], tx(np.float64).init(params), params)
            # the second sight of a per-leaf function compiles its eager kernel, where XLA
            # may contract a * b + c: within float32 rounding of the op-by-op reference
            for a, e in zip(jax.tree.leaves(eager), jax.tree.leaves(reference), strict=True):
                np.testing.assert_allclose(a, e, rtol=1e-6, err_msg=name)


NUMPY_LEAVES = [
    *zoo.ALL,
    *("lookahead", "multi_steps", "masked", "max_norm", "swats", "local_gain"),
    *("torch_clip_grad_norm", "torch_nadam", "trace_dampened", "scale_by_adadelta"),
]
"""The named optimizers, wrappers that copy or select the params, and the transforms
whose arithmetic read a NumPy leaf's own dtype elsewhere (PyTorch's norm, NAdam's
schedule, a dampened trace, Adadelta's two moments)."""


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", NUMPY_LEAVES)
def test_numpy_float64_leaves_without_x64_are_float32_as_jax_makes_them(name, monkeypatch):
    """``np.ones(3)`` is float64, which JAX makes float32 unless x64 is on. gradtx read a
    NumPy leaf's own dtype and asked JAX for float64 arrays of it (117 of 128 runs of the
    optimizers, wrappers and PyTorch/Keras counterparts warned "Explicitly requested
    dtype float64 ... will be truncated", an error under ``-W error``; Optax: none), and
    its eager updates ran op by op at every call. Now an update of NumPy float64 leaves
    is that of their float32 JAX arrays, bit for bit and without a warning: eager (op by
    op, then in the eager kernels) and jitted."""

    def leaves(seed):  # NumPy's float64, as rng.normal gives them
        rng = np.random.default_rng(seed)
        return {"w": rng.normal(size=(2, 2)), "b": rng.normal(size=2)}

    def run(convert, update_of):
        monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
        tx = build(name)
        update = update_of(tx)
        params = convert(leaves(0))
        state = tx.init(params)
        for seed in (1, 2, 3):
            updates, state = update(convert(leaves(seed)), state, params)
            params = gtx.apply_updates(params, updates)
        return [np.asarray(x) for x in jax.tree.leaves((params, state))]

    def numpy(tree_):
        return tree_

    def float32(tree_):
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree_)

    eager = run(numpy, lambda tx: tx.update)
    assert eager_kernels.KERNELS.kernels, "NumPy leaves run in the eager kernels too"
    assert_bitwise_equal(eager, run(float32, lambda tx: tx.update))
    if name in ("adam", "sgd_momentum", "lookahead"):  # (init's zeros: every optimizer)
        jitted = run(numpy, lambda tx: jax.jit(tx.update))
        assert_bitwise_equal(jitted, run(float32, lambda tx: jax.jit(tx.update)))
