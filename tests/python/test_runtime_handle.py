"""The Runtime handle, start on first use, shutdown by handle, and nothing kept alive:
what a harness that never runs (nor stops) its reactor needs."""

import gc
import time
import weakref

import pytest
from twisted.internet import defer

import pyo3_twisted
from pyo3_twisted import RuntimeShutdown, probes
from pyo3_twisted.database import DatabasePool
from pyo3_twisted.probes import RustStore
from pyo3_twisted.testing import ThreadedMemoryReactorClock


def never_run_reactor():
    reactor = ThreadedMemoryReactorClock()
    assert not reactor.running
    return reactor


def test_never_run_reactor_serves_both_directions():
    reactor = never_run_reactor()
    assert reactor.get_success(probes.ready(reactor, "rust to python")) == "rust to python"
    assert reactor.get_success(probes.call_python(reactor, lambda: "python from rust")) == (
        "python from rust"
    )
    stats = pyo3_twisted.stats(reactor)
    assert stats["state"] == "running" and stats["wake_mode"] == "fd"
    assert not reactor.running


def test_a_reactor_that_runs_later_still_starts_through_call_when_running():
    reactor = never_run_reactor()
    runtime = pyo3_twisted.Runtime(reactor)
    assert runtime.stats()["state"] == "installed"
    reactor.run()
    assert runtime.stats()["state"] == "running"
    assert reactor.get_success(probes.ready(reactor, 7)) == 7


def test_runtime_handle_is_the_reactors_runtime():
    reactor = never_run_reactor()
    runtime = pyo3_twisted.Runtime(reactor, shutdown_timeout=3.0)
    assert runtime.reactor is reactor
    # Without options: the runtime already there; with other options: an error.
    assert pyo3_twisted.Runtime(reactor).stats()["state"] == "installed"
    with pytest.raises(RuntimeError, match="different configuration"):
        pyo3_twisted.Runtime(reactor, shutdown_timeout=4.0)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        pyo3_twisted.Runtime(reactor, workers=2)
    runtime.start()
    assert runtime.stats()["state"] == "running"
    assert "running" in repr(runtime)


def test_shutdown_blocking_settles_in_flight_work_as_reactor_shutdown_does():
    reactor = never_run_reactor()
    runtime = pyo3_twisted.Runtime(reactor)
    short = [probes.sleep(reactor, 0.01, i) for i in range(20)]
    long = [probes.sleep(reactor, 3600.0, i) for i in range(20)]
    pending, flag = probes.pending(reactor)
    results = []
    for d in short + long + [pending]:
        d.addBoth(results.append)
    runtime.shutdown_blocking(0.5)
    # Everything settled during the call: values, or RuntimeShutdown.
    assert len(results) == 41
    assert sorted(r for r in results if isinstance(r, int)) == list(range(20))
    failures = [r for r in results if not isinstance(r, int)]
    assert len(failures) == 21 and all(f.check(RuntimeShutdown) for f in failures)
    assert flag.wait(5.0), "the aborted future was not dropped"
    assert runtime.is_shut_down and runtime.stats()["state"] == "stopped"
    # Idempotent, and later work is refused.
    runtime.shutdown_blocking(0.5)
    reactor.get_failure(probes.ready(reactor, 1), RuntimeShutdown)
    assert runtime.stats()["tasks_rejected_after_shutdown"] == 1


def test_shutdown_deferred_is_driven_by_the_reactor():
    reactor = never_run_reactor()
    runtime = pyo3_twisted.Runtime(reactor)
    quick = probes.sleep(reactor, 0.01, "quick")
    slow = probes.sleep(reactor, 3600.0, "slow")
    done = runtime.shutdown(5.0)
    again = runtime.shutdown(5.0)
    assert reactor.get_success(quick) == "quick"
    assert not done.called
    reactor.advance(5.0)
    reactor.get_failure(slow, RuntimeShutdown)
    assert reactor.get_success(done) is None and reactor.get_success(again) is None
    assert reactor.get_success(runtime.shutdown()) is None


class Homeserver:
    """What an application owns: a runtime handle, a Python pool, a Rust store over
    that pool; it shuts down before (or without) its reactor."""

    def __init__(self, reactor):
        self.runtime = pyo3_twisted.Runtime(reactor)
        self.pool = DatabasePool(reactor, ":memory:", max_connections=1)
        self.store = RustStore.python(self.pool, reactor)

    def shutdown(self):
        self.runtime.shutdown_blocking()
        self.pool.close()


def test_owner_of_a_handle_and_a_pool_is_collected_after_shutdown():
    reactor = never_run_reactor()
    hs = Homeserver(reactor)
    rows = reactor.get_success(hs.store.query(reactor, "SELECT 40 + 2", []))
    assert rows == [[42]]
    in_flight = probes.sleep(reactor, 3600.0, "never")
    hs.shutdown()
    reactor.get_failure(in_flight, RuntimeShutdown)
    hs.shutdown()  # twice: a no-op
    refs = [weakref.ref(hs), weakref.ref(hs.pool), weakref.ref(hs.store), weakref.ref(reactor)]
    del hs, reactor, in_flight
    gc.collect()
    assert [ref() for ref in refs] == [None] * 4


class PoolFront:
    """Something that owns nothing but a pool's runInteraction, for the Rust store to
    hold (the pool itself is also held by the reactor's shutdown trigger)."""

    def __init__(self, pool):
        self.runInteraction = pool.runInteraction


def test_python_database_pool_holds_the_pool_weakly():
    reactor = never_run_reactor()
    pool = DatabasePool(reactor, ":memory:", max_connections=1)
    front = PoolFront(pool)
    store = RustStore.python(front, reactor)
    assert reactor.get_success(store.query(reactor, "SELECT 1", [])) == [[1]]
    front_ref = weakref.ref(front)
    del front
    gc.collect()
    assert front_ref() is None, "the Rust store kept the Python pool alive"
    failure = reactor.get_failure(store.query(reactor, "SELECT 1", []), Exception)
    assert "garbage-collected" in str(failure.value)
    pool.close()


def test_collecting_a_reactor_aborts_its_in_flight_tasks():
    reactor = never_run_reactor()
    pending, flag = probes.pending(reactor)
    ref = weakref.ref(reactor)
    del reactor
    gc.collect()
    assert ref() is None
    assert flag.wait(5.0), "the collected reactor's task was not dropped"
    assert not pending.called


def test_a_cycle_through_a_pending_deferred_is_collected():
    """reactor → runtime → pending Deferred → callback → reactor: the collector sees
    the whole cycle (the runtime's slot reports the Deferreds it holds)."""
    reactor = never_run_reactor()
    pending, flag = probes.pending(reactor)
    pending.addCallback(lambda _: reactor.seconds())
    ref = weakref.ref(reactor)
    del reactor, pending
    gc.collect()
    assert ref() is None
    assert flag.wait(5.0)


class Held:
    """Something only a pending awaitable's frame refers to."""


def collected(refs, within=10.0):
    """Whether every weakref in `refs` dies. A collected reactor's tasks are dropped on
    a Tokio worker, after the reactor is gone: collect until then, within a bound."""
    deadline = time.monotonic() + within
    while True:
        gc.collect()
        if all(ref() is None for ref in refs) or time.monotonic() > deadline:
            return [ref() for ref in refs] == [None] * len(refs)
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["deferred", "coroutine"])
def test_a_collected_reactor_frees_what_its_tasks_awaited(kind):
    """A Rust task awaits Python when its reactor is collected, never stopped (as
    Synapse's test reactors are): the task is dropped, and what it awaited is a cycle
    of Python's alone (the Deferred's callbacks hold the bridge's resolver or
    coroutine driver, which hold the Deferred) that the collector must see to free:
    the Deferred, the coroutine, and what its frame holds."""
    reactor = never_run_reactor()
    held = Held()
    never = defer.Deferred()

    async def waits(held=held):
        await never

    factory = (lambda: waits()) if kind == "coroutine" else (lambda: never)
    d = probes.call_python(reactor, factory)
    # Started: the start job has run (a queued one would hold the reactor).
    reactor.pump_until(lambda: pyo3_twisted.stats(reactor)["awaitables_started"] == 1)
    assert not d.called and not never.called
    refs = [weakref.ref(reactor), weakref.ref(held), weakref.ref(never)]
    del reactor, held, never, waits, factory, d
    assert collected(refs), "the awaited Python objects outlived their reactor"


@pytest.mark.parametrize("kind", ["deferred", "coroutine"])
def test_what_a_waiting_task_awaits_stays_alive_for_its_cancel(kind):
    """While the Rust future waits it can still cancel what it awaits, so that stays
    alive even when nothing else refers to it (as the Deferred a coroutine awaits
    stays alive for whoever holds ensureDeferred's Deferred), and the cancel reaches
    it."""
    reactor = never_run_reactor()
    made = []

    def deferred():
        never = defer.Deferred()
        made.append(weakref.ref(never))
        return never

    async def waits():
        await deferred()

    d = probes.call_python(reactor, waits if kind == "coroutine" else deferred)
    reactor.pump_until(lambda: bool(made))
    gc.collect()
    awaited = made[0]()
    assert awaited is not None, "collected while its Rust future waited"
    assert not awaited.called
    d.cancel()
    # The future is dropped on its worker; its cancel comes back as a job.
    reactor.pump_until(lambda: awaited.called)
    reactor.get_failure(d, defer.CancelledError)


def test_a_handle_outliving_its_reactor_refuses_work_clearly():
    reactor = never_run_reactor()
    runtime = pyo3_twisted.Runtime(reactor)
    assert reactor.get_success(probes.ready(reactor, 1)) == 1
    del reactor
    gc.collect()
    assert runtime.reactor is None
    assert runtime.is_shut_down
    runtime.shutdown_blocking()  # nothing left to do


def test_shutdown_while_a_python_awaitable_is_pending():
    reactor = never_run_reactor()
    runtime = pyo3_twisted.Runtime(reactor)
    never = defer.Deferred()
    d = probes.call_python(reactor, lambda: never)
    reactor.turn()
    runtime.shutdown_blocking(0.2)
    reactor.get_failure(d, RuntimeShutdown)
    # The Python side was cancelled when the Rust future was dropped.
    reactor.turn()
    assert never.called
    never.addErrback(lambda f: f.trap(defer.CancelledError))


def test_asking_the_shared_pool_for_other_threads_is_a_clear_error_at_install():
    first = never_run_reactor()
    first.get_success(probes.ready(first, 0))
    size = pyo3_twisted.stats(first)["worker_threads"]
    other = never_run_reactor()
    with pytest.raises(RuntimeError, match="tokio='per_reactor'"):
        pyo3_twisted.install(other, worker_threads=size + 1)
    # Nothing was installed on the way to the error; a pool of its own works.
    with pytest.raises(RuntimeError, match="no pyo3-twisted runtime"):
        pyo3_twisted.stats(other)
    pyo3_twisted.install(other, worker_threads=size + 1, tokio="per_reactor")
    assert other.get_success(probes.ready(other, "own")) == "own"
    pyo3_twisted.Runtime(other).shutdown_blocking()
