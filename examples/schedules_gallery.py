"""Draws every schedule in ``gradtx.schedules`` into one PNG grid.

Each panel is a schedule evaluated at every step with one call on ``jnp.arange``
(a schedule is a pure function ``step -> value`` and accepts arrays of steps)::

    python examples/schedules_gallery.py [--steps 300] [--out out/schedules_gallery] [--quick]

``--quick`` (for the tests) draws 60 steps unless ``--steps`` says otherwise, at a low
resolution.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

from gradtx import Schedule, schedules  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402  (the examples' shared option checks)


def gallery(steps: int) -> dict[str, Schedule]:
    """Title -> schedule, with lengths chosen so each shape shows within ``steps``."""
    quarter, tenth = steps // 4, max(steps // 10, 1)
    return {
        "constant(0.1)": schedules.constant(0.1),
        "linear": schedules.linear(0.1, 0.01, transition_steps=steps // 2, transition_begin=tenth),
        "polynomial (power 2)": schedules.polynomial(0.1, 0.0, 2.0, transition_steps=steps),
        "exponential_decay": schedules.exponential_decay(0.1, tenth, 0.7),
        "exponential_decay (staircase)": schedules.exponential_decay(
            0.1, tenth, 0.7, staircase=True
        ),
        "inverse_time_decay": schedules.inverse_time_decay(0.1, tenth, 1.0),
        "power_decay (power 1.5)": schedules.power_decay(0.1, tenth, 1.5),
        "step_decay (gamma 0.5)": schedules.step_decay(0.1, quarter, 0.5),
        "piecewise_constant": schedules.piecewise_constant(
            [tenth, 3 * tenth, 6 * tenth], [0.1, 0.05, 0.025, 0.0125]
        ),
        "cosine_decay (alpha 0.1)": schedules.cosine_decay(0.1, steps, alpha=0.1),
        "warmup_cosine_decay": schedules.warmup_cosine_decay(0.0, 0.1, tenth, steps, 0.001),
        "sgdr (period x2, peak x0.8)": schedules.sgdr(0.1, tenth, 2, 0.001, 0.8),
        "noam (d_model 64)": schedules.noam(64, warmup_steps=tenth),
        "cyclical (triangular2)": schedules.cyclical(0.01, 0.1, tenth, mode="triangular2"),
        "cyclical (exp_range)": schedules.cyclical(
            0.01, 0.1, tenth, mode="exp_range", gamma=0.5 ** (1 / quarter)
        ),
        "one_cycle": schedules.one_cycle(steps, 0.1),
        "one_cycle (three phases, linear)": schedules.one_cycle(
            steps, 0.1, anneal_strategy="linear", three_phase=True
        ),
        "warmup_stable_decay (1-sqrt)": schedules.warmup_stable_decay(
            0.1, tenth, steps // 2, quarter, decay_shape="1-sqrt"
        ),
        "join(linear warmup, step_decay)": schedules.join(
            [schedules.linear(0.0, 0.1, tenth), schedules.step_decay(0.1, quarter, 0.3)], [tenth]
        ),
    }


def draw(steps: int, out: Path, dpi: int) -> Path:
    panels = gallery(steps)
    columns = 4
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), sharex=True)
    t = jnp.arange(steps)
    for ax, (title, schedule) in zip(axes.flat, panels.items(), strict=False):
        ax.plot(t, schedule(t), lw=1.5)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle("gradtx.schedules: the value used by the update at step t", fontsize=12)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "schedules_gallery.png"
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps drawn per schedule, at least 20 (default 300; with --quick 60)",
    )
    parser.add_argument("--out", type=Path, default=Path("out/schedules_gallery"))
    parser.add_argument(
        "--quick", action="store_true", help="low resolution, 60 steps unless --steps is given"
    )
    args = parser.parse_args(argv)
    _cli.apply_quick_defaults(args, steps=(300, 60))
    steps = args.steps
    _cli.require(parser, steps >= 20, "--steps", steps, "an integer >= 20")
    _cli.make_folder(parser, args.out)
    path = draw(steps, args.out, dpi=50 if args.quick else 110)
    print(f"wrote {path} ({steps} steps per schedule)")


if __name__ == "__main__":
    main()
