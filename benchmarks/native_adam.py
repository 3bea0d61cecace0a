"""Adam as one native kernel called through XLA's FFI, measured against the per-leaf step.

XLA:CPU compiles Adam into three loop fusions per leaf (new m, new v, new params reading
both: ~40 bytes per parameter where one pass needs 28, since XLA:CPU has no multi-output
loop fusion), and compiling a 1,000-leaf step takes seconds. This script measures what a
kernel outside XLA would give: a C++ loop that updates m, v and the parameters of many
leaves in one pass per element, registered as an XLA FFI custom call whose outputs alias
its (donated) inputs, so the update happens in place, with OpenMP over 64K-element
chunks. Each call takes ``--group`` leaves (one call for all 1,000 leaves compiles in
~80 s: XLA's passes are superlinear in a custom call's operand count). It is compiled
here with the system C++ compiler (``g++``, JAX's FFI headers from
``jax.ffi.include_dir()``); the script exits with a message where there is none.

It prints, per tree, the median step time of gradtx's per-leaf Adam (the default),
Optax and the native kernel (jitted, params and state donated, the three taking turns),
torch fused Adam in a subprocess when PyTorch is installed, the compile times, the
fusions and custom calls in the optimized HLO, and the largest difference of the
parameters to gradtx's after the timed steps (every contender took the same steps).

    python benchmarks/native_adam.py [--scale 1] [--steps 20] [--group 16] [--quick]

This is a measurement, not a gradtx feature: the kernel is float32-only, CPU-only, has
no sharding, vmap or autodiff rules, and needs a compiler at install time.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import gradtx as gtx
from gradtx import numerics

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_all import jax_step, torch_ms  # noqa: E402
from step_time import count_fusions, gpt2_small, make_tree, many_small_leaves  # noqa: E402

KERNEL = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// gradtx's scale_by_adam followed by scale_by_learning_rate and apply_updates, in the
// same order of float32 operations, one pass per element, in place.
static void Step(int64_t lo, int64_t hi, const float* __restrict g, float* __restrict p,
                 float* __restrict m, float* __restrict v, float lr, float b1, float b2,
                 float eps, float bc1, float bc2) {
  const float ob1 = 1.0f - b1, ob2 = 1.0f - b2;
  for (int64_t j = lo; j < hi; ++j) {
    const float gj = g[j];
    const float mj = b1 * m[j] + ob1 * gj;
    const float vj = b2 * v[j] + ob2 * (gj * gj);
    const float u = (mj / bc1) / (std::sqrt(vj / bc2) + eps);
    m[j] = mj;
    v[j] = vj;
    p[j] = p[j] + (-lr) * u;
  }
}

// hyper = [lr, b1, b2, eps, bc1, bc2]; args p[n], g[n], m[n], v[n]; rets p[n], m[n],
// v[n], each aliased to its argument (XLA copies an argument first where it is not
// donated), so the kernel reads and writes the result buffers.
static ffi::Error Adam(ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                       ffi::RemainingRets rets) {
  const float* h = hyper.typed_data();
  const size_t n = rets.size() / 3;
  struct Work { const float* g; float* p; float* m; float* v; int64_t lo, hi; };
  std::vector<Work> work;
  const int64_t chunk = int64_t{1} << 16;
  for (size_t i = 0; i < n; ++i) {
    auto g = args.get<ffi::AnyBuffer>(n + i);
    auto p = rets.get<ffi::AnyBuffer>(i);
    auto m = rets.get<ffi::AnyBuffer>(n + i);
    auto v = rets.get<ffi::AnyBuffer>(2 * n + i);
    if (!g.has_value() || !p.has_value() || !m.has_value() || !v.has_value()) {
      return ffi::Error::InvalidArgument("adam: missing buffer");
    }
    const int64_t size = static_cast<int64_t>(g->element_count());
    for (int64_t lo = 0; lo < size; lo += chunk) {
      work.push_back({static_cast<const float*>(g->untyped_data()),
                      static_cast<float*>((*p)->untyped_data()),
                      static_cast<float*>((*m)->untyped_data()),
                      static_cast<float*>((*v)->untyped_data()), lo,
                      std::min(size, lo + chunk)});
    }
  }
  const int64_t items = static_cast<int64_t>(work.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t w = 0; w < items; ++w) {
    const Work& k = work[w];
    Step(k.lo, k.hi, k.g, k.p, k.m, k.v, h[0], h[1], h[2], h[3], h[4], h[5]);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    GradtxNativeAdam, Adam,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().RemainingArgs().RemainingRets());
"""

TARGET = "gradtx_native_adam"


def build_kernel() -> Path | None:
    """The kernel's shared library, compiled once per source into a temporary cache
    directory; None where there is no C++ compiler."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return None
    digest = hashlib.sha256((KERNEL + jax.__version__).encode()).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / "gradtx-native-adam"
    library = directory / f"adam-{digest}.so"
    if not library.exists():
        directory.mkdir(exist_ok=True)
        source = directory / f"adam-{digest}.cc"
        source.write_text(KERNEL)
        # -ffp-contract=off: no fused multiply-adds, so the float32 operations round as
        # XLA's do; -fno-math-errno lets the loop vectorize around sqrt.
        command = [compiler, "-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno",
                   "-fopenmp", "-shared", "-fPIC", "-std=c++17", f"-I{jax.ffi.include_dir()}",
                   str(source), "-o", str(library)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    return library


def register(library: Path) -> None:
    handler = ctypes.cdll.LoadLibrary(str(library)).GradtxNativeAdam
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")


def native_adam_step(learning_rate: float, group: int):
    """``step(params, state, grads) -> (params, state)`` for ``gtx.adam(learning_rate)``'s
    state (hyperparameters read from it, as ``gtx.adam`` does), every float32 leaf updated
    by the native kernel, ``group`` leaves per custom call."""
    del learning_rate  # read from the state, where set_hyperparams would change it

    def step(params, state, grads):
        hp = state.hyperparams
        adam, *rest = state.inner_state
        count = numerics.safe_increment(adam.count)
        hyper = jnp.stack(
            [hp["learning_rate"], hp["b1"], hp["b2"], hp["eps"],
             numerics.bias_correction(hp["b1"], count), numerics.bias_correction(hp["b2"], count)]
        ).astype(jnp.float32)  # fmt: skip
        p, treedef = jax.tree.flatten(params)
        g, m, v = (treedef.flatten_up_to(x) for x in (grads, adam.mu, adam.nu))
        new_p, new_m, new_v = [], [], []
        for start in range(0, len(p), group):
            ps, gs, ms, vs = (x[start : start + group] for x in (p, g, m, v))
            n = len(ps)
            aliases = {1 + i: i for i in range(n)}
            aliases |= {1 + 2 * n + i: n + i for i in range(n)}
            aliases |= {1 + 3 * n + i: 2 * n + i for i in range(n)}
            outputs = jax.ffi.ffi_call(
                TARGET,
                [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in ps + ms + vs],
                input_output_aliases=aliases,
            )(hyper, *ps, *gs, *ms, *vs)
            new_p += outputs[:n]
            new_m += outputs[n : 2 * n]
            new_v += outputs[2 * n :]
        adam = adam._replace(count=count, mu=treedef.unflatten(new_m), nu=treedef.unflatten(new_v))
        state = state._replace(
            count=numerics.safe_increment(state.count), inner_state=(adam, *rest)
        )
        return treedef.unflatten(new_p), state

    return step


def count_custom_calls(hlo_text: str) -> int:
    return hlo_text.count(" custom-call(")


def benchmark(label: str, shapes: dict, steps: int, group: int, with_torch: bool) -> list[str]:
    params = make_tree(shapes, 0)
    grads = make_tree(shapes, 1)
    contenders = {
        "gradtx (per leaf)": (gtx.adam(1e-3), jax_step(gtx.adam(1e-3), gtx.apply_updates)),
        "optax": (optax.adam(1e-3), jax_step(optax.adam(1e-3), optax.apply_updates)),
        f"native kernel ({group} leaves a call)": (gtx.adam(1e-3), native_adam_step(1e-3, group)),
    }
    runs = {}
    for name, (tx, step) in contenders.items():
        own = jax.tree.map(jnp.copy, params)
        state = tx.init(own)
        start = time.perf_counter()
        executable = jax.jit(step, donate_argnums=(0, 1)).lower(own, state, grads).compile()
        compile_s = time.perf_counter() - start
        hlo = executable.as_text()
        runs[name] = {
            "exe": executable,
            "carry": list(executable(own, state, grads)),
            "compile": compile_s,
            "fusions": count_fusions(hlo),
            "calls": count_custom_calls(hlo),
            "times": [],
        }
    for _ in range(2):  # warm-up
        for run in runs.values():
            run["carry"] = list(run["exe"](*run["carry"], grads))
    for _ in range(steps):
        for run in runs.values():
            start = time.perf_counter()
            run["carry"] = list(run["exe"](*run["carry"], grads))
            jax.block_until_ready(run["carry"])
            run["times"].append(time.perf_counter() - start)
    reference = runs["gradtx (per leaf)"]["carry"][0]
    optax_ms = 1e3 * statistics.median(runs["optax"]["times"])
    optax_compile = runs["optax"]["compile"]
    rows = []
    for name, run in runs.items():
        ms = 1e3 * statistics.median(run["times"])
        pairs = zip(jax.tree.leaves(run["carry"][0]), jax.tree.leaves(reference), strict=True)
        difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in pairs)
        rows.append(
            f"| {label} | {name} | {ms:.2f} | {ms / optax_ms:.2f} | {run['compile']:.2f} "
            f"| {run['compile'] / optax_compile:.2f} | {run['fusions']} | {run['calls']} "
            f"| {difference:.1e} |"
        )
    if with_torch:
        ms = torch_ms(shapes, steps)["torch fused"]
        rows.append(
            f"| {label} | torch fused (subprocess) | {ms:.2f} | {ms / optax_ms:.2f} | - | - "
            f"| - | - | - |"
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="size of the big trees")
    parser.add_argument("--gpt2-scale", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contender")
    parser.add_argument("--group", type=int, default=16, help="leaves per custom call")
    parser.add_argument("--quick", action="store_true", help="small trees, 3 steps")
    args = parser.parse_args(argv)
    library = build_kernel()
    if library is None:
        print("no C++ compiler (g++ or c++) on this machine: nothing to measure")
        return
    register(library)
    if args.quick:
        args.scale, args.gpt2_scale, args.steps = 0.01, 0.01, 3
    side = int(4096 * args.scale**0.5)
    trees = [
        (f"1 leaf x {side * side:,}", {"w": (side, side)}),
        (f"{max(1, int(1000 * args.scale)):,} leaves x 4,096", many_small_leaves(args.scale)),
        (f"GPT-2 small shapes x{args.gpt2_scale:g}", gpt2_small(args.gpt2_scale)),
    ]
    with_torch = not args.quick and importlib.util.find_spec("torch") is not None
    print(
        f"Adam step, jitted and donated (jax {jax.__version__}, optax {optax.__version__}, "
        f"{jax.devices()[0].device_kind}; median of {args.steps} steps, contenders in turn)\n"
    )
    print(
        "| tree | contender | step (ms) | / optax | compile (s) | / optax | fusions "
        "| custom calls | max abs difference of the params to gradtx's |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, shapes in trees:
        for row in benchmark(label, shapes, args.steps, args.group, with_torch):
            print(row, flush=True)


if __name__ == "__main__":
    main()
