"""The optimizer states' format is the checkpoint format: it changes only on purpose.

An Orbax or Flax checkpoint holds a state's key paths, its containers and its leaves'
shapes and dtypes; restoring it needs ``jax.eval_shape(tx.init, params)`` to have the
same. ``tests/golden/state_format.json`` records that format for every optimizer,
wrapper and compat optimizer (``tests/golden/record_state_format.py``); these tests
compare the current one with it, from ``jax.eval_shape`` (nothing is compiled).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import zoo
from tests.golden import record_state_format as record

GOLDEN = json.loads((Path(__file__).parent / "golden" / "state_format.json").read_text())


def _keyed(entries: list[dict]) -> dict[str, dict]:
    return {entry["path"]: entry for entry in entries}


def _differences(recorded: list[dict], current: list[dict]) -> list[str]:
    """What changed between two formats, path by path."""
    before, after = _keyed(recorded), _keyed(current)
    lines = [f"  removed {path}: {before[path]}" for path in before if path not in after]
    lines += [f"  added {path}: {after[path]}" for path in after if path not in before]
    for path in before:
        if path in after and before[path] != after[path]:
            fields = sorted(set(before[path]) | set(after[path]))
            changes = [
                f"{field} {before[path].get(field)} -> {after[path].get(field)}"
                for field in fields
                if before[path].get(field) != after[path].get(field)
            ]
            lines.append(f"  changed {path}: {'; '.join(changes)}")
    if not lines and recorded != current:
        lines.append("  the same entries in another order (the flattened leaf order changed)")
    return lines


def test_the_params_are_those_recorded():
    assert record.params_format() == GOLDEN["params"]


def test_every_case_is_recorded_and_every_record_is_a_case():
    assert sorted(GOLDEN["states"]) == sorted(record.CASES), (
        "tests/golden/state_format.json and the CASES of tests/golden/record_state_format.py "
        "differ: rerun the script after adding or removing a case"
    )


def test_every_optimizer_and_wrapper_of_the_zoo_has_a_recorded_format():
    missing = sorted((set(zoo.ALL) | set(zoo.WRAPPERS)) - set(record.CASES))
    assert not missing, f"add these to CASES in tests/golden/record_state_format.py: {missing}"


@pytest.mark.parametrize("name", sorted(record.CASES))
def test_state_format_is_the_recorded_checkpoint_format(name):
    current = record.state_format(name)
    recorded = GOLDEN["states"][name]
    assert current == recorded, (
        f"the state format of {name!r} changed:\n"
        + "\n".join(_differences(recorded, current))
        + "\nThe state's key paths, containers, shapes and dtypes are the checkpoint format: "
        "this change breaks every saved Orbax/Flax checkpoint of this optimizer. If it is "
        "deliberate, say so in docs/protocol.md (with how to migrate) and regenerate with "
        "`python tests/golden/record_state_format.py`."
    )
