"""The learning-rate range test on a small MLP, for Adam and for SGD with momentum.

``gradtx.training.lr_find`` trains a copy of the network on scikit-learn's bundled
8x8 digits (no download) while the learning rate grows exponentially from ``1e-6`` to
``10``, stops when the smoothed loss diverges, and suggests the rate where it falls
fastest (Smith, 2017). The example then trains a fresh network at each suggestion and
at ten times it, prints the test accuracies, and plots the range tests into ``--out``::

    python examples/lr_finder.py [--steps 300] [--seed 0] [--out out/lr_finder] [--quick]

``--quick`` (for the tests) runs a 40-step range test instead of 100, a low-resolution
plot, and 20 training steps unless ``--steps`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import gradtx as gtx
from gradtx.training import lr_find

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)

BATCH_SIZE = 64
HIDDEN = 64


def load_data(seed: int):
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)
    return train_test_split(
        images, labels.astype(np.int32), test_size=0.2, random_state=seed, stratify=labels
    )


def init_params(seed: int) -> dict:
    """A 64-64-10 MLP with LeCun-normal weights (drawn with NumPy: fast to start)."""
    rng = np.random.default_rng(seed)

    def dense(fan_in, fan_out):
        w = rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
        return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros(fan_out, jnp.float32)}

    return {"hidden": dense(64, HIDDEN), "out": dense(HIDDEN, 10)}


def logits(params, x):
    h = jax.nn.relu(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def loss_fn(params, batch):
    x, y = batch
    log_probs = jax.nn.log_softmax(logits(params, x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


def stacked_batches(x, y, steps: int, seed: int):
    """``steps`` shuffled batches stacked on a leading axis (the form lr_find takes)."""
    rng = np.random.default_rng(seed)
    index = np.concatenate(
        [rng.permutation(len(x)) for _ in range(steps * BATCH_SIZE // len(x) + 1)]
    )
    index = index[: steps * BATCH_SIZE].reshape(steps, BATCH_SIZE)
    return jnp.asarray(x[index]), jnp.asarray(y[index])


def train(optimizer, params, batches, x_test, y_test) -> float:
    """Trains with ``lax.scan`` over the batches; returns the test accuracy."""
    state = optimizer.init(params)

    def step(carry, batch):
        params, state = carry
        grads = jax.grad(loss_fn)(params, batch)
        updates, state = optimizer.update(grads, state, params)
        return (gtx.apply_updates(params, updates), state), None

    (params, _), _ = jax.jit(lambda c, b: jax.lax.scan(step, c, b))((params, state), batches)
    return float(jnp.mean(jnp.argmax(logits(params, x_test), -1) == y_test))


OPTIMIZERS = {
    "adam": gtx.adam,
    "sgd (momentum 0.9)": lambda learning_rate: gtx.sgd(learning_rate, momentum=0.9),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps after the test (default 300; with --quick 20)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="data split, weights and batches (0 to 2**32 - 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("out/lr_finder"), help="for the PNG")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a 40-step range test and (unless --steps is given) 20 training steps",
    )
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(300, 20))
    test_steps, train_steps = (40 if args.quick else 100), args.steps
    _cli.require(parser, train_steps > 0, "--steps", train_steps, "a positive integer")
    seed_ok = 0 <= args.seed <= 2**32 - 1
    expected = "an integer from 0 to 2**32 - 1 (scikit-learn's random_state)"
    _cli.require(parser, seed_ok, "--seed", args.seed, expected)
    _cli.make_folder(parser, args.out)

    x_train, x_test, y_train, y_test = load_data(args.seed)
    params = init_params(args.seed)
    print(f"digits: {len(x_train)} train / {len(x_test)} test, MLP 64-{HIDDEN}-10")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(6 * len(OPTIMIZERS), 4))
    range_batches = stacked_batches(x_train, y_train, test_steps, args.seed)
    train_batches = stacked_batches(x_train, y_train, train_steps, args.seed + 1)
    for ax, (name, optimizer) in zip(axes, OPTIMIZERS.items(), strict=True):
        result = lr_find(
            loss_fn,
            params,
            range_batches,
            optimizer,
            min_lr=1e-6,
            max_lr=10.0,
            num_steps=test_steps,
        )
        stop = "diverged" if result.diverged else "did not diverge"
        print(
            f"{name:>20}: {len(result.losses)} steps ({stop} by lr "
            f"{result.learning_rates[-1]:.2g}); suggestion {result.suggestion:.3g}"
        )
        for factor in (1, 10):
            lr = factor * result.suggestion
            accuracy = train(optimizer(lr), params, train_batches, x_test, y_test)
            print(f"{'':>22}{train_steps} steps at lr {lr:.3g}: test accuracy {accuracy:.3f}")
        result.plot(ax)
        ax.set_title(f"range test: {name}")
    fig.tight_layout()
    path = args.out / "lr_finder.png"
    fig.savefig(path, dpi=60 if args.quick else 110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
