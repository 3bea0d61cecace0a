"""Flax linen: a gradtx optimizer in a ``TrainState``, with parameter groups.

A gradtx transform is a ``GradientTransformation`` with the same two fields as Optax's,
so ``TrainState.create(tx=...)`` and ``state.apply_gradients(grads=...)`` take it as is.
Here the kernels get AdamW with weight decay and the biases Adam without, through
``gtx.partition`` (PyTorch's parameter groups), and the learning rate warms up and
decays on a cosine::

    python examples/flax_linen.py [--steps 300] [--quick]

``--quick`` (for the tests) trains 30 steps unless ``--steps`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
from flax.training import train_state

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)
import _digits  # noqa: E402  (the examples' shared data set and model)


def make_optimizer(steps: int) -> gtx.GradientTransformation:
    schedule = gtx.schedules.warmup_cosine_decay(
        init_value=0.0, peak_value=3e-3, warmup_steps=steps // 10, decay_steps=steps
    )
    return gtx.partition(
        {"decay": gtx.adamw(schedule, weight_decay=1e-2), "no_decay": gtx.adam(schedule)},
        {r"bias": "no_decay", r"kernel": "decay"},
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default 300; with --quick 30)"
    )
    parser.add_argument("--quick", action="store_true", help="30 steps, unless --steps is given")
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(300, 30))
    steps = args.steps
    _cli.require(parser, steps > 0, "--steps", steps, "a positive integer")

    (x_train, y_train), (x_test, y_test) = _digits.load()
    state = train_state.TrainState.create(
        apply_fn=_digits.CNN().apply,
        params=_digits.init_params(0),
        tx=make_optimizer(steps),
    )

    @jax.jit
    def train_step(state, images, labels):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, images)
            log_probs = jax.nn.log_softmax(logits)
            return -(log_probs[jax.numpy.arange(len(labels)), labels]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    order = _digits.batch_indices(len(x_train), 64, steps, seed=0)
    for t, indices in enumerate(order):
        state, loss = train_step(state, x_train[indices], y_train[indices])
        if (t + 1) % max(steps // 3, 1) == 0:
            lr = gtx.get_hyperparams(state.opt_state, path="['decay']")["learning_rate"]
            print(f"step {t + 1:4d}  loss {float(loss):.4f}  learning rate {float(lr):.2e}")
    test_loss, test_acc = _digits.evaluate(state.params, x_test, y_test)
    print(f"test loss {float(test_loss):.4f}  test accuracy {float(test_acc):.3f}")


if __name__ == "__main__":
    main()
