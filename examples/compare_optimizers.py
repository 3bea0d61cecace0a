"""Train one small CNN on scikit-learn's 8x8 digits with many optimizers and compare them.

Two families of runs, all on the same data split, the same initial weights and the same
batch order:

- the classic optimizers: SGD, momentum, Nesterov, Adagrad, RMSProp, Adadelta, Adam,
  AdaMax, Nadam, AdamW, AMSGrad;
- the studies of Ruder's "Optimization for Deep Learning Highlights in 2017": Adam with
  L2 regularization (the baseline), decoupled weight decay whose rate is halved at steps
  10, 50, 100 and 150, AMSGrad with b2 = 0.9, the transformer's warmup schedule ("noam")
  and AdamW with warm restarts (SGDR, restarts at steps 10, 30, 70 and 150).

It prints a table of the final train/test loss and accuracy and the training speed, and
writes the curves as PNGs (and the numbers as CSV) into ``--out``::

    python examples/compare_optimizers.py                  # everything, a few minutes
    python examples/compare_optimizers.py --only adam adam_l2 adamw_sgdr --steps 1000
    python examples/compare_optimizers.py --quick          # a few steps, for the tests

Each run compiles its training loop once: ``EVAL_EVERY`` steps are one ``lax.scan``,
jit-compiled ahead of time with the parameters and optimizer state donated, and called
again and again; the evaluation is compiled once for all runs.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

import gradtx as gtx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)
import _digits  # noqa: E402  (the examples' shared data set and model)

BATCH_SIZE = 64
EVAL_EVERY = 10  # steps per compiled chunk; the curves get a point at the end of each
WEIGHT_DECAY = 1e-2


# The learning rates. The 2018 reproduction of the highlights used rates that decided its
# results: a noam schedule built for a 512-wide transformer (d_model=512, 4000 warmup
# steps) peaks at 7e-4 only after 4000 steps, so in a short run it barely moves (23%), and
# warm restarts to too large a rate diverged (9%). Here every adaptive method gets its
# paper's default rate (1e-3 for Adam and its relatives; 2e-3 for AdaMax, Kingma & Ba
# sec. 7; 1.0 for Adadelta, Zeiler 2012, which is rate-free by design), the SGD family
# gets the rate that works for this network (0.1 plain; 0.02 with momentum 0.9, the same
# effective step 0.02 / (1 - 0.9) = 0.2), Adagrad 0.05 (its accumulated denominator only
# grows, so it starts larger), and both schedules peak at Adam's 1e-3: noam is given a
# 40-step warmup and the factor that makes its peak 1e-3; SGDR restarts at 1e-3.
def noam_schedule():
    d_model, warmup_steps = 64, 40
    # noam(t) = factor * d_model^-0.5 * min(t^-0.5, t * warmup^-1.5) peaks at t = warmup
    # with factor * (d_model * warmup)^-0.5; choose factor so that the peak is 1e-3.
    factor = 1e-3 * math.sqrt(d_model * warmup_steps)
    return gtx.schedules.noam(d_model, warmup_steps, factor=factor)


def halved_at(value, steps):
    """``value`` halved at each of ``steps``: a piecewise constant schedule."""
    return gtx.schedules.piecewise_constant(steps, [value / 2**i for i in range(len(steps) + 1)])


# name -> (family, description, a function building the optimizer). Built lazily, so
# --only builds just the optimizers it runs.
CONFIGS = {
    "sgd": ("classic", "sgd lr=0.1", lambda: gtx.sgd(0.1)),
    "momentum": ("classic", "sgd lr=0.02 momentum=0.9", lambda: gtx.sgd(0.02, momentum=0.9)),
    "nesterov": (
        "classic",
        "sgd lr=0.02 momentum=0.9 nesterov",
        lambda: gtx.sgd(0.02, momentum=0.9, nesterov=True),
    ),
    "adagrad": ("classic", "adagrad lr=0.05", lambda: gtx.adagrad(0.05)),
    "rmsprop": ("classic", "rmsprop lr=1e-3", lambda: gtx.rmsprop(1e-3)),
    "adadelta": ("classic", "adadelta lr=1.0", lambda: gtx.adadelta(1.0)),
    "adam": ("classic", "adam lr=1e-3", lambda: gtx.adam(1e-3)),
    "adamax": ("classic", "adamax lr=2e-3", lambda: gtx.adamax(2e-3)),
    "nadam": ("classic", "nadam lr=1e-3", lambda: gtx.nadam(1e-3)),
    "adamw": (
        "classic",
        f"adamw lr=1e-3 wd={WEIGHT_DECAY}",
        lambda: gtx.adamw(1e-3, weight_decay=WEIGHT_DECAY),
    ),
    "amsgrad": ("classic", "amsgrad lr=1e-3", lambda: gtx.amsgrad(1e-3)),
    # The highlights. Adam + L2 and decoupled weight decay are the same three blocks; the
    # only difference is where add_decayed_weights sits: before the preconditioner the
    # decay term is rescaled by Adam's 1/sqrt(v) like any gradient (L2), after it every
    # weight shrinks by lr * wd * w per step whatever its gradient history (decoupled).
    "adam_l2": (
        "highlights",
        f"adam lr=1e-3 + L2 wd={WEIGHT_DECAY}",
        lambda: gtx.chain(
            gtx.add_decayed_weights(WEIGHT_DECAY),
            gtx.scale_by_adam(),
            gtx.scale_by_learning_rate(1e-3),
        ),
    ),
    "adamw_wd_halved": (
        "highlights",
        f"adam lr=1e-3 + decoupled wd={WEIGHT_DECAY} halved at 10,50,100,150",
        lambda: gtx.chain(
            gtx.scale_by_adam(),
            gtx.add_decayed_weights(halved_at(WEIGHT_DECAY, [10, 50, 100, 150])),
            gtx.scale_by_learning_rate(1e-3),
        ),
    ),
    "amsgrad_b2_0.9": ("highlights", "amsgrad lr=1e-3 b2=0.9", lambda: gtx.amsgrad(1e-3, b2=0.9)),
    "adam_noam": (
        "highlights",
        "adam, noam warmup 40 steps, peak 1e-3",
        lambda: gtx.adam(noam_schedule()),
    ),
    "adamw_sgdr": (
        "highlights",
        f"adamw wd={WEIGHT_DECAY}, sgdr 1e-3, restarts 10,30,70,150",
        # first_period=10 and period_mult=2: periods 10, 20, 40, 80 end at 10, 30, 70, 150.
        lambda: gtx.adamw(
            gtx.schedules.sgdr(1e-3, first_period=10, period_mult=2), weight_decay=WEIGHT_DECAY
        ),
    ),
}


# --quick compiles two runs, not all: the two that use schedules (weight decay, SGDR).
QUICK = ["adamw_wd_halved", "adamw_sgdr"]


def make_train_chunk(tx):
    """``chunk(params, opt_state, images, labels)``: one scanned step per leading index."""

    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(_digits.loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (gtx.apply_updates(params, updates), opt_state), loss

    def chunk(params, opt_state, images, labels):
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (images, labels))
        return params, opt_state, losses

    return jax.jit(chunk, donate_argnums=(0, 1))


def global_norm(params):
    return float(jnp.sqrt(sum(jnp.sum(p**2) for p in jax.tree.leaves(params))))


def run(name, tx, data, steps, seed, progress=True):
    """Trains from the seed's initial weights; returns the curves and the final numbers."""
    (x_train, y_train), (x_test, y_test) = data
    order = _digits.batch_indices(len(x_train), BATCH_SIZE, steps, seed)
    chunks = order.reshape(steps // EVAL_EVERY, EVAL_EVERY, BATCH_SIZE)
    params = _digits.init_params(seed)
    opt_state = tx.init(params)
    train_chunk = make_train_chunk(tx).lower(
        params, opt_state, x_train[chunks[0]], y_train[chunks[0]]
    )
    train_chunk = train_chunk.compile()

    curves = {k: [] for k in ("step", "train_loss", "train_acc", "test_loss", "test_acc")}
    train_seconds = 0.0
    bar = tqdm(total=steps, desc=f"{name:>16}", unit="step", leave=True, disable=not progress)
    for i, indices in enumerate(chunks):
        images, labels = jax.device_put((x_train[indices], y_train[indices]))
        start = time.perf_counter()
        params, opt_state, losses = train_chunk(params, opt_state, images, labels)
        jax.block_until_ready(losses)
        train_seconds += time.perf_counter() - start
        train_loss, train_acc = _digits.evaluate(params, x_train, y_train)
        test_loss, test_acc = _digits.evaluate(params, x_test, y_test)
        curves["step"].append((i + 1) * EVAL_EVERY)
        for key, value in zip(
            ("train_loss", "train_acc", "test_loss", "test_acc"),
            (train_loss, train_acc, test_loss, test_acc),
            strict=True,
        ):
            curves[key].append(float(value))
        bar.update(EVAL_EVERY)
        bar.set_postfix(loss=f"{float(train_loss):.3f}", test_acc=f"{float(test_acc):.3f}")
    bar.close()
    final = {key: values[-1] for key, values in curves.items() if key != "step"}
    final["diverged"] = not all(math.isfinite(v) for v in final.values())
    final["steps_per_s"] = steps / train_seconds
    final["weight_norm"] = global_norm(params)
    return curves, final


def print_table(results):
    header = (
        f"{'optimizer':<16} {'train loss':>10} {'train acc':>9} {'test loss':>9} "
        f"{'test acc':>8} {'|w|':>6} {'steps/s':>8}  configuration"
    )
    print(header)
    print("-" * len(header))
    for name, (_, final) in results.items():
        note = "  (diverged)" if final["diverged"] else ""
        print(
            f"{name:<16} {final['train_loss']:>10.4f} {final['train_acc']:>9.3f} "
            f"{final['test_loss']:>9.4f} {final['test_acc']:>8.3f} {final['weight_norm']:>6.2f} "
            f"{final['steps_per_s']:>8.0f}  {CONFIGS[name][1]}{note}"
        )


def write_csv(results, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "step", "train_loss", "train_acc", "test_loss", "test_acc"])
        for name, (curves, _) in results.items():
            for row in zip(*curves.values(), strict=True):
                writer.writerow([name, *row])


def plot(results, out):
    """One PNG per family (train loss, test loss, test accuracy) and one with both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in ("classic", "highlights") if any(CONFIGS[n][0] == f for n in results)]
    panels = (("train_loss", "train loss", True), ("test_loss", "test loss", True))
    panels += (("test_acc", "test accuracy", False),)

    def draw(axes_row, family):
        for ax, (key, title, log) in zip(axes_row, panels, strict=True):
            # tab20's dark shades, then its light ones: eleven distinguishable lines.
            ax.set_prop_cycle(color=plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2])
            for name, (curves, _) in results.items():
                if CONFIGS[name][0] == family:
                    ax.plot(curves["step"], curves[key], label=name, linewidth=1.2)
            if family == "highlights" and "adam" in results:
                curves = results["adam"][0]
                ax.plot(curves["step"], curves[key], "k--", lw=0.8, label="adam (reference)")
            ax.set_title(f"{family}: {title}")
            ax.set_xlabel("step")
            if log:
                ax.set_yscale("log")
            else:
                ax.set_ylim(0.5, 1.0)
            ax.grid(alpha=0.3)
        axes_row[-1].legend(fontsize=7, loc="lower right")

    written = []
    for family in families:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
        draw(axes, family)
        fig.savefig(out / f"{family}.png", dpi=100)
        plt.close(fig)
        written.append(out / f"{family}.png")
    fig, axes = plt.subplots(
        len(families), 3, figsize=(15, 4 * len(families)), squeeze=False, constrained_layout=True
    )
    for axes_row, family in zip(axes, families, strict=True):
        draw(axes_row, family)
    fig.savefig(out / "compare_optimizers.png", dpi=100)
    plt.close(fig)
    written.append(out / "compare_optimizers.png")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(CONFIGS),
        metavar="NAME",
        help=f"run only these configurations: {', '.join(CONFIGS)}",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per run, a multiple of {EVAL_EVERY} (default 400; with --quick "
        f"{2 * EVAL_EVERY})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="initial weights and batch order (an integer >= 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/compare_optimizers"),
        help="folder for the PNGs and results.csv",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"no progress bars, (without --steps) {2 * EVAL_EVERY} steps and (without --only) "
        f"only {QUICK}",
    )
    args = parser.parse_args(argv)

    # Checked here, not after minutes of training: an explicit --steps wins over --quick's.
    _cli.apply_quick_defaults(args, steps=(400, 2 * EVAL_EVERY))
    steps = args.steps
    multiple = steps > 0 and steps % EVAL_EVERY == 0
    _cli.require(parser, multiple, "--steps", steps, f"a positive multiple of {EVAL_EVERY}")
    _cli.require(parser, args.seed >= 0, "--seed", args.seed, "an integer >= 0 (NumPy's seeds)")
    repeated = sorted({name for name in args.only or [] if args.only.count(name) > 1})
    if repeated:
        parser.error(f"--only must name each configuration once, repeated: {' '.join(repeated)}")
    _cli.make_folder(parser, args.out)
    names = args.only or (QUICK if args.quick else list(CONFIGS))
    data = _digits.load()
    print(
        f"8x8 digits: {len(data[0][0])} train / {len(data[1][0])} test images, batch "
        f"{BATCH_SIZE}, {steps} steps, seed {args.seed}, {jax.devices()[0].platform}"
    )
    results = {}
    for name in names:
        results[name] = run(name, CONFIGS[name][2](), data, steps, args.seed, not args.quick)
    print()
    print_table(results)
    write_csv(results, args.out / "results.csv")
    written = plot(results, args.out)
    print(f"\nwrote {args.out / 'results.csv'} and {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()
