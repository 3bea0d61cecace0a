"""Host-side state tools between steps: reading and setting a learning rate, reading a
moment, gradtx against Optax, on Adam's state for trees of many leaves.

A training loop that sets its learning rate from Python at every step (PyTorch's
``for group in optimizer.param_groups: group["lr"] = ...``) pays for the call at every
step, beside a jitted step of a few milliseconds. Prints the median ms per call of each
tool as a markdown table::

    python benchmarks/state_tools.py            # 100, 1,000 and 10,000 leaves of 16
    python benchmarks/state_tools.py --quick    # 10 and 100 leaves, few calls

Optax's counterparts: ``optax.tree_utils.tree_get``/``tree_set`` on the state of
``optax.inject_hyperparams(optax.adam)``, and its ``hyperparams`` dict read and written
in place (what Optax's documentation shows; no check, no cast, no copy).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import gradtx as gtx


def median_ms(call, calls: int) -> float:
    """Median ms of ``call()`` on the host (what it computes on the device is a cast
    and a copy of one scalar, waited for here only after the timing)."""
    call()  # the first call compiles the casts and copies it makes
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    jax.block_until_ready(result)
    return 1e3 * statistics.median(times)


def measure(n_leaves: int, calls: int) -> list[tuple[str, float, float]]:
    params = {f"layer_{i:05d}": jnp.zeros(16) for i in range(n_leaves)}
    state = gtx.adam(1e-3).init(params)
    optax_state = optax.inject_hyperparams(optax.adam)(1e-3).init(params)

    def optax_set_in_place():
        optax_state.hyperparams["learning_rate"] = jnp.asarray(2e-3)
        return optax_state

    return [
        (
            "set the learning rate",
            median_ms(lambda: gtx.set_hyperparams(state, learning_rate=2e-3), calls),
            median_ms(lambda: optax.tree_utils.tree_set(optax_state, learning_rate=2e-3), calls),
        ),
        (
            "set it (Optax: in place)",
            median_ms(lambda: gtx.set_hyperparams(state, learning_rate=2e-3), calls),
            median_ms(optax_set_in_place, calls),
        ),
        (
            "read the learning rate",
            median_ms(lambda: gtx.get_hyperparams(state)["learning_rate"], calls),
            median_ms(lambda: optax.tree_utils.tree_get(optax_state, "learning_rate"), calls),
        ),
        (
            "tree_set(learning_rate=)",
            median_ms(lambda: gtx.tree_set(state, learning_rate=2e-3), calls),
            median_ms(lambda: optax.tree_utils.tree_set(optax_state, learning_rate=2e-3), calls),
        ),
        (
            'tree_get("mu")',
            median_ms(lambda: gtx.tree_get(state, "mu"), calls),
            median_ms(lambda: optax.tree_utils.tree_get(optax_state, "mu"), calls),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small trees, few calls")
    args = parser.parse_args()
    sizes, calls = ([10, 100], 5) if args.quick else ([100, 1_000, 10_000], 50)
    print(f"jax {jax.__version__}, optax {optax.__version__}; Adam's state, leaves of 16")
    print()
    print("| leaves | tool | gradtx (ms) | Optax (ms) | / Optax |")
    print("|---:|---|---:|---:|---:|")
    for n_leaves in sizes:
        for tool, ours, theirs in measure(n_leaves, calls):
            print(f"| {n_leaves:,} | {tool} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
