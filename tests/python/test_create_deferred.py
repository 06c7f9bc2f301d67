"""create_deferred through the compiled probes, on a memory reactor (both Twisted
versions run this file)."""

import gc

import pytest
from twisted.internet.defer import CancelledError

import pyo3_twisted
from pyo3_twisted import RuntimeShutdown, RustPanicError, probes


def test_value(reactor):
    assert reactor.get_success(probes.ready(reactor, {"a": [1, 2]})) == {"a": [1, 2]}
    assert reactor.get_success(probes.sleep(reactor, 0.01, "later")) == "later"


def test_rust_value_error_arrives_as_value_error(reactor):
    failure = reactor.get_failure(probes.fail(reactor, "no such room"), ValueError)
    assert type(failure.value) is ValueError
    assert str(failure.value) == "no such room"


def test_panic_arrives_as_rust_panic_error_and_process_survives(reactor):
    failure = reactor.get_failure(probes.panic(reactor, "index out of range: 7"), RustPanicError)
    assert str(failure.value) == "index out of range: 7"
    assert isinstance(failure.value, Exception)
    # The runtime goes on serving.
    assert reactor.get_success(probes.ready(reactor, "alive")) == "alive"
    assert pyo3_twisted.stats(reactor)["tasks_panicked"] == 1


def test_cancel_drops_future_promptly_and_fires_cancelled_error_once(reactor):
    d, flag = probes.pending(reactor)
    outcomes = []
    d.addBoth(outcomes.append)
    assert not flag.dropped
    d.cancel()
    # Dropped on its worker right away, while the reactor still runs (not at shutdown).
    assert flag.wait(5.0)
    assert pyo3_twisted.stats(reactor)["state"] == "running"
    reactor.turn()
    assert len(outcomes) == 1 and outcomes[0].check(CancelledError)
    d.cancel()  # a second cancel is a no-op
    reactor.turn()
    assert len(outcomes) == 1
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_cancelled"] == 1 and stats["tasks_in_flight"] == 0


def test_cancel_after_completion_was_queued_fires_once(reactor):
    """The completion already sits in the mailbox when cancel() runs: the Deferred
    fails with CancelledError and the late completion is dropped silently."""
    for i in range(200):
        d = probes.ready(reactor, i)
        outcomes = []
        d.addBoth(outcomes.append)
        # The waker thread queues the mailbox drain with callFromThread once the
        # worker has pushed the completion; wait for that without running it.
        assert reactor.wait_for_thread_call(5.0)
        d.cancel()
        reactor.turn()
        assert len(outcomes) == 1 and outcomes[0].check(CancelledError), outcomes
    assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 0


def test_cancel_before_the_runtime_starts(unstarted_reactor):
    reactor = unstarted_reactor
    pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
    d, flag = probes.pending(reactor)
    d.cancel()
    assert reactor.get_failure(d, CancelledError)
    reactor.run()
    # The held future is dropped as soon as the runtime starts.
    assert flag.wait(5.0)


def test_deferred_fired_by_hand_ignores_late_result(reactor):
    d = probes.sleep(reactor, 0.01, "late")
    d.callback("by hand")
    assert reactor.get_success(d) == "by hand"
    reactor.get_success(probes.sleep(reactor, 0.05, None))  # the late result came and went
    assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 0


def test_children_spawned_with_pyo3_twisted_spawn(reactor):
    assert reactor.get_success(probes.spawn_children(reactor, 40, 2)) == 42


def test_off_reactor_thread_is_a_clear_error(reactor):
    import threading

    pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
    errors = []

    def worker():
        try:
            probes.ready(reactor, 1)
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors and "reactor thread" in errors[0]


def test_no_gil_taken_on_tokio_threads(reactor):
    ds = [probes.ready(reactor, i) for i in range(2000)]
    assert [reactor.get_success(d) for d in ds] == list(range(2000))
    stats = pyo3_twisted.stats(reactor)
    assert stats["gil_acquisitions_on_tokio_threads"] == 0
    # Batched: far fewer drains than completions even on the memory reactor.
    assert stats["mailbox_batches"] < stats["mailbox_jobs"]


def test_results_are_not_leaked(reactor):
    class Marker:
        pass

    import weakref

    marker = Marker()
    ref = weakref.ref(marker)
    assert reactor.get_success(probes.ready(reactor, marker)) is marker
    del marker
    gc.collect()
    assert ref() is None


def test_rejects_work_after_shutdown():
    from pyo3_twisted.testing import memory_reactor

    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
        assert reactor.get_success(probes.ready(reactor, 1)) == 1
    failure = reactor.get_failure(probes.ready(reactor, 2), RuntimeShutdown)
    assert "shutting down" in str(failure.value)
    with pytest.raises(RuntimeShutdown):
        pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
