"""Every example runs in ``--quick`` mode as a user would run it, and does what it says.

The examples run as subprocesses (``data_parallel.py`` must set ``XLA_FLAGS`` before
JAX is imported), two at a time to use both cores, once per session; each test then
reads the output of its example.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def commands(out: Path) -> dict[str, list[str]]:
    return {
        "compare_optimizers": ["--quick", "--out", str(out / "compare")],
        "quickstart": ["--quick"],
        "ablation": ["--quick"],
        "sgd_one_cycle": ["--quick", "--out", str(out / "one_cycle")],
        "flax_linen": ["--quick"],
        "flax_nnx": ["--quick"],
        "checkpointing": ["--quick", "--out", str(out / "checkpoints")],
        "data_parallel": ["--quick"],
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """example name -> (output folder, CompletedProcess), all run in --quick mode."""
    out = tmp_path_factory.mktemp("examples")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["MPLBACKEND"] = "Agg"

    def run(item):
        name, arguments = item
        return name, subprocess.run(
            [sys.executable, str(EXAMPLES / f"{name}.py"), *arguments],
            capture_output=True,
            text=True,
            env=env,
            cwd=out,
            timeout=300,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        completed = dict(pool.map(run, commands(out).items()))
    return out, completed


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


def test_checkpointing_resumes_exactly(runs):
    stdout = output_of(runs, "checkpointing")
    assert "checkpoints at steps [10, 15]" in stdout
    assert "restored step 15: optimizer count 15" in stdout
    assert "resumed run equals the uninterrupted run after 20 steps: True" in stdout
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
