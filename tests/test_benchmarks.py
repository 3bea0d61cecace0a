"""The measurement aid of ``benchmarks/bucketed_math.py`` computes what it claims to time.

Its figures go into docs/performance.md as "bucketed Adam with per-leaf state", so the
transform it builds must be Adam: the same parameters and per-leaf state as the
per-leaf step, within float32 rounding, on leaves of several shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bucketed_math import bucketed_math  # noqa: E402


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
