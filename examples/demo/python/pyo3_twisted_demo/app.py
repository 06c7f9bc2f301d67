"""The demo service: a Twisted web app whose hot path is async Rust.

    python -m pyo3_twisted_demo [--port 8008] [--database PATH_OR_DSN]

- ``GET /versions?user_id=@alice:example.org``: answered by a Rust handler
  (``create_deferred``) that reads the user's feature flags with ``run_interaction``
  through the same pool as the Python code: the shape of Synapse's ``/versions``.
  With ``--native-pool`` (PostgreSQL only) it reads through the crate's native
  PostgreSQL pool on the same database instead, the shape of a Rust-only app.
- ``GET /versions_py?user_id=…``: the same handler written in Python, on the same
  pool and data (what ``benches/wrk_versions.py`` compares the Rust one against).
- ``PUT /features/{user_id}/{feature}`` with ``{"enabled": true}``: written by a
  Python handler through that pool.
- ``GET /metrics``: the Rust runtime's figures in Prometheus text format
  (``pyo3_twisted.metrics``).
- One access-log line per request with its logging context's figures:
  ``ru=(utime, stime)`` including the Rust handler's CPU time, and
  ``db=(sched/txn/count)`` including the Rust-initiated transactions.
- SQLite by default (created and seeded on first run); ``--database
  postgresql://user:password@host/db`` for PostgreSQL. Loopback only unless
  ``--bind`` says otherwise.
- SIGINT/SIGTERM: stop accepting connections, let in-flight requests finish (or
  fail) within ``--shutdown-timeout``, close connections once their responses are
  flushed, exit 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from typing import Any, Optional, Sequence
from urllib.parse import unquote

from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pyo3_twisted import logcontext as lc
from pyo3_twisted.database import DatabasePool, redact
from pyo3_twisted.metrics import RuntimeCollector

from . import _native
from ._native import RuntimeShutdown, VersionsHandler

logger = logging.getLogger("pyo3_twisted_demo")
access_logger = logging.getLogger("pyo3_twisted_demo.access")

KNOWN_FEATURES = ["msc3026.busy_presence", "msc3881", "msc4140.delayed_events", "dark_mode"]
SEED = [
    ("@alice:example.org", "msc3881", True),
    ("@alice:example.org", "dark_mode", True),
    ("@bob:example.org", "msc4140.delayed_events", True),
]
MAX_BODY = 64 * 1024


class HTTPError(Exception):
    """An error answered as ``{"errcode": ..., "error": ...}``."""

    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"errcode": errcode, "error": message}


def create_schema(txn: Any) -> None:
    txn.execute(
        "CREATE TABLE IF NOT EXISTS feature_flags ("
        " user_id TEXT NOT NULL, feature TEXT NOT NULL, enabled BOOLEAN NOT NULL,"
        " PRIMARY KEY (user_id, feature))"
    )
    for user_id, feature, enabled in SEED:
        txn.execute(
            "INSERT INTO feature_flags (user_id, feature, enabled) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, feature) DO NOTHING",
            (user_id, feature, enabled),
        )


VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.11"]


def select_flags(txn: Any, user_id: str) -> list[tuple[str, bool]]:
    # The Rust handler's query (examples/demo/src/store.rs).
    txn.execute("SELECT feature, enabled FROM feature_flags WHERE user_id = ? ORDER BY feature", (user_id,))
    return [(feature, bool(enabled)) for feature, enabled in txn.fetchall()]


def known_features(extra: int = 0) -> list[str]:
    """The features the demo knows: ``KNOWN_FEATURES`` and ``extra`` more, named
    ``org.example.feature_NNN`` and set for nobody (Synapse's ``/versions`` answers
    ~40 flags; the demo's default four make the handlers as small as they get)."""
    if extra < 0:
        raise ValueError(f"extra features must be 0 or more, not {extra}")
    return KNOWN_FEATURES + [f"org.example.feature_{i:03}" for i in range(extra)]


async def python_versions(
    pool: DatabasePool, user_id: str, known: Sequence[str] = KNOWN_FEATURES
) -> dict[str, Any]:
    """``GET /versions`` in Python: the Rust handler's twin."""
    flags = await pool.runInteraction("get_feature_flags", select_flags, user_id)
    features = {name: False for name in known}
    for name, enabled in flags:
        if name in features:
            features[name] = enabled
    return {"versions": list(VERSIONS), "unstable_features": dict(sorted(features.items()))}


def set_feature(txn: Any, user_id: str, feature: str, enabled: bool) -> None:
    txn.execute(
        "INSERT INTO feature_flags (user_id, feature, enabled) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id, feature) DO UPDATE SET enabled = EXCLUDED.enabled",
        (user_id, feature, enabled),
    )


class DemoApp:
    """Routes, handlers, the access log and graceful shutdown."""

    def __init__(
        self,
        reactor: Any,
        pool: DatabasePool,
        rust_work_ms: int,
        shutdown_timeout: float,
        native_dsn: Optional[str] = None,
        coroutine: bool = False,
        known: Sequence[str] = KNOWN_FEATURES,
        interaction: bool = False,
    ) -> None:
        self.reactor = reactor
        self.pool = pool
        self.known = list(known)
        self.known_set = frozenset(self.known)
        # The native pool gets as many connections as the Python pool has threads.
        self.versions = VersionsHandler(
            pool,
            reactor,
            self.known,
            rust_work_ms,
            native_dsn=native_dsn,
            native_connections=pool.max_connections,
            coroutine=coroutine,
            interaction=interaction,
        )
        # GET /metrics: this module's runtime (its own copy of the crate's).
        self.metrics = CollectorRegistry()
        collector = RuntimeCollector(source=_native)
        collector.track(reactor, name="main")
        self.metrics.register(collector)
        self.shutdown_timeout = shutdown_timeout
        self.request_ids = itertools.count(1)
        self.active = 0
        self.idle: Optional[defer.Deferred[None]] = None
        self.channels: set[TrackedChannel] = set()
        self.port: Any = None

    # -- requests ----------------------------------------------------------------

    def render(self, request: Any) -> Any:
        context = lc.LoggingContext(name=f"{request.method.decode()}-{next(self.request_ids)}")
        self.active += 1
        with lc.PreserveLoggingContext(context):
            lc.run_in_background(self.handle, request, context)
        return NOT_DONE_YET

    async def handle(self, request: Any, context: lc.LoggingContext) -> None:
        started = time.monotonic()
        try:
            try:
                status, body = 200, await self.dispatch(request)
            except HTTPError as e:
                status, body = e.status, e.body
            except RuntimeShutdown:
                status, body = 503, {"errcode": "M_UNAVAILABLE", "error": "Server is shutting down"}
            except Exception:
                logger.exception("request failed")
                status, body = 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}
            payload = json.dumps(body).encode()
            if not request._disconnected:
                request.setResponseCode(status)
                request.setHeader(b"Content-Type", b"application/json")
                request.setHeader(b"Content-Length", str(len(payload)).encode())
                request.write(payload)
                request.finish()
            self.log_access(request, context, status, len(payload), started)
        finally:
            self.active -= 1
            if self.active == 0 and self.idle is not None and not self.idle.called:
                self.idle.callback(None)

    async def dispatch(self, request: Any) -> Any:
        method = request.method.decode()
        segments = [unquote(s.decode()) for s in request.path.split(b"/")[1:]]
        if segments in (["versions"], ["versions_py"]):
            if method != "GET":
                raise HTTPError(405, "M_UNRECOGNIZED", f"Use GET on /{segments[0]}")
            user_ids = request.args.get(b"user_id") or [b""]
            user_id = user_ids[0].decode("utf-8", "replace")
            if not user_id:
                raise HTTPError(400, "M_MISSING_PARAM", "Missing user_id query parameter")
            if segments == ["versions_py"]:
                return await python_versions(self.pool, user_id, self.known)
            return await self.versions.handle(self.reactor, user_id)
        if len(segments) == 3 and segments[0] == "features" and all(segments[1:]):
            if method != "PUT":
                raise HTTPError(405, "M_UNRECOGNIZED", "Use PUT on /features/{user_id}/{feature}")
            user_id, feature = segments[1], segments[2]
            if feature not in self.known_set:
                raise HTTPError(404, "M_NOT_FOUND", f"Unknown feature {feature!r}")
            enabled = self.parse_enabled(request)
            await self.pool.runInteraction("set_feature", set_feature, user_id, feature, enabled)
            return {}
        raise HTTPError(404, "M_UNRECOGNIZED", "Unrecognized request")

    @staticmethod
    def parse_enabled(request: Any) -> bool:
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise HTTPError(413, "M_TOO_LARGE", "Request body too large")
        try:
            body = json.loads(raw)
        except ValueError:
            raise HTTPError(400, "M_NOT_JSON", "Request body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            raise HTTPError(400, "M_BAD_JSON", 'Expected {"enabled": true|false}')
        enabled: bool = body["enabled"]
        return enabled

    def log_access(self, request: Any, context: lc.LoggingContext, status: int, size: int, started: float) -> None:
        usage = context.get_resource_usage()
        access_logger.info(
            '%s "%s %s" %d %dB %.3fsec ru=(%.3f, %.3f) db=(%.3f/%.3f/%d)',
            request.getClientAddress().host,
            request.method.decode(),
            request.uri.decode("utf-8", "replace"),
            status,
            size,
            time.monotonic() - started,
            usage.ru_utime,
            usage.ru_stime,
            usage.db_sched_duration_sec,
            usage.db_txn_duration_sec,
            usage.db_txn_count,
        )

    # -- shutdown ------------------------------------------------------------------

    async def drain(self) -> None:
        """The before-shutdown trigger: stop listening, let in-flight requests
        finish, then close connections once their responses are flushed."""
        deadline = self.reactor.seconds() + self.shutdown_timeout
        if self.port is not None:
            await self.port.stopListening()
        if self.active:
            self.idle = defer.Deferred()
            await self.wait(self.idle, deadline)
        closed = []
        for channel in list(self.channels):
            d: defer.Deferred[None] = defer.Deferred()
            channel.on_close = d
            closed.append(d)
            if channel.transport is not None:
                channel.transport.loseConnection()
        if closed:
            await self.wait(defer.DeferredList(closed), deadline)
        logger.info("shut down cleanly")

    async def wait(self, d: defer.Deferred[Any], deadline: float) -> None:
        timeout = max(0.0, deadline - self.reactor.seconds())
        d.addTimeout(timeout, self.reactor)
        try:
            await d
        except defer.TimeoutError:
            logger.warning("shutdown timeout passed; closing what remains")


class DemoResource(Resource):
    isLeaf = True

    def __init__(self, app: DemoApp) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's is untyped
        self.app = app

    def render(self, request: Any) -> Any:
        if request.path == b"/metrics" and request.method == b"GET":
            # Prometheus text, rendered at once: a scrape reads counters only.
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            return generate_latest(self.app.metrics)
        return self.app.render(request)


class TrackedChannel(HTTPChannel):
    """An HTTP connection the app knows about, to close it at shutdown."""

    app: DemoApp
    on_close: Optional[defer.Deferred[None]] = None

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self.app.channels.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self.app.channels.discard(self)
        if self.on_close is not None and not self.on_close.called:
            self.on_close.callback(None)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pyo3_twisted_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=8008, help="port (default 8008; 0 picks a free one)")
    parser.add_argument(
        "--database",
        default="pyo3_twisted_demo.sqlite3",
        help="SQLite file (default pyo3_twisted_demo.sqlite3) or postgresql:// DSN",
    )
    parser.add_argument("--shutdown-timeout", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="Tokio worker threads (default 2)")
    parser.add_argument(
        "--reactor",
        choices=["default", "asyncio"],
        default="default",
        help="Twisted reactor: the platform default (epoll on Linux) or asyncio",
    )
    parser.add_argument(
        "--rust-work-ms", type=int, default=0, help="thread CPU milliseconds the Rust handler spends per request"
    )
    parser.add_argument(
        "--reactor-polls",
        action="store_true",
        help="poll Rust handlers on the reactor thread when the reactor wakes them (RuntimeConfig.reactor_polls)",
    )
    parser.add_argument(
        "--rust-coroutine",
        action="store_true",
        help="the Rust handler answers with a coroutine polled on the reactor thread (create_coroutine)",
    )
    parser.add_argument(
        "--interaction-coroutine",
        action="store_true",
        help="the Rust handler answers with the Python pool's run_interaction_coroutine: its transaction and answer, no Rust future",
    )
    parser.add_argument(
        "--native-pool",
        action="store_true",
        help="the Rust handler reads through the native PostgreSQL pool (same database; needs a postgresql:// DSN)",
    )
    parser.add_argument(
        "--extra-features",
        type=int,
        default=0,
        help="known features beyond the demo's four, set for nobody (org.example.feature_NNN; Synapse answers ~40)",
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only (no access log)")
    args = parser.parse_args(argv)
    if args.interaction_coroutine and args.native_pool:
        parser.error("--interaction-coroutine reads through the Python pool, not --native-pool")
    if args.native_pool and not args.database.startswith(("postgresql://", "postgres://")):
        parser.error("--native-pool needs --database postgresql://...")
    if args.extra_features < 0:
        parser.error("--extra-features must be 0 or more")
    return args


def setup_logging(quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lc.LoggingContextFilter(request="-"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s {%(request)s} %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.quiet)
    if args.reactor == "asyncio":
        from pyo3_twisted.testing import install_reactor

        install_reactor("asyncio")
    from twisted.internet import reactor

    # The runtime this module's handlers run on: its own copy of the crate's.
    _native.install(
        reactor,
        worker_threads=args.workers,
        shutdown_timeout=args.shutdown_timeout,
        logcontext="pyo3_twisted.logcontext",
        reactor_polls=args.reactor_polls,
    )
    pool = DatabasePool(reactor, args.database, logcontext=lc)
    app = DemoApp(
        reactor,
        pool,
        args.rust_work_ms,
        args.shutdown_timeout,
        native_dsn=args.database if args.native_pool else None,
        coroutine=args.rust_coroutine,
        known=known_features(args.extra_features),
        interaction=args.interaction_coroutine,
    )
    site = Site(DemoResource(app))  # type: ignore[no-untyped-call]
    # Twisted declares Site.protocol as a method; it is the channel class.
    site.protocol = type("DemoChannel", (TrackedChannel,), {"app": app})  # type: ignore[method-assign]
    site.noisy = False
    failed: list[str] = []

    async def start() -> None:
        try:
            await pool.runInteraction("create_schema", create_schema)
            app.port = reactor.listenTCP(args.port, site, interface=args.bind)  # type: ignore[arg-type]
        except Exception as e:
            failed.append(f"cannot start: {e}")
            reactor.stop()
            return
        host = app.port.getHost()
        logger.info(
            "database: %s; reactor: %s; reactor_polls: %s; Rust handler: %s; its pool: %s",
            redact(args.database),
            type(reactor).__name__,
            args.reactor_polls,
            "run_interaction_coroutine" if args.interaction_coroutine else "coroutine" if args.rust_coroutine else "Deferred",
            "native" if args.native_pool else "python",
        )
        print(f"listening on http://{host.host}:{host.port}", flush=True)

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(app.drain()))
    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.run()
    if failed:
        print(failed[0], file=sys.stderr)
        return 1
    return 0
