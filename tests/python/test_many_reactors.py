"""A suite that makes one memory reactor per test and never runs nor stops them
(Synapse's HomeserverTestCase) keeps a bounded number of threads, and every reactor
is garbage-collected with its runtime's state."""

import pytest

from conftest import run_script

COUNT = 5000


@pytest.mark.parametrize("kind", ["harness", "call_from_thread", "plain"])
def test_5000_reactors_never_run_never_stopped(kind):
    result = run_script("many_reactors.py", kind, str(COUNT), timeout=300)
    assert result["logged_errors"] == []
    # Main thread + the shared pool (+ the process's one waker thread, and slack
    # for an interpreter thread): never a thread per reactor.
    assert result["threads_max"] <= result["pool_size"] + 3, result
    assert result["threads_end"] <= result["pool_size"] + 3, result
    # Every reactor was collected: nothing the bridge holds keeps one alive.
    assert result["alive"] == 0, result
    assert result["rss_growth_kib"] < 30 * 1024, result
    assert result["gil_on_tokio"] == 0
