"""Bucketed elementwise math with per-leaf state, measured against the per-leaf step.

Issue 7's lead for many small leaves is to run elementwise transforms on contiguous
buckets. With the state per leaf, as DESIGN.md's state rules have it, a bucket means
concatenating the gradients, parameters and every per-leaf state tree into one vector
per step, one elementwise pass, and slicing the results back into per-leaf arrays.
This script measures that against the per-leaf step (the default), ``gtx.flatten``
(state kept as one vector: bucketed state) and Optax, on 1,000 leaves of 4,096 float32:

    python benchmarks/bucketed_math.py [--leaves 1000] [--size 4096] [--steps 20]

It prints compile time, the loop fusions of the optimized HLO and the median step time
(jitted, donated, the contenders taking turns), each with its ratio to Optax.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_all import JaxRun, make_tree  # noqa: E402


def bucketed_math(tx: gtx.GradientTransformation) -> gtx.GradientTransformation:
    """``tx`` updating one concatenated vector while its state stays per leaf: every
    state subtree shaped like the updates is concatenated before the update and sliced
    back after it (a measurement aid, not a library transform)."""

    def update(updates, state, params=None, **extra):
        leaves, treedef = jax.tree.flatten(updates)
        shapes = [x.shape for x in leaves]
        total = sum(math.prod(s) for s in shapes)

        def like_updates(node):
            return jax.tree.structure(node) == treedef

        def concat(node):
            if not like_updates(node):
                return node
            return jnp.concatenate([x.ravel() for x in treedef.flatten_up_to(node)])

        def split(node):
            if not (isinstance(node, jax.Array) and node.shape == (total,)):
                return node
            pieces, start = [], 0
            for shape in shapes:
                size = math.prod(shape)
                pieces.append(node[start : start + size].reshape(shape))
                start += size
            return treedef.unflatten(pieces)

        flat_state = jax.tree.map(concat, state, is_leaf=like_updates)
        flat_params = None if params is None else concat(params)
        flat_updates, flat_state = tx.update(concat(updates), flat_state, flat_params, **extra)
        return split(flat_updates), jax.tree.map(split, flat_state)

    return gtx.GradientTransformation(tx.init, update)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096, help="float32 elements per leaf")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contender")
    args = parser.parse_args(argv)
    shapes = {f"w{i:04d}": (args.size,) for i in range(args.leaves)}
    params, grads = make_tree(shapes, seed=0), make_tree(shapes, seed=1)
    contenders = {
        "gradtx (per leaf, default)": (gtx.adam(1e-3), gtx.apply_updates),
        "gradtx, bucketed math, per-leaf state": (
            bucketed_math(gtx.adam(1e-3)),
            gtx.apply_updates,
        ),
        "gtx.flatten (bucketed state)": (gtx.flatten(gtx.adam(1e-3)), gtx.apply_updates),
        "optax": (optax.adam(1e-3), optax.apply_updates),
    }
    runs = {name: JaxRun(tx, apply, params, grads) for name, (tx, apply) in contenders.items()}
    for run in runs.values():  # warm-up
        run.run()
    for _ in range(args.steps):
        for run in runs.values():
            run.times.append(run.run())
    optax_run = runs["optax"]
    optax_ms = 1e3 * statistics.median(optax_run.times)
    print(
        f"Adam on {args.leaves:,} leaves x {args.size:,} float32, jitted and donated "
        f"(jax {jax.__version__}, optax {optax.__version__}; median of {args.steps} steps)\n"
    )
    print(
        "| contender | compile (s) | / optax | fusions | step (ms) | / optax "
        "| max abs difference of the params to the per-leaf step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    reference = jax.tree.leaves(runs["gradtx (per leaf, default)"].params)
    for name, run in runs.items():  # every contender took the same steps from the same params
        ms = 1e3 * statistics.median(run.times)
        difference = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(run.params), reference, strict=True)
        )
        print(
            f"| {name} | {run.compile_s:.2f} | {run.compile_s / optax_run.compile_s:.2f} "
            f"| {run.fusions} | {ms:.2f} | {ms / optax_ms:.2f} | {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
