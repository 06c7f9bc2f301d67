"""Rust `tracing` events reach Python logging inside the request's logcontext, with
their spans' fields, through pyo3_twisted::trace."""

import logging
import threading

import pytest
from twisted.internet import defer

import pyo3_twisted
from pyo3_twisted import _native, probes
from pyo3_twisted import logcontext as lc
from pyo3_twisted.testing import memory_reactor


@pytest.fixture
def records():
    captured = []

    class Capture(logging.Handler):
        def emit(self, record):
            captured.append(record)

    handler = Capture()
    handler.addFilter(lc.LoggingContextFilter(request="-"))
    log = logging.getLogger("pyo3_twisted.probes")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    _native.reset_log_cache()
    try:
        yield captured
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        _native.reset_log_cache()


@pytest.fixture
def reactor():
    with memory_reactor(logcontext=lc) as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", logcontext="pyo3_twisted.logcontext")
        yield reactor


def in_request(reactor, name, body):
    async def handler():
        with lc.LoggingContext(name):
            return await body()

    return reactor.get_success(defer.ensureDeferred(handler()))


def test_an_event_in_a_span_in_a_spawned_child_carries_the_request_and_the_span(reactor, records):
    in_request(reactor, "req-trace", lambda: probes.trace_in_span(reactor, "@alice:example.org"))
    assert [r.getMessage() for r in records] == ["request{user=@alice:example.org}: computed answer=42"]
    (record,) = records
    assert record.request == "req-trace"
    assert record.levelno == logging.INFO
    assert record.name == "pyo3_twisted.probes"
    # Emitted on the reactor thread, not on the Tokio worker that made it.
    assert record.thread == threading.get_ident()


def test_without_a_request_the_event_is_in_the_sentinel_and_not_lost(reactor, records):
    reactor.get_success(probes.trace_event(reactor, "no request here"))
    probes.trace_from_thread("from a plain thread")
    assert [(r.getMessage(), r.request) for r in records] == [
        ("no request here", "-"),
        ("from a plain thread", "-"),
    ]


def test_the_span_follows_a_call_into_python_and_back_into_rust(reactor, records):
    def factory():
        # Python on the reactor thread, called from Rust inside `outer{id=7}`:
        # the Rust task it starts logs under that span.
        return probes.trace_event(reactor, "inner")

    in_request(reactor, "req-across", lambda: probes.trace_across_python(reactor, 7, factory))
    assert [(r.getMessage(), r.request) for r in records] == [("outer{id=7}: inner", "req-across")]


def test_levels_below_the_python_logger_are_dropped(reactor, records):
    logging.getLogger("pyo3_twisted.probes").setLevel(logging.WARNING)
    _native.reset_log_cache()
    reactor.get_success(probes.trace_event(reactor, "info, filtered"))
    probes.trace_from_thread("a warning")
    assert [r.getMessage() for r in records] == ["a warning"]
