"""Cache-blocked Adam on one large leaf (a ``fori_loop`` over chunks), measured.

XLA:CPU compiles a jitted Adam step on a large leaf into three loop fusions (new m, new
v, new params reading both), 40 bytes per parameter instead of the 28 a single pass
needs, because it has no multi-output loop fusion. Running the step chunk by chunk in a
``lax.fori_loop`` would keep each chunk in cache between the three fusions, so that
memory sees ~28 bytes per parameter. This script measures two ways of writing it,
against the per-leaf step (the default) and Optax, on one float32 leaf:

- "chunked tx": any transform applied to a chunk of the gradient, the parameters and
  every state leaf shaped like them, the chunk written back with
  ``dynamic_update_slice``. XLA fuses the update into the parameter write, recomputing
  it from the old m and v chunks that the state writes overwrite in place, so copy
  insertion copies whole buffers at every iteration (see the "copies" column);
- "chunked Adam, ordered": Adam's equations written so that the parameter write reads
  m and v back from the updated buffers (at an index XLA cannot prove equal, so it
  cannot fold the read into a recomputation): no copies; the loop then runs as
  intended, but XLA:CPU runs in-place ``dynamic_update_slice`` fusions on one thread
  (the "cpu / wall" column), where the plain step's fusions use every core.

    python benchmarks/chunked_loop.py [--size 16777216] [--chunks 65536 262144 1048576] [--steps 10]

It prints the median step time (jitted, donated, the contenders taking turns), its
ratio to Optax, the process CPU time per wall time during the steps, the full-size
copies in the optimized HLO and the largest difference of the parameters to the
per-leaf step.
"""

from __future__ import annotations

import argparse
import functools
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import gradtx as gtx
from gradtx import numerics

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_all import jax_step  # noqa: E402


def chunked(tx: gtx.GradientTransformation, size: int, chunk: int):
    """A jitted step ``(params, state, grads) -> (params, state)`` for one leaf of
    ``size`` elements that runs ``tx`` and the parameter update chunk by chunk (state
    leaves of another shape, such as Adam's step count, are taken whole and their last
    value kept)."""
    if size % chunk:
        raise ValueError(f"chunk must divide size, got chunk={chunk} and size={size}")

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        leaves, treedef = jax.tree.flatten(state)
        sliced = [getattr(x, "shape", None) == params.shape for x in leaves]

        def body(i, carry):
            params, big, _ = carry
            start = i * chunk
            take = functools.partial(
                jax.lax.dynamic_slice_in_dim, start_index=start, slice_size=chunk
            )
            put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, start, 0)  # noqa: E731
            parts = iter(big)
            state = treedef.unflatten(
                [take(next(parts)) if s else x for x, s in zip(leaves, sliced, strict=True)]
            )
            updates, state = tx.update(take(grads), state, take(params))
            params = put(params, take(params) + updates)
            new, parts = jax.tree.leaves(state), iter(big)
            big = [put(next(parts), x) for x, s in zip(new, sliced, strict=True) if s]
            return params, big, [x for x, s in zip(new, sliced, strict=True) if not s]

        big = [x for x, s in zip(leaves, sliced, strict=True) if s]
        small = [x for x, s in zip(leaves, sliced, strict=True) if not s]
        params, big, small = jax.lax.fori_loop(0, size // chunk, body, (params, big, small))
        big, small = iter(big), iter(small)
        return params, treedef.unflatten([next(big) if s else next(small) for s in sliced])

    return step


def chunked_adam_ordered(size: int, chunk: int):
    """``gtx.adam``'s step (hyperparameters read from its state, as ``gtx.adam`` does) on
    one leaf, chunk by chunk, written so that no buffer is copied: m and v are updated
    in place first and the parameter update reads them back."""
    if size % chunk:
        raise ValueError(f"chunk must divide size, got chunk={chunk} and size={size}")

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        hp = state.hyperparams
        adam, *rest = state.inner_state
        count = numerics.safe_increment(adam.count)
        c1 = numerics.bias_correction(hp["b1"], count)
        c2 = numerics.bias_correction(hp["b2"], count)

        def body(i, carry):
            params, m, v = carry
            start = i * chunk
            # The same offset computed differently: XLA would fold a read of the
            # updated m at `start` into the expression just written, recomputing it
            # from the old m, which the in-place write has overwritten (a copy).
            again = (i + 1) * chunk - chunk
            take = lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, chunk)  # noqa: E731
            put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, start, 0)  # noqa: E731
            g = take(grads, start)
            m = put(m, hp["b1"] * take(m, start) + (1 - hp["b1"]) * g)
            v = put(v, hp["b2"] * take(v, start) + (1 - hp["b2"]) * (g * g))
            u = (take(m, again) / c1) / (jnp.sqrt(take(v, again) / c2 + hp["eps_root"]) + hp["eps"])
            params = put(params, take(params, start) + -hp["learning_rate"] * u)
            return params, m, v

        params, m, v = jax.lax.fori_loop(0, size // chunk, body, (params, adam.mu, adam.nu))
        adam = adam._replace(count=count, mu=m, nu=v)
        inner = (adam, *rest)
        return params, state._replace(count=numerics.safe_increment(state.count), inner_state=inner)

    return step


def full_size_copies(hlo: str, size: int) -> int:
    return len(re.findall(rf"= f32\[{size}\]\S* copy\(", hlo))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16_777_216, help="float32 elements")
    parser.add_argument("--chunks", type=int, nargs="+", default=[65_536, 262_144, 1_048_576])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per contender")
    args = parser.parse_args(argv)
    params = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (args.size,))
    grads = 0.02 * jax.random.normal(jax.random.PRNGKey(1), (args.size,))
    contenders = {
        "gradtx (per leaf, default)": jax.jit(
            jax_step(gtx.adam(1e-3), gtx.apply_updates), donate_argnums=(0, 1)
        ),
        "optax": jax.jit(jax_step(optax.adam(1e-3), optax.apply_updates), donate_argnums=(0, 1)),
    }
    # the copies make "chunked tx" ~0.3 s a step at 1M elements a chunk, 4 s at 64K: once
    largest = max(args.chunks)
    contenders[f"chunked tx, chunk {largest:,}"] = chunked(gtx.adam(1e-3), args.size, largest)
    for chunk in sorted(args.chunks):
        contenders[f"chunked Adam, ordered, chunk {chunk:,}"] = chunked_adam_ordered(
            args.size, chunk
        )
    runs = {}
    for name, step in contenders.items():
        tx = optax.adam(1e-3) if name == "optax" else gtx.adam(1e-3)
        state = tx.init(params)
        executable = step.lower(params, state, grads).compile()
        new_params, new_state = executable(jnp.copy(params), jax.tree.map(jnp.copy, state), grads)
        runs[name] = {"exe": executable, "carry": [new_params, new_state], "times": []}
        runs[name]["copies"] = full_size_copies(executable.as_text(), args.size)
    for _ in range(args.steps):
        for run in runs.values():
            start = time.perf_counter()
            run["carry"] = list(run["exe"](*run["carry"], grads))
            jax.block_until_ready(run["carry"])
            run["times"].append(time.perf_counter() - start)
    for run in runs.values():  # CPU time per wall time, each contender on its own
        cpu, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.steps):
            run["carry"] = list(run["exe"](*run["carry"], grads))
        jax.block_until_ready(run["carry"])
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        run["cpu"] = (after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime) / wall
    optax_ms = 1e3 * statistics.median(runs["optax"]["times"])
    reference = runs["gradtx (per leaf, default)"]["carry"][0]
    print(
        f"Adam on one leaf of {args.size:,} float32, jitted and donated (jax {jax.__version__},"
        f" optax {optax.__version__}, {jax.devices()[0].device_kind}; median of {args.steps}"
        " steps)\n"
    )
    print(
        "| contender | step (ms) | / optax | cpu / wall | full-size copies in the HLO "
        "| max abs difference of the params to the per-leaf step |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, run in runs.items():  # every contender took the same steps from the same params
        ms = 1e3 * statistics.median(run["times"])
        difference = float(jnp.max(jnp.abs(run["carry"][0] - reference)))
        print(
            f"| {name} | {ms:.2f} | {ms / optax_ms:.2f} | {run['cpu']:.2f} "
            f"| {run['copies']} | {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
