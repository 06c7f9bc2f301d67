"""run_python_awaitable: what a factory may return, errors, cancellation, shutdown."""

import asyncio
import traceback

import pytest
from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

import pyo3_twisted
from pyo3_twisted import RuntimeShutdown, probes
from pyo3_twisted.testing import memory_reactor

from conftest import run_script


@pytest.fixture(params=[None, "pyo3_twisted.logcontext"], ids=["plain", "logcontext"])
def reactor(request):
    with memory_reactor() as r:
        if request.param:
            pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor", logcontext=request.param)
        else:
            pyo3_twisted.install(r, worker_threads=2, tokio="per_reactor")
        yield r


class Awaitable:
    """Not a coroutine, not a Deferred: just has __await__."""

    def __init__(self, d):
        self.d = d

    def __await__(self):
        return self.d.__await__()


def test_factory_may_return_a_coroutine(reactor):
    async def coro():
        d = defer.Deferred()
        reactor.callLater(0, d.callback, "from a coroutine")
        return await d

    assert reactor.get_success(probes.call_python(reactor, coro)) == "from a coroutine"


def test_asyncio_future_off_the_asyncio_reactor_is_a_clear_error(reactor):
    # No asyncio loop runs on this reactor: the future could never complete.
    loop = asyncio.new_event_loop()
    try:
        failure = reactor.get_failure(probes.call_python(reactor, loop.create_future), TypeError)
    finally:
        loop.close()
    assert "not Twisted's asyncio reactor" in str(failure.value)


def test_factory_may_return_a_deferred(reactor):
    def factory():
        d = defer.Deferred()
        reactor.callLater(0, d.callback, ["a", "deferred"])
        return d

    assert reactor.get_success(probes.call_python(reactor, factory)) == ["a", "deferred"]


def test_factory_may_return_any_awaitable(reactor):
    def factory():
        d = defer.Deferred()
        reactor.callLater(0, d.callback, "awaited")
        return Awaitable(d)

    assert reactor.get_success(probes.call_python(reactor, factory)) == "awaited"


def test_factory_may_return_a_plain_value(reactor):
    marker = object()
    assert reactor.get_success(probes.call_python(reactor, lambda: marker)) is marker


def test_factory_raising_gives_the_original_exception(reactor):
    error = ValueError("bad input")

    def factory():
        raise error

    failure = reactor.get_failure(probes.call_python(reactor, factory), ValueError)
    assert failure.value is error
    assert "in factory" in "".join(traceback.format_tb(failure.value.__traceback__))


def test_awaitable_failing_gives_the_original_exception_with_traceback(reactor):
    async def fails_later():
        d = defer.Deferred()
        reactor.callLater(0, d.callback, None)
        await d
        raise LookupError("gone")

    failure = reactor.get_failure(probes.call_python(reactor, fails_later), LookupError)
    assert type(failure.value) is LookupError and str(failure.value) == "gone"
    assert "in fails_later" in "".join(traceback.format_tb(failure.value.__traceback__))


def test_dropping_the_rust_future_cancels_the_python_side(reactor):
    python_side = defer.Deferred()
    started = defer.Deferred()

    async def waits_forever():
        started.callback(None)
        try:
            await defer.Deferred()
        except CancelledError:
            python_side.callback("saw CancelledError")
            raise

    d = probes.call_python(reactor, waits_forever)
    reactor.get_success(started)
    d.cancel()  # drops the Rust future, which was awaiting the coroutine
    reactor.get_failure(d, CancelledError)
    assert reactor.get_success(python_side) == "saw CancelledError"
    stats = pyo3_twisted.stats(reactor)
    assert stats["awaitables_started"] == stats["awaitables_completed"] == 1


def test_job_dropped_when_the_reactor_stops_errors_instead_of_hanging():
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
        ran = []
        call = probes.call_python_in_thread(reactor, lambda: ran.append(1))
        # The job is queued (the wake-up reached the reactor) but not run...
        assert reactor.wait_for_thread_call(5.0)
        # ...and the reactor shuts down before running it.
    ok, text = call.wait(5.0)
    assert not ok and "RuntimeShutdown" in text, text
    assert ran == []


def test_call_after_the_reactor_stopped_errors_at_once():
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
    call = probes.call_python_in_thread(reactor, lambda: 1)
    # No timeout (inf) waits until the outcome, which here comes at once.
    ok, text = call.wait(float("inf"))
    assert not ok and "no pyo3-twisted runtime" in text, text
    with pytest.raises(ValueError, match="timeout"):
        call.wait(-1.0)


def test_call_from_a_foreign_runtime_works_while_the_reactor_runs(reactor):
    call = probes.call_python_in_thread(reactor, lambda: "hello from the reactor")
    # Its job reaches the reactor (one wake-up), runs in this turn, and the answer
    # goes back to the foreign thread, which this wait lets take the GIL.
    assert reactor.wait_for_thread_call(5.0)
    reactor.turn()
    assert call.wait(5.0) == (True, "'hello from the reactor'")


def test_many_round_trips_on_the_memory_reactor(reactor):
    total = reactor.get_success(probes.call_python_many(reactor, 500, lambda i: i * 2))
    assert total == 2 * sum(range(500))
    assert pyo3_twisted.stats(reactor)["gil_acquisitions_on_tokio_threads"] == 0


def test_10000_round_trips_on_a_real_reactor_without_the_gil_on_tokio_threads():
    result = run_script("awaitable_many.py", "10000")
    stats = result["stats"]
    assert result["logged_errors"] == []
    assert result["total"] == sum(range(10000))
    assert stats["awaitables_started"] == stats["awaitables_completed"] == 10000
    assert stats["gil_acquisitions_on_tokio_threads"] == 0
    assert stats["mailbox_wakeups"] < 10000 // 10, stats


# A coroutine is driven by the crate itself, not by ensureDeferred: each case runs the
# same coroutine both ways and expects what Twisted does.


def both_ways(reactor, make):
    """make() -> a coroutine: its outcome through ensureDeferred, and through
    run_python_awaitable, each as ('ok', value) or ('error', exception)."""

    def outcome(d):
        result = reactor.wait_for(d)
        return ("error", result.value) if isinstance(result, Failure) else ("ok", result)

    return outcome(defer.ensureDeferred(make())), outcome(probes.call_python(reactor, make))


def test_coroutine_runs_in_its_own_copy_of_the_contextvars_context(reactor):
    import contextvars

    var = contextvars.ContextVar("pyo3_twisted_test_var", default="unset")
    var.set("caller")
    seen = []

    async def coro():
        seen.append(var.get())
        var.set("inside")
        d = defer.Deferred()
        reactor.callLater(0, d.callback, None)
        await d
        seen.append(var.get())  # its own change survives the await
        return var.get()

    ours, twisted = both_ways(reactor, coro)[1], ("ok", "inside")
    assert ours == twisted
    assert seen == ["caller", "inside", "caller", "inside"]
    assert var.get() == "caller"  # nothing leaked into the reactor's context


def test_failure_is_thrown_in_at_the_await_and_may_be_caught(reactor):
    async def coro():
        d = defer.Deferred()
        reactor.callLater(0, d.errback, KeyError("late"))
        try:
            await d
        except KeyError as e:
            return f"caught {e.args[0]}"
        return "not thrown"

    ensured, ours = both_ways(reactor, coro)
    assert ensured == ours == ("ok", "caught late")


def test_awaited_deferred_failure_keeps_its_traceback(reactor):
    def deep():
        raise ValueError("deep down")

    async def coro():
        d = defer.maybeDeferred(deep)
        d2 = defer.Deferred()
        reactor.callLater(0, d2.callback, None)
        await d2
        await d

    failure = reactor.get_failure(probes.call_python(reactor, coro), ValueError)
    assert "in deep" in "".join(traceback.format_tb(failure.value.__traceback__))


def test_a_yielded_value_that_is_not_a_deferred_is_sent_back(reactor):
    class YieldsSeven:
        def __await__(self):
            got = yield 7
            return got * 6

    async def coro():
        return await YieldsSeven()

    ensured, ours = both_ways(reactor, coro)
    assert ensured == ours == ("ok", 42)


def test_a_deferred_firing_while_awaited_does_not_recurse(reactor):
    import sys

    class FiresWhenAwaited(defer.Deferred):
        def addBoth(self, *args, **kwargs):
            result = super().addBoth(*args, **kwargs)
            if not self.called:
                self.callback(1)
            return result

    async def coro():
        total = 0
        for _ in range(sys.getrecursionlimit() * 3):
            await FiresWhenAwaited()
            total += 1
        return total

    ensured, ours = both_ways(reactor, coro)
    assert ensured == ours == ("ok", sys.getrecursionlimit() * 3)


def test_the_awaited_deferred_gets_none_once_the_coroutine_has_its_result(reactor):
    later = []

    async def coro():
        d = defer.Deferred()
        reactor.callLater(0, d.callback, "value")
        d2 = d  # the coroutine awaits d; a callback added after sees what is left
        v = await d2
        d.addCallback(later.append)
        return v

    ensured, ours = both_ways(reactor, coro)
    assert ensured == ours == ("ok", "value")
    assert later == [None, None]


def test_cancel_reaches_the_deferred_awaited_after_several_steps(reactor):
    steps = []

    async def coro():
        for i in range(3):
            d = defer.Deferred()
            reactor.callLater(0, d.callback, i)
            steps.append(await d)
        try:
            await defer.Deferred()
        except CancelledError:
            steps.append("cancelled")
            raise

    d = probes.call_python(reactor, coro)
    reactor.pump_until(lambda: len(steps) == 3)
    assert steps == [0, 1, 2]
    d.cancel()
    reactor.get_failure(d, CancelledError)
    reactor.pump_until(lambda: len(steps) == 4)
    assert steps == [0, 1, 2, "cancelled"]
