"""Every example runs in ``--quick`` mode as a user would run it, and does what it says;
the main job also runs with its other options (``--only``, ``--steps``, ``--seed``), and
an explicit ``--steps`` (checkpointing's ``--every``) wins over ``--quick``'s everywhere.

The examples run as subprocesses (``data_parallel.py`` must set ``XLA_FLAGS`` before
JAX is imported), once per session: one at a time on a thread started when the tests are
collected (conftest.py), or two at a time when the module fixture starts them; each test
then reads the output of its example. Bad options are checked in this process, on each
example's ``main``: a usage error before anything is loaded.
"""

from __future__ import annotations

import atexit
import csv
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from tests.conftest import SHARED_COMPILATIONS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def commands(out: Path) -> dict[str, list[str]]:
    # (in the order they start, one or two at a time: the runs of compare_optimizers
    # apart, so that the later ones take the first one's programs from the compilation
    # cache)
    return {
        "compare_optimizers": ["--quick", "--out", str(out / "compare")],
        # each with a --steps (checkpointing also an --every) other than --quick's: it wins
        "quickstart": ["--quick", "--steps", "120"],
        "ablation": ["--quick", "--steps", "30"],
        "sgd_one_cycle": ["--quick", "--steps", "40", "--out", str(out / "one_cycle")],
        "flax_linen": ["--quick", "--steps", "33"],
        "flax_nnx": ["--quick", "--steps", "33"],
        # two configurations of both families, 30 steps (an explicit --steps wins over
        # --quick's 20), another seed
        "compare_optimizers seed 1": [
            *"--quick --only sgd adamw_sgdr --steps 30 --seed 1 --out".split(),
            str(out / "compare_seed_1"),
        ],
        "checkpointing": [
            *"--quick --steps 24 --every 6 --out".split(),
            str(out / "checkpoints"),
        ],
        # the default seed again, with progress bars
        "compare_optimizers seed 0": [
            *"--only adamw_sgdr --steps 10 --seed 0 --out".split(),
            str(out / "compare_seed_0"),
        ],
        "data_parallel": ["--quick", "--steps", "12"],
        "schedules_gallery": ["--quick", "--steps", "80", "--out", str(out / "gallery")],
        "lr_finder": ["--quick", "--steps", "25", "--out", str(out / "lr_finder")],
    }


def run_the_examples(out: Path, workers: int) -> tuple[Path, dict]:
    """(``out``, run name -> CompletedProcess); a run name is the example's name and what
    sets this run apart, if anything."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["MPLBACKEND"] = "Agg"
    env.update(SHARED_COMPILATIONS)  # the runs of compare_optimizers share their programs

    def run(item):
        name, arguments = item
        return name, subprocess.run(
            [sys.executable, str(EXAMPLES / f"{name.split()[0]}.py"), *arguments],
            capture_output=True,
            text=True,
            env=env,
            cwd=out,
            timeout=300,
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        completed = dict(pool.map(run, commands(out).items()))
    return out, completed


BACKGROUND_RUNS = None


def start_in_background(pool):
    """Called by conftest.py once this module's tests are collected: the examples run one
    at a time in a folder of their own while the tests before them run."""
    global BACKGROUND_RUNS
    out = Path(tempfile.mkdtemp(prefix="gradtx-tests-examples-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    BACKGROUND_RUNS = pool.submit(run_the_examples, out, 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if BACKGROUND_RUNS is not None:
        return BACKGROUND_RUNS.result()
    return run_the_examples(tmp_path_factory.mktemp("examples"), 2)  # both cores


def output_of(runs, name):
    completed = runs[1][name]
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_quickstart_fits_the_linear_model(runs):
    stdout = output_of(runs, "quickstart")
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", stdout)]
    assert losses[-1] < 1e-2 < losses[0]
    weights = re.search(r"w = \[([^\]]+)\]", stdout).group(1)
    assert [round(float(w), 1) for w in weights.split(",")] == [2.0, -1.0, 0.5]


def test_compare_optimizers_trains_every_quick_run_and_writes_curves(runs):
    stdout = output_of(runs, "compare_optimizers")
    out = runs[0] / "compare"
    rows = {
        line.split()[0]: line.split() for line in stdout.splitlines() if line.startswith("adam")
    }
    assert set(rows) == {"adamw_wd_halved", "adamw_sgdr"}
    for name, row in rows.items():
        train_loss, test_acc = float(row[1]), float(row[4])
        # 20 steps from ln(10) = 2.30 at chance level (10% accuracy).
        assert train_loss < 2.2, name
        assert test_acc > 0.2, name
    for picture in ("highlights.png", "compare_optimizers.png"):
        assert (out / picture).stat().st_size > 10_000
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert {r["optimizer"] for r in records} == set(rows)
    assert [int(r["step"]) for r in records if r["optimizer"] == "adamw_sgdr"] == [10, 20]


def _compare_optimizers_curves(out):
    """optimizer -> the rows of its curves in results.csv, as dicts of floats."""
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    return {
        name: [
            {k: float(v) for k, v in r.items() if k != "optimizer"}
            for r in records
            if r["optimizer"] == name
        ]
        for name in dict.fromkeys(r["optimizer"] for r in records)
    }


def test_compare_optimizers_runs_only_the_named_configurations_steps_and_seed(runs):
    stdout = output_of(runs, "compare_optimizers seed 1")
    out = runs[0] / "compare_seed_1"
    assert "30 steps, seed 1," in stdout
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if set(line) == {"-"}) + 1
    table = lines[first : lines.index("", first)]
    assert [row.split()[0] for row in table] == ["sgd", "adamw_sgdr"]  # in --only's order
    assert table[0].endswith("  sgd lr=0.1")
    curves = _compare_optimizers_curves(out)
    assert list(curves) == ["sgd", "adamw_sgdr"]
    for name, rows in curves.items():
        assert [row["step"] for row in rows] == [10, 20, 30], name
        # it learns from ln(10) = 2.30 at chance level (10%); 28% and 23% after 30 steps here
        losses = [row["train_loss"] for row in rows]
        assert losses == sorted(losses, reverse=True) and losses[0] < 2.3, name
        assert rows[-1]["test_acc"] > 0.15, name
    for picture in ("classic.png", "highlights.png", "compare_optimizers.png"):
        assert (out / picture).stat().st_size > 10_000

    # The seed draws the initial weights and the batch order: seed 1 differs from seed 0 at
    # every point, and seed 0 repeats whatever else runs and however many steps follow.
    seed_0 = _compare_optimizers_curves(runs[0] / "compare")["adamw_sgdr"]
    assert len(seed_0) == 2
    for row_0, row_1 in zip(seed_0, curves["adamw_sgdr"], strict=False):
        assert row_0["step"] == row_1["step"]
        assert row_0["train_loss"] != row_1["train_loss"]
        assert row_0["test_loss"] != row_1["test_loss"]
    assert "10 steps, seed 0," in output_of(runs, "compare_optimizers seed 0")
    again = _compare_optimizers_curves(runs[0] / "compare_seed_0")
    assert again == {"adamw_sgdr": seed_0[:1]}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--only", "adam", "bogus"], "argument --only: invalid choice: 'bogus'"),
        (
            ["--only", "adam", "sgd", "adam", "--steps", "10"],
            "--only must name each configuration once, repeated: adam",
        ),
        (["--steps", "0"], "--steps must be a positive multiple of 10, got 0"),
        (["--steps", "-10"], "--steps must be a positive multiple of 10, got -10"),
        (["--steps", "15"], "--steps must be a positive multiple of 10, got 15"),
        (["--quick", "--steps", "25"], "--steps must be a positive multiple of 10, got 25"),
        (["--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
        (
            ["--seed", "-1", "--steps", "10"],
            "--seed must be an integer >= 0 (NumPy's seeds), got -1",
        ),
        (
            ["--only", "sgd", "--steps", "10", "--out", "a_file"],
            "--out must be a folder that can be created, got ",
        ),
        (
            ["--only", "sgd", "--steps", "10", "--out", "a_file/run"],
            "--out must be a folder that can be created, got ",
        ),
    ],
)
def test_compare_optimizers_rejects_a_bad_option_before_training(
    arguments, message, tmp_path, capsys
):
    (tmp_path / "a_file").touch()
    arguments = [str(tmp_path / a) if a.startswith("a_file") else a for a in arguments]
    if "--out" not in arguments:
        arguments += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        _compare_optimizers_module().main(arguments)
    assert exit_info.value.code == 2  # argparse's usage error, not a traceback
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""  # nothing loaded, nothing trained


@functools.cache
def _example_module(name):
    """examples/<name>.py, imported as the script imports itself, leaving this process's
    sys.path, modules and XLA_FLAGS (data_parallel.py sets them at import) as they were."""
    shared = [m for m in ("_cli", "_digits") if m not in sys.modules]
    path, xla_flags = list(sys.path), os.environ.get("XLA_FLAGS")
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # puts examples/ on sys.path, imports _cli, _digits
    finally:
        sys.path[:] = path
        if xla_flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = xla_flags
        for shared_module in shared:
            sys.modules.pop(shared_module, None)
    return module


def _compare_optimizers_module():
    return _example_module("compare_optimizers")


def _updates_of_one_weight(tx, gradient, steps):
    """The updates of a weight held at 1.0 under a constant gradient, one per step."""

    def step(state, _):
        updates, state = tx.update(jnp.full(1, gradient), state, jnp.ones(1))
        return state, updates[0]

    return np.asarray(
        jax.jit(lambda s: jax.lax.scan(step, s, length=steps)[1])(tx.init(jnp.ones(1)))
    )


def test_compare_optimizers_runs_the_classic_eleven_and_the_five_2017_studies():
    configs = _compare_optimizers_module().CONFIGS
    by_family = {f: [n for n, c in configs.items() if c[0] == f] for f in ("classic", "highlights")}
    assert by_family["classic"] == [
        "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta",
        "adam", "adamax", "nadam", "adamw", "amsgrad",
    ]  # fmt: skip
    assert by_family["highlights"] == [
        "adam_l2", "adamw_wd_halved", "amsgrad_b2_0.9", "adam_noam", "adamw_sgdr",
    ]  # fmt: skip
    assert len(configs) == 16

    def build(name):
        return configs[name][2]()

    # With a zero gradient Adam's step is 0: what is left is the weight decay term.
    # Decoupled: -lr * wd(t) * w, wd = 1e-2 halved at steps 10, 50, 100 and 150.
    decoupled = -_updates_of_one_weight(build("adamw_wd_halved"), 0.0, 200) / 1e-3
    changes = [t for t in range(1, 200) if decoupled[t] != decoupled[t - 1]]
    assert changes == [10, 50, 100, 150]
    np.testing.assert_allclose(decoupled[[0, *changes]], 1e-2 / 2.0 ** np.arange(5), rtol=1e-6)
    # L2: the decay term is the gradient Adam normalizes, so the first step is lr, not lr * wd.
    np.testing.assert_allclose(_updates_of_one_weight(build("adam_l2"), 0.0, 1), [-1e-3], rtol=1e-5)
    # AdamW with warm restarts: -lr(t) * wd * w, lr jumping back to 1e-3 at 10, 30, 70, 150.
    sgdr = -_updates_of_one_weight(build("adamw_sgdr"), 0.0, 200) / 1e-2
    assert [t for t in range(1, 200) if sgdr[t] > sgdr[t - 1]] == [10, 30, 70, 150]
    np.testing.assert_allclose(sgdr[[0, 10, 30, 70, 150]], 1e-3, rtol=1e-6)
    # A constant gradient makes Adam's step the learning rate: noam peaks at 1e-3 at step 40.
    noam = -_updates_of_one_weight(build("adam_noam"), 1.0, 100)
    assert int(np.argmax(noam)) == 39
    np.testing.assert_allclose(noam.max(), 1e-3, rtol=1e-5)
    state = build("amsgrad_b2_0.9").init(jnp.ones(1))
    assert float(gtx.get_hyperparams(state)["b2"]) == np.float32(0.9)


def test_ablation_trains_every_variant_of_the_named_chain(runs):
    stdout = output_of(runs, "ablation")
    rows = [line for line in stdout.splitlines() if "->" in line]
    assert len(rows) == 5
    assert "weight_decay -> precondition -> learning_rate" in stdout  # the L2 variant
    assert "precondition -> weight_decay -> learning_rate" in stdout  # decoupled
    for row in rows:
        test_acc = float(row.split("  ")[-2].split()[-1])
        assert test_acc > 0.2, row


def test_sgd_one_cycle_uses_the_range_test_suggestion_and_plots(runs):
    stdout = output_of(runs, "sgd_one_cycle")
    suggestion = float(re.search(r"suggested rate ([\d.e-]+)", stdout).group(1))
    assert 1e-4 < suggestion < 10.0
    assert float(re.search(r"test accuracy ([\d.]+)", stdout).group(1)) > 0.2
    assert (runs[0] / "one_cycle" / "sgd_one_cycle.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", ["flax_linen", "flax_nnx"])
def test_flax_examples_train_past_chance(runs, name, request):
    if name == "flax_nnx":
        request.getfixturevalue("nnx_0_11")
    stdout = output_of(runs, name)
    assert float(re.search(r"test accuracy ([\d.]+)", stdout).group(1)) > 0.2


def test_flax_linen_example_reads_the_scheduled_learning_rate(runs):
    stdout = output_of(runs, "flax_linen")
    rates = [float(v) for v in re.findall(r"learning rate ([\d.e+-]+)", stdout)]
    assert len(rates) == 3 and rates[0] > rates[-1]


def test_schedules_gallery_draws_its_png(runs):
    stdout = output_of(runs, "schedules_gallery")
    assert "schedules_gallery.png" in stdout
    assert (runs[0] / "gallery" / "schedules_gallery.png").stat().st_size > 10_000


def test_lr_finder_suggests_a_rate_for_each_optimizer_and_trains_at_it(runs):
    stdout = output_of(runs, "lr_finder")
    suggestions = [float(v) for v in re.findall(r"suggestion ([\d.e+-]+)", stdout)]
    assert len(suggestions) == 2 and all(1e-6 < s < 10.0 for s in suggestions)
    # Adam at its suggestion learns in 25 steps (0.9 here); chance is 10%
    adam_at_suggestion = re.search(r"steps at lr \S+: test accuracy ([\d.]+)", stdout)
    assert float(adam_at_suggestion.group(1)) > 0.5
    assert (runs[0] / "lr_finder" / "lr_finder.png").stat().st_size > 10_000


def test_checkpointing_resumes_exactly(runs):
    stdout = output_of(runs, "checkpointing")
    # 24 steps, a checkpoint every 6, the crash at 3/4 of them: step 18 (two kept)
    assert "trained 18 steps; checkpoints at steps [12, 18]" in stdout
    assert "restored step 18: optimizer count 18" in stdout
    assert "resumed run equals the uninterrupted run after 24 steps: True" in stdout
    assert any((runs[0] / "checkpoints" / "run").iterdir())


def test_data_parallel_runs_on_eight_devices_and_matches_one_device(runs):
    if not hasattr(jax, "set_mesh"):
        pytest.skip("examples/data_parallel.py needs jax.set_mesh (JAX >= 0.7.1)")
    stdout = output_of(runs, "data_parallel")
    assert re.search(r"^8 \w+ devices", stdout, re.MULTILINE)
    spec = r"(P|PartitionSpec)\('data', None\)"  # PartitionSpec(...) in JAX <= 0.8.1
    assert re.search(rf"Dense_0 kernel: {spec}; its Adam moment: {spec}", stdout)
    losses = re.findall(r"loss (\d+\.\d+)", stdout)
    assert len(losses) == 3 and len(set(losses)) == 1
    # a pmean over shard_map's already summed gradient gave 9.4e-4 here (8x the gradient)
    differences = re.search(r"jit (\S+), shard_map (\S+) ", stdout).groups()
    assert max(map(float, differences)) < 1e-4


@pytest.mark.parametrize(
    "run, pattern, expected",
    [
        ("quickstart", r"^step +(\d+) ", ["0", "24", "48", "72", "96", "119"]),
        ("ablation", r"^(\d+) steps of 64 images", ["30"]),
        ("sgd_one_cycle", r"after (\d+) steps:", ["40"]),
        ("flax_linen", r"^step +(\d+) ", ["11", "22", "33"]),
        ("flax_nnx", r"^step +(\d+) ", ["11", "22", "33"]),
        ("checkpointing", r"uninterrupted run after (\d+) steps", ["24"]),
        ("data_parallel", r"global batch \d+, (\d+) steps", ["12"]),
        ("schedules_gallery", r"\((\d+) steps per schedule\)", ["80"]),
        ("lr_finder", r"(\d+) steps at lr", ["25"] * 4),
    ],
)
def test_an_explicit_steps_wins_over_quicks_default(runs, run, pattern, expected, request):
    """Every quick run above has a --steps of its own (checkpointing's --every is checked
    by its checkpoint steps): --quick alone gave 100, 20, 30, 30, 30, 20, 10, 60, 20."""
    if run == "flax_nnx":
        request.getfixturevalue("nnx_0_11")
    if run == "data_parallel" and not hasattr(jax, "set_mesh"):
        pytest.skip("examples/data_parallel.py needs jax.set_mesh (JAX >= 0.7.1)")
    assert re.findall(pattern, output_of(runs, run), re.MULTILINE) == expected


POSITIVE = "must be a positive integer, got"


@pytest.mark.parametrize(
    "example, arguments, message",
    [
        ("quickstart", ["--quick", "--steps", "0"], f"--steps {POSITIVE} 0"),
        ("ablation", ["--quick", "--steps", "-5"], f"--steps {POSITIVE} -5"),
        (
            "ablation",
            ["--steps", "5", "--seed", "-1"],
            "--seed must be an integer >= 0 (NumPy's seeds), got -1",
        ),
        ("data_parallel", ["--quick", "--steps", "0"], f"--steps {POSITIVE} 0"),
        ("flax_linen", ["--quick", "--steps", "0"], f"--steps {POSITIVE} 0"),
        ("flax_nnx", ["--quick", "--steps", "3"], "--steps must be an integer >= 4, got 3"),
        ("checkpointing", ["--quick", "--steps", "-20"], f"--steps {POSITIVE} -20"),
        ("checkpointing", ["--quick", "--every", "0"], f"--every {POSITIVE} 0"),
        (
            "checkpointing",
            ["--quick", "--steps", "20", "--every", "16"],
            "--every must be at most --crash-at's default, 3/4 of --steps (15), got 16",
        ),
        (
            "checkpointing",
            ["--quick", "--crash-at", "21"],
            "--crash-at must be from --every (5) to --steps (20), after a checkpoint, got 21",
        ),
        (
            "checkpointing",
            ["--quick", "--crash-at", "0"],  # 0 was taken for "not given": 3/4 of --steps
            "--crash-at must be from --every (5) to --steps (20), after a checkpoint, got 0",
        ),
        (
            "checkpointing",
            ["--quick", "--crash-at", "4"],
            "--crash-at must be from --every (5) to --steps (20), after a checkpoint, got 4",
        ),
        ("checkpointing", ["--quick", "--out", "a_file"], "--out must be a folder that can be"),
        (
            "checkpointing",
            ["--quick", "--out", "earlier"],
            "--out must be a folder without an earlier run's checkpoints",
        ),
        ("lr_finder", ["--quick", "--steps", "0"], f"--steps {POSITIVE} 0"),
        (
            "lr_finder",
            ["--quick", "--seed", "-1"],
            "--seed must be an integer from 0 to 2**32 - 1 (scikit-learn's random_state), got -1",
        ),
        ("lr_finder", ["--quick", "--seed", str(2**32)], f"got {2**32}"),
        ("lr_finder", ["--quick", "--out", "a_file"], "--out must be a folder that can be"),
        ("schedules_gallery", ["--quick", "--steps", "19"], "--steps must be an integer >= 20"),
        ("schedules_gallery", ["--quick", "--out", "a_file/x"], "--out must be a folder that"),
        (
            "sgd_one_cycle",
            ["--quick", "--steps", "25"],
            "--steps must be a positive multiple of 10, got 25",
        ),
        (
            "sgd_one_cycle",
            ["--quick", "--seed", "-1"],
            "--seed must be an integer >= 0 (NumPy's seeds), got -1",
        ),
        ("sgd_one_cycle", ["--quick", "--out", "a_file"], "--out must be a folder that can be"),
    ],
)
def test_every_example_rejects_a_bad_option_before_loading_anything(
    example, arguments, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # the relative paths above, and the default --out folders
    (tmp_path / "a_file").touch()
    (tmp_path / "earlier" / "run" / "15").mkdir(parents=True)  # an earlier run's checkpoint
    with pytest.raises(SystemExit) as exit_info:
        _example_module(example).main(arguments)
    assert exit_info.value.code == 2  # argparse's usage error, not a traceback
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""  # nothing loaded, nothing trained
