"""The request's logcontext follows bridged work across threads, with our reference
provider and with Synapse's real synapse.logging.context."""

import importlib
import logging
import threading
import time
import traceback

import pytest
from twisted.internet import defer

import pyo3_twisted
from pyo3_twisted import _native, probes
from pyo3_twisted.testing import memory_reactor

PROVIDERS = ["pyo3_twisted.logcontext", "synapse.logging.context"]


@pytest.fixture(params=PROVIDERS)
def lc(request, monkeypatch):
    """The provider module, with logcontext_error recording every broken rule; the
    test fails if any was broken."""
    module = importlib.import_module(request.param)
    broken = []
    monkeypatch.setattr(module, "logcontext_error", broken.append)
    yield module
    assert broken == [], broken


def new_context(lc, name, **kwargs):
    return lc.LoggingContext(name=name, server_name="test.example", **kwargs)


def reactor_for(lc, **options):
    """A memory reactor whose every turn must end in the sentinel context."""
    options.setdefault("worker_threads", 2)
    options.setdefault("tokio", "per_reactor")
    reactor_cm = memory_reactor(logcontext=lc)
    reactor = reactor_cm.__enter__()
    pyo3_twisted.install(reactor, logcontext=lc.__name__, **options)
    return reactor_cm, reactor


@pytest.fixture
def reactor(lc):
    reactor_cm, reactor = reactor_for(lc)
    yield reactor
    reactor_cm.__exit__(None, None, None)


def run_request(reactor, lc, name, body):
    """Runs ``await body()`` inside a fresh request context, the way a request
    handler does; returns (context, result). The context has finished by then."""

    async def handler():
        with new_context(lc, name) as ctx:
            return ctx, await body()

    return reactor.get_success(defer.ensureDeferred(handler()))


def test_three_calls_run_in_the_right_context(reactor, lc):
    seen = {}
    third_ran = defer.Deferred()

    def factory(tag):
        def make():
            seen[tag] = lc.current_context()
            return tag

        return make

    def third():
        seen["f3"] = lc.current_context()
        third_ran.callback(None)
        return "f3"

    gate = {}

    async def body():
        d, gate["gate"] = probes.three_calls(reactor, factory("f1"), factory("f2"), third)
        return await d

    ctx, result = run_request(reactor, lc, "req-1", body)
    assert result == ["f1", "f2"]
    assert seen["f1"] is ctx  # directly from the bridged future
    assert seen["f2"] is ctx  # from a spawn()ed child
    assert ctx.finished
    gate["gate"].open()
    reactor.get_success(third_ran)
    # After the request's context finished: the sentinel, not the finished context.
    assert seen["f3"] is lc.SENTINEL_CONTEXT
    assert lc.current_context() is lc.SENTINEL_CONTEXT


def test_db_time_of_a_run_interaction_style_call_is_charged(reactor, lc):
    def run_interaction(desc, func):
        """Synapse's shape: the transaction runs on a DB thread in a child context
        of the caller's, which gets charged."""
        parent = lc.current_context()
        d = defer.Deferred()

        def on_db_thread():
            with new_context(lc, f"db-{desc}", parent_context=parent) as db_ctx:
                start = time.monotonic()
                rows = func()
                db_ctx.add_database_transaction(time.monotonic() - start)
            reactor.callFromThread(d.callback, rows)

        threading.Thread(target=on_db_thread).start()
        return lc.make_deferred_yieldable(d)

    async def body():
        return await probes.call_python(
            reactor, lambda: run_interaction("get_flags", lambda: [("dark_mode", True)])
        )

    ctx, rows = run_request(reactor, lc, "req-db", body)
    assert rows == [("dark_mode", True)]
    usage = ctx.get_resource_usage()
    assert usage.db_txn_count == 1
    assert usage.db_txn_duration_sec >= 0


def burn_and_measure(reactor, lc, seconds):
    async def body():
        return await probes.burn_cpu(reactor, seconds)

    ctx, burned = run_request(reactor, lc, "req-cpu", body)
    return burned, ctx.get_resource_usage()


def test_rust_cpu_time_is_charged_to_the_request(reactor, lc):
    burned, usage = burn_and_measure(reactor, lc, 0.2)
    assert burned >= 0.2
    assert usage.ru_utime >= 0.15, usage.ru_utime


def test_rust_cpu_time_is_not_charged_when_tracking_is_off(lc):
    reactor_cm, reactor = reactor_for(lc, track_cpu_time=False)
    try:
        burned, usage = burn_and_measure(reactor, lc, 0.2)
    finally:
        reactor_cm.__exit__(None, None, None)
    assert burned >= 0.2
    assert usage.ru_utime < 0.1, usage.ru_utime


def test_spawned_children_cpu_is_charged_too(reactor, lc):
    async def body():
        # call_python_many spawns children; each one's polls are metered.
        return await probes.call_python_many(reactor, 50, lambda i: i)

    ctx, total = run_request(reactor, lc, "req-children", body)
    assert total == sum(range(50))


def test_rust_log_lines_carry_the_request(reactor, lc):
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

        async def body():
            return await probes.log_messages(reactor, ["one", "two", "three"])

        ctx, count = run_request(reactor, lc, "req-log", body)
    finally:
        log.removeHandler(handler)
    assert count == 4
    assert [r.getMessage() for r in records] == ["one", "two", "three", "from a child task"]
    assert [r.request for r in records] == ["req-log"] * 4
    assert all(r.levelno == logging.INFO for r in records)
    # Emitted on the reactor thread, not on a Tokio worker.
    assert {r.thread for r in records} == {threading.get_ident()}


def test_factory_error_keeps_exception_and_traceback(reactor, lc):
    def factory():
        raise KeyError("no such user")

    async def body():
        return await probes.call_python(reactor, factory)

    async def handler():
        with new_context(lc, "req-err"):
            try:
                await body()
            except KeyError as e:
                return e

    error = reactor.get_success(defer.ensureDeferred(handler()))
    assert error.args == ("no such user",)
    assert "in factory" in "".join(traceback.format_tb(error.__traceback__))
