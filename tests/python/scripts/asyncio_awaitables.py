"""run_python_awaitable on Twisted's asyncio reactor: asyncio coroutines, futures and
Tasks next to Deferreds, with errors, cancellation and logcontexts.

usage: asyncio_awaitables.py plain | logcontext
"""

import asyncio
import os
import sys

os.environ["PYO3_TWISTED_TEST_REACTOR"] = "asyncio"

from twisted.internet import defer  # noqa: E402

from _common import REACTOR_NAME, emit, reactor  # noqa: E402

import pyo3_twisted  # noqa: E402
from pyo3_twisted import logcontext as lc  # noqa: E402
from pyo3_twisted import probes  # noqa: E402

mode = sys.argv[1]
if mode == "logcontext":
    pyo3_twisted.install(reactor, worker_threads=2, logcontext="pyo3_twisted.logcontext")
else:
    pyo3_twisted.install(reactor, worker_threads=2)

result: dict = {"reactor": REACTOR_NAME, "reactor_class": type(reactor).__name__}
loop = asyncio.get_event_loop()


def later(value, delay=0.0):
    d = defer.Deferred()
    reactor.callLater(delay, d.callback, value)
    return d


async def mixed():
    # asyncio and Twisted awaits in one coroutine.
    await asyncio.sleep(0.01)
    a = await later("deferred")
    await asyncio.sleep(0)
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "future")
    b = await fut
    return [a, b, asyncio.get_running_loop() is loop]


def a_future():
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "a future")
    return fut


async def needs_a_task():
    # asyncio.timeout (3.11+) needs a current Task: the caller wraps the coroutine
    # in one.
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(5):
            await asyncio.sleep(0.01)
    else:
        await asyncio.sleep(0.01)
    return asyncio.current_task() is not None


async def raises():
    await asyncio.sleep(0.01)
    raise KeyError("raised after an asyncio await")


cancel_seen: list = []


async def waits_forever():
    try:
        await asyncio.sleep(3600)
    except BaseException as e:
        cancel_seen.append(type(e).__name__)
        raise


contexts: dict = {}


async def records_contexts():
    contexts["start"] = str(lc.current_context())
    await asyncio.sleep(0.02)
    contexts["after_sleep"] = str(lc.current_context())
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, None)
    await fut
    contexts["after_future"] = str(lc.current_context())
    await later(None)
    contexts["after_deferred"] = str(lc.current_context())
    return "recorded"


def sample_reactor_context():
    contexts["reactor_meanwhile"] = str(lc.current_context())


def outcome(d):
    def ok(value):
        return {"ok": value}

    def failed(f):
        return {"error": type(f.value).__name__, "message": str(f.value)}

    return d.addCallbacks(ok, failed)


async def run_cases():
    result["mixed"] = await outcome(probes.call_python(reactor, mixed))
    result["future"] = await outcome(probes.call_python(reactor, a_future))
    result["task"] = await outcome(probes.call_python(reactor, lambda: asyncio.ensure_future(needs_a_task())))
    result["error"] = await outcome(probes.call_python(reactor, raises))

    # Dropping the Rust future cancels the coroutine's asyncio sleep.
    d = probes.call_python(reactor, waits_forever)
    await later(None, 0.05)
    d.cancel()
    result["cancelled"] = await outcome(d)
    await later(None, 0.05)
    result["coroutine_saw"] = list(cancel_seen)

    # ... and a Task's cancellation reaches the Task.
    tasks = []

    def make_task():
        tasks.append(asyncio.ensure_future(asyncio.sleep(3600)))
        return tasks[0]

    d = probes.call_python(reactor, make_task)
    await later(None, 0.05)
    d.cancel()
    await outcome(d)
    await later(None, 0.05)
    result["task_cancelled"] = tasks[0].cancelled()

    if mode == "logcontext":
        with lc.LoggingContext("req-asyncio"):
            reactor.callLater(0.01, sample_reactor_context)
            # create_deferred's Deferred already follows the logcontext rules.
            result["contexts_result"] = await outcome(probes.call_python(reactor, records_contexts))
            result["context_after_await"] = str(lc.current_context())
        result["contexts"] = contexts
        result["context_at_end"] = str(lc.current_context())

    # Many at once.
    async def small(i):
        await asyncio.sleep(0)
        return i

    ds = [probes.call_python(reactor, lambda i=i: small(i)) for i in range(1000)]
    values = await defer.gatherResults(ds)
    result["many_sum"] = sum(values)


def start():
    d = defer.ensureDeferred(run_cases())
    d.addErrback(lambda f: result.__setitem__("failure", f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())


reactor.callWhenRunning(start)
reactor.run()
result["stats"] = pyo3_twisted.stats(reactor)
emit(result)
