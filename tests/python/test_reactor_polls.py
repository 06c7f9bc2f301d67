"""`reactor_polls=True`: a bridged future is polled on the reactor thread when the
reactor wakes it (its first poll, a Python awaitable's answer, a cancel), and on
Tokio when Tokio does. The crate's rules hold on both paths: a Deferred fires exactly
once, cancellation drops the future, logcontexts switch only on the reactor thread,
Tokio workers never take the GIL, panics are errors."""

import logging
import threading

import pytest
from twisted.internet import defer
from twisted.internet.defer import CancelledError

import pyo3_twisted
from pyo3_twisted import RustPanicError, probes
from pyo3_twisted.testing import memory_reactor


@pytest.fixture(params=[False, True], ids=["tokio_polls", "reactor_polls"])
def polls(request):
    return request.param


@pytest.fixture
def reactor(polls):
    with memory_reactor() as r:
        pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor", reactor_polls=polls)
        yield r


@pytest.fixture
def lc_reactor(polls):
    with memory_reactor() as r:
        pyo3_twisted.install(
            r, worker_threads=2, tokio="per_reactor", reactor_polls=polls, logcontext="pyo3_twisted.logcontext"
        )
        yield r


def test_polled_where_woken(reactor, polls):
    waiting = defer.Deferred()
    d = probes.where_polled(reactor, lambda: waiting)
    # Answered later, from the reactor thread (this one).
    waiting.callback(1)
    start, answered, after_tokio_sleep = reactor.get_success(d)
    on_tokio = [name.startswith("pyo3-twisted") for name in (start, answered, after_tokio_sleep)]
    if polls:
        # Started here, resumed here by the awaitable's answer, then on Tokio after a
        # Tokio timer woke it.
        assert on_tokio == [False, False, True], (start, answered, after_tokio_sleep)
        assert pyo3_twisted.stats(reactor)["reactor_polls"] >= 2
    else:
        assert on_tokio == [True, True, True], (start, answered, after_tokio_sleep)
        assert pyo3_twisted.stats(reactor)["reactor_polls"] == 0


def test_a_future_that_only_calls_python_finishes_inside_create_deferred(reactor, polls):
    before = pyo3_twisted.stats(reactor)["mailbox_jobs"]
    d = probes.call_python(reactor, lambda: "inline")
    if polls:
        # No thread hop anywhere: the Deferred has fired when it is returned, and the
        # mailbox carried nothing.
        assert d.called
        assert pyo3_twisted.stats(reactor)["mailbox_jobs"] == before
    assert reactor.get_success(d) == "inline"


def test_every_deferred_fires_exactly_once(reactor):
    n = 2000
    fired = [0] * n
    pending = []

    def later(i):
        d = defer.Deferred()
        pending.append((d, i))
        return d

    deferreds = []
    for i in range(n):
        d = probes.call_python(reactor, lambda i=i: later(i) if i % 2 else i)
        d.addCallback(lambda value, i=i: fired.__setitem__(i, fired[i] + 1) or value)
        deferreds.append(d)
    # Half answered later, from the reactor thread, once their factories ran; a
    # Deferred fired twice would raise AlreadyCalledError here or count 2 below.
    reactor.pump_until(lambda: len(pending) == n // 2, timeout=10.0)
    for d, i in pending:
        d.callback(i)
    results = [reactor.get_success(d) for d in deferreds]
    assert results == list(range(n))
    assert fired == [1] * n
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_completed"] == n
    assert stats["awaitables_started"] == stats["awaitables_completed"] == n
    assert stats["tasks_in_flight"] == 0


def test_cancellation_drops_the_future_at_once(reactor, polls):
    d, flag = probes.pending(reactor)
    outcomes = []
    d.addBoth(outcomes.append)
    d.cancel()
    if polls:
        # The abort woke it on the reactor thread: dropped before cancel() returned.
        assert flag.dropped
    assert flag.wait(5.0)
    assert len(outcomes) == 1 and outcomes[0].check(CancelledError)


def test_cancelling_a_future_waiting_on_python_cancels_the_python_side(reactor):
    waiting = defer.Deferred()
    cancelled = []
    waiting.addErrback(lambda f: cancelled.append(f.check(CancelledError)))
    called = []
    d = probes.call_python(reactor, lambda: called.append(1) or waiting)
    d.addErrback(lambda f: f.trap(CancelledError))
    reactor.pump_until(lambda: called, timeout=5.0)
    d.cancel()
    reactor.pump_until(lambda: cancelled, timeout=5.0)
    assert cancelled == [CancelledError]


def test_a_panic_is_an_error_and_the_runtime_goes_on(reactor):
    failure = reactor.get_failure(probes.panic(reactor, "polled where woken"), RustPanicError)
    assert str(failure.value) == "polled where woken"
    assert reactor.get_success(probes.ready(reactor, "alive")) == "alive"


def test_logcontexts_switch_on_the_reactor_thread_only(lc_reactor):
    from pyo3_twisted import logcontext

    reactor_thread = threading.get_ident()
    seen = []

    def factory():
        seen.append((threading.get_ident(), logcontext.current_context().name))
        return defer.succeed(len(seen))

    async def handler():
        with logcontext.LoggingContext("request-1"):
            value = await probes.call_python(lc_reactor, factory)
            # Restored for the caller when the Deferred fired.
            assert logcontext.current_context().name == "request-1"
            return value

    assert lc_reactor.get_success(defer.ensureDeferred(handler())) == 1
    assert seen == [(reactor_thread, "request-1")]
    # The reactor is back in the sentinel.
    assert logcontext.current_context() is logcontext.SENTINEL_CONTEXT


def test_tokio_workers_never_take_the_gil(reactor):
    for _ in range(200):
        reactor.get_success(probes.where_polled(reactor, lambda: 1))
    assert pyo3_twisted.stats(reactor)["gil_acquisitions_on_tokio_threads"] == 0


def test_a_cpu_heavy_poll_on_the_reactor_is_counted_and_logged(caplog):
    with memory_reactor() as r:
        pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor", reactor_polls=True)
        with caplog.at_level(logging.WARNING):
            # Its first poll, on the reactor thread, burns 30 ms of CPU.
            burned = r.get_success(probes.burn_cpu(r, 0.03))
        assert burned >= 0.03
        assert pyo3_twisted.stats(r)["reactor_polls_slow"] == 1
        assert any("polled on the reactor thread" in rec.getMessage() for rec in caplog.records), caplog.records


def charged_for(polls, burn):
    """Runs `burn(reactor)` (a Deferred of the CPU seconds it burned) from a handler
    inside a request's logcontext; returns (CPU charged to the context, burned)."""
    from pyo3_twisted import logcontext

    with memory_reactor(logcontext=logcontext) as r:
        pyo3_twisted.install(
            r, worker_threads=2, tokio="per_reactor", reactor_polls=polls, logcontext="pyo3_twisted.logcontext"
        )

        async def handler():
            with logcontext.LoggingContext("request-cpu") as ctx:
                burned = await burn(r)
            return ctx, burned

        ctx, burned = r.get_success(defer.ensureDeferred(handler()))
        usage = ctx.get_resource_usage()
        assert logcontext.current_context() is logcontext.SENTINEL_CONTEXT
        return usage.ru_utime + usage.ru_stime, burned


def test_cpu_time_is_charged_once(polls):
    """The first poll runs inside create_deferred, in the caller's context, which
    charges that CPU time itself: the task's meter must not add it again."""
    charged, burned = charged_for(polls, lambda r: probes.burn_cpu(r, 0.05))
    assert burned >= 0.05
    # Once (plus the handler's own few milliseconds), not twice.
    assert 0.045 <= charged < 0.09, (charged, burned)


def answered_later(r):
    """A coroutine function that keeps the logcontext rules and waits for the reactor,
    as `runInteraction` does."""
    from pyo3_twisted import logcontext

    async def answer_later():
        d = defer.Deferred()
        r.callLater(0, d.callback, None)
        await logcontext.make_deferred_yieldable(d)

    return answer_later


def test_cpu_time_after_an_awaitable_is_charged_once(polls):
    """With reactor_polls the poll that an awaitable's answer runs happens inside
    that answer, with the task's context current (the awaitable kept the rules),
    which charges it: the task's meter must not add it again."""
    charged, burned = charged_for(polls, lambda r: probes.burn_cpu_after(r, answered_later(r), 0.05))
    assert burned >= 0.05
    assert 0.045 <= charged < 0.09, (charged, burned)


def test_cpu_time_beside_a_waiting_awaitable_is_charged_once(polls):
    """CPU burned in the poll that parks an awaitable, after it parked (the first poll,
    inside create_deferred, then the poll the first answer runs): the context the
    awaitable left is not the task's, and the bridge does not set the task's back
    just to leave it again (reactor_polls); the task's meter charges the rest of the
    poll instead. Charged once, not lost."""
    charged, burned = charged_for(polls, lambda r: probes.burn_cpu_beside(r, answered_later(r), 0.03, 2))
    assert burned >= 0.06
    assert 0.055 <= charged < 0.11, (charged, burned)


def test_time_beside_a_waiting_awaitable_is_charged_as_cpu_time_not_wall_time(polls):
    """The stretch of a poll after the awaitable it started left the context is
    metered by the thread's CPU time: 50 ms blocked there (what a preempted thread
    looks like to the meter) are not charged. The monotonic clock used to time it,
    and a busy machine's load was charged as CPU time."""
    charged, slept = charged_for(polls, lambda r: probes.sleep_beside(r, answered_later(r), 0.05))
    assert slept >= 0.05
    # The handler's own few milliseconds, not the 50 ms.
    assert charged < 0.02, (charged, slept)


def test_a_rust_handler_pays_the_logcontext_switches_a_python_handler_pays(monkeypatch):
    """Two awaits of a Python coroutine that waits for the reactor, from a Rust
    handler (create_deferred, reactor_polls) and from its Python twin: the same
    switches, in the same order. Each switch is a getrusage and the provider's
    bookkeeping; the Rust handler used to set the request's context back after each
    parked awaitable only to leave it again for its own Deferred's wait."""
    from pyo3_twisted import logcontext

    switches = []
    real = logcontext.set_current_context

    def counting(context):
        if logcontext.current_context() is not context:
            switches.append(str(context))
        return real(context)

    # Before install: the runtime looks the provider's functions up once.
    monkeypatch.setattr(logcontext, "set_current_context", counting)
    with memory_reactor(logcontext=logcontext) as r:
        pyo3_twisted.install(
            r, worker_threads=2, tokio="per_reactor", reactor_polls=True, logcontext="pyo3_twisted.logcontext"
        )
        waits = answered_later(r)

        async def python_twin():
            await waits()
            await waits()

        def switches_of(handler):
            del switches[:]

            async def request():
                with logcontext.LoggingContext("request"):
                    await handler()
                    assert str(logcontext.current_context()) == "request"

            r.get_success(defer.ensureDeferred(request()))
            assert logcontext.current_context() is logcontext.SENTINEL_CONTEXT
            return list(switches)

        python = switches_of(python_twin)
        rust = switches_of(lambda: probes.burn_cpu_beside(r, waits, 0.0, 2))
        assert python == ["request", "sentinel", "request", "sentinel", "request", "sentinel"]
        assert rust == python
