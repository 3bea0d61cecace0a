"""Checkpoint parameters and optimizer state with Orbax, restore, resume: same numbers.

A gradtx optimizer state is a pytree of arrays (``NamedTuple``s, tuples and dicts)
whose structure never changes, so Orbax saves it like the parameters. To restore in a
fresh process, build the *abstract* target with ``jax.eval_shape`` (shapes and dtypes,
no computation), then restore into it. The run below trains, checkpoints every
``--every`` steps, "crashes", restores the latest checkpoint into a fresh optimizer and
finishes; the final parameters equal those of an uninterrupted run bit for bit::

    python examples/checkpointing.py [--steps 200] [--every 50] [--crash-at N] [--out DIR] [--quick]

``--quick`` (for the tests) trains 20 steps with a checkpoint every 5, unless ``--steps``
or ``--every`` say otherwise. The crash must come after a checkpoint (``--every`` <=
``--crash-at`` <= ``--steps``), and ``--out`` must not hold the checkpoints of an earlier
run: the restore would resume from them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)
import _digits  # noqa: E402  (the examples' shared data set and model)


def make_optimizer(steps):
    """AdamW with a cosine schedule: the schedule reads the step count in the state."""
    return gtx.adamw(gtx.schedules.cosine_decay(3e-3, decay_steps=steps), weight_decay=1e-2)


def make_step(tx):
    @jax.jit
    def step(params, opt_state, images, labels):
        grads = jax.grad(_digits.loss_fn)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return gtx.apply_updates(params, updates), opt_state

    return step


def train(step, params, opt_state, batches, start, stop, manager=None, every=0):
    for t in range(start, stop):
        params, opt_state = step(params, opt_state, *batches[t])
        if manager is not None and (t + 1) % every == 0:
            manager.save(t + 1, args=ocp.args.StandardSave({"params": params, "opt": opt_state}))
    return params, opt_state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default 200; with --quick 20)"
    )
    parser.add_argument(
        "--every",
        type=int,
        default=None,
        help="checkpoint interval in steps (default 50; with --quick 5)",
    )
    parser.add_argument(
        "--crash-at",
        type=int,
        default=None,
        help="the step the first run stops at, from --every to --steps (default 3/4 of --steps)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="a folder without checkpoints of an earlier run (default: a temporary folder)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 steps and a checkpoint every 5, unless --steps or --every is given",
    )
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(200, 20), every=(50, 5))
    steps, every = args.steps, args.every
    _cli.require(parser, steps > 0, "--steps", steps, "a positive integer")
    _cli.require(parser, every > 0, "--every", every, "a positive integer")
    if args.crash_at is None:
        crash_at = steps * 3 // 4
        # the default crash step must also come after a checkpoint
        expected = f"at most --crash-at's default, 3/4 of --steps ({crash_at})"
        _cli.require(parser, every <= crash_at, "--every", every, expected)
    else:
        crash_at = args.crash_at
        expected = f"from --every ({every}) to --steps ({steps}), after a checkpoint"
        _cli.require(parser, every <= crash_at <= steps, "--crash-at", crash_at, expected)
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="gradtx_checkpoints_"))
    else:
        out = args.out
        _cli.make_folder(parser, out)
        earlier = out / "run"
        _cli.require(
            parser,
            not earlier.exists() or earlier.is_dir() and not any(earlier.iterdir()),
            "--out",
            repr(str(out)),
            f"a folder without an earlier run's checkpoints ({earlier} is not an empty folder)",
        )

    (x_train, y_train), _ = _digits.load()
    order = _digits.batch_indices(len(x_train), 64, steps, seed=0)
    batches = [(x_train[i], y_train[i]) for i in order]

    # First process: train, checkpointing every `every` steps, and stop at `crash_at`.
    tx = make_optimizer(steps)
    params = _digits.init_params(0)
    options = ocp.CheckpointManagerOptions(max_to_keep=2)
    with ocp.CheckpointManager(out.resolve() / "run", options=options) as manager:
        train(make_step(tx), params, tx.init(params), batches, 0, crash_at, manager, every)
        manager.wait_until_finished()
        print(f"trained {crash_at} steps; checkpoints at steps {manager.all_steps()} in {out}")

    # "Second process": a fresh optimizer, an abstract target, restore, resume.
    tx = make_optimizer(steps)
    abstract = jax.eval_shape(lambda: {"params": (p := _digits.init_params(0)), "opt": tx.init(p)})
    with ocp.CheckpointManager(out.resolve() / "run", options=options) as manager:
        resume_from = manager.latest_step()
        restored = manager.restore(resume_from, args=ocp.args.StandardRestore(abstract))
    count = int(restored["opt"].count)
    print(f"restored step {resume_from}: optimizer count {count}, ", end="")
    print(f"learning rate {float(gtx.get_hyperparams(restored['opt'])['learning_rate']):.2e}")
    step = make_step(tx)
    resumed, _ = train(step, restored["params"], restored["opt"], batches, resume_from, steps)

    # The reference: the same steps without interruption.
    params = _digits.init_params(0)
    uninterrupted, _ = train(step, params, tx.init(params), batches, 0, steps)
    same = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True)
    )
    print(f"resumed run equals the uninterrupted run after {steps} steps: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
