"""Data-parallel training on several devices: sharded with ``jax.sharding``, then ``shard_map``.

Without an accelerator, this simulates 8 CPU devices (the ``XLA_FLAGS`` line below must
run before JAX is imported). Two ways to run the same training:

1. **Sharded arrays under ``jit``** (ZeRO-3 / FSDP style): the batch is split over the
   ``data`` axis of the mesh; large parameters are split over it too, and gathered
   where the model uses them. ``tx.init`` under ``jit`` gives every moment the sharding
   of its parameter, so each device holds only its slice of params *and* optimizer
   state. Gradients come back sharded like the parameters (averaged over the whole
   batch: the gather's transpose is a reduce-scatter).
2. **``jax.shard_map``**: each device runs the step on its slice of the batch with a
   full copy of the parameters; their gradient comes back summed over the devices
   (replicated inputs), divided here by the device count.

Both reach the same parameters as a single-device run (to float32 rounding)::

    python examples/data_parallel.py [--steps 100] [--quick]

``--quick`` (for the tests) trains 10 steps unless ``--steps`` says otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402  (the flag above must be set before jax is imported)
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gradtx as gtx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)
import _digits  # noqa: E402  (the examples' shared data set and model)


def param_spec(p, num_devices):
    """Split a matrix's first axis over the devices when it divides evenly; else replicate.
    (Spelled out for every axis, as JAX prints the specs it derives for the state.)"""
    if p.ndim >= 2 and p.shape[0] % num_devices == 0:
        return P("data", *[None] * (p.ndim - 1))
    return P()


def sharded_loss(params, images, labels):
    # All-gather each parameter where the model needs it whole; in the backward pass
    # this becomes a reduce-scatter, so gradients arrive sharded like the parameters.
    gathered = jax.tree.map(lambda p: jax.sharding.reshard(p, P()), params)
    return _digits.loss_fn(gathered, images, labels)


def make_jit_step(tx):
    @jax.jit
    def step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(sharded_loss)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return gtx.apply_updates(params, updates), opt_state, loss

    return step


def make_shard_map_step(tx, mesh):
    def local_step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(_digits.loss_fn)(params, images, labels)
        # The parameters enter replicated (P()), so shard_map's autodiff already sums
        # their gradient over "data" (the transpose of a broadcast): divide by the device
        # count for the gradient of the global mean. A pmean here would leave the sum,
        # num_devices times the gradient.
        grads = jax.tree.map(lambda g: g / jax.lax.axis_size("data"), grads)
        loss = jax.lax.pmean(loss, "data")
        updates, opt_state = tx.update(grads, opt_state, params)
        return gtx.apply_updates(params, updates), opt_state, loss

    return jax.jit(
        jax.shard_map(
            local_step,
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data")),
            out_specs=(P(), P(), P()),
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default 100; with --quick 10)"
    )
    parser.add_argument("--quick", action="store_true", help="10 steps, unless --steps is given")
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(100, 10))
    steps = args.steps
    _cli.require(parser, steps > 0, "--steps", steps, "a positive integer")

    devices = jax.devices()
    n = len(devices)
    # explicit axes (make_mesh's default from JAX 0.9.0): shardings are part of the types
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Explicit,))
    (x_train, y_train), _ = _digits.load()
    batch_size = 8 * n
    order = _digits.batch_indices(len(x_train), batch_size, steps, seed=0)
    tx = gtx.adamw(1e-3, weight_decay=1e-2)
    print(f"{n} {devices[0].platform} devices, global batch {batch_size}, {steps} steps")

    # 1. Sharded arrays under jit.
    with jax.set_mesh(mesh):
        params = _digits.init_params(0)
        shardings = jax.tree.map(lambda p: NamedSharding(mesh, param_spec(p, n)), params)
        params = jax.device_put(params, shardings)
        opt_state = jax.jit(tx.init)(params)
        adam_mu = opt_state.inner_state[0].mu
        print("Dense_0 kernel:", params["Dense_0"]["kernel"].sharding.spec, end="; ")
        print("its Adam moment:", adam_mu["Dense_0"]["kernel"].sharding.spec)
        data_sharding = NamedSharding(mesh, P("data"))
        step = make_jit_step(tx)
        for indices in order:
            images, labels = jax.device_put((x_train[indices], y_train[indices]), data_sharding)
            params, opt_state, loss = step(params, opt_state, images, labels)
        print(f"jit with sharded arrays: loss {float(loss):.4f}")
        sharded_params = jax.device_get(params)

    # 2. shard_map, replicated parameters, explicit gradient averaging.
    replicated = NamedSharding(mesh, P())
    params = jax.device_put(_digits.init_params(0), replicated)
    opt_state = jax.device_put(tx.init(params), replicated)
    step = make_shard_map_step(tx, mesh)
    for indices in order:
        images, labels = jax.device_put((x_train[indices], y_train[indices]), data_sharding)
        params, opt_state, loss = step(params, opt_state, images, labels)
    print(f"shard_map:               loss {float(loss):.4f}")
    shard_map_params = jax.device_get(params)

    # The reference: one device, the whole batch.
    params = _digits.init_params(0)
    opt_state = tx.init(params)

    @jax.jit
    def single_step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(_digits.loss_fn)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return gtx.apply_updates(params, updates), opt_state, loss

    for indices in order:
        params, opt_state, loss = single_step(params, opt_state, x_train[indices], y_train[indices])
    print(f"single device:           loss {float(loss):.4f}")

    def max_difference(tree):
        return max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True)
        )

    # Sums in another order differ in the last bits (1.5e-6 after 100 steps). Adam's
    # steps hardly depend on the gradient's scale, so a wrong average (the sum over 8
    # devices) moves the parameters by ~1e-2 only: the bound below catches it.
    jit_difference, shard_map_difference = map(max_difference, (sharded_params, shard_map_params))
    print(
        f"largest parameter difference to the single-device run: jit {jit_difference:.1e}, "
        f"shard_map {shard_map_difference:.1e} (learning rate 1e-3)"
    )
    if max(jit_difference, shard_map_difference) > 1e-4:
        raise SystemExit("the parallel runs differ from the single-device run")


if __name__ == "__main__":
    main()
