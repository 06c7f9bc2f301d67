"""A database pool with Synapse's ``runInteraction`` semantics.

One pool serves Python and Rust: Python code calls :meth:`DatabasePool.runInteraction`
directly, Rust code through ``pyo3_twisted::db::PythonDatabasePool``, and both borrow
the same connections.

- A Twisted thread pool runs the transactions, one connection per thread.
- A transaction is retried whole, up to ``max_attempts`` (5) times, on
  ``OperationalError`` — which includes PostgreSQL's serialization failures (40001)
  and deadlocks (40P01) and SQLite's "database is locked" — with a rollback before
  each retry; a broken connection is replaced first.
- A connection lost, or refused, before COMMIT (a server restart) is retried on a new
  connection, with growing delays, for up to ``reconnect_timeout`` (5 s) on top of
  ``max_attempts``. A connection lost *during* COMMIT raises
  :class:`CommitOutcomeUnknown` and is never retried: the server may have committed.
- SQL uses ``?`` placeholders on every engine; for PostgreSQL they become ``%s``
  outside string literals, quoted identifiers and comments.
- Time waiting for a connection (``db_sched_duration_sec``) and in transactions
  (``db_txn_count``, ``db_txn_duration_sec``) is charged to the caller's logging
  context, through a child context on the DB thread.
- ``txn.call_after(f, ...)`` runs ``f`` on the reactor once the transaction
  committed; ``txn.call_on_exception(f, ...)`` once it finally failed. Callbacks
  registered by an attempt that was rolled back and retried are dropped.

Engines: SQLite, embedded (the default, a file or ``:memory:``), and PostgreSQL via
psycopg2 (repeatable read by default; ``isolation_level`` per pool or per call)::

    pool = DatabasePool(reactor, "postgresql://synapse@127.0.0.1/synapse")
    rows = await pool.runInteraction("get_user", lambda txn: txn.execute(...) or txn.fetchall())
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import threading
import time
from typing import Any, Callable, Optional, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

__all__ = [
    "CommitOutcomeUnknown",
    "DatabasePool",
    "Engine",
    "IsolationLevel",
    "LoggingTransaction",
    "PostgresEngine",
    "Sqlite3Engine",
    "create_engine",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")

# A callback registered with call_after/call_on_exception: (callable, args, kwargs).
_Callback = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class CommitOutcomeUnknown(Exception):
    """The connection was lost during COMMIT: the transaction may or may not have
    committed, so it was not retried. The driver's error is the ``__cause__``."""


class IsolationLevel(str, enum.Enum):
    """Transaction isolation levels (PostgreSQL; SQLite is always serializable).
    Members are strings: ``"read committed"`` works wherever a level is taken."""

    READ_COMMITTED = "read committed"
    REPEATABLE_READ = "repeatable read"
    SERIALIZABLE = "serializable"


_LEVELS = frozenset(level.value for level in IsolationLevel)


class Engine(Protocol):
    """What :class:`DatabasePool` needs of a database engine
    (:class:`Sqlite3Engine`, :class:`PostgresEngine`)."""

    @property
    def name(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""

    @property
    def module(self) -> Any:
        """The DB-API module; its ``OperationalError`` is what a retry is for."""

    def connect(self) -> Any: ...
    def convert_sql(self, sql: str) -> str: ...
    def begin(self, conn: Any, isolation_level: str) -> None: ...
    def commit(self, conn: Any) -> None: ...
    def rollback(self, conn: Any) -> None: ...
    def is_broken(self, conn: Any) -> bool: ...
    def close(self) -> None: ...


def redact(database: str) -> str:
    """``database`` with any password hidden, for logs and error messages."""
    if "://" in database:
        parts = urlsplit(database)
        if parts.password is not None:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
        return database
    return " ".join(
        "password=***" if pair.lower().startswith("password=") else pair
        for pair in database.split()
    )


class Sqlite3Engine:
    """SQLite through the standard library. ``:memory:`` is one in-memory database
    shared by the pool's connections."""

    name = "sqlite"
    _memory_ids = itertools.count()

    def __init__(self, database: str) -> None:
        import sqlite3

        self.module = sqlite3
        if database.startswith("sqlite://"):
            database = database[len("sqlite://") :].lstrip("/") or ":memory:"
            database = "/" + database if not database.startswith(":") else database
        self.database = database
        if database == ":memory:":
            self._uri = f"file:pyo3_twisted_memory_{next(self._memory_ids)}?mode=memory&cache=shared"
            # A shared in-memory database lives while one connection is open.
            self._keepalive = self.connect()
        else:
            self._uri = f"file:{database}"

    def connect(self) -> Any:
        conn = self.module.connect(
            self._uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def convert_sql(self, sql: str) -> str:
        return sql

    def begin(self, conn: Any, isolation_level: str) -> None:
        conn.execute("BEGIN")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def is_broken(self, conn: Any) -> bool:
        return False

    def close(self) -> None:
        keepalive = getattr(self, "_keepalive", None)
        if keepalive is not None:
            keepalive.close()

    def __str__(self) -> str:
        return f"sqlite:{self.database}"


class PostgresEngine:
    """PostgreSQL through psycopg2, as Synapse uses it."""

    name = "postgresql"

    def __init__(self, dsn: str, application_name: str = "pyo3-twisted") -> None:
        import psycopg2
        import psycopg2.extensions as ext

        self.module = psycopg2
        self.dsn = dsn
        self.application_name = application_name
        self._levels: dict[str, int] = {
            IsolationLevel.READ_COMMITTED: ext.ISOLATION_LEVEL_READ_COMMITTED,
            IsolationLevel.REPEATABLE_READ: ext.ISOLATION_LEVEL_REPEATABLE_READ,
            IsolationLevel.SERIALIZABLE: ext.ISOLATION_LEVEL_SERIALIZABLE,
        }

    def connect(self) -> Any:
        try:
            return self.module.connect(self.dsn, application_name=self.application_name)
        except self.module.OperationalError as e:
            raise self.module.OperationalError(
                f"cannot connect to {redact(self.dsn)}: {str(e).strip()}"
            ) from None

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def convert_sql(sql: str) -> str:
        # The crate's scanner: one implementation for Rust and Python callers.
        from ._native import convert_placeholders

        return convert_placeholders(sql, "pyformat")

    def begin(self, conn: Any, isolation_level: str) -> None:
        # psycopg2 opens the transaction at the first statement; the level must be
        # set while the connection is idle, which it is here.
        level = self._levels[isolation_level]
        if conn.isolation_level != level:
            conn.set_session(isolation_level=level)

    def commit(self, conn: Any) -> None:
        conn.commit()

    def rollback(self, conn: Any) -> None:
        if not conn.closed:
            conn.rollback()

    def is_broken(self, conn: Any) -> bool:
        return bool(conn.closed)

    def close(self) -> None:
        pass

    def __str__(self) -> str:
        return redact(self.dsn)


def create_engine(database: str, application_name: str = "pyo3-twisted") -> Engine:
    """The engine for ``database``: a ``postgresql://`` URL or libpq ``key=value``
    string, otherwise an SQLite path (``:memory:`` or ``sqlite:///file``)."""
    if database.startswith(("postgresql://", "postgres://")) or (
        "=" in database and not database.startswith(("sqlite:", "file:"))
    ):
        return PostgresEngine(database, application_name)
    return Sqlite3Engine(database)


class LoggingTransaction:
    """The transaction handed to ``runInteraction`` functions (Synapse's shape)."""

    __slots__ = ("txn", "name", "database_engine", "_after", "_on_exception")

    def __init__(self, conn: Any, engine: Engine, name: str) -> None:
        self.txn = conn.cursor()
        self.name = name
        self.database_engine = engine
        self._after: list[_Callback] = []
        self._on_exception: list[_Callback] = []

    def execute(self, sql: str, parameters: Any = ()) -> None:
        """Run ``sql`` (``?`` placeholders) with ``parameters``."""
        self.txn.execute(self.database_engine.convert_sql(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Any) -> None:
        self.txn.executemany(self.database_engine.convert_sql(sql), [tuple(p) for p in parameters])

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.txn.fetchall()
        return rows

    def fetchone(self) -> Optional[tuple[Any, ...]]:
        row: Optional[tuple[Any, ...]] = self.txn.fetchone()
        return row

    def __iter__(self) -> Any:
        return iter(self.txn)

    @property
    def rowcount(self) -> int:
        count: int = self.txn.rowcount
        return count

    @property
    def description(self) -> Any:
        return self.txn.description

    def call_after(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``callback`` on the reactor once this transaction has committed."""
        self._after.append((callback, args, kwargs))

    def call_on_exception(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``callback`` on the reactor if the interaction finally fails."""
        self._on_exception.append((callback, args, kwargs))

    def close(self) -> None:
        self.txn.close()


class DatabasePool:
    """Runs transactions on a Twisted thread pool, one connection per thread.

    ``database``: an SQLite path or ``:memory:`` (the default), or a PostgreSQL DSN.
    ``max_connections``: threads and connections (1 for SQLite, 5 for PostgreSQL by
    default). ``logcontext``: the logcontext provider module whose contexts are
    charged (default ``pyo3_twisted.logcontext``; pass ``synapse.logging.context``
    inside Synapse). The pool stops at reactor shutdown, or with :meth:`close`.
    """

    def __init__(
        self,
        reactor: Any,
        database: str = ":memory:",
        *,
        max_connections: Optional[int] = None,
        isolation_level: str = IsolationLevel.REPEATABLE_READ,
        max_attempts: int = 5,
        reconnect_timeout: float = 5.0,
        logcontext: Any = None,
        name: str = "db",
        application_name: str = "pyo3-twisted",
    ) -> None:
        if isolation_level not in _LEVELS:
            raise ValueError(f"unknown isolation level {isolation_level!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not reconnect_timeout >= 0:
            raise ValueError("reconnect_timeout must be a number of seconds >= 0")
        if logcontext is None or isinstance(logcontext, str):
            import importlib

            logcontext = importlib.import_module(logcontext or "pyo3_twisted.logcontext")
        self._lc = logcontext
        self._reactor = reactor
        self.engine = create_engine(database, application_name)
        if max_connections is None:
            max_connections = 1 if self.engine.name == "sqlite" else 5
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.isolation_level = isolation_level
        self.max_attempts = max_attempts
        self.reconnect_timeout = reconnect_timeout
        self.name = name
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._threadpool = ThreadPool(minthreads=0, maxthreads=max_connections, name=f"{name}-pool")
        self._threadpool.start()
        self._closed = False
        reactor.addSystemEventTrigger("during", "shutdown", self.close)

    def connection_count(self) -> int:
        """Connections open now (at most ``max_connections``)."""
        with self._connections_lock:
            return len(self._connections)

    async def runInteraction(
        self,
        desc: str,
        func: Callable[..., R],
        *args: Any,
        isolation_level: Optional[str] = None,
        **kwargs: Any,
    ) -> R:
        """Run ``func(txn, *args, **kwargs)`` in a transaction on a pool thread and
        return its result once committed. Retried whole on transient errors."""
        if self._closed:
            raise RuntimeError(f"database pool {self.name!r} is closed")
        if isolation_level is not None and isolation_level not in _LEVELS:
            raise ValueError(f"unknown isolation level {isolation_level!r}")
        parent = self._lc.current_context()
        callbacks: dict[str, list[_Callback]] = {"after": [], "exception": []}
        d = threads.deferToThreadPool(
            self._reactor,
            self._threadpool,
            self._run_on_db_thread,
            parent,
            time.monotonic(),
            desc,
            func,
            args,
            kwargs,
            isolation_level or self.isolation_level,
            callbacks,
        )
        try:
            result: R = await self._lc.make_deferred_yieldable(d)
        except Exception:
            for callback, cb_args, cb_kwargs in callbacks["exception"]:
                callback(*cb_args, **cb_kwargs)
            raise
        for callback, cb_args, cb_kwargs in callbacks["after"]:
            callback(*cb_args, **cb_kwargs)
        return result

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self.engine.is_broken(conn):
            self._forget(conn)
            conn = None
        if conn is None:
            conn = self.engine.connect()
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _forget(self, conn: Any) -> None:
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        try:
            conn.close()
        except Exception:
            pass
        self._local.conn = None

    def _run_on_db_thread(
        self,
        parent: Any,
        queued_at: float,
        desc: str,
        func: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        isolation_level: str,
        callbacks: dict[str, list[_Callback]],
    ) -> R:
        lc = self._lc
        with lc.LoggingContext(
            name=f"{parent}-{desc}" if parent else desc,
            server_name=getattr(parent, "server_name", "") or "",
            parent_context=parent if parent else None,
        ) as context:
            context.add_database_scheduled(time.monotonic() - queued_at)
            return self._attempts(context, desc, func, args, kwargs, isolation_level, callbacks)

    def _attempts(
        self,
        context: Any,
        desc: str,
        func: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        isolation_level: str,
        callbacks: dict[str, list[_Callback]],
    ) -> R:
        operational_error = self.engine.module.OperationalError
        failures = 0  # transient errors, limited by max_attempts
        reconnects = 0  # lost or refused connections, limited by reconnect_timeout
        first_started = time.monotonic()
        while True:
            try:
                conn = self._connection()
            except operational_error as e:
                if self._may_reconnect(first_started):
                    reconnects += 1
                    self._reconnect_delay(desc, e, reconnects)
                    continue
                raise
            txn = LoggingTransaction(conn, self.engine, desc)
            started = time.monotonic()
            committing = False
            try:
                self.engine.begin(conn, isolation_level)
                result = func(txn, *args, **kwargs)
                committing = True
                self.engine.commit(conn)
            except operational_error as e:
                lost = self.engine.is_broken(conn)
                self._rollback(conn)
                callbacks["exception"] = txn._on_exception
                if lost and committing:
                    raise CommitOutcomeUnknown(
                        f"{desc}: the database connection was lost during COMMIT: the "
                        "transaction may or may not have committed, so it was not retried"
                    ) from e
                if lost and self._may_reconnect(first_started):
                    reconnects += 1
                    self._reconnect_delay(desc, e, reconnects)
                    continue
                failures += 1
                if failures >= self.max_attempts:
                    raise
                logger.warning(
                    "[TXN OPERROR] {%s} %s (attempt %d of %d)",
                    desc,
                    str(e).strip(),
                    failures,
                    self.max_attempts,
                )
                continue
            except BaseException:
                self._rollback(conn)
                callbacks["exception"] = txn._on_exception
                raise
            else:
                callbacks["after"] = txn._after
                return result
            finally:
                txn.close()
                context.add_database_transaction(time.monotonic() - started)

    def _may_reconnect(self, first_started: float) -> bool:
        return time.monotonic() - first_started < self.reconnect_timeout

    def _reconnect_delay(self, desc: str, error: Exception, reconnects: int) -> None:
        # On this DB thread: the transaction waits for the server to come back.
        delay = min(0.25, 0.005 * 2 ** min(reconnects, 10))
        logger.warning(
            "[TXN RECONNECT] {%s} %s (retrying on a new connection in %.0f ms)",
            desc,
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
            delay * 1000,
        )
        time.sleep(delay)

    def _rollback(self, conn: Any) -> None:
        try:
            self.engine.rollback(conn)
        except Exception:
            logger.warning("rollback failed; dropping the connection", exc_info=True)
            self._forget(conn)
        if self.engine.is_broken(conn):
            self._forget(conn)

    def close(self) -> None:
        """Stop the thread pool and close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._threadpool.stop()
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except Exception:
                pass
        self.engine.close()
