"""The whole optimizer-performance comparison (issue 7), printed as markdown tables.

    python benchmarks/run_all.py                 # GPT-2 small at a quarter of its size
    python benchmarks/run_all.py --gpt2-scale 1  # the full 124M parameters (~12 GB)
    python benchmarks/run_all.py --quick         # small trees, few steps: a smoke run

Tables, each measured in this one process (and one subprocess per memory row):

1. memory bandwidth: ``y = a * x + y`` over the largest tree's size, jitted and donated
   in JAX and in place in PyTorch (multi-threaded; measured in a subprocess);
2. Adam step time per tree (update + ``apply_updates``, jitted, params and state
   donated, median of the timed steps, the contenders alternating so that load from
   other processes hits them alike): gradtx, ``gtx.flatten`` (all leaves in one vector),
   Optax, Optax on the same parameters as one leaf, PyTorch's fused and foreach Adam
   (when torch is installed); with the fusions in the optimized HLO, the bytes the
   compiled step accesses per parameter (XLA's cost analysis) and the bandwidth
   achieved at the minimum 28 bytes/param, as a fraction of table 1's;
3. compile time (lower + compile) and eager (un-jitted) update time on 1,000 leaves
   (first call, second call, median after), for Adam and for the chain
   clip_by_global_norm, scale_by_adam, add_decayed_weights, an injected learning-rate
   schedule;
4. peak memory of a step relative to params + grads + optimizer state: from the
   compiled executable's ``memory_analysis()`` (donated and not), and the peak resident
   memory of a process running donated steps;
5. per optimizer (the named ones, some wrappers and low-memory options) on one leaf:
   the parameter-sized temporaries of its donated step, its peak memory and its step
   time, beside Optax's;
6. bytes of optimizer state per parameter for each low-memory option.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradtx as gtx
from gradtx import eager_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import count_fusions, gpt2_small, make_tree, many_small_leaves  # noqa: E402

MIN_BYTES_PER_PARAM = 28  # fp32 Adam: read p, g, m, v; write p, m, v


def one_big_leaf(scale: float) -> dict:
    return {"w": (int(16_777_216 * scale),)} if scale < 1 else {"w": (4096, 4096)}


def trees(args) -> list[tuple[str, dict]]:
    small = 0.02 if args.quick else 1.0
    gpt2 = 0.01 if args.quick else args.gpt2_scale
    return [
        ("1 leaf x 16.8M", one_big_leaf(small)),
        ("1,000 leaves x 4,096", many_small_leaves(0.1 if args.quick else 1.0)),
        (f"GPT-2 small shapes x{gpt2:g}", gpt2_small(gpt2)),
    ]


def n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def tree_bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


# --- JAX contenders -----------------------------------------------------------------


def jax_step(tx, apply_updates):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    return step


class JaxRun:
    """One compiled, donated step of one optimizer on its own copy of the params."""

    def __init__(self, tx, apply_updates, params, grads):
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        self.grads = grads
        start = time.perf_counter()
        lowered = jax.jit(jax_step(tx, apply_updates), donate_argnums=(0, 1)).lower(
            self.params, self.state, grads
        )
        self.executable = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.fusions = count_fusions(self.executable.as_text())
        cost = self.executable.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.bytes_per_param = cost.get("bytes accessed", float("nan")) / n_params(params)
        self.times: list[float] = []

    def run(self) -> float:
        start = time.perf_counter()
        self.params, self.state = self.executable(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return time.perf_counter() - start


TORCH_PROBE = """
import statistics, sys, time
import numpy as np
import torch
shapes, steps = {shapes!r}, {steps!r}
rng = np.random.default_rng(0)
tensors = [torch.tensor(0.02 * rng.standard_normal(s, np.float32)).requires_grad_()
           for s in shapes]
for t in tensors:
    t.grad = torch.tensor(0.02 * rng.standard_normal(tuple(t.shape), np.float32))
for mode in ("fused", "foreach"):
    options = dict(fused=True) if mode == "fused" else dict(foreach=True, fused=False)
    optimizer = torch.optim.Adam(tensors, lr=1e-3, **options)
    times = []
    for i in range(3 + steps):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    print(mode, 1e3 * statistics.median(times[3:]))
"""


def torch_ms(shapes: dict, steps: int) -> dict[str, float]:
    """Median ms of ``torch.optim.Adam(fused=True)`` and ``(foreach=True)`` steps, run in
    a subprocess of their own: in a process where XLA's CPU threads run, fused Adam was
    40x slower here (the two runtimes' thread pools contend for the cores)."""
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    code = TORCH_PROBE.format(shapes=leaves, steps=steps)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return {
        f"torch {mode}": float(ms)
        for mode, ms in (line.split() for line in result.stdout.strip().splitlines())
    }


def torch_version() -> str | None:
    result = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


# --- tables ---------------------------------------------------------------------------


def bandwidth_gbs(n_elements: int, repeats: int) -> float:
    """GB/s of a jitted, donated ``y = a * x + y`` (reads 8 bytes, writes 4 per element)."""
    x = jnp.ones(n_elements, jnp.float32)
    y = jnp.ones(n_elements, jnp.float32)
    axpy = jax.jit(lambda a, x, y: a * x + y, donate_argnums=(2,))
    y = jax.block_until_ready(axpy(0.5, x, y))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        y = jax.block_until_ready(axpy(0.5, x, y))
        times.append(time.perf_counter() - start)
    return 12 * n_elements / statistics.median(times) / 1e9


TORCH_AXPY = """
import statistics, time
import torch
x, y = torch.ones({n}), torch.ones({n})
times = []
for _ in range(3 + {repeats}):
    start = time.perf_counter()
    y.add_(x, alpha=0.5)
    times.append(time.perf_counter() - start)
print(12 * {n} / statistics.median(times[3:]) / 1e9)
"""


def torch_bandwidth_gbs(n_elements: int, repeats: int) -> float:
    """GB/s of PyTorch's in-place ``y += a * x`` (multi-threaded), in a subprocess."""
    code = TORCH_AXPY.format(n=n_elements, repeats=repeats)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def step_table(label, shapes, steps, with_torch, bandwidth) -> None:
    params = make_tree(shapes, seed=0)
    grads = make_tree(shapes, seed=1)
    n = n_params(params)
    runs = {
        "gradtx": JaxRun(gtx.adam(1e-3), gtx.apply_updates, params, grads),
        "gradtx flatten": JaxRun(gtx.flatten(gtx.adam(1e-3)), gtx.apply_updates, params, grads),
        "gradtx flatten, offsets in state": JaxRun(
            gtx.flatten(gtx.adam(1e-3), offsets_in_state=True), gtx.apply_updates, params, grads
        ),
        "optax": JaxRun(optax.adam(1e-3), optax.apply_updates, params, grads),
    }
    if len(jax.tree.leaves(params)) > 1:
        one_leaf = {"w": jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])}
        one_grad = {"w": jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(grads)])}
        runs["optax, one leaf"] = JaxRun(optax.adam(1e-3), optax.apply_updates, one_leaf, one_grad)
        del one_leaf, one_grad
    del params, grads
    order = list(runs.values())
    for i in range(3 + steps):
        for run in order if i % 2 == 0 else order[::-1]:
            elapsed = run.run()
            if i >= 3:
                run.times.append(elapsed)
    rows = {
        name: (1e3 * statistics.median(run.times), run.fusions, run.bytes_per_param)
        for name, run in runs.items()
    }
    for run in order:
        run.__dict__.clear()
    if with_torch:
        rows.update({name: (ms, None, None) for name, ms in torch_ms(shapes, steps).items()})
    fused_ms = rows["torch fused"][0] if with_torch else None
    optax_ms = rows["optax"][0]
    for name, (ms, fusions, accessed) in rows.items():
        achieved = MIN_BYTES_PER_PARAM * n / (ms / 1e3) / 1e9
        print(
            f"| {label} | {name} | {ms:.2f} | {ms / optax_ms:.2f} "
            f"| {f'{ms / fused_ms:.2f}' if fused_ms else '-'} "
            f"| {'-' if fusions is None else fusions} "
            f"| {'-' if accessed is None else f'{accessed:.1f}'} "
            f"| {achieved:.1f} ({100 * achieved / bandwidth:.0f}%) |",
            flush=True,
        )


def the_chain(lib):
    """The issue's chain: clip_by_global_norm, scale_by_adam, add_decayed_weights and an
    injected learning-rate schedule."""
    if lib is gtx:
        schedule = gtx.schedules.warmup_cosine_decay(0.0, 1e-3, 10, 1000)
        return gtx.chain(
            gtx.clip_by_global_norm(1.0),
            gtx.scale_by_adam(),
            gtx.add_decayed_weights(1e-4),
            gtx.schedule_injection(gtx.scale_by_learning_rate)(learning_rate=schedule),
        )
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 1000)
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(),
        optax.add_decayed_weights(1e-4),
        optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=schedule),
    )


def eager_calls_ms(tx, state, params, grads, calls: int) -> list[float]:
    """ms of each of ``calls`` un-jitted ``tx.update`` calls (the result freed inside)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(tx.update(grads, state, params))
        times.append(1e3 * (time.perf_counter() - start))
    return times


def compile_eager_table(shapes, rounds: int, compile_rounds: int, calls_per_round: int = 4) -> None:
    """Compile time of each contender's step, in ``compile_rounds`` rounds that take the
    contenders in turn (a fresh trace and compilation each time), then its eager
    ``tx.update``: the first call, the second (where gradtx compiles its per-leaf
    kernels, ``tree.COMPILE_EAGER_LEAF_FUNCTIONS``) and, in ``rounds`` rounds, the
    median of ``calls_per_round`` calls. Each ratio to Optax is the median over the
    rounds of the ratio within a round, so a slow spell of this shared machine weighs
    on both sides of it (single compilations of one step moved by 20-30% from run to
    run)."""
    params = make_tree(shapes, seed=0)
    grads = make_tree(shapes, seed=1)
    contenders = {
        "Adam": {
            "gradtx": (gtx.adam(1e-3), gtx.apply_updates),
            "gradtx flatten": (gtx.flatten(gtx.adam(1e-3)), gtx.apply_updates),
            "gradtx flatten, offsets in state": (
                gtx.flatten(gtx.adam(1e-3), offsets_in_state=True),
                gtx.apply_updates,
            ),
            "optax": (optax.adam(1e-3), optax.apply_updates),
        },
        "chain": {
            "gradtx": (the_chain(gtx), gtx.apply_updates),
            "optax": (the_chain(optax), optax.apply_updates),
        },
    }
    tiny = {"a": jnp.ones(8), "b": jnp.ones(8)}
    for runs in contenders.values():  # untimed: one-time costs of the first trace of each
        for tx, apply_updates in runs.values():
            JaxRun(tx, apply_updates, tiny, tiny).__dict__.clear()
    for what, runs in contenders.items():
        compile_s = {name: [] for name in runs}
        fusions = {}
        for _ in range(compile_rounds):
            for name, (tx, apply_updates) in runs.items():
                run = JaxRun(tx, apply_updates, params, grads)
                compile_s[name].append(run.compile_s)
                fusions[name] = run.fusions
                run.__dict__.clear()
        results, states = {}, {}
        for name, (tx, _) in runs.items():
            # gradtx's eager kernels are cached by per-leaf code, which flatten(adam)
            # shares with adam: each contender's first two calls start from an empty
            # cache (JAX's own caches of single operations stay shared)
            eager_kernels.KERNELS.__init__()
            states[name] = tx.init(params)
            results[name] = eager_calls_ms(tx, states[name], params, grads, 2)
        medians = {name: [] for name in runs}
        for _ in range(rounds):
            for name, (tx, _) in runs.items():
                times = eager_calls_ms(tx, states[name], params, grads, calls_per_round)
                medians[name].append(statistics.median(times))
        for name, (first, second) in results.items():
            print(
                f"| {what} | {name} | {statistics.median(compile_s[name]):.2f} "
                f"| {median_ratio(compile_s[name], compile_s['optax']):.2f} "
                f"| {fusions[name]} | {first:.0f} | {second:.0f} "
                f"| {statistics.median(medians[name]):.1f} "
                f"| {median_ratio(medians[name], medians['optax']):.2f} |",
                flush=True,
            )


def median_ratio(times: list[float], optax_times: list[float]) -> float:
    """The median over rounds of the ratio of two contenders' times in the same round."""
    return statistics.median(a / b for a, b in zip(times, optax_times, strict=True))


def memory_ratios(tx, apply_updates, params, grads) -> tuple[float, float]:
    """Peak bytes of a compiled step (arguments + outputs - aliased + temporaries) over
    params + grads + state, donated and not."""
    state = jax.eval_shape(tx.init, params)
    baseline = tree_bytes((params, grads, state))
    ratios = []
    for donate in ((0, 1), ()):
        jitted = jax.jit(jax_step(tx, apply_updates), donate_argnums=donate)
        stats = jitted.lower(params, state, grads).compile().memory_analysis()
        peak = (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes
        )
        ratios.append(peak / baseline)
    return ratios[0], ratios[1]


RSS_PROBE = """
import sys, threading, time
import jax, jax.numpy as jnp, optax
import gradtx as gtx
sys.path.insert(0, {benchmarks!r})
from run_all import jax_step, make_tree, tree_bytes
lib = optax if {library!r} == "optax" else gtx
shapes = {shapes!r}
abstract = jax.eval_shape(lambda: make_tree(shapes, 0))
tx = lib.adam(1e-3)
if {library!r} == "gradtx flatten":
    tx = gtx.flatten(gtx.adam(1e-3))
step = jax.jit(jax_step(tx, lib.apply_updates), donate_argnums=(0, 1))
step = step.lower(abstract, jax.eval_shape(tx.init, abstract), abstract).compile()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
params, grads = make_tree(shapes, 0), make_tree(shapes, 1)
state = tx.init(params)
jax.block_until_ready((params, grads, state))
held = tree_bytes((params, grads, state))
# from here: what the steps add (making the tree and the state leaves temporaries of its
# own, resident or not, which are no part of a step)
before = rss()
peak = [before]
done = False
def poll():
    while not done:
        peak.append(rss())
        time.sleep(0.0005)
thread = threading.Thread(target=poll)
thread.start()
for _ in range(5):
    params, state = jax.block_until_ready(step(params, state, grads))
done = True
thread.join()
print(1 + (max(peak) - before) / held)
"""


def rss_ratio(library: str, shapes: dict) -> float:
    code = RSS_PROBE.format(
        benchmarks=str(Path(__file__).resolve().parent), library=library, shapes=shapes
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def memory_table(cases) -> None:
    for label, shapes in cases:
        params = jax.eval_shape(lambda shapes=shapes: make_tree(shapes, 0))
        for name, tx, apply_updates in (
            ("gradtx", gtx.adam(1e-3), gtx.apply_updates),
            ("gradtx flatten", gtx.flatten(gtx.adam(1e-3)), gtx.apply_updates),
            ("optax", optax.adam(1e-3), optax.apply_updates),
        ):
            donated, kept = memory_ratios(tx, apply_updates, params, params)
            print(
                f"| {label} | {name} | {donated:.3f} | {kept:.3f} "
                f"| {rss_ratio(name, shapes):.3f} |",
                flush=True,
            )


def every_optimizer() -> list[tuple[str, object, object]]:
    """(name, gradtx's, Optax's or None): the named optimizers and the wrappers and
    low-memory options whose steps hold temporaries."""
    lr = 1e-3
    pairs = [
        (name, getattr(gtx, name)(lr), getattr(optax, name)(lr))
        for name in ("sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "amsgrad")
        + ("adamax", "adamaxw", "nadam", "nadamw", "radam", "rprop")
    ]
    return pairs + [
        ("sgd, momentum 0.9", gtx.sgd(lr, 0.9), optax.sgd(lr, 0.9)),
        ("sgd, nesterov", gtx.sgd(lr, 0.9, True), optax.sgd(lr, 0.9, True)),
        (
            "rmsprop, nesterov momentum",
            gtx.rmsprop(lr, momentum=0.9, nesterov=True),
            optax.rmsprop(lr, momentum=0.9, nesterov=True),
        ),  # fmt: skip
        ("noisy_sgd", gtx.noisy_sgd(lr), optax.noisy_sgd(lr, key=0)),
        ("averaged_sgd", gtx.averaged_sgd(lr), None),
        ("swats", gtx.swats(lr), None),
        (
            "clip_by_global_norm, adamw",
            gtx.chain(gtx.clip_by_global_norm(1.0), gtx.adamw(lr)),
            optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr)),
        ),  # fmt: skip
        (
            "apply_if_finite(adam)",
            gtx.apply_if_finite(gtx.adam(lr), 3),
            optax.apply_if_finite(optax.adam(lr), 3),
        ),  # fmt: skip
        (
            "multi_steps(adam, 4)",
            gtx.multi_steps(gtx.adam(lr), 4),
            optax.MultiSteps(optax.adam(lr), 4).gradient_transformation(),
        ),  # fmt: skip
        ("lookahead(adam)", gtx.lookahead(gtx.adam(lr), 5, 0.5), None),
        (
            "adam, mu_dtype=bfloat16",
            gtx.adam(lr, mu_dtype=jnp.bfloat16),
            optax.adam(lr, mu_dtype=jnp.bfloat16),
        ),  # fmt: skip
        ("quantized_state(adam)", gtx.quantized_state(gtx.adam(lr)), None),
    ]


def temporaries_table(n_elements: int, steps: int, dtype=jnp.float32, names=None) -> None:
    """Per optimizer on one leaf of ``dtype``: the parameter-sized temporaries of its
    donated jitted step (XLA's buffer assignment), its peak memory over params + grads +
    state, and its step time against Optax's (the two alternating); ``names``, if given,
    the rows of ``every_optimizer`` to run."""
    shapes = {"w": (n_elements // 1024, 1024)}
    params, grads = (jax.tree.map(lambda x: x.astype(dtype), make_tree(shapes, i)) for i in (0, 1))
    leaf_bytes = tree_bytes(params)
    for name, ours, theirs in every_optimizer():
        if names is not None and name not in names:
            continue
        runs = [JaxRun(ours, gtx.apply_updates, params, grads)]
        if theirs is not None:
            runs.append(JaxRun(theirs, optax.apply_updates, params, grads))
        for _ in range(3 + steps):
            for run in runs:
                run.times.append(run.run())
        cells = []
        for run in runs:
            stats = run.executable.memory_analysis()
            held = tree_bytes((params, grads, run.state))
            peak = held + stats.temp_size_in_bytes
            ms = 1e3 * statistics.median(run.times[3:])
            cells.append((stats.temp_size_in_bytes / leaf_bytes, peak / held, ms))
        (temps, peak, ms), *rest = cells
        if rest:
            (their_temps, their_peak, their_ms) = rest[0]
            theirs_cells = (
                f"{their_temps:.2f} | {their_peak:.3f} | {their_ms:.2f} | {ms / their_ms:.2f}"
            )
        else:
            theirs_cells = "- | - | - | -"
        print(f"| {name} | {temps:.2f} | {peak:.3f} | {ms:.2f} | {theirs_cells} |", flush=True)
        del runs


def state_table() -> None:
    params = {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}
    options = {
        "adam (float32 m, v)": gtx.adam(1e-3),
        "adam, mu_dtype=bfloat16": gtx.adam(1e-3, mu_dtype=jnp.bfloat16),
        "scale_by_adam(mu_dtype=nu_dtype=bfloat16)": gtx.scale_by_adam(
            mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
        ),
        "quantized_state(adam), block 2048": gtx.quantized_state(gtx.adam(1e-3)),
        "quantized_state(adam), block 256": gtx.quantized_state(gtx.adam(1e-3), block_size=256),
        "optax.adam": optax.adam(1e-3),
    }
    for name, tx in options.items():
        state = jax.eval_shape(tx.init, params)
        print(f"| {name} | {tree_bytes(state) / n_params(params):.4f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small trees, few steps")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contender")
    parser.add_argument(
        "--gpt2-scale",
        type=float,
        default=0.25,
        help="fraction of GPT-2 small's 124M parameters (vocabulary and width shrink, "
        "the 148 leaves stay); 1 needs ~12 GB with every contender alive at once",
    )
    args = parser.parse_args(argv)
    steps = 3 if args.quick else args.steps
    torch = torch_version()
    cases = trees(args)
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, optax {optax.__version__}, torch "
        f"{torch or 'not installed'} (timed in a subprocess); {device.platform} "
        f"({device.device_kind}), {os.cpu_count()} CPU cores; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    if args.quick:
        print("--quick: small trees and few steps; the numbers are a smoke test only")
    if not args.quick and args.gpt2_scale != 1:
        print(
            f"GPT-2 small scaled to {args.gpt2_scale:g} of its parameters to fit in the memory "
            f"this machine shares (--gpt2-scale 1 for the full 124M)"
        )

    largest = max(n_params(jax.eval_shape(lambda s=s: make_tree(s, 0))) for _, s in cases)
    repeats = 5 if args.quick else 20
    jax_bandwidth = bandwidth_gbs(largest, repeats)
    torch_bandwidth = torch_bandwidth_gbs(largest, repeats) if torch else 0.0
    bandwidth = max(jax_bandwidth, torch_bandwidth)
    print(f"\n### Memory bandwidth\n\n`y = a * x + y` (12 bytes/element) on "
          f"{largest / 1e6:.1f}M float32 elements: jitted JAX, donated: "
          f"**{jax_bandwidth:.1f} GB/s**; PyTorch in place: **{torch_bandwidth:.1f} GB/s**. "
          f"The larger, {bandwidth:.1f} GB/s, is the reference below.\n")  # fmt: skip

    print("### Adam step time\n")
    print(
        f"median ms per step over {steps} steps (update + apply_updates; JAX jitted with "
        "params and state donated); 'achieved' = 28 bytes/param / time, and its share of "
        "the bandwidth above\n"
    )
    print("| tree | contender | ms | / optax | / torch fused | fusions | bytes/param "
          "accessed | achieved GB/s (% of bandwidth) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, shapes in cases:
        step_table(label, shapes, steps, torch is not None, bandwidth)

    print("\n### Compile and eager time, 1,000 leaves\n")
    rounds, compile_rounds = (2, 1) if args.quick else (5, 3)
    print(f"compile = lower + compile of the donated step, median of {compile_rounds} "
          "rounds taking the contenders in turn; eager = un-jitted `tx.update`: "
          "ms of the first call, of the second (where gradtx compiles its per-leaf "
          f"kernels) and the median of the calls after ({rounds} rounds of 4 calls "
          "taking the contenders in turn); each '/ optax' is the median of the ratios "
          "within a round\n")  # fmt: skip
    print("| optimizer | contender | compile (s) | / optax | fusions | eager 1st (ms) "
          "| eager 2nd (ms) | eager (ms) | / optax |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    compile_eager_table(cases[1][1], rounds=rounds, compile_rounds=compile_rounds)

    print("\n### Peak memory of a step / (params + grads + state)\n")
    print("(the 1,000-leaf tree is left out here: its six extra compilations per contender "
          "would double the run's time)\n")  # fmt: skip
    print("| tree | contender | compiled, donated | compiled, not donated "
          "| process RSS, donated |")  # fmt: skip
    print("|---|---|---:|---:|---:|")
    memory_table([case for case in cases if not case[0].startswith("1,000")])

    size = 65_536 if args.quick else 4_194_304
    print(f"\n### Temporaries of a donated step, every optimizer (one leaf of {size:,})\n")
    print("parameter-sized temporaries of the compiled donated step (XLA's buffer "
          "assignment: what a step holds above params + grads + state), the peak memory "
          "over params + grads + state, median ms per step over "
          f"{steps} steps (gradtx and Optax alternating)\n")  # fmt: skip
    print("| optimizer | gradtx temporaries | peak | ms | Optax temporaries | peak | ms "
          "| gradtx / Optax ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    temporaries_table(size, steps)
    print("\nThe same with bfloat16 parameters (temporaries in bfloat16 leaves), the named "
          "optimizers\n")  # fmt: skip
    print("| optimizer | gradtx temporaries | peak | ms | Optax temporaries | peak | ms "
          "| gradtx / Optax ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    named = [name for name, _, _ in every_optimizer()[:15]]
    temporaries_table(size, steps, jnp.bfloat16, named)

    print("\n### Optimizer state, bytes per parameter (one 4096x4096 float32 leaf)\n")
    print("| option | bytes/param |")
    print("|---|---:|")
    state_table()


if __name__ == "__main__":
    main()
