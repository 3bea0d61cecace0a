"""The README quickstart: build an optimizer from blocks and train with a jitted step.

Fits a linear model ``y = x @ w + b`` to noisy data with AdamW built as a chain:
clip the gradient norm, Adam's preconditioner, decoupled weight decay and a constant
learning rate. Run it: ``python examples/quickstart.py [--steps 500] [--quick]``
(``--quick``, for the tests: 100 steps unless ``--steps`` says otherwise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default 500; with --quick 100)"
    )
    parser.add_argument("--quick", action="store_true", help="100 steps, unless --steps is given")
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(500, 100))
    steps = args.steps
    _cli.require(parser, steps > 0, "--steps", steps, "a positive integer")

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3)).astype(np.float32)
    y = x @ np.array([2.0, -1.0, 0.5], np.float32) + 0.3 + 0.01 * rng.normal(size=256)
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.float32)

    # --- the quickstart ---
    params = {"w": jnp.zeros(3), "b": jnp.zeros([])}
    tx = gtx.chain(
        gtx.clip_by_global_norm(1.0),
        gtx.scale_by_adam(b1=0.9, b2=0.999),
        gtx.add_decayed_weights(1e-4),  # after the preconditioner: decoupled (AdamW)
        gtx.scale_by_learning_rate(0.05),
    )
    state = tx.init(params)

    def loss_fn(params, x, y):
        return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state, loss

    for t in range(steps):
        params, state, loss = step(params, state, x, y)
        if t % max(steps // 5, 1) == 0 or t == steps - 1:
            print(f"step {t:4d}  loss {float(loss):.6f}")
    # --- end of the quickstart ---

    w = ", ".join(f"{v:.3f}" for v in params["w"].tolist())
    print(f"w = [{w}] (true [2, -1, 0.5]), b = {float(params['b']):.3f} (true 0.3)")


if __name__ == "__main__":
    main()
