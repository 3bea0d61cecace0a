"""Some test modules run in a second pytest process, beside this one.

The tests in one process keep about one of CI's two cores busy (XLA compiles a program
on one core, and most of the suite's time is compilation), so the modules of
``MODULES``, about half of the time of a run in one process, run in a second process
started once the run is collected, while this process runs the others. Each of their
tests stays an item of this run, a ``Proxy`` at its place in the module under the same
node id, and reports what the test gave there (passed, skipped with its reason, failed
with its traceback as text); the proxies come last, so they rarely wait. The second
process writes one line of JSON per phase of a test (``REPORTS``) and shares this run's
compilation cache. Collected alone (no other test to overlap), the modules run here, as
they do with ``--pdb`` or ``GRADTX_TESTS_ONE_PROCESS=1`` set (to debug or profile them in
a whole run). conftest.py registers the hooks (``Plugin``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# the modules of the second process, so that it ends with this one: ~350 s run alone in
# one process (test_performance_equivalence.py 171 s) of the suite's ~1,010 s so (one
# measurement each).
# Run beside this one, compiling on the other core, they take ~1.5x as long; with
# test_dtypes.py and test_laws.py here as well (390 s alone) this process waited 89 s for
# the second one at the end of a 587 s run.
MODULES = frozenset({
    "test_performance_equivalence.py",
    "test_compat_torch.py",
    "test_compat_keras.py",
    "test_quantized.py",
    "test_jax_config.py",
    "test_jax_debug_flags.py",
    "test_vmap.py",
})  # fmt: skip

REPORTS = "GRADTX_TESTS_REPORTS"
"""Set in the second process's environment: the file its tests' reports go to."""

CACHE = "GRADTX_TESTS_COMPILATION_CACHE"
"""Set in the second process's environment: the compilation cache it shares."""

ONE_PROCESS = "GRADTX_TESTS_ONE_PROCESS"
"""Set (to anything) in the environment of a run: every test runs in its process."""

WAIT = 0.05  # seconds between two reads of the reports


def is_second_process() -> bool:
    """Whether this process is the second one (it writes reports, takes no modules)."""
    return REPORTS in os.environ


def write_report(report: pytest.TestReport) -> None:
    """In the second process: appends one phase's outcome of a test to ``REPORTS``."""
    if report.skipped and isinstance(report.longrepr, tuple):
        text = list(report.longrepr)  # (path, line, reason) of a skip
    elif report.skipped:  # an expected failure: a skip here
        path, line, _ = report.location
        text = [path, line, f"Skipped: failed as expected ({getattr(report, 'wasxfail', '')})"]
    else:
        text = report.longreprtext
    line = json.dumps(
        {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "text": text}
    )
    with open(os.environ[REPORTS], "a", encoding="utf-8") as reports:
        reports.write(line + "\n")


class SecondProcess:
    """A pytest process running ``nodeids``, and the outcomes of its tests as they come."""

    def __init__(self, config: pytest.Config, nodeids: list[str], cache: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="gradtx-tests-second-process-"))
        self.reports = self.folder / "reports.jsonl"
        self.output = self.folder / "output.txt"
        self.reports.touch()
        self.command = [
            sys.executable,
            *(f"-W{w}" for w in sys.warnoptions),  # python -W ... -m pytest
            *(f"-X{k}" if v is True else f"-X{k}={v}" for k, v in sys._xoptions.items()),
            *("-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *_options_of(config),
            *nodeids,
        ]
        self.cwd = str(config.rootpath)
        self.env = {**os.environ, REPORTS: str(self.reports), CACHE: cache}
        self.popen: subprocess.Popen | None = None
        self.outcomes: dict[str, tuple[str, str]] = {}  # node id -> (outcome, text)
        self._phases: dict[str, list[tuple[str, str]]] = {}  # node id -> reports so far
        self._read = 0  # bytes of the reports read so far
        self._pending = ""  # a line not yet complete

    def start(self) -> None:
        with open(self.output, "w", encoding="utf-8") as output:
            self.popen = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        """Ends the process if it still runs (a run stopped early), removes its files."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def outcome(self, nodeid: str) -> tuple[str, str]:
        """``(outcome, text)`` of the test ``nodeid`` once its teardown is reported:
        failed where any phase failed, skipped where its setup skipped."""
        while True:
            exited = self.popen.poll() is not None
            self._take_reports()
            if nodeid in self.outcomes:
                return self.outcomes[nodeid]
            if exited:
                tail = self.output.read_text(encoding="utf-8", errors="replace")[-5000:]
                return "failed", (
                    f"the second test process (exit status {self.popen.returncode}) "
                    f"reported no outcome of {nodeid}; its output ends:\n{tail}"
                )
            time.sleep(WAIT)

    def _take_reports(self) -> None:
        with open(self.reports, encoding="utf-8") as reports:
            reports.seek(self._read)
            text = reports.read()
            self._read = reports.tell()
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            report = json.loads(line)
            phases = self._phases.setdefault(report["nodeid"], [])
            phases.append((report["outcome"], report["text"]))
            if report["when"] == "teardown":
                self.outcomes[report["nodeid"]] = _combined(phases)


def _options_of(config: pytest.Config) -> list[str]:
    """The options of this run that the second process takes too: the configuration
    file and root folder, ``-m``, ``-W``, ``-o`` and ``--tb`` (others, such as
    ``--junitxml`` or ``--basetemp``, name files of this process's own)."""
    option = config.option
    options = []
    if option.inifilename:
        options += ["-c", str(option.inifilename)]
    if option.rootdir:
        options += ["--rootdir", str(option.rootdir)]
    if option.markexpr:
        options += ["-m", option.markexpr]
    for warning in option.pythonwarnings or ():
        options += ["-W", warning]
    for override in option.override_ini or ():
        options += ["-o", override]
    return [*options, f"--tb={option.tbstyle}"]


def _combined(phases: list[tuple[str, str]]) -> tuple[str, str]:
    """One outcome of a test's setup, call and teardown (``(outcome, text)`` each)."""
    failed = [text for outcome, text in phases if outcome == "failed"]
    if failed:
        return "failed", "\n\n".join(failed)
    skipped = [text for outcome, text in phases if outcome == "skipped"]
    if skipped:
        return "skipped", tuple(skipped[0])
    return "passed", ""


class Proxy(pytest.Item):
    """A test of a module the second process runs: reports that test's outcome there."""

    def __init__(self, *, process: SecondProcess, location: tuple, **kwargs) -> None:
        super().__init__(**kwargs)
        self.process = process
        self._location = location

    def runtest(self) -> None:
        outcome, text = self.process.outcome(self.nodeid)
        if outcome == "skipped":
            self.skipped_at = text
            pytest.skip(text[2].removeprefix("Skipped: "))
        if outcome == "failed":
            pytest.fail(f"in the second test process:\n{text}", pytrace=False)

    skipped_at: tuple | None = None  # (path, line, reason) of its skip there

    def reportinfo(self):
        return self._location


def located(item: pytest.Item, report: pytest.TestReport) -> pytest.TestReport:
    """``report`` with a proxy's skip placed where the test skipped in the second process
    (else it would name ``Proxy.runtest``)."""
    if isinstance(item, Proxy) and item.skipped_at is not None and report.skipped:
        report.longrepr = item.skipped_at
    return report


def take(session: pytest.Session, cache: str) -> SecondProcess | None:
    """Replaces the items of ``MODULES`` among the session's (those selected) with
    proxies placed last, where the run also collected others, and returns the process,
    not started, that runs them. Not in the second process itself, nor where the run
    only collects, debugs failures (``--pdb``) or is told to keep to one process
    (``ONE_PROCESS`` set)."""
    items = session.items
    option = session.config.option
    if is_second_process() or ONE_PROCESS in os.environ or option.collectonly or option.usepdb:
        return None
    moved = [
        item for item in items if item.path.name in MODULES and item.path.parent.name == "tests"
    ]
    if not moved or len(moved) == len(items):
        return None
    process = SecondProcess(session.config, [item.nodeid for item in moved], cache)
    proxies = [
        Proxy.from_parent(item.parent, name=item.name, process=process, location=item.reportinfo())
        for item in moved
    ]
    taken = set(moved)
    items[:] = [item for item in items if item not in taken] + proxies
    return process


class Plugin:
    """The hooks of both processes, registered by conftest.py: this one takes the
    modules once collected, before the background starts there, and ends the second
    process if the run stops first; the second one writes its reports."""

    def __init__(self, cache: str) -> None:
        self.cache = cache
        self.process: SecondProcess | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.process = take(session, self.cache)
        if self.process is not None:
            self.process.start()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.process is not None:
            self.process.stop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        return located(item, (yield))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if is_second_process():
            write_report(report)
