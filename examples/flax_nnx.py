"""Flax NNX: a gradtx optimizer in ``nnx.Optimizer``.

``nnx.Optimizer(model, tx, wrt=nnx.Param)`` takes a gradtx transform as it takes an
Optax one; its ``update(model, grads)`` calls ``tx.update(grads, state, params)``. The
optimizer here is a chain: gradient clipping, then SGD with Nesterov momentum and a
1cycle learning rate::

    python examples/flax_nnx.py [--steps 300] [--quick]

``--quick`` (for the tests) trains 30 steps unless ``--steps`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)
import _digits  # noqa: E402  (the examples' shared data set)


class CNN(nnx.Module):
    """The NNX twin of ``_digits.CNN``: conv 8, average pool, conv 16, dense 64, 10 logits."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
        self.hidden = nnx.Linear(4 * 4 * 16, 64, rngs=rngs)
        self.out = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.relu(self.conv2(x)).reshape(x.shape[0], -1)
        return self.out(nnx.relu(self.hidden(x)))


def loss_fn(model, images, labels):
    log_probs = jax.nn.log_softmax(model(images))
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


@nnx.jit
def train_step(model, optimizer, images, labels):
    loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model, images, labels):
    return jnp.mean(jnp.argmax(model(images), axis=1) == labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default 300; with --quick 30)"
    )
    parser.add_argument("--quick", action="store_true", help="30 steps, unless --steps is given")
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(300, 30))
    steps = args.steps
    # one_cycle's warm-up and annealing phases need a step each
    _cli.require(parser, steps >= 4, "--steps", steps, "an integer >= 4")

    (x_train, y_train), (x_test, y_test) = _digits.load()
    # The "rbg" generator: its initializers compile much faster than threefry's on CPU.
    model = CNN(nnx.Rngs(jax.random.key(0, impl="rbg")))
    tx = gtx.chain(
        gtx.clip_by_global_norm(1.0),
        gtx.sgd(gtx.schedules.one_cycle(steps, max_value=0.1), momentum=0.9, nesterov=True),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    order = _digits.batch_indices(len(x_train), 64, steps, seed=0)
    for t, indices in enumerate(order):
        loss = train_step(model, optimizer, x_train[indices], y_train[indices])
        if (t + 1) % max(steps // 3, 1) == 0:
            print(f"step {t + 1:4d}  loss {float(loss):.4f}")
    print(f"test accuracy {float(accuracy(model, x_test, y_test)):.3f}")


if __name__ == "__main__":
    main()
