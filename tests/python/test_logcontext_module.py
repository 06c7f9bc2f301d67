"""pyo3_twisted.logcontext: Synapse's logcontext rules, in our reference module."""

import logging
import threading

import pytest
from twisted.internet import defer

from pyo3_twisted import logcontext as lc
from pyo3_twisted.testing import memory_reactor


@pytest.fixture
def errors(monkeypatch):
    """logcontext_error made fatal-by-assertion: every broken rule is recorded."""
    seen = []
    monkeypatch.setattr(lc, "logcontext_error", seen.append)
    yield seen


def test_sentinel_is_falsy_and_default(errors):
    assert not lc.SENTINEL_CONTEXT
    assert lc.current_context() is lc.SENTINEL_CONTEXT
    assert str(lc.SENTINEL_CONTEXT) == "sentinel"
    with pytest.raises(TypeError):
        lc.set_current_context(None)


def test_enter_and_exit_restore_and_finish(errors):
    with lc.LoggingContext("outer") as outer:
        assert lc.current_context() is outer
        with lc.LoggingContext("inner") as inner:
            assert lc.current_context() is inner
        assert lc.current_context() is outer and inner.finished
    assert lc.current_context() is lc.SENTINEL_CONTEXT and outer.finished
    assert errors == []


def test_broken_rules_are_reported(errors):
    ctx = lc.LoggingContext("c")
    with ctx:
        lc.set_current_context(lc.SENTINEL_CONTEXT)  # leaks the context away
    assert any("Expected logging context" in e for e in errors)
    errors.clear()
    lc.set_current_context(ctx)  # re-entering a finished context
    lc.set_current_context(lc.SENTINEL_CONTEXT)
    assert any("finished" in e for e in errors)


def test_context_used_on_another_thread_is_reported(errors):
    ctx = lc.LoggingContext("main-thread-only")

    def elsewhere():
        lc.set_current_context(ctx)
        lc.set_current_context(lc.SENTINEL_CONTEXT)

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    assert any("thread" in e for e in errors)


def test_resource_usage_flows_to_parents(errors):
    parent = lc.LoggingContext("parent")
    child = lc.LoggingContext("child", parent_context=parent)
    child.add_database_transaction(0.5)
    child.add_database_scheduled(0.25)
    child.add_cputime(0.1, 0.2)
    child.record_event_fetch(3)
    for ctx in (child, parent):
        usage = ctx.get_resource_usage()
        assert (usage.db_txn_count, usage.db_txn_duration_sec) == (1, 0.5)
        assert usage.db_sched_duration_sec == 0.25
        assert (usage.ru_utime, usage.ru_stime) == (0.1, 0.2)
        assert usage.evt_db_fetch_count == 3
    with pytest.raises(ValueError):
        child.add_database_transaction(-1)


def test_cpu_time_is_charged_while_current(errors):
    import time

    ctx = lc.LoggingContext("busy")
    with ctx:
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
    usage = ctx.get_resource_usage()
    assert usage.ru_utime + usage.ru_stime >= 0.04


def test_preserve_logging_context(errors):
    with lc.LoggingContext("c") as ctx:
        with lc.PreserveLoggingContext():
            assert lc.current_context() is lc.SENTINEL_CONTEXT
        assert lc.current_context() is ctx
    assert errors == []


def test_make_deferred_yieldable_and_run_in_background(errors):
    with memory_reactor(logcontext=lc) as reactor:
        seen = []

        async def background():
            seen.append(("start", lc.current_context()))
            d = defer.Deferred()
            reactor.callLater(1, d.callback, "tick")
            value = await lc.make_deferred_yieldable(d)
            seen.append(("resumed", lc.current_context(), value))
            return "done"

        ctx = lc.LoggingContext("req")  # stays live while the work runs
        with lc.PreserveLoggingContext(ctx):
            d = lc.run_in_background(background)
            # run_in_background gives the caller its context back at once.
            assert lc.current_context() is ctx
        assert seen == [("start", ctx)]
        reactor.turn(1)
        assert seen[1] == ("resumed", ctx, "tick")
        assert reactor.get_success(d) == "done"
        assert lc.current_context() is lc.SENTINEL_CONTEXT
    assert errors == []


def test_run_in_background_turns_exceptions_and_values_into_deferreds(errors):
    def boom():
        raise KeyError("k")

    failure = []
    lc.run_in_background(boom).addErrback(failure.append)
    assert failure and failure[0].check(KeyError)
    fired = []
    lc.run_in_background(lambda: 7).addCallback(fired.append)
    assert fired == [7]


def test_filter_names_the_request(errors):
    records = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Capture()
    handler.addFilter(lc.LoggingContextFilter(request="none"))
    log = logging.getLogger("test_filter_names_the_request")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("outside")
        with lc.LoggingContext("req-42", server_name="example.org"):
            log.info("inside")
    finally:
        log.removeHandler(handler)
    assert [(r.request, r.server_name) for r in records] == [
        ("none", lc.SENTINEL_CONTEXT.server_name),
        ("req-42", "example.org"),
    ]


def test_harness_flags_a_leaked_context(errors):
    with memory_reactor(logcontext=lc) as reactor:
        ctx = lc.LoggingContext("leaky")
        reactor.callLater(0, lc.set_current_context, ctx)
        with pytest.raises(AssertionError, match="leaky"):
            reactor.turn()
        lc.set_current_context(lc.SENTINEL_CONTEXT)
