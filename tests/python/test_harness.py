"""pyo3_twisted.testing from pytest, and from trial (in a subprocess)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from pyo3_twisted.testing import REACTOR_ENV, ThreadedMemoryReactorClock, memory_reactor


def test_call_from_thread_is_thread_safe_and_wakes_the_waiter():
    reactor = ThreadedMemoryReactorClock()
    d = Deferred()
    threads = [
        threading.Thread(target=lambda i=i: reactor.callFromThread(lambda: None))
        for i in range(50)
    ]
    threading.Thread(target=lambda: reactor.callFromThread(d.callback, "from a thread")).start()
    for t in threads:
        t.start()
    assert reactor.get_success(d, timeout=5) == "from a thread"
    for t in threads:
        t.join()
    reactor.turn()
    assert reactor.run_thread_calls() == 0


def test_get_success_times_out_without_busy_looping():
    import time

    reactor = ThreadedMemoryReactorClock()
    cpu_before = time.process_time()
    with pytest.raises(TimeoutError):
        reactor.get_success(Deferred(), timeout=0.3)
    # Waiting released the GIL and slept: almost no CPU was used.
    assert time.process_time() - cpu_before < 0.2


def test_pump_until_runs_thread_calls_without_moving_the_clock():
    reactor = ThreadedMemoryReactorClock()
    seen = []
    go = threading.Event()

    def worker():
        go.wait()
        reactor.callFromThread(seen.append, "from a thread")

    thread = threading.Thread(target=worker)
    thread.start()
    go.set()
    reactor.pump_until(lambda: seen == ["from a thread"])
    thread.join()
    assert reactor.seconds() == 0
    with pytest.raises(TimeoutError, match="did not hold within 0.05 s"):
        reactor.pump_until(lambda: False, timeout=0.05)


def test_get_failure_checks_the_type():
    reactor = ThreadedMemoryReactorClock()
    d = Deferred()
    d.errback(KeyError("k"))
    with pytest.raises(AssertionError, match="expected"):
        reactor.get_failure(d, ValueError)


def test_shutdown_fires_triggers_and_waits_for_their_deferreds():
    calls = []
    with memory_reactor() as reactor:
        later = Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", lambda: later)
        reactor.addSystemEventTrigger("during", "shutdown", calls.append, "during")
        reactor.addSystemEventTrigger("after", "shutdown", calls.append, "after")
        threading.Thread(target=lambda: reactor.callFromThread(later.callback, None)).start()
    assert calls == ["during", "after"]
    assert reactor.is_shut_down


def test_trial_suite_passes_under_trial(tmp_path):
    suite = Path(__file__).parent / "trial_suite"
    reactor = ["--reactor=asyncio"] if os.environ.get(REACTOR_ENV) == "asyncio" else []
    proc = subprocess.run(
        [sys.executable, "-m", "twisted.trial", "--temp-directory", str(tmp_path / "_trial"),
         *reactor, "trial_harness_cases"],
        cwd=suite,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(suite), "RUST_BACKTRACE": "0"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED (successes=5)" in proc.stdout, proc.stdout
