"""The measurement aids of ``benchmarks/`` compute what they claim to time.

Their figures go into docs/performance.md: ``bucketed_math.py`` as "bucketed Adam with
per-leaf state", ``chunked_loop.py`` as Adam run chunk by chunk in a loop,
``native_adam.py`` as Adam in a native kernel called through XLA's FFI. So each
step they build must be Adam's: the same parameters and state as the per-leaf step,
within float32 rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bucketed_math import bucketed_math  # noqa: E402
from chunked_loop import chunked, chunked_adam_ordered  # noqa: E402
from native_adam import build_kernel, native_adam_step, register  # noqa: E402
from per_array_cost import main as per_array_cost  # noqa: E402


def test_bucketed_math_is_adam_with_per_leaf_state(rng):
    params = {
        "w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=5), jnp.float32),
        "s": jnp.asarray(rng.normal(), jnp.float32),
    }
    grads_seq = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(3)
    ]
    results = []
    for tx in (gtx.adamw(1e-2, weight_decay=0.1), bucketed_math(gtx.adamw(1e-2, weight_decay=0.1))):
        state, p = tx.init(params), params
        step = jax.jit(lambda p, s, g, tx=tx: tx.update(g, s, p))
        for grads in grads_seq:
            updates, state = step(p, state, grads)
            p = gtx.apply_updates(p, updates)
        results.append((p, state))
    (plain_params, plain_state), (bucket_params, bucket_state) = results
    assert jax.tree.structure(bucket_state) == jax.tree.structure(plain_state)
    for a, b in zip(
        jax.tree.leaves((bucket_params, bucket_state)),
        jax.tree.leaves((plain_params, plain_state)),
        strict=True,
    ):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_chunked_loop_steps_are_adam_steps(rng):
    size, chunk = 4096, 1024
    params = jnp.asarray(rng.normal(size=size), jnp.float32)
    grads_seq = [jnp.asarray(rng.normal(size=size), jnp.float32) for _ in range(3)]
    tx = gtx.adam(1e-2)

    def plain(p, s, g):
        updates, s = tx.update(g, s, p)
        return gtx.apply_updates(p, updates), s

    steps = {"plain": jax.jit(plain), "chunked": chunked(tx, size, chunk)}
    steps["ordered"] = chunked_adam_ordered(size, chunk)
    results = {}
    for name, step in steps.items():
        p, state = jnp.copy(params), tx.init(params)
        for grads in grads_seq:
            p, state = step(p, state, grads)
        results[name] = (p, state)
    reference = jax.tree.leaves(results.pop("plain"))
    assert float(jnp.max(jnp.abs(reference[0] - params))) > 1e-2  # the steps moved the params
    for name, result in results.items():
        leaves = jax.tree.leaves(result)
        assert len(leaves) == len(reference), name
        for a, b in zip(leaves, reference, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7, err_msg=name)
    with pytest.raises(ValueError, match="chunk=1000 and size=4096"):
        chunked(tx, size, 1000)


def test_per_array_cost_prints_its_five_rows(capsys):
    per_array_cost(["--leaves", "3", "--size", "4", "--calls", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[1:3] for row in rows[1:]] == [
        ["12", "9"], ["12", "9"], ["12", "9"], ["4", "4"], ["4", "1"]
    ]  # fmt: skip
    assert all(float(row.split(" | ")[3]) > 0 for row in rows[1:])


def test_native_kernel_steps_are_adam_steps(rng):
    if not hasattr(jax, "ffi"):
        pytest.skip("benchmarks/native_adam.py needs jax.ffi (JAX >= 0.5.0)")
    library = build_kernel()
    if library is None:
        pytest.skip("no C++ compiler")
    register(library)
    params = {
        "w": jnp.asarray(rng.normal(size=(70_000,)), jnp.float32),  # two 64K chunks
        "b": [jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(5,), (3, 4), ()]],
    }
    grads_seq = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(3)
    ]
    tx = gtx.adam(1e-2)

    def plain(p, s, g):
        updates, s = tx.update(g, s, p)
        return gtx.apply_updates(p, updates), s

    results = {}
    for name, step in {"plain": plain, "native": native_adam_step(1e-2, group=3)}.items():
        compiled = jax.jit(step, donate_argnums=(0, 1))
        p = jax.tree.map(jnp.copy, params)
        state = tx.init(p)
        for grads in grads_seq:
            p, state = compiled(p, state, grads)
        results[name] = (p, state)
        hlo = compiled.lower(p, state, grads_seq[0]).compile().as_text()
        assert hlo.count(" custom-call(") == (2 if name == "native" else 0)  # 4 leaves, 3 a call
    reference = jax.tree.leaves(results["plain"])
    assert float(jnp.max(jnp.abs(reference[0] - params["b"][0]))) > 1e-2
    for a, b in zip(jax.tree.leaves(results["native"]), reference, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
