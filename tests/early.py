"""Subprocess checks that start as soon as pytest has collected the tests.

The examples, the 8-device sharding checks and the two-process checks run in
subprocesses (they need their own ``XLA_FLAGS`` or processes of their own), ~1 minute
of one core between them. A module declares them in ``EARLY_RUNS`` (a name -> a
function of how many processes it may run at once, which only runs the processes and
returns what they printed); ``conftest.py`` starts them, in order, on one background
thread once the selected tests are known, so that they use the second core while this
process runs the other tests (XLA compiles a program on one core). The module's
fixture takes the result with ``result`` and judges it, as it did when it ran them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_started: dict[str, Future] = {}
_processes: list[subprocess.Popen] = []
_folders: list[Path] = []
_stopped = threading.Event()


def start(runs: dict[str, Callable[[int], Any]], processes: int) -> None:
    """Submits each run, in order, to one background thread."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="early-runs")
        for name, run in runs.items():
            _started[name] = _pool.submit(run, processes)


def result(name: str, run: Callable[[int], Any]) -> Any:
    """What the run ``name`` returned, its exception raised here: from the background
    where it was started there, else run now with two processes at once."""
    with _lock:
        future = _started.pop(name, None)
    return future.result() if future is not None else run(2)


def popen(*args: Any, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen``; ``stop`` kills the process if it still runs then."""
    with _lock:
        if _stopped.is_set():
            raise RuntimeError("the test session has ended")
        process = subprocess.Popen(*args, **kwargs)
        _processes.append(process)
    return process


def run(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True, timeout=timeout)``."""
    process = popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def folder(prefix: str) -> Path:
    """A new temporary folder, removed by ``stop``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    with _lock:
        _folders.append(path)
    return path


def stop() -> None:
    """At the end of the session: drops the runs not started and kills the processes
    still running (a session stopped early does not wait minutes for them), then
    removes the temporary folders."""
    with _lock:
        _stopped.set()
        for future in _started.values():
            future.cancel()
        _started.clear()
        for process in _processes:
            process.kill()
        pool = _pool
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    for path in _folders:
        shutil.rmtree(path, ignore_errors=True)
