//! Synapse-shaped handlers (`tests/synapse_shaped/`) on `pyo3_twisted::synapse`, in a
//! Synapse-style harness: a fake homeserver per test whose reactor is never run nor
//! stopped, shut down through `hs.shutdown()`. Each case runs on three memory
//! reactors (ours, polling its readers in `advance()`; ours saying it does not, as
//! Synapse's harness; Twisted's plain `MemoryReactorClock`, driven by hand) and with
//! two logcontext providers (Synapse's real `synapse.logging.context` and
//! `pyo3_twisted.logcontext`). `make test` runs it at PyO3 0.30 and 0.29.

mod common;
mod synapse_shaped;

use std::sync::Once;

use common::*;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict, PyDict, PyModule};
use pyo3_twisted::RuntimeShutdown;

const PROVIDERS: [&str; 2] = ["synapse.logging.context", "pyo3_twisted_test_logcontext"];
const REACTORS: [&str; 3] = ["harness", "synapse_like", "plain"];

/// The Python side of the harness, in Synapse's shapes.
const HARNESS: &str = r#"
import gc, select, sqlite3, time, types, weakref, logging
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock


def make_reactor(kind, testing, lc):
    if kind == "harness":
        return testing.ThreadedMemoryReactorClock(logcontext=lc)
    if kind == "synapse_like":
        class SynapseLike(testing.ThreadedMemoryReactorClock):
            # As Synapse's own harness: callFromThread, no reader polling.
            pyo3_twisted_polls_readers = False
        return SynapseLike(logcontext=lc)
    return MemoryReactorClock()


def drive(reactor, d, timeout=10.0):
    """Runs the reactor's work by hand until ``d`` fires; returns its result or
    raises its failure."""
    outcome = []
    d.addBoth(outcome.append)
    if hasattr(reactor, "wait_for"):
        if not outcome:
            reactor.wait_for(d, timeout)
    else:
        deadline = time.monotonic() + timeout
        while not outcome:
            reactor.advance(0)
            if outcome:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{d!r} did not fire")
            due = any(c.getTime() <= reactor.seconds() for c in reactor.getDelayedCalls())
            ready, _, _ = select.select(list(reactor.getReaders()), [], [], 0 if due else remaining)
            for reader in ready:
                reader.doRead()
    result = outcome[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


class InlinePool:
    """Synapse's test-harness pool shape: each transaction runs on the reactor
    thread at the next reactor turn (the plain memory reactor has no
    callFromThread for a thread pool)."""

    def __init__(self, reactor):
        self._reactor = reactor
        self._conn = sqlite3.connect(":memory:")
        self.transactions = 0

    def runInteraction(self, desc, func, *args):
        d = defer.Deferred()

        def run():
            cursor = self._conn.cursor()
            try:
                result = func(cursor, *args)
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                d.errback()
                return
            self.transactions += 1
            d.callback(result)

        self._reactor.callLater(0, run)
        return d


def make_pool(kind, reactor, database, lc):
    if kind == "plain":
        return InlinePool(reactor)
    return database.DatabasePool(reactor, ":memory:", logcontext=lc)


def schema(txn):
    txn.execute("CREATE TABLE per_user_experimental_features (user_id TEXT, feature TEXT, enabled BOOLEAN)")
    txn.executemany(
        "INSERT INTO per_user_experimental_features VALUES (?, ?, ?)",
        [("@alice:test", "msc3881", True), ("@bob:test", "msc3881", False), ("@bob:test", "msc3575", True)],
    )


class HomeServer:
    """The parts of Synapse's HomeServer that Rust code reaches."""

    def __init__(self, reactor, db_pool, rust, **runtime_options):
        self._reactor = reactor
        self._db_pool = db_pool
        self._rust = rust
        self._runtime_options = runtime_options
        self._runtime = None
        self._sync_shutdown_handlers = []
        self.config = types.SimpleNamespace(
            experimental=types.SimpleNamespace(msc3881_enabled=False, msc3575_enabled=False)
        )

    def get_reactor(self):
        return self._reactor

    def get_datastores(self):
        return types.SimpleNamespace(main=types.SimpleNamespace(db_pool=self._db_pool))

    def get_rust_runtime(self):
        if self._runtime is None:
            self._runtime = self._rust.runtime.RustRuntime(hs=self, worker_threads=2, **self._runtime_options)
        return self._runtime

    def register_sync_shutdown_handler(self, *, phase, eventType, shutdown_func, **kwargs):
        trigger = self._reactor.addSystemEventTrigger(phase, eventType, shutdown_func, **kwargs)
        self._sync_shutdown_handlers.append((trigger, shutdown_func, kwargs))

    def shutdown(self):
        for trigger, func, kwargs in self._sync_shutdown_handlers:
            try:
                self._reactor.removeSystemEventTrigger(trigger)
            except NotImplementedError:
                pass  # Twisted's MemoryReactor keeps every trigger.
            func(**kwargs)
        self._sync_shutdown_handlers.clear()


def in_request(lc, name, make_deferred):
    """``await make_deferred()`` inside a fresh request context; a Deferred of
    (context, result)."""
    async def handler():
        with lc.LoggingContext(name=name, server_name="test") as ctx:
            return ctx, await make_deferred()
    return defer.ensureDeferred(handler())


class Records(logging.Handler):
    """Each record's message and the logcontext current when it was emitted."""

    def __init__(self, lc):
        super().__init__()
        self.lc = lc
        self.seen = []

    def emit(self, record):
        self.seen.append((record.getMessage(), self.lc.current_context()))
"#;

static LOGGER: Once = Once::new();
// Defined once for all the tests (which run on several threads).
static HARNESS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static RUST_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static DATABASE_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

struct Case<'py> {
    h: Bound<'py, PyModule>,
    rust: Bound<'py, PyModule>,
    lc: Bound<'py, PyModule>,
    kind: &'static str,
    reactor: Bound<'py, PyAny>,
    pool: Bound<'py, PyAny>,
}

impl<'py> Case<'py> {
    fn new(py: Python<'py>, kind: &'static str, provider: &str) -> PyResult<Self> {
        let h = HARNESS_MODULE
            .get_or_try_init(py, || {
                define_module(py, "synapse_shaped_harness", HARNESS).map(Bound::unbind)
            })?
            .bind(py)
            .clone();
        let rust = RUST_MODULE
            .get_or_try_init(py, || -> PyResult<_> {
                let m = PyModule::new(py, "synapse_shaped_rust")?;
                synapse_shaped::register(py, &m)?;
                Ok(m.unbind())
            })?
            .bind(py)
            .clone();
        logcontext(py)?;
        let lc = py.import(provider)?;
        let reactor = h.call_method1("make_reactor", (kind, testing(py)?, &lc))?;
        let database = DATABASE_MODULE
            .get_or_try_init(py, || -> PyResult<_> {
                let source = std::fs::read_to_string(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("python_shim/python/pyo3_twisted/database.py"),
                )?;
                Ok(define_module(py, "synapse_shaped_test_database", &source)?.unbind())
            })?
            .bind(py)
            .clone();
        let pool = h.call_method1("make_pool", (kind, &reactor, database, &lc))?;
        let case = Self {
            h,
            rust,
            lc,
            kind,
            reactor,
            pool,
        };
        let schema = case.h.getattr("schema")?;
        case.drive(
            &case
                .pool
                .call_method1("runInteraction", ("schema", schema))?,
        )?;
        Ok(case)
    }

    fn homeserver(&self) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = PyDict::new(self.h.py());
        kwargs.set_item("logcontext", self.lc.name()?)?;
        self.h
            .getattr("HomeServer")?
            .call((&self.reactor, &self.pool, &self.rust), Some(&kwargs))
    }

    fn drive(&self, d: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = self.h.py();
        let d = py
            .import("twisted.internet.defer")?
            .call_method1("ensureDeferred", (d,))?;
        self.h.call_method1("drive", (&self.reactor, d))
    }

    fn in_request(
        &self,
        name: &str,
        make: Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let out = self.drive(&self.h.call_method1("in_request", (&self.lc, name, make))?)?;
        Ok((out.get_item(0)?, out.get_item(1)?))
    }

    fn label(&self) -> String {
        format!("{} / {}", self.kind, self.lc.name().unwrap())
    }
}

fn each_case(mut test: impl for<'py> FnMut(&Case<'py>) -> PyResult<()>) {
    with_python(|_| Ok(()));
    // The module's logger, set up as Synapse's lib.rs does (`pyo3_log::init()`); it
    // takes the GIL, so not while holding it (the tests run on several threads).
    LOGGER.call_once(|| {
        let _ = pyo3_twisted::synapse::pyo3_log::init();
    });
    for provider in PROVIDERS {
        for kind in REACTORS {
            eprintln!("case: {kind} / {provider}");
            with_python(|py| {
                let case = Case::new(py, kind, provider)?;
                test(&case).map_err(|err| {
                    pyo3::exceptions::PyAssertionError::new_err(format!("[{}] {err}", case.label()))
                })
            });
        }
    }
}

fn flag(body: &Bound<'_, PyAny>, feature: &str) -> PyResult<bool> {
    body.get_item("unstable_features")?
        .get_item(format!("org.matrix.{feature}"))?
        .extract()
}

#[test]
fn versions_handler_reads_per_user_flags_through_the_python_pool() {
    each_case(|case| {
        let hs = case.homeserver()?;
        let handlers = case.rust.getattr("RustHandlers")?.call1((&hs,))?;
        let versions = handlers.getattr("versions")?;

        let anonymous = case.drive(&versions.call_method0("get_versions")?)?;
        assert!(!flag(&anonymous, "msc3881")?);
        let listed: Vec<String> = anonymous.get_item("versions")?.extract()?;
        assert!(listed.contains(&"v1.15".to_owned()), "{listed:?}");

        for (user, msc3881, msc3575) in [
            ("@alice:test", true, false),
            ("@bob:test", false, true),
            ("@carol:test", false, false),
            // A parameter, never SQL: no row matches.
            ("@alice:test' OR '1'='1", false, false),
        ] {
            let get = versions.getattr("get_versions")?;
            let make = case
                .h
                .py()
                .eval(c"lambda get, user: (lambda: get(user))", None, None)?;
            let (ctx, body) = case.in_request(user, make.call1((get, user))?)?;
            assert_eq!(flag(&body, "msc3881")?, msc3881, "{user}");
            assert_eq!(flag(&body, "msc3575")?, msc3575, "{user}");
            if case.kind != "plain" {
                // Two transactions (one per feature), charged to the request.
                let usage = ctx.call_method0("get_resource_usage")?;
                let count: i64 = usage.getattr("db_txn_count")?.extract()?;
                assert_eq!(count, 2, "{user}: db_txn_count");
            }
        }
        if case.kind == "plain" {
            // Two per user, and the schema.
            let count: i64 = case.pool.getattr("transactions")?.extract()?;
            assert_eq!(count, 1 + 4 * 2);
        }
        hs.call_method0("shutdown")?;
        Ok(())
    });
}

#[test]
fn http_client_shaped_handler_returns_bytes_from_tokio_work() {
    each_case(|case| {
        let hs = case.homeserver()?;
        let runtime = hs.call_method0("get_rust_runtime")?;
        let client = case.rust.getattr("HttpClient")?.call1((runtime,))?;
        let bodies: Vec<Bound<'_, PyAny>> = (0..20)
            .map(|i| client.call_method1("get", (format!("https://example.org/{i}"),)))
            .collect::<PyResult<_>>()?;
        for (i, d) in bodies.iter().enumerate() {
            let body = case.drive(d)?;
            assert_eq!(
                body.cast::<pyo3::types::PyBytes>()?.as_bytes(),
                format!("200 OK https://example.org/{i}").as_bytes()
            );
        }
        hs.call_method0("shutdown")?;
        Ok(())
    });
}

#[test]
fn child_task_logs_in_the_request_context_through_task_current() {
    each_case(|case| {
        let py = case.h.py();
        let hs = case.homeserver()?;
        let runtime = hs.call_method0("get_rust_runtime")?;
        let work = case.rust.getattr("Work")?.call1((runtime,))?;
        let records = case.h.getattr("Records")?.call1((&case.lc,))?;
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("synapse_shaped",))?;
        logger.call_method1("setLevel", ("INFO",))?;
        logger.call_method1("addHandler", (&records,))?;
        let result = (|| -> PyResult<()> {
            let run = work.getattr("run")?;
            let make = py.eval(c"lambda run: (lambda: run('request-1'))", None, None)?;
            let (ctx, n) = case.in_request("request-1", make.call1((&run,))?)?;
            assert_eq!(n.extract::<usize>()?, "request-1".len());
            // Outside any request: the sentinel, and the record is not lost.
            let n = case.drive(&run.call1(("background",))?)?;
            assert_eq!(n.extract::<usize>()?, "background".len());

            let seen = records.getattr("seen")?;
            let seen: Vec<(String, Bound<'_, PyAny>)> = seen.extract()?;
            assert_eq!(seen.len(), 2, "records: {seen:?}");
            assert_eq!(seen[0].0, "working on request-1");
            assert!(seen[0].1.is(&ctx), "logged in {:?}", seen[0].1);
            assert_eq!(seen[1].0, "working on background");
            assert!(!seen[1].1.is_truthy()?, "logged in {:?}", seen[1].1);
            Ok(())
        })();
        logger.call_method1("removeHandler", (&records,))?;
        hs.call_method0("shutdown")?;
        result
    });
}

#[test]
fn homeserver_shutdown_stops_its_runtime_and_the_homeserver_is_collected() {
    each_case(|case| {
        let py = case.h.py();
        // Two homeservers on one reactor, as Synapse's worker tests have.
        let main = case.homeserver()?;
        let worker = case.homeserver()?;
        let main_handlers = case.rust.getattr("RustHandlers")?.call1((&main,))?;
        let worker_handlers = case.rust.getattr("RustHandlers")?.call1((&worker,))?;
        fn get<'py>(handlers: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
            handlers
                .getattr("versions")?
                .call_method1("get_versions", ("@alice:test",))
        }
        case.drive(&get(&main_handlers)?)?;
        case.drive(&get(&worker_handlers)?)?;
        let hooks = case
            .reactor
            .getattr("triggers")?
            .get_item("after")?
            .get_item("shutdown")?;
        assert_eq!(hooks.len()?, 2);

        // The worker shuts down: its handle refuses work, the main one still serves.
        worker.call_method0("shutdown")?;
        let worker_runtime = worker.call_method0("get_rust_runtime")?;
        assert!(worker_runtime.getattr("is_shut_down")?.extract::<bool>()?);
        let refused = get(&worker_handlers).expect_err("a shut-down homeserver served");
        assert!(refused.is_instance_of::<RuntimeShutdown>(py), "{refused}");
        let body = case.drive(&get(&main_handlers)?)?;
        assert!(flag(&body, "msc3881")?);
        assert_eq!(
            pyo3_twisted::stats(&case.reactor)?.state,
            "running",
            "the reactor's runtime stopped with the first homeserver"
        );

        // The last one stops the reactor's runtime, and removed its triggers.
        main.call_method0("shutdown")?;
        assert_eq!(pyo3_twisted::stats(&case.reactor)?.state, "stopped");
        let refused = get(&main_handlers).expect_err("a shut-down homeserver served");
        assert!(refused.is_instance_of::<RuntimeShutdown>(py), "{refused}");

        // Nothing of ours keeps a homeserver (or its pool) alive.
        let weakref = py.import("weakref")?;
        let main_ref = weakref.call_method1("ref", (&main,))?;
        let worker_ref = weakref.call_method1("ref", (&worker,))?;
        drop((main, worker, main_handlers, worker_handlers, worker_runtime));
        py.import("gc")?.call_method0("collect")?;
        assert!(main_ref.call0()?.is_none(), "the main homeserver is alive");
        assert!(
            worker_ref.call0()?.is_none(),
            "the worker homeserver is alive"
        );
        // The reactor's triggers (which this memory reactor never removes) now call
        // hooks whose homeservers are gone: they do nothing.
        for hook in hooks.try_iter()? {
            hook?.get_item(0)?.call0()?;
        }
        Ok(())
    });
}

#[test]
fn dispatch_to_twisted_with_logcontext_and_capture() {
    use pyo3_twisted::synapse::logging::context::{with_logcontext, LogContextHandle};
    use pyo3_twisted::synapse::runtime::RustRuntime;

    each_case(|case| {
        let py = case.h.py();
        let hs = case.homeserver()?;
        let runtime: RustRuntime = hs.call_method0("get_rust_runtime")?.extract()?;
        assert!(runtime.reactor(py)?.is(&case.reactor));
        let lc = case.lc.clone().unbind();
        let request = case
            .lc
            .getattr("LoggingContext")?
            .call(
                (),
                Some(&[("name", "dispatch"), ("server_name", "test")].into_py_dict(py)?),
            )?
            .unbind();

        // From a Tokio task: a closure on the reactor thread, in the sentinel; inside
        // it, with_logcontext enters the request's context and restores the sentinel.
        let seen: std::sync::Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
        let rt = runtime.clone();
        let (lc2, request2, seen2) = (lc.clone_ref(py), request.clone_ref(py), seen.clone());
        let d = pyo3_twisted::synapse::deferred::create_deferred(py, &runtime, async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            rt.dispatch_to_twisted(move |py| {
                let current = |py: Python<'_>| -> String {
                    let ctx = lc2.bind(py).call_method0("current_context").unwrap();
                    if ctx.is_truthy().unwrap() {
                        ctx.str().unwrap().to_string()
                    } else {
                        "sentinel".into()
                    }
                };
                let mut seen = seen2.lock();
                seen.push(current(py));
                with_logcontext(py, Some(request2.clone_ref(py)), || {
                    seen.push(current(py));
                    let captured = LogContextHandle::capture(py);
                    let is_request = captured
                        .logging_context()
                        .is_some_and(|ctx| ctx.bind(py).is(request2.bind(py)));
                    seen.push(format!("captured request: {is_request}"));
                    with_logcontext(py, None, || {
                        seen.push(current(py));
                        Ok(())
                    })?;
                    seen.push(current(py));
                    Ok(())
                })
                .unwrap();
                seen.push(current(py));
                let _ = tx.send(());
            })
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
            rx.await
                .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("dropped"))?;
            Ok(())
        })?;
        case.drive(&d)?;
        assert_eq!(
            *seen.lock(),
            [
                "sentinel",
                "dispatch",
                "captured request: true",
                "sentinel",
                "dispatch",
                "sentinel"
            ]
        );

        // After the homeserver shut down, nothing more is dispatched.
        hs.call_method0("shutdown")?;
        assert!(runtime.is_shut_down());
        assert!(runtime.dispatch_to_twisted(|_| {}).is_err());
        assert!(runtime.tokio_handle().is_err());
        Ok(())
    });
}
