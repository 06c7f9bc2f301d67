"""`create_coroutine`: a Rust future awaited as a Python coroutine, polled on the
reactor thread inside the awaiting coroutine's steps. The crate's rules hold: the
coroutine finishes exactly once, cancellation drops the future, logcontexts switch
only on the reactor thread (and no more often than a Python twin's), Tokio workers
never take the GIL, panics are errors, a long poll is reported, and a future woken
by Tokio while it waits on Python is not stuck. Every reactor here is a memory
reactor that is never run."""

import collections.abc
import contextvars
import gc
import logging
import threading

import pytest
from twisted.internet import defer
from twisted.internet.defer import CancelledError

import pyo3_twisted
from pyo3_twisted import RuntimeShutdown, RustPanicError, _native, probes
from pyo3_twisted.testing import memory_reactor


@pytest.fixture
def reactor():
    with memory_reactor() as r:
        pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor")
        yield r


@pytest.fixture
def lc():
    from pyo3_twisted import logcontext

    return logcontext


@pytest.fixture
def lc_reactor(lc):
    with memory_reactor(logcontext=lc) as r:
        pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor", logcontext="pyo3_twisted.logcontext")
        yield r


def awaited(coroutine):
    """A Deferred of ``await coroutine`` from a Python coroutine."""

    async def caller():
        return await coroutine

    return defer.ensureDeferred(caller())


def test_it_is_a_coroutine_and_ensure_deferred_takes_it(reactor):
    coroutine = probes.co_call_python(reactor, lambda: 7)
    assert isinstance(coroutine, collections.abc.Coroutine)
    assert reactor.get_success(defer.ensureDeferred(coroutine)) == 7


@pytest.mark.parametrize(
    "value",
    [(1, 2), (), ((1, 2),), ValueError("a value, not raised"), StopIteration(3), None, 5, [3]],
    ids=["tuple", "empty-tuple", "nested-tuple", "exception", "stop-iteration", "none", "int", "list"],
)
def test_the_answer_is_the_value_itself_whatever_its_type(reactor, value):
    """The answer leaves as a Python coroutine's ``return value`` does: a tuple is
    not taken as ``StopIteration``'s arguments, an exception is not raised, both
    to a caller stepping it by hand and to one awaiting it."""
    coroutine = probes.co_call_python(reactor, lambda: defer.succeed(value))
    with pytest.raises(StopIteration) as stop:
        coroutine.send(None)
    assert stop.value.value is value

    answer = awaited(probes.co_call_python(reactor, lambda: defer.succeed(value)))
    assert reactor.get_success(answer) is value


def test_a_future_that_only_calls_python_finishes_in_the_callers_step(reactor):
    before = pyo3_twisted.stats(reactor)["mailbox_jobs"]
    d = awaited(probes.co_call_python(reactor, lambda: defer.succeed("inline")))
    # No thread hop and no Deferred of its own: done before ensureDeferred returned.
    assert d.called
    assert reactor.get_success(d) == "inline"
    assert pyo3_twisted.stats(reactor)["mailbox_jobs"] == before


def test_polled_on_the_reactor_thread_even_when_tokio_wakes_it(reactor):
    waiting = defer.Deferred()
    d = awaited(probes.co_where_polled(reactor, lambda: waiting))
    waiting.callback(1)
    names = reactor.get_success(d)
    # Named as the reactor thread is to Rust (no Tokio worker's name), all three.
    assert not any(name.startswith("pyo3-twisted") for name in names), names
    assert len(set(names)) == 1, names


def test_errors_and_panics_are_raised_and_the_runtime_goes_on(reactor):
    failure = reactor.get_failure(awaited(probes.co_fail(reactor, "no such user", False)), ValueError)
    assert str(failure.value) == "no such user"
    failure = reactor.get_failure(awaited(probes.co_fail(reactor, "boom", True)), RustPanicError)
    assert str(failure.value) == "boom"
    assert reactor.get_success(awaited(probes.co_call_python(reactor, lambda: "alive"))) == "alive"
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_failed"] == 1 and stats["tasks_panicked"] == 1 and stats["tasks_completed"] == 1


def test_every_coroutine_finishes_exactly_once(reactor):
    n = 2000
    fired = [0] * n
    pending = []

    def later(i):
        d = defer.Deferred()
        pending.append((d, i))
        return d

    deferreds = []
    for i in range(n):
        d = awaited(probes.co_call_python(reactor, lambda i=i: later(i) if i % 2 else i))
        d.addCallback(lambda value, i=i: fired.__setitem__(i, fired[i] + 1) or value)
        deferreds.append(d)
    assert len(pending) == n // 2
    for d, i in pending:
        d.callback(i)
    assert [reactor.get_success(d) for d in deferreds] == list(range(n))
    assert fired == [1] * n
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_spawned"] == stats["tasks_completed"] == n
    assert stats["tasks_in_flight"] == 0


def test_cancellation_drops_the_future_at_once(reactor):
    coroutine, flag = probes.co_pending(reactor)
    d = awaited(coroutine)
    assert not flag.dropped
    d.cancel()
    assert flag.dropped
    reactor.get_failure(d, CancelledError)
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_cancelled"] == 1 and stats["tasks_in_flight"] == 0


def test_cancelling_while_it_waits_on_python_cancels_the_python_side(reactor):
    """Waiting on Python alone, the caller waits on the awaitable's own Deferred:
    cancelling cancels that, as for a Python coroutine awaiting it, and the
    CancelledError it ends with ends the coroutine and drops the future."""
    waiting = defer.Deferred()
    seen = []
    waiting.addErrback(lambda f: seen.append(f.check(CancelledError)) or f)
    coroutine, flag = probes.co_await_python(reactor, lambda: waiting)
    d = awaited(coroutine)
    d.cancel()
    reactor.get_failure(d, CancelledError)
    assert seen == [CancelledError]
    assert flag.dropped

    async def transaction():
        try:
            await defer.Deferred()
        except CancelledError:
            seen.append("transaction saw it")
            raise

    coroutine, flag = probes.co_await_python(reactor, transaction)
    d = awaited(coroutine)
    d.cancel()
    reactor.get_failure(d, CancelledError)
    assert seen[1:] == ["transaction saw it"]
    assert flag.dropped
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_cancelled"] == 2 and stats["tasks_in_flight"] == 0


def test_an_awaitable_that_catches_the_cancellation_answers_the_future(reactor):
    """As in Python: the future gets what the cancelled awaitable gives, and goes on."""

    async def stubborn():
        try:
            await defer.Deferred()
        except CancelledError:
            return "caught"

    coroutine, flag = probes.co_await_python(reactor, stubborn, polls=2)
    d = awaited(coroutine)
    d.cancel()
    assert reactor.get_success(d, timeout=10.0) == "caught"
    assert flag.dropped
    assert pyo3_twisted.stats(reactor)["tasks_completed"] == 1


def test_waiting_on_python_alone_the_caller_waits_on_its_deferred(reactor):
    """No Deferred of ours between the caller and the Python awaitable: the caller's
    driver is handed the awaitable's Deferred (a coroutine's: the one it awaits
    now, step by step), and the future is polled only once it has the answer."""
    waiting = defer.Deferred()
    coroutine = probes.co_call_python(reactor, lambda: waiting)
    assert coroutine.send(None) is waiting
    assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 1
    waiting.callback(5)
    with pytest.raises(StopIteration) as stop:
        coroutine.send(None)
    assert stop.value.value == 5

    first, second = defer.Deferred(), defer.Deferred()

    async def two_steps():
        return (await first) + (await second)

    coroutine = probes.co_call_python(reactor, two_steps)
    assert coroutine.send(None) is first
    first.callback(1)
    assert coroutine.send(None) is second
    second.callback(2)
    with pytest.raises(StopIteration) as stop:
        coroutine.send(None)
    assert stop.value.value == 3
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_completed"] == 2 and stats["tasks_in_flight"] == 0


def test_a_coroutine_waited_on_alone_is_driven_by_the_caller_as_yield_from(reactor):
    """A coroutine awaitable the future waits on alone is driven by the caller's own
    steps, as `await` inside a Python coroutine drives it: nothing of ours waits on
    the Deferreds it awaits (it moves on only when the caller resumes), and it runs
    in the caller's contextvars context."""
    first, second = defer.Deferred(), defer.Deferred()
    steps = []

    async def two_steps():
        one = await first
        steps.append("past the first")
        return one + (await second)

    coroutine = probes.co_call_python(reactor, two_steps)
    assert coroutine.send(None) is first
    first.callback(1)
    assert steps == []
    assert coroutine.send(None) is second
    assert steps == ["past the first"]
    second.callback(2)
    with pytest.raises(StopIteration) as stop:
        coroutine.send(None)
    assert stop.value.value == 3

    var = contextvars.ContextVar("var")
    gate = defer.Deferred()

    async def sets_var():
        var.set("before its wait")
        await gate
        var.set("after its wait")
        return "done"

    async def caller():
        answer = await probes.co_call_python(reactor, sets_var)
        return answer, var.get(None)

    d = defer.ensureDeferred(caller())
    gate.callback(None)
    assert reactor.get_success(d) == ("done", "after its wait")
    assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 0


def test_what_the_caller_throws_and_closes_reaches_the_coroutine_it_drives(reactor):
    """As `yield from`: an exception thrown into the caller goes into the coroutine
    awaitable, which may catch it and wait again (the future goes on with its
    answer); closing the caller closes the coroutine and drops the future."""
    first, second = defer.Deferred(), defer.Deferred()

    async def stubborn():
        try:
            await first
        except CancelledError:
            return await second

    coroutine, flag = probes.co_await_python(reactor, stubborn)
    assert coroutine.send(None) is first
    assert coroutine.throw(CancelledError()) is second
    assert not flag.dropped
    second.callback("second's answer")
    with pytest.raises(StopIteration) as stop:
        coroutine.send(None)
    assert stop.value.value == "second's answer"
    assert flag.dropped

    seen = []

    async def records_its_end():
        try:
            await defer.Deferred()
        except GeneratorExit:
            seen.append("closed")
            raise

    coroutine, flag = probes.co_await_python(reactor, records_its_end)
    coroutine.send(None)
    coroutine.close()
    assert seen == ["closed"] and flag.dropped
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_in_flight"] == 0 and stats["tasks_completed"] == 1


def test_a_coroutine_beside_a_timer_is_driven_by_a_driver_of_ours(reactor):
    """Not all the future waits on: the coroutine awaitable, started in the poll,
    is taken over by a driver of ours before the step ends. It runs on when its
    Deferred fires and answers the future; dropped by the future (the timer won),
    it is cancelled where it waits."""
    answered = defer.Deferred()
    started = []

    async def answers():
        started.append(True)
        await answered

    d = awaited(probes.co_race(reactor, answers, 3600.0, False))
    assert started == [True]
    answered.callback(None)
    assert reactor.get_success(d) == "python"

    seen = []

    async def never_answers():
        try:
            await defer.Deferred()
        except CancelledError:
            seen.append("cancelled")
            raise

    d = awaited(probes.co_race(reactor, never_answers, 0.01, True))
    assert reactor.get_success(d, timeout=10.0) == "timer"
    reactor.pump_until(lambda: seen, timeout=5.0)
    assert seen == ["cancelled"]
    assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 0


def test_a_future_that_waits_on_more_than_python_gets_a_deferred_of_ours(reactor):
    """A Tokio timer beside the Python awaitable, polled with the task's waker or
    behind a combinator's own: the caller waits on a Deferred the timer's wake can
    fire, so the timer wins without waiting for Python."""
    for unordered in (False, True):
        never = defer.Deferred()
        coroutine = probes.co_race(reactor, lambda: never, 3600.0, unordered)
        yielded = coroutine.send(None)
        assert isinstance(yielded, defer.Deferred) and yielded is not never
        coroutine.close()
        never = defer.Deferred()
        race = probes.co_race(reactor, lambda: never, 0.01, unordered)
        assert reactor.get_success(awaited(race), timeout=10.0) == "timer"
    assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 0


def test_close_and_collection_drop_the_future(reactor):
    coroutine, flag = probes.co_pending(reactor)
    coroutine.close()
    assert flag.dropped
    # Waiting: the runtime keeps what waits on it (for a shutdown to fail it), even
    # once nothing else refers to its caller.
    coroutine, flag = probes.co_pending(reactor)
    d = awaited(coroutine)
    outcomes = []
    d.addErrback(outcomes.append)
    del coroutine, d
    gc.collect()
    assert not flag.dropped
    pyo3_twisted.Runtime(reactor).shutdown_blocking(0.1)
    assert flag.dropped and outcomes[0].check(RuntimeShutdown)
    # Never awaited: collected, and its future with it.
    never_awaited, flag = probes.co_pending(reactor)
    del never_awaited
    gc.collect()
    assert flag.dropped


def test_a_wait_on_python_nobody_can_answer_is_collected(reactor):
    """Waiting on a Python Deferred only the wait refers to, the caller and the
    coroutine are garbage, as a Python coroutine awaiting it would be: the
    collector frees them (the future is dropped), and nothing is cancelled into the
    gone caller. Likewise for a coroutine awaitable the caller drives."""

    async def waits_forever():
        await defer.Deferred()

    for factory in (defer.Deferred, waits_forever):
        coroutine, flag = probes.co_await_python(reactor, factory)
        d = awaited(coroutine)
        failures = []
        d.addErrback(failures.append)
        assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 1
        del coroutine, d
        gc.collect()
        assert flag.dropped
        reactor.advance(0)
        assert failures == []
        assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 0


def test_a_tokio_timer_wins_a_race_against_python_without_waiting_for_it(reactor):
    """The future waits on Python and on a Tokio timer at once: the timer's wake
    reaches the reactor through the mailbox and resumes the coroutine; the Python
    side is cancelled, not waited for."""
    never = defer.Deferred()
    cancelled = []
    never.addErrback(lambda f: cancelled.append(f.check(CancelledError)))
    d = awaited(probes.co_race(reactor, lambda: never, 0.01))
    assert reactor.get_success(d, timeout=10.0) == "timer"
    reactor.pump_until(lambda: cancelled, timeout=5.0)
    assert cancelled == [CancelledError]
    answered = defer.Deferred()
    d = awaited(probes.co_race(reactor, lambda: answered, 3600.0))
    answered.callback(None)
    assert reactor.get_success(d) == "python"


def test_tokio_workers_never_take_the_gil(reactor):
    for _ in range(200):
        reactor.get_success(awaited(probes.co_where_polled(reactor, lambda: 1)))
    assert reactor.get_success(awaited(probes.co_spawn_child(reactor, 2, 3)))[1] == 5
    assert pyo3_twisted.stats(reactor)["gil_acquisitions_on_tokio_threads"] == 0


def test_a_cpu_heavy_poll_is_counted_and_logged(reactor, caplog):
    with caplog.at_level(logging.WARNING):
        burned = reactor.get_success(awaited(probes.co_burn_after(reactor, lambda: None, 0.03, "burnt")))
    assert burned >= 0.03
    assert pyo3_twisted.stats(reactor)["reactor_polls_slow"] == 1
    assert any("polled on the reactor thread" in rec.getMessage() for rec in caplog.records), caplog.records


def test_awaiting_it_off_the_reactor_thread_is_an_error(reactor):
    coroutine = probes.co_call_python(reactor, lambda: 1)
    errors = []

    def elsewhere():
        try:
            coroutine.send(None)
        except RuntimeError as e:
            errors.append(str(e))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert errors and "reactor thread" in errors[0], errors
    assert reactor.get_success(defer.ensureDeferred(coroutine)) == 1


def test_shutdown_fails_what_still_waits_and_refuses_new_work():
    with memory_reactor() as r:
        pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor")
        runtime = pyo3_twisted.Runtime(r)
        coroutine, flag = probes.co_pending(r)
        d = awaited(coroutine)
        quick = awaited(probes.co_race(r, defer.Deferred, 0.01))
        runtime.shutdown_blocking(0.5)
        assert r.get_success(quick) == "timer"
        r.get_failure(d, RuntimeShutdown)
        assert flag.dropped
        r.get_failure(awaited(probes.co_call_python(r, lambda: 1)), RuntimeShutdown)


def test_shutdown_leaves_a_wait_on_python_to_python():
    """What waits on a Python awaitable alone is not failed by a shutdown (a Python
    coroutine awaiting it would not be); once the awaitable answers, Tokio is gone,
    so the await raises RuntimeShutdown and the future is dropped."""
    with memory_reactor() as r:
        pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor")
        waiting = defer.Deferred()
        coroutine, flag = probes.co_await_python(r, lambda: waiting)
        d = awaited(coroutine)
        pyo3_twisted.Runtime(r).shutdown_blocking(0.5)
        assert not d.called and not flag.dropped
        waiting.callback(1)
        r.get_failure(d, RuntimeShutdown)
        assert flag.dropped
        assert pyo3_twisted.stats(r)["tasks_in_flight"] == 0


# -- logcontexts ----------------------------------------------------------------------


def in_request(reactor, lc, body, name="request"):
    """``await body()`` inside a fresh request context; (context, result)."""

    async def handler():
        with lc.LoggingContext(name) as ctx:
            result = await body()
            assert lc.current_context() is ctx
            return ctx, result

    result = reactor.get_success(defer.ensureDeferred(handler()))
    assert lc.current_context() is lc.SENTINEL_CONTEXT
    return result


def answered_later(reactor, lc):
    """A coroutine function that keeps the logcontext rules and waits for the
    reactor, as `runInteraction` does."""

    async def answer_later():
        d = defer.Deferred()
        reactor.callLater(0, d.callback, None)
        await lc.make_deferred_yieldable(d)
        return lc.current_context()

    return answer_later


def test_python_it_calls_runs_in_the_callers_context(lc_reactor, lc):
    seen = []

    def factory(tag):
        def make():
            seen.append((tag, threading.get_ident(), str(lc.current_context())))
            return answered_later(lc_reactor, lc)()

        return make

    ctx, (first, second) = in_request(
        lc_reactor, lc, lambda: probes.co_join(lc_reactor, factory("a"), factory("b")), "req-join"
    )
    # Both started on the reactor thread in the request's context, the second one
    # after the first left the sentinel current, and both answered in it.
    me = threading.get_ident()
    assert seen == [("a", me, "req-join"), ("b", me, "req-join")]
    assert first is ctx and second is ctx


def test_a_rust_coroutine_pays_the_logcontext_switches_a_python_twin_pays(monkeypatch, lc):
    switches = []
    real = lc.set_current_context

    def counting(context):
        if lc.current_context() is not context:
            switches.append(str(context))
        return real(context)

    monkeypatch.setattr(lc, "set_current_context", counting)
    with memory_reactor(logcontext=lc) as r:
        pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor", logcontext="pyo3_twisted.logcontext")
        waits = answered_later(r, lc)

        def switches_of(body):
            del switches[:]
            in_request(r, lc, body)
            return list(switches)

        python = switches_of(waits)
        rust = switches_of(lambda: probes.co_call_python(r, waits))
        assert python == ["request", "sentinel", "request", "sentinel"]
        assert rust == python
        # Woken by Tokio: the rules still hold around the wait.
        tokio = switches_of(lambda: probes.co_race(r, defer.Deferred, 0.001))
        assert tokio == ["request", "sentinel", "request", "sentinel"]


def test_cpu_time_and_log_lines_go_to_the_request(lc_reactor, lc):
    records = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Capture()
    handler.addFilter(lc.LoggingContextFilter())
    log = logging.getLogger("pyo3_twisted.probes")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    _native.reset_log_cache()
    try:
        ctx, burned = in_request(
            lc_reactor, lc, lambda: probes.co_burn_after(lc_reactor, answered_later(lc_reactor, lc), 0.05, "burnt")
        )
    finally:
        log.removeHandler(handler)
    usage = ctx.get_resource_usage()
    charged = usage.ru_utime + usage.ru_stime
    assert burned >= 0.05
    # Once (plus the handler's own few milliseconds), not twice.
    assert 0.045 <= charged < 0.09, (charged, burned)
    assert [(r.getMessage(), r.request) for r in records] == [("burnt", "request")]


def test_a_transaction_through_the_python_pool_is_charged_to_the_request(lc_reactor, lc):
    from pyo3_twisted.database import DatabasePool
    from pyo3_twisted.probes import RustStore

    pool = DatabasePool(lc_reactor, ":memory:", max_connections=1, logcontext=lc)
    store = RustStore.python(pool, lc_reactor)
    try:
        ctx, rows = in_request(lc_reactor, lc, lambda: store.query_coroutine(lc_reactor, "SELECT ?, ?", [7, "seven"]))
    finally:
        pool.close()
    assert rows == [[7, "seven"]]
    # runInteraction ran in the request's context (a child of it on the pool's
    # thread), as it does when Python calls it.
    assert ctx.get_resource_usage().db_txn_count == 1


def test_a_provider_that_fails_around_a_direct_wait_fails_the_await(monkeypatch, lc):
    """The sentinel cannot be set as the caller starts waiting on a Python
    Deferred: the await raises the provider's error and the future is dropped,
    rather than the caller waiting with the request's context left current."""
    real = lc.set_current_context
    armed = []

    def failing(context):
        if armed and context is lc.SENTINEL_CONTEXT:
            raise RuntimeError("the provider broke")
        return real(context)

    monkeypatch.setattr(lc, "set_current_context", failing)
    with memory_reactor(logcontext=lc) as r:
        pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor", logcontext="pyo3_twisted.logcontext")
        coroutine, flag = probes.co_await_python(r, defer.Deferred)

        async def handler():
            with lc.LoggingContext("request"):
                armed.append(True)
                try:
                    return await coroutine
                finally:
                    armed.clear()

        failure = r.get_failure(defer.ensureDeferred(handler()), RuntimeError)
        assert "the provider broke" in str(failure.value)
        assert flag.dropped
        assert pyo3_twisted.stats(r)["tasks_in_flight"] == 0
