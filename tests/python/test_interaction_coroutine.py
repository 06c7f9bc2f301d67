"""`PythonDatabasePool::run_interaction_coroutine`: a Rust transaction and a Rust
answer, awaited as a coroutine with no Rust future. It must behave as awaiting
`runInteraction` from a Python coroutine does: a value once, the driver's own
exception, the request's logging context and database time, cancellation into
`runInteraction`, and the closure dropped on the reactor thread."""

import collections.abc
import sqlite3
import threading

import pytest
from twisted.internet import defer

import pyo3_twisted
from pyo3_twisted import RustPanicError
from pyo3_twisted import logcontext as lc
from pyo3_twisted.database import DatabasePool
from pyo3_twisted.probes import RustStore
from pyo3_twisted.testing import memory_reactor

SCHEMA = [
    "CREATE TABLE feature_flags (user_id TEXT NOT NULL, feature TEXT NOT NULL, "
    "enabled BOOLEAN NOT NULL, PRIMARY KEY (user_id, feature))",
    "INSERT INTO feature_flags VALUES ('@alice:example.org', 'dark_mode', TRUE)",
]
SELECT = "SELECT feature, enabled FROM feature_flags WHERE user_id = ? ORDER BY feature"


class Setup:
    def __init__(self):
        self._cm = memory_reactor(logcontext=lc)
        self.reactor = self._cm.__enter__()
        pyo3_twisted.install(self.reactor, worker_threads=1, tokio="per_reactor", logcontext="pyo3_twisted.logcontext")
        self.pool = DatabasePool(self.reactor, ":memory:", max_connections=1)
        self.get(defer.ensureDeferred(self.pool.runInteraction("schema", lambda txn: [txn.execute(s) for s in SCHEMA])))
        self.store = RustStore.python(self.pool, self.reactor)

    def get(self, d):
        return self.reactor.get_success(d, timeout=30)

    def fail(self, d, exc=Exception):
        return self.reactor.get_failure(d, exc, timeout=30)

    def rows(self, user):
        def select(txn):
            txn.execute("SELECT feature FROM feature_flags WHERE user_id = ?", (user,))
            return [tuple(row) for row in txn.fetchall()]

        return self.get(defer.ensureDeferred(self.pool.runInteraction("rows", select)))

    def close(self):
        self._cm.__exit__(None, None, None)
        self.pool.close()


@pytest.fixture
def s():
    setup = Setup()
    yield setup
    setup.close()


def test_it_evaluates_to_what_then_made_of_the_committed_result(s):
    coroutine = s.store.query_interaction(SELECT, ["@alice:example.org"])
    assert isinstance(coroutine, collections.abc.Coroutine)
    assert s.get(defer.ensureDeferred(coroutine)) == [["dark_mode", 1]]


def test_nothing_runs_until_it_is_awaited_and_an_unawaited_one_runs_nothing(s):
    dropped = []
    coroutine = s.store.query_interaction(SELECT, ["x"], insert="@early:example.org", dropped_on=dropped)
    assert s.rows("@early:example.org") == []
    coroutine.close()
    del coroutine
    assert dropped == [threading.get_ident()]
    assert s.rows("@early:example.org") == []


def test_it_runs_in_the_callers_logcontext_and_is_charged_there(s):
    async def handler():
        with lc.LoggingContext("req-interaction") as ctx:
            rows = await s.store.query_interaction(SELECT, ["@alice:example.org"])
            assert lc.current_context() is ctx
            return ctx, rows

    ctx, rows = s.get(defer.ensureDeferred(handler()))
    assert rows == [["dark_mode", 1]]
    assert lc.current_context() is lc.SENTINEL_CONTEXT
    usage = ctx.get_resource_usage()
    assert usage.db_txn_count == 1
    assert usage.db_txn_duration_sec > 0


def test_a_database_error_is_the_drivers_exception_and_rolls_back(s):
    failure = s.fail(
        defer.ensureDeferred(s.store.query_interaction("SELECT * FROM missing_table", [], insert="@err:example.org")),
        sqlite3.OperationalError,
    )
    assert "missing_table" in str(failure.value)
    assert s.rows("@err:example.org") == []
    assert s.get(defer.ensureDeferred(s.store.query_interaction(SELECT, ["@alice:example.org"]))) == [["dark_mode", 1]]


def test_a_panic_is_a_rust_panic_error_and_rolls_back(s):
    dropped = []
    failure = s.fail(
        defer.ensureDeferred(
            s.store.query_interaction(SELECT, ["x"], insert="@panic:example.org", panic=True, dropped_on=dropped)
        ),
        RustPanicError,
    )
    assert "the closure gave up" in str(failure.value)
    assert s.rows("@panic:example.org") == []
    # The closure and the unused `then` went on the awaiting side's thread.
    assert dropped == [threading.get_ident()]


def test_an_error_in_then_is_raised_after_the_commit(s):
    failure = s.fail(
        defer.ensureDeferred(s.store.query_interaction(SELECT, ["x"], insert="@then:example.org", then_raises=True)),
        ValueError,
    )
    assert "then gave up" in str(failure.value)
    assert s.rows("@then:example.org") == [("x",)]


def test_cancellation_reaches_run_interaction_and_the_closure_is_dropped_on_the_reactor_thread(s):
    dropped = []
    d = defer.ensureDeferred(s.store.query_interaction(SELECT, ["@alice:example.org"], dropped_on=dropped))
    d.cancel()
    s.fail(d, defer.CancelledError)
    s.reactor.pump_until(lambda: dropped, timeout=10.0)
    assert len(dropped) == 1
    # The pool is still usable.
    assert s.get(defer.ensureDeferred(s.store.query_interaction(SELECT, ["@alice:example.org"]))) == [["dark_mode", 1]]


def test_it_is_awaitable_once(s):
    coroutine = s.store.query_interaction(SELECT, ["@alice:example.org"])

    async def twice():
        first = await coroutine
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await coroutine
        return first

    assert s.get(defer.ensureDeferred(twice())) == [["dark_mode", 1]]


def test_a_value_sent_before_the_start_is_refused_and_it_still_starts(s):
    coroutine = s.store.query_interaction(SELECT, ["x"], insert="@sent:example.org")
    with pytest.raises(TypeError, match="can't send non-None value to a just-started coroutine"):
        coroutine.send(1)
    assert s.rows("@sent:example.org") == []
    assert s.get(defer.ensureDeferred(coroutine)) == []
    assert s.rows("@sent:example.org") == [("x",)]


def test_the_closure_is_dropped_on_the_reactor_thread_after_success(s):
    dropped = []
    assert s.get(defer.ensureDeferred(s.store.query_interaction(SELECT, ["@alice:example.org"], dropped_on=dropped))) == [
        ["dark_mode", 1]
    ]
    assert dropped == [threading.get_ident()]


def test_the_transaction_is_counted_in_the_run_interaction_histogram(s):
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client import generate_latest
    from pyo3_twisted.metrics import RuntimeCollector

    registry = CollectorRegistry()
    collector = RuntimeCollector()
    collector.track(s.reactor, name="main")
    registry.register(collector)
    s.get(defer.ensureDeferred(s.store.query_interaction(SELECT, ["@alice:example.org"])))
    s.fail(defer.ensureDeferred(s.store.query_interaction("SELECT * FROM missing_table", [])), sqlite3.OperationalError)
    counts = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name == "pyo3_twisted_run_interaction_seconds_count" and sample.labels.get("name") == "query_interaction"
    }
    assert counts == {"committed": 1.0, "failed": 1.0}


def test_it_works_on_a_memory_reactor_never_run_nor_stopped_and_holds_neither_it_nor_the_pool():
    """Synapse's HomeserverTestCase: one reactor per test, never run() nor stopped."""
    import gc
    import weakref

    from pyo3_twisted.testing import ThreadedMemoryReactorClock

    reactor = ThreadedMemoryReactorClock(lc)
    pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor", logcontext="pyo3_twisted.logcontext")
    pool = DatabasePool(reactor, ":memory:", max_connections=1)
    try:
        reactor.get_success(
            defer.ensureDeferred(pool.runInteraction("schema", lambda txn: [txn.execute(s) for s in SCHEMA])), timeout=30
        )
        store = RustStore.python(pool, reactor)
        rows = reactor.get_success(defer.ensureDeferred(store.query_interaction(SELECT, ["@alice:example.org"])), timeout=30)
        assert rows == [["dark_mode", 1]]
    finally:
        pool.close()
    pool_ref, reactor_ref = weakref.ref(pool), weakref.ref(reactor)
    del pool, reactor, rows
    gc.collect()
    assert pool_ref() is None, "the pool is kept alive"
    assert reactor_ref() is None, "the reactor is kept alive"
    del store
