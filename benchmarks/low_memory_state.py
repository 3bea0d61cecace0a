"""Low-memory optimizer state: bytes per parameter and digits test accuracy per option.

Trains the digits CNN of ``examples/compare_optimizers.py`` (its model, data, batches and
training loop, reused as they are) with Adam whose state is kept in float32, in bfloat16
(``mu_dtype``/``nu_dtype``) and in 8 bits (``gtx.quantized_state``), from the same
initial weights and batch order, and prints a markdown table::

    python benchmarks/low_memory_state.py             # 400 steps, 3 seeds
    python benchmarks/low_memory_state.py --quick     # 20 steps, 1 seed
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import _digits  # noqa: E402
import compare_optimizers  # noqa: E402

LEARNING_RATE = 1e-3


def adam_bf16_moments():
    return gtx.chain(
        gtx.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        gtx.scale_by_learning_rate(LEARNING_RATE),
    )


OPTIONS = {
    "adam, float32 state": lambda: gtx.adam(LEARNING_RATE),
    "adam, bfloat16 m": lambda: gtx.adam(LEARNING_RATE, mu_dtype=jnp.bfloat16),
    "adam, bfloat16 m and v": adam_bf16_moments,
    "adam, 8-bit state (leaves >= 4096)": lambda: gtx.quantized_state(gtx.adam(LEARNING_RATE)),
    "adam, 8-bit state (every leaf)": lambda: gtx.quantized_state(
        gtx.adam(LEARNING_RATE), min_size=0
    ),
}


def state_bytes_per_param(tx, params) -> float:
    """Bytes of the arrays that grow with the model (not the scalar counters and
    hyperparameters) per parameter."""
    n = sum(x.size for x in jax.tree.leaves(params))
    state = jax.eval_shape(tx.init, params)
    sizes = [x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if x.ndim > 0]
    return sum(sizes) / n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 steps, one seed")
    args = parser.parse_args(argv)
    steps, seeds = (20, 1) if args.quick else (args.steps, args.seeds)
    data = _digits.load()
    params = _digits.init_params(0)
    sizes = sorted((x.size for x in jax.tree.leaves(params)), reverse=True)
    print(
        f"digits CNN ({sum(sizes)} parameters in {len(sizes)} leaves, the largest {sizes[:3]}),"
        f" Adam lr={LEARNING_RATE}, batch {compare_optimizers.BATCH_SIZE}, {steps} steps, "
        f"seeds 0..{seeds - 1}; test accuracy as mean (min-max) over the seeds\n"
    )
    print("| state | bytes/param of state | test accuracy | test loss | vs float32 (points) |")
    print("|---|---:|---:|---:|---:|")
    baseline = None
    for name, build in OPTIONS.items():
        finals = [
            compare_optimizers.run(name, build(), data, steps, seed, progress=False)[1]
            for seed in range(seeds)
        ]
        accuracies = [100 * f["test_acc"] for f in finals]
        accuracy = statistics.mean(accuracies)
        baseline = accuracy if baseline is None else baseline
        print(
            f"| {name} | {state_bytes_per_param(build(), params):.3f} "
            f"| {accuracy:.2f} ({min(accuracies):.2f}-{max(accuracies):.2f}) "
            f"| {statistics.mean(f['test_loss'] for f in finals):.4f} "
            f"| {accuracy - baseline:+.2f} |",
            flush=True,
        )
    big = {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}
    print("\nbytes/param of state on one 4096x4096 float32 leaf:")
    for name, build in OPTIONS.items():
        print(f"- {name}: {state_bytes_per_param(build(), big):.4f}")


if __name__ == "__main__":
    main()
