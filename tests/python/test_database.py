"""pyo3_twisted.database: Synapse's runInteraction semantics on SQLite and PostgreSQL."""

import threading

import pytest
from twisted.internet import defer

from pyo3_twisted import logcontext as lc
from pyo3_twisted.database import DatabasePool, IsolationLevel, redact
from pyo3_twisted.testing import memory_reactor


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_name(request):
    return request.param


@pytest.fixture
def reactor():
    with memory_reactor(logcontext=lc) as r:
        yield r


@pytest.fixture
def pool(request, reactor, engine_name):
    if engine_name == "sqlite":
        database = ":memory:"
    else:
        database = request.getfixturevalue("pg_dsn")
    pool = DatabasePool(reactor, database, max_connections=2 if engine_name == "postgresql" else 1)
    run(reactor, pool, "setup", lambda txn: [
        txn.execute("DROP TABLE IF EXISTS items"),
        txn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"),
    ])
    yield pool
    pool.close()


def run(reactor, pool, desc, func, *args, **kwargs):
    return reactor.get_success(defer.ensureDeferred(pool.runInteraction(desc, func, *args, **kwargs)))


def run_failure(reactor, pool, exc, desc, func, *args, **kwargs):
    return reactor.get_failure(defer.ensureDeferred(pool.runInteraction(desc, func, *args, **kwargs)), exc)


def count(txn):
    txn.execute("SELECT count(*) FROM items")
    return txn.fetchone()[0]


def test_question_mark_placeholders_on_every_engine(reactor, pool):
    def f(txn):
        txn.execute("INSERT INTO items (id, name) VALUES (?, ?)", (1, "it's 100% ?"))
        txn.execute("SELECT name, '?', ? FROM items WHERE id = ?", ("param", 1))
        return txn.fetchall()

    assert run(reactor, pool, "placeholders", f) == [("it's 100% ?", "?", "param")]


def test_operational_errors_are_retried_with_a_rollback(reactor, pool):
    attempts = []
    error = pool.engine.module.OperationalError

    def f(txn):
        attempts.append(1)
        txn.execute("INSERT INTO items (id, name) VALUES (?, ?)", (len(attempts), "row"))
        if len(attempts) < 3:
            raise error("transient")
        return count(txn)

    # Each failed attempt's insert was rolled back: one row in the end.
    assert run(reactor, pool, "retry", f) == 1
    assert len(attempts) == 3


def test_gives_up_after_max_attempts(reactor, pool):
    attempts = []
    error = pool.engine.module.OperationalError

    def f(txn):
        attempts.append(1)
        raise error("always")

    run_failure(reactor, pool, error, "give_up", f)
    assert len(attempts) == pool.max_attempts == 5


def test_other_errors_roll_back_without_retry(reactor, pool):
    attempts = []

    def f(txn):
        attempts.append(1)
        txn.execute("INSERT INTO items (id, name) VALUES (1, 'x')")
        raise KeyError("application error")

    run_failure(reactor, pool, KeyError, "no_retry", f)
    assert attempts == [1]
    assert run(reactor, pool, "count", count) == 0


def test_after_and_exception_callbacks(reactor, pool):
    calls = []
    error = pool.engine.module.OperationalError
    attempts = []

    def f(txn):
        attempts.append(1)
        txn.call_after(lambda n: calls.append(("after", n, threading.get_ident())), len(attempts))
        if len(attempts) == 1:
            raise error("retry me")

    run(reactor, pool, "after", f)
    # Only the committed attempt's callback, run on the reactor thread.
    assert calls == [("after", 2, threading.get_ident())]

    def g(txn):
        txn.call_after(calls.append, "never")
        txn.call_on_exception(calls.append, "failed")
        raise ValueError("no")

    run_failure(reactor, pool, ValueError, "exception", g)
    assert calls[1:] == ["failed"]


def test_db_time_is_charged_to_the_callers_context(reactor, pool):
    async def handler():
        with lc.LoggingContext("req-db") as ctx:
            await pool.runInteraction("one", count)
            await pool.runInteraction("two", count)
            return ctx

    ctx = reactor.get_success(defer.ensureDeferred(handler()))
    usage = ctx.get_resource_usage()
    assert usage.db_txn_count == 2
    assert usage.db_txn_duration_sec > 0
    assert usage.db_sched_duration_sec >= 0


def test_closed_pool_refuses_work(reactor, pool):
    pool.close()
    pool.close()
    run_failure(reactor, pool, RuntimeError, "closed", count)


def test_bad_isolation_level_is_rejected(reactor, pool):
    run_failure(reactor, pool, ValueError, "bad", count, isolation_level="chaos")
    with pytest.raises(ValueError):
        DatabasePool(reactor, ":memory:", isolation_level="chaos")


def test_postgres_isolation_level_per_pool_and_per_call(reactor, pg_dsn):
    pool = DatabasePool(reactor, pg_dsn, max_connections=1)

    def level(txn):
        txn.execute("SHOW transaction_isolation")
        return txn.fetchone()[0]

    try:
        assert run(reactor, pool, "default", level) == "repeatable read"
        assert run(reactor, pool, "rc", level, isolation_level=IsolationLevel.READ_COMMITTED) == "read committed"
        assert run(reactor, pool, "ser", level, isolation_level=IsolationLevel.SERIALIZABLE) == "serializable"
        assert run(reactor, pool, "again", level) == "repeatable read"
    finally:
        pool.close()


def test_connections_stay_within_the_configured_size(reactor, pool):
    ds = [defer.ensureDeferred(pool.runInteraction("c", count)) for _ in range(50)]
    for d in ds:
        assert reactor.get_success(d) == 0
    assert 1 <= pool.connection_count() <= pool.max_connections


def test_unreachable_postgres_names_the_dsn_without_the_password(reactor):
    pool = DatabasePool(
        reactor, "postgresql://app:hunter2@127.0.0.1:1/nowhere", max_connections=1, reconnect_timeout=0.2
    )
    try:
        failure = run_failure(reactor, pool, Exception, "connect", count)
    finally:
        pool.close()
    message = str(failure.value)
    assert "postgresql://app:***@127.0.0.1:1/nowhere" in message and "hunter2" not in message


def test_redact():
    assert redact("postgresql://u:pw@h:5/d?x=1") == "postgresql://u:***@h:5/d?x=1"
    assert redact("host=h password=pw user=u") == "host=h password=*** user=u"
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"


def test_sqlite_file_database_persists_across_pools(reactor, tmp_path):
    path = str(tmp_path / "flags.sqlite3")
    pool = DatabasePool(reactor, path)
    run(reactor, pool, "create", lambda txn: [
        txn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"),
        txn.execute("INSERT INTO items (id, name) VALUES (?, ?)", (1, "kept")),
    ])
    pool.close()
    reopened = DatabasePool(reactor, f"sqlite:///{path}")
    try:
        def names(txn):
            txn.execute("SELECT name FROM items")
            return txn.fetchall()

        assert run(reactor, reopened, "read", names) == [("kept",)]
    finally:
        reopened.close()
