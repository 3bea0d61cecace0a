"""A research ablation with ``named_chain``: swap one block at a time, retrain, compare.

Every variant is the list of ``(name, transform)`` pairs of a baseline with one change:

- the preconditioner ``scale_by_adam`` swapped for ``amsgrad_max`` (AMSGrad);
- ``add_decayed_weights`` moved before the preconditioner (L2 instead of decoupled decay);
- SGD's momentum ``trace`` swapped for ``nesterov_lookahead``.

Each variant trains the digits CNN from the same initial weights on the same batches,
and the table shows what the one change did. Because the blocks are named, the state of
every variant reads the same way (``state["precondition"]``), whatever sits there::

    python examples/ablation.py [--steps 300] [--seed 0] [--quick]

``--quick`` (for the tests) trains 20 steps unless ``--steps`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)
import _digits  # noqa: E402  (the examples' shared data set and model)

BATCH_SIZE = 64
WEIGHT_DECAY = 1e-2

ADAMW = [
    ("precondition", gtx.scale_by_adam()),
    ("weight_decay", gtx.add_decayed_weights(WEIGHT_DECAY)),
    ("learning_rate", gtx.scale_by_learning_rate(1e-3)),
]
SGD_MOMENTUM = [
    ("weight_decay", gtx.add_decayed_weights(WEIGHT_DECAY)),
    ("momentum", gtx.trace(0.9)),
    ("learning_rate", gtx.scale_by_learning_rate(0.02)),
]


def swap(blocks, name, transform):
    """The same blocks with the one called ``name`` replaced."""
    return [(n, transform if n == name else t) for n, t in blocks]


def move_before(blocks, name, other):
    """The same blocks with ``name`` moved to just before ``other``."""
    moved = next(pair for pair in blocks if pair[0] == name)
    rest = [pair for pair in blocks if pair[0] != name]
    at = [n for n, _ in rest].index(other)
    return rest[:at] + [moved] + rest[at:]


VARIANTS = {
    "adamw (baseline)": ("scale_by_adam, decay after it", ADAMW),
    "amsgrad": (
        "precondition: amsgrad_max",
        swap(ADAMW, "precondition", gtx.amsgrad_max()),
    ),
    "adam + L2": (
        "weight_decay before precondition",
        move_before(ADAMW, "weight_decay", "precondition"),
    ),
    "sgd momentum": ("trace(0.9), L2, lr 0.02", SGD_MOMENTUM),
    "sgd nesterov": (
        "momentum: nesterov_lookahead",
        swap(SGD_MOMENTUM, "momentum", gtx.nesterov_lookahead(0.9)),
    ),
}


def train(tx, params, images, labels):
    """Runs one optimizer step per leading index of ``images``, all in one compiled scan."""

    def step(carry, batch):
        params, state = carry
        loss, grads = jax.value_and_grad(_digits.loss_fn)(params, *batch)
        updates, state = tx.update(grads, state, params)
        return (gtx.apply_updates(params, updates), state), loss

    @jax.jit
    def run(params, images, labels):
        (params, state), losses = jax.lax.scan(step, (params, tx.init(params)), (images, labels))
        return params, state, losses

    return run(params, images, labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default 300; with --quick 20)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="initial weights and batch order (an integer >= 0)"
    )
    parser.add_argument("--quick", action="store_true", help="20 steps, unless --steps is given")
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(300, 20))
    steps = args.steps
    _cli.require(parser, steps > 0, "--steps", steps, "a positive integer")
    _cli.require(parser, args.seed >= 0, "--seed", args.seed, "an integer >= 0 (NumPy's seeds)")

    (x_train, y_train), (x_test, y_test) = _digits.load()
    order = _digits.batch_indices(len(x_train), BATCH_SIZE, steps, args.seed)
    print(f"{steps} steps of {BATCH_SIZE} images, seed {args.seed}")
    images, labels = x_train[order], y_train[order]
    print(f"{'variant':<18} {'what changed':<34} {'train loss':>10} {'test acc':>8}  chain")
    for name, (change, blocks) in VARIANTS.items():
        tx = gtx.named_chain(*blocks)
        params, _, losses = train(tx, _digits.init_params(args.seed), images, labels)
        _, test_acc = _digits.evaluate(params, x_test, y_test)
        # The last 10 minibatch losses: a smoother number than the last one alone.
        train_loss = float(np.mean(np.asarray(losses)[-10:]))
        chain = " -> ".join(block for block, _ in blocks)
        print(f"{name:<18} {change:<34} {train_loss:>10.4f} {float(test_acc):>8.3f}  {chain}")


if __name__ == "__main__":
    main()
