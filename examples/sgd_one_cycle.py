"""The classic recipe: learning-rate range test, then SGD with momentum on a 1cycle schedule.

1. ``gradtx.training.lr_find`` trains a copy of the model for a few dozen steps while
   the learning rate grows exponentially, and suggests the rate where the loss falls
   fastest (Smith, 2017).
2. SGD with momentum 0.9 trains the digits CNN with ``schedules.one_cycle`` peaking at
   that rate (Smith & Topin, 2019): warm up to the peak over 30% of the steps, then
   anneal far below the start.
3. The range test and the training/test accuracy are plotted into ``--out``::

    python examples/sgd_one_cycle.py [--steps 300] [--seed 0] [--out out/sgd_one_cycle] [--quick]

``--quick`` (for the tests) runs a 40-step range test instead of 100 and trains 30 steps
unless ``--steps`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

import gradtx as gtx
from gradtx.training import lr_find

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)
import _digits  # noqa: E402  (the examples' shared data set and model)

BATCH_SIZE = 64
EVAL_EVERY = 10


def sgd_momentum(learning_rate):
    return gtx.sgd(learning_rate, momentum=0.9)


def make_train_chunk(tx):
    """``EVAL_EVERY`` optimizer steps in one compiled scan."""

    def step(carry, batch):
        params, state = carry
        grads = jax.grad(_digits.loss_fn)(params, *batch)
        updates, state = tx.update(grads, state, params)
        return (gtx.apply_updates(params, updates), state), None

    @jax.jit
    def chunk(params, state, images, labels):
        return jax.lax.scan(step, (params, state), (images, labels))[0]

    return chunk


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps, a multiple of {EVAL_EVERY} (default 300; with --quick 30)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="initial weights and batch order (an integer >= 0)"
    )
    parser.add_argument("--out", type=Path, default=Path("out/sgd_one_cycle"), help="for the PNG")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a 40-step range test and (unless --steps is given) 30 training steps",
    )
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(300, 3 * EVAL_EVERY))
    steps = args.steps
    multiple = steps > 0 and steps % EVAL_EVERY == 0
    _cli.require(parser, multiple, "--steps", steps, f"a positive multiple of {EVAL_EVERY}")
    _cli.require(parser, args.seed >= 0, "--seed", args.seed, "an integer >= 0 (NumPy's seeds)")
    _cli.make_folder(parser, args.out)

    (x_train, y_train), (x_test, y_test) = _digits.load()
    params = _digits.init_params(args.seed)

    # 1. The range test, on batches of its own, from the initial weights.
    finder_steps = 40 if args.quick else 100
    order = _digits.batch_indices(len(x_train), BATCH_SIZE, finder_steps, args.seed + 1)
    finder = lr_find(
        lambda p, batch: _digits.loss_fn(p, *batch),
        params,
        (x_train[order], y_train[order]),
        sgd_momentum,
        min_lr=1e-4,
        max_lr=10.0,
        num_steps=finder_steps,
    )
    peak = finder.suggestion
    print(
        f"range test: {len(finder.losses)} steps"
        f"{', stopped at divergence' if finder.diverged else ''}; suggested rate {peak:.3g}"
    )

    # 2. SGD with momentum on a 1cycle schedule peaking at the suggestion.
    tx = sgd_momentum(gtx.schedules.one_cycle(steps, max_value=peak))
    state = tx.init(params)
    train_chunk = make_train_chunk(tx)
    order = _digits.batch_indices(len(x_train), BATCH_SIZE, steps, args.seed)
    curve = {"step": [], "train": [], "test": []}
    for start in range(0, steps, EVAL_EVERY):
        indices = order[start : start + EVAL_EVERY]
        params, state = train_chunk(params, state, x_train[indices], y_train[indices])
        curve["step"].append(start + EVAL_EVERY)
        curve["train"].append(float(_digits.evaluate(params, x_train, y_train)[1]))
        curve["test"].append(float(_digits.evaluate(params, x_test, y_test)[1]))
    print(f"after {steps} steps: train accuracy {curve['train'][-1]:.3f}, ", end="")
    print(f"test accuracy {curve['test'][-1]:.3f}")

    # 3. The plots.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    finder.plot(left)
    left.set_title("learning-rate range test (SGD, momentum 0.9)")
    right.plot(curve["step"], curve["train"], label="train")
    right.plot(curve["step"], curve["test"], label="test")
    right.set_title(f"1cycle, peak {peak:.3g}")
    right.set_xlabel("step")
    right.set_ylabel("accuracy")
    right.grid(alpha=0.3)
    right.legend()
    fig.savefig(args.out / "sgd_one_cycle.png", dpi=100)
    print(f"wrote {args.out / 'sgd_one_cycle.png'}")


if __name__ == "__main__":
    main()
