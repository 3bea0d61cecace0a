"""The second test process (tests/second_process.py): what its tests give reaches this
run, failures and skips included, in a run of a folder of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests import second_process

CONFTEST = """
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("second_process", {path!r})
second_process = importlib.util.module_from_spec(spec)
sys.modules["second_process"] = second_process
spec.loader.exec_module(second_process)


def pytest_configure(config):
    config.pluginmanager.register(second_process.Plugin({cache!r}), "second-process")
"""

# a module of second_process.MODULES, by its name
TAKEN = """
import os
import warnings

import pytest


def test_runs_in_the_second_process():
    assert os.environ["{reports}"]


def test_fails():
    assert 1 + 1 == 3, "deliberately wrong"


def test_warns():  # an error with this run's -W error::UserWarning
    warnings.warn("deliberately warned", UserWarning)


def test_skips():
    pytest.skip("deliberately skipped")


@pytest.fixture
def broken():
    yield
    raise RuntimeError("the teardown broke")


def test_with_a_teardown_that_fails(broken):
    pass


def test_deselected():
    open("deselected-ran", "w").close()


def test_exits_the_process():
    os._exit(3)


def test_after_the_exit():
    pass
"""

KEPT = """
import os


def test_runs_in_the_first_process():
    assert "{reports}" not in os.environ
"""


def test_the_second_process_reports_each_test_as_the_test_gave_it(tmp_path):
    taken = "test_quantized.py"
    assert taken in second_process.MODULES
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(
        CONFTEST.format(path=str(Path(second_process.__file__)), cache=str(tmp_path))
    )
    (tests / taken).write_text(TAKEN.format(reports=second_process.REPORTS))
    (tests / "test_kept.py").write_text(KEPT.format(reports=second_process.REPORTS))
    # the runs below as this suite's own, whatever this one was told
    names = (second_process.REPORTS, second_process.CACHE, second_process.ONE_PROCESS)
    outside = {k: v for k, v in os.environ.items() if k not in names}
    outside["TMPDIR"] = str(tmp_path / "tmp")  # where the second process keeps its files
    (tmp_path / "tmp").mkdir()

    def pytest(*arguments, **environment):
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", *arguments],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**outside, **environment},
            timeout=120,
        )

    run = pytest("-k", "not deselected", "-W", "error::UserWarning", "tests")
    out = run.stdout
    assert run.returncode == 1, out
    assert "5 failed, 2 passed, 1 skipped, 1 deselected" in out, out
    failed = set(re.findall(r"^FAILED (\S+)", out, re.MULTILINE))
    assert failed == {
        f"tests/{taken}::{name}"
        for name in (
            "test_fails",
            "test_warns",
            "test_with_a_teardown_that_fails",
            "test_exits_the_process",
            "test_after_the_exit",
        )
    }, out
    assert "in the second test process" in out and "deliberately wrong" in out
    assert "RuntimeError: the teardown broke" in out
    assert "UserWarning: deliberately warned" in out
    assert "(exit status 3) reported no outcome" in out
    # the skip named where it happened, not the proxy
    assert re.search(rf"SKIPPED \[1\] tests/{taken}:\d+: deliberately skipped", out), out
    assert not (tmp_path / "deselected-ran").exists()
    # its files removed once the run ends
    assert not list((tmp_path / "tmp").glob("gradtx-tests-second-process-*"))

    # a run that only collects starts no second process (it would run the tests) ...
    run = pytest("--collect-only", "tests")
    assert run.returncode == 0 and "9 tests collected" in run.stdout, run.stdout
    assert not (tmp_path / "deselected-ran").exists()
    # ... and one told to keep to one process runs them all in it
    run = pytest("-k", "runs_in", "tests", **{second_process.ONE_PROCESS: "1"})
    assert "FAILED tests/test_quantized.py::test_runs_in_the_second_process" in run.stdout
    assert "1 failed, 1 passed" in run.stdout, run.stdout
