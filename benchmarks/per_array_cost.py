"""What a jitted step pays per array it takes and returns, apart from any computation.

An optimizer step over 1,000 leaves hands the executable 4,000 arrays (params, m, v,
grads) and gets 3,000 back. This script times donated jitted calls that compute nothing
(outputs aliased to their inputs) against ones that compute, so that the per-array
runtime cost can be read off (docs/performance.md, "Many small leaves"):

    python benchmarks/per_array_cost.py [--leaves 1000] [--size 4096] [--calls 40]

Rows: p, m, v passed through and g only read, at ``--size`` elements a leaf and at one
element; the same with ``p + g``, ``m + g``, ``v + g`` computed (3 fusions a leaf); and
``--leaves`` int32 scalars passed through or only read next to one small array (the
starts of ``gtx.flatten(..., offsets_in_state=True)`` are such scalars).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp


def median_ms(fn, carry: tuple, rest: tuple, calls: int) -> float:
    """Median wall time of ``carry = fn(*carry, *rest)`` (the carry is donated)."""
    carry = fn(*carry, *rest)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        carry = fn(*carry, *rest)
        jax.block_until_ready(carry)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096, help="float32 elements per leaf")
    parser.add_argument("--calls", type=int, default=40, help="timed calls per row")
    args = parser.parse_args(argv)
    n = args.leaves

    def trees(size):
        return [[jnp.ones(size, jnp.float32) for _ in range(n)] for _ in range(4)]

    def through(p, m, v, g):
        return p, m, v

    def add(p, m, v, g):
        return (
            [a + b for a, b in zip(p, g, strict=True)],
            [a + b for a, b in zip(m, g, strict=True)],
            [a + b for a, b in zip(v, g, strict=True)],
        )

    def scalars_through(x, scalars):
        return x + 1, scalars

    def scalars_read(x, scalars):
        return (x + 1,)

    rows = []
    for name, fn, size in (
        (f"p, m, v through, g read ({args.size} elements)", through, args.size),
        ("p, m, v through, g read (1 element)", through, 1),
        (f"p + g, m + g, v + g ({args.size} elements)", add, args.size),
    ):
        p, m, v, g = trees(size)
        step = jax.jit(fn, donate_argnums=(0, 1, 2))
        ms = median_ms(step, (p, m, v), (g,), args.calls)
        rows.append((name, 4 * n, 3 * n, ms))
    scalars = [jnp.int32(i) for i in range(n)]
    step = jax.jit(scalars_through, donate_argnums=(0, 1))
    ms = median_ms(step, (jnp.ones(8), scalars), (), args.calls)
    rows.append((f"{n} int32 scalars through", n + 1, n + 1, ms))
    step = jax.jit(scalars_read, donate_argnums=0)
    ms = median_ms(step, (jnp.ones(8),), (scalars,), args.calls)
    rows.append((f"{n} int32 scalars read", n + 1, 1, ms))
    print(
        f"donated jitted calls on {n:,} leaves (jax {jax.__version__}, "
        f"{jax.devices()[0].device_kind}; median of {args.calls} calls)\n"
    )
    print("| call | arrays in | arrays out | ms | us per array in or out |")
    print("|---|---:|---:|---:|---:|")
    for name, arrays_in, arrays_out, ms in rows:
        per_array = 1e3 * ms / (arrays_in + arrays_out)
        print(f"| {name} | {arrays_in:,} | {arrays_out:,} | {ms:.2f} | {per_array:.2f} |")


if __name__ == "__main__":
    main()
