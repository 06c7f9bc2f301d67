"""run_interaction from Rust: one store function on the Python pool (SQLite and
PostgreSQL) and on the native PostgreSQL pool."""

import time

import pytest
from twisted.internet import defer

import pyo3_twisted
from pyo3_twisted import RustPanicError
from pyo3_twisted import logcontext as lc
from pyo3_twisted.database import DatabasePool
from pyo3_twisted.probes import RustStore
from pyo3_twisted.testing import memory_reactor

SCHEMA = {
    "sqlite": [
        "CREATE TABLE feature_flags (user_id TEXT NOT NULL, feature TEXT NOT NULL, "
        "enabled BOOLEAN NOT NULL, PRIMARY KEY (user_id, feature))",
        "CREATE TABLE counter (id INTEGER PRIMARY KEY, value BIGINT NOT NULL)",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
        "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
        "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO counter (id, value) VALUES (1, 0)",
    ],
}
SCHEMA["postgresql"] = [
    "DROP TABLE IF EXISTS feature_flags, counter, child, parent",
    *SCHEMA["sqlite"],
]

KINDS = ["python-sqlite", "python-postgresql", "native-postgresql"]


class Setup:
    """A reactor with a runtime, a Python pool and the store under test."""

    def __init__(self, kind, pg_dsn):
        self.kind = kind
        self.engine = "sqlite" if kind.endswith("sqlite") else "postgresql"
        self._reactor_cm = memory_reactor(logcontext=lc)
        self.reactor = self._reactor_cm.__enter__()
        pyo3_twisted.install(self.reactor, worker_threads=2, tokio="per_reactor", logcontext="pyo3_twisted.logcontext")
        database = ":memory:" if self.engine == "sqlite" else pg_dsn
        self.pool = DatabasePool(
            self.reactor, database, max_connections=1 if self.engine == "sqlite" else 4,
            application_name=f"pyo3-twisted-test-{kind}",
        )
        self.run_python(lambda txn: [txn.execute(sql) for sql in SCHEMA[self.engine]])
        if kind.startswith("python"):
            self.store = RustStore.python(self.pool, self.reactor)
        else:
            self.store = RustStore.postgres(pg_dsn, max_size=4)

    def run_python(self, func):
        return self.get(defer.ensureDeferred(self.pool.runInteraction("python", func)))

    def get(self, d):
        return self.reactor.get_success(d, timeout=30)

    def fail(self, d, exc=Exception):
        return self.reactor.get_failure(d, exc, timeout=30)

    def close(self):
        self._reactor_cm.__exit__(None, None, None)
        self.pool.close()


@pytest.fixture(params=KINDS)
def setup(request):
    pg_dsn = None if request.param == "python-sqlite" else request.getfixturevalue("pg_dsn")
    s = Setup(request.param, pg_dsn)
    yield s
    s.close()


@pytest.fixture(params=["python-postgresql", "native-postgresql"])
def pg_setup(request, pg_dsn):
    s = Setup(request.param, pg_dsn)
    yield s
    s.close()


def test_same_store_function_on_every_pool(setup):
    store = setup.store
    assert setup.get(store.get_flags(setup.reactor, "@alice:example.org")) == []
    setup.get(store.set_flag(setup.reactor, "@alice:example.org", "dark_mode", True))
    setup.get(store.set_flag(setup.reactor, "@alice:example.org", "beta", False))
    setup.get(store.set_flag(setup.reactor, "@alice:example.org", "beta", True))  # upsert
    setup.get(store.set_flag(setup.reactor, "@bob:example.org", "beta", False))
    assert setup.get(store.get_flags(setup.reactor, "@alice:example.org")) == [
        ("beta", True),
        ("dark_mode", True),
    ]
    # A value shaped like SQL injection is just a user id.
    assert setup.get(store.get_flags(setup.reactor, "x' OR '1'='1")) == []


def test_values_round_trip(setup):
    # PostgreSQL needs to know the parameters' types (psycopg2 sends a float as a
    # NUMERIC literal; the native pool lets the server infer each type).
    sql = {
        "sqlite": "SELECT ?, ?, ?, ?, ?",
        "postgresql": "SELECT ?::text, ?::bigint, ?::float8, ?::text, ?::bytea",
    }[setup.engine]
    rows = setup.get(setup.store.query(setup.reactor, sql, [None, 2**62, 1.5, "héllo", b"\x00\xff"]))
    assert rows == [[None, 2**62, 1.5, "héllo", b"\x00\xff"]]


def wait_until(reactor, condition, what, timeout=10.0):
    """Pump the reactor until `condition()` holds: a wait on observable server
    state, with a deadline (how PostgreSQL's isolation tester waits, too)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        reactor.turn()
        reactor.wait_for_thread_call(0.005)


def test_texts_one_after_another_are_each_run_as_written(setup):
    """Each query's SQL text is freed after it, so the next one of the same length
    is likely to sit at the same address: what the Python pool keeps per text (its
    placeholder count, its Python string) must not answer for another text there."""
    for i in range(10):
        with_param = setup.get(setup.store.query(setup.reactor, "SELECT ?, 222", [f"v{i}"]))
        assert with_param == [[f"v{i}", 222]]
        literal = setup.get(setup.store.query(setup.reactor, f"SELECT {i + 10}, 22", []))
        assert literal == [[i + 10, 22]]


def test_serialization_failure_reruns_the_closure(pg_setup, pg_dsn):
    import psycopg2

    s = pg_setup
    lock = 4242
    control = psycopg2.connect(pg_dsn)
    control.autocommit = True
    cur = control.cursor()
    try:
        cur.execute("SELECT pg_advisory_lock(%s)", (lock,))
        # T2 reads the row (its repeatable-read snapshot), then waits for the lock.
        loser = s.store.increment_after_lock(s.reactor, lock)

        def waiting():
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            return cur.fetchone()[0] > 0

        wait_until(s.reactor, waiting, "the transaction to wait on the advisory lock")
        # T1 updates the same row and commits meanwhile.
        assert s.get(s.store.execute(s.reactor, [("UPDATE counter SET value = value + 1 WHERE id = 1", [])])) == [1]
        cur.execute("SELECT pg_advisory_unlock(%s)", (lock,))
        if s.kind == "native-postgresql":
            # The native pool backs off before the rerun on the runtime's clock: on
            # this memory reactor, virtual time. The rerun waits for the test.
            outcome = []
            loser.addBoth(lambda r: outcome.append(r) or r)
            wait_until(s.reactor, lambda: pyo3_twisted.stats(s.reactor)["timers_pending"] == 1, "the retry's backoff")
            for _ in range(20):
                s.reactor.turn()
            assert outcome == [], "reran before the backoff passed"
            s.reactor.advance(1.0)
        value, attempts = s.get(loser)
    finally:
        control.close()
    # T2's first attempt hit a serialization failure; the second committed, and its
    # value (T1's +1 and its own) is what came back.
    assert attempts == 2
    # The metrics saw one transaction that committed after a rerun.
    pool = "postgres" if s.kind == "native-postgresql" else "python"
    retried = [
        h for h in pyo3_twisted.histograms(s.reactor)
        if h["name"] == "run_interaction_seconds"
        and h["labels"] == {"pool": pool, "name": "increment_after_lock", "outcome": "retried"}
    ]
    assert [h["count"] for h in retried] == [1]
    if s.kind == "native-postgresql":
        status = s.store.status()
        assert (status["retries_serialization"], status["retries_deadlock"], status["retries_connection"]) == (1, 0, 0), status
    assert value == 2
    assert s.get(s.store.query(s.reactor, "SELECT value FROM counter WHERE id = 1", [])) == [[2]]


def test_update_without_returning_through_execute(pg_setup):
    s = pg_setup
    s.get(s.store.set_flag(s.reactor, "@carol:example.org", "beta", False))
    counts = s.get(
        s.store.execute(
            s.reactor,
            [("UPDATE feature_flags SET enabled = ? WHERE user_id = ?", [True, "@carol:example.org"])],
        )
    )
    assert counts == [1]
    assert s.get(s.store.get_flags(s.reactor, "@carol:example.org")) == [("beta", True)]


def test_commit_failure_is_an_error_not_the_closures_value(setup):
    # The closure succeeds (a deferred foreign key is only checked at COMMIT)...
    d = setup.store.execute(setup.reactor, [("INSERT INTO child (id, parent_id) VALUES (1, 999)", [])])
    failure = setup.fail(d)
    # ...and the commit fails: an error, never [1].
    assert "foreign key" in str(failure.value).lower()
    assert setup.get(setup.store.query(setup.reactor, "SELECT count(*) FROM child", [])) == [[0]]


def assert_still_usable(setup):
    assert setup.get(setup.store.get_flags(setup.reactor, "@nobody:example.org")) == []
    rows = setup.get(
        setup.store.query(
            setup.reactor,
            "SELECT count(*) FROM feature_flags WHERE user_id IN ('sleeper', 'panicker')",
            [],
        )
    )
    assert rows == [[0]], "a failed transaction was not rolled back"


# SQLite can hold no integer beyond i64 and returns no type without a mapping, so
# there its i64 check is exercised on a parameter instead.
BAD_INPUT = [
    (kind, case)
    for kind in KINDS
    for case in ["syntax", "parameter_count", "beyond_i64", "unmapped_type", "panic", "sleep"]
    if not (kind == "python-sqlite" and case == "unmapped_type")
]


@pytest.mark.parametrize("kind, case", BAD_INPUT)
def test_bad_input_is_a_clear_error_and_rolls_back(request, kind, case):
    pg_dsn = None if kind == "python-sqlite" else request.getfixturevalue("pg_dsn")
    s = Setup(kind, pg_dsn)
    try:
        check_bad_input(s, case)
        assert_still_usable(s)
    finally:
        s.close()


def check_bad_input(s, case):
    reactor, store = s.reactor, s.store
    if case == "syntax":
        failure = s.fail(store.query(reactor, "SELEKT 1", []))
        assert "syntax error" in str(failure.value).lower()
    elif case == "parameter_count":
        failure = s.fail(store.query(reactor, "SELECT ?, '?'", [1, 2]))
        assert "1 `?` placeholder(s) but 2 parameter(s)" in str(failure.value)
    elif case == "beyond_i64" and s.engine == "sqlite":
        with pytest.raises(TypeError, match="outside the i64 range"):
            store.query(reactor, "SELECT ?", [2**70])
    elif case == "beyond_i64":
        failure = s.fail(store.query(reactor, "SELECT 99999999999999999999::numeric AS big", []))
        message = str(failure.value)
        assert '"big"' in message and "i64 range" in message, message
    elif case == "unmapped_type":
        failure = s.fail(store.query(reactor, "SELECT CURRENT_TIMESTAMP AS now", []))
        message = str(failure.value)
        assert '"now"' in message and "no DbValue mapping" in message, message
    elif case == "panic":
        failure = s.fail(store.panic_in_transaction(reactor))
        assert "the closure gave up" in str(failure.value)
    elif case == "sleep":
        failure = s.fail(store.sleep_in_transaction(reactor))
        assert "awaited something other than a Transaction method" in str(failure.value)
    else:
        raise AssertionError(case)


def test_rust_transactions_are_charged_to_the_requests_logcontext():
    s = Setup("python-sqlite", None)
    try:
        async def handler():
            with lc.LoggingContext("req-flags") as ctx:
                await s.store.set_flag(s.reactor, "@dave:example.org", "beta", True)
                flags = await s.store.get_flags(s.reactor, "@dave:example.org")
                return ctx, flags

        ctx, flags = s.get(defer.ensureDeferred(handler()))
    finally:
        s.close()
    assert flags == [("beta", True)]
    usage = ctx.get_resource_usage()
    assert usage.db_txn_count == 2
    assert usage.db_txn_duration_sec > 0


def test_no_connection_leak_after_1000_mixed_transactions(setup, pg_dsn):
    s, reactor, store = setup, setup.reactor, setup.store
    outcomes = {"ok": 0, "failed": 0}
    for batch in range(20):
        ds = []
        for i in range(50):
            n = batch * 50 + i
            kind = n % 5
            if kind == 0:
                ds.append(store.query(reactor, "SELEKT broken", []))
            elif kind == 1:
                ds.append(store.query(reactor, "SELECT ?", [1, 2]))
            elif kind == 2:
                ds.append(store.set_flag(reactor, f"@user{n}:example.org", "beta", bool(n % 2)))
            else:
                ds.append(store.get_flags(reactor, f"@user{n - 1}:example.org"))
        for d in ds:
            result = reactor.wait_for(d, timeout=30)
            outcomes["failed" if hasattr(result, "check") else "ok"] += 1
    assert outcomes == {"ok": 600, "failed": 400}
    assert_still_usable(s)
    if s.kind.startswith("python"):
        assert 1 <= s.pool.connection_count() <= s.pool.max_connections
    if s.engine == "postgresql":
        import psycopg2

        with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (f"pyo3-twisted-test-{s.kind}",),
            )
            python_pool_connections = cur.fetchone()[0]
        conn.close()
        assert python_pool_connections <= s.pool.max_connections
    status = store.status()
    if status is not None:
        assert status["size"] <= status["max_size"] == 4
        assert status["available"] == status["size"], status
