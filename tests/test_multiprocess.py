"""Two processes (``jax.distributed`` on localhost, two CPU devices each, Gloo
collectives): parameters sharded over the devices of both processes, so that no process
can fetch them whole, and what gradtx does with them.

The checks run in subprocesses (this file run as a script, once per process): the device
count and the distributed runtime are set up before JAX is used, which the pytest process
has already done. Process 0 prints its measurements as JSON and the tests below assert on
them. They are skipped, with the reason, where the platform cannot start the processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback

import pytest

PROCESSES = 2
TIMEOUT_S = 90


def measure(process_id: int, port: int):
    """Runs in each subprocess; returns process 0's measurements (None elsewhere)."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=PROCESSES, process_id=process_id
    )
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import gradtx as gtx

    mesh = jax.make_mesh((PROCESSES, 2), ("hosts", "local"))
    rng = np.random.default_rng(0)
    # the first leaf in tree order ("k") is sharded across the processes, as is "w"
    values = {
        "k": rng.normal(size=(4, 8)).astype(np.float32),
        "w": rng.normal(size=(8, 3)).astype(np.float32),
        "x": rng.normal(size=(5,)).astype(np.float32),
    }
    specs = {"k": P(None, ("hosts", "local")), "w": P("hosts", None), "x": P()}

    def global_array(x, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def loss_fn(params):
        return sum(jnp.mean(jnp.sin(3 * p) ** 2) for p in jax.tree.leaves(params))

    results = {"processes": jax.process_count(), "devices": jax.device_count()}
    with jax.set_mesh(mesh):
        params = jax.tree.map(global_array, values, specs)
        results["fully_addressable"] = [p.is_fully_addressable for p in jax.tree.leaves(params)]
        try:
            found = gtx.training.lr_find(
                loss_fn, params, None, gtx.adam, min_lr=1e-3, max_lr=1.0, num_steps=6
            )
            results["lr_find"] = {"error": None, "losses": np.asarray(found.losses).tolist()}
        except Exception as error:  # noqa: BLE001  (reported, asserted on below)
            results["lr_find"] = {"error": f"{type(error).__name__}: {error}"[:300]}

        tx = gtx.chain(gtx.clip_by_global_norm(0.1), gtx.adamw(0.05, weight_decay=1e-2))

        @jax.jit
        def step(params, state):
            updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
            return gtx.apply_updates(params, updates), state

        state = jax.jit(tx.init)(params)
        for _ in range(3):
            params, state = step(params, state)
        by_shape = {p.shape: p.sharding for p in jax.tree.leaves(params)}
        results["moments_sharded_like_params"] = [
            bool(leaf.sharding.is_equivalent_to(by_shape[leaf.shape], leaf.ndim))
            for leaf in jax.tree.leaves(state)
            if leaf.ndim and leaf.shape in by_shape
        ]
        gathered = {
            name: np.asarray(multihost_utils.process_allgather(p, tiled=True))
            for name, p in params.items()
        }

    # the same steps in this process alone, on one device
    with jax.default_device(jax.local_devices()[0]):
        single = jax.tree.map(jnp.asarray, values)
        single_state = tx.init(single)
        for _ in range(3):
            updates, single_state = tx.update(jax.grad(loss_fn)(single), single_state, single)
            single = gtx.apply_updates(single, updates)
        results["max_abs_difference"] = max(
            float(np.max(np.abs(gathered[name] - np.asarray(single[name])))) for name in values
        )
        start = jax.tree.map(jnp.asarray, values)
        found = gtx.training.lr_find(
            loss_fn, start, None, gtx.adam, min_lr=1e-3, max_lr=1.0, num_steps=6
        )
        results["lr_find_single"] = np.asarray(found.losses).tolist()
    return results if process_id == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    import jax

    if not hasattr(jax, "set_mesh"):
        pytest.skip("these checks need jax.set_mesh (JAX >= 0.7.1)")
    try:
        port = free_port()
    except OSError as error:
        pytest.skip(f"cannot open a localhost port for jax.distributed: {error}")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    logs = tmp_path_factory.mktemp("processes")
    files = [(logs / f"{i}.out", logs / f"{i}.err") for i in range(PROCESSES)]
    processes = []
    for i, (out, err) in enumerate(files):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, str(i), str(port)],
                    stdout=stdout,
                    stderr=stderr,
                    env=env,
                )
            )
    # A process that fails leaves the others waiting for it (in a collective, or in
    # jax.distributed's shutdown barrier) until the timeout: stop them at once.
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in processes]
            if None not in codes or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.1)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = [(out.read_text(), err.read_text()) for out, err in files]
    stdout, stderr = outputs[0]
    if processes[0].returncode != 0 and "gloo" in stderr.lower() and "unknown" in stderr.lower():
        pytest.skip("this jaxlib has no Gloo CPU collectives for jax.distributed")
    if processes[0].returncode != 0 and "distributed" in stderr and "initialize" in stderr:
        pytest.skip(f"jax.distributed cannot start on localhost here: {stderr[-500:]}")
    # the process that failed first (the others were stopped: returncode -9)
    failed = [i for i, p in enumerate(processes) if p.returncode not in (0, -9)]
    if failed:
        i = failed[0]
        pytest.fail(f"process {i} exited with {processes[i].returncode}:\n{outputs[i][1][-3000:]}")
    if any(p.returncode != 0 for p in processes):
        tails = "".join(f"\nprocess {i}:\n{err[-1500:]}" for i, (_, err) in enumerate(outputs))
        pytest.fail(f"the {PROCESSES} processes did not finish within {TIMEOUT_S} s{tails}")
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_parameters_span_the_devices_of_two_processes(measured):
    assert measured["processes"] == 2
    assert measured["devices"] == 4
    assert measured["fully_addressable"] == [False, False, False]


def test_lr_find_runs_on_parameters_no_process_can_fetch(measured):
    """The probe that checks that the optimizer reads its learning rate compared the
    updates with NumPy: a RuntimeError ("Fetching value for `jax.Array` that spans
    non-addressable ... devices is not possible") when the first leaf was sharded across
    processes."""
    result = measured["lr_find"]
    assert result["error"] is None, result["error"]
    losses, single = result["losses"], measured["lr_find_single"]
    assert len(losses) == len(single) == 6
    assert max(abs(a - b) for a, b in zip(losses, single, strict=True)) < 1e-5


def test_state_is_sharded_like_its_parameters_across_processes(measured):
    sharded_alike = measured["moments_sharded_like_params"]
    assert len(sharded_alike) >= 6  # Adam's two moments of each of the three parameters
    assert all(sharded_alike)


def test_two_process_training_equals_the_single_device_run(measured):
    # parameters of size ~1; sums in another order differ by float32 rounding
    assert measured["max_abs_difference"] < 1e-6


if __name__ == "__main__":
    try:
        measurements = measure(int(sys.argv[1]), int(sys.argv[2]))
    except BaseException:
        # exit at once: at a normal exit, jax.distributed's shutdown waits for the other
        # processes, themselves waiting for this one in a collective, until the timeout
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if measurements is not None:
        print(json.dumps(measurements))
