"""Jitted Adam step time, gradtx against Optax, on three parameter trees.

For each tree it compiles ``params, state = step(params, state, grads)`` (the optimizer
update plus ``apply_updates``) with params and state donated, runs gradtx and Optax
steps alternately (so that load from other processes hits both alike), and prints the
median step time of each, their ratio, the compile times (trace + lower + XLA compile),
the number of fusions in the optimized HLO and the bytes per parameter that XLA's cost
analysis expects the step to move, as a markdown table.

    python benchmarks/step_time.py            # full size (GPT-2 small: ~124M params)
    python benchmarks/step_time.py --scale 0.25   # a quarter of every tree
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import gradtx as gtx


def one_big_leaf(scale: float) -> dict:
    side = int(4096 * scale**0.5)
    return {"w": (side, side)}


def many_small_leaves(scale: float) -> dict:
    return {f"leaf_{i:04d}": (4096,) for i in range(max(1, int(1000 * scale)))}


def gpt2_small(scale: float) -> dict:
    """GPT-2 small's parameter shapes (124M parameters in 148 leaves); ``scale`` < 1
    shrinks the vocabulary and the width, keeping the 12 layers and the leaf count."""
    d = int(768 * scale**0.5) // 64 * 64 or 64
    vocab = int(50257 * scale**0.5)
    shapes = {"wte": (vocab, d), "wpe": (1024, d), "ln_f": {"g": (d,), "b": (d,)}}
    for layer in range(12):
        shapes[f"h{layer:02d}"] = {
            "ln_1": {"g": (d,), "b": (d,)},
            "attn": {"c_attn": {"w": (d, 3 * d), "b": (3 * d,)},
                     "c_proj": {"w": (d, d), "b": (d,)}},
            "ln_2": {"g": (d,), "b": (d,)},
            "mlp": {"c_fc": {"w": (d, 4 * d), "b": (4 * d,)},
                    "c_proj": {"w": (4 * d, d), "b": (d,)}},
        }  # fmt: skip
    return shapes


def make_tree(shapes: dict, seed: int) -> dict:
    key = jax.random.PRNGKey(seed)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [0.02 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, leaves, strict=True)]
    )


def gradtx_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    return step


def optax_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def count_fusions(hlo_text: str) -> int:
    """Fused computations called from the entry computation (loop, input and output
    fusions): each is one pass over memory and, on CPU, one kernel launch."""
    entry = hlo_text[hlo_text.index("ENTRY") :]
    return len(re.findall(r"\bfusion\(", entry))


class Compiled:
    def __init__(self, name, tx, make_step, params, grads):
        self.name = name
        step_fn = make_step(tx)
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        self.grads = grads
        jitted = jax.jit(step_fn, donate_argnums=(0, 1))
        start = time.perf_counter()
        lowered = jitted.lower(self.params, self.state, grads)
        self.executable = lowered.compile()
        self.compile_seconds = time.perf_counter() - start
        self.fusions = count_fusions(self.executable.as_text())
        cost = self.executable.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        n_params = sum(x.size for x in jax.tree.leaves(params))
        self.bytes_per_param = cost.get("bytes accessed", float("nan")) / n_params
        self.times: list[float] = []

    def run(self, record: bool) -> None:
        start = time.perf_counter()
        self.params, self.state = self.executable(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        if record:
            self.times.append(time.perf_counter() - start)

    def release(self) -> None:
        del self.params, self.state, self.grads, self.executable


def benchmark(label: str, shapes: dict, steps: int, warmup: int = 3) -> dict:
    params = make_tree(shapes, seed=0)
    grads = make_tree(shapes, seed=1)  # shared: never donated
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_leaves = len(jax.tree.leaves(params))
    runs = [
        Compiled("gradtx", gtx.adam(1e-3), gradtx_step, params, grads),
        Compiled("optax", optax.adam(1e-3), optax_step, params, grads),
    ]
    if n_leaves > 1:
        flat = gtx.flatten(gtx.adam(1e-3))
        runs.append(Compiled("gradtx flatten", flat, gradtx_step, params, grads))
    del params, grads
    for i in range(warmup + steps):
        for run in runs if i % 2 == 0 else runs[::-1]:
            run.run(record=i >= warmup)
    ours, theirs = runs[:2]
    row = {
        "tree": label,
        "params": n_params,
        "leaves": n_leaves,
        "gradtx_ms": 1e3 * statistics.median(ours.times),
        "optax_ms": 1e3 * statistics.median(theirs.times),
        "flatten_ms": 1e3 * statistics.median(runs[2].times) if len(runs) > 2 else None,
        "gradtx_compile_s": ours.compile_seconds,
        "optax_compile_s": theirs.compile_seconds,
        "gradtx_fusions": ours.fusions,
        "optax_fusions": theirs.fusions,
        "gradtx_bytes": ours.bytes_per_param,
        "optax_bytes": theirs.bytes_per_param,
    }
    row["ratio"] = row["gradtx_ms"] / row["optax_ms"]
    for run in runs:
        run.release()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every tree")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per library")
    args = parser.parse_args()
    cases = [
        ("one leaf of 16M", one_big_leaf(args.scale), args.steps),
        ("1,000 leaves of 4,096", many_small_leaves(args.scale), 3 * args.steps),
        ("GPT-2 small", gpt2_small(args.scale), max(5, args.steps // 2)),
    ]
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, optax {optax.__version__}, {device.platform} "
          f"({device.device_kind}), {os.cpu_count()} CPU cores visible")  # fmt: skip
    if args.scale != 1.0:
        print(f"every tree scaled down by {args.scale} (the counts below are those run)")
    print("Adam step = update + apply_updates, jitted, params and state donated; median "
          f"over the timed steps ({args.steps}; 3x for 1,000 leaves, half for GPT-2), "
          "the contenders alternating. 'flatten': gtx.flatten(gtx.adam(...)), all leaves "
          "in one vector.\n")  # fmt: skip
    print("| tree | params | leaves | gradtx (ms) | optax (ms) | gradtx / optax "
          "| gradtx flatten (ms) | compile gradtx (s) | compile optax (s) "
          "| fusions gradtx / optax | bytes per param gradtx / optax |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    # The first compilation in a process pays one-time costs (jnp caches, XLA start-up);
    # a small untimed run keeps them out of whichever contender is compiled first.
    benchmark("warm-up", gpt2_small(1e-4), steps=1, warmup=1)
    for label, shapes, steps in cases:
        row = benchmark(label, shapes, steps)
        flatten_ms = "-" if row["flatten_ms"] is None else f"{row['flatten_ms']:.2f}"
        print(
            f"| {row['tree']} | {row['params'] / 1e6:.1f}M | {row['leaves']} "
            f"| {row['gradtx_ms']:.2f} | {row['optax_ms']:.2f} | {row['ratio']:.2f} "
            f"| {flatten_ms} | {row['gradtx_compile_s']:.2f} | {row['optax_compile_s']:.2f} "
            f"| {row['gradtx_fusions']} / {row['optax_fusions']} "
            f"| {row['gradtx_bytes']:.1f} / {row['optax_bytes']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
