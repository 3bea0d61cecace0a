"""The fast paths give the numbers of the plain path, for every optimizer.

- Tracing the per-leaf function once per leaf signature (``tree.TRACE_LEAF_FUNCTION_ONCE``,
  on by default) compiles the same program: parameters and state are bitwise equal.
- ``gtx.flatten`` (every leaf in one vector, the opt-in bucketing) runs the same
  elementwise math in another order of leaves: equal within float32 rounding.
- Eager updates run each per-leaf function as one compiled kernel
  (``tree.COMPILE_EAGER_LEAF_FUNCTIONS``, on by default): equal to op-by-op execution
  within float32 rounding, compiled once and reused, keyed so that no constant of one
  closure leaks into another.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import threading
import time
import unittest.mock
import weakref

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx import eager_kernels, norms, tree
from gradtx.compat import keras as keras_compat
from gradtx.compat import torch as torch_compat
from tests import zoo
from tests.compilations import (
    compiled_step,
    count_compilations,
    count_dispatches,
    count_eager_operations,
    jaxprs_in_params,
)


def _params(rng):
    # several leaves of one shape (traced once), others of their own shapes
    return {
        "blocks": [jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(3)],
        "bias": jnp.asarray(rng.normal(size=5), jnp.float32),
        "scalar": jnp.asarray(rng.normal(), jnp.float32),
    }


def _run(tx, params, grads_seq):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    state = tx.init(params)
    for grads in grads_seq:
        params, state = step(params, state, grads)
    return params, state


def _grads(rng, params, steps=2):
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(steps)
    ]


@pytest.mark.parametrize("name", zoo.ALL)
def test_fast_paths_give_the_numbers_of_the_plain_path(name, rng, monkeypatch):
    params = _params(rng)
    grads_seq = _grads(rng, params)
    fast = _run(zoo.make(name, 1e-2), params, grads_seq)
    bucketed_params, _ = _run(gtx.flatten(zoo.make(name, 1e-2)), params, grads_seq)
    monkeypatch.setattr(tree, "TRACE_LEAF_FUNCTION_ONCE", False)
    plain = _run(zoo.make(name, 1e-2), params, grads_seq)
    # traced once per leaf signature: the same program, bitwise the same numbers
    assert jax.tree.structure(fast) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # flatten: the same elementwise math on one vector, equal to float32 rounding
    for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(bucketed_params), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_static_per_leaf_flags_still_reach_the_leaf_function(rng):
    # masks hand map_unzip a boolean per leaf; traced once per (signature, flag)
    params = _params(rng)
    mask = {"blocks": [True, False, True], "bias": False, "scalar": True}
    tx = gtx.chain(gtx.add_decayed_weights(0.5, mask=mask), gtx.scale(-1.0))
    grads = jax.tree.map(jnp.zeros_like, params)
    new_params, _ = _run(tx, params, [grads])
    np.testing.assert_array_equal(new_params["blocks"][1], params["blocks"][1])
    np.testing.assert_allclose(new_params["blocks"][0], 0.5 * params["blocks"][0], rtol=1e-6)
    np.testing.assert_allclose(new_params["scalar"], 0.5 * params["scalar"], rtol=1e-6)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def _inlined(eqn) -> bool:
    """Whether a ``jax.jit`` equation is inlined into its caller's program: up to jax
    0.10 ``inline=True`` leaves none in the jaxpr; jax 0.12 keeps one marked
    ``Inline.JAX_LATE`` (inlined as it is lowered: no call in the StableHLO)."""
    inline = eqn.params.get("inline", False)
    return getattr(inline, "value", inline) in (True, "jax_early", "jax_late")


def _nested_gradtx_calls(jaxpr) -> int:
    """The nested ``jax.jit`` calls of gradtx's functions in a jaxpr (``jnp.where`` is
    one of JAX's own), inside control flow too; inlined ones are no calls."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("pjit", "jit") and not _inlined(eqn):
            source = eqn.params["jaxpr"].jaxpr.debug_info.func_src_info
            count += os.path.dirname(gtx.__file__) in source
        for sub in jaxprs_in_params(eqn.params):
            count += _nested_gradtx_calls(sub)
    return count


@pytest.mark.parametrize("inline", [False, True], ids=["called", "inlined"])
def test_nested_functions_inlined_or_called_give_the_numbers_of_optax(inline, monkeypatch):
    """``tree.INLINE_NESTED_FUNCTIONS`` (on for jaxlib 0.5.3 to 0.8.1, whose XLA:CPU
    misorders a transposed compile-time array passed to a nested call) inlines the
    functions traced once, and the numbers stay: gradients of closed-over parameters
    and data are such arrays (there, called, Adam's update was 5.3 times Optax's)."""
    optax = pytest.importorskip("optax")
    if not inline and tree._jaxlib_folds_nested_operands_wrongly(jaxlib.__version__):
        pytest.skip(f"jaxlib {jaxlib.__version__} miscompiles the calls (why they are inlined)")
    monkeypatch.setattr(tree, "INLINE_NESTED_FUNCTIONS", inline)
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=(8, 2)))
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)) * 0.5), "b": jnp.zeros(2)}
    mask = {"w": True, "b": False}

    def loss(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    def steps(tx):  # everything closed over: the gradient's "w" is a transposed constant
        p, state = params, tx.init(params)
        for _ in range(2):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            p = optax.apply_updates(p, updates)
        return p

    def adamw(lib):
        return lib.adamw(0.125, b1=0.875, b2=0.9921875, weight_decay=0.5, mask=mask)

    cases = [  # gradtx's transform, the reference: Optax's jitted, or its own un-jitted run
        (adamw(gtx), lambda: jax.jit(functools.partial(steps, adamw(optax)))()),
        (
            gtx.flatten(gtx.adam(0.125, b1=0.875, b2=0.9921875)),
            lambda: jax.jit(lambda: steps(optax.adam(0.125, b1=0.875, b2=0.9921875)))(),
        ),
        (
            gtx.apply_if_finite(gtx.sgd(0.125, momentum=0.75), 2),
            lambda: jax.jit(lambda: steps(optax.apply_if_finite(optax.sgd(0.125, 0.75), 2)))(),
        ),
    ]
    eight_bits = gtx.quantized_state(adamw(gtx), block_size=2, min_size=2)
    cases.append((eight_bits, lambda: steps(eight_bits)))
    for i, (tx, reference) in enumerate(cases):
        run = functools.partial(steps, tx)
        calls = _nested_gradtx_calls(jax.make_jaxpr(run)().jaxpr)
        assert (calls == 0) == inline, calls
        for a, b in zip(jax.tree.leaves(jax.jit(run)()), jax.tree.leaves(reference()), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"case {i}")


def test_nested_functions_are_inlined_for_the_jaxlib_releases_that_miscompile_calls():
    affected = tree._jaxlib_folds_nested_operands_wrongly
    assert [affected(v) for v in ("0.4.36", "0.5.1", "0.5.2", "0.8.2", "0.10.2")] == [0] * 5
    assert all(map(affected, ("0.5.3", "0.6.0", "0.6.2", "0.7.2", "0.8.0", "0.8.1")))
    assert affected("0.7.1.dev20250801") and not affected("0.8.2rc1")


# --- eager updates: compiled per-leaf kernels (tree.COMPILE_EAGER_LEAF_FUNCTIONS) ---


@pytest.fixture
def fresh_kernels(monkeypatch):
    """An empty kernel cache, so a test sees its own compilations only."""
    kernels = eager_kernels.EagerKernels()
    monkeypatch.setattr(eager_kernels, "KERNELS", kernels)
    return kernels


def _run_eager(tx, params, grads_seq, state=None):
    state = tx.init(params) if state is None else state
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        params = gtx.apply_updates(params, updates)
    return params, state


def _eager_trajectory(tx, params, grads_seq):
    """``(updates, state)`` of each un-jitted update of ``tx`` over ``grads_seq``, the
    params moved by each."""
    state, out = tx.init(params), []
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        out.append((updates, state))
        params = gtx.apply_updates(params, updates)
    return out


def _assert_one_key_per_code(kernels):
    """An eager update's per-leaf code is keyed by its closure's non-array values: code
    that gets a fresh object there at every update compiles nothing after
    ``max_keys_per_code`` tries and runs op by op (``ema_params`` and ``average_params``
    did, with a new weight function per update: 64 -> 8.7 ms on 300 leaves, and 1.9e-6
    off the jitted step, where the kernels give its numbers). Every optimizer and wrapper
    of the zoo keys each per-leaf code once over its updates."""
    keys = {
        f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}": n
        for code, n in kernels.keys_per_code.items()
        if hasattr(code, "co_filename")
    }
    assert keys and all(n == 1 for n in keys.values()), keys


@pytest.mark.parametrize("name", zoo.ALL)
def test_eager_kernels_give_the_numbers_of_op_by_op_execution(
    name, rng, monkeypatch, fresh_kernels
):
    params = _params(rng)
    # step 1 runs op by op, step 2 compiles the kernels, steps 3-4 reuse them
    grads_seq = _grads(rng, params, steps=4)
    tx = zoo.make(name, 1e-2)
    fast = _run_eager(tx, params, grads_seq[:1])
    with count_compilations() as at_step_2:
        fast = _run_eager(tx, fast[0], grads_seq[1:2], fast[1])
    with count_compilations() as at_steps_3_4:
        fast = _run_eager(tx, fast[0], grads_seq[2:], fast[1])
    assert fresh_kernels.kernels and at_step_2, "no per-leaf kernel was compiled"
    assert not at_steps_3_4, "the kernels were compiled again"
    _assert_one_key_per_code(fresh_kernels)
    monkeypatch.setattr(tree, "COMPILE_EAGER_LEAF_FUNCTIONS", False)
    plain = _run_eager(zoo.make(name, 1e-2), params, grads_seq)
    assert jax.tree.structure(fast) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        # XLA fuses a kernel's operations (and may contract a*b+c), so float32 rounding
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


# one optimizer per block that folds (adamaxw and nadamw repeat adamw's weight decay;
# sgd has no block before its learning rate)
_FOLDED = {
    **{
        name: functools.partial(zoo.make, name, 1e-2)
        for name in zoo.ALL
        if name not in ("sgd", "adamaxw", "nadamw")
    },
    "compat.torch.adamw": lambda: gtx.compat.torch.adamw(lr=1e-2),
    "compat.torch.sgd, momentum": lambda: gtx.compat.torch.sgd(lr=1e-2, momentum=0.9),
    "compat.torch.rmsprop, centered": lambda: gtx.compat.torch.rmsprop(lr=1e-2, centered=True),
    "compat.keras.adam": lambda: gtx.compat.keras.adam(1e-2),
    "compat.torch.adam, L2 weight decay": lambda: gtx.compat.torch.adam(lr=1e-2, weight_decay=0.1),
    "compat.keras.nadam": lambda: gtx.compat.keras.nadam(1e-2),
    "clip_by_global_norm, adamw, schedule": lambda: gtx.chain(
        gtx.clip_by_global_norm(1.0), gtx.adamw(gtx.schedules.cosine_decay(1e-2, 10))
    ),
    "named_chain(adam, lr)": lambda: gtx.named_chain(
        ("adam", gtx.scale_by_adam()), ("lr", gtx.scale_by_learning_rate(1e-2))
    ),
    "chain(trace, scale)": lambda: gtx.chain(gtx.trace(0.9, nesterov=True), gtx.scale(-0.5)),
    # elementwise blocks before and after the block they fold into (tree.elementwise)
    "adamw, masked decay": lambda: gtx.adamw(
        1e-2, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
    "chain(clip_by_global_norm, add_decayed_weights, scale)": lambda: gtx.chain(
        gtx.clip_by_global_norm(0.5), gtx.add_decayed_weights(0.1), gtx.scale(-0.1)
    ),
    "chain(trace, add_decayed_weights(schedule), scale)": lambda: gtx.chain(
        gtx.trace(0.9), gtx.add_decayed_weights(lambda t: 0.1 / (1 + t)), gtx.scale(-0.1)
    ),
    "chain(scale_by_adam, injected add_decayed_weights, scale)": lambda: gtx.chain(
        gtx.scale_by_adam(),
        gtx.schedule_injection(gtx.add_decayed_weights)(weight_decay=lambda t: 0.1 / (1 + t)),
        gtx.scale(-1e-2),
    ),
    # where XLA would compute two blocks in one kernel otherwise than in two (a product
    # read by a sum: fused multiply-adds; two products by scalars: reassociated), the
    # chain keeps them apart: each of these had 25-40% of its elements an ulp off when
    # folded regardless (see tree.updates_from_first_map)
    "chain(clip_by_global_norm, trace, scale)": lambda: gtx.chain(
        gtx.clip_by_global_norm(0.5), gtx.trace(0.9), gtx.scale(-0.1)
    ),
    "chain(ema debiased, add_decayed_weights, scale)": lambda: gtx.chain(
        gtx.ema(0.9), gtx.add_decayed_weights(0.1), gtx.scale(-0.1)
    ),
    "chain(scale_by_rss, add_decayed_weights, scale)": lambda: gtx.chain(
        gtx.scale_by_rss(), gtx.add_decayed_weights(0.1), gtx.scale(-0.1)
    ),
    "chain(scale, scale_by_adam, scale, scale)": lambda: gtx.chain(
        gtx.scale(0.3), gtx.scale_by_adam(), gtx.scale(0.3), gtx.scale(-0.1)
    ),
    # scalings whose step size is a schedule's value (tree.scaling_from_state)
    # (gtx.adam's schedule is injected into the whole optimizer: a constant scaling there)
    "chain(scale_by_adam, scale_by_learning_rate(schedule))": lambda: gtx.chain(
        gtx.scale_by_adam(),
        gtx.scale_by_learning_rate(gtx.schedules.warmup_cosine_decay(0.0, 1e-2, 2, 10)),
    ),
    "chain(trace, scale_by_schedule)": lambda: gtx.chain(
        gtx.trace(0.9), gtx.scale_by_schedule(gtx.schedules.exponential_decay(-0.5, 1, 0.5))
    ),
    "chain(injected clip_by_global_norm, scale_by_adam, scale)": lambda: gtx.chain(
        gtx.schedule_injection(gtx.clip_by_global_norm)(max_norm=lambda t: 1.0 / (1 + t)),
        gtx.scale_by_adam(),
        gtx.scale(-1e-2),
    ),
    # a block reading half-precision state after a function before it: its own pass
    # (one kernel gave ~4% of the elements an ulp apart)
    "chain(add_decayed_weights, scale_by_rms(nu_dtype=bfloat16), scale)": lambda: gtx.chain(
        gtx.add_decayed_weights(0.1), gtx.scale_by_rms(nu_dtype=jnp.bfloat16), gtx.scale(-0.1)
    ),
    "chain(clip_by_global_norm, scale_by_adam(bfloat16 moments), scale)": lambda: gtx.chain(
        gtx.clip_by_global_norm(0.5),
        gtx.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        gtx.scale(-0.1),
    ),
    "the issue's chain (an injected learning rate)": lambda: gtx.chain(
        gtx.clip_by_global_norm(1.0),
        gtx.scale_by_adam(),
        gtx.add_decayed_weights(1e-4),
        gtx.schedule_injection(gtx.scale_by_learning_rate)(
            learning_rate=gtx.schedules.warmup_cosine_decay(0.0, 1e-2, 2, 10)
        ),
    ),
}


_ISSUE_CHAIN = "the issue's chain (an injected learning rate)"


@pytest.mark.parametrize(
    "name, dtype",
    [(name, "float32") for name in sorted(_FOLDED)]
    + [
        (name, dtype)
        for name in ("adamw", "sgd_nesterov", "chain(trace, scale_by_schedule)")
        for dtype in ("float64", "bfloat16 and float32")
    ]
    # (complex updates fold weight decay after a block, not before it)
    + [(name, "complex64") for name in ("compat.torch.adam, L2 weight decay", "adamw")],
)
def test_eager_elementwise_blocks_folded_into_the_block_next_to_them_give_the_same_bits(
    name, dtype, rng, monkeypatch, fresh_kernels
):
    """Un-jitted, a chain runs its elementwise blocks (the learning rate of every named
    optimizer, weight decay, clipping by the global norm) inside the per-leaf kernels of
    the block next to them: one pass over the leaves instead of several. The numbers are
    those of the separate passes bit for bit, at the first update (op by op), the second
    (which compiles) and after; half-precision leaves are not folded (their update is
    rounded between the blocks, which XLA may skip inside one kernel), so a tree holding
    one is not either."""
    params = _params(rng)
    if dtype == "bfloat16 and float32":
        params["half"] = jnp.asarray(rng.normal(size=4), jnp.bfloat16)
    context = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with context:
        if dtype in ("float64", "complex64"):
            params = jax.tree.map(lambda p: p.astype(dtype), params)
        grads_seq = _grads(rng, params, steps=4)
        if dtype == "complex64":  # imaginary parts too
            grads_seq = [
                jax.tree.map(lambda g: g + 1j * jnp.flip(g.real).astype(g.dtype), grads)
                for grads in grads_seq
            ]
        folded = _run_eager(_FOLDED[name](), params, grads_seq)
        monkeypatch.setattr(tree, "FOLD_EAGER_SCALING", False)
        # an empty cache again: the first update runs op by op here too
        monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
        plain = _run_eager(_FOLDED[name](), params, grads_seq)
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "name, blocks_folded",
    [
        ("adam", 1),
        ("adamw", 2),  # weight decay and learning rate
        ("sgd_momentum", 1),
        ("rmsprop", 1),
        ("compat.keras.adam", 1),
        ("compat.torch.adamw", 2),
        ("chain(scale_by_adam, scale_by_learning_rate(schedule))", 1),
        # clipping's product, weight decay and the injected learning rate
        (_ISSUE_CHAIN, 3),
        ("compat.torch.adam, L2 weight decay", 2),  # the decay before Adam, the rate after
    ],
)
def test_an_eager_chain_runs_its_elementwise_blocks_in_the_kernels_of_the_block_next_to_them(
    name, blocks_folded, rng, monkeypatch, fresh_kernels
):
    """On 64 float32 leaves (32 a kernel call) an un-jitted update of a named optimizer
    makes no pass of its own for the learning rate, 2 kernel calls fewer (a pass added
    one output array per leaf: 36.9 -> 27.9 ms for gtx.adam on 1,000 leaves, 0.15x ->
    0.11x Optax's eager update); nor for a scaling by a schedule's value
    (``scale_by_schedule``, ``scale_by_learning_rate`` of a schedule, injected or not),
    nor for weight decay (after Adam, AdamW, or before it, L2), nor for clipping's
    product by its factor (before Adam)."""
    params = {f"w{i:02d}": jnp.full(8, i / 64, jnp.float32) for i in range(64)}
    grads_seq = _grads(rng, params, steps=3)

    def dispatches():
        tx = _FOLDED[name]()
        state = tx.init(params)
        for grads in grads_seq[:2]:  # the kernels compile at the second sight
            state = tx.update(grads, state, params)[1]
        with count_dispatches() as dispatched:
            tx.update(grads_seq[2], state, params)
        return dispatched[0]

    folded = dispatches()
    monkeypatch.setattr(tree, "FOLD_EAGER_SCALING", False)
    monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
    plain = dispatches()
    assert plain - folded == 2 * blocks_folded, (plain, folded)


# Blocks after clipping by the global norm: True where the block takes the clipping's
# product into its kernels (``takes_product_before``: it reads its updates in products
# only), False where it keeps the product a pass of its own (a sum reads its updates:
# one kernel would contract the product into a fused multiply-add; or a quotient by a
# scalar: XLA may merge it with the product). Folded regardless, trace's and Adam's
# Nesterov term gave 7-38% of some update's elements an ulp off here; RAdam's and the
# NAdam schedule's Nesterov terms (quotients by scalars too) did not on this data and
# stay apart by the rule.
_AFTER_CLIPPING = {
    "scale_by_adam": (gtx.scale_by_adam, True),
    "scale_by_adam(b1=0, eps_root)": (lambda: gtx.scale_by_adam(b1=0.0, eps_root=1e-8), True),
    "amsgrad_max": (gtx.amsgrad_max, True),
    "scale_by_adamax(eps_in_max)": (lambda: gtx.scale_by_adamax(eps_in_max=True), True),
    "scale_by_rms(centered)": (lambda: gtx.scale_by_rms(centered=True), True),
    "scale_by_rms(eps_in_sqrt=False)": (lambda: gtx.scale_by_rms(eps_in_sqrt=False), True),
    "scale_by_rss": (gtx.scale_by_rss, True),
    "scale_by_adadelta": (gtx.scale_by_adadelta, True),
    "scale_by_rprop": (lambda: gtx.scale_by_rprop(1e-2), True),
    "ema": (lambda: gtx.ema(0.9), True),
    "scale_by_radam": (gtx.scale_by_radam, True),
    "scale_by_adam(nesterov)": (lambda: gtx.scale_by_adam(nesterov=True), False),
    "scale_by_radam(nesterov)": (lambda: gtx.scale_by_radam(nesterov=True), False),
    "scale_by_nadam_schedule": (gtx.scale_by_nadam_schedule, False),
    "trace": (lambda: gtx.trace(0.9), False),
    "trace(nesterov)": (lambda: gtx.trace(0.9, nesterov=True), False),
    "add_decayed_weights": (lambda: gtx.add_decayed_weights(0.1), False),
}


@pytest.mark.parametrize(
    "name, dtype",
    [(name, "float32") for name in _AFTER_CLIPPING]
    + [(name, "float64") for name in ("scale_by_adam", "scale_by_rms(centered)", "trace")],
)
def test_clipping_runs_in_the_kernels_of_a_block_that_reads_its_updates_in_products(
    name, dtype, monkeypatch, fresh_kernels
):
    """Un-jitted, ``clip_by_global_norm`` before a block that reads its updates only in
    products (Adam's moments, RMSprop's, ...) multiplies them by its factor inside that
    block's kernels: a kernel call fewer for each of the block's (one output array a
    leaf fewer:
    the issue's chain on 1,000 leaves 36.8 -> 28.6 ms), and the bits of the separate
    passes, at the first update (op by op), the second (compiling) and after; before a
    block that adds or divides them otherwise, the product stays a pass of its own."""
    make, folds = _AFTER_CLIPPING[name]
    context = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with context:
        # a kernel call of 32 leaves and one of one (XLA compiles them otherwise): folded,
        # the cases kept apart differ on 11 (Adam's Nesterov term) to 764 elements of
        # these updates and states (with four leaves of one, 52 to 862, in no more cases)
        params, grads_seq = _review_data(1, [(8,)] * 32 + [(7, 3)], 4)
        params, grads_seq = jax.tree.map(lambda x: x.astype(dtype), (params, grads_seq))

        def run():
            tx = gtx.chain(gtx.clip_by_global_norm(0.5), make(), gtx.scale(-0.1))
            state, out, p = tx.init(params), [], params
            for step, grads in enumerate(grads_seq):
                with count_dispatches() if step == 3 else contextlib.nullcontext([0]) as n:
                    updates, state = tx.update(grads, state, p)
                out.append((updates, state))
                p = gtx.apply_updates(p, updates)
            return out, n[0]

        folded, folded_calls = run()
        monkeypatch.setattr(tree, "FOLD_EAGER_SCALING", False)
        monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
        plain, plain_calls = run()
    # (the learning rate after the block folds in both: 2 calls)
    assert plain_calls - folded_calls == (4 if folds else 2), (plain_calls, folded_calls)
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_wrapper_made_with_functools_wraps_is_not_folded(fresh_kernels):
    """functools.wraps copies a function's attributes to its wrapper: a wrapper of the
    update of scale_by_... or of scale, which clips what the wrapped one returns, took
    its marks, and an eager chain scaled before the clip (-10 * 0.5 where -10 was
    clipped: 5x the step) or skipped the clip (-6 where the bound is 1)."""

    def clipped(inner):
        @functools.wraps(inner.update)
        def update(updates, state, params=None, **extra):
            updates, state = inner.update(updates, state, params, **extra)
            return jax.tree.map(lambda u: jnp.clip(u, -1.0, 1.0), updates), state

        return gtx.GradientTransformation(inner.init, update)

    g = np.array([0.5, -0.25, 3.0], np.float32)
    for tx, expected in [
        (gtx.chain(clipped(gtx.trace(0.5)), gtx.scale(-2.0)), lambda b: -2 * np.clip(b, -1, 1)),
        (gtx.chain(gtx.trace(0.5), clipped(gtx.scale(-2.0))), lambda b: np.clip(-2 * b, -1, 1)),
    ]:
        state, buffer = tx.init(jnp.zeros(3)), np.zeros(3, np.float32)
        for _ in range(3):  # op by op, then compiled at the second sight, then compiled
            updates, state = tx.update(jnp.asarray(g), state)
            buffer = g + 0.5 * buffer  # trace: b <- g + decay * b, exact here
            np.testing.assert_array_equal(np.asarray(updates), expected(buffer))


def test_a_fold_is_taken_by_the_blocks_own_map_of_its_updates_only(fresh_kernels):
    """The chain asks the first map over the block's own updates: a map over another
    tree run inside the block (user code, a mask function running another transform)
    leaves the request alone, and a marked block that makes no map over its updates
    runs with the blocks next to it one by one: the same numbers either way, at the
    first update (op by op), the second (compiling) and the third."""

    def block(map_first):
        def update(updates, state, params=None, **extra):
            if map_first:  # a map over a copy first: not the block's updates
                tree.map_unzip(jnp.abs, jax.tree.map(jnp.copy, updates), outputs=1,
                               updates_first=True)  # fmt: skip
                (signs,) = tree.map_unzip(jnp.sign, updates, outputs=1, updates_first=True)
            else:  # no map_unzip at all: its mark is wrong, the chain copes
                signs = jax.tree.map(jnp.sign, updates)
            return signs, state

        # (a sign: no product is returned)
        marked = tree.updates_from_first_map(update, returns_product=False)
        return gtx.GradientTransformation(lambda params: gtx.EmptyState(), marked)

    g = {"a": jnp.asarray([3.0, -0.5, 0.0]), "b": jnp.asarray([-2.0])}
    p = {"a": jnp.asarray([1.0, 2.0, -4.0]), "b": jnp.asarray([0.5])}
    for map_first in (True, False):
        tx = gtx.chain(
            gtx.clip_by_global_norm(1.0),
            block(map_first),
            gtx.add_decayed_weights(0.25),
            gtx.scale(-2.0),
        )
        state = tx.init(p)
        for _ in range(3):
            updates, state = tx.update(g, state, p)
            for key in g:
                expected = -2.0 * (np.sign(np.asarray(g[key])) + 0.25 * np.asarray(p[key]))
                np.testing.assert_array_equal(np.asarray(updates[key]), expected)


def _review_data(seed, shapes, steps):
    rng = np.random.default_rng(seed)
    params = {f"w{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}
    grads_seq = [
        jax.tree.map(lambda p: jnp.asarray(3 * rng.normal(size=p.shape), p.dtype), params)
        for _ in range(steps)
    ]
    return params, grads_seq


# A helper's review of the fold (each case differed by 7-58% of some update's elements):
# quotients XLA computes as products (x * rsqrt(y): RMSprop's eps inside the root, Adam's
# eps of 0) read by weight decay's sum; a clipped update in Adam's Nesterov term (its
# products by scalars merged); a mask splitting the leaves of one shape (a kernel call
# of one leaf compiles otherwise than one of two); forward-mode derivatives with respect
# to the params (the joined tangents' products by scalars merged)
_REVIEWED = {
    "rmsprop's preconditioner, weight decay": (
        lambda: gtx.chain(gtx.scale_by_rms(), gtx.add_decayed_weights(0.1), gtx.scale(-0.01)),
        1, [(4, 3), (5,)], 4,
    ),
    "adam with eps=0, weight decay": (
        lambda: gtx.chain(
            gtx.scale_by_adam(eps=0.0), gtx.add_decayed_weights(0.1), gtx.scale(-0.01)
        ),
        1, [(4, 3), (5,)], 4,
    ),
    "clipping before nesterov adam": (
        lambda: gtx.chain(
            gtx.clip_by_global_norm(0.5), gtx.scale_by_adam(nesterov=True), gtx.scale(-0.1)
        ),
        3, [(7, 1), (7, 2), (7, 3), (7, 4)], 5,
    ),
    "adamw with a mask splitting one shape's leaves": (
        lambda: gtx.adamw(1e-2, weight_decay=0.1, mask={"w0": True, "w1": False}),
        1, [(4, 3), (4, 3)], 4,
    ),
    # a second review: weight decay before Adam's Nesterov term (its quotients by scalars
    # made products, the sum repeated in them); an eps that float32 rounds to 0
    "weight decay before nesterov adam": (
        lambda: gtx.chain(gtx.add_decayed_weights(0.1), gtx.scale_by_adam(nesterov=True)),
        0, [(4, 3), (5,)], 4,
    ),
    "adam with eps=1e-50, weight decay": (
        lambda: gtx.chain(
            gtx.scale_by_adam(eps=1e-50), gtx.add_decayed_weights(0.1), gtx.scale(-0.01)
        ),
        0, [(4, 3), (5,)], 4,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", [*_REVIEWED, "jvp over the params", "jvp over the decay"])
def test_chains_a_review_found_folded_otherwise_give_the_bits_of_the_separate_passes(
    name, monkeypatch
):
    """The chain keeps the blocks apart (or the map runs them as their own passes) where
    one kernel computes otherwise than two: the bits of the separate passes at the first
    update (op by op), the second (compiling) and after."""

    def run():
        monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
        if name == "jvp over the decay":  # a tracer in a closure, not among the leaves
            params, grads_seq = _review_data(0, [(7, 1), (7, 2), (7, 3), (7, 4)], 3)

            def build(wd):
                return gtx.chain(gtx.add_decayed_weights(wd), gtx.scale_by_adam(), gtx.scale(-0.01))

            state, out = build(0.1).init(params), []
            for g in grads_seq:
                step = lambda wd, g=g, s=state: build(wd).update(g, s, params)  # noqa: E731
                (updates, state), d_updates = jax.jvp(step, (0.1,), (1.0,))
                out.append((updates, d_updates))
            return out
        if name == "jvp over the params":
            params, grads_seq = _review_data(0, [(4, 3), (5,)], 3)
            tx = gtx.chain(gtx.scale_by_adam(), gtx.add_decayed_weights(0.1), gtx.scale(-0.1))
            state = tx.init(params)
            return [
                jax.jvp(lambda p, g=g: tx.update(g, state, p)[0], (params,), (params,))
                for g in grads_seq
            ]
        make, seed, shapes, steps = _REVIEWED[name]
        params, grads_seq = _review_data(seed, shapes, steps)
        return _eager_trajectory(make(), params, grads_seq)

    folded = run()
    monkeypatch.setattr(tree, "FOLD_EAGER_SCALING", False)
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(run()), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "name, make",
    [
        (
            "weight decay after it",
            lambda: gtx.chain(
                gtx.scale_by_nadam_schedule(), gtx.add_decayed_weights(0.1), gtx.scale(-0.01)
            ),
        ),
        (
            "compat.torch.nadam, L2 weight decay",
            lambda: torch_compat.nadam(lr=1e-2, weight_decay=0.1),
        ),
        (
            "compat.torch.nadam, decoupled weight decay",
            lambda: torch_compat.nadam(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
        ),
    ],
)
def test_the_nadam_schedule_joins_no_weight_decay_in_compiled_kernels(name, make, monkeypatch):
    """A fuzz of random chains (folded against separate passes, every kernel compiled by
    a first run) found the NAdam schedule's blocks joined with weight decay's sum, before
    or after them, 1-3% of the elements an ulp off the separate passes: its momentum term
    is a sum of two products, and which one LLVM contracts into a fused multiply-add
    changed with the sum joined. PyTorch's NAdam with weight decay is such a chain. The
    compiled kernels give the bits of the separate passes."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=64) * 10.0, jnp.float32)}
    grads_seq = [
        {"w": jnp.asarray(rng.normal(size=64) * 10.0**k, jnp.float32)} for k in (2, -1, 0, 1)
    ]

    def run():
        monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
        _run_eager(make(), params, grads_seq)  # compiles every kernel
        return _eager_trajectory(make(), params, grads_seq)

    folded = run()
    monkeypatch.setattr(tree, "FOLD_EAGER_SCALING", False)
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(run()), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# The blocks a random chain is drawn from: every block whose per-leaf map others fold
# into (in the forms that mark it otherwise), named optimizers and PyTorch/Keras ones
# (chains themselves), and the elementwise blocks that fold (constant, scheduled,
# injected, masked)
def _warmup_cosine():
    return gtx.schedules.warmup_cosine_decay(0.0, 1e-2, 2, 10)


_CHAIN_BLOCKS = {
    "scale_by_adam": gtx.scale_by_adam,
    "scale_by_adam(nesterov)": lambda: gtx.scale_by_adam(nesterov=True),
    "scale_by_adam(eps=0)": lambda: gtx.scale_by_adam(eps=0.0),
    "scale_by_adam(b1=0, eps_root)": lambda: gtx.scale_by_adam(b1=0.0, eps_root=1e-8),
    "amsgrad_max": gtx.amsgrad_max,
    "scale_by_adamax(eps_in_max)": lambda: gtx.scale_by_adamax(eps_in_max=True),
    "scale_by_rms(centered)": lambda: gtx.scale_by_rms(centered=True),
    "scale_by_rms(eps_in_sqrt=False)": lambda: gtx.scale_by_rms(eps_in_sqrt=False),
    "scale_by_rss": gtx.scale_by_rss,
    "scale_by_adadelta": gtx.scale_by_adadelta,
    "scale_by_rprop": lambda: gtx.scale_by_rprop(1e-2),
    "ema": lambda: gtx.ema(0.9),
    "ema(debias=False)": lambda: gtx.ema(0.9, debias=False),
    "trace(nesterov)": lambda: gtx.trace(0.9, nesterov=True),
    "scale_by_radam(nesterov)": lambda: gtx.scale_by_radam(nesterov=True),
    "scale_by_nadam_schedule": gtx.scale_by_nadam_schedule,
    "scale_by_local_gain": gtx.scale_by_local_gain,
    "adamw": lambda: gtx.adamw(1e-2),
    "compat.torch.nadam, L2": lambda: torch_compat.nadam(lr=1e-2, weight_decay=0.1),
    "compat.keras.nadam": lambda: keras_compat.nadam(1e-2),
    "scale": lambda: gtx.scale(-0.3),
    "scale_by_learning_rate(schedule)": lambda: gtx.scale_by_learning_rate(_warmup_cosine()),
    "scale_by_schedule": lambda: gtx.scale_by_schedule(lambda t: 0.5 / (1 + t)),
    "add_decayed_weights": lambda: gtx.add_decayed_weights(0.1),
    "add_decayed_weights(schedule, mask)": lambda: gtx.add_decayed_weights(
        lambda t: 0.1 / (1 + t), mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
    "clip_by_global_norm": lambda: gtx.clip_by_global_norm(0.5),
    "clip": lambda: gtx.clip(0.3),
    "add_l1": lambda: gtx.add_l1(0.01),
    "injected scale_by_learning_rate": lambda: gtx.schedule_injection(gtx.scale_by_learning_rate)(
        learning_rate=_warmup_cosine()
    ),
    "injected clip_by_global_norm": lambda: gtx.schedule_injection(gtx.clip_by_global_norm)(
        max_norm=lambda t: 1.0 / (1 + t)
    ),
}
_FUZZ_EXAMPLES = int(os.environ.get("GRADTX_TESTS_FOLD_FUZZ_EXAMPLES", "8"))


@hypothesis.settings(max_examples=_FUZZ_EXAMPLES, deadline=None, derandomize=True)
@hypothesis.given(
    names=st.lists(st.sampled_from(sorted(_CHAIN_BLOCKS)), min_size=2, max_size=4),
    shapes=st.sampled_from([((4, 3), (5,), ()), ((7, 1), (7, 2), (7, 3)), ((33,), (2, 2, 2))]),
    x64=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_chains_folded_eagerly_give_the_bits_of_the_separate_passes(
    names, shapes, x64, seed
):
    """A chain of blocks drawn at random, folded (``tree.FOLD_EAGER_SCALING``) and as
    separate passes, each run once to compile every kernel and then compared: the same
    bits, updates and states, over four updates of gradients of magnitudes 1e-4 to 1e2.
    A fuzz of 1,100 such chains (this test with ``GRADTX_TESTS_FOLD_FUZZ_EXAMPLES`` set;
    CI runs a few) found the NAdam schedule joined with weight decay
    (``test_the_nadam_schedule_joins_no_weight_decay_in_compiled_kernels``)."""
    rng = np.random.default_rng(seed)
    dtype = jnp.float64 if x64 else jnp.float32
    with jax.enable_x64(x64):
        params = {
            f"w{i}": jnp.asarray(rng.normal(size=shape) * 10.0 ** rng.integers(-2, 2), dtype)
            for i, shape in enumerate(shapes)
        }
        grads_seq = [
            jax.tree.map(
                lambda p: jnp.asarray(
                    rng.normal(size=p.shape) * 10.0 ** rng.integers(-4, 3), p.dtype
                ),
                params,
            )
            for _ in range(4)
        ]

        def run():
            kernels = eager_kernels.EagerKernels()
            with unittest.mock.patch.object(eager_kernels, "KERNELS", kernels):
                _run_eager(gtx.chain(*(_CHAIN_BLOCKS[n]() for n in names)), params, grads_seq)
                tx = gtx.chain(*(_CHAIN_BLOCKS[n]() for n in names))
                return _eager_trajectory(tx, params, grads_seq)

        folded = run()
        with unittest.mock.patch.object(tree, "FOLD_EAGER_SCALING", False):
            plain = run()
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_folded_schedule_is_evaluated_once_an_update_and_compiles_once(fresh_kernels):
    """A schedule is evaluated once per eager update, folded or not (the chain asked an
    injected optimizer that is no elementwise block for its function, evaluating its
    schedules twice), and a schedule's Python-float value, new at every update, is a
    kernel argument: the joined kernel compiles once (a key per value never compiled,
    and Adam ran op by op: 4.7 -> 28.6 ms an update on 100 leaves)."""
    calls = []

    def schedule(count):
        calls.append(count)
        return 1e-3 * 0.99 ** int(count)

    params = {f"w{i}": jnp.full(8, i / 8, jnp.float32) for i in range(4)}
    for tx in [
        gtx.chain(gtx.add_decayed_weights(1e-4), gtx.adam(schedule)),
        gtx.chain(gtx.scale_by_rss(), gtx.add_decayed_weights(schedule), gtx.scale(-1.0)),
        gtx.chain(gtx.scale_by_adam(), gtx.scale_by_learning_rate(schedule)),
    ]:
        state = tx.init(params)
        for _ in range(3):  # op by op, compiling
            state = tx.update(params, state, params)[1]
        calls.clear()
        with count_compilations() as compiled:
            for _ in range(3):
                state = tx.update(params, state, params)[1]
        assert len(calls) == 3 and not compiled, (len(calls), compiled)


def test_a_folded_weight_decay_names_params_that_do_not_match_the_updates(fresh_kernels):
    """Folded into Adam's kernels, weight decay still checks the params against the
    updates and names them, as its own map does."""
    tx = gtx.adamw(1e-2, weight_decay=0.1)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="the params"):
        tx.update({"w": jnp.ones(3)}, state, {"v": jnp.ones(3)})
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update({"w": jnp.ones(3)}, state)
    # one mistake, the error of the separate passes: the first block's tree is named
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
    missing_b = {"a": jnp.full((2, 3), 0.5)}
    for tx, named in [
        (gtx.adamw(1e-2, mask={"a": True, "b": False}), "the state"),
        (gtx.sgd(0.1, momentum=0.9, weight_decay=0.1), "the params"),
    ]:
        with pytest.raises(ValueError, match=f"the structure of {named} differs"):
            tx.update(missing_b, tx.init(params), params)


@pytest.mark.parametrize(
    "scaling, owner",
    [
        (lambda: gtx.scale_by_schedule(lambda t: -0.5 / (1 + t)), "scale_by_schedule"),
        (lambda: gtx.scale_by_learning_rate(lambda t: 0.5 / (1 + t)), "scale_by_learning_rate"),
        (
            lambda: gtx.schedule_injection(gtx.scale_by_learning_rate)(
                learning_rate=lambda t: 0.5 / (1 + t)
            ),
            "scale_by_learning_rate",
        ),
    ],
)
def test_a_folded_schedule_reads_its_state_as_its_update_does(scaling, owner, fresh_kernels):
    """A chain reads a scheduled scaling's step size from its state before the block it
    folds into: the schedule at the state's count, the count advanced once per update
    (three updates: op by op, compiling, compiled); a state that is not the scaling's
    own is its update's TypeError, as without the fold."""
    tx = gtx.chain(gtx.trace(0.5), scaling())
    g = np.array([0.5, -0.25, 3.0], np.float32)
    state, buffer = tx.init(jnp.zeros(3)), np.zeros(3, np.float32)
    for t in range(3):
        updates, state = tx.update(jnp.asarray(g), state)
        buffer = g + 0.5 * buffer
        expected = np.float32(-0.5) / np.float32(1 + t) * buffer
        np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-7)
    assert int(jax.tree.leaves(state[1])[0]) == 3
    with pytest.raises(TypeError, match=f"the state of {owner} must be"):
        tx.update(jnp.asarray(g), (state[0], gtx.EmptyState()))


@pytest.mark.parametrize("name", sorted(zoo.WRAPPERS))
def test_eager_kernels_give_the_numbers_of_op_by_op_execution_in_every_wrapper(
    name, rng, monkeypatch, fresh_kernels
):
    # masks (static per-leaf flags), PRNG keys, counters and schedules in the closures
    params = {
        "w": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=2), jnp.float32),
    }
    grads_seq = _grads(rng, params, steps=5)
    extra = {"value": jnp.asarray(1.0)}

    def run():
        tx = zoo.WRAPPERS[name]()
        state, p = tx.init(params), params
        for grads in grads_seq:
            updates, state = tx.update(grads, state, p, **extra)
            p = gtx.apply_updates(p, updates)
        return p, state

    fast = run()
    assert fresh_kernels.kernels
    _assert_one_key_per_code(fresh_kernels)
    monkeypatch.setattr(tree, "COMPILE_EAGER_LEAF_FUNCTIONS", False)
    plain = run()
    assert jax.tree.structure(fast) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        if np.issubdtype(a.dtype, np.inexact):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
        else:  # counters, keys, flags
            np.testing.assert_array_equal(a, b)


def test_eager_kernels_take_new_hyperparameter_values(rng, fresh_kernels):
    # the learning rate is an array in the state: an argument of the kernel, not a constant
    params = _params(rng)
    grads = _grads(rng, params, steps=1)[0]
    tx = gtx.adam(1e-2)
    state = tx.init(params)
    for _ in range(3):
        tx.update(grads, state, params)
    state = gtx.set_hyperparams(state, learning_rate=0.5)
    updates, _ = tx.update(grads, state, params)
    # at the first step Adam's update is -lr * g / (|g| + eps), i.e. about -lr * sign(g)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(u, -0.5 * g / (jnp.abs(g) + 1e-8), rtol=1e-5)


def test_eager_kernels_take_numpy_scalars_of_the_closure_as_arguments(fresh_kernels):
    # a NumPy scalar (a hyperparameter of a state restored to the host) is an argument of
    # the kernel like an array: a new value reuses the kernel; as a constant of its key,
    # each value would be seen once and run op by op
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    for value in (0.1, 0.2, 0.3, 0.4, 0.5):
        tx = gtx.scale(np.float32(-value))
        updates, _ = tx.update(params, tx.init(params))
        np.testing.assert_allclose(updates["a"], np.full(3, -value), rtol=1e-6)
    assert len(fresh_kernels.kernels) == 1


def test_eager_kernels_keep_python_constants_of_each_type_apart(fresh_kernels):
    # 1, 1.0 and True are equal (and hash alike) in Python but give different dtypes
    def broadcast(value, x):
        def leaf(u):
            return jnp.broadcast_to(jnp.asarray(value), u.shape)

        return tree.map_unzip(leaf, x, outputs=1)[0]

    x = {"a": jnp.zeros(3)}
    # three rounds: the third kernel compiles once the first two are reused
    # (max_unused_kernels_per_code)
    for value, dtype in [(1, jnp.int32), (1.0, jnp.float32), (True, jnp.bool_)] * 3:
        assert broadcast(value, x)["a"].dtype == dtype
    assert len(fresh_kernels.kernels) == 3


def test_eager_kernels_keep_zero_and_negative_zero_apart(fresh_kernels):
    # 0.0 == -0.0 in Python: a kernel compiled for one would return the other's zeros
    g = jnp.array([1.0, 2.0])
    for factor in (0.0, 0.0, -0.0, -0.0, 0.0):
        (scaled,) = gtx.scale(factor).update(g, None)[:1]
        np.testing.assert_array_equal(np.signbit(scaled), np.signbit(factor) * np.ones(2))
    assert len(fresh_kernels.kernels) == 2


class _Scaler:
    def __init__(self, factor):
        self.factor = factor

    def leaf(self, u):
        return u * self.factor


@pytest.mark.parametrize(
    "make",
    [lambda k: _Scaler(k).leaf, lambda k: functools.partial(jnp.multiply, k)],
    ids=["bound_method", "partial"],
)
def test_eager_kernels_run_callables_that_are_not_plain_functions(make, fresh_kernels):
    """A bound method's code rebuilt from its code and closure loses ``self`` (the first
    compiled call failed, and two instances would share a kernel); a partial or a ufunc
    has no code at all. They run op by op, with the values they hold."""
    x = {"a": jnp.arange(3.0)}
    for _ in range(3):
        for factor in (2.0, 10.0):
            (result,) = tree.map_unzip(make(factor), x, outputs=1)
            np.testing.assert_array_equal(result["a"], [0.0, factor, 2 * factor])
    for _ in range(3):
        np.testing.assert_array_equal(tree.map_leaves(jnp.add, x, x)["a"], [0.0, 2.0, 4.0])


def test_eager_kernels_leave_code_with_fresh_closure_objects_op_by_op(fresh_kernels):
    # a new local function in the closure at every call is a new key every call, never
    # seen twice: nothing compiles, the results stay correct, and the keys remembered
    # for a second sight are the newest max_keys_per_code
    def update(x):
        double = lambda v: 2 * v  # noqa: E731  (a fresh object at every call)

        def leaf(u):
            return double(u)

        return tree.map_unzip(leaf, x, outputs=1)[0], leaf.__code__

    x = {"a": jnp.arange(3.0)}
    for _ in range(3 * fresh_kernels.max_keys_per_code):
        doubled, code = update(x)
        np.testing.assert_array_equal(doubled["a"], [0.0, 2.0, 4.0])
    assert fresh_kernels.keys_per_code[code] == 3 * fresh_kernels.max_keys_per_code
    assert len(fresh_kernels.waiting[code]) == fresh_kernels.max_keys_per_code
    assert len(fresh_kernels.seen_once) == fresh_kernels.max_keys_per_code
    assert not fresh_kernels.kernels


def test_a_sweep_of_optimizers_leaves_the_eager_kernels_compiled_and_bounded(fresh_kernels):
    """A sweep builds each trial's optimizer with new Python-float hyperparameters, new
    kernel keys: after 16 of them a code was left op by op for the rest of the process,
    for every optimizer sharing it (eager Adam on 1,000 leaves took 3x as long after a
    20-trial learning-rate sweep of compat.torch.adamw), and its 17 kernels were kept
    though never called again. Each trial's kernels now compile, and a code keeps its
    newest max_kernels_per_code."""
    x = {"a": jnp.ones(3)}
    trials = fresh_kernels.max_kernels_per_code + 4
    for trial in range(trials):
        tx = gtx.scale(-(1.0 + trial))
        for _ in range(3):  # op by op, compiled, reused
            (updates,) = tx.update(x, tx.init(x))[:1]
            np.testing.assert_array_equal(updates["a"], np.full(3, -(1.0 + trial)))
    code = next(iter(fresh_kernels.keys_per_code))
    assert fresh_kernels.keys_per_code[code] == trials
    assert len(fresh_kernels.kernels) == fresh_kernels.max_kernels_per_code
    assert not fresh_kernels.seen_once and not fresh_kernels.unused[code]
    # the last trial's kernel runs its updates: no op-by-op operation
    with count_eager_operations() as operations:
        tx.update(x, tx.init(x))
    assert operations[0] == 0


def test_eager_kernels_do_not_compile_a_value_seen_twice_per_update(fresh_kernels):
    # one user transform twice in a chain, its per-leaf closure holding a Python float
    # new at every update: each value is seen twice, then never again. Compiling at each
    # second sight built 16 kernels used once (32 compilations, 6.6 s for 50 updates of
    # 100 leaves where op by op took 0.9 s); two unused kernels stop it.
    def scale_by_inverse_step():
        def update(updates, state, params=None):
            factor = 1.0 / (int(state) + 1)  # a Python float, fresh at every update

            def leaf(u):
                return u * factor

            return tree.map_unzip(leaf, updates, outputs=1)[0], state + 1

        return gtx.GradientTransformation(lambda params: jnp.zeros([], jnp.int32), update)

    tx = gtx.chain(scale_by_inverse_step(), scale_by_inverse_step())
    x = {"a": jnp.ones(3)}
    state = tx.init(x)
    for t in range(20):
        updates, state = tx.update(x, state)
        np.testing.assert_allclose(updates["a"], 1.0 / (t + 1) ** 2, rtol=1e-6)
    assert len(fresh_kernels.kernels) == fresh_kernels.max_unused_kernels_per_code


def test_eager_kernels_leave_code_that_reads_values_in_python_op_by_op(fresh_kernels):
    # a user's per-leaf function may branch on a value in Python: it works eagerly (and
    # would fail under jit); the kernel cache must not turn it into an error
    def update(x):
        def leaf(u):
            return u * 2.0 if float(u.sum()) > 0 else u * 3.0

        return tree.map_unzip(leaf, x, outputs=1)[0], leaf.__code__

    for values, factor in [([1.0, 2.0], 2.0), ([-1.0, -2.0], 3.0)] * 3:
        x = {"a": jnp.asarray(values)}
        result, code = update(x)
        np.testing.assert_array_equal(result["a"], factor * np.asarray(values))
    assert code in fresh_kernels.op_by_op_codes
    assert not fresh_kernels.kernels


def test_eager_kernels_do_not_keep_the_arrays_of_a_closure_alive(fresh_kernels):
    # the closure's arrays are arguments of the kernel; the cached kernel must not hold
    # the ones of the call that compiled it (they may be a model's worth of memory)
    x = {"a": jnp.ones(3)}

    def update():
        big = jnp.ones(1000)

        def leaf(u):
            return u + big[:3]

        np.testing.assert_array_equal(tree.map_unzip(leaf, x, outputs=1)[0]["a"], 2.0)
        return weakref.ref(big)

    refs = [update() for _ in range(3)]  # compiled at the second call
    gc.collect()
    assert fresh_kernels.kernels
    assert all(ref() is None for ref in refs)


def test_eager_kernels_run_many_leaves_per_call(rng, monkeypatch, fresh_kernels):
    # 70 leaves of one shape, 5 bfloat16 leaves of another, a mask of static flags: each
    # group of one signature runs leaves_per_call leaves per kernel call
    params = {
        "w": [jnp.asarray(rng.normal(size=3), jnp.float32) for _ in range(70)],
        "b": [jnp.asarray(rng.normal(size=(2, 2)), jnp.bfloat16) for _ in range(5)],
    }
    mask = {"w": [i % 3 > 0 for i in range(70)], "b": [True] * 5}
    grads_seq = _grads(rng, params, steps=4)

    def make():
        return gtx.chain(gtx.clip_by_global_norm(1.0), gtx.adamw(1e-2, mask=mask))

    fast = _run_eager(make(), params, grads_seq[:2])  # op by op, then compiled
    calls = []

    def counted(kernel):
        return lambda *a, **k: calls.append(1) or kernel(*a, **k)

    for key, kernel in list(fresh_kernels.kernels.items()):
        fresh_kernels.kernels[key] = counted(kernel)
    for name in ("_stacked_sums_of_squares", "_add_stacked_in_order"):  # the norm's
        monkeypatch.setattr(norms, name, counted(getattr(norms, name)))
    with count_compilations() as later:
        fast = _run_eager(make(), fast[0], grads_seq[2:], fast[1])
    assert not later
    # per step: sum of squares 70/32 -> 3 calls + 1 (bf16), added in 1; clip 3 + 1; Adam
    # 3 + 1; decay 47 masked-in f32 leaves -> 2, the bf16 1, and the masked-out 1; the
    # learning rate 3 + 1; apply_updates 3 + 1. One call per leaf would be ~450.
    assert len(calls) == 2 * (4 + 1 + 4 + 4 + 4 + 4 + 4)
    monkeypatch.setattr(tree, "COMPILE_EAGER_LEAF_FUNCTIONS", False)
    plain = _run_eager(make(), params, grads_seq)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(
            np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=2e-6, atol=1e-7
        )


def test_eager_leaves_group_by_value_not_by_object():
    # every output of a jitted call holds its own sharding object: equal shardings under
    # different ids are one group (one kernel call per 32 leaves, not one per position)
    outputs = jax.jit(lambda xs: [x + 1 for x in xs])([jnp.ones(3)] * 4)
    assert len({id(x.sharding) for x in outputs}) == 4
    other = jnp.ones(2)
    arg_tuples = [(outputs[0], outputs[1]), (other, other), (outputs[2], outputs[3])]
    assert [indices for _, indices in eager_kernels.group_by_signature(arg_tuples)] == [[0, 2], [1]]
    # a static flag among the arguments groups by its value and type, in leaf order
    flagged = [(outputs[0], True), (outputs[1], 1), (outputs[2], True), (other, True)]
    groups = eager_kernels.group_by_signature(flagged)
    assert [indices for _, indices in groups] == [[0, 2], [1], [3]]
    assert [statics for statics, _ in groups][:2] == [(None, (True, bool)), (None, (1, int))]
    # NumPy arrays group by shape and dtype; an unhashable static value gives no grouping
    numpy_args = [(np.ones(2),), (np.zeros(2),), (np.ones(3),)]
    assert [i for _, i in eager_kernels.group_by_signature(numpy_args)] == [[0, 1], [2]]
    assert eager_kernels.group_by_signature([(outputs[0], [1])]) is None


def test_eager_groups_keep_their_leaves_in_order():
    # a kernel call takes consecutive leaves of a group, so its outputs' sharding objects
    # (one per output position) repeat every 32 leaves in the next update's arguments;
    # groups whose leaves came by sharding object ([0, 2, 1]) mixed positions of
    # different calls and made hundreds of id groups of 1,000 leaves in the next update
    outputs = jax.jit(lambda xs: [x + 1 for x in xs])([jnp.ones(3)] * 2)
    arg_tuples = [(outputs[0],), (outputs[1],), (outputs[0],)]
    assert [indices for _, indices in eager_kernels.group_by_signature(arg_tuples)] == [[0, 1, 2]]
    # gradients from a jitted step hold a sharding object each: one group still
    grads = jax.jit(lambda xs: [2 * x for x in xs])([jnp.ones(3)] * 40)
    pairs = list(zip(grads, outputs * 20, strict=True))
    assert [indices for _, indices in eager_kernels.group_by_signature(pairs)] == [list(range(40))]


class _CountedList(list):
    """A list node that counts how often JAX flattens it (flatten, structure, leaves,
    flatten_up_to all call its flatten function)."""

    flattened = 0


def _flatten_counted(node):
    _CountedList.flattened += 1
    return list(node), None


jax.tree_util.register_pytree_node(
    _CountedList, _flatten_counted, lambda _, children: _CountedList(children)
)


def test_an_eager_update_flattens_each_tree_once_per_pass(rng, fresh_kernels):
    # an eager update pays for every flattening (a dict of 1,000 entries sorts its keys
    # each time, ~0.3 ms): apply_updates flattened its two trees 7 times, a chain of
    # clip_by_global_norm, scale_by_adam and add_decayed_weights them 18 times
    params = _CountedList(jnp.asarray(rng.normal(size=3), jnp.float32) for _ in range(4))
    grads = _CountedList(jnp.asarray(rng.normal(size=3), jnp.float32) for _ in range(4))
    tx = gtx.chain(gtx.clip_by_global_norm(1.0), gtx.scale_by_adam(), gtx.add_decayed_weights(0.1))
    state = tx.init(params)
    _CountedList.flattened = 0
    updates, state = tx.update(grads, state, params)
    # clip: the norm's pass; the chain's look at the dtypes of the updates Adam takes
    # (folding: tree.FOLD_EAGER_SCALING); Adam: the dtypes of the gradients and
    # moments, then one pass over the three and the params (clipping's product and the
    # decay run in Adam's kernels)
    assert _CountedList.flattened == 1 + 1 + 7
    _CountedList.flattened = 0
    gtx.apply_updates(params, updates)
    assert _CountedList.flattened == 2


_SHAPES = [(3,), (2, 2), ()]
_DTYPES = [jnp.float32, jnp.bfloat16]
_MIX_KERNELS = eager_kernels.EagerKernels()


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    leaves=st.lists(
        st.tuples(
            st.sampled_from(range(len(_SHAPES))),
            st.sampled_from(range(len(_DTYPES))),
            st.sampled_from(["decayed", "not decayed", "None"]),
        ),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 2**16),
)
def test_eager_kernels_equal_op_by_op_on_any_mix_of_leaves(leaves, seed):
    # shapes, dtypes, mask flags and None leaves in any order and any number (over 32 of
    # one signature takes two calls): grouping and chunking never change a number
    rng = np.random.default_rng(seed)

    def tree_of(draw):
        return [
            None if flag == "None" else jnp.asarray(draw(_SHAPES[shape]), _DTYPES[dtype])
            for shape, dtype, flag in leaves
        ]

    params = tree_of(lambda shape: rng.normal(size=shape))
    grads_seq = [tree_of(lambda shape: rng.normal(size=shape)) for _ in range(3)]
    mask = [None if flag == "None" else flag == "decayed" for _, _, flag in leaves]

    def make():
        # the mask first (L2) and after Adam (decoupled): flags next to arrays that share
        # sharding objects (the gradients) and next to kernel outputs (Adam's updates)
        return gtx.chain(
            gtx.add_decayed_weights(0.5, mask=mask),
            gtx.clip_by_global_norm(1.0),
            gtx.adamw(1e-2, weight_decay=0.5, mask=mask),
        )

    # one kernel cache across the examples, as in a process: a later mix reuses kernels
    with unittest.mock.patch.object(eager_kernels, "KERNELS", _MIX_KERNELS):
        fast = _run_eager(make(), params, grads_seq)  # op by op, compiled, reused
    with unittest.mock.patch.object(tree, "COMPILE_EAGER_LEAF_FUNCTIONS", False):
        plain = _run_eager(make(), params, grads_seq)
    assert jax.tree.structure(fast) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        # float32 rounding; a bfloat16 result one float32 ulp from a bfloat16 rounding
        # boundary may land one bfloat16 ulp away (2**-8 relative), then carry that on
        tolerance = (
            {"rtol": 2**-6, "atol": 1e-5}
            if a.dtype == jnp.bfloat16
            else {"rtol": 2e-6, "atol": 1e-7}
        )
        np.testing.assert_allclose(
            np.asarray(a, np.float64), np.asarray(b, np.float64), **tolerance
        )


@contextlib.contextmanager
def _count_stacked_sums(monkeypatch):
    """Counts the eager global norms that add their leaves' sums from stacked vectors
    (``norms._eager_sum_of_squares``), not from one array a leaf."""
    calls = [0]
    add = norms._add_stacked_in_order

    def counting(*args):
        calls[0] += 1
        return add(*args)

    monkeypatch.setattr(norms, "_add_stacked_in_order", counting)
    yield calls


def test_eager_global_norm_adds_the_leaves_in_order(fresh_kernels, monkeypatch):
    # magnitudes from 1 to 1e7: in float32 the order of the additions shows in the
    # result; leaves of two shapes taken in turn, so that the kernels' vectors (one
    # signature each) hold the sums in another order than the leaves'
    x = [
        jnp.asarray([10.0 ** (i % 8), 0.5 + i], jnp.float32).reshape([1, 2] if i % 2 else [2])
        for i in range(100)
    ]
    squares = [
        np.float32((np.asarray(leaf, np.float64) ** 2).astype(np.float32).sum()) for leaf in x
    ]

    def in_turn(values):
        total = np.float32(0.0)
        for value in values:
            total = np.float32(total + value)
        return total

    total = in_turn(squares)
    # the order shows: pairwise, or one signature's leaves before the other's, differ
    assert total != np.sum(np.asarray(squares, np.float32))
    assert total != in_turn(squares[::2] + squares[1::2])
    with _count_stacked_sums(monkeypatch) as stacked:
        results = [norms.global_norm(x) for _ in range(3)]  # op by op, compiled, reused
    assert stacked == [2]
    for norm in results:
        assert norm.dtype == jnp.float32
        assert float(norm) == float(np.sqrt(total))


@pytest.mark.parametrize("count", [33, 97])
def test_eager_global_norm_counts_the_leaves_past_the_last_full_kernel_call(
    count, fresh_kernels, monkeypatch
):
    # a kernel call adds leaves_per_call (32) leaves: the 33rd and the 97th start a new one
    x = [jnp.full([2], 1.0 + i, jnp.float32) for i in range(count)]
    expected = np.sqrt(2 * np.sum((1.0 + np.arange(count)) ** 2))
    with _count_stacked_sums(monkeypatch) as stacked:
        results = [norms.global_norm(x) for _ in range(3)]  # op by op, compiled, reused
    assert stacked == [2]
    np.testing.assert_allclose(np.asarray(results, np.float64), expected, rtol=1e-6)


@pytest.mark.parametrize("with_float64", [False, True])
def test_eager_global_norm_gives_the_bits_of_its_per_leaf_kernels(
    with_float64, rng, fresh_kernels, monkeypatch
):
    """The eager norm's kernels give each call's sums as one vector, and one more adds
    them in the leaves' order: the bits of the per-leaf kernels and chunked sums they
    replaced (one scalar array a leaf), which a norm still takes at its first call."""
    shapes = [(4096,), (3, 5, 7), (), (100_003,), (37,)]
    kinds = ["float32", "bfloat16", "complex64"]
    kinds += ["float64", "complex128"] if with_float64 else []
    with jax.enable_x64(with_float64):
        leaves = []
        for i in range(40):  # the shapes and dtypes in turn: signatures interleaved
            kind, shape = kinds[i % len(kinds)], shapes[i % len(shapes)]
            if kind.startswith("complex") and shape == () and _CONTRACTS_COMPLEX_SCALARS:
                shape = (2,)  # test_..._complex_scalars_within_a_rounding below
            values = rng.normal(size=shape) * 10.0 ** rng.integers(-3, 4)
            if kind.startswith("complex"):
                values = values + 1j * rng.normal(size=values.shape)
            leaves.append(jnp.asarray(values, kind))
        tree_ = {"a": leaves[:15], "b": {"c": leaves[15:]}}

        def three_norms():
            return [np.asarray(norms.global_norm(tree_)) for _ in range(3)]

        with _count_stacked_sums(monkeypatch) as stacked:
            stacked_norms = three_norms()  # op by op, then stacked twice
        assert stacked == [2]
        monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
        monkeypatch.setattr(norms, "_eager_sum_of_squares", lambda tree_, leaves: None)
        per_leaf = three_norms()  # op by op, then per-leaf kernels compiled and reused
    assert ("sum_in_order",) in eager_kernels.KERNELS.kernels
    assert [n.dtype for n in stacked_norms] == [n.dtype for n in per_leaf]
    assert [n.tobytes() for n in stacked_norms] == [n.tobytes() for n in per_leaf]


# jax 0.12's XLA:CPU computes a 0-d complex leaf's |g|^2 = re^2 + im^2 with a fused
# multiply-add in some kernels and not in others (one rounding fewer): in a vector of
# eight such sums and not in a kernel that returns each as a scalar, say. Up to jax
# 0.10 the two kernels agree (though both may part from op by op by that rounding).
_CONTRACTS_COMPLEX_SCALARS = _release(jax.__version__) >= (0, 12)


@pytest.mark.parametrize("kind", ["complex64", "complex128"])
def test_eager_global_norm_of_complex_scalars_is_its_per_leaf_kernels_within_a_rounding(
    kind, rng, fresh_kernels, monkeypatch
):
    """What the test above leaves out where ``_CONTRACTS_COMPLEX_SCALARS``: the norm of 0-d
    complex leaves from the stacked sums is the per-leaf kernels' within one rounding of
    each leaf's sum (the bits up to jax 0.10). Eight leaves, ten draws: on jax 0.12 two to
    four of the 30 norms (complex64, complex128) part by that rounding."""
    stacked_norms, per_leaf = [], []
    with jax.enable_x64(kind == "complex128"):
        for _ in range(10):
            leaves = [
                jnp.asarray(complex(rng.normal(), rng.normal()) * 10.0 ** rng.integers(-3, 4), kind)
                for _ in range(8)
            ]
            with monkeypatch.context() as patches:
                patches.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
                stacked_norms += [np.asarray(norms.global_norm(leaves)) for _ in range(3)]
                patches.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
                patches.setattr(norms, "_eager_sum_of_squares", lambda tree_, leaves: None)
                per_leaf += [np.asarray(norms.global_norm(leaves)) for _ in range(3)]
    assert [n.dtype for n in stacked_norms] == [n.dtype for n in per_leaf]
    if not _CONTRACTS_COMPLEX_SCALARS:
        assert [n.tobytes() for n in stacked_norms] == [n.tobytes() for n in per_leaf]
    eps = np.finfo(stacked_norms[0].dtype).eps
    np.testing.assert_allclose(np.asarray(stacked_norms), np.asarray(per_leaf), rtol=2 * eps)


def test_an_eager_global_norm_names_a_wrong_leaf_at_every_call(fresh_kernels):
    x = [jnp.ones(3), jnp.ones(3), jnp.arange(3), jnp.ones(2)]
    for _ in range(3):  # op by op, then stacked
        with pytest.raises(TypeError, match=r"the update at \[2\] has dtype int32"):
            norms.global_norm(x)


def test_eager_apply_updates_gives_the_numbers_of_op_by_op_execution(
    rng, monkeypatch, fresh_kernels
):
    # parameters of every float dtype (and complex), float32 updates, None leaves kept
    params = {
        "f32": [jnp.asarray(rng.normal(size=5), jnp.float32) for _ in range(40)],
        "bf16": jnp.asarray(rng.normal(size=(3, 2)), jnp.bfloat16),
        "f16": jnp.asarray(rng.normal(size=4), jnp.float16),
        "c64": jnp.asarray(rng.normal(size=3) + 1j * rng.normal(size=3), jnp.complex64),
        "none": None,
    }
    updates = jax.tree.map(
        lambda p: jnp.asarray(1e-3 * rng.normal(size=p.shape), jnp.float32), params
    )
    fast = [gtx.apply_updates(params, updates) for _ in range(3)]  # op by op, compiled, reused
    assert fresh_kernels.kernels
    monkeypatch.setattr(tree, "COMPILE_EAGER_LEAF_FUNCTIONS", False)
    plain = gtx.apply_updates(params, updates)
    for result in fast:
        assert result["none"] is None
        assert jax.tree.structure(result) == jax.tree.structure(plain)
        for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(plain), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_apply_updates_takes_numpy_and_python_parameters(fresh_kernels):
    # NumPy arrays and Python floats become the JAX arrays jit makes of them: the
    # kernels' path (the plain one op by op before), the same numbers and dtypes as ever
    params = {"np": np.ones(3, np.float32), "py": 2.0, "jax": jnp.ones(2)}
    updates = {"np": jnp.full(3, 0.5), "py": jnp.asarray(0.25), "jax": jnp.full(2, 0.5)}
    for _ in range(3):
        result = gtx.apply_updates(params, updates)
        np.testing.assert_array_equal(result["np"], [1.5, 1.5, 1.5])
        assert result["np"].dtype == jnp.float32
        assert float(result["py"]) == 2.25
        np.testing.assert_array_equal(result["jax"], [1.5, 1.5])
    assert fresh_kernels.kernels


# --- eager updates from several Python threads share the kernel cache ---


def _run_in_threads(work: dict) -> tuple[dict, list]:
    """Runs each ``work[name]()`` in a thread of its own, all at once; returns their
    results and the exceptions raised, by name."""
    results, errors = {}, []
    barrier = threading.Barrier(len(work))

    def target(name):
        barrier.wait()
        try:
            results[name] = work[name]()
        except Exception as error:  # noqa: BLE001  (reported by the test)
            errors.append((name, error))

    threads = [threading.Thread(target=target, args=(name,)) for name in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_eager_kernels_evicted_by_threads_at_once_raise_nothing(monkeypatch, fresh_kernels):
    # Each thread compiles new kernels into a cache of one, so each evicts the oldest;
    # the sleep is a thread switch between picking the oldest key and deleting it, where
    # two threads would pick the same key and the second delete a KeyError.
    class SwitchingDict(dict):
        def __delitem__(self, key):
            time.sleep(0.002)
            super().__delitem__(key)

    monkeypatch.setattr(eager_kernels.EagerKernels, "max_kernels", 1)
    monkeypatch.setattr(eager_kernels.EagerKernels, "max_keys_per_code", 100)
    monkeypatch.setattr(eager_kernels.EagerKernels, "max_unused_kernels_per_code", 100)
    fresh_kernels.kernels = SwitchingDict()
    x = {"a": jnp.ones(3)}

    def scaled_by(factor):
        return lambda g: g * factor

    def work(thread):
        for i in range(4):  # each closure value twice: op by op, then compiled
            for _ in range(2):
                tree.map_unzip(scaled_by(float(100 * thread + i)), x, outputs=1)
        return tree.map_unzip(scaled_by(2.0), x, outputs=1)[0]["a"]

    results, errors = _run_in_threads(
        {thread: functools.partial(work, thread) for thread in range(4)}
    )
    assert not errors
    for result in results.values():
        np.testing.assert_array_equal(result, [2.0, 2.0, 2.0])


THREADED = {
    "adam": lambda: gtx.adam(1e-2),
    "adam_again": lambda: gtx.adam(1e-2),
    "sgd_momentum": lambda: gtx.sgd(1e-2, momentum=0.9),
    "rmsprop": lambda: gtx.rmsprop(1e-2),
    "adagrad": lambda: gtx.adagrad(1e-2),
    "nadamw": lambda: gtx.nadamw(1e-2),
}


def _eager_training(name: str, steps: int = 30):
    rng = np.random.default_rng(len(name))  # a tree and gradients of its own
    params = {f"w{i}": jnp.asarray(rng.normal(size=2 + i % 3), jnp.float32) for i in range(6)}
    tx = THREADED[name]()
    state = tx.init(params)
    for step in range(steps):
        grads = jax.tree.map(lambda p, step=step: jnp.sin(p * (step + 1)), params)
        updates, state = tx.update(grads, state, params)
        params = gtx.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("max_kernels", [512, 3])
def test_eager_updates_in_threads_give_the_numbers_of_one_thread(
    max_kernels, monkeypatch, fresh_kernels
):
    alone = {name: _eager_training(name) for name in THREADED}  # compiles the kernels
    alone = {name: _eager_training(name) for name in THREADED}  # with kernels from step 1
    # 3 kernels: every thread evicts kernels the others use, which then run op by op
    monkeypatch.setattr(eager_kernels.EagerKernels, "max_kernels", max_kernels)
    together, errors = _run_in_threads(
        {name: functools.partial(_eager_training, name) for name in THREADED}
    )
    assert not errors
    for name in THREADED:
        for a, b in zip(jax.tree.leaves(together[name]), jax.tree.leaves(alone[name]), strict=True):
            assert a.dtype == b.dtype
            if max_kernels == 512:  # the same compiled kernels: bitwise
                np.testing.assert_array_equal(a, b)
            else:  # kernels or op by op, as evictions fall: equal to float32 rounding
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


_LEAVES = 64
_EVERY_THIRD = {f"w{i:02d}": i % 3 == 0 for i in range(_LEAVES)}
PER_LEAF_WORK_BEFORE = {
    # zeros made with a jnp.zeros_like per frozen leaf
    "set_to_zero": lambda: gtx.set_to_zero(),
    "freeze": lambda: gtx.chain(gtx.adam(0.1), gtx.freeze(_EVERY_THIRD)),
    "masked_zero": lambda: gtx.masked(gtx.adam(0.1), _EVERY_THIRD, masked_leaves="zero"),
    "partition_freeze": lambda: gtx.partition(
        {"a": gtx.adam(0.1), "b": gtx.freeze()},
        {key: "b" if frozen else "a" for key, frozen in _EVERY_THIRD.items()},
    ),
    # projections summed in Python; the whole state in the per-leaf closure
    "swats": lambda: gtx.swats(0.1),
    # the whole state (every buffer leaf) in the per-leaf closure
    "sgd_momentum": lambda: gtx.sgd(0.1, momentum=0.9),
    "torch_sgd_dampening": lambda: torch_compat.sgd(0.1, momentum=0.9, dampening=0.5),
    # a jax.random.normal per leaf
    "add_noise": lambda: gtx.chain(gtx.add_noise(0.01), gtx.adam(0.1)),
    # Keras' clipping and loss scaling with jax.tree.map
    "keras_clipnorm": lambda: keras_compat.adam(clipnorm=0.5),
    "keras_global_clipnorm": lambda: keras_compat.adam(global_clipnorm=0.5),
    "keras_loss_scale": lambda: keras_compat.adam(loss_scale_factor=4.0),
}


@pytest.mark.parametrize("name", sorted(PER_LEAF_WORK_BEFORE))
def test_eager_updates_do_no_per_leaf_work_outside_the_kernels(name, rng, fresh_kernels):
    """After the kernels compile, an un-jitted update (+ apply_updates) on 64 leaves runs a
    few jitted computations (about 2 per kernel: 32 leaves a call), not one or more per
    leaf, and no kernel takes a tree of the state as closure arguments. Before, these
    dispatched per leaf (on 64 leaves: set_to_zero 130, masked zeros 149, freeze 67,
    add_noise 97, swats 160, Keras' clipnorm 595, global_clipnorm 219, loss scaling 83)
    or handed every momentum buffer leaf to each kernel call (sgd with momentum: 65
    closure arrays a call; swats every moment leaf). On 1,000 leaves set_to_zero
    dispatched 2,033 computations, swats 2,093, add_noise 1,194, Keras' clipnorm 9,110.
    The numbers are bitwise those of before (Keras' loss scaling: those of the jitted
    step, a unit in the last place apart on 0-d leaves)."""
    params = {key: jnp.asarray(rng.normal(size=8), jnp.float32) for key in sorted(_EVERY_THIRD)}
    tx = PER_LEAF_WORK_BEFORE[name]()
    state = tx.init(params)
    for grads in _grads(rng, params, steps=3):  # the kernels compile at the second sight
        updates, state = tx.update(grads, state, params)
        params = gtx.apply_updates(params, updates)
    (grads,) = _grads(rng, params, steps=1)
    with count_dispatches() as dispatched:
        updates, state = tx.update(grads, state, params)
        params = gtx.apply_updates(params, updates)
    assert dispatched[0] < _LEAVES, dispatched[0]
    closure_arrays = {
        f"{key[0].co_name}:{key[0].co_firstlineno}": len(key[2])
        for key in fresh_kernels.kernels
        if hasattr(key[0], "co_name")
    }
    assert max(closure_arrays.values()) < _LEAVES / 8, closure_arrays


@pytest.mark.parametrize(
    "name, make",
    [
        ("add_noise", lambda: gtx.add_noise(0.01)),
        ("add_l1", lambda: gtx.add_l1(0.01)),
        ("max_norm", lambda: gtx.max_norm(1.0)),
        ("lookahead", lambda: gtx.lookahead(gtx.identity())),
    ],
)
def test_an_eager_regularizer_or_lookahead_makes_one_pass_over_the_leaves(
    name, make, fresh_kernels, monkeypatch
):
    """Un-jitted on 80 leaves, 8 a kernel call, each of these runs its per-leaf function
    in one pass of the eager kernels (10 calls, as gtx.scale) plus a few scalar
    operations (add_noise's keys: a split, two slices, an unstack). add_noise drew its
    noise in one pass and added it in another, and split its keys by iterating over an
    array (320 leaves at the default 32 a call: 48 dispatches, 1,000 leaves: 112; now 18
    and 40). Kernels of 8 leaves: a 32-leaf kernel of add_noise's draws compiles in ~5 s."""
    monkeypatch.setattr(eager_kernels.EagerKernels, "leaves_per_call", 8)
    params = {f"w{i:03d}": jnp.full(8, i / 80, jnp.float32) for i in range(80)}
    dispatches = {}
    for key, tx in (("scale", gtx.scale(2.0)), (name, make())):
        state = tx.init(params)
        for _ in range(3):  # the kernels compile at the second sight
            _, state = tx.update(params, state, params)
        with count_dispatches() as dispatched:
            tx.update(params, state, params)
        dispatches[key] = dispatched[0]
    assert dispatches["scale"] == 10, dispatches
    assert dispatches[name] <= dispatches["scale"] + 8, dispatches


_AROUND_ADAM = {
    "adam": lambda tx: tx,
    "apply_if_finite": lambda tx: gtx.apply_if_finite(tx, 2),
    "multi_steps": lambda tx: gtx.multi_steps(tx, 2),
    "lookahead": lambda tx: gtx.lookahead(tx, 2, 0.5),
    "masked": lambda tx: gtx.masked(tx, _EVERY_THIRD),
}
_NESTS = [
    ("apply_if_finite", "multi_steps"),
    ("multi_steps", "lookahead"),
    ("masked", "apply_if_finite"),
]


def test_eager_wrappers_nested_in_wrappers_dispatch_the_sum_of_their_parts(rng, fresh_kernels):
    """Un-jitted, on 64 leaves, a nest of two wrappers around Adam dispatches no more
    than its parts: the outer wrapper's own work (around Adam) plus the inner's, over
    one cycle of a micro-step and a real step (k = 2, sync_period = 2). Measured on 300
    leaves for 29 nests (docs/performance.md): none did per-leaf work outside the
    kernels, compiled after warm-up or retraced. A wrapper whose eager path fell back to
    a dispatch per leaf inside another would add about 64 here; apply_if_finite
    selecting the inner state that multi_steps' micro-steps leave as it is adds 4 (101
    against 97 + 2)."""
    params = {f"w{i:02d}": jnp.asarray(rng.normal(size=8), jnp.float32) for i in range(_LEAVES)}
    grads = _grads(rng, params, steps=2)

    def dispatches(tx):
        state, p = tx.init(params), params
        for g in grads * 2:  # the kernels compile at the second sight
            updates, state = tx.update(g, state, p)
            p = gtx.apply_updates(p, updates)
        with count_dispatches() as dispatched:
            for g in grads:
                updates, state = tx.update(g, state, p)
                p = gtx.apply_updates(p, updates)
        return dispatched[0]

    parts = {name: dispatches(wrap(gtx.adam(0.1))) for name, wrap in _AROUND_ADAM.items()}
    for outer, inner in _NESTS:
        nest = dispatches(_AROUND_ADAM[outer](_AROUND_ADAM[inner](gtx.adam(0.1))))
        expected = parts[outer] + parts[inner] - parts["adam"]
        assert nest <= expected + 2, (outer, inner, nest, parts)


def test_add_noise_un_jitted_adds_the_jitted_steps_noise(rng):
    # drawn and added in one kernel, fused as in the jitted step (in two, 1 ulp apart)
    # 12 leaves in one kernel: each leaf's threefry makes it slow to compile (7 s at 32)
    params = {f"w{i:02d}": jnp.asarray(rng.normal(size=8), jnp.float32) for i in range(12)}
    tx = gtx.add_noise(0.1, 0.55, seed=5)
    eager_state = jitted_state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(3):  # op by op, then the compiled kernels
        eager, eager_state = tx.update(params, eager_state)
        jitted, jitted_state = update(params, jitted_state)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(a, b)


def test_count_dispatches_leaves_the_functions_it_counted_on_jax_fast_path():
    """count_dispatches keeps JAX's C++ jit cache from filling inside its block; an entry
    made there has no fast-path data, and kept its function on JAX's Python path (4.6 us
    a call became 90 us) for every later test in the process until the cache was emptied
    again on the way out."""
    from jax._src import pjit

    add_one = jax.jit(lambda x: x + 1)
    x = jnp.ones(3)
    with count_dispatches() as dispatched:
        add_one(x)
    assert dispatched[0] >= 1
    add_one(x)  # a cache miss once more: the entry it makes has the fast path
    with unittest.mock.patch.object(
        pjit, "_run_python_pjit", wraps=pjit._run_python_pjit
    ) as python_path:
        add_one(x)
        add_one(x)
    assert python_path.call_count == 0


def _optax_twin(name: str):
    if name in zoo.VARIANTS:
        return optax.sgd(0.1, momentum=0.9, nesterov=name == "sgd_nesterov")
    return getattr(optax, name)(0.1)


# The zoo's optimizers that Optax has, and the most common chain, beside Optax's
_TWINS = {
    **{
        name: (functools.partial(zoo.make, name, 0.1), functools.partial(_optax_twin, name))
        for name in zoo.ALL
        if name in zoo.VARIANTS or hasattr(optax, name)
    },
    "clip_by_global_norm, adamw": (
        lambda: gtx.chain(gtx.clip_by_global_norm(1.0), gtx.adamw(0.1)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.1)),
    ),
}


def _temporaries(tx, lib, params, grads) -> int:
    """The parameter-sized temporaries XLA's buffer assignment gives a donated jitted
    step (its memory analysis; scalars and small buffers round away)."""
    stats = compiled_step(tx, lib.apply_updates, params, grads).memory_analysis()
    return round(stats.temp_size_in_bytes / sum(x.nbytes for x in jax.tree.leaves(params)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(_TWINS))
def test_a_donated_step_holds_no_more_temporaries_than_optaxs(name, dtype):
    """Temporaries are a step's memory above params + grads + state (issue 7: at most
    1.05x) and its time where the allocator maps fresh pages. XLA:CPU writes an expensive
    intermediate that two loops read to a buffer of its own: Adadelta held two
    parameter-sized buffers, its square roots, as Optax's does (one now, the copy of
    E[dx^2] that XLA makes to update it in place); clip_by_global_norm before AdamW
    held the clipped updates, u / n * c, as Optax's does (none now: a product with one
    scalar factor, which XLA repeats in each loop). With bfloat16 params every
    optimizer with moments held copies of them, their float32 values read by the update
    while XLA updated the donated moments in place (Adam 2 bfloat16 leaves, AMSGrad 3,
    Adagrad and RMSprop 1; Optax's none): the update now reads them as stored
    (``numerics.as_stored``)."""
    params = {"w": jnp.ones((256, 256), dtype)}
    grads = {"w": jnp.full((256, 256), 0.5, dtype)}
    ours, theirs = _TWINS[name]
    counts = _temporaries(ours(), gtx, params, grads), _temporaries(theirs(), optax, params, grads)
    assert counts[0] <= counts[1], counts
    if name == "adadelta" and dtype == "float32":
        assert counts == (1, 2)
    # (jaxlib 0.6.2 copies bfloat16 moments for Optax's alike: 2 and 2 for Adam)
    if (
        name in ("adam", "amsgrad")
        and dtype == "bfloat16"
        and _release(jaxlib.__version__) >= (0, 10)
    ):
        assert counts == (0, 0)
    # (jaxlib 0.5.3 and 0.6.2 write the product out too, for Optax's quotient alike)
    if (
        name.startswith("clip_by_global_norm")
        and dtype == "float32"
        and _release(jaxlib.__version__) >= (0, 10)
    ):
        assert counts == (0, 1)


_AVERAGES = {
    "average_params": lambda: gtx.chain(gtx.sgd(0.1), gtx.average_params()),
    "ema_params": lambda: gtx.chain(gtx.adam(0.1), gtx.ema_params(0.99)),
    "averaged_sgd": lambda: gtx.averaged_sgd(0.1),
}


@pytest.mark.parametrize("name", sorted(_AVERAGES))
def test_bfloat16_parameter_averages_hold_no_temporary(name):
    """An average of the params after the step (``core.param_after_update``) rounds
    ``p + u`` to bfloat16 as ``apply_updates`` does; where XLA shared that rounding with
    ``apply_updates``' it wrote it to a buffer as large as the params in float32 (2
    bfloat16 leaves, with the average kept in float32 or bfloat16, for all three). Each
    loop now rounds its own: none, as with float32 params, and the same numbers (the
    averages' tests in test_wrappers_lookahead_averaging.py and test_compat_torch.py)."""
    if _release(jaxlib.__version__) < (0, 10):
        pytest.skip("jaxlib 0.6.2 holds the same temporaries here either way (1-4 leaves)")
    params = {"w": jnp.ones((256, 256), jnp.bfloat16)}
    grads = {"w": jnp.full((256, 256), 0.5, jnp.bfloat16)}
    assert _temporaries(_AVERAGES[name](), gtx, params, grads) == 0


def test_adadelta_computes_its_square_roots_twice_to_the_same_bits(rng, monkeypatch):
    """The second u that E[dx^2] squares (from ``numerics.unshared(eps)``) is the first u
    bit for bit, jitted and eager: the numbers of computing u once, which XLA then
    shares through a temporary."""
    params = {"w": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)}
    grads_seq = _grads(rng, params, steps=4)

    def trajectory(tx, run):
        state, steps = tx.init(params), []
        for grads in grads_seq:
            updates, state = run(tx.update)(grads, state)
            steps.append((updates, state))
        return steps

    def runs(tx):  # jitted; eager, op by op then in kernels compiled afresh
        monkeypatch.setattr(eager_kernels, "KERNELS", eager_kernels.EagerKernels())
        return [trajectory(tx, run) for run in (jax.jit, lambda f: f)]

    tx = gtx.adadelta(0.5, rho=0.9, eps=1e-6)
    twice = runs(tx)
    with monkeypatch.context() as patch:
        patch.setattr(gtx.numerics, "unshared", lambda value, dtype: jnp.asarray(value, dtype))
        once = runs(tx)
        shared = _temporaries(tx, gtx, params, grads_seq[0])
    for ours, plain in zip(twice, once, strict=True):
        jax.tree.map(np.testing.assert_array_equal, ours, plain)
    assert (shared, _temporaries(tx, gtx, params, grads_seq[0])) == (2, 1)


_FOLDS_ON_SEVERAL_DEVICES = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import gradtx as gtx
from gradtx import eager_kernels, tree

mesh = jax.make_mesh((4,), ("x",))
split, replicated = NamedSharding(mesh, P("x")), NamedSharding(mesh, P())
rng = np.random.default_rng(3)
params = {
    f"p{i:02d}": jax.device_put(
        jnp.asarray(rng.normal(size=8), jnp.float32), split if i % 2 and SPLIT else replicated
    )
    for i in range(34)
}
grads = [
    {k: jax.device_put(jnp.asarray(rng.normal(size=8), jnp.float32), v.sharding)
     for k, v in params.items()}
    for _ in range(4)
]
apart = []
for make in (
    lambda: gtx.chain(gtx.clip_by_global_norm(0.5), gtx.scale_by_adam()),
    lambda: gtx.chain(gtx.add_decayed_weights(0.1), gtx.scale_by_adam()),
    lambda: gtx.chain(gtx.scale_by_adam(), gtx.scale(-0.1)),
):
    runs = []
    for fold in (True, False):
        tree.FOLD_EAGER_SCALING = fold
        eager_kernels.KERNELS = eager_kernels.EagerKernels()
        tx = make()
        state, out = tx.init(params), []
        for g in grads:
            updates, state = tx.update(g, state, params)
            out += jax.tree.leaves((updates, state))
        runs.append(out)
    apart.append(sum(
        int(np.sum(np.asarray(a).view(np.uint8) != np.asarray(b).view(np.uint8)))
        for a, b in zip(*runs) if np.asarray(a).dtype == np.float32
    ))
print(apart)
"""


@pytest.mark.parametrize("split", [False, True])
def test_eager_folds_give_the_bits_of_the_separate_passes_on_several_devices(split):
    """On leaves over several devices (replicated, or some split) XLA partitions a
    kernel of joined blocks otherwise than the blocks' own: clipping, weight decay or a
    learning rate folded into Adam's kernels gave 75-310 elements of 34 leaves of 8 an
    ulp apart at each step. The chain runs them as their own passes there
    (``folds.joins_alike``): no element apart. Four host devices, in a subprocess."""
    import subprocess
    import sys

    # XLA:CPU aborts a process whose collective waits 40 s for one of its devices'
    # threads: once in a whole suite on two loaded cores (3 of 4 arrived), so it
    # may wait 200 s, and a run aborted so runs once more (an XLA without that flag,
    # jaxlib 0.6.2's, aborts at its name: it runs without it)
    devices = "--xla_force_host_platform_device_count=4"
    timeout_flag = "--xla_cpu_collective_call_terminate_timeout_seconds=200"
    env = dict(os.environ, XLA_FLAGS=f"{devices} {timeout_flag}", JAX_PLATFORMS="cpu")
    script = _FOLDS_ON_SEVERAL_DEVICES.replace("SPLIT", str(split))
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
        )
        if f"Unknown flag in XLA_FLAGS: {timeout_flag}" in done.stderr:
            env["XLA_FLAGS"] = devices
            continue
        if "Termination timeout for" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[0, 0, 0]", done.stdout
