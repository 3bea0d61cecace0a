"""The public annotations, as a user's type checker reads them (gradtx ships py.typed).

mypy is in the `test` extra (CI runs this test); where it is not installed the test is
skipped with that reason. The first run analyzes JAX and NumPy (~10 s of CPU); mypy's
cache in the temporary directory makes later runs take ~2 s.
"""

from __future__ import annotations

import re
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Correct code, each line a use the docs show; the last line is the one error mypy must
# report (so that a gradtx it could not find or read would not pass unnoticed).
USER_PROGRAM = """
from typing import Any, Callable, NamedTuple

import numpy as np

import gradtx as gtx
from gradtx.compat import torch as tc


class OtherTransform(NamedTuple):  # the shape of Optax's GradientTransformation
    init: Callable[[Any], Any]
    update: Callable[..., Any]


def schedule(step: Any) -> Any:
    return 0.9


other = OtherTransform(lambda params: (), lambda updates, state, params=None: (updates, state))
tx = gtx.chain(other, gtx.adamw(1e-3, weight_decay=1e-2), gtx.nadamw(1e-3))
tx = gtx.masked(other, {"w": True})
tx = gtx.partition({"a": other}, {"w": "a"})
tx = gtx.multi_steps(other, 2)
tx = gtx.named_chain(("other", other), ("adadelta", gtx.adadelta(weight_decay=schedule)))
tx = tc.adam(betas=(tc.lr_scheduler.one_cycle_momentum(100), 0.999))
tx = gtx.sgd(0.1, momentum=schedule, weight_decay=schedule)
tx = gtx.rmsprop(0.1, momentum=schedule)
tx = gtx.proximal_l1(schedule)
tx = gtx.scale_by_learning_rate(np.float64(1e-3))
tx = gtx.adam(gtx.schedules.warmup_cosine_decay(0.0, 1e-3, 10, 100))


@gtx.schedule_injection(static_args="mask")
def masked_sgd(learning_rate: float, mask: Any = None) -> gtx.GradientTransformation:
    return gtx.masked(gtx.scale_by_learning_rate(learning_rate), mask)


tx = masked_sgd(1e-3)


def other_factory(learning_rate: float) -> OtherTransform:  # an Optax factory's shape
    return other


tx = gtx.schedule_injection(other_factory)(learning_rate=1e-3)
tx = gtx.clip_by_global_norm("1.0")  # the one error
"""


def test_a_user_program_using_the_documented_api_type_checks_with_mypy(tmp_path):
    api = pytest.importorskip("mypy.api", reason="mypy is not installed")
    program = tmp_path / "user_program.py"
    program.write_text(textwrap.dedent(USER_PROGRAM))
    cache = Path(tempfile.gettempdir()) / "gradtx-test-typing-mypy-cache"
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nmypy_path = {ROOT}\nfollow_imports = silent\n")
    stdout, stderr, _ = api.run(
        ["--config-file", str(config), "--cache-dir", str(cache), "--no-error-summary"]
        + [str(program)]
    )
    errors = [line for line in stdout.splitlines() if re.search(r":\d+: error:", line)]
    last_line = len(textwrap.dedent(USER_PROGRAM).splitlines())
    assert len(errors) == 1 and f"user_program.py:{last_line}: error:" in errors[0], stdout + stderr
    assert 'incompatible type "str"; expected "float"' in errors[0], errors[0]
